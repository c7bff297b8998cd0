"""TCP connections from /proc, per network namespace, each endpoint tied to the process owning it.

Every container has its own network namespace and so its own /proc/<pid>/net/tcp; reading it once
per namespace (through any process in it) sees every container's connections without entering any
namespace. But the kernel walks its whole TCP hash table for each such read, whatever the namespace
holds: ~1.4 ms of CPU a file here, for tcp and tcp6 alike, so 50 containers cost 5 % of a core at one
read per publish. So a table is read only when it can hold something new:
- A family whose `inuse` counter (/proc/<pid>/net/sockstat{,6}, a hundredth of a millisecond) is 0
  has no listening or connected socket, only TIME_WAIT ones: its file is not read at all. A client
  container making short connections is such a namespace nearly all the time.
- Otherwise the table is read again when `inuse` moved, when the last read caught a connection
  half-open, or every FULL_READ_SECONDS (one connection may have closed as another opened). The
  TIME_WAIT count is left out on purpose: it moves with every short connection, which the /proc
  tables would rarely catch open anyway (conntrack reports those), and it made busy namespaces be
  re-read on every publish.

Socket inodes are mapped to processes through /proc/<pid>/fd; the mapping is cached and the fd walk
only runs for namespaces that have sockets it does not know yet.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from scope_common import ids
from scope_common.report import HOST_NODE_ID, PID, PROCSPIED, REVERSE_DNS, Node, Report
from scope_probe.addresses import AddressScopes
from scope_probe.reporter import ProbeContext, Reporter
from scope_probe.resolver import ReverseResolver

log = logging.getLogger(__name__)

_ESTABLISHED = "01"
_LISTEN = "0A"
_HALF_OPEN = ("02", "03")  # SYN_SENT, SYN_RECV: about to become established
#: How long a namespace whose socket counters have not moved keeps its last table.
FULL_READ_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class Connection:
    """One established TCP socket as the kernel lists it."""

    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    inode: int


@dataclass(slots=True)
class SocketTable:
    """The TCP sockets of one network namespace."""

    connections: list[Connection]
    listening_ports: set[int]
    half_open: bool = False


_addr_cache: dict[str, str] = {}


def decode_address(hex_addr: str) -> str:
    """The text form of an address as /proc/net/tcp{,6} writes it (32-bit words, host byte order).

    IPv4-mapped IPv6 addresses come back as IPv4, so both families of one peer join.
    """
    text = _addr_cache.get(hex_addr)
    if text is not None:
        return text
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        text = socket.inet_ntop(socket.AF_INET, words)
    else:
        text = socket.inet_ntop(socket.AF_INET6, words)
        if text.startswith("::ffff:") and "." in text:
            text = text[7:]
    if len(_addr_cache) > 65_536:
        _addr_cache.clear()
    _addr_cache[hex_addr] = text
    return text


def parse_tcp_table(text: str, table: SocketTable) -> None:
    """Add the established and listening sockets in one /proc/net/tcp{,6} file to `table`."""
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        state = fields[3]
        if state == _LISTEN:
            table.listening_ports.add(int(fields[1].rpartition(":")[2], 16))
        elif state in _HALF_OPEN:
            table.half_open = True
        elif state == _ESTABLISHED:
            local, _, lport = fields[1].partition(":")
            remote, _, rport = fields[2].partition(":")
            table.connections.append(
                Connection(
                    decode_address(local),
                    int(lport, 16),
                    decode_address(remote),
                    int(rport, 16),
                    int(fields[9]),
                )
            )


class EndpointReporter(Reporter):
    name = "endpoint"

    def __init__(self, ctx: ProbeContext, addresses: AddressScopes, resolver: ReverseResolver | None = None) -> None:
        self._ctx = ctx
        self._addresses = addresses
        self._resolver = resolver
        self._host_node = ids.host_id(ctx.host_id)
        self._inode_pids: dict[int, int] = {}
        self._tables: dict[int, _CachedTable] = {}
        #: /proc/<pid>/net/tcp{,6} files read, by network namespace inode.
        self.reads: Counter[int] = Counter()

    def report(self, now: float) -> Report:
        report = Report()
        namespaces = self._namespaces()
        host_netns = self._netns_of(1) or self._netns_of(os.getpid())
        live_inodes: set[int] = set()
        for netns in self._tables.keys() - namespaces.keys():
            del self._tables[netns]
        for netns, pids in namespaces.items():
            table = self._table(netns, pids)
            if table is None:
                continue
            unknown = [c.inode for c in table.connections if c.inode and c.inode not in self._inode_pids]
            if unknown:
                self._map_inodes(pids, set(unknown))
            scope_ns = "" if netns == host_netns else format(netns, "x")
            for conn in table.connections:
                live_inodes.add(conn.inode)
                self._add_connection(report, now, conn, table.listening_ports, scope_ns)
        for inode in self._inode_pids.keys() - live_inodes:
            del self._inode_pids[inode]
        return report

    def _add_connection(self, report: Report, now: float, conn: Connection, listening: set[int], netns: str) -> None:
        local_id = self._addresses.endpoint_id(conn.local_addr, conn.local_port, netns)
        remote_id = self._addresses.endpoint_id(conn.remote_addr, conn.remote_port, netns)
        pid = self._inode_pids.get(conn.inode)
        local = Node.build(
            local_id,
            "endpoint",
            timestamp=now,
            latest={PROCSPIED: "true", HOST_NODE_ID: self._host_node, PID: pid},
            parents={"process": [ids.process_id(self._ctx.host_id, pid)]} if pid else None,
            # A connection to a port this namespace listens on was accepted here: the peer is the
            # client, so the edge (client -> server) starts at the remote end.
            adjacency=() if conn.local_port in listening else (remote_id,),
        )
        remote_name = None
        if self._resolver is not None and remote_id.startswith(";"):  # unscoped: another machine
            remote_name = self._resolver.lookup(conn.remote_addr)
        remote = Node.build(
            remote_id,
            "endpoint",
            timestamp=now,
            latest={PROCSPIED: "true", REVERSE_DNS: remote_name},
            adjacency=(local_id,) if conn.local_port in listening else (),
        )
        report.add(local)
        report.add(remote)

    def _namespaces(self) -> dict[int, list[int]]:
        """Pids by network namespace inode."""
        namespaces: dict[int, list[int]] = {}
        for pid in _pids(self._ctx.proc_root):
            netns = self._netns_of(pid)
            if netns is not None:
                namespaces.setdefault(netns, []).append(pid)
        return namespaces

    def _netns_of(self, pid: int) -> int | None:
        try:
            return os.stat(os.path.join(self._ctx.proc_root, str(pid), "ns", "net")).st_ino
        except OSError:
            return None

    def _table(self, netns: int, pids: list[int]) -> SocketTable | None:
        """The namespace's socket table: the cached one while its counters stand still."""
        in_use = self._sockets_in_use(pids)
        cached = self._tables.get(netns)
        now = time.monotonic()
        if (
            cached is not None
            and in_use is not None
            and cached.in_use == in_use
            and not cached.table.half_open
            and (now - cached.read_at < FULL_READ_SECONDS or not any(in_use))
        ):
            return cached.table
        table = self._read_table(netns, pids, in_use)
        if table is not None and in_use is not None:
            self._tables[netns] = _CachedTable(in_use, table, now)
        return table

    def _sockets_in_use(self, pids: list[int]) -> tuple[int, int] | None:
        """TCP sockets in use (listening or connected, not TIME_WAIT) in the namespace: (IPv4, IPv6)."""
        for pid in pids:
            net = os.path.join(self._ctx.proc_root, str(pid), "net")
            try:
                v4, v6 = (
                    _in_use(os.path.join(net, "sockstat"), "TCP:"),
                    _in_use(os.path.join(net, "sockstat6"), "TCP6:"),
                )
            except OSError:
                continue
            # A kernel that words these files otherwise: read the tables every time, as if counters moved.
            return None if v4 is None or v6 is None else (v4, v6)
        return None

    def _read_table(self, netns: int, pids: list[int], in_use: tuple[int, int] | None) -> SocketTable | None:
        """The socket table of a namespace, read through the first of its processes still there; the
        files of families with no socket in use are skipped (none when `in_use` is unknown)."""
        files = [name for name, count in zip(("tcp", "tcp6"), in_use or (1, 1), strict=True) if count]
        for pid in pids:
            table = SocketTable([], set())
            try:
                for name in files:
                    path = os.path.join(self._ctx.proc_root, str(pid), "net", name)
                    try:
                        with open(path) as f:
                            parse_tcp_table(f.read(), table)
                    except FileNotFoundError:
                        if name == "tcp":
                            raise
                    self.reads[netns] += 1
            except OSError:
                continue
            return table
        return None

    def _map_inodes(self, pids: list[int], wanted: set[int]) -> None:
        """Find the processes holding the sockets `wanted`, walking their open files."""
        for pid in pids:
            fd_dir = os.path.join(self._ctx.proc_root, str(pid), "fd")
            try:
                with os.scandir(fd_dir) as entries:
                    for entry in entries:
                        try:
                            target = os.readlink(entry.path)
                        except OSError:
                            continue
                        if target.startswith("socket:["):
                            inode = int(target[8:-1])
                            if inode in wanted:
                                self._inode_pids[inode] = pid
                                wanted.discard(inode)
            except OSError:
                continue
            if not wanted:
                return
        # Sockets no visible process holds (kernel-owned, or a process that has just gone) are
        # remembered as unowned, so they do not cause a full walk every tick.
        for inode in wanted:
            self._inode_pids[inode] = 0


@dataclass(slots=True)
class _CachedTable:
    in_use: tuple[int, int]
    table: SocketTable
    read_at: float


def _in_use(path: str, prefix: str) -> int | None:
    """The `inuse` count on the `prefix` line of a sockstat file (`TCP: inuse 3 orphan 0 tw 2 ...`): 0
    when the family is missing (no IPv6), None when the line is not as expected."""
    try:
        with open(path) as f:
            lines = [line.split() for line in f if line.startswith(prefix)]
    except FileNotFoundError:
        if prefix == "TCP:":
            raise
        return 0
    if not lines:
        return 0
    fields = lines[0]
    for key, value in zip(fields[1::2], fields[2::2], strict=False):
        if key == "inuse" and value.isdigit():
            return int(value)
    return None


def _pids(proc_root: str) -> Iterator[int]:
    try:
        names = os.listdir(proc_root)
    except OSError as exc:
        log.warning("cannot list %s: %s", proc_root, exc)
        return
    for name in names:
        if name.isdigit():
            yield int(name)
