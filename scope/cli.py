"""`scope` runs a probe and an app on this host; `scope app` and `scope probe [PEER ...]` run one.

Together they run as two child processes, as in the original: the probe's gathering and the app's
serving then never compete for one interpreter lock, and either can be restarted or profiled alone.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from scope_app import main as app_main
from scope_common import __version__
from scope_common.bus import DEFAULT_BUS_PORT
from scope_probe import main as probe_main

log = logging.getLogger("scope")

_APP_FLAGS = ("listen", "bus", "window", "allowed_origins", "log_http", "log_level")
_PROBE_FLAGS = (
    "hostname",
    "spy_interval",
    "publish_interval",
    "resolve_interval",
    "weave_dns_name",
    "weave_dns_server",
    "proc_root",
    "docker_url",
    "cgroup_root",
    "conntrack",
    "conntrack_linger",
    "reverse_dns",
    "weave_port",
    "log_level",
)


def _flags(names: Sequence[str], raw: dict[str, str]) -> list[str]:
    """Flags for a child, from the values given to `scope` (as typed, not parsed)."""
    return [f"--{name.replace('_', '-')}={raw[name]}" for name in names if name in raw]


def _raw_values(argv: Sequence[str]) -> dict[str, str]:
    """The flag values as the user typed them, to pass through unparsed (durations stay `3s`)."""
    values: dict[str, str] = {}
    items = list(argv)
    for i, item in enumerate(items):
        if not item.startswith("--"):
            continue
        name, eq, value = item[2:].partition("=")
        if not eq:
            if i + 1 >= len(items):
                continue
            value = items[i + 1]
        values[name.replace("-", "_")] = value
    return values


def local_app_peer(bus: str) -> str:
    """The address a probe on this host uses to reach the app bound at `bus`."""
    host, port = app_main.split_address(bus.removeprefix("tcp://"), DEFAULT_BUS_PORT)
    if host in ("0.0.0.0", "*", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_both(args: argparse.Namespace, argv: Sequence[str]) -> int:
    raw = _raw_values(argv)
    app_cmd = [sys.executable, "-m", "scope_app", *_flags(_APP_FLAGS, raw)]
    probe_cmd = [
        sys.executable,
        "-m",
        "scope_probe",
        *_flags(_PROBE_FLAGS, raw),
        local_app_peer(args.bus),
        *args.peers,
    ]
    children = [subprocess.Popen(app_cmd), subprocess.Popen(probe_cmd)]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.2)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    codes = []
    for child in children:
        try:
            codes.append(child.wait(timeout=10))
        except subprocess.TimeoutExpired:
            child.kill()
            codes.append(child.wait())
    return 0 if stopping else max(abs(code) for code in codes) or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scope",
        usage="scope [FLAGS] [PEER ...] | scope app [FLAGS] | scope probe [FLAGS] [PEER ...]",
        description="A live map of this host's containers, processes and connections. "
        "Without a command: run a probe and an app on this host (UI on :4040), the probe also "
        "publishing to any PEER given. `scope app --help` and `scope probe --help` describe "
        "running one alone.",
    )
    parser.add_argument("--version", action="version", version=f"scope {__version__}")
    probe_main.add_probe_flags(parser)
    app_main.add_app_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["app"]:
        return app_main.main(argv[1:])
    if argv[:1] == ["probe"]:
        return probe_main.main(argv[1:])
    args = build_parser().parse_args(argv)
    return run_both(args, argv)
