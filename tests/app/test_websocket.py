"""Websockets: a full view first, then only changes, pushed as soon as a report arrives."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import tornado.httpclient
import tornado.websocket

from tests.fixtures.reports import container_id, containers_report
from tests.fixtures.scope import App, ReportSender, Scope


async def _connect(app: App, path: str, origin: str | None = None) -> tornado.websocket.WebSocketClientConnection:
    headers = {"Origin": origin} if origin else {}
    request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{app.http_port}{path}", headers=headers)
    return await tornado.websocket.websocket_connect(request)


async def _next(ws: tornado.websocket.WebSocketClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    message = await asyncio.wait_for(ws.read_message(), timeout)
    assert isinstance(message, str), "the socket closed"
    decoded: dict[str, Any] = json.loads(message)
    return decoded


def test_reset_then_add_update_remove(scope: Scope) -> None:
    app = scope.app()
    sender = ReportSender(app)
    sender.send_until(containers_report("alpha"), lambda: app.nodes("containers"))

    async def scenario() -> None:
        ws = await _connect(app, "/api/topology/containers/ws")
        first = await _next(ws)
        assert first["reset"] is True
        assert [n["label_major"] for n in first["add"]] == ["alpha"]

        started = time.monotonic()
        sender.send(containers_report("alpha", "beta"))
        delta = await _next(ws)
        assert [n["label_major"] for n in delta["add"]] == ["beta"]
        assert delta["remove"] == []
        assert time.monotonic() - started < 2.0, "a change is pushed at once, not on a timer"

        sender.send(containers_report("beta"))
        delta = await _next(ws)
        assert delta["remove"] == [container_id("alpha")]
        ws.close()

    try:
        asyncio.run(scenario())
    finally:
        sender.close()


def test_a_page_from_another_origin_is_refused(scope: Scope) -> None:
    app = scope.app()

    async def scenario() -> None:
        with pytest.raises(tornado.httpclient.HTTPClientError) as info:
            await _connect(app, "/api/topology/containers/ws", origin="http://evil.example")
        assert info.value.code == 403
        ws = await _connect(app, "/api/topology/containers/ws", origin=f"http://127.0.0.1:{app.http_port}")
        assert (await _next(ws))["reset"] is True
        ws.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(("path", "status"), [("/api/topology/nope/ws", 404), ("/api/topology/hosts/ws?pseudo=x", 400)])
def test_bad_websocket_requests_get_clear_errors(scope: Scope, path: str, status: int) -> None:
    app = scope.app()

    async def scenario() -> None:
        with pytest.raises(tornado.httpclient.HTTPClientError) as info:
            await _connect(app, path)
        assert info.value.code == status

    asyncio.run(scenario())


def test_a_browser_that_does_not_read_gets_no_backlog_then_one_fresh_view() -> None:
    """Memory stays bounded for a slow browser: at most MAX_UNSENT messages wait for it, the deltas it
    misses are dropped, and it gets the whole view again once it reads."""
    from scope_app.render import Renderer
    from scope_app.render.base import ViewOptions
    from scope_app.websocket import MAX_UNSENT, FeedHub, Watcher

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        renderer = Renderer()
        hub = FeedHub(renderer, clock=lambda: 0.0)  # a clock that stands still: every change is pushed at once
        sent: list[tuple[asyncio.Future[None], dict[str, Any]]] = []

        def send(message: str) -> asyncio.Future[None]:
            future: asyncio.Future[None] = loop.create_future()  # never completes: the browser is stuck
            sent.append((future, json.loads(message)))
            return future

        feed = hub.feed("containers", ViewOptions())
        feed.add(Watcher(send))
        for version, names in enumerate([("a",), ("a", "b"), ("a", "b", "c"), ("b", "c"), ("c",)], start=1):
            renderer.update(containers_report(*names), version)
            hub.changed()
        assert len(sent) == MAX_UNSENT, "nothing more is queued for a browser that does not read"
        for future, _ in sent:
            future.set_result(None)
        renderer.update(containers_report("c", "d"), 99)
        hub.changed()
        fresh = sent[-1][1]
        assert fresh["reset"] is True
        assert sorted(n["label_major"] for n in fresh["add"]) == ["c", "d"]

    asyncio.run(scenario())


async def _refused(app: App, path: str, source: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{app.http_port}{path}", network_interface=source)
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await tornado.websocket.websocket_connect(request)
    assert info.value.response is not None
    return info.value.code, json.loads(info.value.response.body)


def test_websockets_are_limited_per_client_and_views_in_total(scope: Scope) -> None:
    """One client cannot open sockets without end, nor all clients together make the app render more
    views per merge than MAX_FEEDS; options a view does not read do not make another view."""
    from scope_app.websocket import MAX_FEEDS, MAX_WEBSOCKETS_PER_CLIENT

    app = scope.app()

    async def scenario() -> None:
        sockets = [await _connect(app, "/api/topology/hosts/ws") for _ in range(MAX_WEBSOCKETS_PER_CLIENT)]
        code, body = await _refused(app, "/api/topology/hosts/ws")
        assert code == 429 and "too many websockets from client" in body["error"]
        for ws in sockets:
            ws.close()
        # Every option combination of the containers views: 8 each, so 16 views...
        views = [
            f"/api/topology/{topology}/ws?system={a}&stopped={b}&pseudo={c}"
            for topology in ("containers", "containers-by-image")
            for a in ("show", "hide")
            for b in ("show", "hide")
            for c in ("show", "hide")
        ]
        assert len(views) == MAX_FEEDS
        clients = [f"127.2.0.{n}" for n in range(1, len(views) + 2)]
        for path, client in zip(views, clients, strict=False):
            request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{app.http_port}{path}", network_interface=client)
            sockets.append(await tornado.websocket.websocket_connect(request))
        # ...and then none more, but one the hosts view does not read is the same view as the default.
        code, body = await _refused(app, "/api/topology/hosts/ws", source=clients[-1])
        assert code == 503 and "too many views" in body["error"]
        again = tornado.httpclient.HTTPRequest(
            f"ws://127.0.0.1:{app.http_port}{views[0]}&unconnected=show", network_interface=clients[-1]
        )
        ws = await tornado.websocket.websocket_connect(again)
        assert (await _next(ws))["reset"] is True
        for ws in sockets:
            ws.close()

    asyncio.run(scenario())
    refused = {k: v for k, v in app.metrics().items() if "websocket_refused" in k}
    assert refused == {
        'scope_app_websocket_refused_total{reason="too_many_views"}': 1.0,
        'scope_app_websocket_refused_total{reason="too_many_websockets_from_client"}': 1.0,
    }


def test_a_websocket_whose_opening_fails_leaves_nothing_registered() -> None:
    from scope_app.render import Renderer
    from scope_app.render.base import ViewOptions
    from scope_app.websocket import FeedHub

    def broken(message: str) -> asyncio.Future[None]:
        raise RuntimeError("the connection broke while the view was sent")

    renderer = Renderer()
    hub = FeedHub(renderer, clock=lambda: 0.0)
    with pytest.raises(RuntimeError):
        hub.join("127.0.0.1", "containers", ViewOptions(), broken)
    assert (hub.feed_count, hub.watcher_count) == (0, 0)
    renderer.update(containers_report("a"), 1)
    hub.changed()  # nothing left to push to, nothing to fail
    assert hub.refused == {}
