"""The Celery app both sides share.

Producers and workers must agree on serializer, transport and visibility timeout,
so both build their app here from the same settings.  No result backend: results
live in SQL.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES

from docqueue.config import Settings

TRANSPORT = "docqueue.transport:Transport"
# kombu lets a "scheme+socket" URL name its transport ("redis+socket" would silently
# pick kombu's own); this alias makes unix-socket URLs use docqueue's transport too.
TRANSPORT_ALIASES.setdefault("docqueue", TRANSPORT)


def kombu_url(redis_url: str) -> str:
    """The broker URL as kombu should read it to use docqueue's transport."""
    if redis_url.startswith("redis+socket://"):
        return "docqueue+socket://" + redis_url[len("redis+socket://") :]
    return redis_url


def make_celery(settings: Settings, redis_url: str) -> Celery:
    app = Celery("docqueue", set_as_current=False)
    app.conf.update(
        broker_url=kombu_url(redis_url),
        broker_transport=TRANSPORT,
        broker_transport_options=transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_create_missing_queues=True,
        worker_prefetch_multiplier=settings.prefetch_messages,
        worker_enable_remote_control=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_channel_error_retry=True,
    )
    return app


def transport_options(settings: Settings) -> dict[str, Any]:
    return {
        "visibility_timeout": settings.visibility_timeout,
        # Sweep for expired unacked messages every restore_interval seconds.
        "unacked_restore_interval": settings.restore_interval,
        "unacked_restore_throttle": 1,
        # Consume queues in the order given: interactive lanes first.
        "queue_order_strategy": "priority",
        "batch_pop_limit": max(settings.prefetch_messages, settings.interactive_prefetch),
        # Entries over this size, or not kombu messages at all, become dead letters.
        "max_message_bytes": settings.max_message_bytes,
        "dead_letter_limit": settings.dead_letter_limit,
        "health_check_interval": 10,
        "socket_connect_timeout": 5,
    }


def redis_client(url: str) -> Any:
    """A plain redis-py client for the server at a kombu-style URL."""
    import redis

    if url.startswith("redis+socket://"):
        parts = urlsplit(url)
        return redis.Redis(
            unix_socket_path=parts.path, username=parts.username or None, password=parts.password
        )
    return redis.Redis.from_url(url)
