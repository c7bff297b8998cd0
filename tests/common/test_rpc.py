"""The control channel's messages round-trip, and everything malformed is an RpcError with a reason."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scope_common import rpc
from scope_common.rpc import Message, RpcError

EVERY_KIND = rpc.PROBE_RECEIVES | rpc.APP_RECEIVES

GOOD = [
    Message.make(rpc.HELLO, probe_id="p1", host_id="h1", version="0.1.0"),
    Message.make(rpc.HEARTBEAT),
    Message.make(rpc.REQUEST, id=7, node="abc;<container>", control="docker_stop_container", args='{"a":1}'),
    Message.make(rpc.RESPONSE, id=7, status=rpc.REFUSED, value="", error="no", pipe="", removed_node=""),
    Message.make(rpc.PIPE_DATA, b"\x00\xffbytes", pipe="f" * 32),
    Message.make(rpc.PIPE_CREDIT, pipe="f" * 32, bytes=65536),
    Message.make(rpc.PIPE_RESIZE, pipe="f" * 32, cols=80, rows=24),
    Message.make(rpc.PIPE_CLOSE, pipe="f" * 32, reason="the stream ended"),
]


@pytest.mark.parametrize("message", GOOD, ids=lambda m: m.kind)
def test_every_kind_round_trips(message: Message) -> None:
    assert rpc.decode(rpc.encode(message), EVERY_KIND) == message


def _reason(raw: bytes, accept: frozenset[str] = EVERY_KIND) -> str:
    with pytest.raises(RpcError) as info:
        rpc.decode(raw, accept)
    return info.value.reason


def _raw(kind: object, fields: object, data: object = b"") -> bytes:
    packed: bytes = msgpack.packb([kind, fields, data], use_bin_type=True)
    return packed


def test_each_side_accepts_only_what_it_is_sent() -> None:
    request = rpc.encode(GOOD[2])
    assert _reason(request, rpc.APP_RECEIVES) == "unexpected_kind"  # a probe never asks the app for a control
    assert rpc.decode(request, rpc.PROBE_RECEIVES).kind == rpc.REQUEST
    assert _reason(rpc.encode(GOOD[0]), rpc.PROBE_RECEIVES) == "unexpected_kind"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),  # never used by msgpack
        (msgpack.packb({"kind": "hello"}), "malformed"),
        (_raw("hello", {}), "malformed"),  # fields missing
        (_raw("explode", {}), "unknown_kind"),
        (_raw(7, {}), "unknown_kind"),
        (_raw(rpc.HEARTBEAT, {"extra": 1}), "malformed"),
        (_raw(rpc.HEARTBEAT, [], b""), "malformed"),
        (_raw(rpc.HEARTBEAT, {}, b"data"), "malformed"),  # only pipe data carries bytes
        (_raw(rpc.PIPE_DATA, {"pipe": "x"}, "text, not bytes"), "malformed"),
        (_raw(rpc.PIPE_CREDIT, {"pipe": "x", "bytes": -1}), "malformed"),
        (_raw(rpc.PIPE_CREDIT, {"pipe": "x", "bytes": True}), "malformed"),  # a bool is not a number here
        (_raw(rpc.PIPE_CREDIT, {"pipe": "x", "bytes": 1.5}), "malformed"),
        (_raw(rpc.PIPE_CREDIT, {"pipe": "x", "bytes": 2**60}), "malformed"),
        (_raw(rpc.PIPE_RESIZE, {"pipe": "x", "cols": 0, "rows": 24}), "malformed"),
        (_raw(rpc.PIPE_RESIZE, {"pipe": "x", "cols": 80, "rows": 10**6}), "malformed"),
        (
            _raw(rpc.RESPONSE, {"id": 1, "status": "great", "value": "", "error": "", "pipe": "", "removed_node": ""}),
            "malformed",
        ),
        (_raw(rpc.PIPE_CLOSE, {"pipe": "x", "reason": "r" * (rpc.MAX_TEXT + 1)}), "malformed"),
        (_raw(rpc.HEARTBEAT, {}) + b"\x00", "malformed"),  # trailing bytes
        (b"\x00" * (rpc.MAX_RPC_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    assert _reason(raw) == reason


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_nothing_but_rpc_errors(raw: bytes) -> None:
    with contextlib.suppress(RpcError):
        rpc.decode(raw, EVERY_KIND)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(EVERY_KIND)),
    st.dictionaries(
        st.sampled_from(["pipe", "id", "bytes", "cols", "rows", "status", "probe_id", "x"]),
        st.one_of(
            st.integers(-(2**63), 2**64 - 1), st.text(max_size=5), st.booleans(), st.none(), st.binary(max_size=5)
        ),
        max_size=6,
    ),
)
def test_messages_with_the_wrong_fields_raise_nothing_but_rpc_errors(kind: str, fields: dict[str, object]) -> None:
    try:
        message = rpc.decode(_raw(kind, fields), EVERY_KIND)
    except RpcError:
        return
    # Whatever got through has exactly its kind's fields, of the right types.
    assert rpc.decode(rpc.encode(message), EVERY_KIND) == message


def test_the_control_port_is_beside_the_bus() -> None:
    assert rpc.control_address("tcp://10.0.0.1:4030") == "tcp://10.0.0.1:4031"
    assert rpc.control_address("tcp://[fd00::1]:4030") == "tcp://[fd00::1]:4031"
    with pytest.raises(ValueError):
        rpc.control_address("tcp://nowhere")
