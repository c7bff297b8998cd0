"""Benchmark (issue 18): N fake probes spread over R app replicas sharing one Redis, next to the same
load on one app without Redis.

    python -m bench.replicas --probes 150 [--replicas 3] [--seconds 60] [--profile real|synthetic]
    python -m bench.replicas --probes 200 --tenants 20 [--replicas 3]    # the multi-tenant service

The fake probes are bench/fleet_probes.py's (one ZeroMQ PUB connection per probe, wire v2 deltas, a
full report every 10 messages), in R processes: process k's probes publish to replica k, so every
replica ingests a share and must learn the rest through Redis. Probe 0 (on replica 0) swaps in a marked
container every cycle. After a warm-up (every replica's hosts view shows all N hosts), two phases of
--seconds/2 each, both measured on the LAST replica (which ingests none of probe 0's messages itself):

- websocket: a websocket client watches its containers view; freshness is the time from the marked
  message leaving probe 0 to the name being in a websocket message of the other replica (through
  replica 0's bus, Redis, and the last replica's collector, renderer and feed);
- polled: one client asks it for the containers view (at most 10 times a second): the latencies.

Meanwhile: every replica's CPU (% of one core, median of `--interval`-long stretches) and max RSS;
Redis's CPU and `used_memory` (max); the fleet's ingest rate (messages the replicas' buses accepted
and wrote to Redis, per second, all replicas together) and what each replica applied per second
(its own share plus everyone else's). The baseline row is one app, no `--store`, all R sender processes
publishing to it. A rate shows nan where an app did not answer its /metrics in time (saturated). Figures
are noisy on a shared machine: run it more than once.

With `--tenants T`: the apps are `scope app --multitenant` (with `--store`: the registry in Redis too),
the T tenants added to the registry before they start, one state directory (the service's key pair)
for every replica, and the fake probes publish over CurveZMQ with their tenant's token, probe i as
tenant i modulo T. The views measured are tenant 0's (probe 0, which makes the marked changes, is
tenant 0's), read with its user token. A replica decodes only the tenants its users watch: with
`--watched W` (default 1), tenants 0..W-1 are watched, tenant t on replica R-1-t modulo R (tenant 0 on the
last), each on one replica only (a request of each every 10 s keeps it watched), and no other tenant
anywhere, so their messages are only relayed (`scope_app_reports_relayed_unapplied`). The warm-up waits
for each watched tenant's hosts on its replica (every tenant's, summed, on the one app without Redis,
which decodes everything).
Counts are read from the operator's /metrics (`--metrics-token`), which watches no tenant: the per-app
applied rate, what each left out by reason (`missed_delta` above all), the tenants each follows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.fleet import (
    REPO,
    Requests,
    Sampler,
    Senders,
    fresh,
    get,
    hosts_in_view,
    latency,
    phase,
    poll,
    start_senders,
    watch,
)
from scope_app.tenancy.registry import new_token, token_hash
from scope_app.tenancy.service import open_service
from scope_common.curve import probe_keys, service_keys
from tests.fixtures.redis import RedisServer
from tests.fixtures.scope import App

#: Per-source limits off: every fake probe connects from 127.0.0.1.
LIMITS = ["--max-probes-per-source=100000", "--max-nodes-per-source=100000000", "--max-nodes=100000000"]
#: A tenant's byte rate, out of the way: the bench measures the service's capacity, not its limits.
TENANT_BYTES_PER_SECOND = 64 * 1024 * 1024
#: The operator's token for /metrics of the multi-tenant apps.
METRICS_TOKEN = "bench-metrics-token"


@dataclass
class Tenants:
    """The tenants of a multi-tenant run: their tokens, and the state directory with the service's key
    pair that every replica is given (as an operator copies it)."""

    state: Path
    probe_tokens: list[str]
    user_tokens: list[str]
    service_key: str

    @classmethod
    def make(cls, count: int) -> Tenants:
        state = Path(tempfile.mkdtemp(prefix="scope-bench-replicas-"))
        probe_tokens = [new_token() for _ in range(count)]
        (state / "probe-tokens.json").write_text(json.dumps(probe_tokens))
        return cls(state, probe_tokens, [new_token() for _ in range(count)], service_keys(state).public)

    def register(self, store: str | None) -> None:
        """Add the tenants to the registry in `store` (Redis), or in the state directory (SQLite)."""
        service = open_service(self.state, store=store)
        for n, (probe_token, user_token) in enumerate(zip(self.probe_tokens, self.user_tokens, strict=True)):
            service.registry.add(f"tenant-{n}", token_hash(user_token), probe_keys(probe_token).public)

    def app_flags(self, probes: int) -> list[str]:
        return [
            "--multitenant",
            f"--state-dir={self.state}",
            f"--tenant-max-probes={-(-probes // len(self.probe_tokens))}",
            f"--tenant-max-bytes-per-second={TENANT_BYTES_PER_SECOND}",
        ]

    def sender_flags(self) -> list[str]:
        return [
            f"--service-tokens={self.state / 'probe-tokens.json'}",
            f"--service-key={self.service_key}",
            "--loopback-sources",  # the service caps a source's probes at 16 whatever the flags
        ]


@dataclass
class Row:
    name: str
    replicas: int
    probes: int
    hosts_seen: list[int] = field(default_factory=list)
    cpu: list[float | None] = field(default_factory=list)
    rss: list[float] = field(default_factory=list)
    redis_cpu: float | None = None
    redis_mib: float = 0.0
    ingest_rate: float = math.nan
    applied_rate: list[float] = field(default_factory=list)
    containers: list[float] = field(default_factory=list)
    fresh_ws: list[float] = field(default_factory=list)
    marks_ws: int = 0
    sent_rate: float = 0.0
    #: With --tenants: what each app's collectors and gate left out over the run, every tenant's, by reason.
    dropped: list[dict[str, int]] = field(default_factory=list)
    #: With Redis: each replica's messages never written for the others, failed store commands, joins,
    #: tenants followed at the end, messages relayed without being applied.
    link: list[list[float]] = field(default_factory=list)
    note: str = ""


def counter(app: App, name: str, token: str | None = None) -> float:
    """A counter of the app's /metrics (read as the holder of `token`, the operator's metrics token of the
    service, when given); NaN when the app does not answer in time (a saturated app, three tries), so that
    a rate computed from it says so rather than counting from zero."""
    for _ in range(3):
        with contextlib.suppress(OSError):
            text = get(f"{app.url}/metrics", 10.0, token).decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == name and not sample.labels:
                        return float(sample.value)
            return 0.0
    return math.nan


def dropped(app: App) -> dict[str, int]:
    """Messages the app left out so far (its gate's and its collectors' refusals), every tenant's, by reason."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        text = get(f"{app.url}/metrics", 10.0, METRICS_TOKEN).decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "scope_app_reports_dropped_total" and sample.value:
                    found[sample.labels["reason"]] += int(sample.value)
    return dict(found)


def hosts_seen(app: App, timeout: float, tokens: list[str] | None) -> int:
    """Hosts in the app's hosts view; with --tenants, in the views of the tenants of `tokens` together."""
    if tokens is None:
        return hosts_in_view(app, timeout)
    return sum(max(0, hosts_in_view(app, timeout, token)) for token in tokens)


def watched_tokens(args: argparse.Namespace, tenants: Tenants, replica: int, replicas: int) -> list[str]:
    """The user tokens of the tenants watched on replica `replica` of `replicas` (see --watched)."""
    return [
        token for t, token in enumerate(tenants.user_tokens[: args.watched]) if (replicas - 1 - t) % replicas == replica
    ]


class KeepWatching(threading.Thread):
    """A request of each watched tenant on its replica every 10 s, so that none is let go meanwhile."""

    def __init__(self, watching: list[tuple[App, list[str]]], timeout: float) -> None:
        super().__init__(daemon=True)
        self.watching = watching
        self.timeout = timeout
        self.done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.done.wait(10.0):
            for app, tokens in self.watching:
                hosts_seen(app, self.timeout, tokens)


def redis_cpu_seconds(server: RedisServer) -> float:
    with server.client() as client:
        info = client.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def measure(args: argparse.Namespace, store: RedisServer | None, tenants: Tenants | None = None) -> Row:
    count = args.replicas if store is not None else 1
    extra = [*LIMITS, *([f"--store={store.url}"] if store is not None else [])]
    if tenants is not None:
        tenants.register(store.url if store is not None else None)
        extra += tenants.app_flags(args.probes)
    token = tenants.user_tokens[0] if tenants is not None else None
    operator = METRICS_TOKEN if tenants is not None else None
    env = {"SCOPE_METRICS_TOKEN": METRICS_TOKEN} if tenants is not None else None
    apps = [App(window=args.window, extra=extra, env=env) for _ in range(count)]
    name = "replicas over Redis" if store is not None else "one app, no Redis"
    if tenants is not None:
        name += f", {len(tenants.user_tokens)} tenants"
    row = Row(name, count, args.probes)
    samplers = [Sampler(app.pid) for app in apps]
    for sampler in samplers:
        sampler.start()
    senders: Senders | None = None
    keep: KeepWatching | None = None
    try:
        senders = start_senders(
            args,
            args.probes,
            [app.bus for app in apps],
            str(REPO),
            extra=tenants.sender_flags() if tenants is not None else (),
            count=args.replicas,
        )
        warmup = args.warmup + args.probes * 0.1
        deadline = time.monotonic() + warmup
        # With tenants on replicas, each replica watches its share of the watched tenants (--watched); the
        # tenant of probe i is tenant i modulo T.
        watching: list[tuple[App, list[str] | None]] = [(app, None) for app in apps]
        expected = [args.probes] * len(apps)
        if tenants is not None:
            count = len(tenants.user_tokens)
            per_tenant = [len(range(t, args.probes, count)) for t in range(count)]
            if store is None:
                watching = [(apps[0], tenants.user_tokens)]
            else:
                watching = [(app, watched_tokens(args, tenants, k, len(apps))) for k, app in enumerate(apps)]
                expected = [
                    sum(per_tenant[tenants.user_tokens.index(t)] for t in tokens or []) for _, tokens in watching
                ]
        while time.monotonic() < deadline:
            row.hosts_seen = [hosts_seen(app, args.timeout, tokens) for app, tokens in watching]
            if all(seen >= want for seen, want in zip(row.hosts_seen, expected, strict=True)):
                break
            time.sleep(args.interval)
        else:
            row.note = f"warm-up: hosts seen {row.hosts_seen} of {expected} after {warmup:.0f} s"
        keep = KeepWatching([(app, tokens) for app, tokens in watching if tokens], args.timeout)
        print(f"{row.name}: warm, hosts seen {row.hosts_seen}", file=sys.stderr, flush=True)
        time.sleep(args.interval)

        watched = apps[-1]
        start = time.monotonic()
        published = [counter(app, "scope_app_replica_published_total", operator) for app in apps]
        received = counter(apps[0], "scope_app_reports_received_total", operator)
        applied_before = [counter(app, "scope_app_reports_applied_total", operator) for app in apps]
        redis_start = redis_cpu_seconds(store) if store is not None else 0.0
        memory = Sampling(store)
        half: float = args.seconds / 2
        requests = Requests()
        ws_start, _, ws_marks = phase(
            senders, half, requests.ws_seen, lambda until, _: watch(watched, until, requests, half, token)
        )
        phase(
            senders,
            half,
            requests.api_seen,
            lambda until, measuring: poll(watched, args.timeout, until, requests, measuring, token),
        )
        elapsed = time.monotonic() - start
        memory.stop()
        if store is not None:
            row.redis_cpu = (redis_cpu_seconds(store) - redis_start) / elapsed * 100
            row.redis_mib = memory.peak / (1 << 20)
            now_published = sum(counter(app, "scope_app_replica_published_total", operator) for app in apps)
            row.ingest_rate = (now_published - sum(published)) / elapsed
        row.applied_rate = [
            (counter(app, "scope_app_reports_applied_total", operator) - before) / elapsed
            for app, before in zip(apps, applied_before, strict=True)
        ]
        if store is None:
            # One app: what its bus accepted (single-tenant: received, dropped included, as before).
            row.ingest_rate = (
                row.applied_rate[0]
                if tenants is not None
                else (counter(apps[0], "scope_app_reports_received_total") - received) / elapsed
            )
        if tenants is not None:
            row.dropped = [dropped(app) for app in apps]
        if store is not None:
            row.link = [
                [
                    counter(app, name, operator)
                    for name in (
                        "scope_app_replica_publish_dropped_total",
                        "scope_app_replica_store_errors_total",
                        "scope_app_replica_joins_total",
                        "scope_app_replica_tenants_followed",
                        "scope_app_reports_relayed_unapplied_total",
                    )
                ]
                for app in apps
            ]
        row.cpu = [sampler.cpu(start, start + elapsed, args.interval) for sampler in samplers]
        row.rss = [sampler.rss() for sampler in samplers]
        row.containers = requests.latency["containers"]
        row.marks_ws = len(ws_marks)
        row.fresh_ws = [requests.ws_seen[n] - t for n, t in ws_marks.items() if n in requests.ws_seen]
        row.sent_rate, _, _ = senders.sent_between(ws_start, start + elapsed)
        if requests.ws_error:
            row.note = (row.note + "; " if row.note else "") + f"websocket: {requests.ws_error}"
        for app in apps:
            if app.process.poll() is not None:
                row.note = (row.note + "; " if row.note else "") + f"{app.url} exited ({app.process.returncode})"
    finally:
        if keep is not None:
            keep.done.set()
        for sampler in samplers:
            sampler.done.set()
        if senders is not None:
            senders.stop()
        for app in apps:
            app.terminate()
    return row


class Sampling(threading.Thread):
    """Redis's used_memory, every second: the peak."""

    def __init__(self, store: RedisServer | None) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.peak = 0
        self.done = threading.Event()
        if store is not None:
            self.start()

    def run(self) -> None:
        assert self.store is not None
        while not self.done.wait(1.0):
            self.peak = max(self.peak, self.store.used_memory())

    def stop(self) -> None:
        self.done.set()


def figures(values: list[float | None], unit: str = "") -> str:
    return "/".join("—" if v is None else f"{v:.0f}" for v in values) + unit


def report(rows: list[Row]) -> str:
    lines = []
    for r in rows:
        lines.append(
            f"{r.name}: {r.replicas} app(s), {r.probes} probes, sent {r.sent_rate:.1f}/s\n"
            f"  ingest (bus messages accepted, all apps) {r.ingest_rate:.1f}/s; applied per app "
            f"{figures(list(r.applied_rate), '/s')}\n"
            f"  app CPU% {figures(r.cpu)}  RSS MiB {figures(list(r.rss))}"
            + (
                ""
                if r.redis_cpu is None
                else f"  Redis CPU% {r.redis_cpu:.0f}  Redis used_memory {r.redis_mib:.1f} MiB"
            )
            + f"\n  containers view (last app) med/p90 {latency(r.containers)}; "
            f"change to websocket of the last app: median {fresh(r.fresh_ws, r.marks_ws)}"
            + (f", max {max(r.fresh_ws):.2f}s" if r.fresh_ws else "")
            + (f"\n  left out per app (whole run): {r.dropped}" if r.dropped else "")
            + (
                "\n  per replica (whole run): not written for the others "
                + figures([counts[0] for counts in r.link])
                + ", store errors "
                + figures([counts[1] for counts in r.link])
                + ", joins "
                + figures([counts[2] for counts in r.link])
                + ", tenants followed "
                + figures([counts[3] for counts in r.link])
                + ", relayed unapplied "
                + figures([counts[4] for counts in r.link])
                if r.link
                else ""
            )
            + (f"\n  note: {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--probes", type=int, default=150)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured time (two phases)")
    parser.add_argument("--profile", choices=["real", "synthetic"], default="real")
    parser.add_argument("--containers", type=int, default=10, help="containers per probe")
    parser.add_argument("--interval", type=float, default=3.0, help="each probe publishes this often")
    parser.add_argument("--timeout", type=float, default=5.0, help="bound on each API request")
    parser.add_argument("--warmup", type=float, default=90.0, help="longest wait for all hosts in every view")
    parser.add_argument("--window", default="15s", help="the apps' --window")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-app run")
    parser.add_argument("--tenants", type=int, default=0, help="run the multi-tenant service with this many tenants")
    parser.add_argument(
        "--watched", type=int, default=1, help="with --tenants: tenants watched, each on one replica (see above)"
    )
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(REPO)
    tenants = Tenants.make(args.tenants) if args.tenants > 0 else None
    rows = []
    store = RedisServer()
    try:
        rows.append(measure(args, store, tenants))
        print(report(rows[-1:]), file=sys.stderr, flush=True)
    finally:
        store.close()
    if not args.no_baseline:
        rows.append(measure(args, None, tenants))
    print(report(rows))
    if rows and rows[0].fresh_ws:
        print(f"freshness across replicas: median {statistics.median(rows[0].fresh_ws):.2f}s")


if __name__ == "__main__":
    main()
