"""A compressed report that would inflate past the limit is refused before it is inflated, and counted."""

from __future__ import annotations

import time
import zlib

import msgpack
import zmq

from scope_common import wire
from tests.fixtures.scope import Scope, wait_for


def test_a_zlib_bomb_is_refused_and_counted(scope: Scope) -> None:
    app = scope.app()
    # 64 MiB + 1 of zeros: 65 KB on the wire, and refused having inflated no more than the limit.
    body = zlib.compress(b"\0" * (wire.MAX_REPORT_BYTES + 1), 9)
    envelope = {
        "v": wire.FORMAT_VERSION, "probe_id": "bomber", "host_id": "bomb-host", "seq": 1, "sent_at": time.time(),
        "version": "", "full": True, "base_seq": 0, "encoding": wire.ENCODING_ZLIB, "report": body,
    }  # fmt: skip
    message = msgpack.packb(envelope, use_bin_type=True)
    assert len(message) < 100_000
    key = 'scope_app_reports_dropped_total{reason="too_large"}'
    sender: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PUB)
    try:
        sender.connect(f"tcp://{app.bus}")

        def refused() -> bool:
            sender.send(message)  # again until the app's subscription has reached this socket
            return app.metrics().get(key, 0.0) >= 1

        wait_for(refused, timeout=15, interval=0.2, what="the bomb to be counted as too_large")
    finally:
        sender.close(linger=0)
    assert app.get("/api/probes") == [], "nothing of it was applied"
    assert "Traceback" not in app.log()
