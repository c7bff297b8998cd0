"""Controls in the browser: real app and probe, busybox containers on the real engine, headless Chromium.

The buttons of the details panel act on the container; exec opens a terminal (xterm.js) on the pipe; a
read-only app draws no buttons. No asyncio here (the Playwright sync API owns the loop).
"""

from __future__ import annotations

import re
import signal
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.fixtures.browser import screenshot
from tests.fixtures.docker import Containers
from tests.fixtures.scope import App, Scope, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.browser]

HOST = "ui-controls-host"
TIMEOUT_MS = 15_000


@pytest.fixture
def app(scope: Scope) -> Iterator[App]:
    app = scope.app()
    scope.probe([app.bus], hostname=HOST)
    yield app


def _node_id(container: Any) -> str:
    return f"{container.id};<container>"


def _open_details(page: Page, app: App, container: Any) -> None:
    """The page on the containers view, searched down to `container`, its details open."""
    query = urllib.parse.urlencode({"q": container.name, "node": _node_id(container)})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{app.url}/#/containers?{query}")
    # The first page of a session waits for a cold browser as well: more than expect's own 5 s default.
    expect(page.get_by_test_id("details-title")).to_have_text(container.name, timeout=TIMEOUT_MS)


def _wait_reachable(app: App, container: Any) -> None:
    """Until the app can reach the probe that offers the container's controls (400 for no such control)."""

    def reachable() -> bool:
        controls = app.node("containers", _node_id(container))["controls"]
        return bool(controls) and app.control(controls[0]["probeId"], _node_id(container), "none")[0] == 400

    wait_for(reachable, timeout=15, what="the container's controls and the probe's channel")


def test_stop_in_the_details_panel_takes_it_off_the_map(app: App, containers: Containers, page: Page) -> None:
    container = containers.run(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"], name="stopme")
    _wait_reachable(app, container)
    _open_details(page, app, container)
    stop = page.get_by_test_id("details-control-docker_stop_container")
    expect(stop).to_be_visible()
    expect(stop).to_have_attribute("title", "Stop")
    expect(stop.locator("svg")).to_have_count(1)
    page.wait_for_function("(id) => window.scopeUI.nodeIds().includes(id)", arg=_node_id(container))
    stop.click()
    page.wait_for_function("(id) => !window.scopeUI.nodeIds().includes(id)", arg=_node_id(container), polling=50)
    container.reload()
    assert container.status == "exited"
    expect(page.get_by_test_id("details-gone")).to_be_visible()


def test_a_refused_control_shows_the_engines_reason(app: App, containers: Containers, page: Page) -> None:
    container = containers.run(["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"], name="refuse")
    _wait_reachable(app, container)
    _open_details(page, app, container)
    pause = page.get_by_test_id("details-control-docker_pause_container")
    expect(pause).to_be_visible()
    container.pause()  # behind the page's back: the button is still there, the engine will refuse
    pause.click()
    expect(page.get_by_test_id("details-control-error")).to_contain_text("already paused")


def test_the_exec_shell_opens_a_terminal_that_runs_commands(app: App, containers: Containers, page: Page) -> None:
    container = containers.run(["sleep", "600"], name="shell")
    _wait_reachable(app, container)
    _open_details(page, app, container)
    page.get_by_test_id("details-control-docker_exec_container").click()
    terminal = page.get_by_test_id("terminal")
    expect(terminal).to_be_visible()
    expect(page.get_by_test_id("pipe-status")).to_have_text("connected")
    expect(terminal.locator(".xterm-rows")).to_contain_text("/ #")
    page.keyboard.type("echo hello-$((6*7))\n")
    expect(terminal.locator(".xterm-rows")).to_contain_text("hello-42")
    # The terminal told the shell its size: the rows it draws are the rows stty reports.
    rows = terminal.locator(".xterm-rows > div").count()
    assert rows > 5
    page.keyboard.type("stty size\n")
    expect(terminal.locator(".xterm-rows")).to_contain_text(re.compile(rf"stty size\s*{rows} \d+"))
    screenshot(page, "ui-exec-terminal", full_page=False)
    page.keyboard.type("exit\n")
    expect(page.get_by_test_id("pipe-status")).to_contain_text("Connection closed")


def test_a_read_only_app_draws_no_buttons(scope: Scope, containers: Containers, page: Page) -> None:
    app = scope.app(extra=["--read-only"])
    scope.probe([app.bus], hostname=HOST)
    container = containers.run(["sleep", "600"], name="ro")
    wait_for(lambda: _node_id(container) in app.nodes("containers"), timeout=15, what="the container")
    _open_details(page, app, container)
    expect(page.get_by_test_id("details-meta-image")).to_be_visible()
    expect(page.get_by_test_id("details-connections-in")).to_be_visible()  # the REST details arrived
    expect(page.get_by_test_id("details-controls")).to_have_count(0)


def test_the_logs_pane_follows_pauses_and_filters(app: App, containers: Containers, page: Page) -> None:
    script = "echo apple; echo banana; i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.3; done"
    container = containers.run(["sh", "-c", script], name="logs")
    _wait_reachable(app, container)
    _open_details(page, app, container)
    page.get_by_test_id("details-control-docker_logs_container").click()
    logs = page.get_by_test_id("logs")
    expect(logs).to_contain_text("banana")
    expect(logs).to_contain_text("tick-3")
    page.get_by_test_id("logs-search").fill("banana")
    expect(logs).to_have_text("banana")
    page.get_by_test_id("logs-search").fill("")
    page.get_by_test_id("logs-pause").click()
    shown = logs.inner_text()
    page.wait_for_timeout(1000)  # new lines arrive (one every 0.3 s) but are not shown while paused
    assert logs.inner_text() == shown
    page.get_by_test_id("logs-pause").click()
    expect(logs).not_to_have_text(shown)


def test_controls_are_disabled_with_the_reason_while_their_probe_cannot_be_reached(
    scope: Scope, containers: Containers, page: Page
) -> None:
    app = scope.app()
    probe = scope.probe([app.bus], hostname=HOST)
    container = containers.run(["sleep", "600"], name="cutoff")
    _wait_reachable(app, container)
    _open_details(page, app, container)
    stop = page.get_by_test_id("details-control-docker_stop_container")
    expect(stop).to_be_enabled()
    expect(page.get_by_test_id("details-controls-unreachable")).to_have_count(0)
    # A probe that stops answering (frozen here; a host cut off or gone looks the same) leaves its nodes on
    # the map for the app's window, and their buttons with them: they are disabled, with the reason.
    probe.process.send_signal(signal.SIGSTOP)
    try:
        # Noticed within the heartbeat timeout, shown at the panel's next check.
        expect(page.get_by_test_id("details-controls-unreachable")).to_contain_text(
            "cannot be reached", timeout=TIMEOUT_MS
        )
        expect(stop).to_be_disabled()
        expect(stop).to_have_attribute("title", re.compile("unavailable"))
        assert _node_id(container) in app.nodes("containers"), "the node is still on the map"
    finally:
        probe.process.send_signal(signal.SIGCONT)
    expect(page.get_by_test_id("details-controls-unreachable")).to_have_count(0, timeout=TIMEOUT_MS)
    expect(stop).to_be_enabled()
