"""What the application core works with: the settings, the ledger (an SQL engine)
and Redis (connected on first use).  The handles a caller gets back (a job, a
document, a group) hold these, not the Client that made them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from docqueue.config import Settings
from docqueue.core.errors import NoRedis
from docqueue.db import Database, make_engine, migrate, missing_sqlite_file

if TYPE_CHECKING:
    from celery import Celery
    from redis import Redis

    from docqueue.db.workers import WorkerState


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str | None = None,
        database_url: str | None = None,
        publish_patience: float = 0.0,
    ) -> None:
        """``redis_url`` and ``database_url`` default to the settings'.  Without a
        Redis URL the core works from SQL alone (status, results, export), and
        publishing or waiting raises :class:`NoRedis`.  ``publish_patience``: seconds
        publishing keeps trying while Redis does not answer (:mod:`.publishing`)."""
        self.settings = settings
        self.redis_url = redis_url or settings.redis()
        self.db: Database = make_engine(database_url or settings.database())
        self.publish_patience = publish_patience
        self._celery: Celery | None = None
        self._redis: Redis | None = None
        #: model -> (when read, its workers): submit's check reads SQL once a second.
        self.workers_read: dict[str, tuple[float, list[WorkerState]]] = {}

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            from docqueue.broker import make_celery

            self._celery = make_celery(self.settings, self.need_redis())
        return self._celery

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            from docqueue.broker import redis_client

            self._redis = redis_client(self.need_redis())
        return self._redis

    def make_current(self) -> None:
        """Create or upgrade the ledger's tables (a no-op when they are current)."""
        migrate(self.db)

    def need_redis(self) -> str:
        """The Redis URL; raises :class:`NoRedis` when there is none."""
        if not self.redis_url:
            raise NoRedis()
        return self.redis_url

    def close(self) -> None:
        self.db.dispose()
        if self._redis is not None:
            self._redis.close()
        if self._celery is not None:
            self._celery.close()


def missing_database(settings: Settings) -> str | None:
    """The SQLite file the settings name when it does not exist (a command that only
    reads would make an empty one), else None."""
    return missing_sqlite_file(settings.database())


def services_of(owner: Any) -> Services:
    """The services of a :class:`~docqueue.producer.client.Client`, or ``owner``
    itself: handles are made from either."""
    found = getattr(owner, "services", owner)
    if not isinstance(found, Services):
        raise TypeError(f"{owner!r} is neither a Client nor Services")
    return found
