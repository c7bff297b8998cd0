"""The JSON API: shapes, and clear JSON errors for anything unknown."""

from __future__ import annotations

from collections.abc import Iterator

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
