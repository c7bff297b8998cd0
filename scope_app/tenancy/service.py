"""What `scope app --multitenant` is given: its registry, its key pair and each tenant's limits."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from scope_app.tenancy.limits import TenantLimits
from scope_app.tenancy.registry import SqliteRegistry, TenantRegistry
from scope_app.tenancy.shared import RedisRegistry
from scope_common.config import env_flag
from scope_common.curve import KeyPair, service_keys

#: The registry's file in --state-dir.
REGISTRY_FILE = "tenants.sqlite"


@dataclass
class Service:
    registry: TenantRegistry
    keys: KeyPair
    limits: TenantLimits = field(default_factory=TenantLimits)


def open_service(state_dir: Path, limits: TenantLimits | None = None, store: str | None = None) -> Service:
    """The service kept in `state_dir`, made there on first use (the key pair, an empty registry); with
    `store` (a Redis URL, the replicas'), its registry is there, and its key pair must be the one the
    other replicas pinned (RegistryError otherwise; RegistryUnavailable if the store does not answer)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = service_keys(state_dir)
    registry: TenantRegistry
    if store:
        registry = shared = RedisRegistry(store)
        shared.pin_service_key(keys.public)
    else:
        registry = SqliteRegistry(state_dir / REGISTRY_FILE)
    return Service(registry, keys, limits or TenantLimits())


def add_state_dir_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--state-dir`, the same for `scope app --multitenant` and `scope tenants`."""
    env_flag(
        parser,
        "--state-dir",
        default="/var/lib/scope",
        type=Path,
        help="the service's tenant registry and CURVE key pair (made on first use)",
    )
