"""Access control: with a token, every API route, websocket and pipe needs it; a browser logs in once."""

from __future__ import annotations

import asyncio
import http.client
import urllib.parse

import pytest
import tornado.httpclient
import tornado.websocket

from scope_app.auth import choose_token
from tests.fixtures.scope import App, Scope

TOKEN = "a-test-token-of-some-length"


def _request(app: App, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    return connection.getresponse()


async def _websocket_status(app: App, path: str, headers: dict[str, str]) -> int:
    request = tornado.httpclient.HTTPRequest(f"ws://127.0.0.1:{app.http_port}{path}", headers=headers)
    try:
        ws = await tornado.websocket.websocket_connect(request)
    except tornado.httpclient.HTTPClientError as exc:
        return exc.code
    ws.close()
    return 101


def test_with_a_token_nothing_answers_without_it(scope: Scope) -> None:
    app = scope.app(extra=[f"--auth-token={TOKEN}"])
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/api", "/api/topology", "/api/report", "/api/probes", "/api/nope"):
        response = _request(app, path)
        assert response.status == 401, path
        assert "token" in response.read().decode()
        assert response.getheader("WWW-Authenticate", "").startswith("Bearer")
    assert _request(app, "/api", {"Authorization": "Bearer wrong"}).status == 401
    assert _request(app, "/api", bearer).status == 200
    status, _ = app.post("/api/control/p/n/docker_stop_container")
    assert status == 401
    ws = "/api/topology/containers/ws"
    pipe = "/api/pipe/" + "0" * 32
    assert asyncio.run(_websocket_status(app, ws, {})) == 401
    assert asyncio.run(_websocket_status(app, pipe, {})) == 401
    assert asyncio.run(_websocket_status(app, ws, bearer)) == 101
    assert asyncio.run(_websocket_status(app, pipe, bearer)) == 404, "past the token: no such pipe"


def test_a_browser_logs_in_once_with_the_url_and_keeps_a_session(scope: Scope) -> None:
    app = scope.app(extra=[f"--auth-token={TOKEN}"])
    page = _request(app, "/")
    assert page.status == 401
    assert "needs a token" in page.read().decode(), "the page says what to do"
    assert _request(app, "/?token=wrong").status == 401
    login = _request(app, f"/?token={urllib.parse.quote(TOKEN)}&x=1")
    assert login.status == 302
    assert login.getheader("Location") == "/?x=1", "the token is dropped from the address"
    cookie = login.getheader("Set-Cookie", "")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = {"Cookie": cookie.split(";")[0]}
    assert _request(app, "/", session).status == 200
    assert _request(app, "/api", session).status == 200
    assert asyncio.run(_websocket_status(app, "/api/topology/containers/ws", session)) == 101


def test_an_app_on_loopback_stays_open_and_one_beyond_makes_a_token_up() -> None:
    assert choose_token("127.0.0.1", "", no_auth=False) == (None, False)
    assert choose_token("::1", "", no_auth=False) == (None, False)
    token, generated = choose_token("0.0.0.0", "", no_auth=False)
    assert token and len(token) >= 24 and generated
    assert choose_token("0.0.0.0", "", no_auth=True) == (None, False)
    assert choose_token("10.1.2.3", "given", no_auth=False) == ("given", False)
    assert choose_token("127.0.0.1", "given", no_auth=False) == ("given", False)


@pytest.mark.parametrize("flags", [[], ["--no-auth"]])
def test_an_open_app_answers_without_a_token(scope: Scope, flags: list[str]) -> None:
    app = scope.app(extra=flags)
    assert _request(app, "/api").status == 200
