"""The app's pipe registry: pipes nobody opens are collected, and pipes are bounded per probe and per browser.

Each test runs in an event loop of its own, as the app's registry does (its router is an asyncio socket).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

import zmq.asyncio

from scope_app.controls import ControlRouter
from scope_app.pipes import MAX_PIPES_PER_CLIENT, MAX_PIPES_PER_PROBE, UNOPENED_TIMEOUT, PipeHub


def _with_hub(test: Callable[[PipeHub], None]) -> None:
    async def run() -> None:
        context = zmq.asyncio.Context()
        router = ControlRouter(context, "tcp://127.0.0.1:0")
        try:
            test(PipeHub(router))
        finally:
            router.close()
            context.term()

    asyncio.run(run())
    # Free the closed asyncio socket now: collected later, inside the compiler of a module being imported,
    # its finaliser makes CPython 3.11.7 fail that import ("AST constructor recursion depth mismatch").
    gc.collect()


def test_a_pipe_nobody_opens_is_collected() -> None:
    def check(hub: PipeHub) -> None:
        assert hub.add("probe", "a" * 32, "10.0.0.1")
        hub.collect(time.monotonic() + UNOPENED_TIMEOUT / 2)
        assert "a" * 32 in hub.pipes, "not yet"
        hub.collect(time.monotonic() + UNOPENED_TIMEOUT + 1)
        assert hub.pipes == {}

    _with_hub(check)


def test_pipes_are_bounded_per_browser_and_per_probe() -> None:
    def check(hub: PipeHub) -> None:
        for i in range(MAX_PIPES_PER_CLIENT):
            assert hub.add("probe", f"{i:032x}", "10.0.0.1")
        assert not hub.add("probe", "f" * 32, "10.0.0.1"), "one browser has its share"
        for i in range(MAX_PIPES_PER_CLIENT, MAX_PIPES_PER_PROBE):
            assert hub.add("probe", f"{i:032x}", f"10.0.1.{i}")
        assert not hub.add("probe", "e" * 32, "10.0.2.1"), "one probe has its share"
        assert hub.add("other-probe", "d" * 32, "10.0.2.1")

    _with_hub(check)
