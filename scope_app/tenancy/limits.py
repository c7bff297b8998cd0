"""What one tenant may use of the service, so that no tenant can starve the others.

Probes and nodes are bounded by each tenant's own collector (`collector.Limits`); bytes per second
are bounded here, before a message is even decoded, since decoding is the bus's costliest step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from scope_app import collector
from scope_common.supervise import RateLimitedLog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TenantLimits:
    #: Probes one tenant may have reporting at once.
    max_probes: int = 100
    #: Nodes all of one tenant's probes may hold together.
    max_nodes: int = 100_000
    #: Report bytes one tenant's probes may send a second, on average; bursts of BURST_SECONDS of it pass.
    max_bytes_per_second: int = 4 * 1024 * 1024

    def collector_limits(self) -> collector.Limits:
        return collector.Limits(
            max_probes=self.max_probes,
            max_probes_per_source=min(self.max_probes, collector.MAX_PROBES_PER_SOURCE),
            max_nodes=self.max_nodes,
            max_nodes_per_source=min(self.max_nodes, collector.MAX_NODES_PER_SOURCE),
        )


#: Seconds of a tenant's byte rate it may send at once (a full report after a quiet spell of deltas).
BURST_SECONDS = 5.0


class ByteBudget(Protocol):
    """Each tenant's report bytes a second: `TokenBuckets` in this process, or counted across the
    replicas of the service (scope_app.tenancy.shared.FleetBytes)."""

    def take(self, tenant: str, size: int) -> bool:
        """Whether `tenant` may send `size` bytes more now (then they are counted)."""
        ...

    def forget(self, tenant: str) -> None: ...


class TokenBuckets:
    """A token bucket a tenant: `rate` bytes a second, bursts of BURST_SECONDS of it."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = float(rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (bytes available, when)

    def take(self, tenant: str, size: int) -> bool:
        now = self._clock()
        available, when = self._buckets.get(tenant, (self.rate * BURST_SECONDS, now))
        available = min(self.rate * BURST_SECONDS, available + (now - when) * self.rate)
        if size > available:
            self._buckets[tenant] = (available, now)
            return False
        self._buckets[tenant] = (available - size, now)
        return True

    def forget(self, tenant: str) -> None:
        self._buckets.pop(tenant, None)


class TenantGate:
    """Admits each message of a probe's connection, by its User-Id (the probe's key), or says why not:
    the key is no tenant's now (revoked since the connection was made), or its tenant is over its byte
    rate (`budget`: by default a token bucket a tenant in this process). Refusals are counted per tenant
    (`refused`; "?" for no tenant) and logged once per tenant and reason per interval."""

    def __init__(
        self,
        tenant_of_key: Callable[[str], str | None],
        limits: TenantLimits,
        clock: Callable[[], float] = time.monotonic,
        budget: ByteBudget | None = None,
    ) -> None:
        self.tenant_of = tenant_of_key
        self.limits = limits
        self.budget = budget if budget is not None else TokenBuckets(limits.max_bytes_per_second, clock)
        #: Refused messages by tenant, then reason.
        self.refused: dict[str, dict[str, int]] = {}
        self._log = RateLimitedLog(log)

    def admit(self, user_id: str, size: int, source: str = "") -> str | None:
        """None when the message may pass; else the reason it may not."""
        tenant = self.tenant_of(user_id)
        if tenant is None:
            return self._refuse("?", "revoked_tenant", source)
        if not self.budget.take(tenant, size):
            return self._refuse(tenant, "over_byte_rate", source)
        return None

    def forget(self, tenant: str) -> None:
        self.budget.forget(tenant)
        self.refused.pop(tenant, None)

    def _refuse(self, tenant: str, reason: str, source: str) -> str:
        counts = self.refused.setdefault(tenant, {})
        counts[reason] = counts.get(reason, 0) + 1
        self._log.log(
            f"{tenant}\0{reason}",
            logging.WARNING,
            "dropped a report of tenant %r from %s (%s); %d so far for this tenant and reason",
            tenant,
            source or "?",
            reason,
            counts[reason],
        )
        return reason
