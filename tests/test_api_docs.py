"""The API's interactive docs (/docs, /redoc) work without the internet: their pages
name nothing outside the server, which serves every script and style they load."""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import wait_until
from test_api import serve  # noqa: F401  (the fixture)
from test_page import browser  # noqa: F401  (the fixture)

PAGES = ("/docs", "/redoc")


def references(html: str) -> list[str]:
    """Every address a docs page loads: src, href, Swagger UI's url, ReDoc's spec-url."""
    return re.findall(r'(?:src|href|spec-url)="([^"]*)"', html) + re.findall(
        r"url: '([^']*)'", html
    )


def test_docs_pages_load_everything_from_the_server_itself(serve):  # noqa: F811
    server = serve()
    http = server.http()  # the server has tokens: its description takes one too
    for page in PAGES:
        answer = http.get(page)
        assert answer.status_code == 200, (page, answer.text)
        assert "://" not in answer.text, (page, answer.text)  # no host named at all
        loaded = references(answer.text)
        assert len(loaded) >= 3, (page, loaded)  # script, style or icon, the schema
        for address in loaded:
            assert address.startswith("/") and not address.startswith("//"), address
            fetched = http.get(address)
            assert fetched.status_code == 200, address
            assert len(fetched.content) > 1000 or address.endswith(".png"), address
        # and the browser is told to fetch from nowhere else
        assert "default-src 'self'" in answer.headers["content-security-policy"]


#: Every address the page asked for, whether it loaded or not (resource timing lists
#: what the network was asked for; a request the page's policy blocks is not made).
REQUESTED = "return performance.getEntriesByType('resource').map(e => e.name)"


@pytest.mark.slow
def test_docs_pages_render_in_a_browser_from_the_server_alone(browser, serve):  # noqa: F811
    server = serve(DOCQUEUE_API_PUBLIC_DOCS="true")  # a browser sends no bearer token

    def requested() -> list[str]:
        found: list[str] = browser.execute_script(REQUESTED)
        return found

    rendered: dict[str, Any] = {
        "/docs": "return document.querySelectorAll('.opblock').length",
        "/redoc": "return document.querySelectorAll('[data-section-id]').length",
    }
    for page, count in rendered.items():
        browser.get(server.url + page)
        wait_until(lambda: browser.execute_script(count) > 5, 30, f"{page} to render")  # noqa: B023
        elsewhere = [url for url in requested() if not url.startswith(server.url + "/")]
        # ReDoc's footer asks for its logo from a CDN: the page's policy blocks it
        console = " ".join(line["message"] for line in browser.get_log("browser"))
        for url in elsewhere:
            assert re.search(rf"Loading the image '{re.escape(url)}' violates .* blocked", console)
        assert len(elsewhere) <= 1, (page, elsewhere)
