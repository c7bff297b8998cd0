"""The Docker controls: stop, start, restart, pause, unpause and remove a container; a shell in it
(exec), its main process's terminal (attach), and its logs.

Which of them a container offers depends on its state as the Docker reporter last saw it (`offer`).
The calls go through the docker SDK on the control workers, never on the report loop. Exec and attach
take over the HTTP connection for a raw byte stream ("hijacking", as the docker CLI does); that part
is done here on a plain socket, so that no byte the engine sends right after its answer's headers is
left behind in an HTTP library's buffer.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker
import docker.errors
import requests.exceptions

from scope_common import controls as ids_of
from scope_common import ids, rpc
from scope_common.report import CONTAINER, CONTAINER_STATE, Report
from scope_probe.controls import ControlError, Controls, Outcome
from scope_probe.pipes import Stream

#: Seconds a container gets to stop after SIGTERM before it is killed: within the app's 10 s wait.
STOP_GRACE = 5
#: Timeout of the engine calls that are not streams.
CALL_TIMEOUT = 30.0
#: Log lines sent before following.
LOG_TAIL = 200
#: The shell of an exec: bash where the image has it, sh otherwise.
EXEC_COMMAND = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash; fi; exec sh"]

_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")

#: Controls by container state (`docker_container_state`, as the engine words it).
_BY_STATE: dict[str, tuple[str, ...]] = {
    "running": (
        ids_of.STOP,
        ids_of.RESTART,
        ids_of.PAUSE,
        ids_of.EXEC,
        ids_of.ATTACH,
        ids_of.LOGS,
    ),
    "paused": (ids_of.UNPAUSE,),
    "restarting": (ids_of.STOP, ids_of.LOGS),
    "created": (ids_of.START, ids_of.REMOVE),
    "exited": (ids_of.START, ids_of.REMOVE),
    "dead": (ids_of.REMOVE,),
}


def offer(report: Report) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    """The controls of every container in `report` (this probe's own), by its state."""
    for node in report.nodes(CONTAINER).values():
        control_ids = _BY_STATE.get(node.get(CONTAINER_STATE) or "", ())
        if control_ids:
            yield CONTAINER, node.id, control_ids


def container_of(node_id: str) -> str:
    """The container id in a container node id; ControlError for anything else."""
    cid, sep, tag = node_id.partition(";")
    if not sep or tag != ids.CONTAINER_TAG or not _CONTAINER_ID.fullmatch(cid):
        raise ControlError(rpc.UNKNOWN_NODE, f"{node_id[:100]!r} is not a container")
    return cid


class DockerControls:
    """Registers the Docker controls on `controls`; one SDK client shared by the workers."""

    def __init__(self, docker_url: str) -> None:
        self._url = docker_url
        self._lock = threading.Lock()
        self._api: Any = None

    def register(self, controls: Controls) -> None:
        controls.add_offer(offer)
        for control_id, handler in (
            (ids_of.STOP, self.stop),
            (ids_of.START, self.start),
            (ids_of.RESTART, self.restart),
            (ids_of.PAUSE, self.pause),
            (ids_of.UNPAUSE, self.unpause),
            (ids_of.REMOVE, self.remove),
            (ids_of.EXEC, self.exec),
            (ids_of.ATTACH, self.attach),
            (ids_of.LOGS, self.logs),
        ):
            controls.register(control_id, handler, wakes="docker")

    def api(self, *, timeout: float | None = CALL_TIMEOUT) -> Any:
        """The shared client (timeout CALL_TIMEOUT), or a new one for a stream that may be quiet for long."""
        if timeout != CALL_TIMEOUT:
            return docker.APIClient(base_url=self._url, timeout=timeout, version=self.api().api_version)
        with self._lock:
            if self._api is None:
                self._api = _call(lambda: docker.APIClient(base_url=self._url, timeout=CALL_TIMEOUT))
            return self._api

    # ------------------------------------------------------------------ state changes

    def stop(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        return self._post_state(node_id, "stop", {"t": STOP_GRACE}, "is not running")

    def start(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        return self._post_state(node_id, "start", {}, "is already running")

    def restart(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        _call(lambda: self.api().restart(cid, timeout=STOP_GRACE))
        return Outcome()

    def pause(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        _call(lambda: self.api().pause(cid))
        return Outcome()

    def unpause(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        _call(lambda: self.api().unpause(cid))
        return Outcome()

    def remove(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        _call(lambda: self.api().remove_container(cid))
        return Outcome(removed_node=node_id)

    def _post_state(self, node_id: str, action: str, params: Mapping[str, Any], unchanged: str) -> Outcome:
        """Start and stop: the SDK takes the engine's 304 (nothing to do) for success, the UI must not."""
        cid = container_of(node_id)

        def post() -> Any:
            api = self.api()
            response = api._post(
                api._url("/containers/{0}/" + action, cid), params=params, timeout=CALL_TIMEOUT + STOP_GRACE
            )
            api._raise_for_status(response)
            return response

        if _call(post).status_code == 304:
            raise ControlError(rpc.REFUSED, f"container {cid[:12]} {unchanged}")
        return Outcome()

    # ------------------------------------------------------------------ streams

    def exec(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        api = self.api()
        created = _call(
            lambda: api.exec_create(cid, EXEC_COMMAND, stdin=True, tty=True, environment={"TERM": "xterm-256color"})
        )
        exec_id = created["Id"]
        sock, early = _call(lambda: hijack(self._url, f"/exec/{exec_id}/start", {"Detach": False, "Tty": True}))
        stream = HijackedStream(sock, early, lambda c, r: api.exec_resize(exec_id, height=r, width=c))
        stream.on_release = lambda: end_exec(api, exec_id)
        return Outcome(stream=stream)

    def attach(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        api = self.api()
        tty = bool(_call(lambda: api.inspect_container(cid))["Config"].get("Tty"))
        query = "stream=1&stdin=1&stdout=1&stderr=1"
        sock, early = _call(lambda: hijack(self._url, f"/containers/{cid}/attach?{query}", None))
        if tty:
            return Outcome(stream=HijackedStream(sock, early, lambda c, r: api.resize(cid, height=r, width=c)))
        return Outcome(stream=HijackedStream(sock, early, None, multiplexed=True))

    def logs(self, node_id: str, args: Mapping[str, Any]) -> Outcome:
        cid = container_of(node_id)
        # No read timeout: a container may print nothing for hours while the pane stays open.
        api = self.api(timeout=None)
        chunks = _call(lambda: api.logs(cid, stream=True, follow=True, tail=LOG_TAIL))
        return Outcome(stream=LogStream(chunks, api))


def end_exec(api: Any, exec_id: str) -> None:
    """Hang up an exec'd shell whose pipe closed. The engine leaves it running when the connection
    goes (the shell waits on its terminal forever), so it is signalled through its pid, which the
    engine names in the host's pid namespace, the one the probe runs in."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        info = api.exec_inspect(exec_id)
        pid = int(info.get("Pid") or 0)
        if not info.get("Running") or pid <= 1:
            return
        with contextlib.suppress(ProcessLookupError):
            # The shell leads its terminal's session: SIGHUP reaches it and what it runs in the foreground.
            os.killpg(pid, signal.SIGHUP)
        for _ in range(20):
            time.sleep(0.05)
            if not api.exec_inspect(exec_id).get("Running"):
                return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _call(call: Any) -> Any:
    """Run an engine call, turning its errors into ControlErrors the app maps to HTTP statuses."""
    try:
        return call()
    except docker.errors.NotFound as exc:
        raise ControlError(rpc.UNKNOWN_NODE, _explain(exc)) from None
    except docker.errors.APIError as exc:
        # The engine answered and said no. Not only with 409: some refusals (unpause a running container)
        # come as a 500 with the reason in the message.
        raise ControlError(rpc.REFUSED, _explain(exc)) from None
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise ControlError(rpc.FAILED, f"the Docker engine did not answer: {exc}") from None


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


# ---------------------------------------------------------------------- hijacked connections


def hijack(docker_url: str, path: str, body: Mapping[str, Any] | None) -> tuple[socket.socket, bytes]:
    """POST `path` to the engine asking to upgrade the connection to a raw stream; the socket and the
    stream's first bytes (those that arrived with the headers)."""
    parsed = urllib.parse.urlparse(docker_url)
    if parsed.scheme in ("unix", "http+unix"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: Any = parsed.path
    elif parsed.scheme in ("tcp", "http"):
        sock = socket.socket(socket.AF_INET6 if ":" in (parsed.hostname or "") else socket.AF_INET)
        address = (parsed.hostname, parsed.port or 2375)
    else:
        raise OSError(f"cannot stream from a Docker engine at {docker_url!r}")
    payload = json.dumps(body).encode() if body is not None else b""
    request = (
        f"POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    try:
        sock.settimeout(CALL_TIMEOUT)
        sock.connect(address)
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk or len(head) > 64 * 1024:
                raise OSError("the engine closed the connection before answering")
            head += chunk
        headers, _, early = head.partition(b"\r\n\r\n")
        status_line = headers.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if status not in (101, 200):
            raise _api_error(status, early)
        sock.settimeout(None)
        return sock, early
    except BaseException:
        sock.close()
        raise


def _api_error(status: int, body: bytes) -> docker.errors.APIError:
    """The engine's refusal as the SDK would raise it, with its message."""
    try:
        message = str(json.loads(body.decode(errors="replace")).get("message", ""))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:200]
    response = requests.models.Response()
    response.status_code = status
    if status == 404:
        return docker.errors.NotFound(message, response=response, explanation=message)
    return docker.errors.APIError(message, response=response, explanation=message)


class HijackedStream(Stream):
    """The raw stream of an exec or attach. Without a TTY the engine multiplexes stdout and stderr in
    frames of an 8-byte header and a payload; those are unwrapped here."""

    def __init__(self, sock: socket.socket, early: bytes, resize: Any, *, multiplexed: bool = False) -> None:
        self._sock = sock
        self._pending = early
        self._resize = resize
        self._multiplexed = multiplexed
        self._frame_left = 0
        self.tty = resize is not None
        self._closed = False
        #: What `release` does once the stream has ended (hang up an exec's shell).
        self.on_release: Callable[[], None] | None = None

    def read(self) -> bytes:
        while True:
            if not self._pending:
                try:
                    self._pending = self._sock.recv(rpc.PIPE_CHUNK_BYTES)
                except OSError:
                    if self._closed:
                        return b""
                    raise
                if not self._pending:
                    return b""
            if not self._multiplexed:
                data, self._pending = self._pending, b""
                return data
            data = self._unframe()
            if data:
                return data

    def _unframe(self) -> bytes:
        """Payload bytes from the pending frames; keeps an incomplete header for the next read."""
        out = bytearray()
        while self._pending:
            if self._frame_left:
                take = self._pending[: self._frame_left]
                out += take
                self._frame_left -= len(take)
                self._pending = self._pending[len(take) :]
                continue
            if len(self._pending) < 8:
                more = self._sock.recv(8 - len(self._pending))
                if not more:
                    self._pending = b""
                    break
                self._pending += more
                continue
            (self._frame_left,) = struct.unpack(">I", self._pending[4:8])
            self._pending = self._pending[8:]
        return bytes(out)

    def write(self, data: bytes) -> None:
        self._sock.sendall(data)

    def resize(self, cols: int, rows: int) -> None:
        if self._resize is not None:
            _call(lambda: self._resize(cols, rows))

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def release(self) -> None:
        if self.on_release is not None:
            self.on_release()


class LogStream(Stream):
    """A container's logs: the last lines, then every new one, until closed."""

    def __init__(self, chunks: Any, api: Any) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._stream = chunks
        self._api = api

    def read(self) -> bytes:
        for chunk in self._chunks:
            if chunk:  # b"" would read as the end
                return bytes(chunk)
        return b""

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stream.close()
        with contextlib.suppress(Exception):
            self._api.close()
