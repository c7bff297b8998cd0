"""The service's copy of the registry, refreshed every second: HTTP requests look tokens up here
rather than in the registry's storage, and revocations made by `scope tenants revoke` (another
process) reach the service through it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from scope_app.tenancy.registry import RegistryUnavailable, Tenant, TenantRegistry
from scope_common.supervise import RateLimitedLog

log = logging.getLogger(__name__)

#: How often the registry is read again: the longest a revoked token keeps working.
REFRESH_INTERVAL = 1.0


class TenantDirectory:
    def __init__(self, registry: TenantRegistry, on_revoked: Callable[[str], None]) -> None:
        self.registry = registry
        self._on_revoked = on_revoked
        self.tenants: dict[str, Tenant] = {}
        self._by_user_token_hash: dict[str, Tenant] = {}
        self._by_probe_key: dict[str, Tenant] = {}
        #: Keys ZAP admitted from the registry itself, with when: their tenant stays in the copy until a
        #: listing read after that shows it (or shows it revoked). Without it, a probe of a tenant added
        #: within the last second would get in, its first reports (the full one above all) be dropped as no
        #: tenant's, and a listing read before the add would take the tenant out again.
        self._admitted: dict[str, tuple[Tenant, float]] = {}
        #: The registry's making as last read (`TenantRegistry.made`; None: not read yet), and the tenants
        #: known when it was found made anew, kept beside the new registry's (see `_apply`).
        self._made: str | None = None
        self._orphans: dict[str, Tenant] = {}
        self._log = RateLimitedLog(log)
        self.refresh()

    def refresh(self) -> None:
        read_at = time.monotonic()
        try:
            self._apply(self.registry.list(), read_at)
        except RegistryUnavailable as exc:
            self._unavailable(exc)

    def _apply(self, listed: list[Tenant], read_at: float) -> None:
        """Take `listed`, the registry as read from `read_at` on: tenants ZAP admitted after that stay."""
        self._admitted = {key: entry for key, entry in self._admitted.items() if entry[1] > read_at}
        made = self.registry.made
        if self._made is not None and made != self._made:
            # The store lost its data and a tenant was added since (`scope tenants add` makes a registry
            # where it finds none): the tenants known before are not revoked, no one revoked them. They
            # stay until the registry is restored or the replica restarts; the new one's are taken too.
            self._orphans = {**self._orphans, **self.tenants}
            log.error(
                "the tenant registry was made anew (its store lost its data, then a tenant was added): going on "
                "with the %d tenants known before beside the new registry's; restore the registry from a backup, "
                "or restart the replicas to take only the new one",
                len(self._orphans),
            )
        self._made = made
        tenants = {**self._orphans, **{tenant.name: tenant for tenant in listed}}
        for tenant, _ in self._admitted.values():
            tenants.setdefault(tenant.name, tenant)
        self._take(tenants)

    def _take(self, tenants: dict[str, Tenant]) -> None:
        gone = [name for name in self.tenants if name not in tenants]
        added = [name for name in tenants if name not in self.tenants]
        self.tenants = tenants
        self._by_user_token_hash = {tenant.user_token_hash: tenant for tenant in tenants.values()}
        self._by_probe_key = {tenant.probe_key: tenant for tenant in tenants.values()}
        for name in added:
            log.info("tenant %s added", name)
        for name in gone:
            log.info("tenant %s revoked: its tokens no longer work, its probes are cut off", name)
            self._on_revoked(name)

    async def refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_INTERVAL)
            read_at = time.monotonic()
            # SQLite reads block: off the loop, so that a slow disk never stalls requests.
            try:
                self._apply(await asyncio.to_thread(self.registry.list), read_at)
            except RegistryUnavailable as exc:
                self._unavailable(exc)

    def _unavailable(self, exc: RegistryUnavailable) -> None:
        """The registry cannot be read (its store, shared by replicas, is away or lost its data): the
        tenants known before stay, rather than all of them being cut off as revoked."""
        self._log.log("unavailable", logging.ERROR, "%s; going on with the %d tenants known", exc, len(self.tenants))

    def by_user_token_hash(self, user_token_hash: str) -> Tenant | None:
        """From the copy; a token the copy does not know yet is looked up in the registry itself, so that
        a tenant just added can log in at once (one indexed read, only for tokens the copy lacks)."""
        found = self._by_user_token_hash.get(user_token_hash)
        return found if found is not None else self._look_up(self.registry.by_user_token_hash, user_token_hash)

    def by_name(self, name: str) -> Tenant | None:
        """As `by_user_token_hash`, for a session cookie, which names its tenant."""
        found = self.tenants.get(name)
        return found if found is not None else self._look_up(self.registry.by_name, name)

    def admits_key(self, probe_key: str) -> bool:
        """For ZAP: read from the registry itself, so that a tenant just added gets in at once (and
        its connection's messages are its, before the copy has it); while the registry cannot be read,
        the keys of the tenants known before."""
        try:
            tenant = self.registry.by_probe_key(probe_key)
        except RegistryUnavailable as exc:
            self._unavailable(exc)
            return probe_key in self._by_probe_key
        if tenant is None:
            # No tenant's in the registry; a tenant known before it was made anew is kept all the same.
            known = self._by_probe_key.get(probe_key)
            return known is not None and self._orphans.get(known.name) == known
        if probe_key not in self._by_probe_key:
            # In the copy at once, so that its connection's first report (the full one) is filed under it
            # and shared with the other replicas; kept there until a listing read after now shows it.
            self._admitted[probe_key] = (tenant, time.monotonic())
            self._take({**{name: t for name, t in self.tenants.items() if name != tenant.name}, tenant.name: tenant})
        return True

    def _look_up(self, lookup: Callable[[str], Tenant | None], value: str) -> Tenant | None:
        try:
            return lookup(value)
        except RegistryUnavailable as exc:
            self._unavailable(exc)
            return None

    def tenant_of_key(self, probe_key: str) -> str | None:
        """The tenant whose probes hold `probe_key` (a connection's User-Id), now. A tenant revoked
        and added again under its name has new tokens: the old key is no tenant's."""
        tenant = self._by_probe_key.get(probe_key)
        return tenant.name if tenant is not None else None
