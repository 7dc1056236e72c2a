"""Filling the mask token with a masked language model: the answers
``pipeline("fill-mask")`` gives, batched.

Only the masked positions go through the model's output projection (the vocabulary
wide matrix that costs a small model as much as its encoder): a hook on the output
embeddings hands them the masked positions' hidden states alone.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.runners.base import Features, Output, Runner


class FillMaskRunner(Runner):
    task = "fill-mask"

    #: Target sets whose token ids are kept (least recently used ones are dropped).
    CACHED_TARGET_SETS = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mask_id = self.tokenizer.mask_token_id
        self.mask_token = self.tokenizer.mask_token
        self._targets: OrderedDict[tuple[str, ...], list[int]] = OrderedDict()
        self._targets_lock = threading.Lock()
        self._positions: Any = None
        head = self.model.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(self._masked_only)

    def _masked_only(self, module: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The output projection's input cut to the masked positions (when the
        forward is this runner's; the hook leaves any other call alone)."""
        if self._positions is None or not args:
            return None
        hidden = args[0]
        return (hidden.flatten(0, 1).index_select(0, self._positions), *args[1:])

    def check(self, params: dict[str, Any]) -> None:
        if self.mask_id is None:
            raise InvalidParams(f"model {self.loaded.name} has no mask token: it cannot fill-mask")
        if params.get("targets"):
            self.target_ids(params["targets"])

    def target_ids(self, targets: Sequence[str]) -> list[int]:
        """Token ids of the targets: a vocabulary entry as it is, any other word its
        first token (as the pipeline does), each id once, in the order given."""
        # check() asks from the intake thread, forward() from the compute thread.
        with self._targets_lock:
            return self._target_ids(tuple(targets))

    def _target_ids(self, key: tuple[str, ...]) -> list[int]:
        if key in self._targets:
            self._targets.move_to_end(key)
            return self._targets[key]
        vocabulary = self.tokenizer.get_vocab()
        ids: list[int] = []
        for target in key:
            found = vocabulary.get(target)
            if found is None:
                pieces = self.tokenizer(target, add_special_tokens=False)["input_ids"]
                found = pieces[0] if pieces else None
            if found is not None and found not in ids:
                ids.append(found)
        if not ids:
            raise InvalidParams(
                f"fill-mask: none of the targets is a token of model {self.loaded.name}"
            )
        self._targets[key] = ids
        if len(self._targets) > self.CACHED_TARGET_SETS:
            self._targets.popitem(last=False)
        return ids

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        found = super().preprocess(docs, params)
        for i, (doc, features) in enumerate(zip(docs, found, strict=True)):
            if isinstance(features, Features) and self.mask_id not in features.ids:
                found[i] = (
                    f"no mask token: fill-mask needs {self.mask_token} in the text"
                    if self.mask_token not in str(doc)
                    else f"the mask token {self.mask_token} is past the "
                    f"{self.loaded.max_length} tokens model {self.loaded.name} reads"
                )
        return found

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        # The masked positions are found on the host, as flat indices: a boolean
        # mask applied on a GPU would wait for it to count the positions.
        flat = (inputs["input_ids"] == self.mask_id).flatten().nonzero().squeeze(1)
        on_device = self.to_device({**inputs, "positions": flat})
        positions = on_device.pop("positions")
        hooked = self.model.get_output_embeddings() is not None
        self._positions = positions if hooked else None
        try:
            logits = self.model(**on_device).logits
        finally:
            self._positions = None
        if logits.dim() == 3:  # the hook did not run (a head projecting without its module)
            logits = logits.flatten(0, 1).index_select(0, positions)
        probs = logits.float().softmax(dim=-1)
        targets = params.get("targets")
        top_k = int(params.get("top_k", 5))
        if targets:
            ids = self.target_ids(targets)
            chosen = probs[:, ids]
            values, picked = chosen.topk(min(top_k, len(ids)), dim=-1)
            import torch

            tokens = torch.tensor(ids, device=picked.device)[picked]
        else:
            values, tokens = probs.topk(top_k, dim=-1)
        # token ids are exact in float32 (below 2**24): one tensor to the host
        return _stack(values, tokens)

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        found = raw.tolist()
        pad = self.tokenizer.pad_token_id
        outputs = []
        at = 0
        for features in batch:
            ids = list(features.ids)
            masks = [i for i, t in enumerate(ids) if t == self.mask_id]
            alone = len(masks) == 1
            predictions = []
            for number, position in enumerate(masks):
                for score, token in found[at + number]:
                    token = int(token)
                    filled = list(ids)
                    filled[position] = token
                    filled = [t for t in filled if t != pad]  # as the pipeline drops padding
                    predictions.append(
                        {
                            "mask": number,
                            "score": score,
                            "token": token,
                            "token_str": self.tokenizer.decode([token]),
                            "sequence": self.tokenizer.decode(filled, skip_special_tokens=alone),
                        }
                    )
            at += len(masks)
            best = predictions[0]
            outputs.append(
                Output(
                    {
                        "token_str": best["token_str"],
                        "score": best["score"],
                        "sequence": best["sequence"],
                        "predictions": predictions,
                    }
                )
            )
        return outputs


def _stack(values: Any, tokens: Any) -> Any:
    import torch

    return torch.stack([values, tokens.to(values.dtype)], dim=-1)
