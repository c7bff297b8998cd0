"""Benchmark: how long the browser UI takes to lay out and draw a view, measured in headless Chromium.

    python -m bench.ui_render [--nodes 1000 --nodes 5000] [--runs 5]
    python -m bench.ui_render --url http://127.0.0.1:4040/ [--view 'processes?unconnected=show'] [--runs 5]
    python -m bench.ui_render --nodes 5 --per-host 5 --runs 1 --screenshots artifacts/screenshots

Without --url, for each --nodes N (default 1,000 and 5,000) it starts a real app subprocess, publishes
synthetic reports (bench.synthetic.host_report: N / 500 hosts of 500 processes, with containers and
connections) to its bus as that many probes would, waits until `processes?unconnected=show` holds every
process, and measures that view. With --url it measures a running app's views as they are; the figures
say how many nodes and edges the view had. Each run opens the page afresh (so the layout starts from
nothing), waits for the websocket's reset message and reads the page's own clock through `window.scopeUI`:

- first draw: from the arrival of the reset message (before JSON parsing) to the end of the first
  sigma render that contains its nodes;
- settled: from the same arrival to the draw after the force layout finished;
- layout CPU: ForceAtlas2 compute time of that layout (in the layout worker);
- redraw: one full redraw of the settled view, as JavaScript time (sigma's refresh) and as time until
  the browser presented the frame.

With --screenshots DIR, the synthetic edges carry traffic (a steady rate per edge, from bytes to tens of
MB per second, the probes' reports sent again every second with the bytes grown), and each view is
saved as DIR/ui-render-<nodes>.png once settled and its rates known, for people to judge how the map
reads (edge thickness, arrows, packing of separate groups) at that size.

Medians over --runs are printed last. The WebGL renderer is printed too: headless Chromium without a
GPU renders WebGL in software (SwiftShader), which makes frame times far longer than on a desktop.
`measure_view()` is importable, for a harness that starts the app and publishes reports itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.synthetic import host_report
from scope_common.report import EdgeMetadata, Report
from tests.fixtures.browser import CHROMIUM_ARGS
from tests.fixtures.scope import App, ReportSender

CHROMIUM = "/usr/bin/chromium"

_RENDERER_JS = """() => {
  const gl = document.createElement("canvas").getContext("webgl");
  if (!gl) return "none";
  const info = gl.getExtension("WEBGL_debug_renderer_info");
  return info ? gl.getParameter(info.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER);
}"""


@dataclass
class Run:
    nodes: int
    edges: int
    first_draw_ms: float
    settled_ms: float
    layout_cpu_ms: float
    redraw_js_ms: float
    redraw_frame_ms: float


def page_url(base: str, view: str) -> str:
    """`view` is the page's hash without '#/': a topology id, optionally with '?options'."""
    return f"{base.rstrip('/')}/#/{view.lstrip('#/')}"


def measure_once(
    browser: Any, url: str, timeout_s: float, viewport: tuple[int, int], screenshot: Path | None = None
) -> Run:
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        # Chromium aborts requests in flight when network interfaces change (every container start or
        # stop on this host adds or removes one): a page that lost a module script that way is reloaded.
        for _ in range(2):
            if page.evaluate("() => window.scopeUI !== undefined"):
                break
            page.reload()
        page.wait_for_function("window.scopeUI && window.scopeUI.stats().resets >= 1", timeout=timeout_s * 1000)
        page.wait_for_function("window.scopeUI.whenSettled().then(() => true)", timeout=timeout_s * 1000, polling=250)
        stats = page.evaluate("window.scopeUI.stats()")
        redraw = page.evaluate("window.scopeUI.measureRedraw()")
        if screenshot is not None:
            time.sleep(TRAFFIC_SETTLE_S)  # two updates of the edges' counters: their rates are known
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot))
            print(f"  screenshot: {screenshot}", flush=True)
        if errors:
            raise RuntimeError(f"page errors: {errors}")
        if stats["resetToDrawMs"] <= 0 or stats["resetToSettledMs"] <= 0:
            raise RuntimeError(f"the page reported no timing (empty view?): {stats}")
        return Run(
            nodes=stats["nodes"],
            edges=stats["edges"],
            first_draw_ms=stats["resetToDrawMs"],
            settled_ms=stats["resetToSettledMs"],
            layout_cpu_ms=stats["lastLayoutMs"],
            redraw_js_ms=redraw["jsMs"],
            redraw_frame_ms=redraw["frameMs"],
        )
    finally:
        context.close()


def measure_view(
    base_url: str,
    view: str,
    runs: int = 5,
    *,
    timeout_s: float = 120.0,
    viewport: tuple[int, int] = (1440, 900),
    chromium: str = CHROMIUM,
    progress: bool = True,
    screenshot: Path | None = None,
) -> tuple[str, list[Run]]:
    """Opens `view` `runs` times; returns the WebGL renderer's name and one Run per page load."""
    from playwright.sync_api import sync_playwright

    url = page_url(base_url, view)
    results: list[Run] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            renderer = browser.new_page().evaluate(_RENDERER_JS)
            for i in range(runs):
                run = measure_once(browser, url, timeout_s, viewport, screenshot if i == 0 else None)
                results.append(run)
                if progress:
                    print(
                        f"  run {i + 1}/{runs}: {run.nodes} nodes, {run.edges} edges: first draw "
                        f"{run.first_draw_ms:.0f} ms, settled {run.settled_ms:.0f} ms, layout CPU "
                        f"{run.layout_cpu_ms:.0f} ms, redraw {run.redraw_js_ms:.1f} ms JS / "
                        f"{run.redraw_frame_ms:.0f} ms to frame",
                        flush=True,
                    )
        finally:
            browser.close()
    return renderer, results


def summarize(view: str, runs: list[Run]) -> dict[str, Any]:
    def med(field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs))

    return {
        "view": view,
        "runs": len(runs),
        "nodes": int(med("nodes")),
        "edges": int(med("edges")),
        "first_draw_ms": med("first_draw_ms"),
        "settled_ms": med("settled_ms"),
        "layout_cpu_ms": med("layout_cpu_ms"),
        "redraw_js_ms": med("redraw_js_ms"),
        "redraw_frame_ms": med("redraw_frame_ms"),
    }


SYNTHETIC_VIEW = "processes?unconnected=show"
TRAFFIC_SETTLE_S = 3.0


def edge_rate(client_id: str, server_id: str) -> float:
    """A steady rate (bytes/s, client -> server) per synthetic edge from 100 B/s to 50 MB/s, most of them
    quiet (median ~500 B/s) and a tenth above ~1 MB/s, as on a real map."""
    digest = hashlib.blake2b(f"{client_id}>{server_id}".encode(), digest_size=4).digest()
    return float(100 * 10 ** (5.7 * (int.from_bytes(digest) / 2**32) ** 3))


def with_traffic(report: Report, elapsed: float) -> Report:
    """`report` with every endpoint edge metered: what its rate carried in `elapsed` seconds, a tenth back."""
    out = Report()
    for topology in report.topologies.values():
        for node in topology:
            if node.topology == "endpoint" and node.adjacency:
                edges = {}
                for target in node.adjacency:
                    sent = int(edge_rate(node.id, target) * elapsed)
                    edges[target] = EdgeMetadata(1, sent, sent // 10)
                node = dataclasses.replace(node, edges=edges)
            out.add(node)
    return out


@contextmanager
def synthetic_app(
    nodes: int, per_host: int = 500, timeout_s: float = 120.0, traffic: bool = False
) -> Iterator[tuple[str, int]]:
    """A real app subprocess holding ~`nodes` process nodes from synthetic probes; yields (URL, process count).

    Reports are sent once each (the app keeps them for its whole --window) and carry fixed timestamps,
    so the view does not change while it is measured. With `traffic`, their edges carry bytes and are
    sent again every second with the bytes grown (see `with_traffic`).
    """

    hosts = max(1, round(nodes / per_host))
    now = time.time()
    reports = [
        host_report(i, hosts, processes=per_host, endpoints=4 * per_host, containers=50, now=now) for i in range(hosts)
    ]
    app = App(window="3600s")
    senders = [ReportSender(app, probe_id=f"bench-probe-{i}", host_id=f"host-{i}") for i in range(hosts)]
    stop = threading.Event()
    resender: threading.Thread | None = None
    if traffic:
        started = time.monotonic()
        reports = [with_traffic(report, 1.0) for report in reports]

        def resend() -> None:
            while not stop.wait(1.0):
                elapsed = 1.0 + time.monotonic() - started
                for sender, report in zip(senders, reports, strict=True):
                    sender.send(with_traffic(report, elapsed))

    try:
        expected = hosts * per_host
        probes: set[str] = set()
        deadline = time.monotonic() + timeout_s
        # A PUB socket drops what it sends before the app's subscription reaches it: resend until each
        # probe is known to the app.
        while len(probes) < hosts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the app heard of {len(probes)} of {hosts} synthetic probes")
            for i, (sender, report) in enumerate(zip(senders, reports, strict=True)):
                if f"bench-probe-{i}" not in probes:
                    sender.send(report)
            time.sleep(0.5)
            probes = {p["id"] for p in app.get("/api/probes")}
        while True:
            processes = sum(1 for n in app.nodes("processes", unconnected="show").values() if n["kind"] == "process")
            if processes >= expected:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the view holds {processes} of {expected} processes")
            time.sleep(0.5)
        if traffic:
            resender = threading.Thread(target=resend, name="traffic", daemon=True)
            resender.start()
        yield app.url, processes
    finally:
        stop.set()
        if resender is not None:
            resender.join()
        for sender in senders:
            sender.close()
        app.terminate()


def report_summary(view: str, runs: list[Run], renderer: str, as_json: bool) -> dict[str, Any]:
    summary = summarize(view, runs)
    summary["webgl_renderer"] = renderer
    print(
        f"{view}: {summary['nodes']} nodes, {summary['edges']} edges, median of {len(runs)}: "
        f"first draw {summary['first_draw_ms']:.0f} ms, settled {summary['settled_ms']:.0f} ms, "
        f"layout CPU {summary['layout_cpu_ms']:.0f} ms, redraw {summary['redraw_js_ms']:.1f} ms JS / "
        f"{summary['redraw_frame_ms']:.0f} ms to frame (WebGL: {renderer})",
        flush=True,
    )
    if as_json:
        print(json.dumps({**summary, "all_runs": [asdict(r) for r in runs]}))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="base URL of a running app, e.g. http://127.0.0.1:4040/ (default: synthetic)")
    parser.add_argument(
        "--view",
        action="append",
        help="with --url: topology and options as in the page's hash, e.g. 'processes?unconnected=show' (repeatable)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        action="append",
        help="without --url: size of a synthetic processes view (repeatable; default 1000 and 5000)",
    )
    parser.add_argument("--per-host", type=int, default=500, help="synthetic processes per host")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--expect-nodes", type=int, help="fail unless the view has exactly this many nodes")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per page load")
    parser.add_argument("--viewport", default="1440x900")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--json", action="store_true", help="also print one JSON line per view")
    parser.add_argument(
        "--screenshots", type=Path, help="save the first run's settled view as DIR/ui-render-<nodes>.png (with traffic)"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.viewport.lower().split("x"))

    status = 0
    if args.url is None:
        if args.view:
            parser.error("--view needs --url; the synthetic app is measured on " + SYNTHETIC_VIEW)
        for nodes in args.nodes or [1000, 5000]:
            with synthetic_app(nodes, args.per_host, traffic=args.screenshots is not None) as (url, processes):
                print(
                    f"synthetic app at {url}: {SYNTHETIC_VIEW} holds {processes} processes "
                    f"({args.runs} runs, viewport {width}x{height})",
                    flush=True,
                )
                renderer, runs = measure_view(
                    url,
                    SYNTHETIC_VIEW,
                    args.runs,
                    timeout_s=args.timeout,
                    viewport=(width, height),
                    chromium=args.chromium,
                    screenshot=args.screenshots / f"ui-render-{nodes}.png" if args.screenshots else None,
                )
                report_summary(SYNTHETIC_VIEW, runs, renderer, args.json)
        return status
    for view in args.view or [SYNTHETIC_VIEW]:
        print(f"view {view} at {args.url} ({args.runs} runs, viewport {width}x{height})", flush=True)
        renderer, runs = measure_view(
            args.url, view, args.runs, timeout_s=args.timeout, viewport=(width, height), chromium=args.chromium
        )
        summary = report_summary(view, runs, renderer, args.json)
        if args.expect_nodes is not None and summary["nodes"] != args.expect_nodes:
            print(f"expected {args.expect_nodes} nodes, the view had {summary['nodes']}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
