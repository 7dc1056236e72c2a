"""OpenAI's request bodies and the API's response models: the synchronous
endpoints' requests and how they map onto docqueue's tasks and parameters, the
models list, and the file and batch objects.  The synchronous endpoints' response
bodies are built by :mod:`docqueue.formats.openai_bodies` (a batch's output lines
carry the same).

The shapes follow the official ``openai`` package's types (``CreateEmbeddingRequest``,
``Model``, ``FileObject``, ``Batch``).  Requests are strict: a field docqueue
cannot honour (``logprobs``, ``tools``, ``n`` above 1, ``stream``) is refused with a
message naming it, never ignored, so a caller never gets something other than what it
asked for.  Parameter ranges are docqueue's own (:mod:`docqueue.params`), checked by
the Client at submit.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from docqueue.api.schemas import NoNul
from docqueue.core.batch_object import Batch, Status
from docqueue.core.files import FileInfo
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


# --- files -------------------------------------------------------------------------------


class FileOut(_Out):
    """OpenAI's file object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None

    @classmethod
    def of(cls, info: FileInfo) -> FileOut:
        return cls(
            id=info.id,
            bytes=info.bytes,
            created_at=int(info.created_at),
            filename=info.filename,
            purpose=info.purpose,
        )


class FileList(_Out):
    """OpenAI's list of files (a cursor page)."""

    object: Literal["list"] = "list"
    data: list[FileOut]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(_Out):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


# --- batches -----------------------------------------------------------------------------

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64), NoNul]
MetadataValue = Annotated[str, StringConstraints(max_length=512), NoNul]


class BatchCreate(_Strict):
    input_file_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    """A file uploaded with purpose batch."""
    endpoint: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    """/v1/embeddings, /v1/chat/completions, /v1/completions, /v1/docqueue/classify or
    /v1/docqueue/summarize."""
    completion_window: Literal["24h"]
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    output_expires_after: dict[str, Any] | None = None
    """Accepted for the SDKs' sake; docqueue keeps results until the job is pruned."""


class RequestCounts(_Out):
    total: int
    completed: int
    """Requests that succeeded (lines of the output file)."""
    failed: int
    """Requests that failed, were refused or were cancelled (lines of the error file)."""


class BatchErrorOut(_Out):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(_Out):
    object: Literal["list"] = "list"
    data: list[BatchErrorOut]


class BatchOut(_Out):
    """OpenAI's batch object."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    model: str | None
    """The docqueue model that runs the lines (null for a batch that failed)."""
    errors: BatchErrors | None
    """The first lines that cannot run (all of them are in the error file); for a
    failed batch, why it failed."""
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, str] | None

    @classmethod
    def of(cls, batch: Batch) -> BatchOut:
        return cls(
            id=batch.id,
            endpoint=batch.endpoint,
            model=batch.model,
            errors=BatchErrors(data=[BatchErrorOut(**e) for e in batch.errors])
            if batch.errors
            else None,
            input_file_id=batch.input_file_id,
            completion_window=batch.completion_window,
            status=batch.status,
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            created_at=batch.created_at,
            in_progress_at=batch.in_progress_at,
            expires_at=batch.expires_at,
            finalizing_at=batch.finalizing_at,
            completed_at=batch.completed_at,
            failed_at=batch.failed_at,
            expired_at=batch.expired_at,
            cancelling_at=batch.cancelling_at,
            cancelled_at=batch.cancelled_at,
            request_counts=RequestCounts(**asdict(batch.request_counts)),
            metadata=batch.metadata,
        )


class BatchList(_Out):
    object: Literal["list"] = "list"
    data: list[BatchOut]
    first_id: str | None
    last_id: str | None
    has_more: bool
