"""./launch.sh: scope (probe and app) in one container named `weavescope`, from the image that
scripts/build-image.sh builds; `--service-token` needs the service's host and key. The installed
`scope` command does the same as `scope launch` and `scope stop`, the original's commands.

Real engine, real image. The first run on a machine builds the Debian base image with debootstrap (about two
minutes); after that, the build is skipped in a second, or takes seconds when the sources changed.
The launched scope listens on free loopback ports and makes no DNS queries, so it clashes with nothing;
a lock serialises the tests of concurrent sessions, since there is only one `weavescope` per engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from scope_common import __version__, ids
from tests.fixtures.docker import PID_LABEL, REPO_ROOT, TEST_LABEL, Containers
from tests.fixtures.ports import free_port, free_port_pair
from tests.fixtures.scope import Scope, wait_for
from tests.fixtures.service import Service

LAUNCH = REPO_ROOT / "launch.sh"
#: The two ways to run the launch commands: the script, and the console script installed beside this Python.
LAUNCH_SH = ("bash", str(LAUNCH))
SCOPE_COMMAND = (str(Path(sys.executable).parent / "scope"),)
BUILD_IMAGE = REPO_ROOT / "scripts" / "build-image.sh"
CONTAINER_NAME = "weavescope"
IMAGE = os.environ.get("SCOPE_IMAGE", "scope-local/scope:latest")
LOCK_PATH = "/tmp/scope-test-launch.lock"
# A cold build runs debootstrap; give it room beyond the suite's default per-test timeout.
BUILD_TIMEOUT = 1200


def run_launch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, command: Sequence[str] = LAUNCH_SH
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args],
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def clean_env(**scope_vars: str) -> dict[str, str]:
    """This process's environment without SCOPE_* variables (launch.sh would pass them all into the
    container: a developer's SCOPE_PEERS, say), plus `scope_vars`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPE_")}
    env["SCOPE_IMAGE"] = IMAGE
    env.update(scope_vars)
    return env


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@dataclass
class Launched:
    """A scope started by `./launch.sh launch`, with its ports on 127.0.0.1."""

    http_port: int
    bus_port: int
    env: dict[str, str]
    result: subprocess.CompletedProcess[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def api(self, path: str) -> Any:
        return get_json(self.url + path)

    def nodes(self, topology: str, **options: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(options)}" if options else ""
        nodes: dict[str, Any] = self.api(f"/api/topology/{topology}{query}")["nodes"]
        return nodes

    def nodes_with(self, topology: str, node_id: str, **options: str) -> dict[str, Any] | None:
        """The topology's nodes if `node_id` is among them, else None (for wait_for)."""
        nodes = self.nodes(topology, **options)
        return nodes if node_id in nodes else None


@pytest.fixture(scope="module")
def scope_image(docker_client: Any) -> str:
    """The scope image, built (or found current) by scripts/build-image.sh."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_IMAGE)],
            env={**os.environ, "SCOPE_IMAGE": IMAGE},
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"scripts/build-image.sh took longer than {BUILD_TIMEOUT}s:\n{exc.stderr!r}", pytrace=False)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/build-image.sh failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False
        )
    print(f"scripts/build-image.sh: {time.monotonic() - started:.1f}s\n{proc.stderr}")
    docker_client.images.get(IMAGE)
    return IMAGE


def remove_test_weavescope(client: Any) -> None:
    """Force-remove a `weavescope` container that these tests started; fail on anyone else's."""
    try:
        container = client.containers.get(CONTAINER_NAME)
    except docker.errors.NotFound:
        return
    if container.labels.get(TEST_LABEL) != "1":
        pytest.fail(
            f"a {CONTAINER_NAME} container that the tests did not start exists (status {container.status}); "
            "stop it with `./launch.sh stop` and run the tests again",
            pytrace=False,
        )
    with contextlib.suppress(docker.errors.NotFound):
        container.remove(force=True, v=True)


@pytest.fixture
def launch_lock() -> Iterator[None]:
    """One launch test at a time on this machine: there is only one `weavescope` per engine."""
    with open(LOCK_PATH, "w") as lock:
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another test session held {LOCK_PATH} for 600s", pytrace=False)
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def launch(docker_client: Any, scope_image: str, launch_lock: None) -> Iterator[Any]:
    """Factory: `launch(*peers)` runs `./launch.sh launch PEER...` (or with `command=SCOPE_COMMAND`,
    `scope launch PEER...`) on free loopback ports; always stopped."""
    remove_test_weavescope(docker_client)
    started: list[Launched] = []

    def start(*args: str, command: Sequence[str] = LAUNCH_SH, token: str = "", path: str = "") -> Launched:
        """`token`: a probe token for the service, given as SCOPE_SERVICE_TOKEN (a probe alone); `path`:
        directories to put first on PATH."""
        http_port, bus_port = free_port(), free_port_pair()
        env = clean_env(
            **({"SCOPE_SERVICE_TOKEN": token} if token else {}),
            SCOPE_LISTEN=f"127.0.0.1:{http_port}",
            SCOPE_BUS=f"127.0.0.1:{bus_port}",
            # No DNS through the host's resolver: no WeaveDNS look-ups of apps, no reverse look-ups of addresses.
            SCOPE_WEAVE_DNS_NAME="",
            SCOPE_REVERSE_DNS="off",
            SCOPE_SPY_INTERVAL="500ms",
            SCOPE_PUBLISH_INTERVAL="1s",
            # Labelled like the fixtures' containers, so a dead session's leftover is removed on the next run.
            SCOPE_DOCKER_ARGS=f"--label {TEST_LABEL}=1 --label {PID_LABEL}={os.getpid()}",
        )
        if path:
            env["PATH"] = f"{path}:{env['PATH']}"
        result = run_launch("launch", *args, env=env, command=command)
        launched = Launched(http_port, bus_port, env, result)
        started.append(launched)
        return launched

    try:
        yield start
    finally:
        if started:
            with contextlib.suppress(docker.errors.NotFound):  # pytest shows this only when the test failed
                logs: bytes = docker_client.containers.get(CONTAINER_NAME).logs(tail=50)
                print(f"last lines of `docker logs {CONTAINER_NAME}`:\n{logs.decode(errors='replace')}")
            run_launch("stop", env=started[-1].env)
        remove_test_weavescope(docker_client)


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_launch_runs_probe_and_app_in_one_container(
    launch: Any, containers: Containers, scope: Scope, docker_client: Any
) -> None:
    # Another app for the probe to publish to, as a peer given on the command line would be.
    peer = scope.app()
    launched: Launched = launch(peer.bus)
    assert launched.result.returncode == 0, launched.result.stdout + launched.result.stderr
    assert f"UI and API: http://localhost:{launched.http_port}/" in launched.result.stderr

    container = docker_client.containers.get(CONTAINER_NAME)
    host = container.attrs["HostConfig"]
    assert container.status == "running"
    assert container.image.tags and IMAGE in container.image.tags
    assert container.attrs["Args"] == [peer.bus], "the peers are scope's arguments in the container"
    assert (host["NetworkMode"], host["PidMode"], host.get("CgroupnsMode")) == ("host", "host", "host")
    # --privileged, or where this engine cannot grant every capability, all it can with no confinement.
    assert host["Privileged"] or ("ALL" in (host["CapAdd"] or []) and "seccomp=unconfined" in host["SecurityOpt"])
    assert "/var/run/docker.sock:/var/run/docker.sock" in host["Binds"]
    assert "/sys/fs/cgroup:/sys/fs/cgroup:ro" in host["Binds"]
    assert host["RestartPolicy"]["Name"] in ("unless-stopped", "always")
    env = container.attrs["Config"]["Env"]
    assert f"SCOPE_HOSTNAME={socket.gethostname()}" in env
    assert f"SCOPE_LISTEN=127.0.0.1:{launched.http_port}" in env, "SCOPE_* variables reach the container"
    assert not any(e.startswith(("SCOPE_IMAGE=", "SCOPE_DOCKER_ARGS=")) for e in env), "launch.sh's own stay out"

    # launch.sh waits for the port, so the API answers at once.
    about = launched.api("/api")
    assert about["version"] == __version__
    assert about["hostname"] == socket.gethostname()

    # The probe in the container sees a container started on the host...
    busybox = containers.run("sleep 600", name="seen")
    busybox_id = ids.container_id(busybox.id)
    nodes = wait_for(
        lambda: launched.nodes_with("containers", busybox_id),
        timeout=30,
        what=f"container {busybox.name} in /api/topology/containers",
    )
    assert nodes[busybox_id]["label_major"] == busybox.name
    # ...and its own container, which the app hides as a system container unless asked.
    scope_id = ids.container_id(container.id)
    assert scope_id not in nodes
    system = wait_for(
        lambda: launched.nodes_with("containers", scope_id, system="show"),
        timeout=15,
        what=f"{CONTAINER_NAME} in /api/topology/containers?system=show",
    )
    assert system[scope_id]["label_major"] == CONTAINER_NAME
    assert busybox_id in system

    # The probe publishes to the peer as well as to the app beside it.
    own_probes = {p["id"] for p in launched.api("/api/probes")}
    wait_for(
        lambda: own_probes & {p["id"] for p in peer.get("/api/probes")},
        timeout=15,
        what="the launched probe in the peer app's /api/probes",
    )

    again = run_launch("launch", env=launched.env)
    assert again.returncode != 0
    assert "already running" in again.stderr

    stopped = run_launch("stop", env=launched.env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(CONTAINER_NAME)
    with pytest.raises(urllib.error.URLError):
        launched.api("/api")
    idle = run_launch("stop", env=launched.env)
    assert idle.returncode == 0
    assert "not running" in idle.stderr


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_scope_launch_and_scope_stop_as_the_original_has_them(launch: Any, docker_client: Any) -> None:
    assert os.access(SCOPE_COMMAND[0], os.X_OK), f"{SCOPE_COMMAND[0]} is not installed (pip install -e .)"
    launched: Launched = launch(command=SCOPE_COMMAND)
    assert launched.result.returncode == 0, launched.result.stdout + launched.result.stderr
    assert f"UI and API: http://localhost:{launched.http_port}/" in launched.result.stderr

    container = docker_client.containers.get(CONTAINER_NAME)
    assert container.status == "running"
    assert container.image.tags and IMAGE in container.image.tags
    env = container.attrs["Config"]["Env"]
    assert f"SCOPE_LISTEN=127.0.0.1:{launched.http_port}" in env
    assert not any(e.startswith(("SCOPE_LAUNCH_AS=", "SCOPE_PYTHON=")) for e in env), "scope's own stay out"
    assert launched.api("/api")["version"] == __version__

    again = run_launch("launch", env=launched.env, command=SCOPE_COMMAND)
    assert again.returncode != 0
    assert "stop it first with: scope stop" in again.stderr

    stopped = run_launch("stop", env=launched.env, command=SCOPE_COMMAND)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(CONTAINER_NAME)
    with pytest.raises(urllib.error.URLError):
        launched.api("/api")
    idle = run_launch("stop", env=launched.env, command=SCOPE_COMMAND)
    assert idle.returncode == 0
    assert "not running" in idle.stderr


KEY = "ab" * 32


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_launch_with_a_service_token_runs_a_probe_alone_for_the_service(
    launch: Any, docker_client: Any, service: Service
) -> None:
    alpha = service.add_tenant("alpha")
    hostname = "launched-for-the-service"
    launched = launch(
        f"--service-host={service.app.bus}",
        f"--service-key={alpha.service_key}",
        f"--hostname={hostname}",
        token=alpha.probe_token,
    )
    assert launched.result.returncode == 0, launched.result.stdout + launched.result.stderr
    assert "feeding the service at" in launched.result.stderr
    wait_for(lambda: service.hostnames(alpha.user_token) == {hostname}, timeout=60, what="the launched probe")
    container = docker_client.containers.get(CONTAINER_NAME)
    command = json.dumps([container.attrs["Path"], container.attrs["Args"], container.attrs["Config"]["Cmd"]])
    assert "probe" in command and alpha.probe_token not in command
    assert f"SCOPE_SERVICE_TOKEN={alpha.probe_token}" in container.attrs["Config"]["Env"]
    with pytest.raises(urllib.error.URLError):  # no app, no UI on this host
        launched.api("/api")


@pytest.mark.docker
@pytest.mark.root
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_token_is_on_no_command_line_of_the_host(launch: Any, docker_client: Any, tmp_path: Path) -> None:
    token = "launch-s3cret-" + os.urandom(6).hex()
    # Every docker command launch.sh runs, recorded on its way to the real one.
    calls = tmp_path / "docker-calls"
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    real = shutil.which("docker")
    assert real
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    launched: Launched = launch(f"--auth-token={token}", path=str(shim.parent))
    assert launched.result.returncode == 0, launched.result.stdout + launched.result.stderr
    assert f"?token={token}" in launched.result.stderr, "launch.sh prints the login URL"

    recorded = calls.read_text()
    assert "run" in recorded and token not in recorded, "nothing on docker's command line"
    container = docker_client.containers.get(CONTAINER_NAME)
    assert token not in json.dumps([container.attrs["Path"], container.attrs["Args"]])
    assert f"SCOPE_AUTH_TOKEN={token}" in container.attrs["Config"]["Env"]
    # The container's processes are the host's: none shows the token in `ps`.
    for pid in _pids_of(container):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            assert token.encode() not in cmdline.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        launched.api("/api")
    assert refused.value.code == 401
    request = urllib.request.Request(launched.url + "/api", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["version"] == __version__


def _pids_of(container: Any) -> list[int]:
    """The host pids of the container's processes (scope, its app and its probe)."""
    top = container.top()
    column = top["Titles"].index("PID")
    pids = [int(row[column]) for row in top["Processes"]]
    assert len(pids) >= 3, top
    return pids


@pytest.mark.parametrize("command", [LAUNCH_SH, SCOPE_COMMAND], ids=["launch.sh", "scope"])
@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--service-token=x", f"--service-key={KEY}"], "--service-token needs --service-host=HOST[:PORT]"),
        (["--service-token", "x", "--service-host=svc.example"], "--service-token needs --service-key=KEY"),
        (["--service-token=x", "--service-host=svc.example", "--service-key=abc"], "64 hex digits"),
        (
            ["--service-token=x", "--service-host=svc.example", f"--service-key={KEY}", "127.0.0.1:4030"],
            "publishes to the service alone",
        ),
    ],
)
def test_a_probe_for_the_service_needs_its_host_and_key(args: list[str], problem: str, command: Sequence[str]) -> None:
    """Said before anything starts (the real container runs `scope probe`: tests/app/test_multitenant.py
    runs the same probe as a process)."""
    result = run_launch("launch", *args, timeout=30, command=command)
    assert result.returncode != 0
    assert problem in result.stderr


def test_help_and_bad_commands() -> None:
    helped = run_launch("help", timeout=30)
    assert helped.returncode == 0
    for word in ("launch [SCOPE_FLAG ...] [PEER ...]", "--service-token=TOKEN", "stop", "weavescope"):
        assert word in helped.stdout
    assert run_launch(timeout=30).returncode == 2
    unknown = run_launch("frobnicate", timeout=30)
    assert unknown.returncode == 2
    assert "unknown command 'frobnicate'" in unknown.stderr
    empty_token = run_launch("launch", "--service-token=", timeout=30)
    assert empty_token.returncode != 0
    assert "--service-token needs a value" in empty_token.stderr
