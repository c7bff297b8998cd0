"""The host's control: a shell on the host (host_exec), in a pseudo-terminal the pipe carries."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator, Mapping
from typing import Any

from scope_common import controls as ids_of
from scope_common import ids, rpc
from scope_common.report import HOST, Report
from scope_probe.controls import ControlError, Controls, Outcome
from scope_probe.pipes import Stream


class HostControls:
    """Registers host_exec for this probe's host node."""

    def __init__(self, host_id: str, proc_root: str = "/proc") -> None:
        self._node_id = ids.host_id(host_id)
        # A probe in a container (the host's /proc mounted elsewhere) enters the host's namespaces,
        # so the shell is the host's, not the probe container's.
        self._enter = proc_root.rstrip("/") != "/proc"

    def register(self, controls: Controls) -> None:
        controls.add_offer(self.offer)
        controls.register(ids_of.HOST_EXEC, self.exec, wakes="")  # a shell changes nothing on the map

    def offer(self, report: Report) -> Iterator[tuple[str, str, tuple[str, ...]]]:
        if self._node_id in report.nodes(HOST):
            yield HOST, self._node_id, (ids_of.HOST_EXEC,)

    def exec(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        if node_id != self._node_id:
            raise ControlError(rpc.UNKNOWN_NODE, f"{node_id[:100]!r} is not this probe's host")
        shell = ["/bin/sh", "-l"]
        if self._enter:
            shell = ["nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", *shell]
        try:
            return Outcome(stream=PtyStream(shell))
        except OSError as exc:
            raise ControlError(rpc.FAILED, f"cannot start a shell: {exc}") from None


class PtyStream(Stream):
    """A process in a new pseudo-terminal. Closing hangs its session up."""

    tty = True

    def __init__(self, argv: list[str]) -> None:
        master, slave = os.openpty()
        # `setsid -c` makes the terminal the shell's controlling one, so Ctrl-C reaches what it runs.
        prefix = ["setsid", "-c"] if shutil.which("setsid") else []
        try:
            self._process = subprocess.Popen(
                [*prefix, *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                close_fds=True,
                start_new_session=not prefix,
                env={**os.environ, "TERM": "xterm-256color"},
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        # A file object, not the bare descriptor: once closed, a late read fails on the object rather
        # than reading whatever file reused the number.
        self._master = open(master, "r+b", buffering=0)  # noqa: SIM115 - closed by close()

    def read(self) -> bytes:
        try:
            return self._master.read(rpc.PIPE_CHUNK_BYTES) or b""
        except (OSError, ValueError):  # EIO: the shell exited; ValueError: closed
            return b""

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._master.write(view) or 0 :]

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self._master.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGHUP)

    def release(self) -> None:
        try:
            self._process.wait(2)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(2)
        self._master.close()
