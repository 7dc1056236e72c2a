"""Summarization with an encoder-decoder (BART, T5): ``model.generate`` directly,
since transformers 5 has no summarization pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from docqueue.worker.batcher import Shape
from docqueue.worker.runners.base import (
    Ends,
    Features,
    Output,
    Runner,
    generation_config,
    usage,
)


class SummarizeRunner(Runner):
    task = "summarize"

    def shape(self, params: dict[str, Any]) -> Shape:
        return self.generating(params["max_new_tokens"], params["num_beams"])

    def forward(self, inputs: dict[str, Any], params: dict[str, Any]) -> Any:
        config = generation_config(
            self.model,
            pad_token_id=self.tokenizer.pad_token_id,
            max_new_tokens=params["max_new_tokens"],
            min_new_tokens=params["min_new_tokens"],
            num_beams=params["num_beams"],
            length_penalty=params["length_penalty"],
            no_repeat_ngram_size=params["no_repeat_ngram_size"],
            early_stopping=params["num_beams"] > 1,
            do_sample=False,
        )
        return self.model.generate(**self.to_device(inputs), generation_config=config)

    def postprocess(
        self, raw: Any, batch: Sequence[Features], params: dict[str, Any]
    ) -> list[Output]:
        """Each summary, with the tokens read and produced and why it stopped; the
        first token of each row is the decoder's start token, not a generated one."""
        rows = raw.tolist()
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True)
        ends = Ends.of(self.model, self.tokenizer)
        limit = params["max_new_tokens"]
        return [
            Output(
                {
                    "summary_text": text.strip(),
                    **usage(row[1:], features.length, ends, limit),
                }
            )
            for row, text, features in zip(rows, texts, batch, strict=True)
        ]
