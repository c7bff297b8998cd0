"""A probe of the multi-tenant service (`scope probe --service-token ...`): its sockets' CURVE
handshakes, followed so that a wrong token or key is said plainly and retried with a back-off.

ZeroMQ reconnects by itself after a lost connection or a failed CURVE handshake (a wrong
--service-key: the service cannot even read the probe's hello), but never again after the service's
authenticator refused the probe (a wrong or revoked --service-token). `HandshakeWatch` reads the
socket's monitor events, logs each failure with what to check, and hands back the endpoints to
connect again, each after a back-off that doubles to RETRY_MAX.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from scope_common.curve import KeyPair, connect_curve, parse_key, probe_keys

log = logging.getLogger(__name__)

RETRY_FIRST = 1.0
RETRY_MAX = 60.0

_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
)


@dataclass(frozen=True)
class ServiceCredentials:
    """What a probe of the service shows (its key pair, derived from its token) and pins (the service's key)."""

    keys: KeyPair
    service_key: str

    @classmethod
    def from_flags(cls, token: str, service_key: str) -> ServiceCredentials:
        """ValueError with what to fix when either is missing or not a key."""
        if not token.strip():
            raise ValueError("--service-token is empty")
        if not service_key:
            raise ValueError(
                "--service-key is needed with --service-token: the service_key `scope tenants add` printed"
            )
        return cls(probe_keys(token.strip()), parse_key(service_key))

    def apply(self, socket: zmq.Socket[Any]) -> None:
        """Make `socket` talk only to the service, as this tenant's probe (before it connects)."""
        connect_curve(socket, self.keys, self.service_key)


class HandshakeWatch:
    """Follows the handshakes of one socket (owned by the same thread as the socket)."""

    def __init__(self, socket: zmq.Socket[Any], what: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._socket = socket
        self._what = what
        self._clock = clock
        self._monitor = socket.get_monitor_socket(_EVENTS)
        self._retry_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._failed_before: set[str] = set()
        #: Endpoints the socket left: their late events are ignored.
        self._left: set[str] = set()

    def poll(self) -> None:
        """Read the events so far; connect again every endpoint whose back-off is over."""
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            endpoint = str(event["endpoint"].decode(errors="replace"))
            if endpoint not in self._left:
                self._event(int(event["event"]), int(event["value"]), endpoint)
        now = self._clock()
        for endpoint in [e for e, at in self._retry_at.items() if at <= now]:
            del self._retry_at[endpoint]
            with contextlib.suppress(zmq.ZMQError):
                self._socket.disconnect(endpoint)
            try:
                self._socket.connect(endpoint)
            except zmq.ZMQError as exc:
                log.warning("cannot connect the %s to the service at %s: %s", self._what, endpoint, exc)

    def leave(self, endpoint: str) -> None:
        """The socket left `endpoint` (the probe moved to another app): connect it again no more, whatever
        events of it are still to be read. Its back-off stands, should the probe come back to it."""
        self._left.add(endpoint)
        self._retry_at.pop(endpoint, None)

    def rejoin(self, endpoint: str) -> None:
        """The socket connects to `endpoint` again: follow it again."""
        self._left.discard(endpoint)

    def _event(self, kind: int, value: int, endpoint: str) -> None:
        if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            if endpoint in self._failed_before or endpoint not in self._backoff:
                log.info("the %s is connected to the service at %s (encrypted, key pinned)", self._what, endpoint)
            self._failed_before.discard(endpoint)
            self._backoff.pop(endpoint, None)
            return
        self._failed_before.add(endpoint)
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            backoff = min(RETRY_MAX, self._backoff.get(endpoint, RETRY_FIRST / 2) * 2)
            self._backoff[endpoint] = backoff
            self._retry_at[endpoint] = self._clock() + backoff
            log.error(
                "the service at %s refused this probe (status %d): the --service-token is wrong or was revoked; "
                "the %s tries again in %.0f s",
                endpoint,
                value,
                self._what,
                backoff,
            )
        elif endpoint not in self._backoff:
            # ZeroMQ retries these itself, backing off; said once until a handshake succeeds.
            self._backoff[endpoint] = 0.0
            log.error(
                "no encrypted handshake with the service at %s: is --service-key the service's key "
                "(and is it the scope service listening there)? Retrying",
                endpoint,
            )

    def close(self) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._socket.disable_monitor()
        self._monitor.close(linger=0)
