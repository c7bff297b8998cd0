"""Node details come from the templates a probe sends: a new row or button needs no change to the app,
and templates no probe should send are dropped and counted while the views keep answering."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from scope_common import ids, wire
from scope_common.report import (
    CONTAINER,
    CONTAINER_ID,
    CONTAINER_NAME,
    CONTAINER_STATE,
    CONTROL_PROBE_ID,
    CONTROLS,
    HOST_NODE_ID,
    HOSTNAME,
    IMAGE_NAME,
    ControlTemplate,
    MetadataTemplate,
    Node,
    Report,
    Templates,
)
from scope_common.templates import CONTAINER_TEMPLATES
from tests.fixtures.scope import App, ReportSender, Scope, wait_for

PROBE = "plugin-probe"
HOST = ids.host_id("plugin-host")
CONTAINER_NODE = ids.container_id("c" * 64)
SNAPSHOT = ControlTemplate(1, "plugin_snapshot", "Snapshot", "camera", confirm="Take a snapshot?")
OWNER = MetadataTemplate(0.5, "owner", "Owner", "plugin_owner")


def _nodes() -> list[Node]:
    return [
        Node.build(HOST, "host", latest={HOSTNAME: "plugin-host", HOST_NODE_ID: HOST}),
        Node.build(
            CONTAINER_NODE,
            CONTAINER,
            latest={
                CONTAINER_ID: "c" * 64,
                CONTAINER_NAME: "db",
                IMAGE_NAME: "postgres:16",
                CONTAINER_STATE: "running",
                HOST_NODE_ID: HOST,
                "plugin_owner": "team-a",
                "plugin_secret": "no template names this field",
                CONTROL_PROBE_ID: PROBE,
            },
            sets={CONTROLS: ["plugin_snapshot", "plugin_without_a_button"]},
        ),
    ]


@pytest.fixture
def app(scope: Scope) -> App:
    return scope.app()


@pytest.fixture
def sender(app: App) -> Iterator[ReportSender]:
    sender = ReportSender(app, probe_id=PROBE, host_id="plugin-host")
    yield sender
    sender.close()


def _rows(node: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(row["id"], row["label"], row["value"]) for row in node["metadata"]]


def test_a_probe_adds_a_row_and_a_button_without_any_change_to_the_app(app: App, sender: ReportSender) -> None:
    report = Report()
    for node in _nodes():
        report.add(node)
    report.topology(CONTAINER).templates = Templates(
        {**CONTAINER_TEMPLATES.metadata, OWNER.id: OWNER}, CONTAINER_TEMPLATES.metrics, {SNAPSHOT.id: SNAPSHOT}
    )
    sender.send_until(report, lambda: CONTAINER_NODE in app.nodes("containers"))
    summary = app.nodes("containers")[CONTAINER_NODE]
    assert _rows(summary)[:2] == [("owner", "Owner", "team-a"), ("image", "Image", "postgres:16")]
    details = app.node("containers", CONTAINER_NODE)
    assert ("owner", "Owner", "team-a") in _rows(details)
    assert all("no template" not in value for _, _, value in _rows(details)), "a field without a template is not shown"
    # The button of the new control; the control offered without a button is left out.
    assert details["controls"] == [
        {
            "probeId": PROBE,
            "nodeId": CONTAINER_NODE,
            "id": "plugin_snapshot",
            "human": "Snapshot",
            "icon": "camera",
            "confirm": "Take a snapshot?",
        }
    ]
    # The app takes the new control: it is turned away only because this sender has no control channel.
    status, body = app.control(PROBE, CONTAINER_NODE, "plugin_snapshot")
    assert status == 404 and "not connected" in body["error"]

    # The probe relabels its row: the details follow, with no node changed.
    report.topology(CONTAINER).templates = Templates(
        {**CONTAINER_TEMPLATES.metadata, "owner": MetadataTemplate(0.5, "owner", "Team", "plugin_owner")},
        CONTAINER_TEMPLATES.metrics,
        {SNAPSHOT.id: SNAPSHOT},
    )
    sender.send_until(report, lambda: ("owner", "Team", "team-a") in _rows(app.node("containers", CONTAINER_NODE)))


def _message(seq: int, records: list[list[Any]]) -> bytes:
    body = wire.report_records(_nodes()) + b"".join(
        msgpack.packb(msgpack.packb(record, use_bin_type=True), use_bin_type=True) for record in records
    )
    head = {
        "v": wire.FORMAT_VERSION,
        "probe_id": PROBE,
        "host_id": "plugin-host",
        "seq": seq,
        "sent_at": time.time(),
        "version": "hostile",
        "full": True,
        "base_seq": 0,
        "encoding": wire.ENCODING_NONE,
        "report": body,
    }
    return bytes(msgpack.packb(head, use_bin_type=True))


def test_hostile_templates_are_dropped_and_counted_and_the_views_keep_answering(app: App, sender: ReportSender) -> None:
    owner = [OWNER.id, OWNER.label, OWNER.priority, "latest", OWNER.key, "text", 0, False]
    records: list[list[Any]] = [
        [
            CONTAINER,
            [
                owner,
                ["huge", "L" * 200_000, 1, "latest", "plugin_secret", "text", 0, False],
                [{"id": "x"}, ["a"], None, "latest", "plugin_secret", "text", 0, False],
                ["deep", "Deep", 1, "latest", "plugin_secret", "text", -5, False],
            ],
            [["cpu_usage_percent", "cpu", "CPU", "percent", "first"]],
            [
                ["plugin_snapshot", "Snapshot", "camera" * 100, "", "", 1],
                ["plugin_snapshot", "Snap", "camera", "", "", 1],
            ],
        ],
        ["kubernetes_pod", [owner], [], []],
        [CONTAINER, [owner] * (wire.MAX_TEMPLATES + 1), [], []],
    ]
    seqs = itertools.count(1)

    def arrived() -> bool:
        sender.send_raw(_message(next(seqs), records))
        return CONTAINER_NODE in app.nodes("containers")

    wait_for(arrived, 10, interval=0.2, what="the app to receive the report")
    rejected = app.get("/api/stats")["nodes_rejected"]
    sent = next(seqs) - 1  # every message sent may have arrived; at least one did
    for reason, per_message in (
        ("template_too_long", 2),
        ("template_malformed", 3),
        ("template_unknown_topology", 1),
        ("template_too_many", 1),
    ):
        assert per_message <= rejected[reason] <= per_message * sent, reason
    # Of both container template records, the second (too many rows) was dropped whole: the first stands.
    details = app.node("containers", CONTAINER_NODE)
    assert _rows(details) == [("owner", "Owner", "team-a")]
    assert [button["human"] for button in details["controls"]] == ["Snap"]
    for topology in app.get("/api/topology"):
        assert "nodes" in app.get(f"/api/topology/{topology['id']}")
