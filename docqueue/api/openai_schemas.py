"""OpenAI's request and response bodies for the synchronous endpoints, and how a
request maps onto docqueue's tasks and parameters.

The shapes follow the official ``openai`` package's types (``CreateEmbeddingResponse``,
``Completion``, ``ChatCompletion``, ``Model``).  Requests are strict: a field docqueue
cannot honour (``logprobs``, ``tools``, ``n`` above 1, ``stream``) is refused with a
message naming it, never ignored, so a caller never gets something other than what it
asked for.  Parameter ranges are docqueue's own (:mod:`docqueue.params`), checked by
the Client at submit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from docqueue.api.schemas import NoNul
from docqueue.protocol import ModelName

#: Inputs one request may carry (each is one document on the interactive lane).
MAX_INPUTS = 2048

Prompt = Annotated[str, StringConstraints(min_length=1), NoNul]
Stop = Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class _Out(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


# --- embeddings ------------------------------------------------------------------------


class EmbeddingsRequest(_Strict):
    model: ModelName
    """The docqueue model's name (GET /v1/models): an embedding model."""
    input: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_INPUTS)]
    """A text, or a list of texts (token arrays are not accepted)."""
    encoding_format: Literal["float", "base64"] = "float"
    """float: lists of numbers; base64: little-endian float32 bytes, base64-encoded."""
    dimensions: int | None = Field(None, ge=1)
    """Must equal the model's own dimension when given (docqueue does not shorten)."""
    user: str | None = None
    """Accepted and ignored."""

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class EmbeddingOut(_Out):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str
    """The vector: numbers, or base64 of little-endian float32 (encoding_format)."""


class EmbeddingUsage(_Out):
    prompt_tokens: int
    """The tokens the model read (after truncation to its context)."""
    total_tokens: int


class EmbeddingsResponse(_Out):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str
    usage: EmbeddingUsage


# --- generation ------------------------------------------------------------------------


class _Generation(_Strict):
    """What completions and chat completions share."""

    model: ModelName
    """The docqueue model's name (GET /v1/models): a causal language model."""
    max_tokens: int | None = Field(None, ge=1)
    """The most tokens to generate (docqueue's max_new_tokens; default 64)."""
    temperature: float | None = Field(None, ge=0)
    """0 or absent: greedy decoding (docqueue's default); above 0: sampling."""
    top_p: float | None = None
    """Nucleus sampling (with a temperature above 0)."""
    stop: Stop | Annotated[list[Stop], Field(max_length=8)] | None = None
    """Generation ends at the first of these strings (not included)."""
    seed: int | None = None
    """Seeded sampling: the same seed and document give the same text."""
    stream: bool | None = None
    """Only false: docqueue answers with the whole result."""
    n: int | None = None
    """Only 1: one choice per prompt."""
    presence_penalty: float | None = None
    """Only 0."""
    frequency_penalty: float | None = None
    """Only 0."""
    user: str | None = None
    """Accepted and ignored."""

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("streaming is not supported: send stream false (or leave it out)")
        return value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("docqueue returns one choice per prompt: send n 1 (or leave it out)")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("not supported by docqueue: send 0 (or leave it out)")
        return value

    def params(self, max_tokens: int | None = None) -> dict[str, Any]:
        """docqueue's generate parameters (checked by :mod:`docqueue.params` at submit)."""
        params: dict[str, Any] = {}
        if (max_tokens or self.max_tokens) is not None:
            params["max_new_tokens"] = max_tokens or self.max_tokens
        if self.temperature:
            params["do_sample"] = True
            params["temperature"] = self.temperature
            if self.top_p is not None:
                params["top_p"] = self.top_p
        if self.stop is not None:
            params["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.seed is not None:
            params["seed"] = self.seed
        return params


class CompletionsRequest(_Generation):
    prompt: Prompt | Annotated[list[Prompt], Field(min_length=1, max_length=MAX_INPUTS)]
    """A text, or a list of texts: one choice each (token arrays are not accepted)."""
    echo: bool = False
    """Return the prompt followed by the completion."""

    def texts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def generate_params(self) -> dict[str, Any]:
        params = self.params()
        if self.echo:
            params["return_full_text"] = True
        return params


class TextPart(_Strict):
    type: Literal["text"]
    text: Annotated[str, NoNul]


class ChatMessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, NoNul] | Annotated[list[TextPart], Field(min_length=1)]
    """Text, or text parts (joined)."""
    name: str | None = None
    """Accepted and ignored."""

    def plain(self) -> dict[str, str]:
        content = self.content
        text = content if isinstance(content, str) else "".join(p.text for p in content)
        return {"role": self.role, "content": text}


class ChatCompletionsRequest(_Generation):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=1024)]
    """The conversation, rendered with the model's chat template."""
    max_completion_tokens: int | None = Field(None, ge=1)
    """The most tokens to generate (the newer name of max_tokens)."""

    def generate_params(self) -> dict[str, Any]:
        return self.params(self.max_completion_tokens)

    def document(self) -> list[dict[str, str]]:
        return [m.plain() for m in self.messages]


FinishReason = Literal["stop", "length"]


class CompletionUsage(_Out):
    prompt_tokens: int
    """The tokens the model read: the prompt (or chat template) after truncation."""
    completion_tokens: int
    """The tokens it generated, an end-of-text token included."""
    total_tokens: int


class CompletionChoice(_Out):
    index: int
    text: str
    finish_reason: FinishReason
    """length: max_tokens were generated; stop: the model ended, or a stop string."""
    logprobs: None = None


class CompletionResponse(_Out):
    id: str
    """cmpl-<job id of the first prompt>; each prompt is a docqueue job of its own."""
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | None
    """Summed over the choices; null only for results stored before docqueue
    counted tokens."""


class AssistantMessage(_Out):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class ChatChoice(_Out):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    """length: max_tokens were generated; stop: the model ended, or a stop string."""
    logprobs: None = None


class ChatCompletionResponse(_Out):
    id: str
    """chatcmpl-<job id>: GET /api/documents/<job id> reads the same result."""
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage | None
    """null only for a result stored before docqueue counted tokens."""


# --- models ------------------------------------------------------------------------------


class OpenAIModel(_Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    """0: docqueue does not know when a model was made."""
    owned_by: str = "docqueue"
    tasks: list[str]
    """docqueue's extension: the tasks live workers do with it."""


class OpenAIModelList(_Out):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]
