"""App replicas over Redis: any replica ingests, any replica serves.

The state replicas share is the probes' wire messages themselves. A replica that receives a message
on its own bus has decoded it and its collector has accepted it; it then writes the raw bytes to Redis
(`ReplicaLink.publish`), and every other replica feeds them into its own collector through the same
decoding and applying code as its own bus (`BusReceiver.handle`). So each replica holds every probe's
report, merges it and serves it; a browser may talk to any replica and a probe may report to any.

Why messages and not merged pictures: a message is small (a delta is what changed), already has a
format every replica decodes with the same limits and checks, and the receiving side already knows how
to rebuild a probe's report from it, including what to do with a copy (`stale`) or a lost message
(`missed_delta`: ask the probe for a full report, through the replica holding its control channel
when it is another's, and wait for it). A replica that restarts or reconnects needs nothing
else either: each probe's latest full report, kept under its own key, and the stream of messages
since, replayed in order, rebuild the same picture.

Why each replica merges everything and renders only what its clients watch (rather than one replica
rendering for the fleet): merging a message costs what it changed (`MergedReport`), while rendering
costs the view; views are rendered only for open websockets and requests (`FeedHub`, `Renderer`), so a
replica with no browser on a tenant spends nothing on its views, and no replica ever waits for another
to render. Moving rendered views through Redis would cost more bytes than the messages they come from.

The multi-tenant service (--multitenant) shares each tenant's messages the same way, in a channel of
its own (`tenant_channel`: the name and a fingerprint of the tenant's probe key), and every replica
follows every tenant of the registry (scope_app.tenancy.shared.RedisRegistry, also in Redis). A message
is admitted (ZAP, the tenant's limits counted across replicas) by the replica whose bus it reached;
the others apply it under the tenant it was filed under there, to that tenant's collector only.

Layout in Redis, per tenant T (without --multitenant the one implicit tenant, ""; with it, the tenant's
channel; the `{T}` is a Redis Cluster hash tag: one tenant's keys share a slot):
- `scope:{T}:reports`: a stream of every accepted message (fields: r replica id, s source address,
  p probe id, f full, m message), trimmed to the window (MINID), expiring when no one writes to it.
- `scope:{T}:full:PROBE`: the probe's latest full report (fields s, m), expiring after the window, so
  a probe that went away leaves nothing behind and a crashed replica loses only what expires anyway.
"""

from scope_app.replicas.link import ReplicaLink, ReplicaMetrics

__all__ = ["ReplicaLink", "ReplicaMetrics"]
