"""The API's description: ``/openapi.json`` and the pages that render it, ``/docs``
(Swagger UI) and ``/redoc`` (ReDoc), with their scripts and styles served from here.

It names every route and field, which is a map for whoever probes a server, so on
a server with tokens it takes a token (or the page's session) like the routes it
describes, unless the operator publishes it (``DOCQUEUE_API_PUBLIC_DOCS``).
Without tokens everything is open anyway (loopback only).

FastAPI's own pages load their assets from a CDN, and are blank where the server
has no internet (docqueue is meant to run without).  The assets come from the
``fastapi-offline`` package (``swagger-ui-bundle`` ships a Swagger UI 4, which
cannot read the OpenAPI 3.1 schema FastAPI writes).  The pages'
Content-Security-Policy keeps them on this origin: ReDoc's footer logo, the one thing
its script fetches from elsewhere, is blocked and hidden.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from docqueue.api.auth import require_token

SCHEMA = "/openapi.json"
#: Where the assets are served (scripts and styles of public projects: no token).
ASSETS = "/docs-assets"
HEADERS = {
    # Swagger UI's page starts it with an inline script; both draw inline styles, and
    # ReDoc runs its search in a worker made from a blob.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; worker-src 'self' blob:; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install(app: FastAPI, public: bool) -> None:
    """Serve the description and its pages, behind the token unless ``public``.  The
    app must be made with ``openapi_url``, ``docs_url`` and ``redoc_url`` None."""
    assets = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    router = APIRouter(dependencies=[] if public else [Depends(require_token)])

    @router.get(SCHEMA, include_in_schema=False)
    async def schema(request: Request) -> JSONResponse:
        return JSONResponse(request.app.openapi())

    @router.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{SCHEMA}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            # no badge asking validator.swagger.io about the schema
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers.update(HEADERS)
        return page

    @router.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{SCHEMA}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(HEADERS)
        return page

    app.include_router(router)
