"""The lines of an OpenAI batch input file, read as docqueue documents.

Each line is a request, ``{"custom_id", "method": "POST", "url", "body"}``, for the
batch's endpoint.  The body maps to a docqueue task, its text and its parameters
(validated by :mod:`docqueue.params`); a docqueue job runs one model with one set
of parameters, so every line must name the same model and ask for the same
parameters as the batch's first runnable line.  A line that cannot run becomes a
document refused at the door: an error row whose message names the line, which is
what the batch's error file reports for it.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from docqueue.errors import Refused
from docqueue.params import InvalidParams, validate_params
from docqueue.producer.documents import Checked, Record, check
from docqueue.tasks import InputShape, TaskDeclaration, declared, every, fields_of

#: OpenAI's endpoints docqueue runs batch lines of (their bodies are OpenAI's, read
#: here); the task each runs is the one that declares it.
OPENAI_ENDPOINTS = ("/v1/embeddings", "/v1/chat/completions", "/v1/completions")
#: docqueue's own batch-line endpoint of a task: ``/v1/docqueue/<task>``.
DOCQUEUE_PREFIX = "/v1/docqueue/"
#: The first line errors a batch object lists (all of them are in the error file).
MAX_LISTED_ERRORS = 100
#: Body fields accepted with their OpenAI defaults only (anything else is refused).
NEUTRAL = {
    "n": 1,
    "stream": False,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "best_of": 1,
    "logprobs": None,
    "suffix": None,
    "dimensions": None,
    "logit_bias": None,
    "top_logprobs": None,
}
#: The fields of a batch line.
LINE_FIELDS = frozenset({"custom_id", "method", "url", "body"})
#: Body fields that change nothing docqueue computes (kept by OpenAI for its logs).
IGNORED = {"user", "store", "metadata"}


class LineError(Refused, ValueError):
    """A line that cannot run; ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class Request:
    """What a line asks for: text (or chat messages), the docqueue parameters, and
    how the response body is shaped (``options``)."""

    custom_id: str
    model: str
    text: Any
    params: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def endpoints() -> dict[str, str]:
    """Every supported endpoint, and the task each runs: OpenAI's that a task
    declares, then ``/v1/docqueue/<task>`` of each task that declares a batch body."""
    tasks = every()
    found = {e: d.name for e in OPENAI_ENDPOINTS for d in tasks if e in d.openai_endpoints}
    found.update((DOCQUEUE_PREFIX + d.name, d.name) for d in tasks if d.batch_endpoint is not None)
    return found


def task_of(endpoint: str) -> str:
    """The task a supported endpoint's lines run."""
    return endpoints()[endpoint]


def endpoint_problem(endpoint: str) -> str | None:
    supported = endpoints()
    if endpoint in supported:
        return None
    return f"endpoint {endpoint!r} is not supported; use one of {', '.join(supported)}"


def split_lines(chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line) of a file given in chunks; blank lines skipped, and
    a byte order mark opening the file left out."""
    rest = b""
    number = 0
    for i, chunk in enumerate(chunks):
        if i == 0:
            chunk = chunk.removeprefix(codecs.BOM_UTF8)
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        for part in parts:
            number += 1
            if part.strip():
                yield number, part
    if rest.strip():
        yield number + 1, rest


_DECODER = json.JSONDecoder()


def parse(line: bytes, endpoint: str) -> Request:
    """The request a line makes; raises :class:`LineError` naming what is wrong."""
    try:
        # decoded here: json.loads of bytes first guesses their encoding, a tenth of
        # the time a line takes
        request = _DECODER.decode(line.decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LineError(f"malformed JSON ({exc})") from None
    if not isinstance(request, dict):
        raise LineError(f"a line is a JSON object, not {type(request).__name__}")
    custom_id = request.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise LineError("custom_id: a non-empty string is required", "custom_id")
    if unknown := request.keys() - LINE_FIELDS:
        raise LineError(f"{sorted(unknown)[0]}: not a field of a batch line", sorted(unknown)[0])
    if request.get("method", "POST") != "POST":
        raise LineError(f"method {request.get('method')!r}: use POST", "method")
    url = request.get("url")
    if url != endpoint:
        raise LineError(f"url {url!r} differs from the batch's endpoint {endpoint}", "url")
    body = request.get("body")
    if not isinstance(body, dict):
        raise LineError("body: a JSON object is required", "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise LineError("body.model: the docqueue model name is required", "body.model")
    if endpoint in OPENAI_MAPPERS:
        text, params, options = OPENAI_MAPPERS[endpoint](body)
    else:
        text, params, options = _docqueue_body(declared(task_of(endpoint)), body)
    return Request(custom_id, model, text, params, options)


# --- bodies -------------------------------------------------------------------------


Mapped = tuple[Any, dict[str, Any], dict[str, Any]]


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    for name, value in body.items():
        if name in allowed or name in IGNORED or name == "model":
            continue
        if name in NEUTRAL:
            if value != NEUTRAL[name] and value is not None:
                raise LineError(
                    f"body.{name}={json.dumps(value)} is not supported by docqueue "
                    f"(only {json.dumps(NEUTRAL[name])})",
                    f"body.{name}",
                )
            continue
        raise LineError(f"body.{name} is not supported by docqueue", f"body.{name}")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise LineError(f"body.{name}: one string is required (one input per line)", f"body.{name}")
    if not value.strip():
        raise LineError(f"body.{name}: empty text", f"body.{name}")
    return value


def _sampling(body: dict[str, Any], max_tokens: str) -> dict[str, Any]:
    """Generation parameters from OpenAI's: temperature 0 (or none) is greedy."""
    params: dict[str, Any] = {}
    tokens = body.get(max_tokens, body.get("max_tokens"))
    if tokens is not None:
        params["max_new_tokens"] = tokens
    temperature = body.get("temperature")
    if temperature is not None and temperature != 0:
        params.update(do_sample=True, temperature=temperature)
    if body.get("top_p") is not None:
        params["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else stop
    if body.get("seed") is not None:
        params["seed"] = body["seed"]
    return params


GENERATION = {"max_tokens", "temperature", "top_p", "stop", "seed"}


def _embeddings(body: dict[str, Any]) -> Mapped:
    _check_fields(body, {"input", "encoding_format"})
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise LineError(
            f"body.encoding_format {fmt!r}: use float or base64", "body.encoding_format"
        )
    return _text(body, "input"), {}, {"encoding_format": fmt}


def _chat(body: dict[str, Any]) -> Mapped:
    _check_fields(body, {"messages", "max_completion_tokens", *GENERATION})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise LineError("body.messages: a list of messages is required", "body.messages")
    return (
        [_message(m, i) for i, m in enumerate(messages)],
        _sampling(body, "max_completion_tokens"),
        {},
    )


def _message(message: Any, index: int) -> dict[str, Any]:
    where = f"body.messages.{index}"
    if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
        raise LineError(f"{where}: a message has role and content only", where)
    content = message.get("content")
    if isinstance(content, list):  # text parts
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise LineError(f"{where}.content: only text parts are supported", f"{where}.content")
        content = "".join(str(p.get("text", "")) for p in content)
    return {"role": message.get("role"), "content": content}


def _completions(body: dict[str, Any]) -> Mapped:
    _check_fields(body, {"prompt", "echo", *GENERATION})
    params = _sampling(body, "max_tokens")
    if body.get("echo"):
        params["return_full_text"] = True
    return _text(body, "prompt"), params, {}


OPENAI_MAPPERS: dict[str, Callable[[dict[str, Any]], Mapped]] = {
    "/v1/embeddings": _embeddings,
    "/v1/chat/completions": _chat,
    "/v1/completions": _completions,
}


def _docqueue_body(task: TaskDeclaration, body: dict[str, Any]) -> Mapped:
    """A ``/v1/docqueue/<task>`` body: ``input`` (the text), and the task's
    parameters by their names, or by the names its endpoint gives them instead
    (summarize's ``max_tokens``, as OpenAI names it)."""
    endpoint = task.batch_endpoint
    renamed = dict(endpoint.renamed) if endpoint is not None else {}
    names = {name: name for name in task.params.model_fields if name not in renamed.values()}
    names.update(renamed)
    _check_fields(body, {*names, "input"})
    params = {names[k]: v for k, v in body.items() if k in names and v is not None}
    shape = fields_of(task.name)
    if shape is not None:  # an object of the task's fields (rerank: query, passage)
        return _fields(body, "input", shape), params, {}
    return _text(body, "input"), params, {}


def _fields(body: dict[str, Any], name: str, shape: InputShape) -> dict[str, str]:
    """``body[name]`` as an object of text fields; what each field holds is checked
    with the document (:func:`docqueue.protocol.fields_problem`)."""
    value = body.get(name)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        wanted = ", ".join(f'"{f}": "..."' for f in shape.fields)
        raise LineError(
            f"body.{name}: an object of strings is required ({{{wanted}}})", f"body.{name}"
        )
    return value


# --- a file's lines as documents ------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the batch's first runnable line sets for every line: the model, the
    validated parameters (and the raw ones they came from) and the options."""

    model: str
    params: dict[str, Any]
    raw_params: dict[str, Any]
    options: dict[str, Any]


def first_plan(
    lines: Iterable[tuple[int, bytes]], endpoint: str, max_new_tokens_cap: int | None
) -> Plan | list[dict[str, Any]]:
    """The plan of the first line that can run or, when none can, the errors of
    the first lines (OpenAI's batch ``errors``: why the batch failed)."""
    task = task_of(endpoint)
    errors: list[dict[str, Any]] = []
    for number, line in lines:
        try:
            request = parse(line, endpoint)
            params = validate_params(task, request.params, max_new_tokens_cap=max_new_tokens_cap)
        except (LineError, InvalidParams) as exc:
            if len(errors) < MAX_LISTED_ERRORS:
                errors.append(line_error(number, exc))
            continue
        return Plan(request.model, params, request.params, request.options)
    return errors or [
        {"code": "empty_file", "line": None, "message": "the file has no lines", "param": None}
    ]


def line_error(number: int, exc: Exception) -> dict[str, Any]:
    """A line that cannot run, as an entry of OpenAI's batch ``errors``."""
    return {
        "code": "invalid_request",
        "line": number,
        "message": f"line {number}: {exc}",
        "param": getattr(exc, "param", None),
    }


class Reader:
    """The documents of a batch file, one per line, for :meth:`Client.enqueue`;
    ``errors`` collects the first line errors (OpenAI's batch ``errors``)."""

    def __init__(
        self,
        endpoint: str,
        plan: Plan,
        max_new_tokens_cap: int | None,
        max_chars: int = sys.maxsize,
    ) -> None:
        self.endpoint, self.plan, self.cap = endpoint, plan, max_new_tokens_cap
        self.task = task_of(endpoint)
        self.max_chars = max_chars
        self.errors: list[dict[str, Any]] = []

    def records(self, lines: Iterable[tuple[int, bytes]]) -> Iterator[Record | Checked]:
        """Each line's document, checked as the Client checks it (``max_chars``: the
        Client's limit), so that a refusal names its line and nothing is checked twice."""
        for number, line in lines:
            try:
                request = parse(line, self.endpoint)
                self._check_plan(request)
                record = Record(request.text, request.custom_id)
                checked = check(record, task=self.task, max_chars=self.max_chars)
                if checked.error:
                    raise LineError(checked.error)
            except (LineError, InvalidParams) as exc:
                yield self._refused(number, line, exc)
                continue
            yield checked

    def _check_plan(self, request: Request) -> None:
        plan = self.plan
        if request.model != plan.model:
            raise LineError(
                f"body.model {request.model!r} differs from the batch's model {plan.model!r} "
                "(a batch runs one model)",
                "body.model",
            )
        if request.params != plan.raw_params:
            params = validate_params(self.task, request.params, max_new_tokens_cap=self.cap)
            if params != plan.params:
                raise LineError(
                    f"parameters {json.dumps(request.params)} differ from the batch's "
                    f"{json.dumps(plan.raw_params)} (docqueue runs a batch with one set)",
                    "body",
                )
        if request.options != plan.options:
            raise LineError(
                f"{json.dumps(request.options)} differs from the batch's "
                f"{json.dumps(plan.options)}",
                "body",
            )

    def _refused(self, number: int, line: bytes, exc: Exception) -> Record:
        error = line_error(number, exc)
        if len(self.errors) < MAX_LISTED_ERRORS:
            self.errors.append(error)
        return Record(None, _custom_id(line), error["message"])


def _custom_id(line: bytes) -> str | None:
    """The custom_id of a line that could not run, when it can be read."""
    try:
        value = json.loads(line).get("custom_id")
    except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
        return None
    return value if isinstance(value, str) else None
