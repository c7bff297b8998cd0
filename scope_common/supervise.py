"""Keeping long-running tasks alive, and logging repeated trouble without flooding the log.

A task that ends by an exception nobody expected (a bug, a library raising what it never raised
before) must not take a part of the process with it while the rest carries on looking healthy: the
app's HTTP side would keep serving a map that empties as probes expire. `Supervisor` restarts such a
task after a short back-off, logs the error once per interval with its traceback, counts it, and says
which tasks are running, for a readiness check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

#: First wait before a restart; doubled for each failure in a row, up to MAX_BACKOFF.
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: A task that ran this long before failing is restarted quickly again: its failure is a new one.
HEALTHY_AFTER = 30.0
#: At most one log line per key in this many seconds; the counters say how many there were.
LOG_EVERY = 10.0


class RateLimitedLog:
    """Logs a message at most once per `every` seconds per key, saying how many were held back."""

    def __init__(self, logger: logging.Logger, every: float = LOG_EVERY, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._every = every
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, key: str, level: int, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log `message % args` unless `key` was logged less than the interval ago. Returns whether it
        was logged."""
        now = self._clock()
        last = self._logged_at.get(key)
        if last is not None and now - last < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._logged_at[key] = now
        held = self._held.pop(key, 0)
        suffix = f" ({held} more like this not logged)" if held else ""
        self._logger.log(level, message + suffix, *args, exc_info=exc_info)
        return True


class Supervisor:
    """Runs named coroutines, restarting each after it fails or ends.

    `restarts` counts restarts by task; `running` says which tasks are up (false while one waits to be
    restarted). `failed()` counts a failure of something that is not a task (a callback) the same way.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.restarts: dict[str, int] = {}
        self.running: dict[str, bool] = {}
        self._log = RateLimitedLog(logger)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run `factory()` as task `name`, and again each time it fails."""
        self.restarts.setdefault(name, 0)
        self.running[name] = False
        task = asyncio.create_task(self._keep(name, factory), name=name)
        self._tasks.append(task)
        return task

    def failed(self, name: str) -> None:
        """Count and log (rate-limited) the exception being handled, raised by `name`."""
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self._log.log(
            name,
            logging.ERROR,
            "%s failed (%d so far); carrying on",
            name,
            self.restarts[name],
            exc_info=True,
        )

    async def _keep(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        backoff = MIN_BACKOFF
        while True:
            started = time.monotonic()
            self.running[name] = True
            try:
                await factory()
            except asyncio.CancelledError:
                self.running[name] = False
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise
                # Not this task cancelled, but something it awaited (a socket closed under it).
                self.failed(name)
            except Exception:
                self.running[name] = False
                self.failed(name)
            else:
                self.running[name] = False
                self.restarts[name] += 1
                self._log.log(name, logging.ERROR, "%s ended; restarting it", name)
            if time.monotonic() - started >= HEALTHY_AFTER:
                backoff = MIN_BACKOFF
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
