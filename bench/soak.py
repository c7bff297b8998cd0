"""Benchmark: does the app's or the probe's memory creep up over a long run with containers coming and going?

    python -m bench.soak [--minutes 30] [--warmup 5] [--sample 10] [--live 5] [--view containers]

Starts an app and a probe on this host, a headless Chromium showing --view (its websocket feed stays open
all along), and starts one busybox container (scripts/test-images.sh builds the image) every second,
removing the oldest once more than --live run: every second the probe sees a start and a removal, and
the app a new container node and an old one leaving. The RSS of the app and the probe is sampled every
--sample seconds. Growth is measured from the end of the warm-up (caches, the window and the metric
history filling up are not a leak) to the end: the median of the last minute against the median of the
minute after the warm-up; the goal is under 10 % for both. The probe reports the whole machine, so
each sample also prints the nodes the app stores: on a shared machine, other people's processes and
containers move memory too, and the node count tells that apart from a leak. The containers are
removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import threading
import time
from collections import deque
from typing import Any

import docker
import psutil

from tests.fixtures.browser import launch_browser
from tests.fixtures.docker import BUSYBOX_IMAGE, Containers
from tests.fixtures.scope import App, start_probe, wait_for

HOSTNAME = "soak-host"
GOAL_GROWTH = 10.0  # %
MIB = 1024 * 1024


class Churn:
    """Starts a container every `every` seconds and removes the oldest beyond `live`, in its own thread."""

    def __init__(self, containers: Containers, live: int, every: float = 1.0) -> None:
        self._containers = containers
        self._live = live
        self._every = every
        self._running: deque[Any] = deque()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn", daemon=True)
        self.started = 0
        self.removed = 0
        self.errors = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(30)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stopping.wait(max(0.0, next_at - time.monotonic())):
            next_at += self._every
            try:
                self._running.append(self._containers.run(["sleep", "3600"]))
                self.started += 1
                while len(self._running) > self._live:
                    self._running.popleft().remove(force=True, v=True)
                    self.removed += 1
            except docker.errors.DockerException:
                # A busy shared engine may time out now and then; the soak is about the probe and app.
                self.errors += 1


def rss_mib(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MIB


def growth(samples: list[tuple[float, float]], warmup: float) -> tuple[float, float, float]:
    """(baseline, end, growth %): medians of the minute after `warmup` and of the last minute."""
    end_time = samples[-1][0]
    base = [rss for t, rss in samples if warmup <= t < warmup + 60] or [samples[0][1]]
    last = [rss for t, rss in samples if t >= end_time - 60]
    base_mib, end_mib = statistics.median(base), statistics.median(last)
    return base_mib, end_mib, 100.0 * (end_mib - base_mib) / base_mib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes before growth is counted")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    parser.add_argument("--live", type=int, default=5, help="churned containers running at once")
    parser.add_argument("--view", default="containers", help="the topology the browser shows")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C, so the containers are removed either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    client = docker.from_env(timeout=120)
    client.images.get(BUSYBOX_IMAGE)  # fails early (scripts/test-images.sh builds it)
    containers = Containers(client, BUSYBOX_IMAGE)
    churn = Churn(containers, args.live)
    app = App()
    probe = start_probe([app.bus], hostname=HOSTNAME)
    samples: dict[str, list[tuple[float, float]]] = {"app": [], "probe": []}
    try:
        wait_for(lambda: f"{HOSTNAME};<host>" in app.nodes("hosts"), timeout=30, what="the probe's host")
        with launch_browser() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{app.url}/#/{args.view}")
            churn.start()
            started = time.monotonic()
            print(f"soak: {args.minutes:g} min, a container a second, browser on #/{args.view}", flush=True)
            while (elapsed := time.monotonic() - started) < args.minutes * 60:
                for name, pid in (("app", app.pid), ("probe", probe.pid)):
                    samples[name].append((elapsed, rss_mib(pid)))
                shown = page.evaluate("() => window.scopeUI ? window.scopeUI.stats().nodes : -1")
                # The probe sees the whole machine: what other people run here changes how much it and
                # the app hold. The stored nodes tell such a change from a leak.
                stored = int(app.metrics().get("scope_app_stored_nodes", -1))
                print(
                    f"  {elapsed / 60:5.1f} min: app {samples['app'][-1][1]:6.1f} MiB, "
                    f"probe {samples['probe'][-1][1]:6.1f} MiB, {stored} nodes stored, {churn.started} started, "
                    f"{churn.removed} removed, {churn.errors} errors, {shown} nodes on the page",
                    flush=True,
                )
                # Waiting through Playwright lets it handle the page's events meanwhile.
                page.wait_for_timeout(args.sample * 1000)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        churn.stop()
        containers.cleanup()
        probe.terminate()
        app.terminate()

    warmup = args.warmup * 60
    if not samples["app"] or samples["app"][-1][0] < warmup + 60:
        print("too short to measure growth: run longer than the warm-up plus a minute")
        return 1
    worst = 0.0
    print(f"memory growth from the minute after {args.warmup:g} min to the last minute (goal < {GOAL_GROWTH:g} %):")
    for name, series in samples.items():
        base, end, percent = growth(series, warmup)
        peak = max(rss for _, rss in series)
        worst = max(worst, percent)
        print(f"  {name:5}: {base:6.1f} -> {end:6.1f} MiB ({percent:+.1f} %), peak {peak:.1f} MiB")
    print(f"containers: {churn.started} started, {churn.removed} removed, {churn.errors} engine errors")
    return 0 if worst < GOAL_GROWTH else 1


if __name__ == "__main__":
    raise SystemExit(main())
