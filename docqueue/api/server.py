"""Running the API with uvicorn, in one process or several."""

from __future__ import annotations

import json
import os
from typing import Any

import uvicorn
from fastapi import FastAPI

from docqueue.api.app import create_app
from docqueue.api.origin import with_listen_host
from docqueue.config import Settings
from docqueue.logs import setup_logging
from docqueue.producer.client import Client

#: --log-level values, uvicorn's.  None of them logs request headers (trace shows
#: them as "<...>"), so bearer tokens never reach the log.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def serve(
    settings: Settings, client: Client, host: str, port: int, log_level: str, workers: int = 1
) -> bool:
    """Serve until interrupted (SIGINT or SIGTERM: requests in flight finish);
    returns False when it could not start listening (uvicorn logged why).

    With ``workers`` above 1, uvicorn starts that many processes on one socket,
    each with its own Client built from the environment (what the caller's
    ``settings`` were read from), and restarts any that dies."""
    # The address it listens on is a name it answers to (docqueue.api.origin); the
    # processes of --workers read their settings from the environment.
    hosts = with_listen_host(settings.api_hosts, host, port)
    settings = settings.model_copy(update={"api_hosts": hosts})
    json_logs = settings.log_format == "json"
    if json_logs:  # uvicorn's loggers then go to the root logger's JSON handler
        setup_logging(log_level, "json")
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": log_level,
        "log_config": None if json_logs else uvicorn.config.LOGGING_CONFIG,
        "server_header": False,
        "timeout_graceful_shutdown": 10,
    }
    if workers > 1:
        os.environ["DOCQUEUE_API_HOSTS"] = json.dumps(hosts)
        try:
            factory = f"{__name__}:app_from_environment"
            uvicorn.run(factory, factory=True, workers=workers, **options)
        except SystemExit:  # uvicorn exits when it cannot bind
            return False
        return True
    server = uvicorn.Server(uvicorn.Config(create_app(settings, client), **options))
    try:
        server.run()
    except SystemExit:
        return False
    return server.started


def app_from_environment() -> FastAPI:
    """The app of one of several server processes: the settings from the
    environment and a Client of its own, closed when the process stops."""
    settings = Settings()
    if settings.log_format == "json":
        setup_logging("info", "json")
    return create_app(settings, Client(settings), close_client=True)
