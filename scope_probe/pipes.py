"""Pipes: live byte streams between something on this host (a shell in a container, its logs) and an app.

A control such as exec answers with a pipe id; the app connects a browser to it, and bytes then flow
both ways over the control channel. Each direction is flow-controlled by credit: a sender has at most
PIPE_WINDOW_BYTES unacknowledged, and the receiver acknowledges (`pipe_credit`) what it has passed on.
So a browser that reads slowly stops the app acknowledging, which stops this probe reading from
Docker, which stops the shell: nothing buffers without limit anywhere.

Every pipe has two threads: one reads its stream and sends to the app, one writes what the app sends
into the stream (and resizes it). Neither ever runs on the control channel's thread, so a stuck
stream holds only itself.
"""

from __future__ import annotations

import abc
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from scope_common import rpc

log = logging.getLogger(__name__)

#: Pipes open at once on this probe; a control asking for more is refused as busy.
MAX_PIPES = 32
#: A pipe the app never starts reading within this long is closed (the app collects its own at 30 s).
OPEN_TIMEOUT = 35.0

#: Sends a message to one app: (app address, message). Thread-safe, never blocks.
Send = Callable[[str, rpc.Message], None]


class PipeBusy(Exception):
    """Too many pipes are open."""


class Stream(abc.ABC):
    """The probe's end of a pipe: a byte stream in a container or on the host."""

    #: Whether the stream is a terminal (resizing means something).
    tty = False

    @abc.abstractmethod
    def read(self) -> bytes:
        """The next bytes, at most rpc.PIPE_CHUNK_BYTES; b"" at the end. Blocks; `close` unblocks it."""

    def write(self, data: bytes) -> None:  # noqa: B027 - read-only streams (logs) ignore input
        """Send `data` into the stream (keystrokes)."""

    def resize(self, cols: int, rows: int) -> None:  # noqa: B027 - only terminals resize
        """Tell the terminal its new size."""

    @abc.abstractmethod
    def close(self) -> None:
        """End the stream: quick (it may run on the control channel's thread), safe from any thread and
        more than once. It unblocks `read`."""

    def release(self) -> None:  # noqa: B027 - most streams have nothing more to free
        """Free what outlives the connection (the process it ran); may block. Called once, last, on the
        pipe's own thread."""


@dataclass(frozen=True, slots=True)
class _Resize:
    cols: int
    rows: int


_STOP = object()


class Pipe:
    """One open pipe: its stream, the app it talks to, and the credit of each direction."""

    def __init__(self, pipe_id: str, app: str, stream: Stream, send: Send, on_done: Callable[[Pipe], None]) -> None:
        self.id = pipe_id
        self.app = app
        self.stream = stream
        self._send = send
        self._on_done = on_done
        self._lock = threading.Condition()
        self._credit = 0  # bytes the app may still receive
        self._opened = False
        self._closed = False
        self._reason = ""
        self._inbound: queue.Queue[object] = queue.Queue()
        self._inbound_bytes = 0  # queued for the stream, not yet acknowledged

    def start(self) -> None:
        threading.Thread(target=self._read_loop, name=f"pipe-out-{self.id[:8]}", daemon=True).start()
        threading.Thread(target=self._write_loop, name=f"pipe-in-{self.id[:8]}", daemon=True).start()

    # -------------------------------------------------------------------- from the control channel

    def credit(self, amount: int) -> None:
        with self._lock:
            self._credit = min(self._credit + amount, rpc.PIPE_WINDOW_BYTES)
            self._opened = True
            self._lock.notify_all()

    def data(self, data: bytes) -> None:
        with self._lock:
            self._inbound_bytes += len(data)
            over = self._inbound_bytes > rpc.PIPE_WINDOW_BYTES
        if over:
            # The app ignored the credit it was given: the protocol is broken, so is the pipe.
            self.close("the app sent past its credit")
            return
        self._inbound.put(data)

    def resize(self, cols: int, rows: int) -> None:
        self._inbound.put(_Resize(cols, rows))

    def close(self, reason: str, *, tell_app: bool = True) -> None:
        """End the pipe: the stream is closed, the threads finish, and the app is told unless it asked."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._reason = reason
            self._lock.notify_all()
        self._inbound.put(_STOP)
        try:
            self.stream.close()
        except Exception:
            log.exception("closing pipe %s", self.id)
        if tell_app:
            self._send(self.app, rpc.Message.make(rpc.PIPE_CLOSE, pipe=self.id, reason=reason))
        log.info("pipe %s closed: %s", self.id, reason)
        self._on_done(self)

    # -------------------------------------------------------------------- the two threads

    def _read_loop(self) -> None:
        try:
            self._pump()
        finally:
            try:
                self.stream.release()
            except Exception:
                log.exception("releasing pipe %s", self.id)

    def _pump(self) -> None:
        """Stream -> app, never more than the credit the app gave."""
        deadline = time.monotonic() + OPEN_TIMEOUT
        with self._lock:
            while not self._opened and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            opened = self._opened or self._closed
        if not opened:
            self.close("nobody opened the pipe")
            return
        reason = "the stream ended"
        try:
            while True:
                chunk = self.stream.read()
                if not chunk:
                    break
                if not self._send_chunk(chunk):
                    return
        except Exception as exc:
            if self._closed:
                return
            reason = f"the stream failed: {exc}"
        self.close(reason)

    def _send_chunk(self, chunk: bytes) -> bool:
        view = memoryview(chunk)
        while view:
            with self._lock:
                while self._credit <= 0 and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return False
                size = min(len(view), self._credit, rpc.PIPE_CHUNK_BYTES)
                self._credit -= size
            self._send(self.app, rpc.Message.make(rpc.PIPE_DATA, bytes(view[:size]), pipe=self.id))
            view = view[size:]
        return True

    def _write_loop(self) -> None:
        """App -> stream: keystrokes and resizes, in order, acknowledged once written."""
        written = 0
        while True:
            item = self._inbound.get()
            if item is _STOP:
                return
            try:
                if isinstance(item, _Resize):
                    if self.stream.tty:
                        self.stream.resize(item.cols, item.rows)
                else:
                    assert isinstance(item, bytes)
                    self.stream.write(item)
                    with self._lock:
                        self._inbound_bytes -= len(item)
                    written += len(item)
            except Exception as exc:
                self.close(f"writing to the stream failed: {exc}")
                return
            # Acknowledge in batches while more is queued, at once when the queue is drained: a
            # keystroke's credit goes back straight away, a paste's in a few messages.
            if written and (self._inbound.empty() or written >= rpc.PIPE_WINDOW_BYTES // 4):
                self._send(self.app, rpc.Message.make(rpc.PIPE_CREDIT, pipe=self.id, bytes=written))
                written = 0


class Pipes:
    """Every open pipe of this probe, by id."""

    def __init__(self, send: Send, *, max_pipes: int = MAX_PIPES) -> None:
        self._send = send
        self._max = max_pipes
        self._lock = threading.Lock()
        self._pipes: dict[str, Pipe] = {}
        self.dropped: dict[str, int] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._pipes)

    def open(self, app: str, stream: Stream) -> str:
        """Start a pipe between `app` and `stream`; its id. Raises PipeBusy when too many are open
        (the stream is then closed)."""
        pipe_id = secrets.token_hex(16)
        with self._lock:
            if len(self._pipes) >= self._max:
                busy = True
            else:
                busy = False
                pipe = self._pipes[pipe_id] = Pipe(pipe_id, app, stream, self._send, self._forget)
        if busy:
            stream.close()
            raise PipeBusy(f"{self._max} pipes are open already")
        pipe.start()
        return pipe_id

    def receive(self, app: str, message: rpc.Message) -> None:
        """A pipe message from `app` (control channel thread: must not block)."""
        with self._lock:
            pipe = self._pipes.get(message.text("pipe"))
        if pipe is None or pipe.app != app:
            # Late messages for a pipe that just closed are normal; count them, do not log each.
            self.dropped["unknown_pipe"] = self.dropped.get("unknown_pipe", 0) + 1
            return
        if message.kind == rpc.PIPE_DATA:
            pipe.data(message.data)
        elif message.kind == rpc.PIPE_CREDIT:
            pipe.credit(message.number("bytes"))
        elif message.kind == rpc.PIPE_RESIZE:
            pipe.resize(message.number("cols"), message.number("rows"))
        elif message.kind == rpc.PIPE_CLOSE:
            pipe.close(message.text("reason") or "the app closed it", tell_app=False)

    def app_gone(self, app: str) -> None:
        """The app stopped answering: its pipes have nobody at the other end."""
        with self._lock:
            gone = [p for p in self._pipes.values() if p.app == app]
        for pipe in gone:
            pipe.close("the app went away", tell_app=False)

    def close_all(self) -> None:
        with self._lock:
            pipes = list(self._pipes.values())
        for pipe in pipes:
            pipe.close("the probe is stopping")

    def _forget(self, pipe: Pipe) -> None:
        with self._lock:
            self._pipes.pop(pipe.id, None)
