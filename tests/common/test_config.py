"""Durations and flags with environment forms, as both programs parse them."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from scope_common.config import env_flag, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("3s", 3.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("2", 2.0),
        ("0.25", 0.25),
        (" 10s ", 10.0),
        ("0", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "   ", "bogus", "3x", "s", "ms", "3 s", "1m 30s", "30s1", "-1", "-1s", "nan", "inf"]
)
def test_bad_durations_are_argument_errors(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid duration"):
        parse_duration(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    env_flag(parser, "--spy-interval", default="1s", type=parse_duration, help="how often")
    env_flag(parser, "--hostname", default="here", help="name")
    return parser


def test_env_flag_defaults_env_and_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCOPE_SPY_INTERVAL", raising=False)
    monkeypatch.delenv("SCOPE_HOSTNAME", raising=False)
    args = _parser().parse_args([])
    assert (args.spy_interval, args.hostname) == (1.0, "here")

    monkeypatch.setenv("SCOPE_SPY_INTERVAL", "250ms")
    monkeypatch.setenv("SCOPE_HOSTNAME", "from-env")
    args = _parser().parse_args([])
    assert (args.spy_interval, args.hostname) == (0.25, "from-env")

    args = _parser().parse_args(["--spy-interval=2m", "--hostname=from-flag"])
    assert (args.spy_interval, args.hostname) == (120.0, "from-flag")


def test_env_flag_help_names_the_environment_variable() -> None:
    text = _parser().format_help()
    assert "SCOPE_SPY_INTERVAL" in text and "default 1s" in text


def test_bad_env_value_is_a_clean_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCOPE_SPY_INTERVAL", "bogus")
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([])
    assert exit_info.value.code == 2
    assert "argument --spy-interval: invalid duration 'bogus'" in capsys.readouterr().err
    # A flag on the command line replaces the bad environment value.
    assert _parser().parse_args(["--spy-interval=3s"]).spy_interval == 3.0


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--spy-interval=bogus"], {}), ([], {"SCOPE_SPY_INTERVAL": "bogus"})],
    ids=["flag", "env"],
)
def test_probe_rejects_a_bad_duration_without_a_traceback(argv: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scope_probe", *argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "argument --spy-interval: invalid duration 'bogus'" in proc.stderr
    assert "usage: scope probe" in proc.stderr
    assert "Traceback" not in proc.stderr
