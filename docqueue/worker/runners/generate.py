"""Text generation with a decoder (GPT-2, Llama): left padding, so every prompt ends
where generation starts; chat models take messages through their chat template."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docqueue.params import InvalidParams
from docqueue.protocol import Document
from docqueue.worker.batcher import Shape
from docqueue.worker.runners.base import (
    Ends,
    Features,
    Output,
    Runner,
    generation_config,
    usage,
)


class GenerateRunner(Runner):
    task = "generate"
    padding_side = "left"

    def check(self, params: dict[str, Any]) -> None:
        if params["max_new_tokens"] >= self.loaded.max_length:
            raise InvalidParams(
                f"max_new_tokens={params['max_new_tokens']} leaves no room for a prompt in "
                f"model {self.loaded.name}'s context of {self.loaded.max_length} tokens"
            )

    def shape(self, params: dict[str, Any]) -> Shape:
        # A seeded document runs alone: its text must not depend on its batch mates.
        rows = 1 if params["do_sample"] and params["seed"] is not None else self.limits.max_rows
        return self.generating(params["max_new_tokens"], max_rows=rows)

    def preprocess(self, docs: Sequence[Document], params: dict[str, Any]) -> list[Features | str]:
        room = self.loaded.max_length - params["max_new_tokens"]
        features: list[Features | str] = []
        for doc in docs:
            if isinstance(doc, dict):  # refused at intake (generate takes no fields)
                raise InvalidParams("generate takes text or chat messages, not fields")
            if isinstance(doc, str):
                ids = self.tokenizer(doc)["input_ids"]
                prompt: Any = doc
            elif getattr(self.tokenizer, "chat_template", None):
                messages = [m.model_dump() for m in doc]
                ids = list(
                    self.tokenizer.apply_chat_template(
                        messages, add_generation_prompt=True, tokenize=True, return_dict=True
                    )["input_ids"]
                )
                prompt = messages
            else:
                features.append(f"model {self.loaded.name} has no chat template; send text")
                continue
            # Keep the end of an over-long prompt: that is what the model continues.
            features.append(
                Features(ids[-room:], truncated=len(ids) > room, extra={"prompt": prompt})
            )
        return features

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        import torch

        sampling = {}
        if params["do_sample"]:
            sampling = {
                "temperature": params["temperature"],
                "top_p": params["top_p"],
                "top_k": params["top_k"],
            }
            if params["seed"] is not None:
                torch.manual_seed(params["seed"])
        config = generation_config(
            self.model,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=params["max_new_tokens"],
            min_new_tokens=params["min_new_tokens"],
            do_sample=params["do_sample"],
            repetition_penalty=params["repetition_penalty"],
            stop_strings=list(params["stop"]) or None,
            **sampling,
        )
        on_device = self.to_device(inputs)
        output = self.model.generate(
            **on_device, generation_config=config, tokenizer=self.tokenizer
        )
        return output[:, on_device["input_ids"].shape[1] :]

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        """The text of each document, with the tokens it read and produced and why
        generation stopped (OpenAI's usage and finish_reason)."""
        rows = raw.tolist()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        ends = Ends.of(self.model, self.tokenizer)
        outputs = []
        for generated, text, features in zip(rows, texts, batch, strict=True):
            cut = _cut_at_stop(text, params["stop"])
            counts = usage(
                generated,
                features.length,
                ends,
                params["max_new_tokens"],
                stopped=len(cut) < len(text),
            )
            prompt = features.extra["prompt"]
            full: Any = cut
            if params["return_full_text"]:
                full = (
                    prompt + cut
                    if isinstance(prompt, str)
                    else [*prompt, {"role": "assistant", "content": cut}]
                )
            outputs.append(Output({"generated_text": full, **counts}))
        return outputs


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    return text if cut < 0 else text[:cut]
