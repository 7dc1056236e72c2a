"""The contract every task family implements.

``preprocess`` turns documents into token ids (on the intake thread, off the
device's critical path); ``collate`` pads a batch into CPU tensors; ``forward`` is
the only step that touches the device and returns CPU data; ``postprocess`` turns
that into plain outputs, in the shape the transformers pipelines return.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.batcher import Shape, padded_tokens
from docqueue.worker.models import LoadedModel


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

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        """Token ids per document, or an error message for a document that cannot run."""
        texts = []
        for doc in docs:
            if not isinstance(doc, str):
                raise InvalidParams(f"{self.task} takes text, not chat messages")
            texts.append(doc)
        return self.tokenize(texts, self.loaded.max_length)

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[Features | str]:
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=max_length, return_attention_mask=False
        )
        return [
            Features(ids, truncated=bool(enc.overflowing))
            for ids, enc in zip(encoded["input_ids"], encoded.encodings, strict=True)
        ]

    def collate(self, batch: Sequence[Features]) -> dict[str, Any]:
        """Pad to the longest document: input_ids and attention_mask, on the CPU."""
        import torch

        longest = max(f.length for f in batch)
        ids = torch.full((len(batch), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, features in enumerate(batch):
            n = features.length
            if self.padding_side == "left":
                ids[row, longest - n :] = torch.tensor(features.ids, dtype=torch.long)
                mask[row, longest - n :] = 1
            else:
                ids[row, :n] = torch.tensor(features.ids, dtype=torch.long)
                mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def to_device(self, inputs: dict[str, Any]) -> dict[str, Any]:
        non_blocking = self.device.type == "cuda"
        return {
            name: (t.pin_memory() if non_blocking else t).to(self.device, non_blocking=non_blocking)
            for name, t in inputs.items()
        }

    @abstractmethod
    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        """Run the model on a collated batch; return CPU data."""

    @abstractmethod
    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        """One output per document of the batch, in batch order."""


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
