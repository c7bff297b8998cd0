"""The ZAP authenticator of the service's bus and control channel: a probe's CURVE public key is
admitted when it is a tenant's, and becomes the connection's User-Id, which every message it carries
then has as a property (`frame.get("User-Id")`). The tenant of that key, never anything inside a
message, is the tenant a report is filed under. The key rather than the tenant's name: a tenant
revoked and added again under the same name has new tokens, and the old connections must not count
as the new tenant's.

Its own small handler rather than pyzmq's Authenticator: the registry is the one list of keys, looked
up per connection, so a tenant added by `scope tenants add` gets in at once. The sockets set
ZAP_ENFORCE_DOMAIN (scope_common.curve.serve_curve): while this handler is not running, every
connection is refused rather than let in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq
import zmq.asyncio

from scope_common.drops import Drops

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_VERSION = b"1.0"

#: Whether a public key (hex) is a tenant's.
Admits = Callable[[str], bool]


class ZapHandler:
    def __init__(self, context: zmq.asyncio.Context, admits: Admits) -> None:
        self._admits = admits
        self._socket = context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(ZAP_ENDPOINT)
        self._refusals = Drops(log, "refused a probe's connection")
        #: Refused connections by reason.
        self.refused = self._refusals.counts
        self.admitted = 0

    async def run(self) -> None:
        while True:
            request = await self._socket.recv_multipart()
            await self._socket.send_multipart(self.answer(request))

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply to `request` (RFC 27): 200 with the key as User-Id, or 400."""
        if len(request) < 6 or request[0] != ZAP_VERSION:
            self._refusals.add("malformed", "a ZAP request of the wrong shape")
            return [ZAP_VERSION, request[1] if len(request) > 1 else b"", b"400", b"malformed", b"", b""]
        request_id, address, mechanism, credentials = request[1], request[3], request[5], request[6:]
        peer = address.decode(errors="replace")
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            self._refusals.add("not_curve", f"from {peer}: mechanism {mechanism[:20]!r}")
            return [ZAP_VERSION, request_id, b"400", b"CURVE only", b"", b""]
        key = credentials[0].hex()
        if not self._admits(key):
            # The most common cause by far: a probe started with a token that is wrong or was revoked.
            self._refusals.add(
                "unknown_key", f"from {peer}: key {key[:8]}... is no tenant's (a wrong or revoked token)"
            )
            return [ZAP_VERSION, request_id, b"400", b"unknown probe token", b"", b""]
        self.admitted += 1
        return [ZAP_VERSION, request_id, b"200", b"OK", key.encode(), b""]

    def close(self) -> None:
        self._socket.close(linger=0)
