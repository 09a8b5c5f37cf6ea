"""Prometheus metrics of one part, in a registry of its own (one per process in a deployment).

Every label takes its values from a set fixed by the code, never from what a caller sends: a
request subject declared in contracts/, a consumer's durable name, a route template, a method
out of a short list, an HTTP status. Whatever else comes in (a random path, an invented method)
is counted under one value (`unmatched`, `other`), so no caller can make a series per request.

Gauges of the backlog (the outbox, the consumers) are read from the database and JetStream when
`/metrics` is scraped (`contracts.kit.ops`), at most once a second; a value that could not be
read is left out rather than shown stale.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from contracts.kit.outbox import OUTBOX_CONSUMER

# What `portal_http_requests_total` counts a path no route matched as.
UNMATCHED_ROUTE = "unmatched"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER = "other"
# RPC outcomes besides the error codes of the reply: a code is a snake_case constant of the code.
OK = "ok"
_CODE = re.compile(r"[a-z][a-z0-9_]{0,47}")
# Outcomes of an email, `portal_emails_total{status}`.
EMAIL_STATUSES = ("sent", "failed", "retried")


def new_registry(part: str, version: str) -> CollectorRegistry:
    """A registry with the process's own metrics (CPU, memory, file descriptors, GC) and
    `portal_info{part, version}`."""
    # A `_created` series beside every counter doubles what is stored for no alert's use.
    disable_created_metrics()
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    info = Gauge(
        "portal_info", "The part this process runs and its version (always 1).", ["part", "version"], registry=registry
    )
    info.labels(part, version).set(1)
    return registry


@dataclass
class Backlog:
    """What the last scrape read of a service's backlog (None: could not be read)."""

    outbox_pending: int | None = None
    outbox_oldest_seconds: float | None = None
    # durable -> messages not acknowledged yet (not delivered, or delivered and in hand)
    consumer_pending: dict[str, int] = field(default_factory=dict)


class _BacklogCollector(Collector):
    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        return list(self._families(with_values=True))

    def _families(self, *, with_values: bool = False) -> Iterator[Metric]:
        b = self.backlog
        pending = GaugeMetricFamily("portal_outbox_pending", "Events committed to the outbox and not yet published.")
        oldest = GaugeMetricFamily(
            "portal_outbox_oldest_seconds", "Age of the oldest event waiting in the outbox (0 when it is empty)."
        )
        consumers = GaugeMetricFamily(
            "portal_consumer_pending",
            "Messages of a durable consumer not acknowledged yet (waiting, or delivered and being applied).",
            labels=["consumer"],
        )
        if with_values:
            if b.outbox_pending is not None:
                pending.add_metric([], b.outbox_pending)
            if b.outbox_oldest_seconds is not None:
                oldest.add_metric([], b.outbox_oldest_seconds)
            for durable, count in sorted(b.consumer_pending.items()):
                consumers.add_metric([durable], count)
        yield pending
        yield oldest
        yield consumers


class ServiceMetrics:
    """The metrics of one service replica (identity, linking, notify, overview)."""

    def __init__(self, part: str, version: str, registry: CollectorRegistry | None = None) -> None:
        self.part = part
        self.registry = registry or new_registry(part, version)
        r = self.registry
        self.rpc_requests = Counter(
            "portal_rpc_requests",
            "Requests answered, by subject and outcome (`ok` or the error code answered).",
            ["subject", "outcome"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "portal_rpc_duration_seconds",
            "Time from a request's arrival to its answer, by subject and outcome (as portal_rpc_requests_total).",
            ["subject", "outcome"],
            registry=r,
        )
        self.events_applied = Counter(
            "portal_events_applied",
            "Events applied by a durable consumer (a redelivered one counts once).",
            ["consumer"],
            registry=r,
        )
        self.dead_letters = Counter(
            "portal_dead_letters",
            "Messages moved to the DEADLETTERS stream, by consumer (`outbox`: events the outbox could not publish).",
            ["consumer"],
            registry=r,
        )
        self.emails = Counter(
            "portal_emails",
            "Emails finished or retried by notify, by status (sent, failed, retried).",
            ["status"],
            registry=r,
        )
        self.dead_letters.labels(OUTBOX_CONSUMER)
        # Children by label values, looked up once: a request costs a dict look-up, not `labels()`.
        self._answered: dict[tuple[str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self.backlog = Backlog()
        r.register(_BacklogCollector(self.backlog))

    def rpc_declared(self, subject: str) -> None:
        """Show a request served here at 0 from the start, so that rates work from the first scrape."""
        self.rpc_requests.labels(subject, OK)
        self.rpc_duration.labels(subject, OK)

    def consumer_declared(self, durable: str) -> None:
        """Show a consumer's counters at 0 from the start."""
        self.events_applied.labels(durable)
        self.dead_letters.labels(durable)

    def emails_declared(self) -> None:
        """Show every email status at 0 from the start (notify)."""
        for status in EMAIL_STATUSES:
            self.emails.labels(status)

    def rpc_answered(self, subject: str, error: str | None, seconds: float) -> None:
        """Count one answered request (`error`: the error code answered, None when it succeeded)."""
        outcome = OK if error is None else (error if _CODE.fullmatch(error) else OTHER)
        counter = self._answered.get((subject, outcome))
        if counter is None:
            counter = self._answered[(subject, outcome)] = self.rpc_requests.labels(subject, outcome)
        counter.inc()
        duration = self._durations.get((subject, outcome))
        if duration is None:
            duration = self._durations[(subject, outcome)] = self.rpc_duration.labels(subject, outcome)
        duration.observe(seconds)


class GatewayMetrics:
    """The metrics of one gateway replica."""

    def __init__(self, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry("gateway", version)
        self.http_requests = Counter(
            "portal_http_requests",
            "HTTP requests answered, by route template (`unmatched` for paths no route serves), method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "portal_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def answered(self, route: str | None, method: str, status: int, seconds: float) -> None:
        """Count one answered request; `route` is the matched template, None when nothing matched."""
        key = (route or UNMATCHED_ROUTE, method if method in HTTP_METHODS else OTHER, status)
        children = self._children.get(key)
        if children is None:
            labels = (key[0], key[1], str(status))
            children = self._children[key] = (self.http_requests.labels(*labels), self.http_duration.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)
