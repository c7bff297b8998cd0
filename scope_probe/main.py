"""The probe process: gathers reports from every reporter and publishes them to every app.

Two clocks drive it: the spy tick (default 1 s) samples the reporters that keep metric history (host,
containers), the publish tick (default 3 s) gathers the rest (processes, connections) and sends the
merged result; gathering those every spy tick would throw two reports in three away. A reporter that
sees a change between ticks (a container started) wakes the loop, which then refreshes that reporter
alone and publishes at once.

What goes out is a full report now and then and, in between, a delta: the nodes that changed since the
previous message (scope_common.delta). An app that subscribes (new, restarted, reconnected) gets a
full report with the next publish; one that missed a message waits for the next periodic full report.

Every thread (discovery, each reporter's, the control channel's) and the main loop itself run under
the context's Supervisor: an unexpected exception is logged (rate-limited), counted in /metrics, and
the thread starts again after a short back-off, rather than leaving a probe that runs but reports
nothing new.

A publish on a wake carries what the event changed and nothing else: the other reporters' newer
reports, and the woken reporter's nodes whose only news is new metric samples or a value that follows
the clock (an uptime), wait for the next publish tick. On a host where containers come and go all the
time, every wake would otherwise re-send every container. Wakes are published at most every WAKE_GAP.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence

import zmq

from scope_common import __version__, wire
from scope_common.bus import DEFAULT_BUS_PORT
from scope_common.config import env_flag, on_off, parse_duration, split_host_port, switch_flag
from scope_common.delta import DeltaEncoder
from scope_common.report import CONTAINER_STATE_HUMAN, UPTIME, Node, Report, merge_reports
from scope_probe.addresses import AddressScopes
from scope_probe.channel import ControlChannel, control_channel
from scope_probe.claims import AddressClaims
from scope_probe.conntrack import ConntrackReporter
from scope_probe.docker import DockerReporter
from scope_probe.endpoint import EndpointReporter
from scope_probe.failover import Failover
from scope_probe.host import HostReporter
from scope_probe.metrics import DEFAULT_METRICS_PORT, ProbeMetrics, stop_serving
from scope_probe.peers import WEAVE_DNS_NAME, PeerResolver, parse_peer
from scope_probe.process import ProcessReporter
from scope_probe.publisher import Publisher
from scope_probe.reporter import ProbeContext, Reporter
from scope_probe.resolver import ReverseResolver
from scope_probe.service import ServiceCredentials
from scope_probe.tracer import ConnectionTracer, TracerUnavailable

log = logging.getLogger("scope.probe")

#: Least time between two publishes on wakes. The first event after a quiet spell goes out at once;
#: a busy engine (other people's test containers here: 4 events a second) is sent at most this often,
#: all its events together, rather than a whole report merged and encoded for each.
WAKE_GAP = 1.0
#: After a control, changes of the reporter it affects are published as they come, gap or not, for this
#: long: someone is looking at the map for the effect, and a busy engine's other events must not hold it up.
EXPEDITE_SECONDS = 2.0
#: Latest values that move with the clock rather than with any event: "Up 3 minutes" and uptimes.
CLOCK_KEYS = frozenset({UPTIME, CONTAINER_STATE_HUMAN})
#: The cyclic garbage collector's first threshold (allocations between young collections; Python's is
#: 700). A report of thousands of lingering connections allocates hundreds of thousands of objects, few
#: of them in cycles, and the default made the collector cost more than building the report (half the
#: probe's CPU at 1,000 new connections a second).
GC_THRESHOLD = 50_000


class Probe:
    """Runs the reporters and the publisher until `stop()`."""

    def __init__(
        self,
        ctx: ProbeContext,
        reporters: Sequence[Reporter],
        publisher: Publisher,
        resolver: PeerResolver,
        *,
        spy_interval: float = 1.0,
        publish_interval: float = 3.0,
        resolve_interval: float = 10.0,
        full_report_interval: float = 60.0,
        wake_gap: float = WAKE_GAP,
        cleanups: Sequence[Callable[[], None]] = (),
        channel: ControlChannel | None = None,
        metrics: ProbeMetrics | None = None,
        failover: Failover | None = None,
    ) -> None:
        """`failover`: publish to one of the apps found at a time, as it chooses (else to every one)."""
        self.ctx = ctx
        self._reporters = list(reporters)
        self._publisher = publisher
        self._resolver = resolver
        self._spy_interval = spy_interval
        self._publish_interval = publish_interval
        self._resolve_interval = resolve_interval
        self._cleanups = list(cleanups)
        #: The control channel to the apps; None with --no-controls.
        self.channel = channel
        self._latest: dict[str, Report] = {}
        #: The reports the last message was made of, by reporter.
        self._sent: dict[str, Report] = {}
        self._woken: set[str] = set()
        #: Reporters whose wakes skip the wake gap, until when (see `expedite`).
        self._expedited: dict[str, float] = {}
        self._urgent = frozenset(r.name for r in self._reporters if r.wakes_urgently)
        self._wake_lock = threading.Lock()
        self._wake_event = threading.Event()
        self._stopping = threading.Event()
        self._apps: set[str] | None = None
        self._failover = failover
        #: The apps the last resolution found, and those the publisher and the channel were last given.
        self._found: set[str] = set()
        self._targets: set[str] | None = None
        # Full reports are timed here rather than counted by the encoder: a busy Docker engine wakes
        # the probe many times a minute, and those small messages must not bring the next full one forward.
        self._encoder = DeltaEncoder(ctx.probe_id, ctx.host_id, __version__, full_every=sys.maxsize)
        self._full_report_interval = full_report_interval
        self._wake_gap = wake_gap
        self._next_full = 0.0
        self.metrics = metrics or ProbeMetrics()
        self.metrics.watch(publisher, ctx.supervisor, channel, failover)

    def wake(self, reporter: str) -> None:
        """Ask for `reporter` to be refreshed and a report to be published now. Any thread."""
        with self._wake_lock:
            self._woken.add(reporter)
        self._wake_event.set()

    def expedite(self, reporter: str) -> None:
        """For EXPEDITE_SECONDS, publish `reporter`'s wakes at once, within the wake gap or not: a control
        changed what it reports, and the reporter wakes the probe when it sees the change (the Docker
        mirror, once it has the engine's event). Any thread."""
        with self._wake_lock:
            self._expedited[reporter] = time.monotonic() + EXPEDITE_SECONDS
        self._wake_event.set()  # it may have woken already, and be waiting for the gap

    def ask_full_report(self) -> None:
        """Make the next report a full one (at the next publish, within the publish interval): an app
        missed a delta, and its picture of this host is incomplete until then. Any thread."""
        self._next_full = 0.0

    def _wake_due(self, next_wake: float) -> float:
        """When the woken reporters are to be published: at `next_wake`, or now when one of them is
        expedited or wakes urgently; never when none is woken. Holds `_wake_lock`."""
        if not self._woken:
            return math.inf
        now = time.monotonic()
        if self._urgent & self._woken:
            return now
        for name, until in list(self._expedited.items()):
            if until <= now:
                del self._expedited[name]
            elif name in self._woken:
                return now
        return next_wake

    def stop(self) -> None:
        self._stopping.set()
        self._wake_event.set()

    def run(self) -> None:
        for reporter in self._reporters:
            reporter.start(self.wake)
        self.ctx.supervisor.start_thread("discovery", self._discover, self._stopping)
        if self.channel is not None:
            self.channel.start(self.expedite, self.ask_full_report, self._app_news if self._failover else None)
        try:
            # The publisher: gathering, encoding and sending, on the main thread.
            self.ctx.supervisor.keep("publisher", self._loop, self._stopping)
        finally:
            if self.channel is not None:
                self.channel.stop()
            for reporter in self._reporters:
                reporter.stop()
            for cleanup in self._cleanups:
                cleanup()
            self._publisher.close()

    def _loop(self) -> None:
        next_spy = next_publish = next_wake = time.monotonic()
        while not self._stopping.is_set():
            self._apply_discovery()
            now = time.monotonic()
            if now >= next_spy:
                self._gather([r for r in self._reporters if r.samples_every_tick])
                next_spy = _next_tick(next_spy, self._spy_interval, now)
            if now >= next_publish:
                self._gather([r for r in self._reporters if not r.samples_every_tick])
                self._publish(dict(self._latest))
                next_publish = _next_tick(next_publish, self._publish_interval, now)
            with self._wake_lock:
                due = min(next_spy, next_publish, self._wake_due(next_wake))
            if self._wake_event.wait(max(0.0, due - time.monotonic())):
                self._wake_event.clear()
            with self._wake_lock:
                wake_due = self._wake_due(next_wake)
            if time.monotonic() < wake_due or self._stopping.is_set():
                continue
            with self._wake_lock:
                woken, self._woken = self._woken, set()
            if woken:
                self._gather([r for r in self._reporters if r.name in woken])
                reports = dict(self._sent)
                keeps_gone = {r.name for r in self._reporters if r.removals_follow_clock}
                for name in woken & self._latest.keys():
                    reports[name] = events_only(self._latest[name], self._sent.get(name), name in keeps_gone)
                self._publish(reports)
                next_wake = time.monotonic() + self._wake_gap

    def _gather(self, reporters: Sequence[Reporter]) -> None:
        now = time.time()
        failures = self.metrics.reporter_failures
        for reporter in reporters:
            started = time.perf_counter()
            try:
                self._latest[reporter.name] = reporter.report(now)
            except Exception:
                # One broken source must not silence the others; its last good report stands.
                failures[reporter.name] = failures.get(reporter.name, 0) + 1
                if failures[reporter.name] in (1, 10, 100) or failures[reporter.name] % 1000 == 0:
                    log.exception("reporter %s failed (%d times)", reporter.name, failures[reporter.name])
            self.metrics.reporter_seconds.labels(reporter.name).observe(time.perf_counter() - started)

    def _publish(self, reports: dict[str, Report]) -> None:
        """Send the merge of `reports` (by reporter name) as a full report or a delta."""
        if self._publisher.new_subscribers():
            self._encoder.request_full()
            if self._failover is not None and self.channel is None:
                # Without a control channel (--no-controls), an app taking the reports is all there is
                # to know it is alive; with one, its heartbeats say (an app killed before they did
                # has subscribed all the same, and would then never be left).
                for app in self._targets or ():
                    self._failover.answered(app)
        elif time.monotonic() >= self._next_full:
            self._encoder.request_full()
        report = merge_reports(reports.values())
        if self.channel is not None:
            report = self.channel.controls.decorate(report)
        try:
            message = self._encoder.encode(report)
        except wire.EncodeError as exc:
            self.metrics.publish_errors["encode"] = self.metrics.publish_errors.get("encode", 0) + 1
            log.error("report not sent: %s", exc)
            return
        self._sent = reports
        full = self._encoder.last_was_full
        if full:
            self._next_full = time.monotonic() + self._full_report_interval
        if self._publisher.send(message):
            self.metrics.report_bytes.labels("full" if full else "delta").observe(len(message))

    def _discover(self) -> None:
        """Re-resolves the apps forever; the main loop applies what it finds (it owns the socket)."""
        while not self._stopping.is_set():
            apps = self._resolver.resolve()
            with self._wake_lock:
                self._apps = apps
            self._wake_event.set()
            self._stopping.wait(self._resolve_interval)

    def _apply_discovery(self) -> None:
        """Give the publisher and the channel the apps found (or, with failover, the one chosen now)."""
        with self._wake_lock:
            apps, self._apps = self._apps, None
        if apps is not None:
            self._found = apps
        if self._failover is not None:
            apps = self._failover.choose(self._found)
            if apps == self._targets:
                return
        elif apps is None:
            return
        self._targets = apps
        self._publisher.set_apps(apps)
        if self.channel is not None:
            self.channel.set_apps(apps)

    def _app_news(self, app: str, alive: bool) -> None:
        """The control channel heard from `app`, or stopped hearing (its thread): tell the failover, and
        wake the main loop to move on at once."""
        assert self._failover is not None
        if alive:
            self._failover.answered(app)
        else:
            self._failover.silent(app)
        self._wake_event.set()


def events_only(report: Report, sent: Report | None, keep_gone: bool = False) -> Report:
    """`report` with each node that was in `sent` as it was there, unless more than its metrics and
    clock-following values changed (`keep_gone`: and with the nodes of `sent` it no longer has): what a
    publish on a wake sends, so that its delta holds the nodes the event changed, not every node that
    has a new sample or whose time ran out."""
    if sent is None:
        return report
    result = Report()
    for topology in report.topologies.values():
        result.topology(topology.name).templates = topology.templates
        sent_nodes = sent.nodes(topology.name)
        for node in topology.nodes.values():
            previous = sent_nodes.get(node.id)
            result.add(previous if previous is not None and _same_facts(node, previous) else node)
    if keep_gone:
        for topology in sent.topologies.values():
            kept = result.nodes(topology.name)
            for node in topology.nodes.values():
                if node.id not in kept:
                    result.add(node)
    return result


def _same_facts(node: Node, previous: Node) -> bool:
    return (
        node.sets == previous.sets
        and node.adjacency == previous.adjacency
        and node.edges == previous.edges
        and node.parents == previous.parents
        and _facts(node) == _facts(previous)
    )


def _facts(node: Node) -> dict[str, str]:
    return {key: value for key, (_, value) in node.latest.items() if key not in CLOCK_KEYS}


def _next_tick(previous: float, interval: float, now: float) -> float:
    """The next tick after `now` on the grid of `interval`: a slow round skips ticks, never bunches."""
    missed = max(0, int((now - previous) // interval))
    return previous + (missed + 1) * interval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scope probe", description="Gather this host's processes, connections and containers."
    )
    add_probe_flags(parser)
    add_service_flags(parser)
    return parser


def add_service_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of a probe run alone for the multi-tenant service (not of `scope`, which runs its own app)."""
    group = parser.add_argument_group("service (a probe of `scope app --multitenant`)")
    env_flag(
        group,
        "--service-token",
        default="",
        help="publish to the service only, as the tenant of this probe token (prefer the environment: "
        "a command line is visible in ps)",
    )
    group.add_argument(
        "--service-host",
        action="append",
        default=None,
        help="the service's bus address, host[:port]; several (the flag again, or a comma list; a name with "
        "several A records counts as several): the probe publishes to one at a time and moves to another when "
        "its own goes away (env SCOPE_SERVICE_HOST, a comma list)",
    )
    env_flag(group, "--service-key", default="", help="the service's public key to pin (service_key, 64 hex digits)")


def add_probe_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "peers",
        nargs="*",
        help="apps to publish to: host, ip, host:port or ip:port (default port 4030); env SCOPE_PEERS, space-separated",
    )
    group = parser.add_argument_group("probe")
    env_flag(group, "--hostname", default=socket.gethostname(), help="name of this host in the map")
    env_flag(group, "--spy-interval", default="1s", type=parse_duration, help="how often to gather")
    env_flag(group, "--publish-interval", default="3s", type=parse_duration, help="how often to publish")
    env_flag(group, "--resolve-interval", default="10s", type=parse_duration, help="how often to look apps up")
    env_flag(
        group,
        "--publish-to",
        default="all",
        type=_publish_to,
        help="all: every app found; one: one at a time, moving to another when it goes away (apps that are "
        "replicas of one another, `scope app --store`)",
    )
    env_flag(
        group,
        "--full-report-interval",
        default="60s",
        type=parse_duration,
        help="how often to publish a full report rather than what changed (an app that missed a delta asks for "
        "one over the control channel; without it, with --no-controls, it waits this long)",
    )
    env_flag(
        group,
        "--weave-dns-name",
        default=WEAVE_DNS_NAME,
        help="DNS name whose A records are apps; empty: off",
    )
    env_flag(group, "--weave-port", default=str(DEFAULT_BUS_PORT), type=int, help="bus port of apps found in DNS")
    env_flag(
        group,
        "--weave-dns-server",
        default="",
        help="DNS server for that name, ip[:port]; empty: the system's",
    )
    env_flag(group, "--proc-root", default="/proc", help="the host's /proc")
    env_flag(group, "--docker-url", default="unix:///var/run/docker.sock", help="the Docker engine's API")
    env_flag(group, "--cgroup-root", default="/sys/fs/cgroup", help="the host's cgroup file system")
    env_flag(group, "--conntrack", default="on", type=on_off, help="follow conntrack for short-lived connections")
    env_flag(group, "--conntrack-linger", default="15s", type=parse_duration, help="keep ended connections this long")
    env_flag(
        group,
        "--conn-tracer",
        default="auto",
        type=_tracer_mode,
        help="see connections as they open with the kernel's tracepoint: auto (when it can), tracepoint (must), off",
    )
    env_flag(group, "--reverse-dns", default="on", type=on_off, help="name remote addresses by reverse DNS")
    switch_flag(group, "--no-controls", help="offer and accept no control at all (stop, exec, logs...)")
    env_flag(
        group,
        "--metrics-listen",
        default="",
        type=_metrics_address,
        help=f"serve /metrics (Prometheus) at host:port, e.g. 127.0.0.1:{DEFAULT_METRICS_PORT}; empty: off",
    )
    env_flag(group, "--log-level", default="info", help="debug, info, warning or error")


def _tracer_mode(text: str) -> str:
    mode = text.strip().lower()
    if mode not in ("auto", "tracepoint", "off"):
        raise argparse.ArgumentTypeError(f"invalid tracer mode {text!r} (use auto, tracepoint or off)")
    return mode


def _publish_to(text: str) -> str:
    mode = text.strip().lower()
    if mode not in ("all", "one"):
        raise argparse.ArgumentTypeError(f"invalid --publish-to {text!r} (use all or one)")
    return mode


def service_hosts(flags: list[str] | None) -> list[str]:
    """The service addresses of every --service-host (each a comma list), or of SCOPE_SERVICE_HOST."""
    given = flags if flags is not None else [os.environ.get("SCOPE_SERVICE_HOST", "")]
    return [host.strip() for flag in given for host in flag.split(",") if host.strip()]


def _metrics_address(text: str) -> str:
    """The flag's text, once known to be an address (kept as text, so `scope` passes it on as given)."""
    if text.strip():
        try:
            split_host_port(text, DEFAULT_METRICS_PORT)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"invalid address {text!r}: {exc}") from None
    return text.strip()


def probe_from_args(args: argparse.Namespace, metrics: ProbeMetrics | None = None) -> Probe:
    peers = [parse_peer(p) for p in (args.peers or os.environ.get("SCOPE_PEERS", "").split())]
    nameserver, ns_port = split_host_port(args.weave_dns_server, 53) if args.weave_dns_server else ("", 53)
    service = None
    one_app = args.publish_to == "one"
    if getattr(args, "service_token", ""):
        # The service alone: a tenant's reports go nowhere else, not even to a local app or Weave DNS.
        hosts = service_hosts(args.service_host)
        if not hosts:
            raise ValueError("--service-host is needed with --service-token: the service's host[:port]")
        service = ServiceCredentials.from_flags(args.service_token, args.service_key)
        peers = [parse_peer(host) for host in hosts]
        args.weave_dns_name = ""
        # The service's replicas share what each ingests: one of them at a time is enough.
        one_app = True
    ctx = ProbeContext(
        host_id=args.hostname,
        probe_id=secrets.token_hex(8),
        proc_root=args.proc_root,
        cgroup_root=args.cgroup_root,
        docker_url=args.docker_url,
    )
    addresses = AddressScopes(ctx.host_id)
    names = ReverseResolver(supervisor=ctx.supervisor) if args.reverse_dns else None
    claims = AddressClaims()
    reporters: list[Reporter] = [
        HostReporter(ctx, addresses),
        ProcessReporter(ctx),
        EndpointReporter(ctx, addresses, resolver=names),
        DockerReporter(ctx, addresses, claims=claims),
    ]
    if args.conntrack:
        reporters.append(ConntrackReporter(ctx, addresses, linger=args.conntrack_linger, resolver=names, claims=claims))
    if args.conn_tracer != "off":
        tracer = ConnectionTracer(ctx, addresses, linger=args.conntrack_linger)
        if args.conn_tracer == "tracepoint":
            try:
                tracer.open()
            except TracerUnavailable as exc:
                raise ValueError(f"--conn-tracer=tracepoint: {exc}") from None
        reporters.append(tracer)
    resolver = PeerResolver(
        peers,
        weave_name=args.weave_dns_name or None,
        weave_port=args.weave_port,
        nameserver=nameserver or None,
        nameserver_port=ns_port,
    )
    return Probe(
        ctx,
        reporters,
        Publisher(zmq.Context.instance(), service),
        resolver,
        spy_interval=args.spy_interval,
        publish_interval=args.publish_interval,
        resolve_interval=args.resolve_interval,
        full_report_interval=args.full_report_interval,
        cleanups=[names.stop] if names is not None else [],
        channel=None if args.no_controls else control_channel(ctx, service),
        metrics=metrics,
        failover=Failover() if one_app else None,
    )


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    metrics = ProbeMetrics()
    server = None
    if args.metrics_listen:
        # Before anything else starts: a port that cannot be had stops the probe with nothing to undo.
        host, port = split_host_port(args.metrics_listen, DEFAULT_METRICS_PORT)
        try:
            server = metrics.serve(host or "0.0.0.0", port)
        except OSError as exc:
            log.error("cannot serve /metrics at %s: %s", args.metrics_listen, exc)
            return 2
        log.info("serving /metrics at %s", args.metrics_listen)
    try:
        try:
            probe = probe_from_args(args, metrics)
        except ValueError as exc:
            log.error("%s", exc)
            return 2
        log.info("probe starting, version %s, ID %s", __version__, probe.ctx.probe_id)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: probe.stop())
        probe.run()
    finally:
        if server is not None:
            stop_serving(server)
    log.info("probe exiting")
    return 0
