"""`scope` runs a probe and an app on this host; `scope app` and `scope probe [PEER ...]` run one;
`scope launch` and `scope stop` start and stop both in a container, as the original's users type them;
`scope tenants` manages the tenants of the multi-tenant service (`scope app --multitenant`).

Together they run as two child processes, as in the original: the probe's gathering and the app's
serving then never compete for one interpreter lock, and either can be restarted or profiled alone.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scope_app import main as app_main
from scope_app.tenancy import cli as tenants_main
from scope_common import __version__
from scope_common.bus import DEFAULT_BUS_PORT
from scope_probe import main as probe_main

log = logging.getLogger("scope")

#: Sub-commands that launch.sh carries out: the container is one script's business, with or without Python.
LAUNCH_COMMANDS = ("launch", "stop")
#: Flags whose values are secrets. They reach a child in its environment (SCOPE_AUTH_TOKEN), never on its
#: command line, which `ps` shows to every user of the host (a launched container's processes are the
#: host's too); a child that does not declare one does not get it at all (the probe's host shells).
SECRET_FLAGS = frozenset({"auth_token"})


def flag_value(value: object) -> str:
    """A parsed flag value written back as text its parser reads the same: switches as on/off, durations
    as seconds (parse_duration takes a bare number), everything else as it prints."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def child_flags(child: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """Every flag `child` declares, set to what `scope` parsed (from its command line or environment).

    The names come from the child's own parser, so a flag added to `scope app` or `scope probe` reaches it
    through `scope` too; --help and --version (whose default is SUPPRESS) are not settings, and flags only
    the child run alone takes (`scope app --multitenant`, `scope probe --service-token`) are not `scope`'s.
    """
    flags = []
    for action in child._actions:
        if (
            not action.option_strings
            or action.default == argparse.SUPPRESS
            or not hasattr(args, action.dest)
            or action.dest in SECRET_FLAGS
        ):
            continue
        name, value = max(action.option_strings, key=len), getattr(args, action.dest)
        if action.nargs == 0:  # a switch (store_true) takes no value: given when on
            flags.extend([name] if value else [])
        else:
            flags.append(f"{name}={flag_value(value)}")
    return flags


def child_env(child: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """This process's environment for `child`, carrying the secret flags it declares (see SECRET_FLAGS)
    and none of those it does not."""
    env = {k: v for k, v in os.environ.items() if k not in {_env_name(dest) for dest in SECRET_FLAGS}}
    for action in child._actions:
        if action.dest in SECRET_FLAGS and getattr(args, action.dest):
            env[_env_name(action.dest)] = flag_value(getattr(args, action.dest))
    return env


def _env_name(dest: str) -> str:
    """The variable env_flag reads for a flag (scope_common.config)."""
    return f"SCOPE_{dest.upper()}"


def local_app_peer(bus: str) -> str:
    """The address a probe on this host uses to reach the app bound at `bus`."""
    host, port = app_main.split_address(bus.removeprefix("tcp://"), DEFAULT_BUS_PORT)
    if host in ("0.0.0.0", "*", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def run_both(args: argparse.Namespace) -> int:
    app_parser, probe_parser = app_main.build_parser(), probe_main.build_parser()
    app_cmd = [sys.executable, "-m", "scope_app", *child_flags(app_parser, args)]
    probe_cmd = [
        sys.executable,
        "-m",
        "scope_probe",
        *child_flags(probe_parser, args),
        local_app_peer(args.bus),
        *args.peers,
    ]
    children = [
        subprocess.Popen(app_cmd, env=child_env(app_parser, args)),
        subprocess.Popen(probe_cmd, env=child_env(probe_parser, args)),
    ]
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


def launch_script() -> Path:
    """launch.sh: a checkout's own, beside the scripts/build-image.sh that builds the image when it is
    missing (an editable install, as scripts/run.sh makes); else the copy installed with this package,
    which runs an image built before (or named by SCOPE_IMAGE)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent
    if (checkout / "launch.sh").is_file() and (checkout / "scripts" / "build-image.sh").is_file():
        return checkout / "launch.sh"
    return package / "launch.sh"


def run_launch_script(argv: Sequence[str]) -> int:
    """`scope launch ...` and `scope stop` become `launch.sh launch ...` and `launch.sh stop`, in place of
    this process (signals and the exit code are the script's)."""
    bash = shutil.which("bash")
    if bash is None:
        print("scope: bash is needed to run launch.sh", file=sys.stderr)
        return 1
    env = dict(os.environ)
    env.setdefault("SCOPE_LAUNCH_AS", "scope")
    # The image's wheels are built by a host Python of the image's minor version: this one, which has pip.
    env.setdefault("SCOPE_PYTHON", sys.executable)
    os.execve(bash, [bash, str(launch_script()), *argv], env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scope",
        usage="scope [FLAGS] [PEER ...] | scope app [FLAGS] | scope probe [FLAGS] [PEER ...]\n"
        "       scope launch [FLAGS] [PEER ...] | scope launch --service-token=TOKEN ... | scope stop\n"
        "       scope tenants --state-dir DIR add NAME | list [--json] | revoke NAME",
        description="A live map of this host's containers, processes and connections. "
        "Without a command: run a probe and an app on this host (UI on :4040), the probe also "
        "publishing to any PEER given. `scope app --help` and `scope probe --help` describe "
        "running one alone. `scope launch` runs both in a container named weavescope (privileged, in the "
        "host's network and PID namespaces; FLAGS and PEERs as here) and `scope stop` removes it; "
        "`scope launch --service-token=TOKEN --service-host=HOST --service-key=KEY` runs a probe alone, "
        "for the multi-tenant service (`scope app --multitenant`, whose tenants `scope tenants` manages).",
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
    if argv[:1] == ["tenants"]:
        return tenants_main.main(argv[1:])
    if argv[:1] and argv[0] in LAUNCH_COMMANDS:
        return run_launch_script(argv)
    return run_both(build_parser().parse_args(argv))
