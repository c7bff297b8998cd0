"""The probe's end of the control channel: one DEALER per app, owned by one thread.

The probe finds apps as it always has (peers on the command line, every A record of the WeaveDNS
name); for each bus address it connects a DEALER to the control port beside it, with its probe id as
identity, and says `hello` every heartbeat. Apps heartbeat back; an app silent for rpc.PEER_TIMEOUT is
gone, and the pipes it had are closed. Whoever asked (`start`'s `on_app`: the probe publishing to one
app at a time, scope_probe.failover) is told when an app answers and when it goes silent.

ZeroMQ sockets belong to one thread, so every other thread (control workers, pipe threads) hands its
messages to `send`, which queues them and wakes the channel's thread through a pipe it polls.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import socket
import threading
import time
from collections.abc import Callable

import zmq

from scope_common import __version__, rpc
from scope_common.drops import Drops
from scope_common.supervise import Supervisor
from scope_probe.controls import Controls
from scope_probe.docker_controls import DockerControls
from scope_probe.host_controls import HostControls
from scope_probe.pipes import Pipes
from scope_probe.reporter import ProbeContext, Wake
from scope_probe.service import HandshakeWatch, ServiceCredentials

log = logging.getLogger(__name__)

#: Told an app's bus address and whether it answers (True) or stopped answering (False).
AppNews = Callable[[str, bool], None]


class ControlChannel:
    """Connects to every app's control port and serves the requests that come in."""

    def __init__(
        self,
        probe_id: str,
        host_id: str,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
        supervisor: Supervisor | None = None,
        service: ServiceCredentials | None = None,
    ) -> None:
        """`service`: the channel goes to the multi-tenant service, encrypted, with these credentials."""
        self.probe_id = probe_id
        self._service = service
        self._watches: dict[str, HandshakeWatch] = {}  # control address -> its handshakes (service only)
        self.host_id = host_id
        self.pipes = Pipes(self.send)
        #: Modules register their controls here before `start`.
        self.controls = Controls(probe_id, self.pipes)
        self._context = context or zmq.Context.instance()
        self._dealers: dict[str, zmq.Socket[bytes]] = {}  # control address -> socket; channel thread only
        self._heard: dict[str, float] = {}  # control address -> when it last heartbeated
        self._buses: dict[str, str] = {}  # control address -> the bus address it was derived from
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wanted: set[str] | None = None
        self._lock = threading.Lock()
        # A socket pair rather than os.pipe: once closed, a late `_signal` fails on the object instead
        # of writing to whatever file reused the descriptor.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._supervisor = supervisor or Supervisor(log)
        self._full_report: Callable[[], None] | None = None
        self._on_app: AppNews | None = None
        self._drops = Drops(log, "control channel dropped a message")
        #: Dropped messages by reason.
        self.dropped = self._drops.counts

    # ------------------------------------------------------------------ any thread

    def start(
        self, expedite: Wake, full_report: Callable[[], None] | None = None, on_app: AppNews | None = None
    ) -> None:
        """`full_report`: called when an app asks for a full report next (it missed a delta); `on_app`:
        called (on the channel's thread) with an app's bus address and True when it answers, False when it
        stops answering."""
        self._full_report = full_report
        self._on_app = on_app
        self.controls.start(expedite)
        self._thread = self._supervisor.start_thread("control-channel", self._run, self._stopping)

    def stop(self) -> None:
        self.controls.stop()
        self._stopping.set()
        self._signal()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._wake_r.close()
        self._wake_w.close()

    def set_apps(self, bus_addresses: set[str]) -> None:
        """The apps found now, by their bus addresses; the channel connects to each one's control port."""
        buses = {}
        for address in bus_addresses:
            try:
                buses[rpc.control_address(address)] = address
            except ValueError as exc:
                log.warning("%s", exc)
        with self._lock:
            self._wanted = set(buses)
            self._buses = buses
        self._signal()

    def send(self, app: str, message: rpc.Message) -> None:
        """Queue `message` for the app at control address `app`. Never blocks."""
        with self._lock:
            self._outbox.append((app, rpc.encode(message)))
        self._signal()

    def _signal(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # already signalled, or closed at exit
            self._wake_w.send(b"x")

    # ------------------------------------------------------------------ the channel's thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        next_beat = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._apply_apps(poller)
                self._flush()
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat(now)
                    # Quickly at first, so that an app can use a probe within moments of its start.
                    answered = self._heard.keys() >= self._dealers.keys()
                    next_beat = now + (rpc.HEARTBEAT_INTERVAL if answered else rpc.HEARTBEAT_INTERVAL / 10)
                timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000)) + 1
                for item, _ in poller.poll(timeout_ms):
                    if isinstance(item, zmq.Socket):
                        self._receive(item)
                    else:  # the wake socket, which the poller names by its descriptor
                        with contextlib.suppress(BlockingIOError):
                            self._wake_r.recv(4096)
        finally:
            for watch in self._watches.values():
                watch.close()
            self._watches.clear()
            for dealer in self._dealers.values():
                dealer.close(linger=0)
            # Should the thread be restarted after a failure, it connects to the same apps again.
            with self._lock:
                if self._wanted is None:
                    self._wanted = set(self._dealers)
            self._dealers.clear()
            self._heard.clear()

    def _apply_apps(self, poller: zmq.Poller) -> None:
        with self._lock:
            wanted, self._wanted = self._wanted, None
        if wanted is None:
            return
        for address in sorted(wanted - self._dealers.keys()):
            dealer = self._context.socket(zmq.DEALER)
            rpc.configure_dealer(dealer, self.probe_id)
            if self._service is not None:
                self._service.apply(dealer)
                self._watches[address] = HandshakeWatch(dealer, "control channel")
            try:
                dealer.connect(address)
            except zmq.ZMQError as exc:
                log.warning("cannot connect to the control port %s: %s", address, exc)
                self._close_watch(address)
                dealer.close(linger=0)
                continue
            log.info("control channel to %s", address)
            self._dealers[address] = dealer
            poller.register(dealer, zmq.POLLIN)
        for address in sorted(self._dealers.keys() - wanted):
            dealer = self._dealers.pop(address)
            poller.unregister(dealer)
            self._close_watch(address)
            dealer.close(linger=0)
            self._heard.pop(address, None)
            self.pipes.app_gone(address)
            log.info("control channel to %s closed: the app is no longer found, or the probe moved to another", address)

    def _close_watch(self, address: str) -> None:
        watch = self._watches.pop(address, None)
        if watch is not None:
            watch.close()

    def _hello(self) -> rpc.Message:
        return rpc.Message.make(rpc.HELLO, probe_id=self.probe_id, host_id=self.host_id, version=__version__)

    def _heartbeat(self, now: float) -> None:
        for watch in self._watches.values():
            watch.poll()
        hello = rpc.encode(self._hello())
        for address in self._dealers:
            # Unsent while the app is away (IMMEDIATE): that is what heartbeats are for, not a loss.
            with contextlib.suppress(zmq.ZMQError):
                self._dealers[address].send(hello, zmq.NOBLOCK)
        for address, heard in list(self._heard.items()):
            if now - heard > rpc.PEER_TIMEOUT:
                del self._heard[address]
                log.info("the app at %s stopped answering", address)
                self.pipes.app_gone(address)
                self._tell(address, alive=False)

    def _flush(self) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                address, raw = self._outbox.popleft()
            self._send_now(address, raw)

    def _tell(self, address: str, *, alive: bool) -> None:
        bus = self._buses.get(address)
        if self._on_app is not None and bus is not None:
            self._on_app(bus, alive)

    def _send_now(self, address: str, raw: bytes) -> None:
        dealer = self._dealers.get(address)
        if dealer is None:
            self._drops.add("no_app", f"a message for {address}, which is not connected")
            return
        try:
            dealer.send(raw, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            # Not connected (IMMEDIATE) or past the high-water mark: the app will time out or the
            # pipe will stall and be closed; the channel carries on.
            self._drops.add("unsent", f"to {address}: {exc}")

    def _receive(self, dealer: zmq.Socket[bytes]) -> None:
        address = next(a for a, s in self._dealers.items() if s is dealer)
        for _ in range(1000):  # bounded: the other apps get their turn
            try:
                raw = dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                message = rpc.decode(raw, rpc.PROBE_RECEIVES)
            except rpc.RpcError as exc:
                self._drops.add(exc.reason, str(exc))
                continue
            if address not in self._heard:
                log.info("the app at %s answers", address)
                self._tell(address, alive=True)
            self._heard[address] = time.monotonic()
            if message.kind == rpc.REQUEST:
                self.controls.handle(address, message, functools.partial(self.send, address))
            elif message.kind == rpc.FULL_REPORT:
                if self._full_report is not None:
                    self._full_report()
            elif message.kind != rpc.HEARTBEAT:
                self.pipes.receive(address, message)


def control_channel(ctx: ProbeContext, service: ServiceCredentials | None = None) -> ControlChannel:
    """The channel with every control this probe offers: the Docker engine's and the host's."""
    channel = ControlChannel(ctx.probe_id, ctx.host_id, supervisor=ctx.supervisor, service=service)
    DockerControls(ctx.docker_url).register(channel.controls)
    HostControls(ctx.host_id, ctx.proc_root).register(channel.controls)
    return channel
