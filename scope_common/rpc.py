"""The control channel: small msgpack messages between an app's ROUTER and every probe's DEALER.

The report bus only goes one way (probes publish, apps listen). Controls need the other way too: the
app asks a probe to stop a container and waits for the answer, and a shell's bytes flow both ways. So
the app binds a ROUTER beside its bus (the bus port + 1) and each probe connects one DEALER to every
app it publishes to, with its probe id as the DEALER's identity: the probe still needs nothing but the
app's address, and the app can address any probe that is connected now.

Each message is one ZeroMQ frame holding the msgpack array `[kind, fields, data]`: a kind from a fixed
list, a map of named fields whose names and types the kind fixes, and a byte payload (pipe data only).
Both sides heartbeat (the probe's heartbeat is its `hello`), so each knows within seconds which peers
it can reach. Everything from the network is hostile: `decode` checks the size, the kind, and every
field's name, type and bounds, and raises `RpcError` (with a short reason to count) for anything else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

from scope_common.bus import set_liveness

#: The control channel listens on the bus port + this, so that a probe derives it from the bus address.
CONTROL_PORT_OFFSET = 1
#: Largest message either side accepts; ZeroMQ drops the connection of a peer that sends more.
MAX_RPC_MESSAGE_BYTES = 1024 * 1024
#: Pipe bytes travel in chunks of at most this.
PIPE_CHUNK_BYTES = 256 * 1024
#: Bytes of a pipe a sender may have in flight before the receiver acknowledges them (`pipe_credit`):
#: the end-to-end flow control that keeps a slow browser from making the probe buffer without limit.
PIPE_WINDOW_BYTES = 2 * 1024 * 1024
#: Each side says it is alive this often; a peer silent for PEER_TIMEOUT is gone.
HEARTBEAT_INTERVAL = 1.0
PEER_TIMEOUT = 3.5
#: How long the app waits for a probe to answer a control.
REQUEST_TIMEOUT = 10.0
#: Longest text field (ids, labels, error messages).
MAX_TEXT = 4096
#: Largest terminal size a resize may ask for.
MAX_TTY_SIDE = 10_000

# Kinds of message.
HELLO = "hello"  # probe -> app, also its heartbeat: who the probe is
HEARTBEAT = "heartbeat"  # app -> probe
REQUEST = "request"  # app -> probe: perform a control
RESPONSE = "response"  # probe -> app: its outcome
PIPE_DATA = "pipe_data"  # both ways: bytes of a pipe
PIPE_CREDIT = "pipe_credit"  # both ways: the receiver took this many bytes; send more
PIPE_RESIZE = "pipe_resize"  # app -> probe: the terminal's new size
PIPE_CLOSE = "pipe_close"  # both ways: this end is gone
FULL_REPORT = "full_report"  # app -> probe: make the next report a full one (the app missed a delta)

# Outcomes of a request (RESPONSE `status`).
OK = "ok"
UNKNOWN_NODE = "unknown_node"
UNKNOWN_CONTROL = "unknown_control"
REFUSED = "refused"  # the engine said no (start a running container)
FAILED = "failed"  # anything else went wrong
BUSY = "busy"  # too many requests or pipes at once
STATUSES = frozenset({OK, UNKNOWN_NODE, UNKNOWN_CONTROL, REFUSED, FAILED, BUSY})

_SCHEMA: dict[str, dict[str, type]] = {
    HELLO: {"probe_id": str, "host_id": str, "version": str},
    HEARTBEAT: {},
    REQUEST: {"id": int, "node": str, "control": str, "args": str},
    RESPONSE: {"id": int, "status": str, "value": str, "error": str, "pipe": str, "removed_node": str},
    PIPE_DATA: {"pipe": str},
    PIPE_CREDIT: {"pipe": str, "bytes": int},
    PIPE_RESIZE: {"pipe": str, "cols": int, "rows": int},
    PIPE_CLOSE: {"pipe": str, "reason": str},
    FULL_REPORT: {},
}

#: What each side accepts; anything else from the network is dropped.
PROBE_RECEIVES = frozenset({HEARTBEAT, REQUEST, PIPE_DATA, PIPE_CREDIT, PIPE_RESIZE, PIPE_CLOSE, FULL_REPORT})
APP_RECEIVES = frozenset({HELLO, RESPONSE, PIPE_DATA, PIPE_CREDIT, PIPE_CLOSE})

_MAX_INT = 2**53


class RpcError(ValueError):
    """A message that cannot be used. `reason` is a short stable word, used as a counter label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """One control-channel message. Build it with `Message.make`, which fills the fields in order."""

    kind: str
    fields: Mapping[str, str | int] = field(default_factory=dict)
    data: bytes = b""

    @classmethod
    def make(cls, kind: str, data: bytes = b"", **fields: str | int) -> Message:
        return cls(kind, fields, data)

    def text(self, name: str) -> str:
        """A text field (decode checked it is one)."""
        value = self.fields[name]
        assert isinstance(value, str)
        return value

    def number(self, name: str) -> int:
        """A whole-number field (decode checked it is one)."""
        value = self.fields[name]
        assert isinstance(value, int)
        return value


def encode(message: Message) -> bytes:
    packed: bytes = msgpack.packb([message.kind, dict(message.fields), message.data], use_bin_type=True)
    return packed


def decode(raw: bytes, accept: frozenset[str]) -> Message:
    """The message in `raw`, if it is one of the kinds in `accept`. Raises RpcError, and only that."""
    if len(raw) > MAX_RPC_MESSAGE_BYTES:
        raise RpcError("too_large", f"{len(raw)} bytes")
    try:
        value = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_TEXT,
            max_bin_len=MAX_RPC_MESSAGE_BYTES,
            max_array_len=3,
            max_map_len=8,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise RpcError("malformed", f"msgpack: {type(exc).__name__}") from None
    if type(value) is not list or len(value) != 3:
        raise RpcError("malformed", "not a [kind, fields, data] array")
    kind, fields, data = value
    if type(kind) is not str or kind not in _SCHEMA:
        raise RpcError("unknown_kind", repr(kind)[:40])
    if kind not in accept:
        raise RpcError("unexpected_kind", kind)
    if type(fields) is not dict or type(data) is not bytes:
        raise RpcError("malformed", f"{kind}: fields or data of the wrong type")
    if data and kind != PIPE_DATA:
        raise RpcError("malformed", f"{kind}: unexpected data")
    schema = _SCHEMA[kind]
    if fields.keys() != schema.keys():
        raise RpcError("malformed", f"{kind}: fields {sorted(fields)[:8]}")
    for name, kind_of in schema.items():
        item = fields[name]
        if type(item) is not kind_of:
            raise RpcError("malformed", f"{kind}.{name} is not a {kind_of.__name__}")
        if isinstance(item, int) and not 0 <= item < _MAX_INT:
            raise RpcError("malformed", f"{kind}.{name} out of range")
    if kind == RESPONSE and fields["status"] not in STATUSES:
        raise RpcError("malformed", f"unknown status {fields['status'][:20]!r}")
    if kind == PIPE_RESIZE and not all(0 < fields[side] <= MAX_TTY_SIDE for side in ("cols", "rows")):
        raise RpcError("malformed", "terminal size out of range")
    return Message(kind, fields, data)


def control_address(bus_address: str) -> str:
    """The control channel's ZeroMQ address for an app whose bus is at `bus_address` (`tcp://host:port`)."""
    head, sep, port = bus_address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"no port in bus address {bus_address!r}")
    return f"{head}:{int(port) + CONTROL_PORT_OFFSET}"


def configure_router(socket: zmq.Socket[Any]) -> None:
    """Options for the app's ROUTER."""
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_RPC_MESSAGE_BYTES)
    # A send to a probe that is not connected fails at once instead of vanishing silently.
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A probe that reconnects (a new TCP connection, same id) takes its identity over from the old one.
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    _configure(socket)


def configure_dealer(socket: zmq.Socket[Any], identity: str) -> None:
    """Options for one of a probe's DEALERs."""
    socket.setsockopt(zmq.ROUTING_ID, identity.encode())
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_RPC_MESSAGE_BYTES)
    # Nothing is queued for an app that is not connected: a request's answer would be stale.
    socket.setsockopt(zmq.IMMEDIATE, 1)
    _configure(socket)


def _configure(socket: zmq.Socket[Any]) -> None:
    # Pipes are bounded by their credit windows, so queues never grow past a few windows; the high
    # water marks only stop a peer that ignores the protocol.
    socket.setsockopt(zmq.SNDHWM, 10_000)
    socket.setsockopt(zmq.RCVHWM, 10_000)
    socket.setsockopt(zmq.LINGER, 0)
    set_liveness(socket)
