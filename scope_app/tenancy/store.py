"""The latest reports of every tenant's probes: what the bus fills and each tenant's views read.

`LatestReports` is the seam a service past one machine replaces (shared storage, several replicas);
`InProcessReports` keeps them in this process, one `Collector` a tenant, made when the tenant's first
report arrives: a tenant nobody reports for costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from scope_app.collector import Collector, ProbeRecord
from scope_common.wire import Envelope


class LatestReports(Protocol):
    def add(self, tenant: str, envelope: Envelope, source: str) -> bool:
        """File `envelope`, which arrived from `source` on a connection of `tenant`, under that tenant.
        False when it is refused (the tenant's limits, a probe id of another source)."""
        ...

    def holds(self, tenant: str) -> bool:
        """Whether `tenant`'s reports are kept here now (`add` would file one rather than refuse it)."""
        ...

    def flush(self) -> None:
        """Hand every merge that is waiting on (see Collector.flush)."""
        ...

    def expire(self) -> None:
        """Forget the probes silent for longer than the window, of every tenant."""
        ...

    def probes(self, tenant: str) -> Mapping[str, ProbeRecord]:
        """The tenant's probes heard within the window, by probe id."""
        ...

    def forget(self, tenant: str) -> None:
        """Drop everything of `tenant` (revoked): its probes vanish from its views at once."""
        ...


class InProcessReports:
    """A collector a tenant, made by `new_collector(tenant)` on the tenant's first report; with
    `made_by_reports` false, only by `collector` (a replica of the service makes one for a tenant its
    users watch): a report of a tenant without one is refused, so that a message decoded while its tenant
    was revoked or stopped being watched never brings an empty one back."""

    def __init__(self, new_collector: Callable[[str], Collector], *, made_by_reports: bool = True) -> None:
        self._new_collector = new_collector
        self._made_by_reports = made_by_reports
        self.collectors: dict[str, Collector] = {}

    def collector(self, tenant: str) -> Collector:
        found = self.collectors.get(tenant)
        if found is None:
            found = self.collectors[tenant] = self._new_collector(tenant)
        return found

    def add(self, tenant: str, envelope: Envelope, source: str) -> bool:
        found = self.collector(tenant) if self._made_by_reports else self.collectors.get(tenant)
        return found is not None and found.add(envelope, source)

    def holds(self, tenant: str) -> bool:
        return self._made_by_reports or tenant in self.collectors

    def flush(self) -> None:
        for collector in self.collectors.values():
            collector.flush()

    def expire(self) -> None:
        for collector in self.collectors.values():
            collector.expire()

    def probes(self, tenant: str) -> Mapping[str, ProbeRecord]:
        found = self.collectors.get(tenant)
        return found.probes if found is not None else {}

    def forget(self, tenant: str) -> None:
        found = self.collectors.get(tenant)
        if found is not None:
            found.window = 0.0
            found.expire()
            found.flush()
            del self.collectors[tenant]
