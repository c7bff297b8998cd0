"""ZeroMQ settings shared by both ends of the report bus.

Probes PUB, apps SUB. The probe `connect`s its one PUB socket to every app, so the app needs to know
nothing about probes, and an app that comes and goes is just a peer ZeroMQ reconnects to.
"""

from __future__ import annotations

from typing import Any

import zmq

from scope_common.wire import MAX_MESSAGE_BYTES

DEFAULT_BUS_PORT = 4030
DEFAULT_HTTP_PORT = 4040

#: Reports queued per app before new ones are dropped. Reports are full snapshots, so an old one is
#: worth nothing once a newer exists: a short queue keeps memory flat while an app is slow or away.
SEND_HWM = 4
#: Messages the app's SUB socket queues per connection before it drops new ones. Probes publish about
#: once a second, so four are seconds of backlog while the app is busy, and a message lost past them
#: costs a missed delta, which the next full report repairs. Worst case per connection, at the
#: message size limit: 4 x 8 MiB = 32 MiB (it was 1,000 x 8 MiB = 8 GiB).
RECEIVE_HWM = 4
#: ZMTP heartbeats find a dead peer (a host that vanished without a FIN) in about 3 intervals, so the
#: probe stops queueing for it and the app drops its half of the connection.
HEARTBEAT_IVL_MS = 5_000
HEARTBEAT_TIMEOUT_MS = 15_000
#: Reconnect quickly to an app that restarts, backing off to 2 s for one that stays away: a host cut off
#: and restored is back within a couple of seconds (at 10 s, the back-off alone took most of a window),
#: and one connect attempt every 2 s per missing app costs nothing worth saving.
RECONNECT_IVL_MS = 200
RECONNECT_IVL_MAX_MS = 2_000


def configure_publisher(socket: zmq.Socket[Any]) -> None:
    """Options for a probe's PUB socket."""
    socket.setsockopt(zmq.SNDHWM, SEND_HWM)
    # Queue only for apps that are connected: a report queued for an app that is not there yet would
    # be stale by the time it arrives, and IMMEDIATE stops a dead peer from holding messages.
    socket.setsockopt(zmq.IMMEDIATE, 1)
    # Do not block process exit on undelivered reports.
    socket.setsockopt(zmq.LINGER, 0)
    set_liveness(socket)


def configure_subscriber(socket: zmq.Socket[Any]) -> None:
    """Options for an app's SUB socket."""
    socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
    # ZeroMQ drops the connection of a peer that sends more than this, before buffering it: one bad
    # or hostile probe cannot make the app allocate without bound.
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"")
    set_liveness(socket)


def set_liveness(socket: zmq.Socket[Any]) -> None:
    """Reconnect back-off, ZMTP heartbeats and TCP keepalive: a peer that vanished is noticed in
    seconds, one that comes back is found again. The control channel's sockets use the same."""
    socket.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.TCP_KEEPALIVE, 1)
