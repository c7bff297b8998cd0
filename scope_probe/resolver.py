"""Reverse DNS names for remote addresses, looked up in the background.

A report is built every second and must not wait on DNS: a slow or dead resolver would stall every
tick. `lookup` only reads a cache and queues misses; one thread resolves them, at a bounded rate so a
burst of new addresses does not flood the resolver, and remembers failures as well as names so an
address without a PTR record is not asked again every tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.resolver

from scope_common.supervise import Supervisor
from scope_probe.addresses import parse_ip

log = logging.getLogger(__name__)

TTL_SECONDS = 300.0
FAILURE_TTL_SECONDS = 60.0
TIMEOUT_SECONDS = 1.0
MAX_ENTRIES = 10_000
MAX_PENDING = 1_000
RATE_PER_SECOND = 10.0


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str | None
    expires: float


class ReverseResolver:
    """A cache of PTR names (and of failures) filled by a background thread. Thread-safe.

    `nameservers`/`port` default to the system's resolver configuration; tests point them at a local
    server. The thread starts with the first `lookup`; `stop` ends it.
    """

    def __init__(
        self,
        nameservers: Sequence[str] | None = None,
        *,
        port: int = 53,
        timeout: float = TIMEOUT_SECONDS,
        ttl: float = TTL_SECONDS,
        failure_ttl: float = FAILURE_TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        max_pending: int = MAX_PENDING,
        rate: float = RATE_PER_SECOND,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._max_pending = max_pending
        self._interval = 1.0 / rate
        self._resolver: dns.resolver.Resolver | None
        try:
            self._resolver = dns.resolver.Resolver(configure=nameservers is None)
        except dns.exception.DNSException as exc:
            log.warning("resolver: no DNS configuration (%s); remote addresses will have no names", exc)
            self._resolver = None
        else:
            if nameservers is not None:
                self._resolver.nameservers = list(nameservers)
                self._resolver.port = port
            self._resolver.timeout = timeout
            self._resolver.lifetime = timeout
        self._cond = threading.Condition()  # guards everything below
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._queue: deque[str] = deque()
        self._pending: set[str] = set()
        self._stopping = threading.Event()
        self._supervisor = supervisor or Supervisor(log)
        self._thread: threading.Thread | None = None
        self.lookups = 0

    def lookup(self, addr: str) -> str | None:
        """The name of `addr` if known (possibly stale while being refreshed), else None. Never blocks
        on DNS: a miss is queued for the background thread, or dropped if the queue is full."""
        if self._resolver is None or parse_ip(addr) is None:
            return None
        now = time.monotonic()
        with self._cond:
            entry = self._cache.get(addr)
            if entry is not None:
                self._cache.move_to_end(addr)
                if entry.expires > now:
                    return entry.name
            if addr not in self._pending and len(self._pending) < self._max_pending and not self._stopping.is_set():
                self._pending.add(addr)
                self._queue.append(addr)
                self._cond.notify()
                if self._thread is None:
                    self._thread = self._supervisor.start_thread("reverse-dns", self._run, self._stopping)
            return entry.name if entry is not None else None

    def __len__(self) -> int:
        """Addresses cached, names and failures alike."""
        with self._cond:
            return len(self._cache)

    def stop(self) -> None:
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        next_at = 0.0
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                # Rate limit: wait out the interval since the last lookup (woken early only to stop).
                delay = next_at - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                addr = self._queue.popleft()
            next_at = time.monotonic() + self._interval
            name = self._resolve(addr)
            expires = time.monotonic() + (self._ttl if name is not None else self._failure_ttl)
            with self._cond:
                self._pending.discard(addr)
                self._cache[addr] = _Entry(name, expires)
                self._cache.move_to_end(addr)
                while len(self._cache) > self._max_entries:
                    self._cache.popitem(last=False)

    def _resolve(self, addr: str) -> str | None:
        assert self._resolver is not None
        self.lookups += 1
        try:
            answer = self._resolver.resolve_address(addr)
        except dns.exception.DNSException as exc:
            log.debug("resolver: no name for %s (%s)", addr, type(exc).__name__)
            return None
        for rdata in answer:
            return str(rdata.target.to_text(omit_final_dot=True))
        return None
