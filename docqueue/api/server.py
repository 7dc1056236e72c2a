"""Running the API with uvicorn."""

from __future__ import annotations

import uvicorn

from docqueue.api.app import create_app
from docqueue.config import Settings
from docqueue.logs import setup_logging
from docqueue.producer.client import Client

#: --log-level values, uvicorn's.  None of them logs request headers (trace shows
#: them as "<...>"), so bearer tokens never reach the log.
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def serve(settings: Settings, client: Client, host: str, port: int, log_level: str) -> bool:
    """Serve until interrupted (SIGINT or SIGTERM: requests in flight finish);
    returns False when it could not start listening (uvicorn logged why)."""
    json_logs = settings.log_format == "json"
    if json_logs:  # uvicorn's loggers then go to the root logger's JSON handler
        setup_logging(log_level, "json")
    config = uvicorn.Config(
        create_app(settings, client),
        host=host,
        port=port,
        log_level=log_level,
        log_config=None if json_logs else uvicorn.config.LOGGING_CONFIG,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        return False
    return server.started
