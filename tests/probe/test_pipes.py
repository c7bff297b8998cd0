"""The probe's pipes: flow control by credit, closing from either end, the bound on open pipes.

The stream is a real socket pair (the kernel's buffers, as with Docker's hijacked connection); the test
stands in for the control channel by collecting what the pipe sends.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from scope_common import rpc
from scope_probe.pipes import PipeBusy, Pipes, Stream
from tests.fixtures.waiting import wait_for

APP = "tcp://127.0.0.1:1"


class SocketStream(Stream):
    """One end of a socket pair as a pipe's stream."""

    tty = True

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.resized: list[tuple[int, int]] = []

    def read(self) -> bytes:
        try:
            return self.sock.recv(rpc.PIPE_CHUNK_BYTES)
        except OSError:
            return b""

    def write(self, data: bytes) -> None:
        self.sock.sendall(data)

    def resize(self, cols: int, rows: int) -> None:
        self.resized.append((cols, rows))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Channel:
    """What the pipes send, by kind."""

    def __init__(self) -> None:
        self.messages: queue.Queue[rpc.Message] = queue.Queue()
        self.data = 0
        self.closed: list[str] = []
        self.credit = 0

    def send(self, app: str, message: rpc.Message) -> None:
        assert app == APP
        # Through the real encoding, as the channel would send it.
        message = rpc.decode(rpc.encode(message), rpc.APP_RECEIVES)
        if message.kind == rpc.PIPE_DATA:
            self.data += len(message.data)
        elif message.kind == rpc.PIPE_CLOSE:
            self.closed.append(message.text("reason"))
        elif message.kind == rpc.PIPE_CREDIT:
            self.credit += message.number("bytes")


@pytest.fixture
def pair() -> Iterator[tuple[Pipes, Channel, socket.socket, SocketStream]]:
    channel = Channel()
    pipes = Pipes(channel.send)
    ours, theirs = socket.socketpair()
    stream = SocketStream(theirs)
    yield pipes, channel, ours, stream
    pipes.close_all()
    ours.close()


def _message(kind: str, pipe: str, data: bytes = b"", **fields: str | int) -> rpc.Message:
    return rpc.Message.make(kind, data, pipe=pipe, **fields)


def test_nothing_is_sent_before_credit_and_never_more_than_it(
    pair: tuple[Pipes, Channel, socket.socket, SocketStream],
) -> None:
    pipes, channel, ours, stream = pair
    pipe = pipes.open(APP, stream)
    writer = threading.Thread(target=lambda: ours.sendall(b"x" * 4_000_000), daemon=True)
    writer.start()
    time.sleep(0.3)
    assert channel.data == 0, "no byte before the app said it can take them"
    pipes.receive(APP, _message(rpc.PIPE_CREDIT, pipe, bytes=100_000))
    wait_for(lambda: channel.data == 100_000, timeout=5, what="the credited bytes")
    time.sleep(0.3)
    assert channel.data == 100_000, "not a byte past the credit: the rest waits in the stream"
    assert writer.is_alive(), "and the writer is held back by the kernel's buffers, not by the probe's memory"
    granted = 100_000

    def credited_as_taken() -> bool:
        """Grant more as the app would: when what was granted has arrived."""
        nonlocal granted
        if channel.data == granted:
            pipes.receive(APP, _message(rpc.PIPE_CREDIT, pipe, bytes=500_000))
            granted += 500_000
        return channel.data == 4_000_000

    wait_for(credited_as_taken, timeout=10, interval=0.005, what="all of it once credited")
    writer.join(5)


def test_bytes_from_the_app_reach_the_stream_and_are_credited_back(
    pair: tuple[Pipes, Channel, socket.socket, SocketStream],
) -> None:
    pipes, channel, ours, stream = pair
    pipe = pipes.open(APP, stream)
    pipes.receive(APP, _message(rpc.PIPE_DATA, pipe, b"echo hi\n"))
    pipes.receive(APP, _message(rpc.PIPE_RESIZE, pipe, cols=100, rows=30))
    ours.settimeout(5)
    assert ours.recv(100) == b"echo hi\n"
    wait_for(lambda: channel.credit == len(b"echo hi\n"), timeout=5, what="the credit for the bytes written")
    wait_for(lambda: stream.resized == [(100, 30)], timeout=5, what="the resize")


def test_an_app_that_sends_past_its_credit_loses_the_pipe(
    pair: tuple[Pipes, Channel, socket.socket, SocketStream],
) -> None:
    pipes, channel, ours, stream = pair
    pipe = pipes.open(APP, stream)
    ours.setblocking(False)  # nobody reads the stream: what the app sends piles up unacknowledged
    chunk = b"y" * rpc.PIPE_CHUNK_BYTES
    for _ in range(rpc.PIPE_WINDOW_BYTES // len(chunk) * 4):
        pipes.receive(APP, _message(rpc.PIPE_DATA, pipe, chunk))
        if channel.closed:
            break
    wait_for(lambda: channel.closed, timeout=5, what="the pipe to close")
    assert "credit" in channel.closed[0]
    assert len(pipes) == 0


def test_either_end_closing_ends_the_pipe(pair: tuple[Pipes, Channel, socket.socket, SocketStream]) -> None:
    pipes, channel, ours, stream = pair
    pipe = pipes.open(APP, stream)
    pipes.receive(APP, _message(rpc.PIPE_CREDIT, pipe, bytes=1000))
    pipes.receive(APP, _message(rpc.PIPE_CLOSE, pipe, reason="the browser closed it"))
    ours.settimeout(5)
    assert ours.recv(10) == b"", "the stream is closed"
    assert len(pipes) == 0 and channel.closed == [], "the app asked: it is not told again"

    other, theirs = socket.socketpair()
    pipe = pipes.open(APP, SocketStream(theirs))
    pipes.receive(APP, _message(rpc.PIPE_CREDIT, pipe, bytes=1000))
    other.close()  # the stream ends (the shell exited)
    wait_for(lambda: channel.closed == ["the stream ended"], timeout=5, what="the app to be told")
    assert len(pipes) == 0


def test_open_pipes_are_bounded(pair: tuple[Pipes, Channel, socket.socket, SocketStream]) -> None:
    _, channel, _, _ = pair
    pipes = Pipes(channel.send, max_pipes=2)
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        pipes.open(APP, SocketStream(pairs[0][1]))
        pipes.open(APP, SocketStream(pairs[1][1]))
        with pytest.raises(PipeBusy):
            pipes.open(APP, SocketStream(pairs[2][1]))
        pairs[2][0].settimeout(5)
        assert pairs[2][0].recv(10) == b"", "the refused stream is closed, not leaked"
        pipes.app_gone(APP)
        assert len(pipes) == 0
    finally:
        pipes.close_all()
        for ours, _ in pairs:
            ours.close()
