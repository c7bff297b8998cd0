"""`/api/health` fails while the bus receiver is down, and the receiver comes back by itself.

The app runs in this process so that the test can break its bus socket for real: closed under the
receiver, and its port taken by another socket so that the receiver cannot bind it again.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time

import tornado.httpclient
import zmq

from scope_app.main import ScopeApp
from scope_common import wire
from scope_common.report import Report
from tests.fixtures.ports import free_port, free_port_pair


async def _health(port: int) -> tuple[int, dict[str, object]]:
    client = tornado.httpclient.AsyncHTTPClient()
    response = await client.fetch(f"http://127.0.0.1:{port}/api/health", raise_error=False)
    return response.code, json.loads(response.body)


async def _until(port: int, status: int) -> dict[str, object]:
    for _ in range(200):
        code, body = await _health(port)
        if code == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"/api/health never answered {status}")


async def _reaches(app: ScopeApp, bus_port: int) -> None:
    """A probe's report reaches the app's collector through the bus."""
    context = zmq.Context()
    publisher = context.socket(zmq.PUB)
    publisher.connect(f"tcp://127.0.0.1:{bus_port}")
    try:
        for seq in range(1, 200):
            publisher.send(wire.encode(wire.Envelope("after-restart", "h", seq, time.time(), Report())))
            await asyncio.sleep(0.05)
            if "after-restart" in app.collector.probes:
                return
        raise AssertionError("no report reached the restarted receiver")
    finally:
        publisher.close(linger=0)
        context.term()


def test_health_fails_while_the_bus_is_down_and_the_receiver_restarts() -> None:
    # The control channel binds the port after the bus port: both must be free.
    bus_port, http_port = free_port_pair(), free_port()

    async def scenario() -> None:
        app = ScopeApp(f"tcp://127.0.0.1:{bus_port}", 15.0)
        app.start("127.0.0.1", http_port)
        try:
            await _until(http_port, 200)
            blocker = socket.socket()
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            app.receiver.close()
            # ZeroMQ releases the port on its own thread; the loop does not run meanwhile, so the
            # receiver cannot be restarted before the port is taken.
            for _ in range(500):
                try:
                    blocker.bind(("127.0.0.1", bus_port))
                    break
                except OSError:
                    time.sleep(0.01)
            blocker.listen()
            body = await _until(http_port, 503)
            assert body["down"] == ["bus"]
            assert app.supervisor.restarts["bus"] >= 1
            blocker.close()
            await _until(http_port, 200)
            assert app.receiver.address == f"tcp://127.0.0.1:{bus_port}"
            await _reaches(app, bus_port)
        finally:
            await app.stop()

    asyncio.run(scenario())


def test_an_app_whose_control_port_is_taken_fails_and_leaves_nothing_open() -> None:
    """The bus binds, the control channel's port after it is taken: the error reaches the caller, and
    the bus socket is closed with it (left open, collecting its context would wait on it for ever)."""
    bus_port = free_port_pair()
    script = f"""
import gc
from scope_app.main import ScopeApp
try:
    ScopeApp("tcp://127.0.0.1:{bus_port}", 15.0)
except Exception as exc:
    print("refused:", type(exc).__name__)
gc.collect()
print("done")
"""
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", bus_port + 1))
        blocker.listen()
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["refused:", "ZMQError", "done"], result.stdout + result.stderr
