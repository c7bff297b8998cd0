"""The conntrack reporter: TCP connections as the kernel's connection tracker sees them.

/proc/net/tcp only shows connections open at the moment it is read, so one that lasts a few milliseconds
between two ticks is never seen. The connection tracker announces every connection as it is made, so
following its events (`conntrack -E`) catches them all, including those between containers on a Docker
bridge (with br_netfilter's bridge-nf-call-iptables on). It also knows NAT: a connection to a published
port (`-p 8080:80`) is answered by the container, and the edge goes to the container's address.

A flow is reported from when its handshake completes until LINGER_SECONDS after it closed, so a client
that connects once a second draws a steady edge rather than one that blinks.

With the kernel's accounting on (`nf_conntrack_acct`, which the reporter turns on where it may, saying
so where it may not), flows carry the bytes and packets sent each way: events only do at a flow's end, so
the table is also dumped every ACCOUNTING_SECONDS for the counters of open flows. An edge carries the sum
of its flows' counters, client to server (egress) and back (ingress).

Lingering makes container addresses treacherous: the engine gives a removed container's IP to the next
one it starts, and an ended flow of the old one would be drawn from the new one by whoever looks the
address up now. So each end of a flow belongs to the container that held its address when the flow was
first seen (`AddressClaims`, kept by the Docker reporter), and is reported with that container as its
parent. A flow whose container was removed, or whose address another container holds by now, is
dropped: it can only ever be drawn wrong.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import IO, NamedTuple

from scope_common import ids
from scope_common.report import (
    ADDR,
    CONNTRACKED,
    CONTAINER,
    ENDPOINT,
    PORT,
    REVERSE_DNS,
    EdgeMetadata,
    Node,
    Report,
)
from scope_probe.addresses import AddressScopes
from scope_probe.claims import AddressClaims, Claim
from scope_probe.reporter import ProbeContext, Reporter, Wake
from scope_probe.resolver import ReverseResolver

log = logging.getLogger(__name__)

LINGER_SECONDS = 15.0
MAX_FLOWS = 50_000
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 10.0
#: A stream that ran this long before failing restarts without waiting.
HEALTHY_RUN_SECONDS = 60.0
#: Netlink receive buffer asked of conntrack, so bursts of events are not lost.
BUFFER_BYTES = 8 << 20
#: Events lost this soon after the initial dump are the dump racing the event stream: expected, and
#: mended by the next dump like any other loss, but not worth a warning.
STARTUP_GRACE_SECONDS = 5.0
#: After lost events the table is dumped again, but not more often than this on a host losing them
#: all the time.
MIN_RESYNC_SECONDS = 5.0
#: How often open flows' byte counters are read (a dump of the table) when accounting is on.
ACCOUNTING_SECONDS = 5.0
ACCOUNTING_SYSCTL = "sys/net/netfilter/nf_conntrack_acct"
#: The event stream is read in chunks of this size; after a read that found less than a quarter of one,
#: the reader pauses this long, so that a busy host's events (five lines a connection) are handed over in
#: batches rather than each line with a thread switch of its own.
READ_BYTES = 1 << 16
READ_PAUSE_SECONDS = 0.05

#: TCP states of a connection that was open and is closing or closed.
_CLOSING = frozenset({"FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE"})
_TCP_STATES = frozenset({"SYN_SENT", "SYN_RECV", "ESTABLISHED", "SYN_SENT2", "NONE"}) | _CLOSING
_EVENT_KINDS = {"[NEW]": "new", "[UPDATE]": "update", "[DESTROY]": "destroy"}
#: The original direction's addresses and ports, as `conntrack -L` starts a flow's fields.
_ORIGINAL = re.compile(r"src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+) ")
_LOST_EVENTS = ("ENOBUFS", "No buffer space available")
#: In events of a handshake (SYN_SENT, SYN_RECV, SYN_SENT2): they never add a flow (it is not answered
#: yet) nor end one, and are a third of the stream; left unparsed.
_HANDSHAKE = " SYN_"
_NO_PERMISSION = ("Operation not permitted", "CAP_NET_ADMIN")


class Address(NamedTuple):
    addr: str
    port: int


class FlowEvent(NamedTuple):
    """One line of conntrack's output: an event (`kind` new/update/destroy) or a dumped flow (`kind` "")."""

    kind: str
    state: str
    src: Address
    dst: Address
    reply_src: Address
    assured: bool
    #: Bytes and packets sent in the original direction (client to server) and in reply, with accounting on.
    sent: int | None = None
    received: int | None = None
    sent_packets: int | None = None
    received_packets: int | None = None


def parse_flow(line: str) -> FlowEvent | None:
    """A TCP flow from one line of `conntrack -E` or `conntrack -L` (default format); None otherwise.

    The first src/dst/sport/dport are the original direction, the second the reply direction.
    """
    kind = ""
    state = ""
    assured = False
    fields: dict[str, list[str]] = {"src": [], "dst": [], "sport": [], "dport": [], "bytes": [], "packets": []}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep:
            values = fields.get(key)
            if values is not None:
                values.append(value)
        elif token in _EVENT_KINDS:
            kind = _EVENT_KINDS[token]
        elif token in _TCP_STATES:
            state = token
        elif token == "[ASSURED]":
            assured = True
    src, dst, sport, dport = fields["src"], fields["dst"], fields["sport"], fields["dport"]
    if not state or len(src) < 2 or len(dst) < 2 or len(sport) < 2 or len(dport) < 2:
        return None
    counted, packets = fields["bytes"], fields["packets"]
    # Bytes, then packets, each way; none without accounting (or on half a line): unknown, not zero.
    counters = counted[:2] + packets[:2] if len(counted) >= 2 and len(packets) >= 2 else []
    try:
        return FlowEvent(
            kind,
            state,
            Address(src[0], int(sport[0])),
            Address(dst[0], int(dport[0])),
            Address(src[1], int(sport[1])),
            assured,
            *(int(value) for value in counters),
        )
    except ValueError:
        return None


@dataclass(slots=True)
class _Flow:
    client: Address
    server: Address
    ended: float | None  # monotonic time it closed, None while open
    seen: float  # wall clock time it was first seen, for finding who held its addresses then
    client_claim: Claim | None = None
    server_claim: Claim | None = None
    sent: int | None = None
    received: int | None = None
    sent_packets: int | None = None
    received_packets: int | None = None


class ConntrackReporter(Reporter):
    """Endpoints joined by the TCP connections conntrack saw open, NAT undone, lingering a while.

    With a `resolver`, remote (unscoped) endpoints carry their reverse DNS name once it is known. With
    `claims`, ends on container addresses carry the container that held the address at the time.
    """

    name = "conntrack"

    def __init__(
        self,
        ctx: ProbeContext,
        scopes: AddressScopes | None = None,
        *,
        linger: float = LINGER_SECONDS,
        max_flows: int = MAX_FLOWS,
        binary: str = "conntrack",
        resolver: ReverseResolver | None = None,
        claims: AddressClaims | None = None,
    ) -> None:
        self._resolver = resolver
        self._claims = claims
        self._scopes = scopes or AddressScopes(ctx.host_id)
        self._proc_root = ctx.proc_root
        self._linger = linger
        self._max_flows = max_flows
        self._binary = binary
        self._supervisor = ctx.supervisor
        self._lock = threading.Lock()
        # Keyed by the original direction's (src, dst); insertion order is age, for dropping the oldest.
        self._flows: OrderedDict[tuple[Address, Address], _Flow] = OrderedDict()
        self._dropped = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._following = threading.Event()
        self._losses = 0
        self._loss_warned = False
        self._accounting = False
        #: Endpoint nodes as last reported, by address and end (True: client), with what they were built
        #: from (report() only): built again only when that changed, so that thousands of lingering
        #: connections cost no Node.build each report, and the delta encoder finds them the same at once.
        self._nodes: dict[tuple[Address, bool], tuple[object, Node]] = {}

    @property
    def losses(self) -> int:
        """Times conntrack said it lost events (ENOBUFS), each mended by dumping the table again."""
        with self._lock:
            return self._losses

    @property
    def dropped(self) -> int:
        """Flows forgotten before their time because MAX_FLOWS were already kept."""
        with self._lock:
            return self._dropped

    @property
    def following(self) -> bool:
        """Whether the event stream is up (the initial dump done)."""
        return self._following.is_set()

    def start(self, wake: Wake) -> None:
        """Follow conntrack events in a thread. Without the tool, log once and report nothing."""
        path = shutil.which(self._binary)
        if path is None:
            log.warning("conntrack: %r not found; short-lived connections will be missed", self._binary)
            return
        self._check_bridge_netfilter()
        self._accounting = self._enable_accounting()
        self._thread = self._supervisor.start_thread("conntrack", functools.partial(self._follow, path), self._stopping)

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _check_bridge_netfilter(self) -> None:
        """Say so when connections between containers on one bridge will not be seen: bridged packets
        only pass through netfilter (and conntrack) with br_netfilter's bridge-nf-call-iptables on."""
        path = os.path.join(self._proc_root, "sys/net/bridge/bridge-nf-call-iptables")
        try:
            with open(path) as f:
                enabled = f.read().strip() == "1"
        except OSError:
            enabled = False
        if not enabled:
            log.warning(
                "conntrack: %s is not 1 (modprobe br_netfilter; sysctl net.bridge.bridge-nf-call-iptables=1): "
                "connections between containers on the same bridge will be missed",
                path,
            )

    def _enable_accounting(self) -> bool:
        """Turn on the kernel's byte counters for new flows, or say why edges will carry no traffic."""
        path = os.path.join(self._proc_root, ACCOUNTING_SYSCTL)
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    return True
            with open(path, "w") as f:
                f.write("1")
        except OSError as exc:
            log.warning("conntrack: cannot turn on accounting (%s: %s); edges will carry no traffic", path, exc)
            return False
        log.info("conntrack: accounting turned on (%s); connections opened from now on are counted", path)
        return True

    def report(self, now: float) -> Report:
        """Client endpoints with an edge to each server they connected to; the servers too."""
        mono = time.monotonic()
        cutoff = mono - self._linger
        claimed = self._claims.addresses() if self._claims is not None else frozenset()
        counts: dict[Address, dict[Address, EdgeMetadata]] = {}
        owners: dict[Address, str] = {}
        with self._lock:
            gone = [k for k, f in self._flows.items() if f.ended is not None and f.ended < cutoff]
            if claimed:
                gone += [k for k, f in self._flows.items() if not self._attribute(f, claimed, mono)]
            for key in gone:
                self._flows.pop(key, None)
            for flow in self._flows.values():
                servers = counts.setdefault(flow.client, {})
                known = servers.get(flow.server)
                servers[flow.server] = EdgeMetadata(
                    (known.connection_count if known else 0) + 1,
                    _add(known.egress_bytes if known else None, flow.sent),
                    _add(known.ingress_bytes if known else None, flow.received),
                    _add(known.egress_packets if known else None, flow.sent_packets),
                    _add(known.ingress_packets if known else None, flow.received_packets),
                )
                if flow.client_claim is not None:
                    owners[flow.client] = flow.client_claim.container_id
                if flow.server_claim is not None:
                    owners[flow.server] = flow.server_claim.container_id
        report = Report()
        node_ids: dict[Address, str] = {}
        built: dict[tuple[Address, bool], tuple[object, Node]] = {}

        def node_id(address: Address) -> str:
            found = node_ids.get(address)
            if found is None:
                found = node_ids[address] = self._scopes.endpoint_id(address.addr, address.port)
            return found

        def endpoint(address: Address, edges: dict[str, EdgeMetadata] | None) -> Node:
            owner = owners.get(address)
            remote = self._resolver is not None and node_id(address).startswith(";")  # unscoped
            name = self._resolver.lookup(address.addr) if self._resolver is not None and remote else None
            basis = (owner, name, edges)
            known = self._nodes.get((address, edges is not None))
            if known is not None and known[0] == basis:
                node = known[1]
            else:
                facts: dict[str, object] = {CONNTRACKED: "true", ADDR: address.addr, PORT: address.port}
                if remote:
                    facts[REVERSE_DNS] = name
                node = Node.build(
                    node_id(address),
                    ENDPOINT,
                    timestamp=now,
                    latest=facts,
                    adjacency=edges or (),
                    edges=edges,
                    parents={CONTAINER: [ids.container_id(owner)]} if owner is not None else None,
                )
            built[(address, edges is not None)] = (basis, node)
            return node

        all_servers: set[Address] = set()
        for client, servers in counts.items():
            report.add(endpoint(client, {node_id(server): metadata for server, metadata in servers.items()}))
            all_servers.update(servers)
        for server in all_servers:
            report.add(endpoint(server, None))
        self._nodes = built
        return report

    def _attribute(self, flow: _Flow, claimed: frozenset[str], mono: float) -> bool:
        """Find the containers that held the flow's addresses when it was first seen (again, should a
        claim have changed since: an end learnt late). False when the flow must be dropped: its container
        was removed, or another container holds the address by now, or took it after the flow was seen by
        nobody's claim. A flow whose container stopped has ended, whatever conntrack says (a killed
        container's connections may never see a FIN)."""
        assert self._claims is not None
        claims = self._claims
        for address, is_client in ((flow.client, True), (flow.server, False)):
            if address.addr not in claimed:
                continue
            claim = flow.client_claim if is_client else flow.server_claim
            if claim is None or not claim.covers(flow.seen):
                claim = claims.owner(address.addr, flow.seen)
                if is_client:
                    flow.client_claim = claim
                else:
                    flow.server_claim = claim
            if claim is None:
                # Seen when no container we know of held the address; one holding it since must not
                # inherit it (the app would, by the address).
                held = claims.current(address.addr)
                if held is not None and held.start > flow.seen:
                    return False
                continue
            if claims.removed(claim.container_id):
                return False
            if claim.end is not None:
                holder = claims.holder(address.addr)
                if holder is not None and holder != claim.container_id:
                    return False
                if flow.ended is None:
                    flow.ended = mono
        return True

    # ------------------------------------------------------------------------------- flow table

    def handle(self, event: FlowEvent, mono: float) -> bool:
        """Apply one event or dumped flow to the table (`mono`: time.monotonic() when it was read).

        True when the flow is in the table afterwards.
        """
        key = (event.src, event.dst)
        closing = event.kind == "destroy" or event.state in _CLOSING
        with self._lock:
            flow = self._flows.get(key)
            if flow is not None and flow.ended is not None and not closing:
                # The same addresses and ports again, after the old connection closed: a new connection,
                # maybe from another container that got the address since.
                del self._flows[key]
                flow = None
            if flow is None:
                # Only connections that were answered count: a SYN to a closed port is not an edge.
                # One first seen closing in a dump or a destroy event closed at an unknown time, maybe
                # long before the probe started: leave it out.
                if not (event.assured or event.state == "ESTABLISHED") or (closing and event.kind != "update"):
                    return False
                seen = time.time() - (time.monotonic() - mono)
                flow = self._flows[key] = _Flow(event.src, event.reply_src, mono if closing else None, seen)
                if len(self._flows) > self._max_flows:
                    self._flows.popitem(last=False)
                    self._dropped += 1
                    if self._dropped == 1:
                        log.warning("conntrack: more than %d flows; forgetting the oldest", self._max_flows)
            elif closing and flow.ended is None:
                flow.ended = mono
            if event.sent is not None:
                # Counters only grow; a dump read before an event may be applied after it.
                flow.sent = max(flow.sent or 0, event.sent)
                flow.received = max(flow.received or 0, event.received or 0)
                flow.sent_packets = max(flow.sent_packets or 0, event.sent_packets or 0)
                flow.received_packets = max(flow.received_packets or 0, event.received_packets or 0)
            return True

    def _closed_elsewhere(self, line: str) -> bool:
        """Whether a dumped line is of a closing flow the table does not hold, which `handle` would leave
        out: told from the state and the first four addresses and ports, without parsing the whole line.
        Most of a busy host's dump is such flows (a short connection sits in TIME_WAIT for two minutes,
        twenty times as long as it is reported), and parsing each cost more than the rest of the dump."""
        fields = line.split(None, 4)
        if len(fields) < 5 or fields[3] not in _CLOSING:
            return False
        original = _ORIGINAL.match(fields[4])
        if original is None:
            return False
        # Read without the lock: only this thread adds flows, and a flow that report() drops meanwhile
        # is one handle() would not bring back.
        key = (Address(original[1], int(original[3])), Address(original[2], int(original[4])))
        return key not in self._flows

    def _end_missing(self, seen: set[tuple[Address, Address]], mono: float) -> None:
        """After a dump: open flows it did not list ended while events were lost."""
        with self._lock:
            for key, flow in self._flows.items():
                if flow.ended is None and key not in seen:
                    flow.ended = mono

    # ------------------------------------------------------------------------------------ stream

    def _follow(self, path: str) -> None:
        """Run `conntrack -E` (then dump the table, so nothing open is missed) until stopped; restart it
        with backoff when it dies."""
        backoff = BACKOFF_FIRST
        last_reason = ""
        while not self._stopping.is_set():
            began = time.monotonic()
            reason = self._run_once(path)
            if self._stopping.is_set():
                break
            if any(marker in reason for marker in _NO_PERMISSION):
                log.warning("conntrack: no permission (%s); short-lived connections will be missed", reason)
                return
            if time.monotonic() - began >= HEALTHY_RUN_SECONDS:
                backoff = BACKOFF_FIRST
            if reason != last_reason:
                log.warning("conntrack: event stream stopped (%s); restarting in %.1fs", reason, backoff)
            else:
                log.debug("conntrack: event stream stopped again (%s)", reason)
            last_reason = reason
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _run_once(self, path: str) -> str:
        """One life of the event stream; returns why it ended.

        A thread reads the stream from the start, while the table is dumped: left unread, the pipe
        would fill, conntrack would stop reading netlink, and the kernel would drop events (ENOBUFS).
        Lost events do not end the stream (conntrack goes on); the table is dumped again instead.
        """
        argv = [path, "-E", "-p", "tcp", "-e", "NEW,UPDATE,DESTROY", "-b", str(BUFFER_BYTES)]
        try:
            # Its own session: a Ctrl-C in the terminal is the probe's to handle; the tool is stopped
            # by stop(), not killed first and then mourned in the log as a broken stream.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {path}: {exc}"
        assert proc.stdout is not None
        lines: queue.SimpleQueue[tuple[list[str], float] | None] = queue.SimpleQueue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), name="conntrack-read", daemon=True)
        reader.start()
        with self._lock:
            self._proc = proc
        try:
            if self._stopping.is_set():
                return "stopping"
            dump_error = self._dump(path)
            if dump_error:
                return dump_error
            followed_at = dumped_at = time.monotonic()
            self._following.set()
            last_other = ""
            resync_due = False
            while True:
                due = time.monotonic() - dumped_at
                if (resync_due and due >= MIN_RESYNC_SECONDS) or (self._accounting and due >= ACCOUNTING_SECONDS):
                    dump_error = self._dump(path)
                    if dump_error:
                        return dump_error
                    dumped_at, resync_due = time.monotonic(), False
                try:
                    item = lines.get(timeout=1.0)
                except queue.Empty:
                    continue
                if item is None:
                    break
                batch, mono = item
                for line in batch:
                    if _HANDSHAKE in line:
                        continue
                    event = parse_flow(line)
                    if event is not None:
                        self.handle(event, mono)
                    elif any(marker in line for marker in _LOST_EVENTS):
                        self._note_loss(at_startup=mono - followed_at < STARTUP_GRACE_SECONDS)
                        resync_due = True
                    elif line.strip():
                        last_other = line.strip()
            return f"conntrack exited with {proc.wait()}" + (f": {last_other}" if last_other else "")
        finally:
            self._following.clear()
            with self._lock:
                self._proc = None
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            reader.join(timeout=5)
            proc.stdout.close()

    def _note_loss(self, *, at_startup: bool) -> None:
        """Count lost events; warn of the first loss that the start-up race does not explain."""
        with self._lock:
            self._losses += 1
            warn = not at_startup and not self._loss_warned
            self._loss_warned = self._loss_warned or warn
        if warn:
            log.warning("conntrack: events lost (ENOBUFS); the table is dumped again, connections may be missed")
        else:
            log.debug("conntrack: events lost (ENOBUFS%s); dumping the table again", " at start" if at_startup else "")

    def _dump(self, path: str) -> str:
        """Load the flows open now (`conntrack -L`), streamed; an error message, or "" on success."""
        try:
            proc = subprocess.Popen(
                [path, "-L", "-p", "tcp"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as exc:
            return f"cannot run {path} -L: {exc}"
        assert proc.stdout is not None and proc.stderr is not None
        mono = time.monotonic()
        seen: set[tuple[Address, Address]] = set()
        with proc.stdout, proc.stderr:
            for line in proc.stdout:
                if self._closed_elsewhere(line):
                    continue
                event = parse_flow(line)
                if event is not None and self.handle(event, mono):
                    seen.add((event.src, event.dst))
            error = proc.stderr.read(4096).strip()
        if proc.wait() != 0:
            return f"conntrack -L exited with {proc.returncode}: {error}"
        self._end_missing(seen, mono)
        return ""


def _add(total: int | None, more: int | None) -> int | None:
    """A sum of counters (bytes, packets) that stays unknown while all of them are."""
    if more is None:
        return total
    return more if total is None else total + more


def _read_lines(stream: IO[bytes], lines: queue.SimpleQueue[tuple[list[str], float] | None]) -> None:
    """Queue the lines of `stream` in batches, each with the monotonic time it was read, then None at its
    end (see READ_PAUSE_SECONDS)."""
    pending = b""
    try:
        fd = stream.fileno()
        while chunk := os.read(fd, READ_BYTES):
            batch = (pending + chunk).split(b"\n")
            pending = batch.pop()
            if batch:
                lines.put(([line.decode("utf-8", "replace") for line in batch], time.monotonic()))
            if len(chunk) < READ_BYTES // 4:
                time.sleep(READ_PAUSE_SECONDS)
    except (OSError, ValueError):
        pass  # closed under us: the stream is being stopped
    finally:
        if pending:
            lines.put(([pending.decode("utf-8", "replace")], time.monotonic()))
        lines.put(None)
