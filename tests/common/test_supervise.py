"""Supervised tasks come back after a failure, counted, with one log line however often they fail."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from scope_common.supervise import RateLimitedLog, Supervisor


def test_a_failing_task_is_restarted_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("boom")
        await asyncio.Event().wait()  # then it runs for good

    async def scenario() -> None:
        supervisor = Supervisor(logging.getLogger("test.supervise"))
        supervisor.start("flaky", flaky)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if runs == 4:
                break
        assert supervisor.restarts == {"flaky": 3}
        assert supervisor.running == {"flaky": True}
        await supervisor.stop()
        assert supervisor.running == {"flaky": False}

    with caplog.at_level(logging.ERROR, "test.supervise"):
        asyncio.run(scenario())
    (record,) = caplog.records
    assert "flaky failed (1 so far)" in record.getMessage()
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])


def test_a_future_cancelled_inside_a_task_is_a_failure_not_a_stop() -> None:
    """A socket closed under a task cancels what it awaited; the task itself was not asked to stop."""
    runs = 0

    async def awaits_a_cancelled_future() -> None:
        nonlocal runs
        runs += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if runs == 1:
            future.cancel()
        await future

    async def scenario() -> None:
        supervisor = Supervisor(logging.getLogger("test.supervise"))
        supervisor.start("task", awaits_a_cancelled_future)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if runs == 2:
                break
        assert supervisor.restarts == {"task": 1}
        assert supervisor.running == {"task": True}
        await supervisor.stop()

    asyncio.run(scenario())


def test_a_failing_thread_is_restarted_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The probe's sources are threads: one that raises comes back, and its failures are counted."""
    runs = 0
    steady = threading.Event()
    stopping = threading.Event()

    def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("boom")
        steady.set()
        stopping.wait()

    supervisor = Supervisor(logging.getLogger("test.supervise"))
    with caplog.at_level(logging.ERROR, "test.supervise"):
        thread = supervisor.start_thread("flaky", flaky, stopping)
        assert steady.wait(10)
        assert supervisor.restarts == {"flaky": 3}
        assert supervisor.running == {"flaky": True}
        stopping.set()
        thread.join(5)
    assert not thread.is_alive()
    assert supervisor.running == {"flaky": False}
    (record,) = caplog.records
    assert "flaky failed (1 so far)" in record.getMessage()


def test_a_thread_that_returns_has_stopped_on_purpose() -> None:
    """A reader that gives up (no permission, say) logs why itself; restarting it would only repeat that."""
    runs = 0

    def gives_up() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(logging.getLogger("test.supervise"))
    supervisor.start_thread("gives-up", gives_up, threading.Event()).join(5)
    assert runs == 1
    assert supervisor.restarts == {"gives-up": 0}
    assert supervisor.running == {"gives-up": False}


def test_rate_limited_log_says_how_many_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("test.limited"), every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.limited"):
        assert limited.log("a", logging.WARNING, "dropped %s", "x")
        assert not limited.log("a", logging.WARNING, "dropped %s", "y")
        assert limited.log("b", logging.WARNING, "other")
        now[0] = 10.0
        assert limited.log("a", logging.WARNING, "dropped %s", "z")
    assert [r.getMessage() for r in caplog.records] == [
        "dropped x",
        "other",
        "dropped z (1 more like this not logged)",
    ]
