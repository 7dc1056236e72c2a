"""``GET /metrics``: Prometheus metrics of the API and of the system it fronts.

Two kinds, in one registry per application:

* what the system holds, read from Redis and SQL at scrape time by
  :class:`OverviewCollector` through :meth:`Client.overview` -- the numbers
  ``docqueue status`` prints: messages waiting per queue, dead letters, live
  workers -- and, per model, the documents not computed yet, queued or held by
  workers (:meth:`Client.documents_waiting`, what an autoscaler scales on).  Every
  worker shares them, so the API exports them once;
* what this API process served: requests by route and status, and their duration
  (:class:`RequestMetrics`, an ASGI middleware).

What each worker computed is exported by the worker itself, on its own port
(:mod:`docqueue.worker.metrics`).  The route is behind the API's bearer token like
every other one; Prometheus sends it with ``authorization: {credentials: ...}``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from docqueue.core.overview import QueueDepth
from docqueue.producer.client import Client

router = APIRouter(tags=["metrics"])

#: Seconds an API request took: a lookup's milliseconds to a long ?wait=.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: The route label of a request no route matched (404): paths would be unbounded.
UNMATCHED = "unmatched"
#: The methods counted by name; any other (a client may send any token as its method)
#: is counted as :data:`OTHER_METHOD`, so made-up methods add no series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
#: Per model, the documents not computed yet: what an autoscaler scales workers on
#: (the Kubernetes example's KEDA trigger names it).
DOCUMENTS_WAITING = "docqueue_documents_waiting"


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition"}},
)
def metrics(request: Request) -> Response:  # sync: the collector reads Redis and SQL
    """Prometheus text format: queue depth, dead letters and live workers (read
    now), and this API process's requests."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def api_registry(client: Client) -> tuple[CollectorRegistry, RequestCounters]:
    """A registry with the system's numbers, this process's and its requests'."""
    disable_created_metrics()  # no *_created series beside every counter
    registry = CollectorRegistry()
    registry.register(OverviewCollector(client))
    ProcessCollector(registry=registry)
    return registry, RequestCounters(registry)


class OverviewCollector(Collector):
    """Queue depth, dead letters and live workers, from :meth:`Client.overview`
    at each scrape (the same reading ``docqueue status`` prints)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        seen = self.client.overview()
        depth = GaugeMetricFamily(
            "docqueue_queue_depth_messages",
            "Messages waiting in a queue (a bulk message carries up to DOCQUEUE_CHUNK_SIZE "
            "documents; messages workers hold unacked are not counted)",
            labels=["queue", "model", "lane", "task"],
        )
        for q in seen.queues:
            depth.add_metric([q.queue, q.model, q.lane, q.task], q.messages)
        yield depth
        yield GaugeMetricFamily(
            "docqueue_dead_letters", "Dead letters held in Redis", value=seen.dead_letters.held
        )
        yield CounterMetricFamily(
            "docqueue_dead_letters_dropped",
            "Dead letters dropped because DOCQUEUE_DEAD_LETTER_LIMIT were held",
            value=seen.dead_letters.dropped,
        )
        yield GaugeMetricFamily(
            "docqueue_workers_live",
            "Workers whose last heartbeat is within DOCQUEUE_HEARTBEAT_TIMEOUT",
            value=len(seen.workers),
        )
        per_model = GaugeMetricFamily(
            "docqueue_model_workers_live", "Live workers serving a model", labels=["model"]
        )
        models = sorted({name for w in seen.workers for name in w.models})
        for model in models:
            per_model.add_metric([model], sum(model in w.models for w in seen.workers))
        yield per_model
        yield self._documents_waiting(seen.queues)

    def _documents_waiting(self, queues: list[QueueDepth]) -> Metric:
        """Per model, the documents not computed yet (0 for a model known here with
        none), summed over the fleet: what an autoscaler scales workers on."""
        waiting = GaugeMetricFamily(
            DOCUMENTS_WAITING,
            "Documents of running jobs not computed yet: queued in Redis, held by "
            "workers, or still being added by a producer",
            labels=["model"],
        )
        counts = self.client.documents_waiting()
        known = {q.model for q in queues} | set(self.client.settings.models) | set(counts)
        for model in sorted(known):
            waiting.add_metric([model], counts.get(model, 0))
        return waiting


class RequestCounters:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "docqueue_http_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "docqueue_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )


class RequestMetrics:
    """Counts each HTTP request under its route's template (``/api/jobs/{job_id}``,
    never the path itself, so ids do not become series) and its method (one of
    :data:`METHODS`, or ``other``).  Requests are counted before any token check, so
    every label takes a bounded set of values whatever an anonymous client sends."""

    def __init__(self, app: ASGIApp, counters: RequestCounters) -> None:
        self.app = app
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
            self.counters.requests.labels(method, template, str(status)).inc()
            self.counters.duration.labels(method, template).observe(time.perf_counter() - started)
