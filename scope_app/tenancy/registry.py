"""The tenant registry: who the tenants are and how their tokens and probes are recognised.

Tokens are never stored, only their SHA-256. They are random 256-bit secrets made here
(`new_token`), not passwords people choose: nobody can guess one from its hash faster than by trying
2^256 tokens, so a slow, salted password hash (scrypt, Argon2) would only make every request slower.
A probe token is not stored even hashed: the registry keeps the CURVE public key derived from it
(`keys.probe_keys`), which is what a probe shows when it connects, and is as one-way as the hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: Tenant names: short, printable, safe in logs, URLs and ZeroMQ's User-Id.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class RegistryError(Exception):
    """A tenant that cannot be added (a bad or taken name) or revoked (an unknown one)."""


class RegistryUnavailable(Exception):
    """The registry cannot be read now (its store does not answer, or lost its data): the service goes
    on with the tenants it knew (`TenantDirectory`)."""


@dataclass(frozen=True)
class Tenant:
    name: str
    created: float
    #: SHA-256 of the user token, hex.
    user_token_hash: str
    #: The CURVE public key of the tenant's probes, hex (derived from the probe token).
    probe_key: str


def new_token() -> str:
    """A random 256-bit secret, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What the registry keeps of a token (see the module docstring for why SHA-256 suffices)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TenantRegistry(Protocol):
    """The tenants. Implementations are safe to use from several processes at once: `scope tenants`
    changes the registry while the service runs, and the service sees it within a second."""

    def add(self, name: str, user_token_hash: str, probe_key: str) -> Tenant:
        """Add a tenant; RegistryError if the name is invalid or taken."""
        ...

    def list(self) -> list[Tenant]:
        """Every tenant, oldest first."""
        ...

    @property
    def made(self) -> str:
        """What tells this registry's making from another's, as of the last `list`: a registry made anew
        (its store lost its data, then a tenant was added) reads as a new value."""
        ...

    def revoke(self, name: str) -> None:
        """Remove a tenant: both its tokens stop working. RegistryError if there is none of that name."""
        ...

    def by_name(self, name: str) -> Tenant | None: ...

    def by_user_token_hash(self, user_token_hash: str) -> Tenant | None: ...

    def by_probe_key(self, probe_key: str) -> Tenant | None: ...


class SqliteRegistry:
    """The registry in one SQLite file (the embedded default: nothing to run beside the service).

    Every call opens its own connection, so one registry object may be used from any thread, and
    writers in other processes (`scope tenants`) are seen at the next call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS tenants ("
                " name TEXT PRIMARY KEY, created REAL NOT NULL,"
                " user_token_hash TEXT NOT NULL UNIQUE, probe_key TEXT NOT NULL UNIQUE)"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call: committed if the call succeeds, closed whatever happens."""
        db = sqlite3.connect(self.path, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers (the service) never wait for a writer
            with db:
                yield db
        finally:
            db.close()

    def add(self, name: str, user_token_hash: str, probe_key: str) -> Tenant:
        if not NAME.fullmatch(name):
            raise RegistryError(f"invalid tenant name {name[:80]!r}: letters, digits, '.', '_' and '-', at most 63")
        tenant = Tenant(name, time.time(), user_token_hash, probe_key)
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO tenants VALUES (?, ?, ?, ?)",
                    (tenant.name, tenant.created, tenant.user_token_hash, tenant.probe_key),
                )
        except sqlite3.IntegrityError:
            raise RegistryError(f"there is a tenant {name!r} already") from None
        return tenant

    def list(self) -> list[Tenant]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM tenants ORDER BY created, name").fetchall()
        return [Tenant(*row) for row in rows]

    @property
    def made(self) -> str:
        return ""  # one file, made once: a lost one is a service that starts anew

    def revoke(self, name: str) -> None:
        with self._connect() as db:
            if db.execute("DELETE FROM tenants WHERE name = ?", (name,)).rowcount == 0:
                raise RegistryError(f"there is no tenant {name[:80]!r}")

    def by_name(self, name: str) -> Tenant | None:
        return self._one("name", name)

    def by_user_token_hash(self, user_token_hash: str) -> Tenant | None:
        return self._one("user_token_hash", user_token_hash)

    def by_probe_key(self, probe_key: str) -> Tenant | None:
        return self._one("probe_key", probe_key)

    def _one(self, column: str, value: str) -> Tenant | None:
        with self._connect() as db:
            row = db.execute(f"SELECT * FROM tenants WHERE {column} = ?", (value,)).fetchone()
        return Tenant(*row) if row else None
