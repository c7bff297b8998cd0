"""`/metrics` of the probe, in Prometheus' text format, on a small HTTP listener of its own.

The probe has no HTTP side otherwise, so `--metrics-listen` starts prometheus-client's WSGI server
in a thread. It is off by default: a probe runs on every host, usually in the host's own network
namespace, and a listener on by default would be one more open port on each of them, and would clash
when two probes share a namespace (a probe per app cluster, or tests). 127.0.0.1:4041 (the app's
4040 plus one) is the address to give it for a local agent to scrape.

As on the app (scope_app/metrics.py): durations and sizes are histograms the probe observes as it
works; counts its parts keep anyway (the publisher's, the supervisor's, the control channel's) are read
at each scrape, so none is kept twice.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Histogram, start_wsgi_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as PrometheusCollector

if TYPE_CHECKING:
    from scope_common.supervise import Supervisor
    from scope_probe.channel import ControlChannel
    from scope_probe.failover import Failover
    from scope_probe.publisher import Publisher

DEFAULT_METRICS_PORT = 4041

_SIZE_BUCKETS = tuple(float(2**k) for k in range(8, 24, 2))  # 256 B to 8 MiB
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ProbeMetrics:
    """The histograms and the counts the probe's main loop keeps, in the probe's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.report_bytes = Histogram(
            "scope_probe_report_bytes",
            "Size of each report published, full or a delta (the count is the reports published)",
            ["kind"],
            buckets=_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.reporter_seconds = Histogram(
            "scope_probe_reporter_seconds",
            "Time one reporter took to gather its part of the report",
            ["reporter"],
            buckets=_TIME_BUCKETS,
            registry=self.registry,
        )
        #: Reports not sent, by reason: encode (too big or unencodable), queue_full (ZeroMQ's high-water mark).
        self.publish_errors: dict[str, int] = {}
        #: Failures of each reporter's `report()` (its last good report stands meanwhile).
        self.reporter_failures: dict[str, int] = {}

    def watch(
        self,
        publisher: Publisher,
        supervisor: Supervisor,
        channel: ControlChannel | None,
        failover: Failover | None = None,
    ) -> None:
        """Read the counts of these parts at each scrape."""
        self.registry.register(_StateMetrics(self, publisher, supervisor, channel, failover))

    def serve(self, host: str, port: int) -> WSGIServer:
        """Serve the registry over HTTP at host:port in a daemon thread; OSError if it cannot bind."""
        server, _ = start_wsgi_server(port, host, registry=self.registry)
        return server


def stop_serving(server: WSGIServer) -> None:
    """Stop a server `serve` started (from another thread than its own, as shutdown() requires)."""
    threading.Thread(target=server.shutdown, daemon=True).start()
    server.server_close()


class _StateMetrics(PrometheusCollector):
    def __init__(
        self,
        metrics: ProbeMetrics,
        publisher: Publisher,
        supervisor: Supervisor,
        channel: ControlChannel | None,
        failover: Failover | None,
    ) -> None:
        self._failover = failover
        self._metrics = metrics
        self._publisher = publisher
        self._supervisor = supervisor
        self._channel = channel

    def collect(self) -> Iterator[Metric]:
        yield _labelled(
            CounterMetricFamily,
            "scope_probe_publish_errors",
            "Reports not published, by reason",
            ["reason"],
            [((k,), v) for k, v in {**self._metrics.publish_errors, "queue_full": self._publisher.dropped}.items()],
        )
        yield GaugeMetricFamily("scope_probe_apps", "Apps the probe publishes to", value=len(self._publisher.apps))
        if self._failover is not None:
            yield CounterMetricFamily(
                "scope_probe_app_moves",
                "Times the probe left the one app it published to for another (it went away or never answered)",
                value=self._failover.moves,
            )
        yield _labelled(
            CounterMetricFamily,
            "scope_probe_reporter_failures",
            "Reporters' report() calls that raised; the reporter's last good report was used",
            ["reporter"],
            [((k,), v) for k, v in dict(self._metrics.reporter_failures).items()],
        )
        yield _labelled(
            CounterMetricFamily,
            "scope_probe_task_restarts",
            "Restarts of supervised threads after an unexpected error",
            ["task"],
            [((k,), v) for k, v in dict(self._supervisor.restarts).items()],
        )
        yield _labelled(
            GaugeMetricFamily,
            "scope_probe_task_up",
            "Whether a supervised thread is running (1) or waiting to restart or done (0)",
            ["task"],
            [((k,), int(v)) for k, v in dict(self._supervisor.running).items()],
        )
        if self._channel is not None:
            yield _labelled(
                CounterMetricFamily,
                "scope_probe_control_calls",
                "Control requests from apps, by control and outcome (ok, failed, busy, unknown_control...)",
                ["control", "status"],
                self._channel.controls.calls().items(),
            )
            yield _labelled(
                CounterMetricFamily,
                "scope_probe_control_dropped",
                "Control channel messages dropped, by reason",
                ["reason"],
                [((k,), v) for k, v in dict(self._channel.dropped).items()],
            )


def _labelled(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    labels: list[str],
    values: Iterable[tuple[Sequence[str], float]],
) -> Metric:
    metric = family(name, documentation, labels=labels)
    for key, value in sorted(values):
        metric.add_metric(list(key), value)
    return metric
