"""Traffic on the map, as a person sees it in headless Chromium: a real app subprocess fed by a probe's
reports over its real ZeroMQ bus, with byte counts as conntrack's accounting gives them.

The reports are made here rather than by a probe so the traffic is known exactly: process `busy` sends
2 MB/s to `server` (and gets a tenth of that back), process `quiet` sends 100 bytes a second, in packets
of PACKET_BYTES; a report goes out every 0.5 s with the bytes and packets grown, as a probe's would.
"""

from __future__ import annotations

import base64
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from scope_common import ids
from scope_common.report import EdgeMetadata, Node, Report
from tests.app.test_render import _host, _process
from tests.fixtures.browser import screenshot
from tests.fixtures.scope import App, ReportSender, Scope, wait_for
from tests.ui.test_map import UI

pytestmark = [pytest.mark.browser]

HOST = "traffic-host"
BUSY_RATE = 2_000_000  # bytes/s, client -> server; a tenth of it back
QUIET_RATE = 100
REPORT_EVERY_S = 0.5
PACKET_BYTES = 1000
EXPECT_MS = 15_000
BACKGROUND = (0x11, 0x18, 0x21)  # the map's background, --bg in style.css


@dataclass(frozen=True)
class Traffic:
    app: App
    busy: str
    quiet: str
    server: str


def _report(elapsed: float) -> Report:
    """The probe's report after `elapsed` seconds of traffic: busy -> server and quiet -> server on port 80."""
    report = Report()
    _host(report, HOST, "10.9.0.1/24")
    server = _process(report, HOST, 20, "server")
    server_end = ids.endpoint_id(HOST, "127.0.0.1", 80)
    report.add(Node.build(server_end, "endpoint", parents={"process": [server]}))
    for pid, name, port, rate in ((10, "busy", 40000, BUSY_RATE), (11, "quiet", 40001, QUIET_RATE)):
        client = _process(report, HOST, pid, name)
        sent = int(rate * elapsed)
        edges = {server_end: EdgeMetadata(1, sent, sent // 10, sent // PACKET_BYTES, sent // 10 // PACKET_BYTES)}
        client_end = ids.endpoint_id(HOST, "127.0.0.1", port)
        report.add(Node.build(client_end, "endpoint", adjacency=edges, edges=edges, parents={"process": [client]}))
    return report


@pytest.fixture(scope="module")
def traffic() -> Iterator[Traffic]:
    processes = Scope()
    app = processes.app()
    sender = ReportSender(app, probe_id="traffic-probe", host_id=HOST)
    stop = threading.Event()
    started = time.monotonic()
    sender.send_until(_report(0.0), lambda: len(app.nodes("processes")) == 3)

    def publish() -> None:
        while not stop.wait(REPORT_EVERY_S):
            sender.send(_report(time.monotonic() - started))

    publisher = threading.Thread(target=publish, name="traffic-reports", daemon=True)
    publisher.start()
    try:
        yield Traffic(app, ids.process_id(HOST, 10), ids.process_id(HOST, 11), ids.process_id(HOST, 20))
    finally:
        stop.set()
        publisher.join()
        sender.close()
        processes.close()


def _open(page: Page, app: App, hash_: str = "processes") -> list[str]:
    """Load the page (again, should Docker's network changes elsewhere abort its scripts) and wait until
    its layout settled; returns the list the page's errors go to."""
    ui = UI(page, app)
    ui.open(hash_)
    page.wait_for_function("() => window.scopeUI.whenSettled().then(() => true)", polling=250)
    return ui.errors


def _edge(page: Page, source: str, target: str) -> dict[str, Any]:
    """The edge as the page draws it, once its rate is known (a second update of its counters)."""
    handle = page.wait_for_function(
        "([s, t]) => { const e = window.scopeUI.edgeInfo(s, t); return e && e.traffic && e.traffic.rate && e; }",
        arg=[source, target],
        timeout=EXPECT_MS,
    )
    info: dict[str, Any] = handle.json_value()
    return info


# Counts the pixels that differ from the background along the perpendicular to an edge at its midpoint,
# in a screenshot (PNG, base64) decoded on a 2D canvas: how thick the line is on screen.
_THICKNESS_JS = """async ([png, from, to, background]) => {
  const image = new Image();
  image.src = "data:image/png;base64," + png;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const scale = image.width / window.innerWidth;
  const mx = (from.x + to.x) / 2, my = (from.y + to.y) / 2;
  const length = Math.hypot(to.x - from.x, to.y - from.y);
  const nx = -(to.y - from.y) / length, ny = (to.x - from.x) / length;
  let lit = 0;
  for (let d = -15; d <= 15; d += 0.5) {
    const x = Math.round((mx + nx * d) * scale), y = Math.round((my + ny * d) * scale);
    const [r, g, b] = ctx.getImageData(x, y, 1, 1).data;
    const diff = Math.abs(r - background[0]) + Math.abs(g - background[1]) + Math.abs(b - background[2]);
    if (diff > 60) lit += 0.5;
  }
  return lit;
}"""


def _thickness_on_screen(page: Page, edge: dict[str, Any]) -> float:
    png = base64.b64encode(page.screenshot()).decode()
    thickness: float = page.evaluate(_THICKNESS_JS, [png, edge["from"], edge["to"], list(BACKGROUND)])
    return thickness


def test_a_busier_edge_is_drawn_thicker_than_a_quiet_one(page: Page, traffic: Traffic) -> None:
    errors = _open(page, traffic.app)
    busy = _edge(page, traffic.busy, traffic.server)
    quiet = _edge(page, traffic.quiet, traffic.server)
    page.mouse.move(5, 300)  # nothing hovered: every edge as it is drawn by default
    page.wait_for_timeout(300)
    screenshot(page, "traffic-busy-and-quiet-edges")
    busy_px, quiet_px = _thickness_on_screen(page, busy), _thickness_on_screen(page, quiet)
    assert quiet_px >= 1, "a quiet edge is still a visible line"
    assert busy_px >= 2 * quiet_px, f"busy edge {busy_px} px, quiet edge {quiet_px} px"
    assert busy["size"] > quiet["size"]
    assert not errors, errors


def test_hovering_an_edge_shows_its_traffic_each_way(page: Page, traffic: Traffic) -> None:
    errors = _open(page, traffic.app)
    busy = _edge(page, traffic.busy, traffic.server)
    tooltip = page.get_by_test_id("edge-tooltip")
    expect(tooltip).to_be_hidden()
    page.mouse.move(busy["midpoint"]["x"], busy["midpoint"]["y"])
    expect(tooltip).to_be_visible()
    expect(tooltip).to_contain_text("busy \u2192 server")
    screenshot(page, "traffic-edge-hover")
    rates = re.search(r"\u2192 ([\d.]+) MiB/s \u00b7 \u2190 ([\d.]+) KiB/s", tooltip.inner_text())
    assert rates is not None, tooltip.inner_text()
    out_mib, back_kib = float(rates[1]), float(rates[2])
    assert 0.5 * BUSY_RATE / 2**20 <= out_mib <= 1.5 * BUSY_RATE / 2**20, out_mib
    assert 0.5 * BUSY_RATE / 10 / 2**10 <= back_kib <= 1.5 * BUSY_RATE / 10 / 2**10, back_kib
    expect(tooltip).to_contain_text("1 connection")
    packets = re.search(r"([\d,]+) pkts \u2192 \u00b7 ([\d,]+) pkts \u2190", tooltip.inner_text())
    assert packets is not None, tooltip.inner_text()
    out_packets, back_packets = (int(count.replace(",", "")) for count in packets.groups())
    assert back_packets < out_packets and out_packets * PACKET_BYTES >= BUSY_RATE, packets.groups()
    # Away from every edge and node, the label goes.
    page.mouse.move(5, 300)
    expect(tooltip).to_be_hidden()
    assert not errors, errors


# Counts the pixels of a colour (within a tolerance) in a box around a point of a screenshot (PNG, base64).
_PIXELS_OF_COLOUR_JS = """async ([png, at, half, colour]) => {
  const image = new Image();
  image.src = "data:image/png;base64," + png;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0);
  const scale = image.width / window.innerWidth;
  const box = ctx.getImageData((at.x - half) * scale, (at.y - half) * scale, 2 * half * scale, 2 * half * scale).data;
  let found = 0;
  for (let i = 0; i < box.length; i += 4) {
    const diff = Math.abs(box[i] - colour[0]) + Math.abs(box[i + 1] - colour[1]) + Math.abs(box[i + 2] - colour[2]);
    if (diff < 40) found += 1;
  }
  return found;
}"""
EDGE_LABEL = (0x5C, 0xC8, 0xFF)  # the label text's colour, COLORS.edgeLabel in graph.js


def _label_pixels(page: Page, at: dict[str, float]) -> int:
    png = base64.b64encode(page.screenshot()).decode()
    found: int = page.evaluate(_PIXELS_OF_COLOUR_JS, [png, at, 30, list(EDGE_LABEL)])
    return found


def test_hovering_a_node_labels_its_edges_with_their_traffic(page: Page, traffic: Traffic) -> None:
    errors = _open(page, traffic.app)
    _edge(page, traffic.busy, traffic.server)
    quiet = _edge(page, traffic.quiet, traffic.server)
    page.mouse.move(5, 300)
    page.wait_for_timeout(300)
    assert _edge(page, traffic.quiet, traffic.server)["label"] == "", "no labels while nothing is hovered"
    unlabelled = _label_pixels(page, quiet["midpoint"])
    server = page.evaluate("(id) => window.scopeUI.nodePosition(id)", traffic.server)
    page.mouse.move(server["x"], server["y"])
    page.wait_for_function(
        "([s, t]) => window.scopeUI.edgeInfo(s, t).label !== ''", arg=[traffic.quiet, traffic.server], timeout=EXPECT_MS
    )
    page.wait_for_timeout(300)
    screenshot(page, "traffic-node-hover-edge-labels")
    busy_label = _edge(page, traffic.busy, traffic.server)["label"]
    quiet_label = _edge(page, traffic.quiet, traffic.server)["label"]
    assert re.fullmatch(r"\u2192 [\d.]+ MiB/s \u00b7 \u2190 [\d.]+ KiB/s", busy_label), busy_label
    assert re.fullmatch(r"\u2192 \d+ B/s \u00b7 \u2190 \d+ B/s", quiet_label), quiet_label
    # And it is drawn: the label's text is on the screen at the edge's middle, where it was not before.
    assert _label_pixels(page, quiet["midpoint"]) >= unlabelled + 10
    assert not errors, errors


def test_details_list_connections_with_their_traffic(page: Page, traffic: Traffic) -> None:
    errors = _open(page, traffic.app)
    _edge(page, traffic.busy, traffic.server)
    _edge(page, traffic.quiet, traffic.server)
    page.evaluate("(id) => window.scopeUI.selectNode(id)", traffic.server)
    inbound = page.get_by_test_id("details-connections-in")
    busy_row = inbound.locator(f'[data-testid="details-connection"][data-node-id="{traffic.busy}"]')
    quiet_row = inbound.locator(f'[data-testid="details-connection"][data-node-id="{traffic.quiet}"]')
    # What the server received from busy (MiB, and a rate in MiB/s) and sent back (a tenth of it).
    expect(busy_row.get_by_test_id("connection-received")).to_have_text(
        re.compile(r"^[\d.]+ MiB[\d,]+ pkts[\d.]+ MiB/s$"), timeout=EXPECT_MS
    )
    expect(busy_row.get_by_test_id("connection-sent")).to_have_text(re.compile(r"KiB/s$"), timeout=EXPECT_MS)
    expect(quiet_row.get_by_test_id("connection-received")).to_have_text(re.compile(r"\d+ B/s$"), timeout=EXPECT_MS)

    # The bytes keep up with the traffic while the panel is open, though the server's own summary does
    # not change (the edges are its clients').
    def received_mib() -> float:
        return float(busy_row.get_by_test_id("connection-received").inner_text().split(" MiB")[0])

    def received_packets() -> int:
        return int(busy_row.get_by_test_id("connection-received-packets").inner_text().split()[0].replace(",", ""))

    before, packets_before = received_mib(), received_packets()
    wait_for(lambda: received_mib() >= before + 2, timeout=10, interval=0.5, what="the received bytes to grow")
    assert received_packets() > packets_before
    screenshot(page, "traffic-details")
    assert not errors, errors


def test_the_table_sorts_nodes_by_traffic(page: Page, traffic: Traffic) -> None:
    errors = _open(page, traffic.app, "processes?view=table")
    rows = page.get_by_test_id("node-row")
    expect(rows).to_have_count(3)
    page.get_by_test_id("th-traffic").click()  # busiest first
    expected = [traffic.server, traffic.busy, traffic.quiet]  # the server carries both connections
    wait_for(
        lambda: [rows.nth(i).get_attribute("data-node-id") for i in range(3)] == expected,
        timeout=EXPECT_MS / 1000,
        what="rows by traffic, busiest first",
    )
    expect(rows.nth(0).get_by_test_id("cell-traffic")).to_have_text(re.compile(r"MiB/s$"))
    expect(rows.nth(2).get_by_test_id("cell-traffic")).to_have_text(re.compile(r"\d+ B/s$"))
    expect(rows.nth(0).get_by_test_id("cell-packets")).to_have_text(re.compile(r"^[\d,]+ pkts$"))
    page.get_by_test_id("th-traffic").click()  # and quietest first
    wait_for(
        lambda: [rows.nth(i).get_attribute("data-node-id") for i in range(3)] == expected[::-1],
        timeout=EXPECT_MS / 1000,
        what="rows by traffic, quietest first",
    )
    page.get_by_test_id("th-packets").click()  # most packets first: the server's are both clients'
    wait_for(
        lambda: [rows.nth(i).get_attribute("data-node-id") for i in range(3)] == expected,
        timeout=EXPECT_MS / 1000,
        what="rows by packets, most first",
    )
    screenshot(page, "traffic-table")
    assert not errors, errors
