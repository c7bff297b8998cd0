"""The probe's one PUB socket, connected to every app it knows."""

from __future__ import annotations

import contextlib
import logging

import zmq

from scope_common.bus import configure_publisher

log = logging.getLogger(__name__)


class Publisher:
    """Sends reports to a changing set of apps. Used from one thread only (ZeroMQ sockets are not
    thread-safe): discovery runs elsewhere and hands the addresses over through `set_apps`."""

    def __init__(self, context: zmq.Context[zmq.Socket[bytes]] | None = None) -> None:
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUB)
        configure_publisher(self._socket)
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
            log.info("publishing to app at %s", address)
            self._apps.add(address)
        for address in sorted(self._apps - addresses):
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disconnect(address)
            log.info("app at %s is gone", address)
            self._apps.discard(address)

    def send(self, message: bytes) -> None:
        """Queue `message` for every connected app; never blocks (a full queue drops the report)."""
        try:
            self._socket.send(message, zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1

    def close(self) -> None:
        self._socket.close(linger=0)
