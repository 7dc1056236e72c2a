"""The live page at ``/``: plain HTML, CSS and JavaScript shipped in the package
(``docqueue/api/page/``), no build step, nothing fetched from elsewhere.

The page itself holds no data, so it is served to anyone; everything it shows comes
from the JSON endpoints (jobs, workers, dead letters) behind the API's auth, which
it polls.  Without a valid token or session those answer 401 and the page shows its
login form (see :mod:`docqueue.api.session`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope

PACKAGE = ("docqueue.api", "page")
ASSETS = "/page"
#: Scripts and styles only from this origin, no inline script, no framing: a
#: string that reaches the page from a result row cannot run.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PageFiles(StaticFiles):
    """The page's files with :data:`HEADERS`, whichever URL names them (the page is
    also ``/page/index.html``)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its assets under :data:`ASSETS`."""
    assets = PageFiles(packages=[PACKAGE])
    index = Path(assets.all_directories[0]) / "index.html"

    def page() -> FileResponse:
        return FileResponse(index, headers=HEADERS)

    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount(ASSETS, assets, name="page")
