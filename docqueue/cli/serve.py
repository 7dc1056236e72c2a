"""``docqueue serve`` (the HTTP API) and ``docqueue health`` (its container check)."""

from __future__ import annotations

from typing import Annotated

import typer

from docqueue.cli.options import client_or_exit, error_line, fail, settings_or_exit
from docqueue.errors import ExitCode


def health(
    worker: Annotated[
        bool,
        typer.Option("--worker", help="Also require a live worker heartbeat from this host"),
    ] = False,
) -> None:
    """Exit 0 when the database and Redis answer (and, with --worker, a worker on this
    host beats); else exit 3 saying what is wrong.  For container health checks."""
    import socket

    from docqueue.health import problem

    client = client_or_exit(settings_or_exit())
    try:
        found = problem(client, socket.gethostname() if worker else None)
    finally:
        client.close()
    if found is not None:
        raise fail(found, ExitCode.SERVICE)
    print("ok")


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; anything but loopback needs DOCQUEUE_API_TOKENS",
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8000,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical, error, warning, info, debug or trace")
    ] = "info",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Server processes sharing the port (each with its own connections)",
        ),
    ] = 1,
) -> None:
    """Serve the HTTP API (needs DOCQUEUE_REDIS_URL and DOCQUEUE_DATABASE_URL)."""
    try:
        from docqueue.api.auth import bind_problem
        from docqueue.api.server import LOG_LEVELS
        from docqueue.api.server import serve as run_server
    except ImportError as exc:
        raise fail(
            f'docqueue serve needs the api extra ({error_line(exc)}): pip install "docqueue[api]"'
        ) from None
    if log_level.lower() not in LOG_LEVELS:
        raise fail(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    settings = settings_or_exit()
    if problem := bind_problem(host, settings):
        raise fail(problem)
    if "database_url" not in settings.model_fields_set:
        raise fail(
            "set DOCQUEUE_DATABASE_URL to the database the workers use: the API records "
            "jobs there, and workers on another database could not run them"
        )
    client = client_or_exit(settings)
    from redis.exceptions import RedisError

    try:
        client.redis.ping()
    except (RedisError, OSError) as exc:
        raise fail(f"cannot reach Redis: {error_line(exc)}", ExitCode.SERVICE) from None
    try:
        listening = run_server(settings, client, host, port, log_level.lower(), workers)
    finally:
        client.close()
    if not listening:
        raise fail(f"could not listen on {host}:{port} (see the line above)", ExitCode.SERVICE)
