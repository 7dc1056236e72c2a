"""The live page at ``/`` and what it reads: its login (a signed session cookie, a
header against cross-site changes), the workers, a job's error sample and recent
results.  Against a real ``docqueue serve`` with real Redis and SQL; the browser
test (slow) drives Debian's chromium through chromedriver with selenium."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
import test_api
from conftest import wait_until
from pydantic import SecretStr
from sqlalchemy import text
from test_api import GONE, OTHER_TOKEN, TOKEN, error_of, register_gone_model, wait_finished

from docqueue import deadletters
from docqueue.api import session
from docqueue.broker import redis_client
from docqueue.config import Settings
from docqueue.db import make_engine
from docqueue.db.workers import beat
from docqueue.protocol import bulk_queue

serve = test_api.serve  # the fixture: a real `docqueue serve`
PAGE = {session.CSRF_HEADER: "1"}


def test_the_page_logs_in_once_with_a_cookie_that_holds_no_token(serve, settings):
    register_gone_model(settings)
    server = serve()
    anonymous = server.http(token=None)

    page = anonymous.get("/")  # the page holds no data: anyone may load it
    assert page.status_code == 200 and '<form id="login"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/page/page.js", "/page/page.css"):
        assert anonymous.get(asset).status_code == 200
    for asset in ("/", "/page/page.js", "/page/page.css"):  # nothing fetched from elsewhere
        assert not re.search(r"https?:|//[a-z]", anonymous.get(asset).text)
    error_of(anonymous.get("/api/jobs"), 401)

    wrong = anonymous.post("/api/session", json={"token": OTHER_TOKEN}, headers=PAGE)
    assert error_of(wrong, 401)["param"] == "token" and "set-cookie" not in wrong.headers
    # a login without the page's header is another site's form: refused
    error_of(anonymous.post("/api/session", json={"token": TOKEN}), 403)

    answer = anonymous.post("/api/session", json={"token": TOKEN}, headers=PAGE)
    assert answer.status_code == 200 and answer.json()["required"] is True
    assert answer.json()["expires_at"] > time.time() + 3600
    header = answer.headers["set-cookie"]
    assert "HttpOnly" in header and "SameSite=strict" in header and "Max-Age=43200" in header
    cookie = SimpleCookie(header)[session.COOKIE].value
    assert TOKEN not in cookie and TOKEN not in header
    http = anonymous  # it now holds the cookie

    created = http.post(
        "/api/jobs",
        json={"task": "classify", "model": GONE, "documents": ["one", "", "three"]},
        headers=PAGE,
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    cancel = f"/api/jobs/{job_id}/cancel"
    # cookie-authenticated changes need the page's header; reads do not
    assert "X-Docqueue-Page" in error_of(http.post(cancel), 403)["message"]
    assert http.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    assert http.post(cancel, headers=PAGE).json()["state"] == "cancelled"
    # bearer tokens work as before, without the header
    assert server.http().post(cancel).status_code == 200

    forged = cookie.rsplit(".", 1)[0] + ".AAAA"
    stranger = server.http(token=None)
    stranger.cookies.set(session.COOKIE, forged)
    assert "not valid or expired" in error_of(stranger.get("/api/jobs"), 401)["message"]

    # what the page reads besides jobs (one server for all: each start costs seconds)
    reads_workers(http, settings)
    reads_errors_and_recent_results(http)

    logout = http.delete("/api/session", headers=PAGE)
    assert 'docqueue_session=""' in logout.headers["set-cookie"]
    error_of(http.get("/api/jobs"), 401)
    assert TOKEN not in server.log()


def test_a_session_lasts_until_it_expires_or_its_token_is_dropped():
    token, other = SecretStr(TOKEN), SecretStr(OTHER_TOKEN)
    value, expires = session.issue(token, now=1000.0)
    assert session.valid(value, [other, token], now=1000.0 + 60)
    assert not session.valid(value, [token], now=expires + 1)
    assert not session.valid(value, [other], now=1000.0)  # its token was dropped
    assert not session.valid(value.replace("v1.", "v2.", 1), [token], now=1000.0)
    later = str(expires + 10**6)
    assert not session.valid(value.replace(str(expires), later), [token], now=1000.0)
    for garbage in ("", "a.b.c.d", "v1.\u00b2.x.y", "v1..x.y", value + "."):
        assert not session.valid(garbage, [token], now=0)


def reads_workers(http: httpx.Client, settings: Settings) -> None:
    """GET /api/workers: the live ones (the stopped worker of GONE only with ?all)."""
    engine = make_engine(settings.database())
    with engine.begin() as conn:
        beat(
            conn,
            "gpu-worker",
            hostname="node-1",
            pid=42,
            device="cuda:0",
            models={GONE: {"source": "/models/ghost", "tasks": ["classify"]}},
            started_at=time.time() - 30,
            documents=300,
            stats={
                "batches": 4,
                "padded_tokens": 9000,
                "peak_host_bytes": 2**30,
                "peak_gpu_bytes": 2**31,
            },
        )
    engine.dispose()

    live = http.get("/api/workers").json()
    assert live["heartbeat_timeout"] == settings.heartbeat_timeout
    [worker] = live["data"]
    assert worker["id"] == "gpu-worker" and worker["device"] == "cuda:0" and worker["alive"]
    assert (worker["batches"], worker["mean_batch_size"], worker["padded_tokens"]) == (4, 75, 9000)
    assert (worker["peak_host_bytes"], worker["peak_gpu_bytes"]) == (2**30, 2**31)
    assert worker["models"][GONE]["tasks"] == ["classify"]
    assert 0 <= worker["seconds_since_heartbeat"] < 60
    every = http.get("/api/workers", params={"all": True}).json()["data"]
    assert [w["id"] for w in every] == ["gpu-worker", "stopped-worker"]
    assert not every[1]["alive"] and every[1]["mean_batch_size"] is None


def reads_errors_and_recent_results(http: httpx.Client) -> None:
    """A job's error rows (results filtered by status) and its recent results."""
    documents = ["fine", "", "also fine", "more", ""]
    job = http.post(
        "/api/jobs",
        json={"task": "classify", "model": GONE, "documents": documents},
        headers=PAGE,
    ).json()
    errors = http.get(f"/api/jobs/{job['id']}/results", params={"status": "failed"}).json()
    assert [(r["seq"], r["status"]) for r in errors["data"]] == [(1, "failed"), (4, "failed")]
    assert errors["data"][0]["error"] == "empty document" and errors["next_cursor"] is None
    page = http.get(f"/api/jobs/{job['id']}/results", params={"status": "failed", "limit": 1})
    assert page.json()["next_cursor"] == "1"
    pending = http.get(f"/api/jobs/{job['id']}/results", params={"status": "pending"}).json()
    assert [r["seq"] for r in pending["data"]] == [0, 2, 3]
    # no worker computed anything: nothing recent (refused documents are not results)
    assert http.get(f"/api/jobs/{job['id']}/recent").json() == {"data": [], "next_cursor": None}
    error_of(http.get(f"/api/jobs/{job['id']}/results", params={"status": "lost"}), 422)


# --- the page in a real browser ---------------------------------------------------------

#: Debian's packages chromium and chromium-driver.
CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
#: Set (to 1) where a missing chromium must fail the browser test, not skip it (CI).
REQUIRE_BROWSER = "DOCQUEUE_REQUIRE_BROWSER"
#: Where to copy the screenshot as well (docs/page.png in the README is made so).
SCREENSHOT = "DOCQUEUE_PAGE_SCREENSHOT"


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless chromium driven through chromedriver, both Debian's (nothing is
    downloaded at run time)."""
    chromium, chromedriver = shutil.which(CHROMIUM), shutil.which(CHROMEDRIVER)
    missing = [
        name for name, path in ((CHROMIUM, chromium), (CHROMEDRIVER, chromedriver)) if not path
    ]
    if missing or chromium is None or chromedriver is None:
        why = f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver"
        if os.environ.get(REQUIRE_BROWSER) == "1":
            pytest.fail(f"{why} ({REQUIRE_BROWSER}=1)")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1150")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console lines
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def sql_counts(settings: Settings, job_id: str) -> dict[str, int]:
    """Documents of a job by status, read straight from SQL."""
    engine = make_engine(settings.database())
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT status, COUNT(*) FROM dq_items WHERE job_id = :j GROUP BY status"),
            {"j": job_id},
        ).all()
    engine.dispose()
    return {status: count for status, count in rows}


#: The texts of a row's cells by class name, read in one script: the page redraws
#: its tables every second, so elements found one call earlier may be gone.
READ_ROW = """
const row = document.querySelector(arguments[0]);
if (!row) return null;
const texts = {};
for (const name of arguments[1]) texts[name] = row.querySelector("." + name).innerText;
return texts;
"""
JOB_CELLS = ["done", "pending", "total", "failed", "rate", "eta", "state"]
WORKER_CELLS = ["device", "models", "batches", "documents", "memory", "heartbeat"]


def row_texts(driver: Any, selector: str, cells: list[str]) -> dict[str, str] | None:
    """What the page shows in the row ``selector`` finds (None: no such row)."""
    texts: dict[str, str] | None = driver.execute_script(READ_ROW, selector, cells)
    return texts


def job_row(driver: Any, job_id: str) -> dict[str, str] | None:
    return row_texts(driver, f'tr[data-job-id="{job_id}"]', JOB_CELLS)


def click(driver: Any, selector: str) -> None:
    """Click what ``selector`` finds, again if the page redrew it in between."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    def clicked() -> bool:
        try:
            driver.find_element(By.CSS_SELECTOR, selector).click()
        except (NoSuchElementException, StaleElementReferenceException):
            return False
        return True

    wait_until(clicked, 20, f"{selector} to click")


@pytest.mark.slow
def test_the_page_in_a_browser_follows_a_job_and_cancels_another(
    browser, serve, settings, start_worker, tiny_classifier, sample_texts, tmp_path
):  # browser first: without chromium, skip (or fail) before starting anything
    from selenium.webdriver.common.by import By

    register_gone_model(settings)
    # Half a second a batch of about a dozen documents: the job runs for several seconds.
    start_worker(
        {"tiny": tiny_classifier},
        runners={"tiny": "faulty_runners:SlowClassifier"},
        token_budget=2048,
    )
    server = serve()
    api = server.http()
    redis_client(settings.redis()).lpush(bulk_queue("classify", "tiny"), b"not a message")
    waiting = api.post(
        "/api/jobs",
        json={
            "task": "classify",
            "model": GONE,
            "name": "to cancel",
            "documents": ["never computed"] * 20,
        },
    ).json()["id"]

    driver = browser
    driver.get(server.url)
    token = driver.find_element(By.ID, "token")
    wait_until(token.is_displayed, 20, "the login form")
    token.send_keys(OTHER_TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    error = driver.find_element(By.ID, "login-error")
    wait_until(lambda: error.text == "That token is not valid.", 20, "the refusal")
    token.clear()
    token.send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_until(driver.find_element(By.ID, "live-view").is_displayed, 20, "the live view")

    documents = [*sample_texts[:300], "", "", ""]  # three refused: error rows
    running = api.post(
        "/api/jobs",
        json={"task": "classify", "model": "tiny", "name": "watched", "documents": documents},
    ).json()["id"]

    picture = tmp_path / "page.png"
    seen: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = job_row(driver, running)
        if row is None:  # not drawn yet
            time.sleep(0.2)
            continue
        in_sql = sql_counts(settings, running)
        done = int(row["done"])
        # the page is at most a poll behind SQL, never ahead of it
        assert done <= in_sql.get("done", 0)
        assert (row["total"], row["failed"]) == (str(len(documents)), "3")
        assert int(row["pending"]) == len(documents) - done - 3
        if not seen or seen[-1] != done:
            seen.append(done)
        if done >= len(documents) // 3 and not picture.exists():  # mid-run, for the README
            assert driver.save_screenshot(str(picture))
        if row["state"] == "finished":
            break
        time.sleep(0.2)
    else:
        raise TimeoutError(f"the page never showed job {running} finished: {seen}")
    assert len(seen) >= 3 and seen == sorted(seen), seen  # it moved, live
    final = sql_counts(settings, running)
    assert final == {"done": 300, "failed": 3}
    assert (row["done"], row["pending"], row["eta"]) == ("300", "0", "–")
    status = wait_finished(api, running)  # the API's numbers are the page's
    assert row["rate"] == f"{status['docs_per_second']:.1f}"

    click(driver, f'tr[data-job-id="{running}"] td.job-name')
    wait_until(
        lambda: (
            len(driver.find_elements(By.CSS_SELECTOR, "#errors tbody tr")) == 3
            and len(driver.find_elements(By.CSS_SELECTOR, "#recent tbody tr")) == 5
        ),
        20,
        "the error sample and the recent results",
    )
    assert "empty document" in driver.find_element(By.CSS_SELECTOR, "#errors tbody").text
    assert "label:" in driver.find_element(By.CSS_SELECTOR, "#recent tbody").text

    worker = row_texts(driver, "#workers tbody tr", WORKER_CELLS)
    beat_row = api.get("/api/workers").json()["data"][0]
    assert worker is not None and worker["device"] == "cpu"
    assert worker["models"] == "tiny (classify)" and "MiB host" in worker["memory"]
    assert 0 < int(worker["documents"]) <= beat_row["documents"]
    assert 0 < int(worker["batches"]) <= beat_row["batches"]
    assert worker["heartbeat"].endswith("s ago")
    wait_until(
        lambda: "1 held" in driver.find_element(By.ID, "dead-counts").text, 20, "the dead letter"
    )
    assert deadletters.count(redis_client(settings.redis())) == 1

    click(driver, f'tr[data-job-id="{waiting}"] button.cancel')
    driver.switch_to.alert.accept()
    wait_until(lambda: sql_counts(settings, waiting) == {"cancelled": 20}, 20, "the cancel")
    wait_until(
        lambda: (
            (shown_row := job_row(driver, waiting)) is not None
            and shown_row["state"] == "cancelled"
        ),
        20,
        "the page to show the job cancelled",
    )

    assert picture.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT):
        shutil.copyfile(picture, os.environ[SCREENSHOT])
    assert TOKEN not in server.log() and "GET /api/jobs" in server.log()
