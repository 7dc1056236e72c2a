"""Scheduled pipelines: schedules from a TOML file, sources read for what is new, results
upserted into the user's table, runs recorded, one beat at a time.  Real worker, real
Redis, real SQL (the user's own database is a separate SQLite file or PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    create_engine,
    inspect,
    text,
)
from test_cli import docqueue, no_traceback

from docqueue.config import settings_env
from docqueue.core.groups import TaskSpec as GroupTask
from docqueue.core.groups import group_job_ids
from docqueue.db import schedules as state
from docqueue.db.engine import make_engine
from docqueue.errors import ExitCode
from docqueue.jobspec import JobSpec
from docqueue.producer.client import UnknownJob
from docqueue.schedules.config import ScheduleError, TableSource, TaskSpec, load
from docqueue.schedules.run import run_schedule
from docqueue.schedules.sources import read_table
from docqueue.schedules.writeback import WriteBackError, row_values, target_table, upsert
from docqueue.tasks import names, takes_text, written_back

LEASE = 3.0


def write_config(path: Path, body: str, lease: float = LEASE) -> Path:
    path.write_text(f"[beat]\nlease_seconds = {lease}\n\n{body}", encoding="utf-8")
    return path


def table_schedule(
    app_url: str, *, every: str = "1h", limit: int = 10_000, model: str = "tiny"
) -> str:
    return f"""
[[schedule]]
name = "tickets"
every = "{every}"
task = "classify"
model = "{model}"
timeout = 60

[schedule.source]
url = "{app_url}"
table = "tickets"
key = "id"
watermark = "updated_at"
text = "body"
limit = {limit}

[schedule.into]
table = "ticket_labels"
"""


def make_tickets(app_url: str, rows: list[tuple[int, int, str]]) -> None:
    engine = create_engine(app_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS tickets"
                " (id INTEGER PRIMARY KEY, updated_at INTEGER, body TEXT)"
            )
        )
        for row in rows:
            conn.execute(
                text("INSERT INTO tickets VALUES (:i, :u, :b)"),
                {"i": row[0], "u": row[1], "b": row[2]},
            )
    engine.dispose()


def labels(app_url: str) -> dict[int, dict[str, Any]]:
    engine = create_engine(app_url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM ticket_labels ORDER BY id")).mappings().all()
    engine.dispose()
    return {row["id"]: dict(row) for row in rows}


def alone(client, model: str, texts: list[str]) -> list[str]:
    """The labels the same model gives the texts in a job of their own."""
    job = client.submit_many(texts, task="classify", model=model)
    job.wait(timeout=60)
    return [row["label"] for row in job.results()]


@pytest.fixture
def app_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


def test_a_schedules_file_with_a_mistake_is_refused_naming_the_schedule(tmp_path):
    bad = {
        'every = "1h"\ncron = "0 * * * *"': "give either every",
        'cron = "61 * * * *"': "cron '61 * * * *'",
        'every = "soon"': "every 'soon'",
    }
    for when, expected in bad.items():
        config = write_config(
            tmp_path / "s.toml",
            f'[[schedule]]\nname = "nightly"\n{when}\ntask = "classify"\nmodel = "m"\n'
            'source = { directory = "in" }\ninto = { table = "out" }\n',
        )
        with pytest.raises(ScheduleError) as refused:
            load(config)
        assert "schedule 'nightly'" in str(refused.value) and expected in str(refused.value)
    config = write_config(
        tmp_path / "s.toml",
        '[[schedule]]\nname = "x"\nevery = 5\ntask = "translate"\nmodel = "m"\n'
        'source = { url = "sqlite://", table = "t", key = "id", watermark = "w", text = "b" }\n'
        'into = { table = "out; DROP TABLE t" }\n',
    )
    with pytest.raises(ScheduleError, match="schedule 'x'"):
        load(config)
    for url, expected in {
        "app:hunter2@db/app": "not a database URL",
        "postgress://app:hunter2@db/app": "no SQLAlchemy dialect 'postgress'",
    }.items():
        config = write_config(
            tmp_path / "s.toml",
            '[[schedule]]\nname = "x"\nevery = 5\ntask = "classify"\nmodel = "m"\n'
            f'source = {{ url = "{url}", table = "t", key = "id", watermark = "w", text = "b" }}\n'
            'into = { table = "out" }\n',
        )
        with pytest.raises(ScheduleError) as refused:
            load(config)
        assert f"schedule 'x' source.url: {expected}" in str(refused.value)
        assert "hunter2" not in str(refused.value)  # a URL may hold a password


@pytest.mark.parametrize(
    ("task", "source", "problem"),
    [
        (
            "rerank",
            'text = "b"',
            "rerank takes an object of fields (query, passage), not a text column: name "
            "them with source.fields = { query = ..., ... }",
        ),
        ("classify", 'fields = { query = "q" }', "classify takes text: give source.text"),
        (
            "answer",
            'fields = { question = "q", contxt = "c" }',
            "source.fields: no field 'contxt'; answer takes question, context",
        ),
        (
            "answer",
            'fields = { question = "q" }',
            "source.fields: 'context' is missing; answer takes question, context",
        ),
        ("answer", 'text = "b", fields = { question = "q" }', "name either text (a column) or"),
    ],
)
def test_a_source_that_cannot_give_a_tasks_documents_is_refused_in_one_line(
    tmp_path, task, source, problem
):
    """A source's rows give text, or the named fields a task reads (a question and
    its context, each from a column)."""
    path = write_config(
        tmp_path / "s.toml",
        f'[[schedule]]\nname = "x"\nevery = 5\ntask = "{task}"\nmodel = "m"\n'
        f'source = {{ url = "sqlite://", table = "t", key = "k", watermark = "w", {source} }}\n'
        'into = { table = "out" }\n',
    )
    with pytest.raises(ScheduleError) as refused:
        load(path)
    assert problem in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_table_source_reads_documents_of_fields_from_columns(app_url, tmp_path):
    engine = create_engine(app_url)
    with engine.begin() as conn:
        conn.execute(
            text("CREATE TABLE faq (id INTEGER PRIMARY KEY, w INTEGER, q TEXT, body TEXT)")
        )
        conn.execute(text("INSERT INTO faq VALUES (1, 1, 'When?', 'In 1999.'), (2, 1, NULL, 'x')"))
    engine.dispose()
    config = write_config(
        tmp_path / "s.toml",
        '[[schedule]]\nname = "faq"\nevery = 5\ntask = "question-answering"\nmodel = "m"\n'
        f'source = {{ url = "{app_url}", table = "faq", key = "id", watermark = "w", '
        'fields = { question = "q", context = "body" } }\ninto = { table = "answers" }\n',
    )
    schedule = load(config).get("faq")
    new = read_table(schedule.source, None)  # type: ignore[arg-type]
    assert [(r.id, r.text, r.error) for r in new.records] == [
        ("1", {"question": "When?", "context": "In 1999."}, None),
        ("2", None, "q is NULL"),
    ]


def test_a_source_key_named_like_any_output_column_is_refused_for_every_task(tmp_path):
    """The names come from the task catalogue (each task's declared write-back
    fields): a task added there is covered here without a change, alone and beside
    another task (prefixed)."""
    assert all(written_back(task) for task in names())
    text_tasks = [task for task in names() if takes_text(task)]
    assert len(text_tasks) >= 6

    def config(key: str, tasks: str) -> Path:
        return write_config(
            tmp_path / "s.toml",
            f'[[schedule]]\nname = "x"\nevery = 5\n{tasks}\n'
            f'source = {{ url = "sqlite://", table = "t", key = "{key}", watermark = "w", '
            'text = "b" }\ninto = { table = "out" }\n',
        )

    for task in text_tasks:
        one = f'task = "{task}"\nmodel = "m"'
        two = f'tasks = [ {{ task = "{task}", model = "m" }}, {{ task = "{task}", model = "n" }} ]'
        for tasks, prefix in ((one, ""), (two, f"{task}_m_".replace("-", "_"))):
            columns = [prefix + f for f, _ in written_back(task)] + [prefix + "error"]
            for column in [*columns, "annotated_at", columns[0].upper()]:
                with pytest.raises(ScheduleError) as refused:
                    load(config(column, tasks))
                message = str(refused.value)
                assert f"schedule 'x': source.key {column!r} is also the name of a column" in (
                    message
                )
                assert f'key = "source_{column}"' in message and "\n" not in message
            key = f"{task}_id".replace("-", "_")  # a key is a plain identifier
            assert load(config(key, tasks)).get("x").key_column() == key


def test_schedule_run_refuses_a_key_named_label_before_reading_a_row(client, app_url, tmp_path):
    """50 rows keyed by a column called label: before, the run wrote each result over
    its key (one row, keyed neutral), succeeded and moved the mark past all 50."""
    engine = create_engine(app_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE tickets (label TEXT PRIMARY KEY, w INTEGER, body TEXT)"))
        for i in range(50):
            conn.execute(
                text("INSERT INTO tickets VALUES (:k, :w, :b)"), {"k": f"t{i}", "w": i, "b": "ok"}
            )
    engine.dispose()
    config = write_config(
        tmp_path / "s.toml",
        '[[schedule]]\nname = "tickets"\nevery = "1h"\ntask = "classify"\nmodel = "m"\n'
        f'timeout = 2\nsource = {{ url = "{app_url}", table = "tickets", key = "label", '
        'watermark = "w", text = "body" }\ninto = { table = "ticket_labels" }\n',
    )
    result = docqueue(
        "schedule",
        "run",
        "tickets",
        "-c",
        str(config),
        cwd=tmp_path,
        env=settings_env(client.settings),
    )
    no_traceback(result)
    assert result.returncode == ExitCode.USAGE, result.stdout + result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line
    assert "schedule 'tickets': source.key 'label' is also the name of a column the results" in line
    assert 'query = "SELECT label AS source_label, ...", key = "source_label"' in line
    assert state.runs(client.db, "tickets") == []  # no run started, no mark moved
    assert not inspect(create_engine(app_url)).has_table("ticket_labels")


@pytest.mark.slow
def test_a_table_schedule_writes_back_new_rows_only_and_skips_none_sharing_a_watermark(
    client, start_worker, tiny_classifier, app_url, tmp_path
):
    start_worker({"tiny": tiny_classifier})
    texts = [
        "refund my invoice",
        "the site is down",
        "great support",
        "charged twice",
        "slow pages",
    ]
    # Rows 2, 3 and 4 share a watermark: a run that stops after row 2 must not skip 3 and 4.
    make_tickets(
        app_url, [(1, 10, texts[0]), (2, 20, texts[1]), (3, 20, texts[2]), (4, 20, texts[3])]
    )
    schedule = load(write_config(tmp_path / "s.toml", table_schedule(app_url, limit=2))).get(
        "tickets"
    )

    first = run_schedule(client, schedule, LEASE)
    assert (first.state, first.documents) == ("succeeded", 2)
    assert sorted(labels(app_url)) == [1, 2]
    second = run_schedule(client, schedule, LEASE)
    assert (second.state, second.documents) == ("succeeded", 2)
    make_tickets(app_url, [(5, 20, texts[4])])  # same watermark as the last row taken
    third = run_schedule(client, schedule, LEASE)
    assert (third.state, third.documents) == ("succeeded", 1)
    assert run_schedule(client, schedule, LEASE).documents == 0

    written = labels(app_url)
    assert sorted(written) == [1, 2, 3, 4, 5]
    assert [written[i]["label"] for i in range(1, 6)] == alone(client, "tiny", texts)
    assert all(row["error"] is None and row["score"] > 0 for row in written.values())
    runs = state.runs(client.db, "tickets")
    assert [r.documents for r in reversed(runs)] == [2, 2, 1, 0]


@pytest.mark.slow
def test_a_failed_run_leaves_the_watermark_and_a_rerun_doubles_nothing(
    client, start_worker, tiny_classifier, app_url, tmp_path
):
    make_tickets(app_url, [(1, 1, "refund please"), (2, 2, "it is broken")])
    config = write_config(
        tmp_path / "s.toml", table_schedule(app_url).replace("timeout = 60", "timeout = 1")
    )
    schedule = load(config).get("tickets")
    failed = run_schedule(client, schedule, LEASE)  # no worker yet: the run times out
    assert failed.state == "failed" and "not finished" in (failed.message or "")
    assert state.mark(client.db, "tickets") is None
    start_worker({"tiny": tiny_classifier})
    schedule = schedule.model_copy(update={"timeout": 60.0})
    done = run_schedule(client, schedule, LEASE)
    assert (done.state, done.documents) == ("succeeded", 2)  # the same rows again
    assert sorted(labels(app_url)) == [1, 2]
    with create_engine(app_url).connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM ticket_labels")).scalar() == 2


def test_a_run_does_not_overlap_one_still_going(client, app_url, tmp_path):
    make_tickets(app_url, [(1, 1, "hello")])
    schedule = load(write_config(tmp_path / "s.toml", table_schedule(app_url))).get("tickets")
    going = state.start_run(client.db, "tickets")
    assert state.claim(client.db, "tickets", going, LEASE) is not None
    skipped = run_schedule(client, schedule, LEASE)
    assert skipped.state == "skipped" and "still going" in (skipped.message or "")
    assert state.mark(client.db, "tickets") is None


def test_of_runs_and_beats_starting_together_one_claims_and_one_leads(client):
    runs = [state.start_run(client.db, "tickets") for _ in range(6)]
    start = threading.Barrier(len(runs))

    def claim(run_id: int) -> bool:
        start.wait()
        return state.claim(client.db, "tickets", run_id, LEASE) is not None

    def lead(holder: int) -> bool:
        start.wait()
        return state.take_lease(client.db, f"beat-{holder}", LEASE)

    with ThreadPoolExecutor(len(runs)) as pool:
        claimed = list(pool.map(claim, runs))
        leading = list(pool.map(lead, range(len(runs))))
    assert claimed.count(True) == 1 and leading.count(True) == 1
    holder = state.lease_holder(client.db)
    assert holder is not None and holder[0] == f"beat-{leading.index(True)}"
    assert not state.take_lease(client.db, "beat-late", LEASE)  # until it lapses


def test_a_run_taken_over_never_moves_the_mark_the_new_holder_does(client):
    late = state.start_run(client.db, "tickets")
    assert state.claim(client.db, "tickets", late, LEASE) is not None
    time.sleep(0.3)  # not heard from: the next claim takes the schedule over
    new = state.start_run(client.db, "tickets")
    taken = state.claim(client.db, "tickets", new, 0.2)
    assert taken is not None and taken.abandoned is not None and taken.abandoned.id == late
    assert not state.advance(client.db, "tickets", late, {"watermark": 9, "key": 9})
    assert state.mark(client.db, "tickets") is None
    assert state.advance(client.db, "tickets", new, {"watermark": 5, "key": 5})
    assert state.mark(client.db, "tickets") == {"watermark": 5, "key": 5}
    assert not state.advance(client.db, "tickets", late, {"watermark": 9, "key": 9})
    assert state.mark(client.db, "tickets") == {"watermark": 5, "key": 5}


def test_a_run_stopped_after_moving_the_mark_is_finished_with_nothing_redone(
    client, app_url, tmp_path
):
    make_tickets(app_url, [(1, 1, "refund please"), (2, 2, "it is broken")])
    schedule = load(write_config(tmp_path / "s.toml", table_schedule(app_url))).get("tickets")
    # A run that planned both rows, wrote them back and moved the mark, then was
    # killed before it recorded its end (no worker: nothing may be submitted again).
    killed = state.start_run(client.db, "tickets")
    assert state.claim(client.db, "tickets", killed, LEASE) is not None
    mark_to = {"watermark": 2, "key": 2}
    state.plan(client.db, killed, ["0" * 32], mark_to)
    assert state.advance(client.db, "tickets", killed, mark_to)
    time.sleep(0.3)
    outcome = run_schedule(client, schedule, 0.2)
    assert (outcome.state, outcome.documents, outcome.message) == ("succeeded", 0, None)
    assert state.mark(client.db, "tickets") == mark_to
    assert [r.state for r in state.runs(client.db, "tickets")] == ["succeeded", "abandoned"]


@pytest.fixture
def user_db(database_url: str) -> Iterator[tuple[str, str]]:
    """The user's own database (docqueue's, on PostgreSQL) and a table name of its own."""
    name = f"src_{uuid.uuid4().hex[:8]}"
    yield database_url, name
    engine = make_engine(database_url)
    with engine.begin() as conn:
        for table in (name, f"{name}_out"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


WATERMARKS: dict[str, tuple[Any, list[Any]]] = {
    "int": (BigInteger(), [5, 5, 5, 7, 7, 9]),
    "string": (String(20), ["a", "b", "b", "b", "c", "c"]),
    "datetime": (
        DateTime(timezone=True),
        [dt.datetime(2026, 1, d, 10, tzinfo=dt.timezone.utc) for d in (1, 2, 2, 2, 3, 3)],
    ),
}


@pytest.mark.parametrize("kind", [*WATERMARKS, "query"])
def test_every_row_is_taken_once_whatever_its_watermark_type_and_however_many_share_it(
    user_db, kind
):
    url, name = user_db
    column_type, values = WATERMARKS["datetime" if kind == "query" else kind]
    engine = make_engine(url)
    source = Table(
        name,
        MetaData(),
        Column("id", Uuid(), primary_key=True),
        Column("w", column_type),
        Column("body", Text()),
    )
    source.create(engine)
    keys = [uuid.UUID(int=i) for i in (6, 2, 5, 1, 4, 3)]  # not in watermark order
    with engine.begin() as conn:
        conn.execute(
            source.insert(),
            [{"id": k, "w": v, "body": f"row {k}"} for k, v in zip(keys, values, strict=True)],
        )
    engine.dispose()
    # A query may end with a semicolon, as people write them.
    query = f"SELECT id, w, body FROM {name} WHERE body LIKE 'row %';"
    where = {"query": query} if kind == "query" else {"table": name}
    spec = TableSource(url=url, key="id", watermark="w", text="body", limit=2, **where)
    taken: list[str] = []
    mark = None
    for _ in range(5):
        new = read_table(spec, mark)
        taken += [r.id.replace("-", "") for r in new.records if r.id]
        mark = json.loads(json.dumps(new.mark_to))  # as docqueue's SQL keeps it
    assert taken == [k.hex for _, k in sorted(zip(values, keys, strict=True))]


def test_a_row_without_text_is_an_error_row_naming_the_column(app_url, tmp_path):
    make_tickets(app_url, [(1, 1, "hello"), (2, 1, None)])  # type: ignore[list-item]
    schedule = load(write_config(tmp_path / "s.toml", table_schedule(app_url))).get("tickets")
    new = read_table(schedule.source, None)  # type: ignore[arg-type]
    assert [(r.id, r.text, r.error) for r in new.records] == [
        ("1", "hello", None),
        ("2", None, "body is NULL"),
    ]


def test_the_write_back_table_is_created_upserted_and_refused_when_unfit(user_db):
    url, name = user_db
    engine = make_engine(url)
    tasks = [TaskSpec(task="classify", model="a"), TaskSpec(task="embed", model="b")]
    target = target_table(engine, name, "id", 1, tasks)

    def row(key: int, label: str) -> dict[str, Any]:
        done = {"status": "done", "label": label, "score": 0.5, "embedding": [1.0, 2.0]}
        return {
            "id": key,
            **row_values(done, "classify_", "classify"),
            **row_values(done, "embed_", "embed"),
        }

    assert upsert(engine, target, "id", [row(1, "x"), row(2, "y")]) == 2
    again = target_table(engine, name, "id", 1, tasks)  # now found, not created
    assert upsert(engine, again, "id", [row(2, "v"), row(3, "w"), row(2, "z")]) == 2
    with engine.connect() as conn:
        found = conn.execute(
            text(
                f"SELECT id, classify_label, classify_error, embed_embedding"
                f" FROM {name} ORDER BY id"
            )
        ).all()
    assert [(r[0], r[1], r[2]) for r in found] == [(1, "x", None), (2, "z", None), (3, "w", None)]
    embeddings = [json.loads(r[3]) if isinstance(r[3], str) else r[3] for r in found]
    assert embeddings == [[1.0, 2.0]] * 3

    more = [tasks[0], TaskSpec(task="summarize", model="c")]
    with pytest.raises(WriteBackError, match="lacks the columns summarize_summary_text, summ"):
        target_table(engine, name, "id", 1, more)
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {name}_out (id INTEGER, label TEXT, score FLOAT,"
                " scores TEXT, error TEXT, annotated_at FLOAT)"
            )
        )
    with pytest.raises(WriteBackError, match="neither its primary key nor unique"):
        target_table(engine, f"{name}_out", "id", 1, tasks[:1])
    engine.dispose()


@pytest.mark.slow
def test_a_run_finished_for_a_killed_one_writes_each_result_to_its_own_row(
    client, start_worker, tiny_classifier, app_url, tmp_path
):
    start_worker({"tiny": tiny_classifier})
    texts = ["refund my invoice", "the site is down", "great support"]
    make_tickets(app_url, [(i, i, t) for i, t in enumerate(texts, start=1)])
    schedule = load(write_config(tmp_path / "s.toml", table_schedule(app_url))).get("tickets")
    # A run that read rows 1-3 and whose job finished, killed before it wrote back.
    killed = state.start_run(client.db, "tickets")
    assert state.claim(client.db, "tickets", killed, LEASE) is not None
    planned = read_table(schedule.source, None)  # type: ignore[arg-type]
    job_id = uuid.uuid4().hex
    state.plan(client.db, killed, [job_id], planned.mark_to)
    client.submit_many(planned.records, task="classify", model="tiny", job_id=job_id).wait(60)
    # A row that commits late, inside the range the job holds: it shifts the re-read.
    make_tickets(app_url, [(0, 1, "charged twice")])
    time.sleep(0.3)
    outcome = run_schedule(client, schedule, 0.2)
    assert outcome.state == "succeeded", outcome.message
    expected = {r["id"]: (r["label"], r["score"]) for r in client.job(job_id).results()}
    written = labels(app_url)
    assert {str(k): (v["label"], v["score"]) for k, v in written.items()} == expected
    assert sorted(written) == [1, 2, 3]


def two_task_schedule(app_url: str) -> str:
    """:func:`table_schedule` with two tasks: classify with the model ``tiny`` and
    with the model ``other``."""
    one = 'task = "classify"\nmodel = "tiny"\n'
    two = (
        'tasks = [{ task = "classify", model = "tiny" }, { task = "classify", model = "other" }]\n'
    )
    body = table_schedule(app_url)
    assert one in body
    return body.replace(one, two)


@pytest.mark.slow
def test_a_schedule_of_two_tasks_runs_them_as_one_group_and_finishes_a_killed_run_in_it(
    client, start_worker, tiny_classifier, app_url, tmp_path
):
    """A run's jobs are one job group, named by the job ids its plan records (the
    group's id is its first job's), each task written back to its own columns; a
    run killed after creating its group is finished in it, nothing computed twice."""
    start_worker({"tiny": tiny_classifier, "other": tiny_classifier})
    texts = ["refund my invoice", "the site is down", "great support"]
    make_tickets(app_url, [(i, i, t) for i, t in enumerate(texts, start=1)])
    schedule = load(write_config(tmp_path / "s.toml", two_task_schedule(app_url))).get("tickets")

    first = run_schedule(client, schedule, LEASE)
    assert (first.state, first.documents) == ("succeeded", 3), first.message
    planned = state.runs(client.db, "tickets")[0].job_ids
    group = client.group(planned[0])
    assert [job.id for job in group.jobs] == planned == group_job_ids(planned[0], 2)
    expected = alone(client, "tiny", texts)
    written = labels(app_url)
    assert [written[i]["classify_tiny_label"] for i in (1, 2, 3)] == expected
    assert [written[i]["classify_other_label"] for i in (1, 2, 3)] == expected

    # A run that read rows 4 and 5 and created its group, killed before it wrote back.
    make_tickets(app_url, [(4, 4, "charged twice"), (5, 5, "thanks a lot")])
    killed = state.start_run(client.db, "tickets")
    assert state.claim(client.db, "tickets", killed, LEASE) is not None
    new = read_table(schedule.source, state.mark(client.db, "tickets"))  # type: ignore[arg-type]
    group_id = group_job_ids(uuid.uuid4().hex, 1)[0]
    state.plan(client.db, killed, group_job_ids(group_id, 2), new.mark_to)
    tasks = [GroupTask("classify", "tiny"), GroupTask("classify", "other")]
    spec = JobSpec("classify", "tiny", name="schedule:tickets", reuse=True, group_id=group_id)
    client.enqueue_tasks(tasks, spec, iter(new.records)).wait(timeout=60)
    time.sleep(0.3)
    outcome = run_schedule(client, schedule, 0.2)
    assert (outcome.state, outcome.documents) == ("succeeded", 2), outcome.message
    assert sorted(labels(app_url)) == [1, 2, 3, 4, 5]
    with client.db.connect() as conn:
        rows = conn.execute(text("SELECT job_id, COUNT(*) FROM dq_results GROUP BY job_id")).all()
    assert {job: count for job, count in rows if job.startswith(group_id[:28])} == {
        job_id: 2 for job_id in group_job_ids(group_id, 2)
    }
    assert [r.state for r in state.runs(client.db, "tickets")][:2] == ["succeeded", "abandoned"]


@pytest.mark.slow
def test_a_directory_schedule_reads_new_and_changed_files_only(
    client, start_worker, tiny_classifier, tmp_path
):
    start_worker({"tiny": tiny_classifier})
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text(
        '{"id": "1", "text": "refund my invoice"}\n{"text": "down again"}\n'
    )
    config = write_config(
        tmp_path / "s.toml",
        f'[[schedule]]\nname = "inbox"\nevery = 3600\ntask = "classify"\nmodel = "tiny"\n'
        f'source = {{ directory = "{inbox}" }}\ninto = {{ table = "inbox_labels" }}\n',
    )
    schedule = load(config).get("inbox")
    assert run_schedule(client, schedule, LEASE).documents == 2
    assert run_schedule(client, schedule, LEASE).documents == 0  # nothing new
    (inbox / "b.jsonl").write_text('{"id": "x", "text": "thanks a lot"}\n')
    (inbox / "a.jsonl").write_text('{"id": "1", "text": "refund my invoice now"}\n')
    assert run_schedule(client, schedule, LEASE).documents == 2  # b is new, a changed
    (inbox / "c.jsonl").write_text('{"id": "y", "text": "thanks a lot"}\n')
    copied = run_schedule(client, schedule, LEASE)  # the text b.jsonl had: reused
    assert (copied.documents, copied.reused) == (1, 1)
    with client.db.connect() as conn:
        keys = sorted(conn.execute(text("SELECT key FROM inbox_labels")).scalars())
    assert keys == ["a.jsonl:1", "a.jsonl:2", "b.jsonl:x", "c.jsonl:y"]


def beat(settings, config: Path, tmp_path: Path, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "docqueue", "schedule", "beat", "--config", str(config)],
            env={**env, **settings_env(settings)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
def test_beat_runs_a_schedule_every_second_and_only_one_beat_leads(
    client, settings, start_worker, tiny_classifier, app_url, tmp_path
):
    start_worker({"tiny": tiny_classifier})
    make_tickets(app_url, [(1, 1, "refund my invoice")])
    config = write_config(tmp_path / "s.toml", table_schedule(app_url, every="1s"))
    first, second = beat(settings, config, tmp_path, "one"), beat(settings, config, tmp_path, "two")
    try:
        wait_until(lambda: 1 in labels_or_empty(app_url), 60, "the first run to write back")
        make_tickets(app_url, [(2, 2, "the site is down")])
        wait_until(lambda: 2 in labels_or_empty(app_url), 60, "a later run to write back")
        holder = state.lease_holder(client.db)
        assert holder is not None

        def succeeded() -> list[state.Run]:
            return [r for r in state.runs(client.db, "tickets", 100) if r.state == "succeeded"]

        # (a run writes back, then records itself)
        wait_until(lambda: sum(r.documents for r in succeeded()) >= 2, 30, "runs recorded")
        every_run = [(r.state, r.documents, r.message) for r in state.runs(client.db, "tickets")]
        # each row once, whichever run took it
        assert sum(r.documents for r in succeeded()) == 2, every_run
        assert len([r for r in succeeded() if r.documents]) == 2, every_run

        def listing() -> str:
            # A wide console: at rich's default 80 columns the table folds its cells.
            listed = subprocess.run(
                [sys.executable, "-m", "docqueue", "schedule", "list", "--config", str(config)],
                env={**os.environ, **settings_env(settings), "COLUMNS": "200"},
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert listed.returncode == 0, listed.stderr
            return listed.stdout

        # The table shows the newest run, and at one run a second that one may still be
        # going (or skipped) at the instant of listing: list again until it has finished.
        shown = [listing()]

        def shows_success() -> bool:
            if "succeeded" not in shown[-1]:
                shown.append(listing())
            return "succeeded" in shown[-1]

        wait_until(shows_success, 30, "schedule list to show a succeeded run")
        assert "tickets" in shown[-1] and "leads" in shown[-1], shown[-1]
        # The leader stops: the other takes over when the lease lapses.
        leader = first if holder[0].split(":")[1] == str(first.pid) else second
        other = second if leader is first else first
        leader.send_signal(signal.SIGTERM)
        leader.wait(30)
        make_tickets(app_url, [(3, 3, "thank you")])
        wait_until(lambda: 3 in labels_or_empty(app_url), 60, "the other beat to take over")
        new_holder = state.lease_holder(client.db)
        assert new_holder is not None and f":{other.pid}:" in new_holder[0]
    finally:
        for proc in (first, second):
            proc.terminate()
            proc.wait(30)


def labels_or_empty(app_url: str) -> dict[int, dict[str, Any]]:
    try:
        return labels(app_url)
    except Exception:
        return {}


@pytest.mark.slow
def test_killed_beat_and_worker_the_next_run_finishes_exactly_what_was_missed(
    client, settings, start_worker, tiny_classifier, tmp_path, database_url
):
    if not database_url.startswith("postgresql"):
        pytest.skip("the kill drill runs on PostgreSQL")
    app_url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    texts = [f"ticket number {i}: my invoice is wrong" for i in range(400)]
    make_tickets(app_url, [(i, i, t) for i, t in enumerate(texts)])
    config = write_config(tmp_path / "s.toml", table_schedule(app_url, every="1h"))
    worker = start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:SlowClassifier"},
        max_batch_rows=8,
    )
    runner = beat(settings, config, tmp_path, "killed")  # an interval never run: due now
    job_ids: list[str] = []

    def some_done() -> bool:
        nonlocal job_ids
        last = state.last_run(client.db, "tickets")
        job_ids = last.job_ids if last else []
        try:
            return bool(job_ids) and client.job(job_ids[0]).progress().done >= 16
        except UnknownJob:  # named, not created yet
            return False

    wait_until(some_done, 60, "the run to be part way")
    runner.kill()
    worker.proc.kill()
    runner.wait(10)
    worker.proc.wait(10)
    done_before = client.job(job_ids[0]).progress().done
    with client.db.connect() as conn:
        first_workers = set(
            conn.execute(
                text("SELECT DISTINCT worker_id FROM dq_results WHERE job_id = :j"),
                {"j": job_ids[0]},
            ).scalars()
        )
    assert 16 <= done_before < 400
    start_worker({"tiny": tiny_classifier})
    time.sleep(LEASE)  # the killed run is not heard from: it is abandoned
    schedule = load(config).get("tickets")
    outcome = run_schedule(client, schedule, LEASE)
    assert outcome.state == "succeeded"
    assert outcome.documents == 400  # the abandoned run's rows, written back by this run
    written = labels(app_url)
    assert sorted(written) == list(range(400))
    # The job was resumed, not redone: the new worker computed exactly what was missed.
    with client.db.connect() as conn:
        workers = (
            conn.execute(
                text("SELECT worker_id FROM dq_results WHERE job_id = :j"), {"j": job_ids[0]}
            )
            .scalars()
            .all()
        )
    assert len(workers) == 400
    assert sum(w not in first_workers for w in workers) == 400 - done_before
    runs = {r.id: r.state for r in state.runs(client.db, "tickets")}
    assert sorted(runs.values()) == ["abandoned", "succeeded"]


def test_runs_are_numbered_per_schedule_and_the_list_keeps_each_row_on_one_line(
    settings, app_url, tmp_path
):
    """`schedule run` counts the schedule's own runs ("tickets run 1" for its first,
    whatever other schedules ran), and `schedule list` through a pipe (80 columns)
    keeps each schedule on one line instead of folding every cell."""
    make_tickets(app_url, [])  # nothing new: a run succeeds without a worker
    body = table_schedule(app_url)
    config = write_config(tmp_path / "s.toml", body + body.replace('"tickets"', '"other"', 1))
    env = {**os.environ, **settings_env(settings)}
    env.pop("COLUMNS", None)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "docqueue", "schedule", *args, "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert cli("run", "other").startswith("other run 1: succeeded")
    assert cli("run", "other").startswith("other run 2: succeeded")
    assert cli("run", "tickets").startswith("tickets run 1: succeeded, 0 documents")
    listed = cli("list").splitlines()
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    row = next(line for line in listed if line.lstrip("│ ").startswith("tickets"))
    assert re.search(rf"every 3600s .*{when}.*{when}.*succeeded", row), "\n".join(listed)


@pytest.mark.slow
def test_a_schedule_answers_questions_from_two_columns_and_writes_the_answers_back(
    client, start_worker, app_url, tmp_path
):
    """Documents of fields through a whole run: each row's question and context
    answered as the model answers them alone, and written back by key."""
    from golden.record import build_qa_model

    model = str(build_qa_model(tmp_path / "qa"))
    start_worker({"qa": model}, dtype="float32")
    rows = [(1, "What is small?", "The window is small."), (2, "Who wrote it?", "Ada wrote it.")]
    engine = create_engine(app_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE faq (id INTEGER PRIMARY KEY, w INTEGER, q TEXT, c TEXT)"))
        for key, question, context in rows:
            conn.execute(
                text("INSERT INTO faq VALUES (:k, 1, :q, :c)"),
                {"k": key, "q": question, "c": context},
            )
    engine.dispose()
    config = write_config(
        tmp_path / "s.toml",
        '[[schedule]]\nname = "faq"\nevery = "1h"\ntask = "answer"\nmodel = "qa"\n'
        f'timeout = 60\nsource = {{ url = "{app_url}", table = "faq", key = "id", '
        'watermark = "w", fields = { question = "q", context = "c" } }\n'
        'into = { table = "faq_answers" }\n',
    )
    run = run_schedule(client, load(config).get("faq"), LEASE)
    assert (run.state, run.documents) == ("succeeded", 2)
    with create_engine(app_url).connect() as conn:
        written = {
            row.id: row._mapping
            for row in conn.execute(text("SELECT * FROM faq_answers ORDER BY id"))
        }
    for key, question, context in rows:
        alone = client.submit(
            {"question": question, "context": context}, task="answer", model="qa"
        ).result(timeout=60)
        assert written[key]["answer"] == alone["answer"] != ""
        assert written[key]["start"] == alone["start"]
        assert context[alone["start"] : alone["end"]] == alone["answer"]
