"""Connections from the kernel the moment they open: the `sock:inet_sock_set_state` tracepoint.

/proc/<pid>/net/tcp only shows what is open when it is read, and conntrack does not follow traffic that
never leaves a network namespace (two containers sharing one, a host's loopback): a connection that
lasts milliseconds there is seen by neither. Every TCP state change passes through this tracepoint, in
every namespace at once, and tracefs hands its lines to any root process, no compiler or BPF needed.

The probe reads them from a tracefs instance of its own (`instances/scope-<pid>-<probe id>`), so that
another tracer on the host resetting the global buffer or its events does not blind it, and removes it
on exit (or, killed, the next probe does).
A kernel filter keeps only the lines used:
- `TCP_CLOSE -> TCP_SYN_SENT`: connect() in the client's own context: its pid, the destination.
- `TCP_SYN_SENT -> TCP_ESTABLISHED`: the connection, with the client's 4-tuple. On loopback and veth
  pairs it runs in the client's context too (the handshake completes inside connect()); where it ran
  in an interrupt (the SYN-ACK of a remote server arriving), whoever was running is named, so the pid
  is taken from the SYN_SENT line instead.
- `TCP_ESTABLISHED -> *`: either end closing; the connection then lingers like conntrack's flows.

A connection belongs to the process that opened it or, once that has exited (a `wget` in a shell loop
lives for milliseconds), to its nearest living ancestor in the same network namespace: the one the map
can draw. One with none left (its container removed, its address maybe another's by now) is dropped.
Fork events from the same instance tell a gone process's parent. The server end is the owner of the
listening socket on the destination port in the client's namespace, when the destination is the
client's own (loopback, or its own address); elsewhere it is left to the address, as conntrack does.

A new connection wakes the probe (at most every MIN_WAKE_SECONDS), which publishes at once: the edge is
on the map within a second instead of at the next report.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import ipaddress
import logging
import os
import re
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from scope_common import ids
from scope_common.report import CONTAINER, ENDPOINT, HOST_NODE_ID, PID, PROCESS, EdgeMetadata, Node, Report
from scope_probe.addresses import AddressScopes, parse_ip
from scope_probe.cgroup import container_of_pid
from scope_probe.process import parse_stat
from scope_probe.reporter import ProbeContext, Reporter, Wake

log = logging.getLogger(__name__)

#: `latest` key on endpoints the tracer saw connect.
TRACED = "traced"
#: Where tracefs is mounted by default, and debugfs (which carries it as `tracing/`) when that fails.
TRACEFS_MOUNT = "/sys/kernel/tracing"
DEBUGFS_MOUNT = "/sys/kernel/debug"
EVENT = "sock/inet_sock_set_state"
FORK_EVENT = "sched/sched_process_fork"
#: TCP only; the lines used (see the module's docstring). States: 1 ESTABLISHED, 2 SYN_SENT.
EVENT_FILTER = "protocol == 6 && (oldstate == 1 || oldstate == 2 || newstate == 2)"
#: Per CPU; a burst of thousands of connections fits while the reader catches up.
BUFFER_KB = 2048
LINGER_SECONDS = 15.0
MAX_CONNECTIONS = 50_000
#: Each wake publishes what changed, which costs the probe a pass over its whole report: on a host
#: with new connections all the time, one every quarter of a second at most.
MIN_WAKE_SECONDS = 0.25
#: How long what was learnt of a pid (its ancestors) or a port's listener is trusted.
PID_CACHE_SECONDS = 2.0
LISTENER_CACHE_SECONDS = 10.0
#: A listing of processes this old is recent enough to hold one that has just started.
FRESH_SECONDS = 0.1
#: Forks remembered, to find a gone process's parent: recent ones are all that matter.
MAX_FORKS = 65_536
#: Ancestors looked at for a living owner.
MAX_LINEAGE = 4
_IDLE_POLL_SECONDS = 0.5
#: trace_pipe is read in chunks of this size; after a read that found less than a quarter of one, the
#: reader pauses this long, so that a busy host's lines are read in batches rather than a few at each of
#: thousands of wakes a second (a new connection's edge waits that much longer, at most).
_READ_BYTES = 1 << 16
_READ_PAUSE_SECONDS = 0.05

_MAPPED_PREFIX = "::ffff:"
#: `   <comm>-<tid> [(<tgid>)] [<cpu>] <flags> <timestamp>: <event>: <fields>`; comm may hold anything.
_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*[-\d]+\)\s+)?\[\d+\]\s+(?P<flags>\S+)\s+[\d.]+:\s+"
    r"(?P<event>\w+):\s(?P<fields>.*)$"
)
#: Flag column, third character: hard or soft interrupt context (`h`, `s`, `H`; `z`/`Z` for NMI).
_INTERRUPT_FLAGS = frozenset("hHsSzZ")
_STATES = {
    "TCP_ESTABLISHED": 1,
    "TCP_SYN_SENT": 2,
    "TCP_SYN_RECV": 3,
    "TCP_FIN_WAIT1": 4,
    "TCP_FIN_WAIT2": 5,
    "TCP_TIME_WAIT": 6,
    "TCP_CLOSE": 7,
    "TCP_CLOSE_WAIT": 8,
    "TCP_LAST_ACK": 9,
    "TCP_LISTEN": 10,
    "TCP_CLOSING": 11,
    "TCP_NEW_SYN_RECV": 12,
}
_ESTABLISHED = 1
_SYN_SENT = 2
_CLOSE = 7


class TracerUnavailable(Exception):
    """Why the tracepoint cannot be used here (no tracefs, no permission, an old kernel)."""


class Address(NamedTuple):
    addr: str
    port: int


class StateChange(NamedTuple):
    """One `inet_sock_set_state` line. `pid` is 0 when the line ran in an interrupt: whoever happened to
    be running is named there, not the socket's owner."""

    pid: int
    src: Address
    dst: Address
    old: int
    new: int


class Fork(NamedTuple):
    parent: int
    child: int


def parse_line(line: str) -> StateChange | Fork | None:
    """A state change or a fork from one trace_pipe line; None for anything else or a malformed line."""
    match = _LINE.match(line)
    if match is None:
        return None
    event = match.group("event")
    fields = dict(token.partition("=")[::2] for token in match.group("fields").split())
    try:
        if event == "sched_process_fork":
            return Fork(int(fields["pid"]), int(fields["child_pid"]))
        if event != "inet_sock_set_state" or fields.get("protocol") != "IPPROTO_TCP":
            return None
        if fields.get("family") == "AF_INET6":
            saddr = fields.get("saddrv6") or fields["saddr_v6"]
            daddr = fields.get("daddrv6") or fields["daddr_v6"]
        else:
            saddr, daddr = fields["saddr"], fields["daddr"]
        flags = match.group("flags")
        interrupt = len(flags) > 2 and flags[2] in _INTERRUPT_FLAGS
        return StateChange(
            0 if interrupt else int(match.group("tid")),
            Address(_plain(saddr), _port(fields["sport"])),
            Address(_plain(daddr), _port(fields["dport"])),
            _STATES[fields["oldstate"]],
            _STATES[fields["newstate"]],
        )
    except (KeyError, ValueError):
        return None


_plain_cache: dict[str, str] = {}


def _plain(addr: str) -> str:
    """The text form of an address; IPv4-mapped IPv6 ones as IPv4, so both families of a peer join."""
    text = _plain_cache.get(addr)
    if text is not None:
        return text
    ip = ipaddress.ip_address(addr)  # ValueError on garbage
    if addr.startswith(_MAPPED_PREFIX) and isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        text = str(ip.ipv4_mapped)
    else:
        text = str(ip)
    if len(_plain_cache) > 65_536:
        _plain_cache.clear()
    _plain_cache[addr] = text
    return text


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


# ------------------------------------------------------------------------------------------- tracefs


def find_tracefs(mounts: str = "/proc/mounts") -> str | None:
    """A mounted tracefs that carries the tracepoint: tracefs itself, or debugfs's `tracing/`."""
    candidates: list[str] = []
    try:
        with open(mounts) as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if fields[2] == "tracefs":
                    candidates.append(point)
                elif fields[2] == "debugfs":
                    candidates.append(os.path.join(point, "tracing"))
    except OSError:
        return None
    for path in candidates:
        if os.path.isdir(os.path.join(path, "events", EVENT)):
            return path
    return None


def open_tracefs(mounts: str = "/proc/mounts") -> str:
    """The tracefs to use, mounting it (tracefs, else debugfs) when none is; TracerUnavailable otherwise."""
    found = find_tracefs(mounts)
    if found is not None:
        return found
    errors = []
    for source, target in (("tracefs", TRACEFS_MOUNT), ("debugfs", DEBUGFS_MOUNT)):
        error = _mount(source, target)
        if error is None or error == errno.EBUSY:
            found = find_tracefs(mounts)
            if found is not None:
                log.info("tracer: mounted %s on %s", source, target)
                return found
        errors.append(f"mount {source} on {target}: {os.strerror(error) if error else 'no ' + EVENT}")
    raise TracerUnavailable("; ".join(errors))


def _mount(fstype: str, target: str) -> int | None:
    """mount(2) without the mount tool (the probe's image need not have it); errno, or None on success."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.mount(b"nodev", target.encode(), fstype.encode(), 0, None) != 0:
        return ctypes.get_errno()
    return None


class TraceInstance:
    """A tracefs instance of the probe's own (`scope-<pid>-<probe id>`) with the events it reads enabled;
    `remove()` takes it away.

    A probe that is killed (SIGKILL, the OOM killer) cannot remove it, and an instance left enabled costs
    its buffers and every event's tracing for good: so the instances of probes no longer running are
    removed when another starts (`remove_stale_instances`).
    """

    def __init__(self, tracefs: str, probe_id: str, proc_root: str = "/proc") -> None:
        instances = os.path.join(tracefs, "instances")
        remove_stale_instances(instances, proc_root)
        self.path = os.path.join(instances, f"scope-{os.getpid()}-{probe_id}")
        try:
            os.mkdir(self.path)
        except FileExistsError:
            pass
        except OSError as exc:
            raise TracerUnavailable(f"cannot make {self.path}: {exc.strerror}") from None
        try:
            self._write("buffer_size_kb", str(BUFFER_KB))
            self._write(f"events/{EVENT}/filter", EVENT_FILTER)
            self._write(f"events/{EVENT}/enable", "1")
        except OSError as exc:
            self.remove()
            raise TracerUnavailable(f"cannot enable {EVENT} in {self.path}: {exc.strerror}") from None
        try:
            self._write(f"events/{FORK_EVENT}/enable", "1")
        except OSError as exc:
            log.info("tracer: no fork events (%s); a connection of an exited process may have no owner", exc)

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def remove(self) -> None:
        """Disable the events and remove the instance (the kernel frees its buffers)."""
        _remove_instance(self.path)


_INSTANCE_NAME = re.compile(r"^scope-(\d+)-")
#: An instance younger than this is never taken for stale: its probe may not have opened trace_pipe yet.
STALE_AFTER_SECONDS = 60.0


def remove_stale_instances(
    instances: str, proc_root: str = "/proc", stale_after: float = STALE_AFTER_SECONDS
) -> list[str]:
    """Remove the instances of probes that are not running any more; their names.

    An instance is stale when no process has the pid in its name, or, seen from the host's process
    namespace, when it is older than `stale_after` and no process holds its trace_pipe open. The second
    rule is for probes that ran in a container of their own process namespace: the pid in their names
    (often 3) is some other process's on the host, and their instances were never removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(instances)
    except OSError:
        return removed
    candidates = [(name, match.group(1)) for name in names if (match := _INSTANCE_NAME.match(name))]
    if not candidates:
        return removed
    read: set[str] | None = None
    for name, pid in candidates:
        path = os.path.join(instances, name)
        if os.path.exists(os.path.join(proc_root, pid)):
            if not _sees_every_process(proc_root) or _age(path) < stale_after:
                continue
            if read is None:
                read = _instances_read(proc_root)
            if name in read:
                continue
        _remove_instance(path)
        log.info("tracer: removed %s, left by a probe that is not running any more", name)
        removed.append(name)
    return removed


def _sees_every_process(proc_root: str) -> bool:
    """Whether `proc_root` shows the host's processes: kernel threads (kthreadd is pid 2) are only seen
    from the first process namespace, not from a container's."""
    try:
        with open(os.path.join(proc_root, "2", "comm")) as f:
            return f.read().strip() == "kthreadd"
    except OSError:
        return False


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def _instances_read(proc_root: str) -> set[str]:
    """The names of the scope instances whose trace_pipe some process has open."""
    read: set[str] = set()
    for pid in os.listdir(proc_root):
        if not pid.isdigit():
            continue
        fd_dir = os.path.join(proc_root, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.endswith("/trace_pipe") and "/instances/scope-" in target:
                read.add(target.rsplit("/", 2)[-2])
    return read


def _remove_instance(path: str) -> None:
    with contextlib.suppress(OSError), open(os.path.join(path, "events", "enable"), "w") as f:
        f.write("0")
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("tracer: cannot remove %s: %s", path, exc.strerror)


# ---------------------------------------------------------------------------------------- reporter


@dataclass(slots=True)
class _Connection:
    client: Address
    server: Address
    #: Network namespace inode of the client (0: unknown), and the processes that may own it: the one
    #: that connected first, then its ancestors in that namespace.
    netns: int
    lineage: tuple[int, ...]
    server_pid: int
    ended: float | None  # monotonic time it closed, None while open
    #: Its client and server nodes as last reported, and the owners (client pid, server pid) they name.
    nodes: tuple[Node, Node] | None = None
    owners: tuple[int, int] = (0, 0)


@dataclass(slots=True)
class _Lineage:
    pids: tuple[int, ...]
    netns: int
    read_at: float


class ConnectionTracer(Reporter):
    """Endpoints joined by the connections the tracepoint saw open, lingering `linger` after they close."""

    name = "tracer"
    wakes_urgently = True
    removals_follow_clock = True

    def __init__(
        self,
        ctx: ProbeContext,
        scopes: AddressScopes,
        *,
        linger: float = LINGER_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        mounts: str = "/proc/mounts",
    ) -> None:
        self._ctx = ctx
        self._proc = ctx.proc_root
        self._scopes = scopes
        self._linger = linger
        self._max_connections = max_connections
        self._mounts = mounts
        self._host_node = ids.host_id(ctx.host_id)
        self._host_netns = self._netns_of(1) or self._netns_of(os.getpid()) or 0
        self._lock = threading.Lock()
        self._connections: OrderedDict[tuple[Address, Address], _Connection] = OrderedDict()
        # Reader thread only.
        self._connecting: OrderedDict[tuple[str, Address], int] = OrderedDict()
        self._forks: OrderedDict[int, int] = OrderedDict()
        self._lineages: dict[int, _Lineage] = {}
        self._listeners: dict[tuple[int, int], tuple[int, float]] = {}
        #: When a connection was last opened, by (netns, client address, eldest owner, server).
        self._edges: dict[tuple[int, str, int, Address], float] = {}
        self._netns_pids: tuple[dict[int, list[int]], float] = ({}, -PID_CACHE_SECONDS)
        #: By network namespace, when read: listening sockets' inodes by port, and socket inodes' holders.
        self._listening: dict[int, tuple[dict[int, frozenset[int]], float]] = {}
        self._sockets: dict[int, tuple[dict[int, list[int]], float]] = {}
        self._containers: dict[int, str | None] = {}
        #: Server endpoints by (id, owner), shared by every connection to them (report() only).
        self._servers: dict[tuple[str, int], Node] = {}
        self._instance: TraceInstance | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._running = threading.Event()
        #: Counters: lines read, lines not understood, events the kernel dropped, connections seen, connections
        #: on loopback whose namespace could not be told (their process and its parent gone).
        self.lines = 0
        self.malformed = 0
        self.lost = 0
        self.opened = 0
        self.unplaced = 0

    @property
    def running(self) -> bool:
        """Whether the tracepoint is being read."""
        return self._running.is_set()

    def start(self, wake: Wake) -> None:
        """Open an instance and read it in a thread; without the tracepoint, say so once and do nothing
        (the /proc and conntrack reporters go on as before)."""
        try:
            self.open()
        except TracerUnavailable as exc:
            log.warning("tracer: the tracepoint cannot be used (%s); connections are found by /proc and conntrack", exc)
            return
        self._thread = self._ctx.supervisor.start_thread(
            "tracer", functools.partial(self._follow, wake), self._stopping
        )

    def open(self) -> None:
        """Make the instance (mounting tracefs if need be); TracerUnavailable says why it cannot be."""
        if self._instance is None:
            self._instance = TraceInstance(open_tracefs(self._mounts), self._ctx.probe_id, self._proc)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._instance is not None:
            self._instance.remove()
            self._instance = None

    # -------------------------------------------------------------------------------------- report

    def report(self, now: float) -> Report:
        """Each connection's two ends, the client's with its edge. A connection's nodes are built once and
        again only when its owner changes (the process exited): on a busy host this runs on every wake."""
        mono = time.monotonic()
        cutoff = mono - self._linger
        with self._lock:
            gone = [key for key, c in self._connections.items() if c.ended is not None and c.ended < cutoff]
            for key in gone:
                del self._connections[key]
            connections = list(self._connections.values())
        report = Report()
        alive: dict[int, bool] = {}

        def is_alive(pid: int) -> bool:
            found = alive.get(pid)
            if found is None:
                found = alive[pid] = os.path.exists(os.path.join(self._proc, str(pid)))
            return found

        orphans: list[tuple[Address, Address]] = []
        if len(self._servers) > MAX_CONNECTIONS:
            self._servers.clear()
        for conn in connections:
            while len(conn.lineage) > 1 and not is_alive(conn.lineage[0]):
                conn.lineage = conn.lineage[1:]  # exited: for good
            client_pid = conn.lineage[0] if conn.lineage and is_alive(conn.lineage[0]) else 0
            if not client_pid:
                # Nobody left to draw it from (its container may be gone, its address another's by now).
                orphans.append((conn.client, conn.server))
                continue
            server_pid = conn.server_pid if conn.server_pid and is_alive(conn.server_pid) else 0
            if conn.nodes is None or conn.owners != (client_pid, server_pid):
                scope_ns = "" if conn.netns in (0, self._host_netns) else format(conn.netns, "x")
                client_id = self._scopes.endpoint_id(conn.client.addr, conn.client.port, scope_ns)
                server_id = self._scopes.endpoint_id(conn.server.addr, conn.server.port, scope_ns)
                edges = {server_id: EdgeMetadata(connection_count=1)}
                server = self._servers.get((server_id, server_pid))
                if server is None:
                    server = self._servers[(server_id, server_pid)] = self._endpoint(server_id, now, server_pid, {})
                conn.nodes = (self._endpoint(client_id, now, client_pid, edges), server)
                conn.owners = (client_pid, server_pid)
            report.add(conn.nodes[0])
            report.add(conn.nodes[1])
        if orphans:
            with self._lock:
                for key in orphans:
                    self._connections.pop(key, None)
        return report

    def _endpoint(self, node_id: str, now: float, pid: int, edges: dict[str, EdgeMetadata]) -> Node:
        parents: dict[str, list[str]] = {}
        if pid:
            parents[PROCESS] = [ids.process_id(self._ctx.host_id, pid)]
            # The container too: a process born since the last process report is not on the map yet.
            container = self._container_of(pid)
            if container is not None:
                parents[CONTAINER] = [ids.container_id(container)]
        return Node.build(
            node_id,
            ENDPOINT,
            timestamp=now,
            latest={TRACED: "true", HOST_NODE_ID: self._host_node if pid else None, PID: pid or None},
            adjacency=edges,
            edges=edges,
            parents=parents,
        )

    def _container_of(self, pid: int) -> str | None:
        if pid not in self._containers:
            if len(self._containers) > 4096:
                self._containers.clear()
            self._containers[pid] = container_of_pid(self._proc, pid)
        return self._containers[pid]

    # ---------------------------------------------------------------------------------------- events

    def handle(self, event: StateChange | Fork) -> bool:
        """Apply one parsed line; True when it opened a connection with a new edge (worth publishing now)."""
        if isinstance(event, Fork):
            self._forks[event.child] = event.parent
            if len(self._forks) > MAX_FORKS:
                self._forks.popitem(last=False)
            return False
        if event.new == _SYN_SENT:
            if event.pid:
                self._connecting[(event.src.addr, event.dst)] = event.pid
                if len(self._connecting) > 4096:
                    self._connecting.popitem(last=False)
            return False
        if event.old == _SYN_SENT:
            pid = self._connecting.pop((event.src.addr, event.dst), 0)
            if event.new == _ESTABLISHED:
                return self._opened(event.src, event.dst, event.pid or pid)
            return False
        if event.old == _ESTABLISHED:
            self._closed(event.src, event.dst)
        return False

    def _opened(self, client: Address, server: Address, pid: int) -> bool:
        """Add a connection; True when it draws an edge the map may not have: none like it (same client
        address, namespace and eldest owner, same server) was seen within the linger. A client that
        connects every second adds nothing new after the first, and waits for the next publish."""
        lineage = self._lineage(pid) if pid else _Lineage((), 0, 0.0)
        if not lineage.netns and (_is_loopback(client.addr) or _is_loopback(server.addr)):
            # Loopback addresses only mean something in their namespace, which went with the process.
            self.unplaced += 1
            return False
        mono = time.monotonic()
        edge = (lineage.netns, client.addr, lineage.pids[-1] if lineage.pids else 0, server)
        known = self._edges.get(edge)
        self._edges[edge] = mono
        if len(self._edges) > MAX_CONNECTIONS:
            self._edges = {e: t for e, t in self._edges.items() if mono - t < self._linger}
        server_pid = 0
        if lineage.pids and (server.addr == client.addr or _is_loopback(server.addr)):
            server_pid = self._listener(lineage.netns, lineage.pids, server.port)
        conn = _Connection(client, server, lineage.netns, lineage.pids, server_pid, None)
        with self._lock:
            self._connections.pop((client, server), None)  # the same 4-tuple again: a new connection
            self._connections[(client, server)] = conn
            if len(self._connections) > self._max_connections:
                self._connections.popitem(last=False)
            self.opened += 1
        return known is None or mono - known >= self._linger

    def _closed(self, src: Address, dst: Address) -> None:
        mono = time.monotonic()
        with self._lock:
            for key in ((src, dst), (dst, src)):  # the client's side, or the server's
                conn = self._connections.get(key)
                if conn is not None and conn.ended is None:
                    conn.ended = mono

    # ------------------------------------------------------------------------------------ processes

    def _lineage(self, pid: int) -> _Lineage:
        """The process (not thread) `pid` is part of and its ancestors in the same network namespace, as
        long as they are there; through the fork events for those already gone."""
        mono = time.monotonic()
        known = self._lineages.get(pid)
        if known is not None and mono - known.read_at < PID_CACHE_SECONDS:
            return known
        pids: list[int] = []
        netns = 0
        current: int | None = self._tgid(pid) or pid
        steps = 0
        while current and len(pids) < MAX_LINEAGE and steps < 2 * MAX_LINEAGE:
            steps += 1
            ns = self._netns_of(current)
            if ns is None:  # exited: its parent, if a fork event named it
                current = self._forks.get(current)
                continue
            if netns and ns != netns:
                break
            netns = ns
            pids.append(current)
            current = self._ppid(current)
        found = _Lineage(tuple(pids), netns, mono)
        if len(self._lineages) > 4096:
            self._lineages = {p: v for p, v in self._lineages.items() if mono - v.read_at < PID_CACHE_SECONDS}
        self._lineages[pid] = found
        return found

    def _tgid(self, tid: int) -> int | None:
        try:
            with open(os.path.join(self._proc, str(tid), "status")) as f:
                for line in f:
                    if line.startswith("Tgid:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None

    def _ppid(self, pid: int) -> int | None:
        try:
            with open(os.path.join(self._proc, str(pid), "stat")) as f:
                return parse_stat(f.read()).ppid or None
        except (OSError, ValueError, IndexError):
            return None

    def _netns_of(self, pid: int) -> int | None:
        try:
            return os.stat(os.path.join(self._proc, str(pid), "ns", "net")).st_ino
        except OSError:
            return None

    def _listener(self, netns: int, pids: Sequence[int], port: int) -> int:
        """The process owning the socket listening on `port` in the namespace `pids` (a lineage) are in;
        0 if none.

        Each new port costs two lookups in tables kept per namespace, not a read of the namespace's TCP
        table (the kernel walks its whole hash for it) and a walk of every open file of every process in
        it: on a host whose processes connect over loopback to ever new ports (test runs), those walks
        were most of the probe's work. The tables are read again when they lack what is looked for or
        name a process that is gone: the listener may be in a process that has just started, or a server
        started again on the port (a port not found is looked for again after a second at most, so that
        costs a read a second at most)."""
        mono = time.monotonic()
        known = self._listeners.get((netns, port))
        if known is not None and mono - known[1] < LISTENER_CACHE_SECONDS:
            return known[0]
        inodes = self._listening_inodes(netns, pids, port)
        owner = self._holder(netns, inodes) if inodes else 0
        if not owner or not os.path.exists(os.path.join(self._proc, str(owner))):
            inodes = self._listening_inodes(netns, pids, port, fresh=True)
            owner = self._holder(netns, inodes, fresh=True) if inodes else 0
        if len(self._listeners) > 4096:
            self._listeners.clear()
        # Not found: looked for again soon, as the listener may be in a process that has just started.
        self._listeners[(netns, port)] = (owner, mono if owner else mono - LISTENER_CACHE_SECONDS + 1.0)
        return owner

    def _listening_inodes(self, netns: int, pids: Sequence[int], port: int, *, fresh: bool = False) -> frozenset[int]:
        """The inodes of sockets listening on `port` in namespace `netns`, from its listening table (`fresh`:
        read now)."""
        table, read_at = self._listening.get(netns, ({}, -PID_CACHE_SECONDS))
        if fresh or port not in table or time.monotonic() - read_at >= PID_CACHE_SECONDS:
            # The client itself (a wget) may be gone already: the table is read through the first of its
            # lineage that is still there.
            for pid in pids:
                found = self._read_listening(pid)
                if found is not None:
                    table = found
                    if len(self._listening) > 1024:
                        self._listening.clear()
                    self._listening[netns] = (table, time.monotonic())
                    break
        return table.get(port, frozenset())

    def _read_listening(self, pid: int) -> dict[int, frozenset[int]] | None:
        """The listening sockets' inodes by port in `pid`'s namespace; None when `pid` is gone."""
        if not os.path.exists(os.path.join(self._proc, str(pid), "net")):
            return None
        table: dict[int, set[int]] = {}
        for name in ("tcp", "tcp6"):
            try:
                with open(os.path.join(self._proc, str(pid), "net", name)) as f:
                    for line in f:
                        fields = line.split()
                        if len(fields) >= 10 and fields[3] == "0A":
                            table.setdefault(int(fields[1].rpartition(":")[2], 16), set()).add(int(fields[9]))
            except (OSError, ValueError):
                continue
        return {port: frozenset(inodes) for port, inodes in table.items()}

    def _holder(self, netns: int, inodes: frozenset[int], *, fresh: bool = False) -> int:
        """The topmost process of namespace `netns` holding one of `inodes` (a forking server's children
        share it); `fresh`: from the processes' open files now."""
        index, built_at = self._sockets.get(netns, ({}, -PID_CACHE_SECONDS))
        mono = time.monotonic()
        if fresh or mono - built_at >= PID_CACHE_SECONDS or not inodes & index.keys():
            index = self._socket_holders(self._pids_in(netns, fresh=fresh))
            if not inodes & index.keys():  # the server may be newer than the listing of the namespace
                index = self._socket_holders(self._pids_in(netns, fresh=True))
            if len(self._sockets) > 1024:
                self._sockets.clear()
            self._sockets[netns] = (index, time.monotonic())
        holders = sorted({pid for inode in inodes for pid in index.get(inode, ())})
        for pid in holders:
            if self._ppid(pid) not in holders:
                return pid
        return holders[0] if holders else 0

    def _socket_holders(self, pids: list[int]) -> dict[int, list[int]]:
        """The processes among `pids` holding each socket inode, from their open files."""
        index: dict[int, list[int]] = {}
        for pid in pids:
            try:
                with os.scandir(os.path.join(self._proc, str(pid), "fd")) as entries:
                    for entry in entries:
                        try:
                            target = os.readlink(entry.path)
                        except OSError:
                            continue
                        if target.startswith("socket:["):
                            index.setdefault(int(target[8:-1]), []).append(pid)
            except (OSError, ValueError):
                continue
        return index

    def _pids_in(self, netns: int, *, fresh: bool = False) -> list[int]:
        """The processes in a network namespace, from a listing at most PID_CACHE_SECONDS old (`fresh`:
        FRESH_SECONDS)."""
        by_netns, read_at = self._netns_pids
        if time.monotonic() - read_at >= (FRESH_SECONDS if fresh else PID_CACHE_SECONDS) or netns not in by_netns:
            by_netns = {}
            try:
                names = os.listdir(self._proc)
            except OSError:
                names = []
            for name in names:
                if name.isdigit():
                    ns = self._netns_of(int(name))
                    if ns is not None:
                        by_netns.setdefault(ns, []).append(int(name))
            self._netns_pids = (by_netns, time.monotonic())
        return by_netns.get(netns, [])

    # ---------------------------------------------------------------------------------------- reader

    def _follow(self, wake: Wake) -> None:
        """Read trace_pipe until stopped, waking the probe for new connections (rate-limited)."""
        assert self._instance is not None
        path = os.path.join(self._instance.path, "trace_pipe")
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            log.warning("tracer: cannot read %s (%s); connections are found by /proc and conntrack", path, exc)
            return
        self._running.set()
        pending = b""
        wake_due = False
        last_wake = 0.0
        try:
            while not self._stopping.is_set():
                timeout = _IDLE_POLL_SECONDS
                if wake_due:
                    timeout = max(0.0, last_wake + MIN_WAKE_SECONDS - time.monotonic())
                readable, _, _ = select.select([fd], [], [], timeout)
                if readable:
                    try:
                        chunk = os.read(fd, _READ_BYTES)
                    except BlockingIOError:
                        chunk = b""
                    lines = (pending + chunk).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        wake_due = self._line(line.decode("utf-8", "replace")) or wake_due
                    if len(chunk) < _READ_BYTES // 4:
                        self._stopping.wait(_READ_PAUSE_SECONDS)
                if wake_due and time.monotonic() - last_wake >= MIN_WAKE_SECONDS:
                    wake(self.name)
                    last_wake, wake_due = time.monotonic(), False
        except OSError as exc:
            log.warning("tracer: reading %s failed (%s); connections are found by /proc and conntrack", path, exc)
        finally:
            self._running.clear()
            os.close(fd)

    def _line(self, line: str) -> bool:
        self.lines += 1
        event = parse_line(line)
        if event is not None:
            return self.handle(event)
        if "LOST" in line and "EVENTS" in line:  # `CPU:1 [LOST 123 EVENTS]`: the buffer overflowed
            self.lost += 1
            if self.lost == 1:
                log.warning("tracer: the kernel dropped events (buffer full); some connections may be missed")
        elif line.strip():
            self.malformed += 1
            if self.malformed in (1, 100) or self.malformed % 10_000 == 0:
                log.info("tracer: %d lines not understood, e.g. %r", self.malformed, line[:200])
        return False


def _is_loopback(addr: str) -> bool:
    ip = parse_ip(addr)
    return ip is not None and ip.is_loopback
