"""cgroup reading: a real container's files on this host, and v1/v2 layouts built in a temp dir."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from scope_probe.cgroup import (
    CgroupFiles,
    CgroupLocator,
    MemoryUsage,
    container_of_pid,
    parse_cgroup_paths,
    read_cpu_usage_ns,
    read_memory,
)
from tests.fixtures.docker import Containers

CID = "ab" * 32


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _proc(tmp_path: Path, pid: int, cgroup_text: str) -> str:
    proc = tmp_path / "proc"
    _write(proc / str(pid) / "cgroup", cgroup_text)
    return str(proc)


def _v2_cgroup(root: Path, rel: str, *, usage_usec: int, current: int, inactive: int, limit: str) -> Path:
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    directory = root / rel
    _write(directory / "cpu.stat", f"usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n")
    _write(directory / "memory.current", f"{current}\n")
    _write(directory / "memory.stat", f"anon 4096\nfile 8192\nactive_file 100\ninactive_file {inactive}\n")
    _write(directory / "memory.max", f"{limit}\n")
    return directory


@pytest.mark.docker
def test_real_container_cgroup_files(containers: Containers) -> None:
    busy = containers.run(["sh", "-c", "while :; do :; done"], name="busy", mem_limit="64m")
    busy.reload()
    pid = int(busy.attrs["State"]["Pid"])
    assert container_of_pid("/proc", pid) == busy.id

    locator = CgroupLocator("/sys/fs/cgroup", "/proc")
    version = locator.version()
    assert version in (1, 2)
    files = locator.find(pid, busy.id)
    assert files is not None
    assert files.version == version
    assert busy.id in files.cpu_dir and busy.id in files.memory_dir

    first = read_cpu_usage_ns(files)
    time.sleep(0.5)
    second = read_cpu_usage_ns(files)
    assert first is not None and second is not None
    assert second - first > 0.05 * 0.5e9, "a busy loop used under 5 % of a core"

    memory = read_memory(files)
    assert memory is not None
    assert memory.usage > 0
    assert memory.limit == 64 * 1024 * 1024


@pytest.mark.docker
def test_real_container_without_limit_has_none(containers: Containers) -> None:
    sleeper = containers.run("sleep 300", name="sleeper")
    sleeper.reload()
    files = CgroupLocator().find(int(sleeper.attrs["State"]["Pid"]), sleeper.id)
    assert files is not None
    memory = read_memory(files)
    assert memory is not None and memory.limit is None


def test_v2_systemd_layout(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    rel = f"system.slice/docker-{CID}.scope"
    directory = _v2_cgroup(root, rel, usage_usec=1500, current=10_000, inactive=3_000, limit="max")
    proc = _proc(tmp_path, 42, f"0::/{rel}\n")

    locator = CgroupLocator(str(root), proc)
    assert locator.version() == 2
    files = locator.find(42, CID)
    assert files == CgroupFiles(2, str(directory), str(directory))
    assert read_cpu_usage_ns(files) == 1_500_000
    assert read_memory(files) == MemoryUsage(7_000, None)

    (directory / "memory.max").write_text("67108864\n")
    assert read_memory(files) == MemoryUsage(7_000, 64 << 20)


def test_v2_cgroupfs_layout_seen_from_another_cgroup_namespace(tmp_path: Path) -> None:
    """A probe in its own cgroup namespace sees `/../<id>`: the Docker layout is found by id."""
    root = tmp_path / "cgroup"
    directory = _v2_cgroup(root, f"docker/{CID}", usage_usec=7, current=5, inactive=10, limit="max")
    proc = _proc(tmp_path, 7, f"0::/../{CID}\n")
    files = CgroupLocator(str(root), proc).find(7, CID)
    assert files == CgroupFiles(2, str(directory), str(directory))
    assert read_memory(files) == MemoryUsage(0, None), "cache larger than usage clamps to 0"


def test_v1_combined_cpu_cpuacct_mount(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    rel = f"system.slice/docker-{CID}.scope"
    cpu = root / "cpu,cpuacct" / rel
    memory = root / "memory" / rel
    _write(cpu / "cpuacct.usage", "123456789\n")
    _write(memory / "memory.usage_in_bytes", "50000\n")
    _write(memory / "memory.stat", "cache 100\ninactive_file 1\ntotal_inactive_file 20000\n")
    _write(memory / "memory.limit_in_bytes", "9223372036854771712\n")
    os.symlink("cpu,cpuacct", root / "cpuacct")
    proc = _proc(tmp_path, 9, f"4:memory:/{rel}\n3:cpu,cpuacct:/{rel}\n1:name=systemd:/{rel}\n0::/{rel}\n")

    locator = CgroupLocator(str(root), proc)
    assert locator.version() == 1
    files = locator.find(9, CID)
    assert files is not None
    assert os.path.realpath(files.cpu_dir) == str(cpu)
    assert files.memory_dir == str(memory)
    assert read_cpu_usage_ns(files) == 123456789
    assert read_memory(files) == MemoryUsage(30000, None), "v1's huge 'no limit' number reads as None"


def test_missing_process_or_files(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _v2_cgroup(root, f"docker/{CID}", usage_usec=1, current=1, inactive=0, limit="max")
    locator = CgroupLocator(str(root), str(tmp_path / "proc"))
    assert locator.find(12345, CID) is None  # no such process
    proc = _proc(tmp_path, 5, "0::/docker/" + "cd" * 32 + "\n")
    assert CgroupLocator(str(root), proc).find(5, "cd" * 32) is None  # its cgroup is gone
    gone = CgroupFiles(2, str(tmp_path / "nowhere"), str(tmp_path / "nowhere"))
    assert read_cpu_usage_ns(gone) is None
    assert read_memory(gone) is None
    assert CgroupLocator(str(tmp_path / "no-cgroup-fs")).version() is None


def test_parse_cgroup_paths() -> None:
    text = "12:cpu,cpuacct:/docker/x\n4:memory:/docker/y\n1:name=systemd:/s\n0::/unified\n"
    paths = parse_cgroup_paths(text)
    assert paths["cpu"] == paths["cpuacct"] == "/docker/x"
    assert paths["memory"] == "/docker/y"
    assert paths["name=systemd"] == "/s"
    assert paths[""] == "/unified"
