"""Pipes end to end, real Docker engine: a websocket client <-> app <-> control channel <-> probe <-> a shell
in a container, its logs, a shell on the host."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from tests.fixtures.docker import Containers
from tests.fixtures.scope import App, Scope, wait_for

HOST = "pipes-host"
HOST_NODE = f"{HOST};<host>"


@pytest.fixture
def app(scope: Scope) -> Iterator[App]:
    app = scope.app()
    scope.probe([app.bus], hostname=HOST)
    yield app


def _node_id(container: Any) -> str:
    return f"{container.id};<container>"


def _open_pipe(app: App, topology: str, node_id: str, control: str) -> str:
    """Ask for `control` on the node once it offers it and the probe is reachable; the pipe id."""

    def probe() -> str | None:
        status, body = app.get_status(f"/api/topology/{topology}/{urllib.parse.quote(node_id, safe='')}")
        rows = [row for row in body["node"]["controls"] if row["id"] == control] if status == 200 else []
        return rows[0]["probeId"] if rows else None

    probe_id = wait_for(probe, timeout=30, what=f"{control} on {node_id[:20]}")
    result: dict[str, Any] = {}

    def asked() -> bool:
        status, body = app.control(probe_id, node_id, control)
        result.update(body or {})
        return status != 404  # 404: the probe's channel is not up yet

    wait_for(asked, timeout=10, what="the probe's control channel")
    assert result["error"] is None and result["pipe"], result
    return str(result["pipe"])


class PipeClient:
    """A websocket to /api/pipe/{id}, as the browser's terminal holds it."""

    def __init__(self, ws: tornado.websocket.WebSocketClientConnection) -> None:
        self.ws = ws
        self.received = b""
        self.closed = False

    @classmethod
    async def connect(cls, app: App, pipe: str, **headers: str) -> PipeClient:
        request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{app.http_port}/api/pipe/{pipe}", headers=headers)
        return cls(await tornado.websocket.websocket_connect(request))

    async def send(self, data: str | bytes) -> None:
        await self.ws.write_message(data, binary=isinstance(data, bytes))

    async def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        """Everything received so far once it holds `needle`; fails the test on timeout or close."""
        deadline = time.monotonic() + timeout
        while needle not in self.received:
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                pytest.fail(f"no {needle!r} in what the pipe sent: {self.received[-500:]!r}")
            try:
                message = await asyncio.wait_for(self.ws.read_message(), left)
            except TimeoutError:
                continue
            if message is None:
                self.closed = True
            else:
                self.received += message if isinstance(message, bytes) else message.encode()
        return self.received

    async def wait_closed(self, timeout: float = 10.0) -> str:
        """The close reason once the app closes the websocket."""
        deadline = time.monotonic() + timeout
        while not self.closed:
            message = await asyncio.wait_for(self.ws.read_message(), max(0.0, deadline - time.monotonic()))
            if message is None:
                self.closed = True
            else:
                self.received += message if isinstance(message, bytes) else message.encode()
        return self.ws.close_reason or ""


def _running_execs(container: Any) -> list[str]:
    container.reload()
    api = container.client.api
    return [e for e in container.attrs.get("ExecIDs") or [] if api.exec_inspect(e)["Running"]]


def test_an_exec_pipe_runs_a_shell_in_the_container_resizes_it_and_ends_it_when_closed(
    app: App, containers: Containers
) -> None:
    container = containers.run(["sleep", "600"], name="shell")
    path = next(e.split("=", 1)[1] for e in container.attrs["Config"]["Env"] if e.startswith("PATH="))
    pipe = _open_pipe(app, "containers", _node_id(container), "docker_exec_container")

    async def session() -> None:
        client = await PipeClient.connect(app, pipe)
        await client.send("echo $PATH\n")  # a text frame
        output = await client.read_until(f"\r\n{path}\r\n".encode())
        assert b"echo $PATH" in output, "the terminal echoes what was typed"
        await client.send(json.dumps({"resize": [123, 45]}))
        await client.send(b"stty size\n")  # a binary frame
        await client.read_until(b"\r\n45 123\r\n")
        assert len(_running_execs(container)) == 1
        client.ws.close()

    asyncio.run(session())
    wait_for(lambda: not _running_execs(container), timeout=10, what="the exec'd shell to end with its websocket")
    # The pipe is gone: it cannot be opened again.
    status, _ = app.get_status(f"/api/pipe/{pipe}")
    assert status == 404


def test_a_shell_that_exits_closes_the_websocket_with_the_reason(app: App, containers: Containers) -> None:
    container = containers.run(["sleep", "600"], name="exits")
    pipe = _open_pipe(app, "containers", _node_id(container), "docker_exec_container")

    async def session() -> str:
        client = await PipeClient.connect(app, pipe)
        await client.send("exit\n")
        return await client.wait_closed()

    assert "ended" in asyncio.run(session())


def test_a_logs_pipe_shows_the_last_lines_then_follows(app: App, containers: Containers) -> None:
    script = "echo before; while :; do if [ -f /tmp/say ]; then cat /tmp/say; rm /tmp/say; fi; sleep 0.1; done"
    container = containers.run(["sh", "-c", script], name="logs")
    pipe = _open_pipe(app, "containers", _node_id(container), "docker_logs_container")

    async def session() -> None:
        client = await PipeClient.connect(app, pipe)
        await client.read_until(b"before\n")
        container.exec_run(["sh", "-c", "echo after-the-pipe-opened > /tmp/say"])
        await client.read_until(b"after-the-pipe-opened\n")
        client.ws.close()

    asyncio.run(session())


def test_attach_reaches_the_main_process_with_and_without_a_terminal(app: App, containers: Containers) -> None:
    # With a terminal (docker run -it): the container's own shell, resizable.
    tty = containers.run(["sh"], name="attach-tty", tty=True, stdin_open=True)
    pipe = _open_pipe(app, "containers", _node_id(tty), "docker_attach_container")

    async def with_terminal() -> None:
        client = await PipeClient.connect(app, pipe)
        await client.send(json.dumps({"resize": [101, 33]}))
        await client.send("echo attached-$((6 * 7)); stty size\n")
        await client.read_until(b"attached-42\r\n33 101")
        client.ws.close()

    asyncio.run(with_terminal())
    # Detaching is not ending: the container's shell runs on.
    time.sleep(0.5)
    tty.reload()
    assert tty.status == "running"

    # Without one (docker run -i): stdin in, stdout and stderr out, unwrapped from the engine's frames.
    plain = containers.run(
        ["sh", "-c", "while read line; do echo out-$line; echo err-$line >&2; done"],
        name="attach-plain",
        stdin_open=True,
    )
    pipe = _open_pipe(app, "containers", _node_id(plain), "docker_attach_container")

    async def without_terminal() -> None:
        client = await PipeClient.connect(app, pipe)
        await client.send(b"hello\n")
        # Both streams, in whichever order Docker delivers them (stdout and stderr are read apart).
        await client.read_until(b"err-hello\n")
        output = await client.read_until(b"out-hello\n")
        assert b"\x00" not in output, output
        client.ws.close()

    asyncio.run(without_terminal())


def test_a_browser_that_does_not_read_holds_the_shell_back(scope: Scope, containers: Containers) -> None:
    """A slow browser cannot make the probe (or the app) buffer without limit: the bytes in flight stop at
    the credit window and the sockets' buffers, and the shell writing them waits."""
    app = scope.app()
    probe = scope.probe([app.bus], hostname=HOST)
    container = containers.run(["sleep", "600"], name="slow")
    pipe = _open_pipe(app, "containers", _node_id(container), "docker_exec_container")
    block = 64 * 1024

    def blocks_written() -> int:
        code, out = container.exec_run(["cat", "/tmp/count"])
        return int(out.strip() or 0) if code == 0 else 0

    async def session() -> tuple[int, int, int]:
        client = await PipeClient.connect(app, pipe)
        # Raw mode: the terminal passes bytes as they are; then blocks of zeros, counted as they are written.
        await client.send(
            "stty raw -echo; i=0; while :; do head -c 65536 /dev/zero; i=$((i+1)); echo $i >/tmp/count; done\n"
        )
        # The browser reads nothing now: what the shell can write is bounded, and it then waits.
        await asyncio.sleep(3)
        stalled = wait_for(lambda: _unchanged(blocks_written), timeout=30, what="the shell to stop writing")
        rss = [_rss(pid) for pid in (app.pid, probe.pid)]
        # And it goes on once the browser reads again.
        await client.read_until(b"\x00" * 1000, timeout=10)
        moved = 0
        deadline = time.monotonic() + 10
        while moved <= stalled and time.monotonic() < deadline:
            message = await asyncio.wait_for(client.ws.read_message(), 10)
            assert message is not None
            moved = blocks_written()
        client.ws.close()
        return stalled, rss[0], rss[1]

    stalled, app_rss, probe_rss = asyncio.run(session())
    print(f"stalled after {stalled} blocks ({stalled * block / 1e6:.1f} MB); app {app_rss} MB, probe {probe_rss} MB")
    # The credit window (2 MiB) and the kernel's buffers on the way, far below what a free-running shell
    # writes in seconds (hundreds of MB).
    assert stalled * block < 64 * 1024 * 1024
    assert app_rss < 300 and probe_rss < 300


def _unchanged(count: Callable[[], int]) -> int:
    """`count()` if it is the same (and not 0) a second later, else 0 (for wait_for)."""
    first = count()
    time.sleep(1)
    return first if first and count() == first else 0


def _rss(pid: int) -> int:
    """Resident memory of a process, in MB."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) // 1024


def test_host_exec_is_a_shell_on_the_host(app: App) -> None:
    pipe = _open_pipe(app, "hosts", HOST_NODE, "host_exec")

    async def session() -> None:
        client = await PipeClient.connect(app, pipe)
        await client.send("echo $((6 * 7))-$(hostname)\n")
        await client.read_until(b"42-")
        client.ws.close()

    asyncio.run(session())


def test_a_pipe_opens_once_and_unknown_or_cross_site_pipes_are_refused(app: App, containers: Containers) -> None:
    container = containers.run(["sleep", "600"], name="once")
    pipe = _open_pipe(app, "containers", _node_id(container), "docker_exec_container")

    async def session() -> None:
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await PipeClient.connect(app, pipe, Origin="http://evil.example")
        assert refused.value.code == 403
        client = await PipeClient.connect(app, pipe)
        with pytest.raises(tornado.httpclient.HTTPClientError) as twice:
            await PipeClient.connect(app, pipe)
        assert twice.value.code == 409
        with pytest.raises(tornado.httpclient.HTTPClientError) as unknown:
            await PipeClient.connect(app, "0" * 32)
        assert unknown.value.code == 404
        client.ws.close()

    asyncio.run(session())


def test_a_read_only_app_refuses_pipes(scope: Scope) -> None:
    app = scope.app(extra=["--read-only"])

    async def session() -> None:
        with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
            await PipeClient.connect(app, "0" * 32)
        assert refused.value.code == 403

    asyncio.run(session())
