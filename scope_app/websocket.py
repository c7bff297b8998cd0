"""Pushing views to browsers: a full view first, then only what changed.

Each (topology, options) pair that somebody watches has one `ViewFeed`. When a new merged report
exists, the feed renders its view once, works out the delta once, serialises it once, and sends the
same bytes to every watcher. A browser that cannot keep up never makes the app buffer deltas for it:
while its previous message is still unsent it is marked behind, skips deltas, and gets one fresh full
view when it catches up.

Every feed costs a render per merged report whoever watches it, so the number of feeds is bounded
(each view's options are reduced to those it reads, so 34 distinct feeds exist at most), and so are
websockets in total and per client address: one client asking for every option combination once
made a single merge cost 1.5 s of the event loop. A websocket over a limit is refused before the
upgrade, with a JSON error.
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
from scope_common.supervise import Supervisor

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
#: Distinct views watched at once, by everyone. The UI watches one view per tab, mostly with the
#: default options.
MAX_FEEDS = 16
#: Open websockets, in all and per client address (a person with many tabs open).
MAX_WEBSOCKETS = 256
MAX_WEBSOCKETS_PER_CLIENT = 16


class Watcher:
    """One browser's websocket, as a feed sees it. `on_sent` is told the size of each message sent."""

    def __init__(self, send: Callable[[str], Any], on_sent: Callable[[int], None] | None = None) -> None:
        self._send = send
        self._on_sent = on_sent
        self._unsent: list[asyncio.Future[None]] = []
        self.behind = False
        #: Set by `FeedHub.join`: whose websocket it is, and the feed it watches.
        self.client = ""
        self.feed: ViewFeed | None = None

    @property
    def busy(self) -> bool:
        self._unsent = [f for f in self._unsent if not f.done()]
        return len(self._unsent) >= MAX_UNSENT

    def send(self, message: str) -> None:
        with contextlib.suppress(tornado.websocket.WebSocketClosedError):  # on_close removes it
            self._unsent.append(self._send(message))
            if self._on_sent is not None:
                self._on_sent(len(message))


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


def feed_options(topology: str, options: ViewOptions) -> ViewOptions:
    """`options` with those `topology` does not read at their defaults: one feed per view that differs."""
    read = TOPOLOGIES[topology].options
    defaults = ViewOptions()
    return ViewOptions(**{name: getattr(options if name in read else defaults, name) for name in ViewOptions.names()})


class FeedHub:
    """All feeds; told by the collector when a new merged report exists.

    Pushes are spaced by `STALE_AFTER_COSTS` times what the last one cost: in a big fleet reports
    arrive many times a second, and one push for several of them is as fresh to a person while it
    keeps rendering to a share of the app's time. A fleet that is cheap to render is pushed at once.
    A push that fails is counted and logged by `supervisor` (as task `feeds`), and the next one
    happens as usual.
    """

    def __init__(
        self,
        renderer: Renderer,
        clock: Callable[[], float] = time.monotonic,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._renderer = renderer
        self._feeds: dict[tuple[str, ViewOptions], ViewFeed] = {}
        self._clock = clock
        self._supervisor = supervisor or Supervisor(log)
        self._next_push = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._clients: dict[str, int] = {}
        #: Bytes of messages sent; websockets refused, by the limit they were over.
        self.sent_bytes = 0
        self.refused: dict[str, int] = {}

    def feed(self, topology: str, options: ViewOptions) -> ViewFeed:
        key = (topology, feed_options(topology, options))
        found = self._feeds.get(key)
        if found is None:
            found = self._feeds[key] = ViewFeed(self._renderer, *key)
        return found

    def refusal(self, client: str, topology: str, options: ViewOptions) -> str | None:
        """Why a new websocket of `client` for this view would be over a limit, or None."""
        if self._clients.get(client, 0) >= MAX_WEBSOCKETS_PER_CLIENT:
            reason = "too_many_websockets_from_client"
        elif self.watcher_count >= MAX_WEBSOCKETS:
            reason = "too_many_websockets"
        elif (topology, feed_options(topology, options)) not in self._feeds and len(self._feeds) >= MAX_FEEDS:
            reason = "too_many_views"
        else:
            return None
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return reason

    def join(self, client: str, topology: str, options: ViewOptions, send: Callable[[str], Any]) -> Watcher:
        """A new watcher of the view, sent the whole view. Leaves nothing registered when it fails."""
        feed = self.feed(topology, options)
        watcher = Watcher(send, self._count_sent)
        try:
            feed.add(watcher)
        except BaseException:
            self._forget(feed, watcher)
            raise
        watcher.client, watcher.feed = client, feed
        self._clients[client] = self._clients.get(client, 0) + 1
        return watcher

    def leave(self, watcher: Watcher) -> None:
        """Forget a watcher whose websocket closed. Once is enough; twice does nothing."""
        feed, watcher.feed = watcher.feed, None
        if feed is None:
            return
        left = self._clients.get(watcher.client, 0) - 1
        if left > 0:
            self._clients[watcher.client] = left
        else:
            self._clients.pop(watcher.client, None)
        self._forget(feed, watcher)

    def _forget(self, feed: ViewFeed, watcher: Watcher) -> None:
        feed.watchers.discard(watcher)
        key = (feed.topology, feed.options)
        if not feed.watchers and self._feeds.get(key) is feed:
            del self._feeds[key]

    def _count_sent(self, size: int) -> None:
        self.sent_bytes += size

    def failed_open(self) -> None:
        """Count and log (rate-limited) the exception being handled, raised opening a websocket."""
        self._supervisor.failed("websocket_open")

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
                self._supervisor.failed("feeds")
        done = self._clock()
        self._next_push = done + STALE_AFTER_COSTS * (done - start)

    @property
    def watcher_count(self) -> int:
        return sum(len(f.watchers) for f in self._feeds.values())

    @property
    def feed_count(self) -> int:
        return len(self._feeds)


class TopologyWebSocket(tornado.websocket.WebSocketHandler):
    """`/api/topology/{id}/ws`: the view, then its changes."""

    hub: FeedHub
    allowed_origins: frozenset[str]

    def initialize(self, hub: FeedHub, allowed_origins: frozenset[str] = frozenset()) -> None:
        self.hub = hub
        self.allowed_origins = allowed_origins
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
            options = view_options({k: self.get_argument(k) for k in self.request.arguments})
        except ValueError as exc:
            self.set_status(400)
            self.finish({"error": str(exc)})
            return
        refused = self.hub.refusal(self.request.remote_ip or "", topology, options)
        if refused is not None:
            # 429 for what one client can fix by closing tabs; 503 for the app's own limits.
            self.set_status(429 if refused == "too_many_websockets_from_client" else 503)
            self.finish({"error": f"refused: {refused.replace('_', ' ')}"})
            return
        await super().get(*args, **kwargs)

    def open(self, *args: str, **kwargs: str) -> None:
        options = view_options({k: self.get_argument(k) for k in self.request.arguments})
        try:
            self._watcher = self.hub.join(self.request.remote_ip or "", args[0], options, self.write_message)
        except Exception:
            # Nothing of it stays registered (`join`); the browser reconnects and tries again.
            self.hub.failed_open()
            self.close(1011, "the view could not be opened")

    def on_message(self, message: str | bytes) -> None:
        """Browsers have nothing to say yet; the controls issue will use this direction."""

    def on_close(self) -> None:
        if self._watcher is not None:
            self.hub.leave(self._watcher)
            self._watcher = None
