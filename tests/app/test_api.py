"""The JSON API: shapes, and clear JSON errors for anything unknown."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from scope_common import ids
from scope_common.report import (
    CONTAINER_ID,
    CONTAINER_NAME,
    CONTAINER_STATE,
    HOST_NODE_ID,
    HOSTNAME,
    IMAGE_NAME,
    Node,
    Report,
)
from tests.fixtures.scope import App, ReportSender, Scope

CONTAINER = "f" * 64


@pytest.fixture
def app_with_report(scope: Scope) -> Iterator[App]:
    app = scope.app()
    report = Report()
    host = ids.host_id("api-host")
    report.add(Node.build(host, "host", latest={HOSTNAME: "api-host", HOST_NODE_ID: host}))
    report.add(
        Node.build(
            ids.container_id(CONTAINER),
            "container",
            latest={
                CONTAINER_ID: CONTAINER,
                CONTAINER_NAME: "web",
                IMAGE_NAME: "busybox:latest",
                CONTAINER_STATE: "running",
                HOST_NODE_ID: host,
            },
        )
    )
    sender = ReportSender(app, host_id="api-host")
    sender.send_until(report, lambda: app.nodes("containers"))
    yield app
    sender.close()


def test_info_and_topology_list(app_with_report: App) -> None:
    info = app_with_report.get("/api")
    assert set(info) == {"id", "version", "hostname"}
    topologies = {t["id"]: t for t in app_with_report.get("/api/topology")}
    assert set(topologies) == {
        "containers",
        "containers-by-image",
        "containers-by-hostname",
        "processes",
        "processes-by-name",
        "hosts",
    }
    assert topologies["containers"]["stats"]["node_count"] == 1
    assert topologies["hosts"]["url"] == "/api/topology/hosts"
    assert set(topologies["hosts"]["stats"]) == {"node_count", "edge_count", "filtered_nodes"}


def test_node_details_by_quoted_id(app_with_report: App) -> None:
    node = app_with_report.node("containers", ids.container_id(CONTAINER))
    assert node["label_major"] == "web"
    assert node["controls"] == []
    assert set(node["connections"]) == {"in", "out"}


def test_report_and_probes(app_with_report: App) -> None:
    report = app_with_report.get("/api/report")
    assert ids.container_id(CONTAINER) in report["container"]
    assert report["container"][ids.container_id(CONTAINER)]["latest"]["docker_container_name"]["value"] == "web"
    (probe,) = app_with_report.get("/api/probes")
    assert probe["hostname"] == "api-host" and probe["version"] == "test"


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/api/topology/nope", 404, "unknown topology"),
        ("/api/topology/containers/no-such-node", 404, "no node"),
        ("/api/topology/containers?system=maybe", 400, "show or hide"),
        ("/api/topology/containers?search=" + "x" * 201, 400, "search is longer"),
        ("/api/elsewhere", 404, "no such API route"),
    ],
)
def test_errors_are_json_never_tracebacks(app_with_report: App, path: str, status: int, message: str) -> None:
    code, body = app_with_report.get_status(path)
    assert code == status
    assert message in body["error"]
    assert "Traceback" not in app_with_report.log()


def test_search_narrows_a_view_on_the_server(app_with_report: App) -> None:
    assert ids.container_id(CONTAINER) in app_with_report.get("/api/topology/containers?search=WEB")["nodes"]
    assert app_with_report.get("/api/topology/containers?search=busybox")["nodes"], "metadata matches too"
    assert app_with_report.get("/api/topology/containers?search=nothing-like-it")["nodes"] == {}


def _get_with_host(app: App, path: str, host: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": host})
        response = connection.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.getheader("Content-Type", "").startswith(
            "application/json"
        ) else body
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 403),
        ("evil.example:{port}", 403),
        ("127.0.0.1:{port}", 200),
        ("[::1]:{port}", 200),
        ("192.0.2.7:{port}", 200),  # the server's address, typed by someone on another machine
        ("localhost:{port}", 200),
        ("{hostname}:{port}", 200),
        ("scope.example", 200),  # named with --allowed-hosts
    ],
)
def test_dns_rebinding_is_refused_by_host(scope: Scope, host: str, status: int) -> None:
    """A page whose own name was made to resolve to the app's address still sends its name as Host."""
    app = scope.app(extra=["--allowed-hosts=scope.example"])
    host = host.format(port=app.http_port, hostname=socket.gethostname())
    for path in ("/api/topology/hosts", "/api/report", "/", "/api/topology/hosts/ws", "/metrics"):
        code, body = _get_with_host(app, path, host)
        assert code == status or (status == 200 and path.endswith("/ws") and code == 400), (path, code)
        if status == 403:
            assert "not one this app serves" in body["error"]
    if status == 403:
        assert app.metrics()["scope_app_refused_hosts_total"] == 5


def test_health_and_metrics(app_with_report: App) -> None:
    code, health = app_with_report.get_status("/api/health")
    assert code == 200 and health["status"] == "ok"
    assert health["tasks"] == dict.fromkeys(("bus", "expiry", "controls", "control-heartbeats", "pipe-collector"), True)
    metrics = app_with_report.metrics()
    assert metrics["scope_app_probes"] == 1
    assert metrics["scope_app_reports_applied_total"] >= 1
    assert metrics["scope_app_report_bytes_count"] == metrics["scope_app_reports_received_total"]
    assert metrics['scope_app_task_up{task="bus"}'] == 1
    assert metrics['scope_app_render_seconds_count{topology="containers"}'] >= 1
    assert metrics["scope_app_node_budget"] > metrics["scope_app_stored_nodes"] >= 2
