"""The probe's `/metrics` (--metrics-listen): what it published, how long its reporters took, its threads'
restarts and the control calls it served, scraped from a real probe publishing to a real app."""

from __future__ import annotations

import pytest

from scope_probe.main import build_parser
from tests.fixtures.ports import free_port
from tests.fixtures.scope import Scope, scrape_metrics, wait_for

THREADS = ("publisher", "discovery", "docker-events", "docker-worker", "control-channel")


def test_a_probe_serves_what_it_did_in_prometheus_format(scope: Scope) -> None:
    app = scope.app()
    port = free_port()
    probe = scope.probe([app.bus], hostname="metrics-host", extra=[f"--metrics-listen=127.0.0.1:{port}"])
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for(lambda: "metrics-host;<host>" in app.nodes("hosts"), timeout=15, what="the probe's host")

    def published() -> dict[str, float] | None:
        found = scrape_metrics(url)
        return found if found.get('scope_probe_report_bytes_count{kind="delta"}', 0) >= 2 else None

    metrics = wait_for(published, timeout=15, what="reports published")
    assert metrics['scope_probe_report_bytes_count{kind="full"}'] >= 1
    assert metrics['scope_probe_report_bytes_sum{kind="full"}'] > 1000
    assert metrics["scope_probe_apps"] == 1
    assert metrics['scope_probe_publish_errors_total{reason="queue_full"}'] == 0
    for reporter in ("host", "process", "endpoint", "docker"):
        assert metrics[f'scope_probe_reporter_seconds_count{{reporter="{reporter}"}}'] >= 1, reporter
    for thread in THREADS:
        assert metrics[f'scope_probe_task_up{{task="{thread}"}}'] == 1, thread
        assert metrics[f'scope_probe_task_restarts_total{{task="{thread}"}}'] == 0, thread

    # A control the app passes on and the probe refuses (a Docker control on the host node): counted by
    # control and outcome.
    (probe_id,) = [p["id"] for p in app.get("/api/probes")]
    wait_for(
        lambda: app.control(probe_id, "metrics-host;<host>", "docker_stop_container")[0] == 400,
        timeout=10,
        what="the probe's answer to a control",
    )
    calls = {key: value for key, value in scrape_metrics(url).items() if "control_calls_total" in key}
    assert calls == {'scope_probe_control_calls_total{control="docker_stop_container",status="unknown_node"}': 1}
    assert "Traceback" not in probe.log()


def test_metrics_are_off_unless_asked_for_and_a_taken_port_stops_the_probe(scope: Scope) -> None:
    """Off by default: a probe on every host opens no port unless told to. Asked for, the port must be had."""
    assert build_parser().parse_args([]).metrics_listen == ""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--metrics-listen=127.0.0.1:99999"])
    app = scope.app()
    port = free_port()
    first = scope.probe([app.bus], hostname="first", extra=[f"--metrics-listen=127.0.0.1:{port}"])
    wait_for(lambda: scrape_metrics(f"http://127.0.0.1:{port}/metrics"), timeout=15, what="the first probe's metrics")
    second = scope.probe([app.bus], hostname="second", extra=[f"--metrics-listen=127.0.0.1:{port}"])
    assert second.process.wait(15) == 2
    assert "cannot serve /metrics" in second.log()
    assert first.process.poll() is None
