"""Benchmark: how long the browser UI takes to lay out and draw a view, measured in headless Chromium.

    python -m bench.ui_render --url http://127.0.0.1:4040/ [--view 'processes?unconnected=show'] [--runs 5]

Needs a running app whose view already holds the nodes to measure (for example an app fed synthetic
reports by bench.synthetic); the figures say how many nodes and edges the view had. Each run opens
the page afresh (so the layout starts from nothing), waits for the websocket's reset message and
reads the page's own clock through `window.scopeUI`:

- first draw: from the arrival of the reset message (before JSON parsing) to the end of the first
  sigma render that contains its nodes;
- settled: from the same arrival to the draw after the force layout finished;
- layout CPU: ForceAtlas2 compute time of that layout (in the layout worker);
- redraw: one full redraw of the settled view, as JavaScript time (sigma's refresh) and as time until
  the browser presented the frame.

Medians over --runs are printed last. The WebGL renderer is printed too: headless Chromium without a
GPU renders WebGL in software (SwiftShader), which makes frame times far longer than on a desktop.
`measure_view()` is importable, for a harness that starts the app and publishes reports itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]

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


def measure_once(browser: Any, url: str, timeout_s: float, viewport: tuple[int, int]) -> Run:
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url)
        page.wait_for_function("window.scopeUI && window.scopeUI.stats().resets >= 1", timeout=timeout_s * 1000)
        page.wait_for_function("window.scopeUI.whenSettled().then(() => true)", timeout=timeout_s * 1000, polling=250)
        stats = page.evaluate("window.scopeUI.stats()")
        redraw = page.evaluate("window.scopeUI.measureRedraw()")
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
                run = measure_once(browser, url, timeout_s, viewport)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="base URL of a running app, e.g. http://127.0.0.1:4040/")
    parser.add_argument(
        "--view",
        action="append",
        help="topology and options as in the page's hash, e.g. 'processes?unconnected=show' (repeatable)",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--expect-nodes", type=int, help="fail unless the view has exactly this many nodes")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per page load")
    parser.add_argument("--viewport", default="1440x900")
    parser.add_argument("--chromium", default=CHROMIUM)
    parser.add_argument("--json", action="store_true", help="also print one JSON line per view")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.viewport.lower().split("x"))

    status = 0
    for view in args.view or ["processes?unconnected=show"]:
        print(f"view {view} at {args.url} ({args.runs} runs, viewport {width}x{height})", flush=True)
        renderer, runs = measure_view(
            args.url, view, args.runs, timeout_s=args.timeout, viewport=(width, height), chromium=args.chromium
        )
        summary = summarize(view, runs)
        summary["webgl_renderer"] = renderer
        print(
            f"{view}: {summary['nodes']} nodes, {summary['edges']} edges, median of {len(runs)}: "
            f"first draw {summary['first_draw_ms']:.0f} ms, settled {summary['settled_ms']:.0f} ms, "
            f"layout CPU {summary['layout_cpu_ms']:.0f} ms, redraw {summary['redraw_js_ms']:.1f} ms JS / "
            f"{summary['redraw_frame_ms']:.0f} ms to frame (WebGL: {renderer})"
        )
        if args.json:
            print(json.dumps({**summary, "all_runs": [asdict(r) for r in runs]}))
        if args.expect_nodes is not None and summary["nodes"] != args.expect_nodes:
            print(f"expected {args.expect_nodes} nodes, the view had {summary['nodes']}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
