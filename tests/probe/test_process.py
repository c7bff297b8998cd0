"""The process reporter against real processes: odd names, exec, CPU, and a Docker container's process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from scope_common import ids
from scope_common.report import CMDLINE, CONTAINER_ID, CPU_USAGE, MEMORY_USAGE, NAME, PID, PPID, THREADS, Node
from scope_probe.process import ProcessReporter, parse_stat
from scope_probe.reporter import ProbeContext
from tests.fixtures.docker import Containers

HOST = "process-host"

# Renames itself (the kernel's comm, what `ps` and /proc/<pid>/stat show), starts two idle threads, waits.
_RENAMED = """
import ctypes, sys, threading, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)  # PR_SET_NAME
for _ in range(2):
    threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
print("ready", flush=True)
time.sleep(120)
"""

# Spins, niced up when allowed so that other work on a small, busy CI machine cannot starve it.
_SPIN = """
import contextlib, os
with contextlib.suppress(OSError):
    os.nice(-10)
print("ready", flush=True)
while True:
    pass
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def _start(procs: list[subprocess.Popen[str]], argv: list[str], ready: str | None = "ready") -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs.append(proc)
    if ready is not None:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == ready
    return proc


def _reporter() -> ProcessReporter:
    return ProcessReporter(ProbeContext(host_id=HOST, probe_id="test"))


def _process(reporter: ProcessReporter, pid: int, now: float | None = None) -> Node:
    nodes = reporter.report(time.time() if now is None else now).nodes("process")
    node_id = ids.process_id(HOST, pid)
    assert node_id in nodes, f"pid {pid} not reported"
    return nodes[node_id]


def _stat(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read()


def test_parse_stat_with_a_name_that_looks_like_fields() -> None:
    # As the kernel writes it for a process that named itself ") S 1 (x".
    text = "4250 () S 1 (x) S 4242 4243 4243 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 123456 1000 250 4096"
    stat = parse_stat(text)
    assert stat.name == ") S 1 (x"
    assert (stat.ppid, stat.cpu_ticks, stat.threads, stat.start_ticks) == (4242, 10, 5, 123456)
    assert stat.rss_bytes == 250 * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize("name", ["a b) c", ") S 1 (x", "((x))", "x y"])
def test_renamed_process_is_reported_with_its_name(procs: list[subprocess.Popen[str]], name: str) -> None:
    proc = _start(procs, [sys.executable, "-c", _RENAMED, name])
    stat = parse_stat(_stat(proc.pid))
    assert stat.name == name
    assert (stat.ppid, stat.threads) == (os.getpid(), 3)
    node = _process(_reporter(), proc.pid)
    assert node.get(NAME) == name
    assert node.get(PPID) == str(os.getpid())
    assert node.get(THREADS) == "3"


def test_script_named_with_spaces_and_parentheses(procs: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    script = tmp_path / "a b) c"
    script.write_text("#!/bin/sh\necho ready\nread line\n")
    script.chmod(0o755)
    proc = _start(procs, [str(script)])
    node = _process(_reporter(), proc.pid)
    assert node.get(NAME) == "a b) c"
    assert node.get(CMDLINE) == f"/bin/sh {script}"


def test_subprocess_is_listed_with_its_facts(procs: list[subprocess.Popen[str]]) -> None:
    argv = [sys.executable, "-c", _RENAMED, "scope-facts", "--flag", "value"]
    proc = _start(procs, argv)
    node = _process(_reporter(), proc.pid)
    assert node.get(PID) == str(proc.pid)
    assert node.get(NAME) == "scope-facts"
    assert node.get(CMDLINE) == " ".join(argv)
    assert node.get(PPID) == str(os.getpid())
    assert node.get(THREADS) == "3"
    assert node.get("host_node_id") == ids.host_id(HOST)
    assert node.parents["host"] == (ids.host_id(HOST),)
    assert "container" not in node.parents and node.get(CONTAINER_ID) is None
    memory = node.metrics[MEMORY_USAGE]
    assert memory.last is not None and memory.last.value > 1_000_000  # a Python interpreter's RSS
    # CPU needs two readings.
    assert CPU_USAGE not in node.metrics


def test_process_that_execs_is_reported_under_its_new_name(procs: list[subprocess.Popen[str]]) -> None:
    # An entrypoint script that ends in `exec`: same pid, same start time, new program.
    proc = _start(procs, ["sh", "-c", "echo ready; read line; exec sleep 120"])
    reporter = _reporter()
    assert _process(reporter, proc.pid).get(NAME) == "sh"
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    deadline = time.monotonic() + 5
    while parse_stat(_stat(proc.pid)).name != "sleep":
        assert time.monotonic() < deadline, "the shell did not exec sleep"
        time.sleep(0.02)
    node = _process(reporter, proc.pid)
    assert node.get(NAME) == "sleep"
    assert node.get(CMDLINE) == "sleep 120"


def test_busy_process_shows_cpu_after_two_reports(procs: list[subprocess.Popen[str]]) -> None:
    busy = _start(procs, [sys.executable, "-c", _SPIN])
    idle = _start(procs, [sys.executable, "-c", _RENAMED, "idle"])
    busy_times = psutil.Process(busy.pid)
    reporter = _reporter()
    started = time.time()
    reporter.report(started)
    used = sum(busy_times.cpu_times()[:2])
    time.sleep(0.6)
    used = sum(busy_times.cpu_times()[:2]) - used
    ended = time.time()
    nodes = reporter.report(ended).nodes("process")
    cpu = nodes[ids.process_id(HOST, busy.pid)].metrics[CPU_USAGE]
    assert cpu.last is not None
    # What the process really used over about the same interval, as psutil measures it: on a loaded
    # machine the busy loop gets less than a core, so compare with that rather than a fixed figure.
    assert abs(cpu.last.value - used / (ended - started) * 100) < 15
    assert cpu.max == 100.0
    idle_cpu = nodes[ids.process_id(HOST, idle.pid)].metrics[CPU_USAGE]
    assert idle_cpu.last is not None and idle_cpu.last.value < 10
    assert cpu.last.value > idle_cpu.last.value + 10, f"busy loop at {cpu.last}, idle at {idle_cpu.last}"


def test_gone_processes_leave_the_report(procs: list[subprocess.Popen[str]]) -> None:
    proc = _start(procs, [sys.executable, "-c", _RENAMED, "short-lived"])
    reporter = _reporter()
    _process(reporter, proc.pid)
    proc.kill()
    proc.wait()
    assert ids.process_id(HOST, proc.pid) not in reporter.report(time.time()).nodes("process")


@pytest.mark.docker
def test_container_process_has_its_container_as_parent(containers: Containers) -> None:
    sleeper = containers.run(["sleep", "300"], name="sleeper")
    sleeper.reload()
    pid = int(sleeper.attrs["State"]["Pid"])
    deadline = time.monotonic() + 5
    while parse_stat(_stat(pid)).name != "sleep":  # runc's init may not have exec'd the command yet
        assert time.monotonic() < deadline, "the container never ran sleep"
        time.sleep(0.02)
    node = _process(_reporter(), pid)
    assert node.get(NAME) == "sleep"
    assert node.get(CMDLINE) == "sleep 300"
    assert node.parents["container"] == (ids.container_id(sleeper.id),)
    assert node.parents["container"] == (f"{sleeper.id};<container>",)
    assert node.get(CONTAINER_ID) == sleeper.id
    # Processes outside it (this test's own) are not in it.
    assert "container" not in _process(_reporter(), os.getpid()).parents
