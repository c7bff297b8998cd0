"""Pipes on the app: `ws /api/pipe/{id}` joins a browser to a probe's pipe (a shell, logs).

A control that opens a pipe answers with its id; the app records it, and the browser then opens the
websocket. Bytes go both ways, each direction flow-controlled by credit (see scope_probe/pipes.py):
the app grants the probe PIPE_WINDOW_BYTES when the browser connects and grants more only as the
browser's websocket takes what came, so a slow browser holds the probe back rather than filling the
app's memory; keystrokes the other way wait for the probe's credit before the app reads more from the
browser. A pipe closes when either end goes, and the other end is told; a pipe nobody opens within
UNOPENED_TIMEOUT is closed at the probe too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import tornado.websocket

from scope_app.controls import ControlRouter, same_origin
from scope_app.tenancy import SINGLE_TENANT
from scope_common import rpc

log = logging.getLogger(__name__)

#: A pipe the browser has not opened within this long is closed.
UNOPENED_TIMEOUT = 30.0
#: Pipes at once, per probe and per browser (client address).
MAX_PIPES_PER_PROBE = 32
MAX_PIPES_PER_CLIENT = 16
#: Credit goes back to the probe in batches of at least this, or whenever the browser has taken all.
CREDIT_BATCH = rpc.PIPE_WINDOW_BYTES // 4


class AppPipe:
    """One pipe as the app sees it."""

    def __init__(self, pipe_id: str, probe_id: str, client: str, tenant: str = SINGLE_TENANT) -> None:
        self.id = pipe_id
        self.probe_id = probe_id
        self.client = client
        #: The tenant whose user opened it: only that tenant's requests find it.
        self.tenant = tenant
        self.created = time.monotonic()
        self.socket: PipeWebSocket | None = None
        #: Bytes sent to the probe that it has not acknowledged; the browser waits while it is a window.
        self.unacked_to_probe = 0
        self.credit = asyncio.Event()
        #: Bytes from the probe not yet taken by the browser's socket, and taken but not yet credited.
        self.unwritten = 0
        self.uncredited = 0
        self.closed = False


class PipeHub:
    """Every pipe of this app, by id; wired to the router for the probes' side."""

    def __init__(self, router: ControlRouter) -> None:
        self._router = router
        router.on_pipe = self.from_probe
        router.on_gone = self.probe_gone
        self.pipes: dict[str, AppPipe] = {}
        self.dropped: dict[str, int] = {}

    def add(self, probe_id: str, pipe_id: str, client: str, tenant: str = SINGLE_TENANT) -> bool:
        """Record a pipe a probe opened for `client`; False (and the probe told to close it) past a limit."""
        per_probe = sum(1 for p in self.pipes.values() if p.probe_id == probe_id)
        per_client = sum(1 for p in self.pipes.values() if p.client == client)
        if per_probe >= MAX_PIPES_PER_PROBE or per_client >= MAX_PIPES_PER_CLIENT or pipe_id in self.pipes:
            self._router.send(probe_id, rpc.Message.make(rpc.PIPE_CLOSE, pipe=pipe_id, reason="too many pipes"), tenant)
            return False
        self.pipes[pipe_id] = AppPipe(pipe_id, probe_id, client, tenant)
        return True

    def attach(self, pipe: AppPipe, socket: PipeWebSocket) -> None:
        """The browser connected: let the probe send."""
        pipe.socket = socket
        self._send(pipe, rpc.Message.make(rpc.PIPE_CREDIT, pipe=pipe.id, bytes=rpc.PIPE_WINDOW_BYTES))

    # ------------------------------------------------------------------ probe -> browser

    def from_probe(self, probe_id: str, message: rpc.Message) -> None:
        pipe = self.pipes.get(message.text("pipe"))
        if pipe is None or pipe.probe_id != probe_id:
            self.dropped["unknown_pipe"] = self.dropped.get("unknown_pipe", 0) + 1
            return
        if message.kind == rpc.PIPE_CLOSE:
            self.close(pipe, message.text("reason") or "the probe closed it", tell_probe=False)
        elif message.kind == rpc.PIPE_CREDIT:
            pipe.unacked_to_probe = max(0, pipe.unacked_to_probe - message.number("bytes"))
            pipe.credit.set()
        elif message.kind == rpc.PIPE_DATA:
            self._to_browser(pipe, message.data)

    def _to_browser(self, pipe: AppPipe, data: bytes) -> None:
        socket = pipe.socket
        if socket is None or pipe.unwritten + len(data) > rpc.PIPE_WINDOW_BYTES:
            self.dropped["past_credit"] = self.dropped.get("past_credit", 0) + 1
            self.close(pipe, "the probe sent more than it was allowed")
            return
        pipe.unwritten += len(data)
        try:
            written = socket.write_message(data, binary=True)
        except tornado.websocket.WebSocketClosedError:
            return  # on_close closes the pipe
        written.add_done_callback(lambda _: self._written(pipe, len(data)))

    def _written(self, pipe: AppPipe, size: int) -> None:
        """The browser's socket took `size` bytes: credit them back, in batches."""
        pipe.unwritten -= size
        pipe.uncredited += size
        if not pipe.closed and (pipe.uncredited >= CREDIT_BATCH or pipe.unwritten == 0):
            self._send(pipe, rpc.Message.make(rpc.PIPE_CREDIT, pipe=pipe.id, bytes=pipe.uncredited))
            pipe.uncredited = 0

    # ------------------------------------------------------------------ browser -> probe

    async def to_probe(self, pipe: AppPipe, data: bytes) -> None:
        """Send the browser's bytes, waiting for credit: the browser's next message is read only after."""
        view = memoryview(data)
        while view and not pipe.closed:
            chunk = bytes(view[: rpc.PIPE_CHUNK_BYTES])
            while pipe.unacked_to_probe + len(chunk) > rpc.PIPE_WINDOW_BYTES and not pipe.closed:
                pipe.credit.clear()
                await pipe.credit.wait()
            if pipe.closed:
                return
            pipe.unacked_to_probe += len(chunk)
            self._send(pipe, rpc.Message.make(rpc.PIPE_DATA, chunk, pipe=pipe.id))
            view = view[len(chunk) :]

    def resize(self, pipe: AppPipe, cols: int, rows: int) -> None:
        self._send(pipe, rpc.Message.make(rpc.PIPE_RESIZE, pipe=pipe.id, cols=cols, rows=rows))

    def _send(self, pipe: AppPipe, message: rpc.Message) -> None:
        """To the pipe's probe, as a probe of the pipe's tenant (through the replica holding it, if another)."""
        self._router.send(pipe.probe_id, message, pipe.tenant)

    # ------------------------------------------------------------------ ends

    def close(self, pipe: AppPipe, reason: str, *, tell_probe: bool = True) -> None:
        """End `pipe`: the browser's socket is closed with `reason`, the probe told unless it asked."""
        if pipe.closed:
            return
        pipe.closed = True
        pipe.credit.set()  # wakes a writer waiting for credit
        self.pipes.pop(pipe.id, None)
        if tell_probe:
            self._send(pipe, rpc.Message.make(rpc.PIPE_CLOSE, pipe=pipe.id, reason=reason[:200]))
        if pipe.socket is not None:
            pipe.socket.close(1000, reason.encode()[:120].decode(errors="ignore"))
        log.info("pipe %s of probe %s closed: %s", pipe.id, pipe.probe_id, reason)

    def probe_gone(self, probe_id: str) -> None:
        for pipe in [p for p in self.pipes.values() if p.probe_id == probe_id]:
            self.close(pipe, "the probe went away", tell_probe=False)

    async def collect_forever(self, interval: float = 5.0) -> None:
        """Close the pipes nobody opened in time, so a control whose answer was never used costs nothing."""
        while True:
            await asyncio.sleep(interval)
            self.collect(time.monotonic())

    def collect(self, now: float) -> None:
        for pipe in list(self.pipes.values()):
            if pipe.socket is None and now - pipe.created > UNOPENED_TIMEOUT:
                self.close(pipe, "nobody opened the pipe")

    def close_all(self) -> None:
        for pipe in list(self.pipes.values()):
            self.close(pipe, "the app is stopping")


class PipeWebSocket(tornado.websocket.WebSocketHandler):
    """`ws /api/pipe/{id}`: binary frames carry bytes both ways; a text frame is bytes too, unless it
    is a JSON object `{"resize": [cols, rows]}`."""

    def initialize(self, hub: PipeHub, read_only: bool, allowed_origins: frozenset[str], tenant: str) -> None:
        self.hub = hub
        self.read_only = read_only
        self.allowed_origins = allowed_origins
        self.tenant = tenant
        self.pipe: AppPipe | None = None

    def check_origin(self, origin: str) -> bool:
        return same_origin(self.request, self.allowed_origins)

    async def get(self, *args: Any, **kwargs: Any) -> None:
        pipe = self.hub.pipes.get(args[0] if args else "")
        if pipe is not None and pipe.tenant != self.tenant:
            pipe = None  # another tenant's pipe is no pipe at all
        status, error = 0, ""
        if self.read_only:
            status, error = 403, "this app is read-only: pipes are off"
        elif not same_origin(self.request, self.allowed_origins):
            status, error = 403, "cross-site pipe requests are refused"
        elif pipe is None:
            status, error = 404, "no such pipe (it may have closed, or never been opened in time)"
        elif pipe.socket is not None:
            status, error = 409, "the pipe is open in another window"
        if status:
            self.set_status(status)
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(json.dumps({"error": error}))
            return
        self.pipe = pipe
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        assert self.pipe is not None
        self.set_nodelay(True)  # keystrokes and their echo are small: no Nagle delay
        if self.pipe.closed:
            self.close(1000, "the pipe closed")
            return
        self.hub.attach(self.pipe, self)

    async def on_message(self, message: str | bytes) -> None:
        pipe = self.pipe
        if pipe is None or pipe.closed:
            return
        if isinstance(message, str):
            resize = _resize(message)
            if resize is not None:
                self.hub.resize(pipe, *resize)
                return
            message = message.encode()
        await self.hub.to_probe(pipe, message)

    def on_close(self) -> None:
        if self.pipe is not None:
            self.hub.close(self.pipe, "the browser closed it")


def _resize(text: str) -> tuple[int, int] | None:
    """(cols, rows) of a `{"resize": [cols, rows]}` message; None for any other text."""
    if not text.startswith("{"):
        return None
    with contextlib.suppress(ValueError):
        value = json.loads(text)
        size = value.get("resize") if isinstance(value, dict) else None
        if (
            isinstance(size, list)
            and len(size) == 2
            and all(type(side) is int and 0 < side <= rpc.MAX_TTY_SIDE for side in size)
        ):
            return size[0], size[1]
    return None
