"""The contract every task family implements.

``preprocess`` turns documents into token ids (on the intake thread, off the
device's critical path); ``collate`` pads a batch into CPU tensors; ``forward`` is
the only step that touches the device: it returns a tensor, which the engine copies
to the host without waiting (no synchronisation per batch on the compute thread);
``postprocess`` turns that into plain outputs, in the shape the transformers
pipelines return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.batcher import Shape, padded_tokens
from docqueue.worker.models import LoadedModel

#: Characters of text tokenized per token a model can take (see Runner.tokenize).
CHARS_PER_TOKEN = 16


@dataclass
class Features:
    """One document, tokenized."""

    ids: list[int]
    truncated: bool = False
    #: Anything else a runner needs per document (e.g. the prompt text).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass
class Rows(Features):
    """One document that runs as several rows of a batch (the windows of a long
    text, a text paired with each label's hypothesis): ``ids`` is left empty, each
    row's ids are in ``rows`` (and its token type ids in ``types``, if the model
    takes them).  Its length is its rows' tokens together, so the batcher's padded
    cost (documents times the longest) stays at or above what the rows cost; one
    document alone can still hold more rows than a batch may (a book in windows),
    which :meth:`Runner.by_rows` cuts into forward passes the limits allow."""

    rows: list[list[int]] = field(default_factory=list)
    types: list[list[int]] | None = None

    @property
    def length(self) -> int:
        return sum(len(r) for r in self.rows)


def collate_rows(batch: Sequence[Rows], pad_id: int) -> dict[str, Any]:
    """Every row of every document, in order, right-padded to the longest row:
    input_ids, attention_mask and (when the documents carry them) token_type_ids."""
    import numpy as np
    import torch

    rows = [r for f in batch for r in f.rows]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    longest = int(lengths.max())
    mask = np.arange(longest) < lengths[:, None]
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    ids[mask] = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    collated = {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask.astype(np.int64)),
    }
    if batch[0].types is not None:
        types = np.zeros((len(rows), longest), dtype=np.int64)
        types[mask] = np.fromiter(
            (t for f in batch for r in f.types or () for t in r),
            dtype=np.int64,
            count=int(lengths.sum()),
        )
        collated["token_type_ids"] = torch.from_numpy(types)
    return collated


@dataclass
class Output:
    output: dict[str, Any]
    embedding: bytes | None = None


@dataclass(frozen=True)
class Limits:
    """What the worker's settings allow a batch."""

    budget: int
    max_rows: int
    max_new_tokens: int


class Runner(ABC):
    task: ClassVar[str]
    #: Which side padding goes on (decoders pad left so generation continues the text).
    padding_side: ClassVar[str] = "right"

    def __init__(self, loaded: LoadedModel, limits: Limits) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.limits = limits

    def check(self, params: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise :class:`InvalidParams` when this model cannot run with ``params``."""

    def shape(self, params: dict[str, Any]) -> Shape:
        return Shape(padded_tokens, self.limits.budget, self.limits.max_rows)

    def generating(self, new: int, beams: int = 1, max_rows: int | None = None) -> Shape:
        """The shape of a generating batch: each row's prompt plus its ``new`` tokens,
        times ``beams`` (an encoder-decoder's cross-attention keys and values grow with
        beams x input length, its decoder with beams x new tokens)."""

        def cost(rows: int, longest: int) -> int:
            return rows * beams * (longest + new)

        rows = self.limits.max_rows if max_rows is None else max_rows
        return Shape(cost, self.limits.budget, rows)

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        """Token ids per document, or an error message for a document that cannot run."""
        texts = []
        for doc in docs:
            if not isinstance(doc, str):
                raise InvalidParams(f"{self.task} takes text, not chat messages")
            texts.append(doc)
        return self.tokenize(texts, self.loaded.max_length)

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[Features | str]:
        """Token ids, truncated to ``max_length``.

        A model sees at most ``max_length`` tokens, so only a prefix of each text is
        tokenized: ``CHARS_PER_TOKEN`` characters per token, far more than any
        tokenizer needs.  When the prefix still overflows by a wide margin the kept
        tokens are exactly those of the whole text; otherwise it is redone in full."""
        limit = max_length * CHARS_PER_TOKEN
        prefixes = [t[:limit] for t in texts]
        encoded = self.tokenizer(
            prefixes, truncation=True, max_length=max_length, return_attention_mask=False
        )
        features: list[Features | str] = []
        redo = []
        for i, (ids, enc) in enumerate(zip(encoded["input_ids"], encoded.encodings, strict=True)):
            cut = len(texts[i]) > limit
            if cut and sum(len(o) for o in enc.overflowing) < max_length:
                redo.append(i)
            features.append(Features(ids, truncated=cut or bool(enc.overflowing)))
        if redo:
            full = self.tokenizer(
                [texts[i] for i in redo],
                truncation=True,
                max_length=max_length,
                return_attention_mask=False,
            )
            for i, ids, enc in zip(redo, full["input_ids"], full.encodings, strict=True):
                features[i] = Features(ids, truncated=bool(enc.overflowing))
        return features

    def readable(self, texts: Sequence[str]) -> list[str]:
        """Each text, or its first ``CHARS_PER_TOKEN`` characters per token the model
        reads where those alone hold more tokens than it reads: for a text cut to
        fit beside another (a premise beside a hypothesis, a passage beside its
        query), whose tokens past the window are never used, so the rest of a long
        text is never tokenized.  A prefix is used only when it holds twice the
        tokens the model reads, so the word cut at its end lies far past every token
        a pair keeps."""
        limit = self.loaded.max_length * CHARS_PER_TOKEN
        long = [i for i, t in enumerate(texts) if len(t) > limit]
        readable = list(texts)
        if not long:
            return readable
        prefixes = self.tokenizer(
            [texts[i][:limit] for i in long],
            add_special_tokens=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        for i, ids in zip(long, prefixes, strict=True):
            if len(ids) >= 2 * self.loaded.max_length:
                readable[i] = texts[i][:limit]
        return readable

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        """Pad to the longest document: input_ids and attention_mask, on the CPU."""
        import numpy as np
        import torch

        lengths = np.fromiter((f.length for f in batch), dtype=np.int64, count=len(batch))
        longest = int(lengths.max())
        ids = np.full((len(batch), longest), self.tokenizer.pad_token_id, dtype=np.int64)
        columns = np.arange(longest)
        if self.padding_side == "left":
            mask = columns >= (longest - lengths)[:, None]
        else:
            mask = columns < lengths[:, None]
        ids[mask] = np.fromiter(
            (t for f in batch for t in f.ids), dtype=np.int64, count=int(lengths.sum())
        )
        return {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask.astype(np.int64)),
        }

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        non_blocking = self.device.type == "cuda"
        return {
            name: (t.pin_memory() if non_blocking else t).to(self.device, non_blocking=non_blocking)
            for name, t in inputs.items()
        }

    def by_rows(self, inputs: dict[str, Any], run: Callable[[dict[str, Any]], Any]) -> Any:
        """``run`` over the rows of collated ``inputs``, as many at a time as the
        token budget and the row limit allow, its outputs joined in row order.

        The batcher counts documents, and a document of many rows (windows,
        label pairs) could otherwise send far more rows through one forward pass
        than the device was sized for."""
        import torch

        rows, longest = inputs["input_ids"].shape
        per = max(1, min(self.limits.max_rows, self.limits.budget // max(1, longest)))
        if rows <= per:
            return run(inputs)
        chunks = [{k: v[i : i + per] for k, v in inputs.items()} for i in range(0, rows, per)]
        return torch.cat([run(chunk) for chunk in chunks])

    @abstractmethod
    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        """Run the model on a collated batch; return a tensor (on the device)."""

    @abstractmethod
    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        """One output per document of the batch, in batch order."""


def tokenized(features: Sequence[Features | str]) -> list[Features]:
    """``features`` with every document tokenized, for callers that hand over only
    documents that can run (benchmarks, tests); a document's error is raised."""
    batch = []
    for f in features:
        if isinstance(f, str):
            raise ValueError(f)
        batch.append(f)
    return batch


def generation_config(model: Any, **settings: Any) -> Any:
    """The model's generation config with docqueue's settings on top, and the length
    and sampling knobs a checkpoint may carry (max_length, min_length, num_beams,
    temperature...) reset, so a job's parameters mean the same on every model."""
    from transformers import GenerationConfig

    base = model.generation_config.to_dict()
    keep = {
        k: base[k]
        for k in (
            "bos_token_id",
            "eos_token_id",
            "pad_token_id",
            "decoder_start_token_id",
            "forced_bos_token_id",
            "forced_eos_token_id",
        )
        if base.get(k) is not None
    }
    keep.update((k, v) for k, v in settings.items() if v is not None)
    return GenerationConfig(**keep)


@dataclass(frozen=True)
class Ends:
    """How a model's generated rows end: its end-of-text tokens, the token that
    fills a row after its end, and the end-of-text token it is forced to write at
    its length limit (BART's ``forced_eos_token_id``), if any."""

    eos: frozenset[int]
    pad: int | None
    forced: int | None = None

    @classmethod
    def of(cls, model: Any, tokenizer: Any) -> Ends:
        config = model.generation_config
        eos = config.eos_token_id
        ids = frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)
        return cls(ids, tokenizer.pad_token_id, config.forced_eos_token_id)


def usage(
    generated: Sequence[int], prompt_tokens: int, ends: Ends, limit: int, stopped: bool = False
) -> dict[str, Any]:
    """What OpenAI's ``usage`` and ``finish_reason`` report for one generated
    sequence: the tokens the model read and produced, and why it stopped.

    ``generated`` is one row of ``model.generate``'s new tokens: a row that ends
    before the batch's longest is filled with ``ends.pad`` after its end.  An
    end-of-text token is generated (counted); the filling is not.  ``stopped`` says
    the text was cut at a stop string: the row ended with the string, so its first
    filling token (the end-of-text token when that is the filling) is not counted.
    "length" means ``limit`` tokens were produced without the model choosing to end
    (an end-of-text token forced at the limit does not count as a choice).
    """
    pad = ends.pad
    stop_at = ends.eos | {pad} if stopped and pad is not None else ends.eos
    for i, token in enumerate(generated):
        if token in stop_at:
            if stopped:
                return _usage(prompt_tokens, i, "stop")
            forced = i + 1 == limit and token == ends.forced
            return _usage(prompt_tokens, i + 1, "length" if forced else "stop")
    n = len(generated)
    while n and generated[n - 1] == pad:
        n -= 1
    return _usage(prompt_tokens, n, "stop" if stopped or n < limit else "length")


def _usage(prompt_tokens: int, completion_tokens: int, finish_reason: str) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finish_reason": finish_reason,
    }


def label_scores(names: Sequence[str], scores: Sequence[float]) -> dict[str, Any]:
    """The classification pipeline's shape: best label, its score, and every label's score."""
    best = max(range(len(scores)), key=scores.__getitem__)
    return {
        "label": names[best],
        "score": scores[best],
        "scores": dict(zip(names, scores, strict=True)),
    }
