"""The probe's one publishing socket, connected to every app it knows (or to one of them at a time, as
scope_probe.failover chooses).

It is an XPUB socket: it sends like PUB (the apps' SUB sockets see no difference), and it also
receives each app's subscription, which reaches it when the app has connected and will get every
message sent from then on. The probe sends full reports now and then and deltas in between; an app
that (re)connects needs a full report to start from, and the subscription is the moment to send it.
A socket monitor's "connected" or "handshake succeeded" event would come too early: the app's
subscription may not have arrived yet, and a PUB socket drops what it sends to a peer until then.
"""

from __future__ import annotations

import contextlib
import logging

import zmq

from scope_common.bus import configure_publisher
from scope_probe.service import HandshakeWatch, ServiceCredentials

log = logging.getLogger(__name__)


class Publisher:
    """Sends reports to a changing set of apps. Used from one thread only (ZeroMQ sockets are not
    thread-safe): discovery runs elsewhere and hands the addresses over through `set_apps`."""

    def __init__(
        self, context: zmq.Context[zmq.Socket[bytes]] | None = None, service: ServiceCredentials | None = None
    ) -> None:
        """`service`: publish to the multi-tenant service, encrypted, as the tenant of these credentials."""
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.XPUB)
        configure_publisher(self._socket)
        self._watch: HandshakeWatch | None = None
        if service is not None:
            service.apply(self._socket)
            self._watch = HandshakeWatch(self._socket, "report publisher")
        # Every app subscribes to everything (b""): without VERBOSE only the first one's subscription
        # would be passed up, and an app that reconnects would go unnoticed.
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)
        self._apps: set[str] = set()
        self.sent = 0
        self.dropped = 0

    @property
    def apps(self) -> frozenset[str]:
        return frozenset(self._apps)

    def set_apps(self, addresses: set[str]) -> None:
        """Connect to new apps and disconnect from ones no longer found."""
        for address in sorted(addresses - self._apps):
            try:
                self._socket.connect(address)
            except zmq.ZMQError as exc:
                log.warning("cannot connect to app at %s: %s", address, exc)
                continue
            if self._watch is not None:
                self._watch.rejoin(address)
            log.info("publishing to app at %s", address)
            self._apps.add(address)
        for address in sorted(self._apps - addresses):
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disconnect(address)
            if self._watch is not None:
                self._watch.leave(address)
            log.info("app at %s is gone", address)
            self._apps.discard(address)

    def new_subscribers(self) -> int:
        """How many apps subscribed since the last call: each gets every message sent from now on."""
        if self._watch is not None:  # called every publish: the socket's thread, often enough
            self._watch.poll()
        count = 0
        while True:
            try:
                message = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return count
            if message[:1] == b"\x01":  # \x00 is an unsubscription
                count += 1

    def send(self, message: bytes) -> bool:
        """Queue `message` for every connected app; never blocks. ZeroMQ drops it, silently, for an app
        whose queue is full: that app sees the gap in the sequence and waits for the next full report.
        False when the socket refused it altogether (counted in `dropped`)."""
        try:
            self._socket.send(message, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
        self._socket.close(linger=0)
