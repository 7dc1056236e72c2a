"""Dead letters as an operator sees them: entries a real worker set aside, listed,
shown, purged and replayed with ``docqueue dead-letters`` (a real process) and the
Client, on a real Redis.  Bad entries are pushed with plain redis commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_until

from docqueue import deadletters
from docqueue.broker import redis_client
from docqueue.config import Settings, settings_env
from docqueue.producer.client import Client
from docqueue.protocol import bulk_queue

QUEUE = bulk_queue("classify", "tiny")
# The transport does not touch SQL: one database is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def docqueue(settings: Settings, *args: str, cwd: Path, **env: str):
    """``docqueue ARGS`` as an operator runs it, with the test's settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCQUEUE_")}
    return subprocess.run(
        [sys.executable, "-m", "docqueue", *args],
        cwd=cwd,
        env={**base, **settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess, code: int) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    return line


def test_the_cap_drops_the_oldest_and_the_cli_lists_shows_and_purges(
    client, settings, start_worker, tiny_classifier, tmp_path
):
    worker = start_worker({"tiny": tiny_classifier}, dead_letter_limit=3)
    broker = redis_client(settings.redis())
    for i in range(5):
        broker.lpush(QUEUE, f"garbage {i}".encode())
    wait_until(lambda: deadletters.dropped(broker) == 2, 20, "five entries set aside")
    job = client.submit_many(["still served"], task="classify", model="tiny")
    assert job.wait(timeout=60).done == 1
    assert worker.proc.poll() is None

    # the Client: newest first, capped, the dropped ones counted
    newest = client.dead_letters()
    assert [client.dead_letter(e.id).body for e in newest] == [
        b"garbage 4",
        b"garbage 3",
        b"garbage 2",
    ]
    assert [e.id for e in client.dead_letters(limit=1, offset=1)] == [newest[1].id]
    assert all(e.queue == QUEUE and e.reason.startswith("not JSON: ") for e in newest)
    counts = client.dead_letter_counts()
    assert (counts.held, counts.dropped) == (3, 2)

    env = {"DOCQUEUE_DEAD_LETTER_LIMIT": "3"}
    listed = docqueue(settings, "dead-letters", "list", cwd=tmp_path, **env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "QUEUE", "REASON", "SIZE", "WHEN"]
    assert [line.split()[0] for line in lines[1:]] == [str(e.id) for e in newest]
    assert all(QUEUE in line and "not JSON" in line for line in lines[1:])
    assert listed.stderr.strip() == "3 dead letters held (limit 3); 2 dropped"

    as_json = docqueue(settings, "dead-letters", "list", "--json", cwd=tmp_path, **env)
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in newest]
    assert rows[0]["queue"] == QUEUE and rows[0]["size"] == len("garbage 4")

    shown = docqueue(settings, "dead-letters", "show", str(newest[0].id), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"queue:   {QUEUE}" in shown.stdout and "reason:  not JSON: " in shown.stdout
    assert shown.stdout.rstrip().endswith("garbage 4")
    shown_json = json.loads(
        docqueue(settings, "dead-letters", "show", str(newest[0].id), "--json", cwd=tmp_path).stdout
    )
    assert shown_json["body"] == "garbage 4"

    missing = docqueue(settings, "dead-letters", "show", "999", cwd=tmp_path)
    assert one_line_error(missing, 2) == "error: no dead letter 999"
    neither = docqueue(settings, "dead-letters", "purge", cwd=tmp_path)
    assert "name dead letter ids, or --all" in one_line_error(neither, 2)

    purged = docqueue(settings, "dead-letters", "purge", str(newest[0].id), "999", cwd=tmp_path)
    assert purged.stdout.strip() == "1 dead letter purged (1 not found)"
    assert [e.id for e in client.dead_letters()] == [e.id for e in newest[1:]]
    everything = docqueue(settings, "dead-letters", "purge", "--all", cwd=tmp_path)
    assert everything.stdout.strip() == "2 dead letters purged"
    assert client.dead_letters() == []


def test_replay_puts_a_fixed_message_back_and_it_is_processed(
    client, settings, start_worker, tiny_classifier, tmp_path
):
    # A valid message set aside as a worker sets aside one it refuses; whatever refused
    # it has been fixed since.
    job = client.submit_many(["replay me", "and me"], task="classify", model="tiny")
    broker = redis_client(settings.redis())
    [message] = broker.lrange(QUEUE, 0, -1)
    broker.delete(QUEUE)
    refused = deadletters.set_aside(broker, QUEUE, "refused before the fix", message, limit=10)
    # and one kept only in part: it cannot be replayed
    cut = deadletters.set_aside(
        broker, QUEUE, "too big", b"x" * 200_000, limit=10, max_bytes=100_000
    )
    start_worker({"tiny": tiny_classifier})

    replayed = docqueue(settings, "dead-letters", "replay", "--all", cwd=tmp_path)
    assert replayed.returncode == 1  # one could not be
    assert replayed.stdout.strip() == "1 dead letter replayed"
    assert f"dead letter {cut} not replayed: only the first" in replayed.stderr
    assert job.wait(timeout=60).done == 2
    assert [e.id for e in client.dead_letters()] == [cut]

    assert client.replay_dead_letters([refused]) == ([], {refused: "no such dead letter"})
    assert client.purge_dead_letters() == 1
    assert client.dead_letter_counts().held == 0


def test_the_client_needs_redis_for_dead_letters(settings):
    from docqueue.producer.client import NoRedis

    with (
        Client(settings.model_copy(update={"redis_url": None})) as sql_only,
        pytest.raises(NoRedis),
    ):
        sql_only.dead_letters()
