"""Reading cgroup files: which container a process is in, and what its container uses.

A process's cgroup path names its container (`/docker/<id>`, `/system.slice/docker-<id>.scope`, ...)
on both cgroup v1 and v2, which is far cheaper than asking the Docker engine. The same cgroup's
accounting files give a container's CPU time and memory for a few file reads, where the engine's stats
API costs dockerd a stream and a goroutine per container.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

_CONTAINER_IN_PATH = re.compile(r"(?:docker[-/]|/)([0-9a-f]{64})(?:\.scope)?(?:/|$)")

#: cgroup v1 reports "no limit" as a huge page-aligned number; anything this large is no limit.
_UNLIMITED = 1 << 62


def container_of_cgroup(text: str) -> str | None:
    """The Docker container id named in the contents of a /proc/<pid>/cgroup file, if any."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _CONTAINER_IN_PATH.search(path)
        if match:
            return match.group(1)
    return None


def container_of_pid(proc_root: str, pid: int) -> str | None:
    """The container id of process `pid`, or None for a process outside containers or gone."""
    try:
        with open(os.path.join(proc_root, str(pid), "cgroup")) as f:
            return container_of_cgroup(f.read())
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class CgroupFiles:
    """Where one cgroup's CPU and memory accounting files live (the same directory on v2)."""

    version: int
    cpu_dir: str
    memory_dir: str


@dataclass(frozen=True, slots=True)
class MemoryUsage:
    """Memory in use without reclaimable page cache (what `docker stats` shows), and the limit if any."""

    usage: int
    limit: int | None


def parse_cgroup_paths(text: str) -> dict[str, str]:
    """Controller -> cgroup path from a /proc/<pid>/cgroup file; the v2 hierarchy is under key ""."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            paths[""] = path
        for controller in controllers.split(","):
            if controller:
                paths[controller] = path
    return paths


class CgroupLocator:
    """Finds the accounting directories of a process's cgroup under a cgroup mount, v1 or v2.

    `cgroup_root` is where the host's cgroup file system is mounted (the probe may run in a container
    with the host's mounted elsewhere). On v1 each controller has its own mount under it (`cpuacct`,
    `cpu,cpuacct`, `memory`); on v2 (`cgroup.controllers` at the root) there is one tree.
    """

    def __init__(self, cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc") -> None:
        self.cgroup_root = cgroup_root
        self.proc_root = proc_root

    def version(self) -> int | None:
        """2 for a unified tree, 1 when v1 controllers are mounted, None when neither is there."""
        if os.path.exists(os.path.join(self.cgroup_root, "cgroup.controllers")):
            return 2
        if self._v1_mount("memory") is not None:
            return 1
        return None

    def _v1_mount(self, controller: str) -> str | None:
        """The directory of the v1 hierarchy holding `controller` (mounts may combine several)."""
        try:
            names = sorted(os.listdir(self.cgroup_root))
        except OSError:
            return None
        for name in names:
            if controller in name.split(","):
                path = os.path.join(self.cgroup_root, name)
                if os.path.isdir(path):
                    return path
        return None

    def find(self, pid: int, container_id: str | None = None) -> CgroupFiles | None:
        """The cgroup of process `pid` (a container's init), or None when it or its files are gone.

        A probe in a container with its own cgroup namespace sees other containers' paths relative to
        its own (`/../<id>`); then the usual Docker layouts are tried with `container_id`.
        """
        try:
            with open(os.path.join(self.proc_root, str(pid), "cgroup")) as f:
                paths = parse_cgroup_paths(f.read())
        except OSError:
            return None
        version = self.version()
        if version == 2:
            unified = self._existing(self.cgroup_root, paths.get(""), container_id)
            return CgroupFiles(2, unified, unified) if unified is not None else None
        if version == 1:
            cpu_mount = self._v1_mount("cpuacct")
            memory_mount = self._v1_mount("memory")
            if cpu_mount is None or memory_mount is None:
                return None
            cpu = self._existing(cpu_mount, paths.get("cpuacct"), container_id)
            memory = self._existing(memory_mount, paths.get("memory"), container_id)
            if cpu is not None and memory is not None:
                return CgroupFiles(1, cpu, memory)
        return None

    @staticmethod
    def _existing(mount: str, path: str | None, container_id: str | None) -> str | None:
        candidates: list[str] = []
        if path is not None:
            candidates.append("/".join(part for part in path.split("/") if part and part != ".."))
        if container_id:
            candidates += [f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"]
        for candidate in candidates:
            directory = os.path.join(mount, candidate)
            if os.path.isdir(directory):
                return directory
        return None


def read_cpu_usage_ns(files: CgroupFiles) -> int | None:
    """Total CPU time the cgroup has used, in nanoseconds; None when unreadable (cgroup gone)."""
    try:
        if files.version == 1:
            return int(_read(files.cpu_dir, "cpuacct.usage"))
        usec = _stat_value(_read(files.cpu_dir, "cpu.stat"), b"usage_usec")
    except (OSError, ValueError):
        return None
    return None if usec is None else usec * 1000


def read_memory(files: CgroupFiles) -> MemoryUsage | None:
    """Memory in use minus inactive page cache, as `docker stats` computes it, and the limit."""
    try:
        if files.version == 1:
            usage = int(_read(files.memory_dir, "memory.usage_in_bytes"))
            cache = _stat_value(_read(files.memory_dir, "memory.stat"), b"total_inactive_file")
            limit_text = _read(files.memory_dir, "memory.limit_in_bytes").strip()
        else:
            usage = int(_read(files.memory_dir, "memory.current"))
            cache = _stat_value(_read(files.memory_dir, "memory.stat"), b"inactive_file")
            limit_text = _read(files.memory_dir, "memory.max").strip()
        limit = None if limit_text == b"max" else int(limit_text)
    except (OSError, ValueError):
        return None
    if limit is not None and limit >= _UNLIMITED:
        limit = None
    return MemoryUsage(max(0, usage - (cache or 0)), limit)


def _read(directory: str, name: str) -> bytes:
    """One small pseudo-file, read with plain syscalls: this runs for every container every tick."""
    fd = os.open(os.path.join(directory, name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _stat_value(data: bytes, key: bytes) -> int | None:
    """The value of `key` in a flat-keyed cgroup stat file (`key value` per line)."""
    needle = key + b" "
    start = 0 if data.startswith(needle) else data.find(b"\n" + needle) + 1
    if start == 0 and not data.startswith(needle):
        return None
    end = data.find(b"\n", start)
    return int(data[start + len(needle) : end if end >= 0 else None])
