"""The report bus: a SUB socket bound on the bus address, feeding the collector.

Every message is decoded here; one that cannot be is dropped, logged (rate-limited) and counted by
reason. Nothing a sender does reaches the rest of the app as an exception.
"""

from __future__ import annotations

import logging

import zmq
import zmq.asyncio

from scope_app.collector import Collector
from scope_common import wire
from scope_common.bus import configure_subscriber
from scope_common.drops import Drops

log = logging.getLogger(__name__)

#: Messages taken in one go before the merge they share.
MAX_BATCH = 500


class BusReceiver:
    def __init__(self, collector: Collector, context: zmq.asyncio.Context, bind: str) -> None:
        self._collector = collector
        self._socket = context.socket(zmq.SUB)
        configure_subscriber(self._socket)
        self._socket.bind(bind)
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received = 0
        self.received_bytes = 0
        self._drops = Drops(log, "dropped a report")
        #: Dropped messages by reason.
        self.dropped = self._drops.counts

    async def run(self) -> None:
        while True:
            self.handle(await self._socket.recv())
            # Take what has already arrived before the loop runs the merge this scheduled: a burst of
            # reports from many probes then costs one merge, not one each. Bounded, so requests are
            # still served while a flood comes in.
            for _ in range(MAX_BATCH):
                if not int(self._socket.get(zmq.EVENTS)) & zmq.POLLIN:
                    break
                self.handle(await self._socket.recv())

    def handle(self, message: bytes) -> None:
        self.received += 1
        self.received_bytes += len(message)
        try:
            envelope = wire.decode(message)
        except wire.DecodeError as exc:
            self._drops.add(exc.reason, str(exc))
            return
        self._collector.add(envelope)

    def close(self) -> None:
        self._socket.close(linger=0)
