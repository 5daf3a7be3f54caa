"""``GET /metrics``: live figures read at scrape time into a per-app CollectorRegistry.

Nothing is counted on the hot path but plain integer increments (:class:`GatewayStats`);
the collector reads those, the registry's and the store's counters when scraped. Each app
has its own :class:`~prometheus_client.CollectorRegistry`, so several apps (tests, mounts)
never share or collide.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .app import Gateway


class GatewayStats:
    """The gateway's own counters. Plain integers, incremented by writers and endpoints."""

    __slots__ = ("delivered", "lagged", "messages", "sse_streams")

    def __init__(self) -> None:
        # Event frames sent to WebSocket and SSE subscribers.
        self.delivered = 0
        # Subscriptions dropped with `lagged`.
        self.lagged = 0
        # WebSocket messages sent (a batch counts once).
        self.messages = 0
        # Open SSE streams.
        self.sse_streams = 0


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class GatewayCollector(Collector):
    """Reads the gateway's state when scraped."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self._gateway
        stats = gateway.stats
        yield _gauge("runwire_connections", "Open WebSocket connections.", len(gateway.hub))
        yield _gauge("runwire_sse_streams", "Open Server-Sent Events streams.", stats.sse_streams)
        yield _counter(
            "runwire_events_delivered", "Event frames sent to subscribers.", stats.delivered
        )
        yield _counter(
            "runwire_lagged_subscriptions",
            "Subscriptions dropped because their client could not keep up.",
            stats.lagged,
        )
        yield _counter(
            "runwire_ws_messages_sent",
            "WebSocket messages sent (a batch counts once).",
            stats.messages,
        )
        if not gateway.running:
            return
        registry = gateway.registry
        yield _gauge(
            "runwire_subscriptions",
            "Live subscriptions (WebSocket and SSE).",
            registry.subscriber_count(),
        )
        yield _gauge("runwire_running_runs", "Runs this process drives now.", registry.local_runs())
        yield _counter(
            "runwire_events_published", "Events published by runs.", registry.stats.published
        )
        yield _counter("runwire_runs_started", "Runs started.", registry.stats.runs_started)
        yield _counter("runwire_runs_completed", "Runs completed.", registry.stats.runs_completed)
        store = gateway.store.stats
        yield _gauge(
            "runwire_store_backlog",
            "Events queued for the database, not yet committed.",
            store.backlog,
        )
        yield _counter("runwire_store_flushes", "Batches committed to the database.", store.flushes)
        yield _gauge(
            "runwire_store_last_flush_seconds",
            "Duration of the last commit.",
            store.last_flush_ms / 1000,
        )
        samples = list(store.flush_latency_ms)
        latency = GaugeMetricFamily(
            "runwire_store_flush_latency_seconds",
            "Append-to-commit latency of recent batches (worst event of each batch).",
            labels=["quantile"],
        )
        if samples:
            for q in (0.5, 0.9, 0.99):
                latency.add_metric([str(q)], _quantile(samples, q) / 1000)
        yield latency


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def build_registry(gateway: Gateway) -> CollectorRegistry:
    """A fresh CollectorRegistry holding only this gateway's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(gateway))
    return registry
