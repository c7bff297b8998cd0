"""Tenancy: one app serving many tenants, each isolated from the others (`scope app --multitenant`).

The seams a service past one machine replaces, each a small interface with one implementation here:

- `registry.TenantRegistry`: the tenants, their token hashes and probe keys (SQLite in --state-dir);
- `store.LatestReports`: each tenant's probes' latest reports (in this process, a collector a tenant).

`keys` holds the CURVE key pairs (the service's, and each probe's, derived from its probe token) and
`zap` the authenticator that maps a probe's public key to its tenant. Without --multitenant the app has
one implicit tenant, `SINGLE_TENANT`, and none of this is in the way.
"""

from __future__ import annotations

import zmq

#: The tenant of an app without --multitenant (and the User-Id of messages on a bus without ZAP).
SINGLE_TENANT = ""


def frame_property(frame: zmq.Frame, name: str) -> str:
    """A ZeroMQ message property (`User-Id`, `Peer-Address`) of `frame`; "" where the connection has
    none (no ZAP, or a transport without addresses)."""
    try:
        return str(frame.get(name))
    except zmq.ZMQError:
        return ""
