"""What the replicas of the service share in Redis (`scope app --multitenant --store URL`): the tenant
registry, the fingerprint of the service's key pair, and each tenant's byte rate.

The registry (`RedisRegistry`) is the one piece of the service's state in Redis that cannot be rebuilt:
the reports are (each probe sends a full one every few seconds), the tenants are not. Run that Redis
with persistence (`appendonly yes`, or RDB snapshots and a backup). A Redis that came back empty must
not look like a registry whose tenants were all revoked, or every replica would cut every probe off:
the first `add` writes a marker beside the tenants, and a registry without it is `RegistryUnavailable`
(the replicas go on with the tenants they knew) rather than empty.

The service's CURVE key pair stays a file in --state-dir, copied to every replica (like a TLS key): it
is made once and never changes, so it is configuration rather than state; kept on disk, it survives a
Redis that lost its data (a new key pair made then would cut every probe off, since probes pin the
key), and its secret (which also keys the session cookies) is not in a store every replica and every
`scope tenants` writes to. What Redis keeps is its public key (`pin_service_key`): a replica started
with another key pair than the fleet's refuses to start and says so, rather than turning its probes
away one by one.

Bytes a second are counted across replicas (`FleetBytes`): otherwise a tenant spreading its probes over
N replicas would get N times its rate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, cast

from redis.exceptions import RedisError

from scope_app.replicas.store import async_client, redacted, sync_client
from scope_app.tenancy.limits import BURST_SECONDS
from scope_app.tenancy.registry import NAME, RegistryError, RegistryUnavailable, Tenant
from scope_common.supervise import RateLimitedLog

log = logging.getLogger(__name__)

#: The registry's keys share one Redis Cluster slot (the hash tag), so that a change is one atomic script.
TENANTS = "scope:{registry}:tenants"
BY_USER_TOKEN = "scope:{registry}:by-user-token"
BY_PROBE_KEY = "scope:{registry}:by-probe-key"
#: Written by the first `add` (its time): a registry without it is one Redis lost, not one without tenants;
#: one with another value than before was made anew after that.
MARKER = "scope:{registry}:made"
SERVICE_KEY = "scope:{registry}:service-key"

#: How long a command may take before Redis counts as away. The registry is read on the event loop for
#: a token or key the replica's copy lacks; a short bound keeps a stalled Redis from stalling requests.
COMMAND_TIMEOUT = 1.0

_ADD = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'name' end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 or redis.call('HEXISTS', KEYS[3], ARGV[4]) == 1 then
  return 'token'
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[1])
redis.call('SET', KEYS[4], ARGV[5], 'NX')
return 'ok'
"""

_REVOKE = """
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
local tenant = cjson.decode(record)
redis.call('HDEL', KEYS[2], tenant['user_token_hash'])
redis.call('HDEL', KEYS[3], tenant['probe_key'])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""


class RedisRegistry:
    """The registry in Redis, one hash of tenants (JSON records by name) and two indexes by token hash and
    probe key; adding and revoking are atomic scripts. Safe from several threads and processes."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._redis = sync_client(
            url, socket_connect_timeout=COMMAND_TIMEOUT, socket_timeout=COMMAND_TIMEOUT, retry_on_timeout=False
        )
        self._add = self._redis.register_script(_ADD)
        self._revoke = self._redis.register_script(_REVOKE)
        self._made = ""

    def add(self, name: str, user_token_hash: str, probe_key: str) -> Tenant:
        if not NAME.fullmatch(name):
            raise RegistryError(f"invalid tenant name {name[:80]!r}: letters, digits, '.', '_' and '-', at most 63")
        tenant = Tenant(name, time.time(), user_token_hash, probe_key)
        record = json.dumps(dataclasses.asdict(tenant))
        outcome = self._call(
            lambda: self._add(
                keys=[TENANTS, BY_USER_TOKEN, BY_PROBE_KEY, MARKER],
                args=[name, record, user_token_hash, probe_key, str(tenant.created)],
            )
        )
        if outcome == b"name":
            raise RegistryError(f"there is a tenant {name!r} already")
        if outcome != b"ok":
            raise RegistryError("a token of the new tenant is another tenant's (made twice?): try again")
        return tenant

    def list(self) -> list[Tenant]:
        def read() -> tuple[bytes | None, dict[bytes, bytes]]:
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(MARKER)
                pipe.hgetall(TENANTS)
                made, records = pipe.execute()
            return made, records

        made, records = self._call(read)
        if not made:
            raise RegistryUnavailable(
                f"the store {self._redacted_url()} holds no tenant registry: no tenant added yet, "
                "or the store lost its data (run it with persistence)"
            )
        self._made = made[:64].decode(errors="replace")
        tenants = [found for record in records.values() if (found := _tenant(record)) is not None]
        return sorted(tenants, key=lambda t: (t.created, t.name))

    @property
    def made(self) -> str:
        return self._made

    def revoke(self, name: str) -> None:
        revoked = self._call(lambda: self._revoke(keys=[TENANTS, BY_USER_TOKEN, BY_PROBE_KEY], args=[name]))
        if not revoked:
            raise RegistryError(f"there is no tenant {name[:80]!r}")

    def by_name(self, name: str) -> Tenant | None:
        record = self._call(lambda: self._redis.hget(TENANTS, name))
        return _tenant(record) if isinstance(record, bytes) else None

    def by_user_token_hash(self, user_token_hash: str) -> Tenant | None:
        return self._by_index(BY_USER_TOKEN, user_token_hash)

    def by_probe_key(self, probe_key: str) -> Tenant | None:
        return self._by_index(BY_PROBE_KEY, probe_key)

    def pin_service_key(self, public_key: str) -> None:
        """Record `public_key` as the fleet's service key if none is; RegistryError if another one is."""

        def pin() -> object:
            # SETNX then GET, not SET NX GET: Redis before 7 and its forks refuse that combination.
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.setnx(SERVICE_KEY, public_key)
                pipe.get(SERVICE_KEY)
                return pipe.execute()[1]

        pinned = self._call(pin)
        if isinstance(pinned, bytes) and pinned.decode(errors="replace") != public_key:
            raise RegistryError(
                f"this service key ({public_key[:16]}...) is not the one the other replicas on "
                f"{self._redacted_url()} use ({pinned[:16].decode(errors='replace')}...): give every replica "
                "a copy of the same service.key in its --state-dir (probes pin one key)"
            )

    def close(self) -> None:
        self._redis.close()

    def _by_index(self, index: str, value: str) -> Tenant | None:
        def read() -> bytes | None:
            name = self._redis.hget(index, value)
            return cast(bytes | None, self._redis.hget(TENANTS, name)) if isinstance(name, bytes) else None

        record = self._call(read)
        found = _tenant(record) if record is not None else None
        # The index and the record are written together; a mismatch is a store someone else wrote.
        return found if found is not None and value in (found.user_token_hash, found.probe_key) else None

    def _call(self, command: Callable[[], Any]) -> Any:
        try:
            return command()
        except (RedisError, OSError) as exc:
            raise RegistryUnavailable(f"the store {self._redacted_url()} did not answer: {exc}") from None

    def _redacted_url(self) -> str:
        return redacted(self.url)


#: A tenant's record is its name, a time and two 64-digit hex strings: anything longer is no record.
MAX_RECORD_BYTES = 1024
HEX_64 = re.compile(r"[0-9a-f]{64}")


def _tenant(record: bytes) -> Tenant | None:
    """A tenant's JSON record; None when it is not one (the store is shared: checked as network input,
    its size before parsing, its fields' kinds and forms after)."""
    if len(record) > MAX_RECORD_BYTES:
        log.warning("left out a tenant record of the store of %d bytes (at most %d)", len(record), MAX_RECORD_BYTES)
        return None
    try:
        fields = json.loads(record)
        tenant = Tenant(
            str(fields["name"]),
            float(fields["created"]),
            str(fields["user_token_hash"]),
            str(fields["probe_key"]),
        )
    except (ValueError, TypeError, KeyError):
        log.warning("left out a tenant record of the store that is not one: %r", record[:80])
        return None
    hexes = (tenant.user_token_hash, tenant.probe_key)
    if not NAME.fullmatch(tenant.name) or not all(HEX_64.fullmatch(value) for value in hexes):
        log.warning("left out a tenant record of the store whose fields are not a tenant's: %r", record[:80])
        return None
    return tenant


#: How often a replica writes the bytes it admitted and reads what the others did: the longest the
#: others' share is out of date, so what a tenant gets past its rate is at most this much of it, per
#: replica it spreads over.
SYNC_INTERVAL = 0.2


def bytes_key(tenant: str, second: int) -> str:
    """The bytes each replica admitted for `tenant` in that second (a hash: replica id -> bytes)."""
    return f"scope:{{{tenant}}}:bytes:{second}"


class FleetBytes:
    """The `ByteBudget` of the service's replicas: each tenant's bytes of the last BURST_SECONDS seconds,
    all replicas together, may not pass its rate times BURST_SECONDS (a sliding window of per-second
    counters, as the token bucket's burst allows).

    A replica counts what it admits at once, locally, and every SYNC_INTERVAL adds it to the tenant's
    per-second hash in Redis and reads the others' shares, so admitting a message never waits for
    Redis. While Redis is away each replica still holds its tenants to the whole rate on its own, and
    the others' shares it last read age out of the window."""

    def __init__(
        self,
        url: str,
        replica_id: str,
        rate: int,
        *,
        seconds: int = int(BURST_SECONDS),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.replica_id = replica_id
        self.budget = rate * seconds
        self.seconds = seconds
        self._clock = clock
        self._redis = async_client(
            url, socket_connect_timeout=2.0, socket_timeout=COMMAND_TIMEOUT + 1.0, retry_on_timeout=False
        )
        #: By tenant then second: bytes admitted here; of those, not yet written; the others' as last read.
        self._own: dict[str, dict[int, int]] = {}
        self._unwritten: dict[str, dict[int, int]] = {}
        self._others: dict[str, dict[int, int]] = {}
        self._log = RateLimitedLog(log)
        #: Syncs that failed (Redis away or too slow).
        self.errors = 0

    def take(self, tenant: str, size: int) -> bool:
        second = int(self._clock())
        oldest = second - self.seconds + 1
        own = self._own.setdefault(tenant, {})
        used = sum(n for s, n in own.items() if s >= oldest)
        used += sum(n for s, n in self._others.get(tenant, {}).items() if s >= oldest)
        if used + size > self.budget:
            return False
        own[second] = own.get(second, 0) + size
        unwritten = self._unwritten.setdefault(tenant, {})
        unwritten[second] = unwritten.get(second, 0) + size
        return True

    def forget(self, tenant: str) -> None:
        for counts in (self._own, self._unwritten, self._others):
            counts.pop(tenant, None)

    async def sync_forever(self) -> None:
        while True:
            await asyncio.sleep(SYNC_INTERVAL)
            try:
                await self.sync()
            except (RedisError, OSError) as exc:
                self.errors += 1
                self._log.log(
                    "sync", logging.WARNING, "tenants' byte rates: the store did not answer (%s); counting alone", exc
                )

    async def sync(self) -> None:
        """Write what was admitted here since the last sync, and read the others' shares of the window."""
        second = int(self._clock())
        oldest = second - self.seconds + 1
        for by_tenant in (self._own, self._others):
            for tenant in list(by_tenant):
                by_tenant[tenant] = {s: n for s, n in by_tenant[tenant].items() if s >= oldest}
                if not by_tenant[tenant]:
                    del by_tenant[tenant]
        # What fails to be written now is counted here alone: the others see a little less of this second.
        unwritten, self._unwritten = self._unwritten, {}
        active = list(self._own)
        seconds = range(oldest, second + 1)
        async with self._redis.pipeline(transaction=False) as pipe:
            for tenant, counts in unwritten.items():
                for s, n in counts.items():
                    pipe.hincrby(bytes_key(tenant, s), self.replica_id, n)
                    pipe.expire(bytes_key(tenant, s), self.seconds + 2)
            for tenant in active:
                for s in seconds:
                    pipe.hgetall(bytes_key(tenant, s))
            results = await pipe.execute()
        shares = iter(results[2 * sum(len(c) for c in unwritten.values()) :])
        me = self.replica_id.encode()
        for tenant in active:
            self._others[tenant] = {
                s: sum(_count(n) for replica, n in cast(dict[bytes, bytes], next(shares)).items() if replica != me)
                for s in seconds
            }

    async def close(self) -> None:
        await self._redis.aclose()


def _count(value: bytes) -> int:
    """A replica's byte count as the store holds it; 0 for what is not a count."""
    try:
        return max(0, int(value))
    except ValueError:
        return 0
