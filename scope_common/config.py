"""Small command-line helpers both programs use: durations and flags with environment forms."""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Callable
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration written like `3s`, `500ms`, `1m`, `1m30s` or a bare number of seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 3s, 500ms, 1m)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: negative")
    if not math.isfinite(seconds):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: not a finite number")
    return seconds


def env_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    default: str,
    help: str,
    type: Callable[[str], Any] = str,
) -> None:
    """Add `--flag`, whose default comes from SCOPE_FLAG in the environment when set.

    The environment form lets the same image be configured by `docker run -e` without changing its
    command line; the help text names both.
    """
    env = "SCOPE_" + flag.lstrip("-").replace("-", "_").upper()
    parser.add_argument(
        flag,
        # argparse runs `type` over a string default too, so a bad environment value gets a clean error.
        default=os.environ.get(env, default),
        type=type,
        help=f"{help} (env {env}, default {default})",
    )


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """(host, port) from `host`, `host:port`, `:port`, `[v6]`, `[v6]:port` or a bare IPv6 address.

    The host may come back empty (`:4030`); the port defaults. Raises ValueError saying what is wrong
    (a bad port, unbalanced brackets); callers add what the address was for.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("unbalanced brackets")
        port_text = rest[1:]
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r}")
    return host, int(port_text)


def on_off(text: str) -> bool:
    """A switch written `on`/`off` (also true/false, yes/no, 1/0)."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"invalid switch {text!r} (use on or off)")


def switch_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, flag: str, *, help: str) -> None:
    """A switch that is off unless given (`--read-only`), or SCOPE_READ_ONLY=on in the environment."""
    env = "SCOPE_" + flag.lstrip("-").replace("-", "_").upper()
    parser.add_argument(
        flag,
        action="store_true",
        default=on_off(os.environ.get(env, "off")),
        help=f"{help} (env {env}=on)",
    )
