"""Benchmark (issue 16): one app against a fleet of N probes publishing every 3 s.

    python -m bench.fleet --probes 10,100 [--seconds 90] [--checkout DIR] [--profile real|synthetic]

For each N: a real app process (`python -m scope_app`), and N fake probes (bench/fleet_probes.py: one
process, one ZeroMQ PUB connection per probe) replaying a real captured report (bench/data/report-50.json)
or bench.synthetic's host report, with hosts, container ids and addresses rewritten per probe, metrics
moving and containers replaced every cycle, publishing every 3 s spread evenly. After a warm-up (all N
hosts in the hosts view), three phases of --seconds/3 each:

- quiet: nobody asks the app anything; its CPU (% of one core, median of 3 s windows, from /proc/PID/stat)
  is what the fleet alone costs. Its RSS is the max over the whole run (/proc/PID/status).
- websocket: a websocket client watches the containers view, as a browser would.
- polled: one client asks for `/api/topology/containers` (back to back, at most 10 times a second) and
  `/api/topology/hosts` (once a second), each request bounded by --timeout: the latencies.
Meanwhile probe 0 swaps in a container with a new name every cycle; freshness is the time from the message
carrying it leaving the probe to the name being in a websocket message (second phase) or an API answer
(third phase), waited for up to 10 s past the phase.

`--checkout DIR` runs the app and the fake probes' encoding from DIR (PYTHONPATH=DIR), so the same bench
measures another design; the fake probes send wire v2 deltas (scope_common.delta.DeltaEncoder) when DIR
has them, full reports otherwise. A saturated app shows as timeouts and missing figures, never a hang:
every wait is bounded. The app's per-source limits are raised where it has them (`LIMITS`): the fake
probes all connect from 127.0.0.1. Everything started is stopped at the end, also on Ctrl-C.

The machine matters: the fake probes (encoding N reports every 3 s) share it with the app. The table says
what they achieved against what was intended, and their CPU; `--senders K` spreads them over K processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import tornado.httpclient
import tornado.websocket

from bench.host_e2e import cpu_seconds, rss_mib
from tests.fixtures.scope import LOG_DIR, App

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PROBES_SCRIPT = BENCH_DIR / "fleet_probes.py"
MARK = re.compile(r"fleetmark-[0-9a-f]+-[0-9]+")
#: Go Scope 1.13 on this machine (issue 16), same replay: N -> (CPU %, RSS MiB, containers view s, fresh s).
GO = {10: (0.9, 119, 0.023, 0.07), 50: (6.2, 366, 0.53, 0.5), 100: (14.0, 687, 1.2, 1.3)}


@dataclass
class Stat:
    """One `STAT` line of a fake-probe process."""

    at: float
    sent: int
    behind: float
    cpu: float


@dataclass
class Senders:
    """The fake-probe processes, and what they print: when each marked change left, their progress."""

    processes: list[subprocess.Popen[str]]
    marks: dict[str, float] = field(default_factory=dict)
    stats: list[list[Stat]] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, index: int, stream: IO[str]) -> None:
        for line in stream:
            word, _, rest = line.strip().partition(" ")
            with self.lock:
                if word == "READY":
                    self.ready.append(rest)
                elif word == "MARK":
                    name, sent_at = rest.split()
                    self.marks[name] = float(sent_at)
                elif word == "STAT":
                    at, sent, behind, cpu = rest.split()
                    self.stats[index].append(Stat(float(at), int(sent), float(behind), float(cpu)))

    def sent_between(self, start: float, end: float) -> tuple[float, float, float]:
        """(messages sent per second, worst lag behind schedule in s, CPU % of one core) in [start, end]."""
        sent = cpu = elapsed = behind = 0.0
        with self.lock:
            for stats in self.stats:
                inside = [s for s in stats if start <= s.at <= end]
                if len(inside) < 2:
                    continue
                sent += inside[-1].sent - inside[0].sent
                cpu += inside[-1].cpu - inside[0].cpu
                elapsed = max(elapsed, inside[-1].at - inside[0].at)
                behind = max(behind, *(s.behind for s in inside))
        if not elapsed:
            return 0.0, behind, 0.0
        return sent / elapsed, behind, cpu / elapsed * 100

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_senders(
    args: argparse.Namespace,
    probes: int,
    buses: Sequence[str],
    pythonpath: str,
    extra: Sequence[str] = (),
    count: int | None = None,
) -> Senders:
    """`count` (default `args.senders`) fake-probe processes sharing `probes` probes, process k publishing
    to buses[k % len(buses)]; `extra`: more flags of bench/fleet_probes.py."""
    count = args.senders if count is None else count
    log = (LOG_DIR / f"fleet-probes-{time.time_ns()}.log").open("w")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(PROBES_SCRIPT),
                f"--bus={buses[k % len(buses)]}",
                f"--probes={probes}",
                f"--profile={args.profile}",
                f"--containers={args.containers}",
                f"--interval={args.interval}",
                f"--senders={count}",
                f"--sender={k}",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "PYTHONPATH": pythonpath},
        )
        for k in range(count)
    ]
    senders = Senders(processes, stats=[[] for _ in processes])
    for k, process in enumerate(processes):
        assert process.stdout is not None
        threading.Thread(target=senders.read, args=(k, process.stdout), daemon=True).start()
    return senders


class Sampler(threading.Thread):
    """The app's CPU time and RSS, every second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, CPU seconds, RSS MiB)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), cpu_seconds(self.pid), rss_mib(self.pid)))
            self.done.wait(1.0)

    def cpu(self, start: float, end: float, window: float) -> float | None:
        """Median CPU % of one core over `window`-long stretches of [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        figures = []
        i = 0
        for j in range(1, len(inside)):
            if inside[j][0] - inside[i][0] >= window:
                figures.append((inside[j][1] - inside[i][1]) / (inside[j][0] - inside[i][0]) * 100)
                i = j
        return statistics.median(figures) if figures else None

    def rss(self) -> float:
        return max((s[2] for s in self.samples), default=0.0)


@dataclass
class Requests:
    """What the polling client and the websocket saw in the active phase."""

    latency: dict[str, list[float]] = field(default_factory=lambda: {"containers": [], "hosts": []})
    errors: int = 0
    api_seen: dict[str, float] = field(default_factory=dict)
    ws_seen: dict[str, float] = field(default_factory=dict)
    ws_error: str = ""


def get(url: str, timeout: float, token: str | None = None) -> bytes:
    """GET `url`; with `token`, as its holder (a tenant's user token, for the multi-tenant service)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def poll(
    app: App,
    timeout: float,
    until: Callable[[], bool],
    requests: Requests,
    measuring: Callable[[], bool],
    token: str | None = None,
) -> None:
    """Ask for the containers view (at most 10/s) and the hosts view (1/s) until `until()` (as the holder
    of `token`, when given)."""
    next_hosts = 0.0
    while not until():
        started = time.monotonic()
        views = ["containers", "hosts"] if started >= next_hosts else ["containers"]
        if "hosts" in views:
            next_hosts = started + 1.0
        for view in views:
            begin = time.monotonic()
            try:
                body = get(f"{app.url}/api/topology/{view}", timeout, token)
            except (OSError, urllib.error.URLError):
                if measuring():
                    requests.errors += 1
                continue
            end = time.monotonic()
            if measuring():
                requests.latency[view].append(end - begin)
            if view == "containers":
                for name in set(MARK.findall(body.decode(errors="replace"))):
                    requests.api_seen.setdefault(name, end)
        time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))


def watch(
    app: App, until: Callable[[], bool], requests: Requests, connect_timeout: float, token: str | None = None
) -> None:
    """Read the containers view's websocket until `until()`, noting when each marked name first shows (as
    the holder of `token`, when given)."""

    async def read() -> None:
        url = tornado.httpclient.HTTPRequest(
            f"ws://127.0.0.1:{app.http_port}/api/topology/containers/ws",
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
        ws = await asyncio.wait_for(tornado.websocket.websocket_connect(url, max_message_size=1 << 30), connect_timeout)
        try:
            while not until():
                try:
                    message = await asyncio.wait_for(ws.read_message(), 0.5)
                except TimeoutError:
                    continue
                if message is None:
                    requests.ws_error = "closed by the app"
                    return
                arrived = time.monotonic()
                text = message if isinstance(message, str) else message.decode(errors="replace")
                for name in set(MARK.findall(text)):
                    requests.ws_seen.setdefault(name, arrived)
        finally:
            ws.close()

    try:
        asyncio.run(read())
    except (OSError, TimeoutError, tornado.websocket.WebSocketError) as exc:
        requests.ws_error = f"{type(exc).__name__}: {exc}"


def hosts_in_view(app: App, timeout: float, token: str | None = None) -> int:
    try:
        view = json.loads(get(f"{app.url}/api/topology/hosts", timeout, token))
    except (OSError, urllib.error.URLError, ValueError):
        return -1
    return sum(1 for node_id in view.get("nodes", {}) if node_id.endswith(";<host>"))


def app_stats(app: App, timeout: float) -> dict[str, Any]:
    try:
        stats: dict[str, Any] = json.loads(get(f"{app.url}/api/stats", timeout))
        return stats
    except (OSError, urllib.error.URLError, ValueError):
        return {}


@dataclass
class Row:
    probes: int
    kind: str = ""
    nodes_per_probe: int = 0
    hosts_seen: int = 0
    cpu_quiet: float | None = None
    cpu_ws: float | None = None
    cpu_polled: float | None = None
    rss: float = 0.0
    containers: list[float] = field(default_factory=list)
    hosts: list[float] = field(default_factory=list)
    fresh_api: list[float] = field(default_factory=list)
    fresh_ws: list[float] = field(default_factory=list)
    marks_ws: int = 0
    marks_api: int = 0
    sent_rate: float = 0.0
    intended_rate: float = 0.0
    behind: float = 0.0
    received_rate: float | None = None
    #: Deltas the app refused in the measured time because a message before them was lost: the probe's
    #: changes are not seen until its next full report, which the app asks for (at most every 5 s).
    missed_deltas: int | None = None
    sender_cpu: float = 0.0
    errors: int = 0
    note: str = ""


#: The app's limits on what one source address may hold, raised where the checkout has them: every fake
#: probe connects from 127.0.0.1, which a real fleet's probes never share, and a fleet of 1,000 hosts is
#: past the default total.
LIMITS = {
    "--max-probes-per-source": "100000",
    "--max-nodes-per-source": "100000000",
    "--max-nodes": "100000000",
}


def app_limits(checkout: str) -> list[str]:
    """The LIMITS options the checkout's app knows (its `--help`): the design before them had no limits."""
    usage = subprocess.run(
        [sys.executable, "-m", "scope_app", "--help"], capture_output=True, text=True, cwd=checkout, check=True
    ).stdout
    return [f"{name}={value}" for name, value in LIMITS.items() if name in usage]


def measure(args: argparse.Namespace, probes: int, pythonpath: str) -> Row:
    row = Row(probes, intended_rate=probes / args.interval)
    app = App(window=args.window, extra=args.app_options)
    senders: Senders | None = None
    sampler = Sampler(app.pid)
    sampler.start()
    try:
        senders = start_senders(args, probes, [app.bus], pythonpath)
        deadline = time.monotonic() + 60 + probes * 0.2
        while len(senders.ready) < args.senders:
            if time.monotonic() > deadline or any(p.poll() is not None for p in senders.processes):
                raise RuntimeError(f"the fake probes did not start: see {LOG_DIR}/fleet-probes-*.log")
            time.sleep(0.2)
        kind, _, nodes = senders.ready[0].split()
        row.kind, row.nodes_per_probe = kind, int(nodes)
        print(f"N={probes}: {kind} messages, {nodes} nodes per probe; warming up", file=sys.stderr, flush=True)
        deadline = time.monotonic() + args.warmup + probes * 0.05
        while time.monotonic() < deadline:
            row.hosts_seen = hosts_in_view(app, args.timeout)
            if row.hosts_seen >= probes:
                break
            time.sleep(args.interval)
        else:
            row.note = f"warm-up: {max(row.hosts_seen, 0)} of {probes} hosts in the view after {args.warmup:.0f} s"
        time.sleep(args.interval)

        third: float = args.seconds / 3
        quiet_start = time.monotonic()
        stats_start = app_stats(app, args.timeout)
        time.sleep(third)
        requests = Requests()
        ws_start, ws_end, ws_marks = phase(
            senders, third, requests.ws_seen, lambda until, _: watch(app, until, requests, third)
        )
        api_start, api_end, api_marks = phase(
            senders,
            third,
            requests.api_seen,
            lambda until, measuring: poll(app, args.timeout, until, requests, measuring),
        )
        stats_end = app_stats(app, args.timeout)
        stats_time = time.monotonic()

        row.cpu_quiet = sampler.cpu(quiet_start, ws_start, args.interval)
        row.cpu_ws = sampler.cpu(ws_start, ws_end, args.interval)
        row.cpu_polled = sampler.cpu(api_start, api_end, args.interval)
        row.rss = sampler.rss()
        row.containers = requests.latency["containers"]
        row.hosts = requests.latency["hosts"]
        row.errors = requests.errors
        row.marks_ws, row.marks_api = len(ws_marks), len(api_marks)
        row.fresh_ws = [requests.ws_seen[n] - t for n, t in ws_marks.items() if n in requests.ws_seen]
        row.fresh_api = [requests.api_seen[n] - t for n, t in api_marks.items() if n in requests.api_seen]
        if requests.ws_error:
            row.note = (row.note + "; " if row.note else "") + f"websocket: {requests.ws_error}"
        row.sent_rate, row.behind, row.sender_cpu = senders.sent_between(quiet_start, api_end)
        if "reports_received" in stats_start and "reports_received" in stats_end:
            received = stats_end["reports_received"] - stats_start["reports_received"]
            row.received_rate = received / (stats_time - quiet_start)
        if "reports_dropped" in stats_start and "reports_dropped" in stats_end:
            missed = stats_end["reports_dropped"].get("missed_delta", 0)
            row.missed_deltas = missed - stats_start["reports_dropped"].get("missed_delta", 0)
        if app.process.poll() is not None:
            row.note = (row.note + "; " if row.note else "") + f"the app exited ({app.process.returncode})"
    finally:
        sampler.done.set()
        if senders is not None:
            senders.stop()
        app.terminate()
    return row


#: How long past the end of a phase its marked changes are waited for.
GRACE = 10.0


def phase(
    senders: Senders,
    seconds: float,
    seen: dict[str, float],
    run: Callable[[Callable[[], bool], Callable[[], bool]], None],
) -> tuple[float, float, dict[str, float]]:
    """Run `run(until, measuring)` in a thread for `seconds`, and past them (up to GRACE) until every
    marked change sent meanwhile is in `seen`. Returns (start, end, {mark: sent at}) of the phase."""
    start = time.monotonic()
    end = start + seconds

    def sent() -> dict[str, float]:
        with senders.lock:
            return {name: at for name, at in senders.marks.items() if start <= at <= end}

    def until() -> bool:
        now = time.monotonic()
        return now >= end + GRACE or (now >= end and all(name in seen for name in sent()))

    thread = threading.Thread(target=run, args=(until, lambda: time.monotonic() < end), daemon=True)
    thread.start()
    thread.join(timeout=seconds + GRACE + 30)
    time.sleep(max(0.0, end - time.monotonic()))  # a watcher that gave up early still leaves a whole phase
    return start, end, sent()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


def latency(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{fmt_s(statistics.median(values))}/{fmt_s(percentile(values, 0.9))}"


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def fresh(values: list[float], marks: int) -> str:
    if not values:
        return f"— (0/{marks})"
    seen = "" if len(values) == marks else f" ({len(values)}/{marks})"
    return f"{statistics.median(values):.2f}s{seen}"


def table(rows: list[Row]) -> Iterator[str]:
    headers = [
        "N",
        "msgs",
        "CPU% quiet",
        "CPU% ws",
        "CPU% polled",
        "RSS MiB",
        "containers med/p90",
        "hosts med/p90",
        "fresh API",
        "fresh WS",
        "sent/s (want)",
        "recv/s",
        "lag",
        "timeouts",
        "sender CPU%",
    ]
    lines = [headers]
    for r in rows:
        lines.append(
            [
                str(r.probes),
                r.kind,
                "—" if r.cpu_quiet is None else f"{r.cpu_quiet:.0f}",
                "—" if r.cpu_ws is None else f"{r.cpu_ws:.0f}",
                "—" if r.cpu_polled is None else f"{r.cpu_polled:.0f}",
                f"{r.rss:.0f}",
                latency(r.containers),
                latency(r.hosts),
                fresh(r.fresh_api, r.marks_api),
                fresh(r.fresh_ws, r.marks_ws),
                f"{r.sent_rate:.1f} ({r.intended_rate:.1f})",
                "—" if r.received_rate is None else f"{r.received_rate:.1f}",
                f"{r.behind:.1f}s",
                str(r.errors),
                f"{r.sender_cpu:.0f}",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    for line in lines:
        yield "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
    for r in rows:
        if r.note:
            yield f"N={r.probes}: {r.note}"
        if r.missed_deltas:
            yield (
                f"N={r.probes}: {r.missed_deltas} deltas refused after a lost message (until the full report the app "
                "asks for arrives, that probe's changes are not seen: marks sent meanwhile count as not seen)"
            )
        if r.probes in GO:
            cpu, rss, view, seen = GO[r.probes]
            yield (
                f"N={r.probes}: Go Scope 1.13 here: CPU {cpu:g} %, RSS {rss} MiB, "
                f"containers view {fmt_s(view)}, fresh {seen:g} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", default="10,100", help="comma-separated fleet sizes")
    parser.add_argument("--seconds", type=float, default=90.0, help="measured time per fleet size (three phases)")
    parser.add_argument("--checkout", type=Path, default=REPO, help="the checkout whose app and wire format run")
    parser.add_argument("--profile", choices=["real", "synthetic"], default="real")
    parser.add_argument("--containers", type=int, default=50, help="containers per probe")
    parser.add_argument("--interval", type=float, default=3.0, help="each probe publishes this often")
    parser.add_argument("--senders", type=int, default=1, help="fake-probe processes")
    parser.add_argument("--timeout", type=float, default=5.0, help="bound on each API request")
    parser.add_argument("--warmup", type=float, default=60.0, help="longest wait for all hosts in the view")
    parser.add_argument("--window", default="15s", help="the app's --window")
    args = parser.parse_args()
    checkout = str(args.checkout.resolve())
    # The app subprocess (tests.fixtures.scope.App) inherits both: `python -m scope_app` puts the working
    # directory first on its path, then PYTHONPATH, so it runs the checkout's code, not this tree's.
    os.environ["PYTHONPATH"] = checkout
    os.chdir(checkout)
    rev = subprocess.run(["git", "-C", checkout, "log", "--oneline", "-1"], capture_output=True, text=True).stdout
    args.app_options = app_limits(checkout)
    print(
        f"checkout {checkout}: {rev.strip()}; profile {args.profile}, {args.containers} containers per probe; "
        f"app options {' '.join(args.app_options) or '(none)'}"
    )
    rows = []
    try:
        for probes in (int(n) for n in args.probes.split(",")):
            rows.append(measure(args, probes, checkout))
            print("\n".join(table(rows[-1:])), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
