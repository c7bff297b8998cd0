"""The `scope` command: flags given to it reach the app and the probe it starts (their names come from the
children's own parsers), and its help names every command the original's users type.
`scope launch` and `scope stop` are tested with launch.sh in tests/test_launch.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from scope.cli import SECRET_FLAGS, build_parser, child_flags
from scope_app import main as app_main
from scope_common import __version__
from scope_probe import main as probe_main
from tests.fixtures.ports import free_port, free_port_pair, wait_for_port
from tests.fixtures.scope import Scope, ScopeProcess, wait_for


def test_every_flag_scope_parsed_reaches_each_child_as_given() -> None:
    args = build_parser().parse_args(
        [
            "--listen=127.0.0.1:4999",
            "--window=1m30s",
            "--allowed-origins=http://example.test",
            "--spy-interval=250ms",
            "--conntrack=off",
            "--reverse-dns=on",
            "--weave-dns-name=",
            "--weave-port=5000",
            "--log-level=debug",
            # Switches (store_true) reach the child only when on: these are.
            "--read-only",
            "--no-controls",
            "--no-auth",
            "peer.example:4031",
        ]
    )
    alone = {
        "app": {
            "multitenant",
            "state_dir",
            "metrics_token",
            "tenant_max_probes",
            "tenant_max_nodes",
            "tenant_max_bytes_per_second",
            "tenant_idle",
        },
        "probe": {"service_token", "service_host", "service_key"},
    }
    for name, child in (("app", app_main.build_parser()), ("probe", probe_main.build_parser())):
        flags = child_flags(child, args)
        options = {action.dest for action in child._actions if action.option_strings and action.dest != "help"}
        # The service's flags belong to the child run alone: `scope` runs an app and its own probe.
        assert options - vars(args).keys() == alone[name]
        declared = options - alone[name] - SECRET_FLAGS  # secrets go by the environment: see the next test
        assert {flag.split("=", 1)[0].removeprefix("--").replace("-", "_") for flag in flags} == declared
        # The child reads back exactly what scope parsed: durations, switches, ports and empty values alike.
        reread = child.parse_args(flags)
        assert {dest: getattr(reread, dest) for dest in declared} == {dest: getattr(args, dest) for dest in declared}
    assert args.window == 90 and args.conntrack is False and args.weave_dns_name == ""


def test_scope_runs_an_app_and_a_probe_that_publishes_to_it_and_to_peers(scope: Scope) -> None:
    peer = scope.app()
    http_port, bus_port = free_port(), free_port_pair()
    both = ScopeProcess(
        "scope-both",
        [
            sys.executable,
            "-m",
            "scope",
            f"--listen=127.0.0.1:{http_port}",
            f"--bus=127.0.0.1:{bus_port}",
            "--hostname=cli-test-host",
            "--spy-interval=500ms",
            "--publish-interval=500ms",
            "--weave-dns-name=",
            "--reverse-dns=off",
            "--conntrack=off",
            peer.bus,
        ],
    )
    try:
        wait_for_port("127.0.0.1", http_port, timeout=20)
        app = f"http://127.0.0.1:{http_port}"

        def probes_at(url: str) -> list[str]:
            with urllib.request.urlopen(url + "/api/probes", timeout=10) as response:
                return [probe["hostname"] for probe in json.load(response)]

        wait_for(lambda: "cli-test-host" in probes_at(app), timeout=15, what="scope's probe in its own app")
        wait_for(lambda: "cli-test-host" in probes_at(peer.url), timeout=15, what="scope's probe in the peer app")
        # Ctrl-C or SIGTERM stops both children, and that is a clean exit.
        assert both.terminate(signal.SIGINT) == 0, both.log()
    finally:
        both.terminate()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as listing:
        return [int(child) for child in listing.read().split()]


def test_the_token_reaches_the_app_by_its_environment_never_on_a_command_line() -> None:
    http_port, bus_port = free_port(), free_port_pair()
    token = "s3cret-token-on-no-command-line"
    both = ScopeProcess(
        "scope-token",
        [
            sys.executable,
            "-m",
            "scope",
            f"--listen=127.0.0.1:{http_port}",
            f"--bus=127.0.0.1:{bus_port}",
            "--weave-dns-name=",
            "--reverse-dns=off",
            "--conntrack=off",
        ],
        env={**os.environ, "SCOPE_AUTH_TOKEN": token},
    )
    try:
        wait_for_port("127.0.0.1", http_port, timeout=20)
        children = wait_for(lambda: _children(both.pid) if len(_children(both.pid)) == 2 else None, timeout=10)
        for pid in children:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                assert token.encode() not in cmdline.read(), "ps shows every command line to every user"
        environments = []
        for pid in children:
            with open(f"/proc/{pid}/environ", "rb") as environ:
                environments.append(token.encode() in environ.read())
        assert sorted(environments) == [False, True], "the app has it; the probe (and its host shells) do not"
        url = f"http://127.0.0.1:{http_port}/api"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.load(response)["version"] == __version__
    finally:
        both.terminate()


def test_help_names_the_original_commands_and_every_child_flag() -> None:
    helped = subprocess.run(
        [sys.executable, "-m", "scope", "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    for words in (
        "scope launch [FLAGS] [PEER ...]",
        "scope launch --service-token=TOKEN",
        "scope stop",
        "scope app",
        "scope tenants --state-dir DIR add NAME",
    ):
        assert words in helped.stdout
    takes = {action.dest for action in build_parser()._actions}
    for child in (app_main.build_parser(), probe_main.build_parser()):
        for action in child._actions:
            for option in action.option_strings:
                # The service's flags are the child's alone (`scope app --help`, `scope probe --help`).
                assert option in (helped.stdout if action.dest in takes else child.format_help())
    version = subprocess.run(
        [sys.executable, "-m", "scope", "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert version.stdout.strip() == f"scope {__version__}"


@pytest.mark.parametrize(
    "flag", ["--max-view-nodes", "--max-nodes", "--max-nodes-per-source", "--max-probes-per-source"]
)
@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_app_counts_below_one_are_refused_with_a_clear_error(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        app_main.build_parser().parse_args([f"{flag}={value}"])
    assert exited.value.code == 2
    assert f"invalid count {value!r} (a whole number above 0)" in capsys.readouterr().err
