"""Dead letters through the native API: entries a real worker set aside (garbage
pushed with a plain LPUSH onto the queue it serves), listed, shown, replayed and
purged over HTTP against a real ``docqueue serve``."""

from __future__ import annotations

import base64

import pytest
import test_api
from conftest import wait_until
from test_api import error_of

from docqueue import deadletters
from docqueue.broker import redis_client
from docqueue.protocol import bulk_queue

QUEUE = bulk_queue("classify", "tiny")
serve = test_api.serve  # the fixture: a real `docqueue serve`
# Dead letters live in Redis only: one database is enough.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_dead_letters_listed_shown_replayed_and_purged(
    serve, settings, start_worker, tiny_classifier
):
    start_worker({"tiny": tiny_classifier})
    broker = redis_client(settings.redis())
    garbage = [b"garbage 0", b"garbage 1", b"\xff\xfe not utf-8"]
    for body in garbage:
        broker.lpush(QUEUE, body)
    wait_until(lambda: deadletters.count(broker) == 3, 20, "three entries set aside")
    http = serve().http()

    first = http.get("/api/dead-letters", params={"limit": 2}).json()
    assert (first["held"], first["dropped"], first["next_offset"]) == (3, 0, 2)
    assert first["limit"] == settings.dead_letter_limit
    rest = http.get("/api/dead-letters", params={"limit": 2, "offset": 2}).json()
    assert rest["next_offset"] is None
    entries = first["data"] + rest["data"]  # newest first
    assert [e["queue"] for e in entries] == [QUEUE] * 3
    assert all(e["reason"].startswith("not JSON") and not e["truncated"] for e in entries)
    newest, *_, oldest = [e["id"] for e in entries]

    shown = http.get(f"/api/dead-letters/{newest}").json()
    assert base64.b64decode(shown["body_base64"]) == garbage[2]
    assert shown["body_text"] is None and shown["size"] == len(garbage[2])
    assert http.get(f"/api/dead-letters/{oldest}").json()["body_text"] == "garbage 0"

    # replayed: back on its queue, still garbage, so set aside again as a new entry
    replayed = http.post("/api/dead-letters/replay", json={"ids": [oldest, 999]}).json()
    assert replayed == {"replayed": [oldest], "skipped": {"999": "no such dead letter"}}
    wait_until(lambda: deadletters.count(broker) == 3, 20, "the replayed entry set aside again")
    again = http.get("/api/dead-letters", params={"limit": 1}).json()["data"][0]
    assert again["id"] > newest
    assert http.get(f"/api/dead-letters/{again['id']}").json()["body_text"] == "garbage 0"
    assert "no dead letter" in error_of(http.get(f"/api/dead-letters/{oldest}"), 404)["message"]

    assert http.post("/api/dead-letters/purge", json={"ids": [newest]}).json() == {"purged": 1}
    assert "ids" in error_of(http.post("/api/dead-letters/purge", json={}), 422)["message"]
    bad_id = http.post("/api/dead-letters/purge", json={"ids": [0]})
    assert error_of(bad_id, 422)["param"] == "ids.0"
    assert http.post("/api/dead-letters/purge", json={"all": True}).json() == {"purged": 2}
    assert http.get("/api/dead-letters").json()["held"] == 0
    error_of(http.get("/api/dead-letters/abc"), 422)
    error_of(http.get("/api/dead-letters", headers={"Authorization": "Bearer wrong"}), 401)
