"""Keeping long-running tasks alive, and logging repeated trouble without flooding the log.

A task that ends by an exception nobody expected (a bug, a library raising what it never raised
before) must not take a part of the process with it while the rest carries on looking healthy: the
app's HTTP side would keep serving a map that empties as probes expire. `Supervisor` restarts such a
task after a short back-off, logs the error once per interval with its traceback, counts it, and says
which tasks are running, for a readiness check.

The app's long-running work is asyncio tasks; the probe's is threads (the libraries its sources use
block: the Docker SDK, subprocess pipes, DNS). One `Supervisor` keeps either kind, with the same
back-off, counters and log, so `/metrics` on both sides reads restarts the same way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
        # The probe's threads share one log: two failing at once must not both take the same slot.
        self._lock = threading.Lock()

    def log(self, key: str, level: int, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log `message % args` unless `key` was logged less than the interval ago. Returns whether it
        was logged."""
        with self._lock:
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


class _Backoff:
    """The wait before each restart: doubled for each failure in a row, back to the first after a long run."""

    def __init__(self) -> None:
        self._next = MIN_BACKOFF
        self._started = time.monotonic()

    def started(self) -> None:
        self._started = time.monotonic()

    def wait(self) -> float:
        """How long to wait before the next start, the run that just ended counted."""
        if time.monotonic() - self._started >= HEALTHY_AFTER:
            self._next = MIN_BACKOFF
        wait, self._next = self._next, min(self._next * 2, MAX_BACKOFF)
        return wait


class Supervisor:
    """Runs named coroutines or threads, restarting each after it fails (a coroutine also after it ends).

    `restarts` counts restarts by task; `running` says which tasks are up (false while one waits to be
    restarted). `failed()` counts a failure of something that is not a task (a callback) the same way.
    Thread-safe: the probe's threads report to one supervisor.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.restarts: dict[str, int] = {}
        self.running: dict[str, bool] = {}
        self._log = RateLimitedLog(logger)
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = threading.Lock()

    def start(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Run `factory()` as task `name`, and again each time it fails."""
        self.restarts.setdefault(name, 0)
        self.running[name] = False
        task = asyncio.create_task(self._keep(name, factory), name=name)
        self._tasks.append(task)
        return task

    def start_thread(self, name: str, target: Callable[[], None], stopping: threading.Event) -> threading.Thread:
        """Run `target()` in daemon thread `name`, and again each time it raises, until `stopping` is set."""
        with self._lock:
            self.restarts.setdefault(name, 0)
            self.running[name] = False
        thread = threading.Thread(target=self.keep, args=(name, target, stopping), name=name, daemon=True)
        thread.start()
        return thread

    def keep(self, name: str, target: Callable[[], None], stopping: threading.Event) -> None:
        """Run `target()` in this thread until it returns or `stopping` is set, restarting it after each
        exception. A thread's loop that returns has stopped on purpose (asked to, or it said why it
        gives up, as the conntrack reader without permission does), so only exceptions restart it. The
        probe's main loop runs this way on the main thread."""
        with self._lock:
            self.restarts.setdefault(name, 0)
        backoff = _Backoff()
        while not stopping.is_set():
            backoff.started()
            self.running[name] = True
            try:
                target()
            except Exception:
                self.running[name] = False
                self.failed(name)
            else:
                self.running[name] = False
                return
            stopping.wait(backoff.wait())

    def failed(self, name: str) -> None:
        """Count and log (rate-limited) the exception being handled, raised by `name`."""
        with self._lock:
            count = self.restarts[name] = self.restarts.get(name, 0) + 1
        self._log.log(name, logging.ERROR, "%s failed (%d so far); carrying on", name, count, exc_info=True)

    async def _keep(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        backoff = _Backoff()
        while True:
            backoff.started()
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
                with self._lock:
                    self.restarts[name] += 1
                self._log.log(name, logging.ERROR, "%s ended; restarting it", name)
            await asyncio.sleep(backoff.wait())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
