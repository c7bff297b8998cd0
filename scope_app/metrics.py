"""`/metrics`: what the app did, in Prometheus' text format.

Two kinds of figures. Durations and sizes are histograms the parts observe as they work
(`AppMetrics`). Counts the parts already keep for themselves (the bus's drops by reason, the
collector's probes and nodes, the feeds' clients) are read when scraped (`StateMetrics`), so that
`/metrics` and `/api/stats` can never disagree and no count is kept twice.

Every message received is either applied or dropped with a reason, so
`reports_received = reports_applied + sum(reports_dropped)`; a replica of the service also relays
unapplied the messages of tenants nobody watches there: `+ reports_relayed_unapplied`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

if TYPE_CHECKING:
    from scope_app.allowed_hosts import AllowedHosts
    from scope_app.collector import Collector
    from scope_app.ingest import BusReceiver
    from scope_app.render import Renderer
    from scope_app.websocket import FeedHub
    from scope_common.supervise import Supervisor

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_SIZE_BUCKETS = tuple(float(2**k) for k in range(8, 24, 2))  # 256 B to 8 MiB
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AppMetrics:
    """The histograms, in the app's own registry (one app, one registry: tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.report_bytes = Histogram(
            "scope_app_report_bytes",
            "Size of each message received on the report bus",
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.decode_seconds = Histogram(
            "scope_app_decode_seconds",
            "Time to decode one message, on the decoding thread",
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "scope_app_apply_seconds",
            "Time to apply one decoded message to its probe's report and the merged report",
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.merge_seconds = Histogram(
            "scope_app_merge_seconds",
            "Time to hand a merged report on to the views and the websocket feeds",
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        self.render_seconds = Histogram(
            "scope_app_render_seconds",
            "Time to render one view",
            ["topology"],
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )

    def observe_render(self, topology: str, seconds: float) -> None:
        self.render_seconds.labels(topology).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class StateMetrics(PrometheusCollector):
    """The counts the app's parts keep, read at each scrape."""

    def __init__(
        self,
        receiver: BusReceiver,
        collector: Collector,
        renderer: Renderer,
        hub: FeedHub,
        supervisor: Supervisor,
        allowed_hosts: AllowedHosts,
    ) -> None:
        self._receiver = receiver
        self._collector = collector
        self._renderer = renderer
        self._hub = hub
        self._supervisor = supervisor
        self._allowed_hosts = allowed_hosts

    def collect(self) -> Iterator[Metric]:
        receiver, collector, hub = self._receiver, self._collector, self._hub
        yield from _bus_metrics(receiver, collector.applied, collector.rejected)
        yield _gauge("scope_app_probes", "Probes whose reports the app holds", len(collector.probes))
        yield _gauge("scope_app_probe_sources", "Addresses the probes' reports come from", len(collector.sources))
        yield _gauge("scope_app_stored_nodes", "Nodes held by all probes together", collector.node_count)
        yield _gauge("scope_app_node_budget", "Most nodes all probes together may hold", collector.limits.max_nodes)
        yield _labelled(
            CounterMetricFamily,
            "scope_app_render_failures",
            "Report nodes left out of a view, and views served stale, because rendering them failed",
            "what",
            self._renderer.failures,
        )
        yield _gauge("scope_app_websocket_clients", "Open websockets", hub.watcher_count)
        yield _gauge("scope_app_websocket_feeds", "Views watched over websockets", hub.feed_count)
        yield _counter("scope_app_websocket_sent_bytes", "Bytes of view messages sent to browsers", hub.sent_bytes)
        yield _labelled(
            CounterMetricFamily,
            "scope_app_websocket_refused",
            "Websockets refused, by the limit they were over",
            "reason",
            hub.refused,
        )
        yield from _task_metrics(self._supervisor)
        yield _counter(
            "scope_app_refused_hosts",
            "HTTP requests refused for a Host header the app does not serve (DNS rebinding)",
            self._allowed_hosts.refused,
        )


class TenantState(Protocol):
    """What `ServiceMetrics` reads of one tenant's side of the service (scope_app.main.TenantView)."""

    @property
    def collector(self) -> Collector: ...

    @property
    def hub(self) -> FeedHub: ...


@dataclass
class Forgotten:
    """What the collectors of tenants no longer held here (revoked, or not watched here any more) had
    counted: kept so that the service's totals never go back."""

    applied: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, collector: Collector) -> None:
        self.applied += collector.applied
        for reason, count in collector.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count


class ServiceMetrics(PrometheusCollector):
    """The multi-tenant service's counts (--multitenant): the bus's, every tenant's together, as
    `StateMetrics` has them, and each tenant's, labelled with its name. The labels name every tenant,
    so the service serves these to its operator alone (scope_app.tenancy.http.OperatorMetricsHandler).

    `tenants()`: the tenants now (one with no report yet shows zeros); `views`: the tenants' views
    made so far; `refused`: messages the tenant gate refused, by tenant then reason; `connections`:
    the ZAP handler's refused connections by reason, and `admitted()` its admitted count."""

    def __init__(
        self,
        receiver: BusReceiver,
        tenants: Callable[[], Iterable[str]],
        views: Mapping[str, TenantState],
        refused: Mapping[str, Mapping[str, int]],
        connections: Mapping[str, int],
        admitted: Callable[[], int],
        supervisor: Supervisor,
        forgotten: Forgotten | None = None,
    ) -> None:
        self._forgotten = forgotten or Forgotten()
        self._receiver = receiver
        self._tenants = tenants
        self._views = views
        self._refused = refused
        self._connections = connections
        self._admitted = admitted
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        tenants = sorted(self._tenants())
        collectors = {tenant: self._views[tenant].collector for tenant in tenants if tenant in self._views}
        rejected = dict(self._forgotten.rejected)
        for collector in collectors.values():
            for reason, count in collector.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
        applied = self._forgotten.applied + sum(collector.applied for collector in collectors.values())
        yield from _bus_metrics(self._receiver, applied, rejected)
        yield _gauge("scope_app_tenants", "Tenants in the registry", len(tenants))
        yield _counter(
            "scope_app_probe_connections_admitted", "Probe connections the ZAP handler admitted", self._admitted()
        )
        yield _labelled(
            CounterMetricFamily,
            "scope_app_probe_connections_refused",
            "Probe connections the ZAP handler refused, by reason (unknown_key: a wrong or revoked token)",
            "reason",
            self._connections,
        )
        applied_by_tenant = CounterMetricFamily(
            "scope_app_tenant_reports_applied", "Messages applied to a probe's report, by tenant", labels=["tenant"]
        )
        refused = CounterMetricFamily(
            "scope_app_tenant_reports_refused",
            "Messages of a tenant's probes refused, by tenant and reason (its byte rate, its limits, bad content)",
            labels=["tenant", "reason"],
        )
        probes = GaugeMetricFamily("scope_app_tenant_probes", "Probes a tenant has reporting", labels=["tenant"])
        nodes = GaugeMetricFamily("scope_app_tenant_stored_nodes", "Nodes a tenant's probes hold", labels=["tenant"])
        websockets = GaugeMetricFamily(
            "scope_app_tenant_websocket_clients", "A tenant's open websockets", labels=["tenant"]
        )
        for tenant in tenants:
            view = self._views.get(tenant)
            if view is None:  # no report and no request yet
                for family in (applied_by_tenant, probes, nodes, websockets):
                    family.add_metric([tenant], 0)
                continue
            applied_by_tenant.add_metric([tenant], view.collector.applied)
            for reason, count in sorted({**self._refused.get(tenant, {}), **view.collector.rejected}.items()):
                refused.add_metric([tenant, reason], count)
            probes.add_metric([tenant], len(view.collector.probes))
            nodes.add_metric([tenant], view.collector.node_count)
            websockets.add_metric([tenant], view.hub.watcher_count)
        yield from (applied_by_tenant, refused, probes, nodes, websockets)
        yield from _task_metrics(self._supervisor)


def _bus_metrics(receiver: BusReceiver, applied: int, rejected: Mapping[str, int]) -> Iterator[Metric]:
    """The bus's counts: every message received is applied (`applied`) or dropped, by the bus or by the
    collectors' checks (`rejected`)."""
    yield _counter("scope_app_reports_received", "Messages received on the report bus", receiver.received)
    yield _counter("scope_app_received_bytes", "Bytes received on the report bus", receiver.received_bytes)
    yield _counter("scope_app_reports_applied", "Messages applied to a probe's report", applied)
    yield _counter(
        "scope_app_reports_relayed_unapplied",
        "Messages of tenants nobody watches on this replica, shared with the other replicas unapplied "
        "(with only their envelope's head decoded)",
        receiver.relayed_unapplied,
    )
    yield _labelled(
        CounterMetricFamily,
        "scope_app_reports_dropped",
        "Messages dropped, by reason (decoding, then the collector's checks)",
        "reason",
        {**receiver.dropped, **rejected},
    )
    yield _labelled(
        CounterMetricFamily,
        "scope_app_nodes_rejected",
        "Nodes left out of messages that were otherwise used, by reason",
        "reason",
        receiver.nodes_rejected,
    )


def _task_metrics(supervisor: Supervisor) -> Iterator[Metric]:
    yield _labelled(
        CounterMetricFamily,
        "scope_app_task_restarts",
        "Restarts of supervised tasks after an unexpected error",
        "task",
        supervisor.restarts,
    )
    yield _labelled(
        GaugeMetricFamily,
        "scope_app_task_up",
        "Whether a supervised task is running (1) or waiting to restart (0)",
        "task",
        {name: int(up) for name, up in supervisor.running.items()},
    )


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    metric = family(name, documentation, labels=[label])
    for key, value in sorted(values.items()):
        metric.add_metric([key], value)
    return metric
