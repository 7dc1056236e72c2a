"""Parameters every task that generates tokens shares (summarize, generate)."""

from __future__ import annotations

from pydantic import Field, model_validator

from docqueue.tasks.declaration import Params

#: Hard ceiling whatever a worker allows; a worker's own cap is usually lower.
MAX_NEW_TOKENS_LIMIT = 8192


class GenerationParams(Params):
    max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS_LIMIT)
    min_new_tokens: int = Field(0, ge=0, le=MAX_NEW_TOKENS_LIMIT)

    @model_validator(mode="after")
    def _min_below_max(self) -> GenerationParams:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens "
                f"({self.max_new_tokens})"
            )
        return self
