"""Pushing views to browsers: a full view first, then only what changed.

Each (topology, options) pair that somebody watches has one `ViewFeed`. When a new merged report
exists, the feed renders its view once, works out the delta once, serialises it once, and sends the
same bytes to every watcher. A browser that cannot keep up never makes the app buffer deltas for it:
while its previous message is still unsent it is marked behind, skips deltas, and gets one fresh full
view when it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import tornado.websocket

from scope_app.render import STALE_AFTER_COSTS, TOPOLOGIES, Renderer, view_options
from scope_app.render.base import Json, ViewOptions

log = logging.getLogger(__name__)


def view_delta(old: dict[str, Json], new: dict[str, Json]) -> Json:
    """`{add, update, remove}` turning the node summaries `old` into `new`. Messages also say the
    view's `total`: how many nodes it had before the cap (MAX_VIEW_NODES) kept the most connected."""
    update = []
    for node_id, summary in new.items():
        before = old.get(node_id)
        # An unchanged node's summary is the very same object (views reuse them): no comparing.
        if before is not None and before is not summary and before != summary:
            update.append(summary)
    return {
        "add": [summary for node_id, summary in new.items() if node_id not in old],
        "update": update,
        "remove": [node_id for node_id in old if node_id not in new],
    }


#: Messages a watcher may have unsent before it counts as behind. One is normal (a write's future
#: completes a loop turn later); two in flight means the browser is not reading fast enough.
MAX_UNSENT = 2


class Watcher:
    """One browser's websocket, as a feed sees it."""

    def __init__(self, send: Callable[[str], Any]) -> None:
        self._send = send
        self._unsent: list[asyncio.Future[None]] = []
        self.behind = False

    @property
    def busy(self) -> bool:
        self._unsent = [f for f in self._unsent if not f.done()]
        return len(self._unsent) >= MAX_UNSENT

    def send(self, message: str) -> None:
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):  # on_close removes it
            self._unsent.append(self._send(message))


class ViewFeed:
    """One watched view and its watchers."""

    def __init__(self, renderer: Renderer, topology: str, options: ViewOptions) -> None:
        self._renderer = renderer
        self.topology = topology
        self.options = options
        self.watchers: set[Watcher] = set()
        self._version = -1
        self._summaries: dict[str, Json] = {}

    def reset_message(self) -> str:
        view = self._renderer.view(self.topology, self.options)
        return json.dumps(
            {"reset": True, "add": list(view.summaries.values()), "update": [], "remove": [], "total": view.total}
        )

    def add(self, watcher: Watcher) -> None:
        self.catch_up()
        self.watchers.add(watcher)
        watcher.send(self.reset_message())

    def catch_up(self) -> None:
        """Send the change since the last version to every watcher, if the view changed."""
        if self._version == self._renderer.version:
            return
        self._version = self._renderer.version
        view = self._renderer.view(self.topology, self.options, max_age=0.0)
        delta = view_delta(self._summaries, view.summaries)
        self._summaries = view.summaries
        if not (delta["add"] or delta["update"] or delta["remove"]):
            return
        delta["total"] = view.total
        message = json.dumps(delta)
        reset: str | None = None
        for watcher in self.watchers:
            if watcher.busy:
                watcher.behind = True
                continue
            if watcher.behind:
                reset = reset or self.reset_message()
                watcher.behind = False
                watcher.send(reset)
            else:
                watcher.send(message)


class FeedHub:
    """All feeds; told by the collector when a new merged report exists.

    Pushes are spaced by `STALE_AFTER_COSTS` times what the last one cost: in a big fleet reports
    arrive many times a second, and one push for several of them is as fresh to a person while it
    keeps rendering to a share of the app's time. A fleet that is cheap to render is pushed at once.
    """

    def __init__(self, renderer: Renderer, clock: Callable[[], float] = time.monotonic) -> None:
        self._renderer = renderer
        self._feeds: dict[tuple[str, ViewOptions], ViewFeed] = {}
        self._clock = clock
        self._next_push = 0.0
        self._pending: asyncio.TimerHandle | None = None

    def feed(self, topology: str, options: ViewOptions) -> ViewFeed:
        key = (topology, options)
        found = self._feeds.get(key)
        if found is None:
            found = self._feeds[key] = ViewFeed(self._renderer, topology, options)
        return found

    def remove(self, feed: ViewFeed, watcher: Watcher) -> None:
        feed.watchers.discard(watcher)
        if not feed.watchers:
            self._feeds.pop((feed.topology, feed.options), None)

    def changed(self) -> None:
        if self._pending is not None:
            return
        delay = self._next_push - self._clock()
        if delay > 0:
            with contextlib.suppress(RuntimeError):  # no loop (tests, benchmarks): push now
                self._pending = asyncio.get_running_loop().call_later(delay, self._push)
                return
        self._push()

    def _push(self) -> None:
        self._pending = None
        start = self._clock()
        for feed in list(self._feeds.values()):
            try:
                feed.catch_up()
            except Exception:
                log.exception("pushing %s failed", feed.topology)
        done = self._clock()
        self._next_push = done + STALE_AFTER_COSTS * (done - start)

    @property
    def watcher_count(self) -> int:
        return sum(len(f.watchers) for f in self._feeds.values())


class TopologyWebSocket(tornado.websocket.WebSocketHandler):
    """`/api/topology/{id}/ws`: the view, then its changes."""

    hub: FeedHub
    allowed_origins: frozenset[str]

    def initialize(self, hub: FeedHub, allowed_origins: frozenset[str] = frozenset()) -> None:
        self.hub = hub
        self.allowed_origins = allowed_origins
        self._feed: ViewFeed | None = None
        self._watcher: Watcher | None = None

    def get_compression_options(self) -> dict[str, Any]:
        """permessage-deflate: views are repetitive JSON and shrink several times over."""
        return {}

    def check_origin(self, origin: str) -> bool:
        """Same origin, or one configured: another site's page must not read the map."""
        parsed = urlparse(origin)
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        return parsed.netloc.lower() == self.request.host.lower()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        topology = args[0] if args else ""
        if topology not in TOPOLOGIES:
            self.set_status(404)
            self.finish({"error": f"unknown topology {topology[:60]!r}"})
            return
        try:
            view_options({k: self.get_argument(k) for k in self.request.arguments})
        except ValueError as exc:
            self.set_status(400)
            self.finish({"error": str(exc)})
            return
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        options = view_options({k: self.get_argument(k) for k in self.request.arguments})
        self._feed = self.hub.feed(args[0], options)
        self._watcher = Watcher(self.write_message)
        self._feed.add(self._watcher)

    def on_message(self, message: str | bytes) -> None:
        """Browsers have nothing to say yet; the controls issue will use this direction."""

    def on_close(self) -> None:
        if self._feed is not None and self._watcher is not None:
            self.hub.remove(self._feed, self._watcher)
