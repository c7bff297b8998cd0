"""Benchmark: controls and pipes, browser side in, through app, control channel, probe and the real engine.

    python -m bench.controls [--rounds 30] [--echoes 200] [--megabytes 50]

Starts an app and a probe (subprocesses on loopback) and a busybox container (label scope.test=1, no
network: it needs none), then:
- control round trip: pause and unpause through `POST /api/control`, against the same calls made
  straight to the engine; the difference of the medians is what scope adds (goal: at most 20 ms).
  After every call the bench waits (untimed) until the engine reports the new state: a pause that
  follows an unpause too closely meets the engine's own race (its "paused" event, handled late, marks
  the running container paused again, and the next pause is refused as "already paused");
- map follows: after a control's answer, how long until the containers view shows the new state
  (goal: within 1 s);
- exec echo: one keystroke into a shell through the pipe's websocket until its echo is back (goal: 20 ms);
- pipe throughput: `cat` of --megabytes of random bytes in the exec'd shell, counted at the websocket
  (goal: at least 50 MB/s).
Everything it started is stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Any

import docker
import tornado.websocket

IMAGE = os.environ.get("SCOPE_TEST_IMAGE", "scope-test/busybox:latest")
#: What the shell prints after the file: typed as `BENCH-DONE-$((6*7))`, so the echo of the command line
#: (busybox's line editor echoes even in raw mode) does not end the count early.
MARK = b"BENCH-DONE-42"


def free_port_pair() -> int:
    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


def wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Stack:
    """An app and a probe on loopback."""

    def __init__(self, logs: str) -> None:
        self.http, bus = free_port_pair(), free_port_pair()
        self.url = f"http://127.0.0.1:{self.http}"
        self.processes = [
            subprocess.Popen(
                [sys.executable, "-m", "scope_app", f"--listen=127.0.0.1:{self.http}", f"--bus=127.0.0.1:{bus}"],
                stdout=open(os.path.join(logs, "app.log"), "wb"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "scope_probe",
                    "--hostname=bench-controls",
                    "--weave-dns-name=",
                    "--reverse-dns=off",
                    "--conntrack=off",
                    f"127.0.0.1:{bus}",
                ],
                stdout=open(os.path.join(logs, "probe.log"), "wb"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
            ),
        ]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def control(self, probe: str, node: str, control: str) -> dict[str, Any]:
        path = "/".join(urllib.parse.quote(p, safe="") for p in (probe, node, control))
        request = urllib.request.Request(f"{self.url}/api/control/{path}", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            body: dict[str, Any] = json.load(response)
            return body

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(10)


def controls_of(stack: Stack, node: str) -> dict[str, Any]:
    path = f"/api/topology/containers/{urllib.parse.quote(node, safe='')}"
    return {row["id"]: row for row in stack.get(path)["node"]["controls"]}


def settle(api: Any, cid: str, paused: bool) -> None:
    """Until the engine's own state says `paused` (see the module's docstring)."""
    wait(lambda: api.inspect_container(cid)["State"]["Paused"] == paused, 10, "the engine's state")


def round_trips(stack: Stack, api: Any, cid: str, probe: str, node: str, rounds: int) -> None:
    through, direct = [], []
    for _ in range(rounds):
        for control, paused in (("docker_pause_container", True), ("docker_unpause_container", False)):
            started = time.perf_counter()
            stack.control(probe, node, control)
            through.append(time.perf_counter() - started)
            settle(api, cid, paused)
        for call, paused in ((api.pause, True), (api.unpause, False)):
            started = time.perf_counter()
            call(cid)
            direct.append(time.perf_counter() - started)
            settle(api, cid, paused)
    scope_ms, engine_ms = statistics.median(through) * 1000, statistics.median(direct) * 1000
    print(
        f"control round trip (pause/unpause, {len(through)} each): through scope median {scope_ms:.1f} ms, "
        f"engine alone {engine_ms:.1f} ms, scope adds {scope_ms - engine_ms:.1f} ms (goal <= 20 ms)"
    )


def map_follows(stack: Stack, api: Any, cid: str, probe: str, node: str, rounds: int) -> None:
    """From a control's answer until the containers view shows the container's new state."""
    path = f"/api/topology/containers/{urllib.parse.quote(node, safe='')}"

    def shows_paused() -> bool:
        rows = {row["id"]: row["value"] for row in stack.get(path)["node"]["metadata"]}
        return "Paused" in rows.get("state", "")

    times = []
    for _ in range(rounds):
        for control, paused in (("docker_pause_container", True), ("docker_unpause_container", False)):
            stack.control(probe, node, control)
            answered = time.perf_counter()
            while shows_paused() != paused:
                if time.perf_counter() - answered > 10:
                    raise SystemExit("the map did not follow within 10 s")
                time.sleep(0.005)
            times.append(time.perf_counter() - answered)
            settle(api, cid, paused)
            time.sleep(0.2)
    times.sort()
    print(
        f"map follows a control ({len(times)} controls): median {statistics.median(times) * 1000:.0f} ms, "
        f"max {times[-1] * 1000:.0f} ms after the answer (goal <= 1000 ms)"
    )


async def open_exec(stack: Stack, probe: str, node: str) -> tornado.websocket.WebSocketClientConnection:
    pipe = stack.control(probe, node, "docker_exec_container")["pipe"]
    ws = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{stack.http}/api/pipe/{pipe}")
    await read_until(ws, b"# ")
    return ws


async def read_until(ws: tornado.websocket.WebSocketClientConnection, needle: bytes) -> int:
    """Bytes read until `needle` has arrived (kept in a small tail, so a long stream costs no memory)."""
    tail, total = b"", 0
    while needle not in tail:
        message = await asyncio.wait_for(ws.read_message(), 60)
        if message is None:
            raise SystemExit("the pipe closed")
        data = message if isinstance(message, bytes) else message.encode()
        total += len(data)
        tail = (tail + data)[-256:]
    return total


async def echoes(stack: Stack, probe: str, node: str, count: int) -> None:
    ws = await open_exec(stack, probe, node)
    times = []
    for i in range(count):
        key = b"abcdefghij"[i % 10 : i % 10 + 1]
        started = time.perf_counter()
        await ws.write_message(key, binary=True)
        await read_until(ws, key)
        times.append(time.perf_counter() - started)
    ws.close()
    times.sort()
    print(
        f"exec echo round trip ({count} keystrokes): median {statistics.median(times) * 1000:.1f} ms, "
        f"p90 {times[int(len(times) * 0.9)] * 1000:.1f} ms (goal <= 20 ms)"
    )


async def throughput(stack: Stack, probe: str, node: str, container: Any, megabytes: int) -> None:
    container.exec_run(["sh", "-c", f"head -c {megabytes * 1024 * 1024} /dev/urandom > /tmp/blob"])
    ws = await open_exec(stack, probe, node)
    # Raw mode: the terminal passes the bytes as they are (no \n -> \r\n), so the count is the file's size.
    await ws.write_message(b"stty raw -echo\n", binary=True)
    await asyncio.sleep(0.3)
    started = time.perf_counter()
    await ws.write_message(b"cat /tmp/blob; echo BENCH-DONE-$((6*7))\n", binary=True)
    total = await read_until(ws, MARK)
    elapsed = time.perf_counter() - started
    ws.close()
    print(
        f"pipe throughput (cat of {megabytes} MB through exec): {total / 1e6:.1f} MB in {elapsed:.2f} s, "
        f"{total / 1e6 / elapsed:.1f} MB/s (goal >= 50 MB/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="pause/unpause pairs")
    parser.add_argument("--echoes", type=int, default=200, help="keystrokes echoed")
    parser.add_argument("--megabytes", type=int, default=50, help="size of the file cat through the pipe")
    args = parser.parse_args()
    client = docker.from_env()
    logs = tempfile.mkdtemp(prefix="bench-controls-")
    stack = Stack(logs)
    container = client.containers.run(
        IMAGE,
        ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
        detach=True,
        network_mode="none",
        labels={"scope.test": "1", "scope.test.pid": str(os.getpid())},
    )
    try:
        node = f"{container.id};<container>"
        controls = wait(lambda: controls_of(stack, node), 20, "the container's controls")
        probe = controls["docker_pause_container"]["probeId"]
        wait(lambda: _reachable(stack, probe, node), 10, "the probe's control channel")
        round_trips(stack, client.api, container.id, probe, node, args.rounds)
        map_follows(stack, client.api, container.id, probe, node, max(1, args.rounds // 3))
        asyncio.run(echoes(stack, probe, node, args.echoes))
        asyncio.run(throughput(stack, probe, node, container, args.megabytes))
    finally:
        container.remove(force=True)
        stack.stop()
        print(f"logs in {logs}")


def _reachable(stack: Stack, probe: str, node: str) -> bool:
    try:
        stack.control(probe, node, "none")
    except urllib.error.HTTPError as exc:
        return exc.code == 400
    return False


if __name__ == "__main__":
    main()
