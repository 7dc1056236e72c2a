"""What the API lends to the outside: the hosts it answers to and the origins that may
change something (DNS rebinding, cross-site forms), its docs, the page's headers
and sessions, and its Redis connections under many waiting requests.  Against a
real ``docqueue serve`` with real Redis and SQL."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import test_api
from proxy import Proxy
from test_api import AUTH, GONE, TOKEN, error_of, register_gone_model

from docqueue.api import session
from docqueue.broker import redis_client
from docqueue.config import Settings
from docqueue.db import make_engine, migrate
from docqueue.db.results import ResultRow
from docqueue.db.workers import beat
from docqueue.protocol import done_channel
from docqueue.worker.store import SqlStore

serve = test_api.serve  # the fixture: a real `docqueue serve`
UPLOAD: dict[str, Any] = {
    "data": {"task": "classify", "model": GONE},
    "files": {"file": ("d.jsonl", b'{"text": "a"}\n')},
}


def test_a_tokenless_api_answers_only_its_own_names_and_origin(serve, settings: Settings):
    """A page whose name rebinds to 127.0.0.1 read every job (any Host was served);
    a plain HTML form on any site created a job, a text/plain POST cancelled one."""
    register_gone_model(settings)
    server = serve(DOCQUEUE_API_TOKENS="")
    port = server.url.rsplit(":", 1)[1]
    http = server.http(token=None)
    created = http.post("/api/jobs", json={"task": "classify", "model": GONE, "documents": ["a"]})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    assert http.get("/openapi.json").status_code == 200  # no token: nothing is behind one
    for own in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.2"):
        assert http.get("/api/jobs", headers={"Host": own}).status_code == 200, own
    rebound = http.get("/api/jobs", headers={"Host": f"rebind.attacker.example:{port}"})
    error = error_of(rebound, 400)
    assert error["param"] == "Host" and "'rebind.attacker.example'" in error["message"]
    assert "DOCQUEUE_API_HOSTS" in error["message"] and job_id not in rebound.text
    for path in (f"/api/jobs/{job_id}", "/", "/metrics"):
        error_of(http.get(path, headers={"Host": "rebind.attacker.example"}), 400)
    # load balancers and probes call /health by address
    assert http.get("/health", headers={"Host": "10.1.2.3:8000"}).status_code == 200

    for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{int(port) + 1}"):
        form = http.post("/api/jobs/upload", headers={"Origin": origin}, **UPLOAD)
        error = error_of(form, 403)
        assert error["param"] == "Origin" and "cross-site request" in error["message"]
        cancel = http.post(
            f"/api/jobs/{job_id}/cancel",
            content=b"x",
            headers={"Origin": origin, "Content-Type": "text/plain"},
        )
        error_of(cancel, 403)
    assert [j["id"] for j in http.get("/api/jobs").json()["data"]] == [job_id]
    assert http.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    # the page's own requests (same origin) and reads from anywhere still work
    assert http.get("/api/jobs", headers={"Origin": "http://attacker.example"}).status_code == 200
    same = http.post(f"/api/jobs/{job_id}/cancel", headers={"Origin": f"http://127.0.0.1:{port}"})
    assert same.status_code == 200 and same.json()["state"] == "cancelled"


def test_names_added_by_the_setting_are_answered(serve, settings: Settings):
    register_gone_model(settings)
    server = serve(DOCQUEUE_API_HOSTS="docqueue.internal,*.example.com")
    http = server.http()
    for host in ("docqueue.internal", "docqueue.internal:8000", "api.example.com"):
        assert http.get("/api/models", headers={"Host": host}).status_code == 200, host
    error_of(http.get("/api/models", headers={"Host": "example.com.evil"}), 400)
    behind_a_proxy = http.post(
        "/api/jobs/upload",
        headers={"Host": "127.0.0.1:8000", "Origin": "https://docqueue.internal"},
        **UPLOAD,
    )
    assert behind_a_proxy.status_code == 201, behind_a_proxy.text


@pytest.mark.parametrize("entry", ["a b", "http://x", "x:port", ""])
def test_a_host_setting_that_is_not_a_host_is_refused(entry: str):
    if entry == "":
        assert Settings(api_hosts=[entry]).api_hosts == []
        return
    with pytest.raises(ValueError, match="is not a host"):
        Settings(api_hosts=[entry])


# --- docs, the page's headers, logging out ------------------------------------------------

DOCS = ("/openapi.json", "/docs", "/redoc")
PAGE_HEADERS = ("content-security-policy", "cache-control", "x-content-type-options")


def test_a_tokened_server_shows_its_docs_only_with_a_token_unless_published(serve):
    """They named every route and field to anyone (the setting: off by default)."""
    server = serve()
    anonymous = server.http(token=None)
    for path in DOCS:
        error = error_of(anonymous.get(path), 401)
        assert "Authorization: Bearer" in error["message"]
        assert server.http().get(path).status_code == 200, path
    assert "/api/jobs" in server.http().get("/openapi.json").json()["paths"]
    assert "/openapi.json" in server.http().get("/docs").text

    published = serve(DOCQUEUE_API_PUBLIC_DOCS="true").http(token=None)
    for path in DOCS:
        assert published.get(path).status_code == 200, path
    error_of(published.get("/api/jobs"), 401)


def test_the_page_has_the_same_headers_under_each_of_its_urls(serve):
    """/page/index.html served the page without its CSP and no-store."""
    anonymous = serve().http(token=None)
    page = anonymous.get("/")
    for path in ("/page/index.html", "/page/page.js", "/page/page.css"):
        same = anonymous.get(path)
        assert same.status_code == 200, path
        for header in PAGE_HEADERS:
            assert same.headers.get(header) == page.headers[header], (path, header)
    assert page.headers["cache-control"] == "no-store"
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_logging_out_ends_the_session_for_a_copy_of_its_cookie_on_every_process(serve):
    """The cookie is signed, not stored: a copy stayed valid for 12 hours after
    logout.  Now the logout is kept in Redis, which every API process reads."""
    first, second = serve(), serve()
    page = first.http(token=None)
    header = {session.CSRF_HEADER: "1"}
    login = page.post("/api/session", json={"token": TOKEN}, headers=header)
    assert login.status_code == 200, login.text
    cookie = page.cookies[session.COOKIE]
    copies = [server.http(token=None) for server in (first, second)]
    for copy in copies:
        copy.cookies.set(session.COOKIE, cookie)
        assert copy.get("/api/jobs").status_code == 200

    assert page.delete("/api/session", headers=header).status_code == 200
    for copy in copies:
        error = error_of(copy.get("/api/jobs"), 401)
        assert "was logged out: log in again" in error["message"]
        error_of(copy.post("/api/jobs/x/cancel", headers=header), 401)
    again = first.http(token=None)
    assert again.post("/api/session", json={"token": TOKEN}, headers=header).status_code == 200
    assert again.get("/api/jobs").status_code == 200  # a new login is a new session


# --- many requests waiting for a result ---------------------------------------------------

WAITERS = 300


def commit_result(settings: Settings, job_id: str) -> None:
    """What a worker does with a computed document: commit its row, then publish the
    job's done notice."""
    engine = make_engine(settings.database())
    SqlStore(engine).commit(
        [
            ResultRow(
                job_id=job_id,
                seq=0,
                ok=True,
                output={"label": "a", "score": 1.0, "scores": {"a": 1.0}},
                error=None,
                worker_id="w",
                started_at=time.time(),
                finished_at=time.time(),
            )
        ]
    )
    engine.dispose()
    redis_client(redis_url(settings)).publish(done_channel(job_id), "1")


def wait_many(url: str, path: str, wait: float) -> list[tuple[httpx.Response, float]]:
    """``WAITERS`` concurrent GETs of ``path?wait=``, each with when it was answered."""

    async def all_of_them() -> list[tuple[httpx.Response, float]]:
        limits = httpx.Limits(max_connections=WAITERS + 10)
        async with httpx.AsyncClient(
            base_url=url, headers=AUTH, timeout=wait + 60, limits=limits
        ) as client:

            async def one() -> tuple[httpx.Response, float]:
                answer = await client.get(path, params={"wait": wait})
                return answer, time.time()

            return await asyncio.gather(*(one() for _ in range(WAITERS)))

    return asyncio.run(all_of_them())


def redis_url(settings: Settings) -> str:
    url = settings.redis()
    assert url is not None
    return url


def subscribed_connections(settings: Settings) -> int:
    """Connections subscribed to a pattern in this test's Redis database: the API's
    done notices.  Other databases are the other xdist worker's (its servers
    subscribe too, and CLIENT LIST is the whole server's)."""
    redis = redis_client(redis_url(settings))
    database = str(redis.connection_pool.connection_kwargs.get("db", 0))
    return sum(
        1 for c in redis.client_list() if c.get("db") == database and int(c.get("psub", 0)) > 0
    )


def test_300_waiting_requests_leave_health_and_submissions_working(serve, settings: Settings):
    """Each ?wait= held a Redis connection: past ~100 waiters the pool (100) was
    exhausted, /health and /metrics answered 503 and every submission failed."""
    register_gone_model(settings)
    # an earlier test's subscriber in this process may still be closing
    subscribed_before = subscribed_connections(settings)
    server = serve()
    http = server.http()
    created = http.post("/api/documents", json={"task": "classify", "model": GONE, "text": "a"})
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_many, server.url, f"/api/documents/{job_id}", 60)
        time.sleep(4)  # all of them waiting
        assert not waiting.done()
        for _ in range(3):
            assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200
            assert http.get("/metrics").status_code == 200
            job = http.post(
                "/api/jobs", json={"task": "classify", "model": GONE, "documents": ["b"]}
            )
            assert job.status_code == 201, job.text
            one = http.post("/api/documents", json={"task": "classify", "model": GONE, "text": "c"})
            assert one.status_code == 202, one.text
        # the server's one subscription, however many wait
        assert subscribed_connections(settings) <= subscribed_before + 1
        connected = len(redis_client(redis_url(settings)).client_list())
        assert connected < 20, connected  # the waiters hold none (they held one each)
        committed = time.time()
        commit_result(settings, job_id)
        answers = waiting.result(timeout=60)
    assert [a.status_code for a, _ in answers] == [200] * WAITERS
    assert {a.json()["result"]["label"] for a, _ in answers} == {"a"}
    # every one was waiting until the result came, and the notice woke them all
    assert min(at for _, at in answers) >= committed
    assert max(at for _, at in answers) - committed < 20


@pytest.mark.slow  # a worker process: tens of seconds on the loaded 2-core machine
def test_a_workers_notice_wakes_300_waiting_requests(
    serve, settings: Settings, start_worker, tiny_classifier: str
):
    """The path end to end: the worker commits, publishes once, and the server's one
    subscription answers every request waiting for that document."""
    engine = make_engine(settings.database())
    migrate(engine)
    with engine.begin() as conn:  # the model is known (a worker served it before)
        beat(
            conn,
            "earlier",
            hostname="h",
            pid=1,
            device="cpu",
            models={"tiny": {"tasks": ["classify"]}},
            started_at=time.time() - 60,
            documents=0,
            stopped=True,
        )
    engine.dispose()
    server = serve()
    http = server.http()
    created = http.post("/api/documents", json={"task": "classify", "model": "tiny", "text": "a"})
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_many, server.url, f"/api/documents/{job_id}", 60)
        time.sleep(4)
        assert not waiting.done() and subscribed_connections(settings) == 1
        start_worker({"tiny": tiny_classifier})
        answers = waiting.result(timeout=90)
    assert [a.status_code for a, _ in answers] == [200] * WAITERS
    labels = {a.json()["result"]["label"] for a, _ in answers}
    assert labels == {http.get(f"/api/documents/{job_id}").json()["result"]["label"]}


@pytest.mark.slow  # a drill: Redis cut away from the server for a while
def test_waiting_requests_read_sql_while_the_subscription_is_down(
    serve, settings: Settings, redis_url: str
):
    """The subscription is the only thing that wakes waiters early: while Redis is
    away they read SQL every second, and the subscription comes back with Redis."""
    register_gone_model(settings)
    proxy = Proxy.before(redis_url)
    try:
        server = serve(DOCQUEUE_REDIS_URL=proxy.url(redis_url))
        http = server.http()

        def document() -> str:
            body = {"task": "classify", "model": GONE, "text": "a"}
            created = http.post("/api/documents", json=body)
            assert created.status_code == 202, created.text
            return str(created.json()["job_id"])

        cut_off, later = document(), document()
        with ThreadPoolExecutor(2) as pool:
            proxy.cut()
            waiting = pool.submit(http.get, f"/api/documents/{cut_off}", params={"wait": 30})
            time.sleep(2)
            committed = time.monotonic()
            commit_result(settings, cut_off)  # its notice cannot reach the server
            answer = waiting.result(timeout=30)
            assert answer.status_code == 200 and time.monotonic() - committed < 5
            proxy.restore()
            time.sleep(3)  # the subscription again
            waiting = pool.submit(http.get, f"/api/documents/{later}", params={"wait": 30})
            time.sleep(1)
            committed = time.monotonic()
            commit_result(settings, later)
            answer = waiting.result(timeout=30)
            assert answer.status_code == 200 and time.monotonic() - committed < 3
        assert subscribed_connections(settings) == 1
    finally:
        proxy.close()
