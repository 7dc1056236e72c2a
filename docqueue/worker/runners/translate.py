"""Translation with an encoder-decoder: ``model.generate`` directly, since
transformers 5 has no translation pipeline.  How a model names its languages is
read once from its tokenizer and config (:class:`Languages`); each document's
languages become a text prefix (T5's task prefix, Marian's ``>>fr<<``), the
tokenizer's source language (M2M100, NLLB) and a forced first token (their target
language), which :class:`FirstTokens` forces per row, so documents bound for
different languages share a batch."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.batcher import Shape
from docqueue.worker.runners.base import (
    CHARS_PER_TOKEN,
    Ends,
    Features,
    Output,
    Runner,
    generation_config,
    usage,
)

#: NLLB's codes (``eng_Latn``), among a tokenizer's special tokens.
NLLB_CODE = re.compile(r"[a-z]{3}_[A-Z][a-z]{3}")
#: T5's config names each prefix's pair ``translation_en_to_de``.
T5_PAIR = re.compile(r"translation_(\w+?)_to_(\w+)")


@dataclass(frozen=True)
class Plan:
    """How one document is translated: text put before it, the tokenizer's source
    language (None: leave it), the token forced first (None: none)."""

    prefix: str = ""
    source: str | None = None
    target: int | None = None


@dataclass(frozen=True)
class Languages:
    """The languages a model knows, and how it is told them."""

    model: str
    #: M2M100, NLLB: each code's token, forced as the target's first token.
    forced: Mapping[str, int]
    #: T5: each (source, target) pair's text prefix.
    prefixes: Mapping[tuple[str, str], str]
    #: Marian with several targets: the codes of its ``>>xx<<`` tokens.
    targets: tuple[str, ...]
    #: Marian with one pair: the pair, where its tokenizer says it.
    pair: tuple[str | None, str | None] = (None, None)

    @classmethod
    def of(cls, name: str, model: Any, tokenizer: Any) -> Languages:
        forced = dict(getattr(tokenizer, "lang_code_to_id", None) or {})
        if not forced and hasattr(tokenizer, "src_lang"):
            codes = [t for t in tokenizer.all_special_tokens if NLLB_CODE.fullmatch(t)]
            forced = {c: tokenizer.convert_tokens_to_ids(c) for c in codes}
        prefixes = {}
        for task, settings in (getattr(model.config, "task_specific_params", None) or {}).items():
            if (found := T5_PAIR.fullmatch(task)) and isinstance(settings, dict):
                prefixes[(found[1], found[2])] = str(settings.get("prefix", ""))
        targets = tuple(
            code[2:-2] for code in getattr(tokenizer, "supported_language_codes", None) or ()
        )
        pair = (getattr(tokenizer, "source_lang", None), getattr(tokenizer, "target_lang", None))
        return cls(name, forced, prefixes, targets, pair)

    def known(self) -> str:
        """The codes (or pairs) the model knows, for an error line."""
        if self.forced:
            return ", ".join(sorted(self.forced))
        if self.prefixes:
            return ", ".join(f"{s} to {t}" for s, t in sorted(self.prefixes))
        return ", ".join(self.targets)

    def unknown(self, source: str | None, target: str | None) -> str | None:
        """Why a source or target language cannot be this model's, or None (a model
        that names no languages translates its one pair whatever it is told)."""
        if self.targets:  # Marian with several targets: the source is its own
            sides: dict[str, set[str]] = {"target": set(self.targets)}
        else:
            known = set(self.forced) | {c for pair in self.prefixes for c in pair}
            sides = {"source": known, "target": known} if known else {}
        for side, code in (("source", source), ("target", target)):
            if code is not None and side in sides and code not in sides[side]:
                shown = code if len(code) <= 40 else code[:40] + "..."
                return f"model {self.model} knows no language {shown!r}; it knows {self.known()}"
        return None

    def plan(self, source: str | None, target: str | None) -> Plan | str:
        """How a document of ``source`` is put into ``target``, or why it cannot be."""
        if problem := self.unknown(source, target):
            return problem
        if self.forced:
            if source is None or target is None:
                return (
                    f"model {self.model} needs src_lang and tgt_lang (languages it knows: "
                    f"{self.known()})"
                )
            return Plan(source=source, target=self.forced[target])
        if self.prefixes:
            # a side left out is whichever fits, when one pair does
            fits = [
                pair
                for pair in self.prefixes
                if source in (None, pair[0]) and target in (None, pair[1])
            ]
            if not fits:
                asked = f"{source or 'any'} to {target or 'any'}"
                return f"model {self.model} translates {self.known()}, not {asked}"
            if len(fits) > 1:
                return f"model {self.model} translates {self.known()}: name src_lang and tgt_lang"
            return Plan(prefix=self.prefixes[fits[0]])
        if self.targets:
            if target is None:
                return f"model {self.model} needs tgt_lang: one of {self.known()}"
            return Plan(prefix=f">>{target}<< ")
        for given, own in zip((source, target), self.pair, strict=True):
            if given is not None and own is not None and given != own:
                return f"model {self.model} translates {self.pair[0]} to {self.pair[1]} only"
        return Plan()


class TranslateRunner(Runner):
    task = "translate"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.languages = Languages.of(self.loaded.name, self.model, self.tokenizer)
        self.language_ids = frozenset(self.languages.forced.values())
        # Tokenizing sets the source language (and truncation) on the tokenizer: a
        # copy of its own, so summarize on the same model and the writer's decoding
        # never see that state (a fast tokenizer changed while it decodes raises).
        self.intake = copy.deepcopy(self.tokenizer)

    def new_tokens(self, params: dict[str, Any]) -> int:
        """The tokens a translation may write: ``max_new_tokens``, within the
        decoder's learned positions where it has a fixed number (Marian's 512)."""
        positions = getattr(self.model.config, "max_position_embeddings", None)
        wanted = int(params["max_new_tokens"])
        return wanted if not positions else min(wanted, int(positions) - 1)

    def check(self, params: dict[str, Any]) -> None:
        if problem := self.languages.unknown(params.get("src_lang"), params.get("tgt_lang")):
            raise InvalidParams(problem)

    def shape(self, params: dict[str, Any]) -> Shape:
        return self.generating(self.new_tokens(params), params["num_beams"])

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        found: list[Features | str] = [""] * len(docs)
        by_source: dict[str | None, list[tuple[int, str, int | None]]] = {}
        for i, doc in enumerate(docs):
            if isinstance(doc, str):
                text, source, target = doc, params.get("src_lang"), params.get("tgt_lang")
            elif isinstance(doc, dict):
                text = doc["text"]
                source = doc.get("source_lang") or params.get("src_lang")
                target = doc.get("target_lang") or params.get("tgt_lang")
            else:
                raise InvalidParams("translate takes text, not chat messages")
            plan = self.languages.plan(source, target)
            if isinstance(plan, str):
                found[i] = plan
                continue
            by_source.setdefault(plan.source, []).append((i, plan.prefix + text, plan.target))
        for source, items in by_source.items():
            if source is not None:  # the source language's token leads the text
                self.intake.src_lang = source
            encoded = self.encode([text for _, text, _ in items])
            for (i, _, target), features in zip(items, encoded, strict=True):
                features.extra["target"] = target
                found[i] = features
        return found

    def encode(self, texts: Sequence[str]) -> list[Features]:
        """Token ids of each text, cut to the model's window, with the end-of-text
        token kept (fast and sentencepiece tokenizers alike, which report overflow
        differently: each text is tokenized with truncation, and once more without
        to tell whether it was cut).  Only ``CHARS_PER_TOKEN`` characters per token
        of a text are read, unless they hold fewer tokens than the window."""
        limit = self.loaded.max_length
        read = [t[: limit * CHARS_PER_TOKEN] for t in texts]
        whole = self.intake(read, return_attention_mask=False)["input_ids"]
        short = [i for i, row in enumerate(whole) if len(row) <= limit and read[i] != texts[i]]
        for i in short:  # a long text whose first characters hold few tokens (spaces)
            read[i] = texts[i]
        ids = self.intake(read, truncation=True, max_length=limit, return_attention_mask=False)[
            "input_ids"
        ]
        cut = {i for i, row in enumerate(whole) if len(row) > limit}
        cut |= {i for i in short if len(ids[i]) >= limit}
        return [
            Features(row, truncated=i in cut or len(texts[i]) > len(read[i]))
            for i, row in enumerate(ids)
        ]

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        import torch

        inputs = super().collate(batch)
        targets = [f.extra.get("target") for f in batch]
        if any(t is not None for t in targets):
            inputs["first_tokens"] = torch.tensor(targets, dtype=torch.long)
        return inputs

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        from transformers import LogitsProcessorList

        model_inputs = dict(inputs)
        first = model_inputs.pop("first_tokens", None)
        config = generation_config(
            self.model,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=self.new_tokens(params),
            min_new_tokens=min(params["min_new_tokens"], self.new_tokens(params)),
            num_beams=params["num_beams"],
            early_stopping=params["num_beams"] > 1,
            do_sample=False,
        )
        processors = LogitsProcessorList()
        if first is not None:
            config.forced_bos_token_id = None  # each row's own, below
            processors.append(FirstTokens(first.to(self.device), params["num_beams"]))
        return self.model.generate(
            **self.to_device(model_inputs), generation_config=config, logits_processor=processors
        )

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        """Each translation, decoded as the pipeline decoded it (special and language
        tokens dropped, spaces left as they are), with its usage; a row's first
        token is the decoder's start token, not a generated one."""
        rows = raw.tolist()
        shown = [[t for t in row if t not in self.language_ids] for row in rows]
        texts = self.tokenizer.batch_decode(
            shown, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        ends = Ends.of(self.model, self.tokenizer)
        limit = self.new_tokens(params)
        return [
            Output({"translation_text": text, **usage(row[1:], features.length, ends, limit)})
            for row, text, features in zip(rows, texts, batch, strict=True)
        ]


class FirstTokens:
    """Forces each row's first generated token (its target language), as
    transformers' ``forced_bos_token_id`` forces one token for every row: at the
    first step every other token's score is -inf."""

    def __init__(self, tokens: Any, beams: int) -> None:
        self.tokens = tokens.repeat_interleave(beams)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if input_ids.shape[-1] != 1:
            return scores
        forced = torch.full_like(scores, -float("inf"))
        forced[torch.arange(scores.shape[0], device=scores.device), self.tokens] = 0
        return forced
