"""Hub-free models for tests, benchmarks and custom runners.

Each builder writes a small random model, with a tokenizer trained on the spot from
the texts you pass, to a directory that loads through the ordinary
``from_pretrained`` path, so a worker can serve it like any other model: no
download, no hub connection.  Weights are seeded, so the same call always writes the
same model.  The outputs are meaningless; the shapes, tokenizers, padding,
generation and special tokens are real, which is what tests of batching, storage
and runners need.

* ``build_classifier``: a BERT sequence classifier (``classify``);
* ``build_nli``: a BERT classifier with NLI labels (``classify`` with zero-shot labels,
  by entailment);
* ``build_token_classifier``: a BERT token classifier with BIO labels (``ner``),
  its tokenizer WordPiece or byte-level BPE;
* ``build_masked_lm``: a BERT masked language model (``fill-mask``, ``embed``);
* ``build_question_answerer``: a BERT extractive question-answering model (``answer``);
* ``build_seq2seq``: a BART or T5 encoder-decoder (``summarize``; ``translate`` by
  T5's prefixes, ``translation_prefixes``);
* ``build_translator``: a Marian (one pair, or several targets by ``>>xx<<``
  tokens) or M2M100 (languages as forced first tokens) translation model, with
  sentencepiece tokenizers (``translate``; needs the ``sentencepiece`` package);
* ``build_causal_lm``: a GPT-2 or Llama decoder, the Llama one with a chat template
  (``generate``);
* ``build_head_on``: an existing checkpoint with a new, seeded classification head.

Needs the ``worker`` extra (torch, transformers, tokenizers).  The runtime (client,
worker, CLI) never imports this module. ::

    from docqueue.testing import build_classifier

    texts = ["the invoice was wrong", "the site is down", "great service"] * 20
    path = build_classifier("/tmp/tiny-classifier", texts, labels=("billing", "outage"))
    # docqueue worker --model tiny=/tmp/tiny-classifier
    # or AutoModelForSequenceClassification.from_pretrained(path)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "NER_LABELS",
    "NLI_LABELS",
    "SPECIAL_BERT",
    "bpe_tokenizer",
    "build_causal_lm",
    "build_classifier",
    "build_head_on",
    "build_masked_lm",
    "build_nli",
    "build_question_answerer",
    "build_token_classifier",
    "build_translator",
    "sentencepiece_vocabulary",
    "build_seq2seq",
    "save_model",
    "seed_weights",
    "wordpiece_tokenizer",
]

SPECIAL_BERT = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _texts(corpus: Iterable[str]) -> list[str]:
    texts = [t for t in corpus if t.strip()]
    if not texts:
        raise ValueError("a tokenizer needs some training text")
    return texts


def wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int, max_length: int) -> Any:
    """A BERT-style tokenizer: lower-cased WordPiece, [CLS] text [SEP], and token
    types (0 for a pair's first text, 1 for its second) among a model's inputs."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        _texts(corpus), WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_BERT)
    )
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def bpe_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    max_length: int,
    *,
    bos: str | None = "<s>",
    eos: str = "</s>",
    pad: str = "<pad>",
    add_bos: bool = False,
    add_eos: bool = False,
) -> Any:
    """A byte-level BPE tokenizer (GPT-2 / BART style)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (pad, bos, eos, "<unk>") if t]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        _texts(corpus),
        BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    template = " ".join(
        [*(["$(bos)"] if add_bos and bos else []), "$A", *(["$(eos)"] if add_eos else [])]
    )
    if template != "$A":
        pairs = [(t, tok.token_to_id(t)) for t in (bos, eos) if t]
        tok.post_processor = processors.TemplateProcessing(
            single=template.replace("$(bos)", bos or "").replace("$(eos)", eos),
            special_tokens=pairs,
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token="<unk>",
        model_max_length=max_length,
    )


def seed_weights(seed: int) -> None:
    """Seed torch's generator, so the weights a builder draws next are reproducible."""
    import torch

    torch.manual_seed(seed)


def build_classifier(
    path: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 128,
    labels: tuple[str, ...] = ("negative", "neutral", "positive"),
    vocab_size: int = 1000,
    seed: int = 0,
    initializer_range: float = 0.02,
) -> Path:
    """A BERT sequence classifier (``initializer_range``: the spread of its random
    weights, BERT's own by default)."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = wordpiece_tokenizer(corpus, vocab_size, max_length)
    config = _bert_config(
        tokenizer,
        hidden,
        layers,
        max_length,
        initializer_range=initializer_range,
        **_labelled(labels),
    )
    seed_weights(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    return save_model(path, model, tokenizer)


def build_cross_encoder(path: str | Path, corpus: Iterable[str], **options: Any) -> Path:
    """A BERT cross-encoder (``rerank``): a sequence classifier with one output,
    reading a query and a passage as a pair (token types 0 and 1); its random
    weights spread wide enough that passages get scores far apart."""
    options.setdefault("initializer_range", 0.5)
    return build_classifier(path, corpus, labels=("relevance",), **options)


#: The labels of ``build_nli`` (MNLI's order, as facebook/bart-large-mnli has them).
NLI_LABELS = ("contradiction", "neutral", "entailment")
#: The labels of ``build_token_classifier`` (CoNLL's BIO tags).
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def _bert_config(tokenizer: Any, hidden: int, layers: int, max_length: int, **extra: Any) -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=hidden * 2,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _labelled(labels: tuple[str, ...]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def build_nli(
    path: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 128,
    labels: tuple[str, ...] = NLI_LABELS,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """A BERT sequence classifier whose labels make it an NLI model (``entailment``
    among them): zero-shot classification by entailment, premise and hypothesis as
    a pair with token type ids.  Its weights are drawn wide: BERT's default (0.02)
    leaves a tiny model's logits within 1e-6 of each other, and the labels' order a
    matter of rounding."""
    return build_classifier(
        path,
        corpus,
        hidden=hidden,
        layers=layers,
        max_length=max_length,
        labels=labels,
        vocab_size=vocab_size,
        seed=seed,
        initializer_range=0.5,
    )


def build_token_classifier(
    path: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 128,
    labels: tuple[str, ...] = NER_LABELS,
    tokenizer: str = "wordpiece",
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """A BERT token classifier (``ner``); ``tokenizer`` "wordpiece" (continuations
    marked ``##``) or "bpe" (byte-level, words told apart by the text around them)."""
    from transformers import AutoModelForTokenClassification

    if tokenizer == "wordpiece":
        tok = wordpiece_tokenizer(corpus, vocab_size, max_length)
    elif tokenizer == "bpe":
        tok = bpe_tokenizer(corpus, vocab_size, max_length, add_bos=True, add_eos=True)
    else:
        raise ValueError(f"unknown tokenizer kind {tokenizer!r}")
    config = _bert_config(tok, hidden, layers, max_length, **_labelled(labels))
    seed_weights(seed)
    model = AutoModelForTokenClassification.from_config(config)
    return save_model(path, model, tok)


def build_masked_lm(
    path: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 128,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """A BERT masked language model with its MLM head (``fill-mask``; its encoder
    also embeds)."""
    from transformers import AutoModelForMaskedLM

    tokenizer = wordpiece_tokenizer(corpus, vocab_size, max_length)
    config = _bert_config(tokenizer, hidden, layers, max_length)
    seed_weights(seed)
    model = AutoModelForMaskedLM.from_config(config)
    return save_model(path, model, tokenizer)


def build_question_answerer(
    path: str | Path,
    corpus: Iterable[str],
    *,
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 128,
    vocab_size: int = 1000,
    seed: int = 0,
    initializer_range: float = 0.5,
    tokenizer: Any = None,
) -> Path:
    """A BERT extractive question-answering model (``answer``): start and end logits
    per token over a question and its context read as a pair; its random weights
    spread wide, so a window's best span stands clear of the next.  ``tokenizer``:
    one to use instead of training a new one (a trained WordPiece vocabulary's ids
    differ from one run to the next; the weights, seeded, do not)."""
    from transformers import AutoModelForQuestionAnswering

    if tokenizer is None:
        tokenizer = wordpiece_tokenizer(corpus, vocab_size, max_length)
    config = _bert_config(
        tokenizer, hidden, layers, max_length, initializer_range=initializer_range
    )
    seed_weights(seed)
    model = AutoModelForQuestionAnswering.from_config(config)
    return save_model(path, model, tokenizer)


def save_model(path: str | Path, model: Any, tokenizer: Any) -> Path:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained`` to ``path``; return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_head_on(path: str | Path, source: str, *, labels: tuple[str, ...], seed: int = 0) -> Path:
    """A real checkpoint with a new, seeded classification head, saved once so every
    worker that loads it computes the same answers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    seed_weights(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    return save_model(path, model, AutoTokenizer.from_pretrained(source))


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_seq2seq(
    path: str | Path,
    corpus: Iterable[str],
    *,
    kind: str = "bart",
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 256,
    vocab_size: int = 1000,
    seed: int = 0,
    translation_prefixes: dict[tuple[str, str], str] | None = None,
    tokenizer: Any = None,
    spread: float | None = None,
) -> Path:
    """A BART or T5 encoder-decoder.  ``translation_prefixes``: the text prefix of
    each (source, target) language pair, as T5's config declares them
    (``task_specific_params``); ``tokenizer``: one to use instead of training one;
    ``spread``: how wide its random weights spread (T5's ``initializer_factor``,
    BART's ``init_std``; a small T5 at its default writes nothing but padding)."""
    from transformers import AutoModelForSeq2SeqLM, BartConfig, T5Config

    if kind == "bart":
        tokenizer = tokenizer or bpe_tokenizer(
            corpus, vocab_size, max_length, add_bos=True, add_eos=True
        )
        config: Any = BartConfig(  # type: ignore[call-arg]
            vocab_size=len(tokenizer),
            d_model=hidden,
            encoder_layers=layers,
            decoder_layers=layers,
            encoder_attention_heads=max(1, hidden // 16),
            decoder_attention_heads=max(1, hidden // 16),
            encoder_ffn_dim=hidden * 2,
            decoder_ffn_dim=hidden * 2,
            max_position_embeddings=max_length,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=None,
            forced_eos_token_id=tokenizer.eos_token_id,
        )
    elif kind == "t5":
        tokenizer = tokenizer or bpe_tokenizer(
            corpus, vocab_size, max_length, bos=None, add_eos=True
        )
        config = T5Config(  # type: ignore[call-arg]
            vocab_size=len(tokenizer),
            d_model=hidden,
            d_kv=max(8, hidden // 4),
            d_ff=hidden * 2,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=max(1, hidden // 16),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    else:
        raise ValueError(f"unknown seq2seq kind {kind!r}")
    if spread is not None:
        setattr(config, "initializer_factor" if kind == "t5" else "init_std", spread)
    if translation_prefixes:
        config.task_specific_params = {
            f"translation_{source}_to_{target}": {"prefix": prefix}
            for (source, target), prefix in translation_prefixes.items()
        }
    seed_weights(seed)
    model = AutoModelForSeq2SeqLM.from_config(config)
    return save_model(path, model, tokenizer)


def build_causal_lm(
    path: str | Path,
    corpus: Iterable[str],
    *,
    kind: str = "gpt2",
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 512,
    vocab_size: int = 1000,
    seed: int = 0,
) -> Path:
    """A GPT-2 or Llama decoder; the Llama one has a chat template."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    if kind == "gpt2":
        tokenizer = bpe_tokenizer(
            corpus, vocab_size, max_length, bos="<|endoftext|>", eos="<|endoftext|>"
        )
        config: Any = GPT2Config(
            vocab_size=len(tokenizer),
            n_embd=hidden,
            n_layer=layers,
            n_head=max(1, hidden // 16),
            n_positions=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    elif kind == "llama":
        tokenizer = bpe_tokenizer(corpus, vocab_size, max_length, add_bos=True)
        tokenizer.chat_template = CHAT_TEMPLATE
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 16),
            num_key_value_heads=max(1, hidden // 16),
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    else:
        raise ValueError(f"unknown causal LM kind {kind!r}")
    seed_weights(seed)
    model = AutoModelForCausalLM.from_config(config)
    return save_model(path, model, tokenizer)


def sentencepiece_vocabulary(
    directory: str | Path, corpus: Iterable[str], vocab_size: int, specials: tuple[str, ...]
) -> tuple[Path, dict[str, int]]:
    """A sentencepiece model trained on ``corpus`` (``spm.model`` in ``directory``)
    and a vocabulary numbering ``specials`` first, then its pieces (what Marian's and
    M2M100's ``vocab.json`` hold)."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_texts(corpus)),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus has fewer pieces: at most vocab_size
        character_coverage=1.0,
        normalization_rule_name="identity",
        bos_id=-1,
        eos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spm.model"
    path.write_bytes(model.getvalue())
    processor = spm.SentencePieceProcessor(model_file=str(path))
    vocabulary = {token: i for i, token in enumerate(specials)}
    for i in range(processor.get_piece_size()):
        vocabulary.setdefault(processor.id_to_piece(i), len(vocabulary))
    return path, vocabulary


def build_translator(
    path: str | Path,
    corpus: Iterable[str] = (),
    *,
    kind: str = "marian",
    targets: tuple[str, ...] = (),
    hidden: int = 32,
    layers: int = 1,
    max_length: int = 128,
    vocab_size: int = 400,
    seed: int = 0,
    init_std: float = 0.5,
    tokenizer_from: str | Path | None = None,
) -> Path:
    """A Marian or M2M100 translation model (``kind``).  Marian translates one pair,
    or with ``targets`` into each of them, named by a ``>>xx<<`` token before the
    text; M2M100 knows fairseq's 100 language codes, its source language a token
    before the text and its target forced as the first token it writes.  Its random
    weights spread wide (``init_std``), so greedy decoding never hangs on a near
    tie.  ``tokenizer_from``: a directory whose tokenizer files to reuse instead of
    training one (a trained sentencepiece model may differ from run to run)."""
    import json
    import shutil
    import tempfile

    from transformers import (
        AutoModelForSeq2SeqLM,
        M2M100Config,
        M2M100Tokenizer,
        MarianConfig,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if kind == "marian":
            tokenizer: Any = _marian_tokenizer(
                work, corpus, vocab_size, max_length, targets, tokenizer_from
            )
            pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
            config: Any = MarianConfig(
                decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos,
                forced_eos_token_id=eos, **_seq2seq_shape(len(tokenizer), hidden, layers,
                max_length, init_std),
            )  # fmt: skip
        elif kind == "m2m100":
            if tokenizer_from is not None:
                tokenizer = M2M100Tokenizer.from_pretrained(str(tokenizer_from))
            else:
                spm_path, vocab = sentencepiece_vocabulary(
                    work, corpus, vocab_size, ("<s>", "<pad>", "</s>", "<unk>")
                )
                (work / "vocab.json").write_text(json.dumps(vocab))
                tokenizer = M2M100Tokenizer(
                    str(work / "vocab.json"), str(spm_path), model_max_length=max_length
                )
            # language tokens and fairseq's made-up words come after the vocabulary
            ids = tokenizer.encoder_size + len(tokenizer.lang_code_to_id)
            config = M2M100Config(
                decoder_start_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                **_seq2seq_shape(
                    ids + tokenizer.num_madeup_words, hidden, layers, max_length, init_std
                ),
            )
        else:
            raise ValueError(f"unknown translator kind {kind!r}")
        seed_weights(seed)
        model = AutoModelForSeq2SeqLM.from_config(config)
        model.generation_config.max_length = None
        saved = save_model(path, model, tokenizer)
    shutil.rmtree(work, ignore_errors=True)
    return saved


def _seq2seq_shape(
    vocab_size: int, hidden: int, layers: int, max_length: int, init_std: float
) -> dict[str, Any]:
    return {
        "vocab_size": vocab_size,
        "d_model": hidden,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": max(1, hidden // 16),
        "decoder_attention_heads": max(1, hidden // 16),
        "encoder_ffn_dim": hidden * 2,
        "decoder_ffn_dim": hidden * 2,
        "max_position_embeddings": max_length,
        "init_std": init_std,
    }


def _marian_tokenizer(
    work: Path,
    corpus: Iterable[str],
    vocab_size: int,
    max_length: int,
    targets: tuple[str, ...],
    tokenizer_from: str | Path | None,
) -> Any:
    import json

    from transformers import MarianTokenizer

    if tokenizer_from is not None:
        return MarianTokenizer.from_pretrained(str(tokenizer_from))
    specials = ("</s>", "<unk>", *(f">>{t}<<" for t in targets))
    spm_path, vocab = sentencepiece_vocabulary(work, corpus, vocab_size, specials)
    vocab["<pad>"] = len(vocab)
    (work / "vocab.json").write_text(json.dumps(vocab))
    return MarianTokenizer(
        str(spm_path), str(spm_path), str(work / "vocab.json"), model_max_length=max_length
    )
