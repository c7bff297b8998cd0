"""The browser UI against real components: an app and a probe as subprocesses, busybox containers on the
real Docker engine, and headless Chromium driving the page like a person would.

One app, one probe and four containers serve the whole module (starting them is most of the cost): `web`
runs httpd, `fetch-1` fetches from it in a loop with wget, `fetch-2` holds a connection open with nc (so
the map has an edge whatever the probe's sampling catches of the short wget connections) and `idle` only
sleeps. Tests that start or stop containers use containers of their own, so the module's set never changes.

Other containers may run on the same engine (other sessions, benchmarks), so the tests look for their own
nodes by id or by the unique name prefix and never assume a view holds only theirs. No asyncio here: the
module's Playwright sync API owns the main thread's event loop (see tests/fixtures/browser.py).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from scope_common import ids
from scope_common.report import CONTAINER_ID, CONTAINER_NAME, CONTAINER_STATE, HOST_NODE_ID, HOSTNAME, Node, Report
from tests.fixtures.browser import screenshot
from tests.fixtures.docker import Containers
from tests.fixtures.scope import App, ReportSender, Scope, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.browser]

APPEAR_TIMEOUT_S = 15.0  # generous: a started or stopped container normally shows in the page within ~2 s
# For what the page fetches over HTTP: a request lost to a network change (see UI.open) is retried by the page
# itself, the topology list after 5 s, node details on the node's next update.
EXPECT_MS = 12_000
COLLATOR_JS = 'new Intl.Collator("en", {numeric: true, sensitivity: "base"})'


@dataclass(frozen=True)
class Stack:
    """The module's app, the hostname its probe reports, and the module's containers by short name."""

    app: App
    hostname: str
    prefix: str
    image: str
    containers: dict[str, Any]

    def node_id(self, short: str) -> str:
        return ids.container_id(self.containers[short].id)

    def name(self, short: str) -> str:
        return self.prefix + short

    @property
    def node_ids(self) -> list[str]:
        return sorted(self.node_id(short) for short in self.containers)


@pytest.fixture(scope="module")
def stack(docker_client: Any, busybox_image: str) -> Iterator[Stack]:
    processes = Scope()
    group = Containers(docker_client, busybox_image)
    try:
        app = processes.app()
        hostname = f"ui-{secrets.token_hex(3)}"
        probe = processes.probe([app.bus], hostname=hostname)
        web = group.run(
            ["sh", "-c", "echo hello-from-scope > /www/index.html && exec httpd -f -p 80 -h /www"], name="web"
        )
        web_ip = group.ip(web)
        running = {
            "web": web,
            "fetch-1": group.run(
                ["sh", "-c", f"while true; do wget -q -O /dev/null http://{web_ip}/; sleep 0.2; done"], name="fetch-1"
            ),
            # httpd waits up to 60 s for a request line: each nc connection stays open for 50 s.
            "fetch-2": group.run(["sh", "-c", f"while true; do sleep 50 | nc {web_ip} 80; done"], name="fetch-2"),
            "idle": group.run(["sleep", "3600"], name="idle"),
        }
        built = Stack(app, hostname, group.prefix, busybox_image, running)
        wait_for(
            lambda: set(built.node_ids) <= app.nodes("containers").keys(),
            30,
            what=f"the app to show the module's containers (probe log: {probe.log_path})",
        )
        yield built
    finally:
        group.cleanup()
        processes.close()


class UI:
    """The page plus helpers that read it through `window.scopeUI` and the data-testid attributes."""

    def __init__(self, page: Page, app: App) -> None:
        self.page = page
        self.app = app
        self.errors: list[str] = []
        self.sockets: list[str] = []  # URL of every websocket the page opened
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on("websocket", lambda ws: self.sockets.append(ws.url))
        # For failure messages: what the browser could not load, and what the page logged.
        self.log: list[str] = []
        page.on("requestfailed", lambda request: self.log.append(f"request failed: {request.url} {request.failure}"))
        page.on("console", lambda message: self.log.append(f"console.{message.type}: {message.text}"))
        page.set_default_timeout(APPEAR_TIMEOUT_S * 1000)

    def open(self, hash_: str = "containers", attempts: int = 3) -> None:
        """Load the page at `#/<hash_>` and wait for the websocket's first full view.

        Chromium aborts requests in flight when the host's network interfaces change (net::ERR_NETWORK_CHANGED),
        and Docker adds or removes a veth interface with every container that starts or stops, here or in
        another session on the same engine. A module script lost that way leaves the page without its code,
        so such a load is retried; any other failure is not.
        """
        for attempt in range(1, attempts + 1):
            seen = len(self.log)
            if attempt == 1:
                self.page.goto(f"{self.app.url}/#/{hash_}")
            else:
                self.page.reload()  # a goto to the same URL would only be a same-document hash change
            lost = [line for line in self.log[seen:] if "ERR_NETWORK_CHANGED" in line]
            if lost and attempt < attempts and self.page.evaluate("() => window.scopeUI === undefined"):
                print(f"page load {attempt} lost requests to a network change, loading again: {lost}")
                continue
            try:
                self.page.wait_for_function("() => window.scopeUI !== undefined && window.scopeUI.stats().resets >= 1")
            except PlaywrightTimeoutError:
                pytest.fail("the page did not show a view; its log:\n" + "\n".join(self.log), pytrace=False)
            return

    def by_id(self, test_id: str) -> Any:
        return self.page.get_by_test_id(test_id)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.page.evaluate("() => window.scopeUI.stats()")
        return stats

    def node_ids(self) -> list[str]:
        found: list[str] = self.page.evaluate("() => window.scopeUI.nodeIds()")
        return found

    def node_position(self, node_id: str) -> dict[str, float] | None:
        position: dict[str, float] | None = self.page.evaluate("id => window.scopeUI.nodePosition(id)", node_id)
        return position

    def on_canvas(self, node_id: str) -> bool:
        """Whether the node is drawn inside the visible graph area (not hidden, not off-screen)."""
        inside: bool = self.page.evaluate(
            """id => {
                const p = window.scopeUI.nodePosition(id);
                const r = document.querySelector('[data-testid="graph"]').getBoundingClientRect();
                return p !== null && p.x >= r.left && p.x <= r.right && p.y >= r.top && p.y <= r.bottom;
            }""",
            node_id,
        )
        return inside

    def wait_nodes(
        self, present: Iterable[str] = (), absent: Iterable[str] = (), timeout: float = APPEAR_TIMEOUT_S
    ) -> float:
        """Wait until the view lists every `present` id and none of `absent`; return the seconds it took."""
        started = time.monotonic()
        self.page.wait_for_function(
            """([present, absent]) => {
                const shown = new Set(window.scopeUI.nodeIds());
                return present.every((id) => shown.has(id)) && !absent.some((id) => shown.has(id));
            }""",
            arg=[list(present), list(absent)],
            polling=50,
            timeout=timeout * 1000,
        )
        return time.monotonic() - started

    def click_node(self, node_id: str, attempts: int = 3) -> dict[str, float]:
        """Click the node with the mouse where the page says it is drawn, until the details show it.

        The map may move between reading the position and clicking: a container that starts anywhere on
        the engine is laid out, and the frame widens if it lands outside. Hence a few attempts, each after
        the layout settled again. Returns the position clicked.
        """
        for attempt in range(1, attempts + 1):
            self.settle()
            position = self.node_position(node_id)
            assert position is not None, f"{node_id} is not drawn"
            self.page.mouse.click(position["x"], position["y"])
            try:
                self.page.wait_for_function(
                    "id => document.querySelector('[data-testid=\"details\"]').dataset.nodeId === id",
                    arg=node_id,
                    timeout=3000,
                )
                return position
            except PlaywrightTimeoutError:
                now = self.node_position(node_id)
                opened = self.by_id("details").get_attribute("data-node-id")
                print(f"click {attempt} at {position} did not select {node_id} (now at {now}; details: {opened})")
        pytest.fail(f"clicking {node_id} {attempts} times did not open its details", pytrace=False)

    def settle(self) -> None:
        """Wait for the force layout to finish and be drawn."""
        self.page.wait_for_function("() => window.scopeUI.whenSettled().then(() => true)", polling=100)

    def search(self, text: str) -> None:
        """Type into the search box and wait until the (debounced) query reached the URL."""
        self.by_id("search").fill(text)
        self.page.wait_for_function(
            "q => new URLSearchParams(location.hash.split('?')[1] || '').get('q') === (q || null)",
            arg=text.strip(),
        )

    def table_rows(self) -> list[tuple[str, str]]:
        """(node id, name) of every table row in display order, scrolling through the windowed table."""
        rows: list[list[str]] = self.page.evaluate(
            """async () => {
                const scroller = document.querySelector('[data-testid="table-view"]');
                const frames = () => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
                const seen = new Map();
                scroller.scrollTop = 0;
                await frames();
                for (;;) {
                    for (const row of scroller.querySelectorAll('[data-testid="node-row"]')) {
                        const id = row.dataset.nodeId;
                        if (!seen.has(id)) seen.set(id, row.querySelector(".major").textContent);
                    }
                    if (scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 1) break;
                    scroller.scrollTop += scroller.clientHeight;
                    await frames();
                }
                scroller.scrollTop = 0;
                return [...seen.entries()];
            }"""
        )
        return [(node_id, name) for node_id, name in rows]


@pytest.fixture
def ui(page: Page, stack: Stack) -> Iterator[UI]:
    """A fresh page on the module's app; the test fails if the page threw a JavaScript error."""
    wrapper = UI(page, stack.app)
    yield wrapper
    assert not wrapper.errors, f"JavaScript errors on the page: {wrapper.errors}"


def _count(text: str) -> int:
    return int(text.replace(",", "").strip() or "0")


# ------------------------------------------------------------------------------------------------- tests


def test_containers_view_lists_the_containers(ui: UI, stack: Stack) -> None:
    ui.open("containers")
    ui.wait_nodes(present=stack.node_ids)
    assert ui.stats()["topology"] == "containers"
    expect(ui.by_id("topology-containers")).to_have_attribute("aria-pressed", "true")
    # The selector's count comes from /api/topology: at least the module's four containers.
    expect(ui.by_id("topology-count-containers")).to_have_text(re.compile(r"^\d[\d,]*$"), timeout=EXPECT_MS)
    assert _count(ui.by_id("topology-count-containers").inner_text()) >= len(stack.containers)

    ui.settle()
    for node_id in stack.node_ids:
        assert ui.on_canvas(node_id), f"{node_id} is not drawn in the visible graph area"
    edges = ui.stats()["edges"]
    path = screenshot(ui.page, "ui-containers-graph")
    print(f"graph of {ui.stats()['nodes']} nodes, {edges} edges: {path}")

    ui.by_id("view-table").click()
    expect(ui.by_id("table-view")).to_be_visible()
    expect(ui.by_id("graph-view")).to_be_hidden()
    rows = dict(ui.table_rows())
    for short in stack.containers:
        assert rows.get(stack.node_id(short)) == stack.name(short)


def test_started_container_appears_without_reload(ui: UI, stack: Stack, containers: Containers) -> None:
    ui.open("containers")
    ui.wait_nodes(present=stack.node_ids)
    ui.page.evaluate("() => { window.__sameDocument = true; }")
    sockets = len(ui.sockets)

    started = time.monotonic()
    late = containers.run(["sleep", "3600"], name="late")
    run_s = time.monotonic() - started
    late_id = ids.container_id(late.id)
    wait_s = ui.wait_nodes(present=[late_id])
    print(
        f"started container shown {wait_s:.2f} s after `docker run` returned "
        f"({run_s + wait_s:.2f} s after it was called)"
    )

    assert ui.page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
    assert len(ui.sockets) == sockets, f"the page reconnected: {ui.sockets}"
    ui.settle()
    assert ui.on_canvas(late_id), "the new container is listed but not drawn in the visible graph area"


def test_stopped_container_leaves_the_default_view(ui: UI, stack: Stack, containers: Containers) -> None:
    doomed = containers.run(["sleep", "3600"], name="doomed")
    doomed_id = ids.container_id(doomed.id)
    ui.open("containers")
    ui.wait_nodes(present=[doomed_id, *stack.node_ids])
    ui.page.evaluate("() => { window.__sameDocument = true; }")
    sockets = len(ui.sockets)
    expect(ui.by_id("option-stopped")).to_have_attribute("data-state", "hide")

    started = time.monotonic()
    doomed.kill()
    wait_s = ui.wait_nodes(absent=[doomed_id])
    print(f"stopped container gone from the page {time.monotonic() - started:.2f} s after `docker kill`")
    assert wait_s < APPEAR_TIMEOUT_S
    assert ui.page.evaluate("() => window.__sameDocument") is True, "the page was reloaded"
    assert len(ui.sockets) == sockets, f"the page reconnected: {ui.sockets}"
    assert set(stack.node_ids) <= set(ui.node_ids()), "the running containers went too"

    # Hidden, not lost: the Stopped option brings it back.
    ui.by_id("option-stopped").click()
    expect(ui.by_id("option-stopped")).to_have_attribute("data-state", "show")
    ui.wait_nodes(present=[doomed_id])


def test_clicking_a_node_opens_its_details(ui: UI, stack: Stack) -> None:
    # Only this module's containers are drawn (the search hides the others), so nothing else that may
    # run on the engine can lie under the mouse.
    ui.open(f"containers?q={stack.prefix}")
    web_id = stack.node_id("web")
    ui.wait_nodes(present=stack.node_ids)
    position = ui.click_node(web_id)
    details = ui.by_id("details")
    expect(details).to_be_visible()
    expect(details).to_have_attribute("data-node-id", web_id)
    expect(ui.by_id("details-title")).to_have_text(stack.name("web"))
    expect(ui.by_id("details-subtitle")).to_contain_text(stack.hostname)
    expect(ui.by_id("details-meta-image")).to_contain_text(stack.image)
    expect(ui.by_id("details-meta-host")).to_contain_text(stack.hostname)
    # Then the REST details: nc's connection is open nearly all the time, so it is listed as inbound.
    expect(ui.by_id("details-connections-in")).to_contain_text(stack.name("fetch-2"), timeout=EXPECT_MS)
    expect(ui.by_id("details-metric-cpu")).to_be_visible()
    selected = ui.page.evaluate("() => new URLSearchParams(location.hash.split('?')[1]).get('node')")
    assert selected == web_id, "the selection is not in the URL"
    ui.page.mouse.move(position["x"], 70)  # off the canvas: no hover highlight in the picture
    path = screenshot(ui.page, "ui-details-panel")
    print(f"details panel: {path}")

    ui.by_id("details-close").click()
    expect(details).to_be_hidden()


def test_switching_to_processes_and_hosts(ui: UI, stack: Stack) -> None:
    ui.open("containers")
    ui.wait_nodes(present=stack.node_ids)

    ui.by_id("topology-processes").click()
    expect(ui.by_id("topology-processes")).to_have_attribute("aria-pressed", "true")
    ui.page.wait_for_function(
        """host => window.scopeUI.stats().topology === "processes"
            && window.scopeUI.nodeIds().some((id) => id.startsWith(host + ";"))""",
        arg=stack.hostname,
    )
    assert ui.page.url.endswith("#/processes")
    assert not set(stack.node_ids) & set(ui.node_ids()), "containers left over in the processes view"

    ui.by_id("topology-hosts").click()
    expect(ui.by_id("topology-hosts")).to_have_attribute("aria-pressed", "true")
    host_id = ids.host_id(stack.hostname)
    ui.page.wait_for_function("() => window.scopeUI.stats().topology === 'hosts'")
    ui.wait_nodes(present=[host_id])
    ui.by_id("view-table").click()
    assert (host_id, stack.hostname) in ui.table_rows()


def test_table_sorts_by_name(ui: UI, stack: Stack) -> None:
    ui.open("containers")
    ui.wait_nodes(present=stack.node_ids)
    ui.by_id("view-table").click()
    name_header = ui.by_id("th-name")
    expect(name_header).to_have_attribute("aria-sort", "ascending")  # the default order

    ui.by_id("th-cpu").click()  # away from name first, so the next click on it starts ascending
    expect(ui.by_id("th-cpu")).to_have_attribute("aria-sort", "descending")
    expect(name_header).to_have_attribute("aria-sort", "none")

    by_name = [stack.node_id(short) for short in sorted(stack.containers)]  # one prefix: short names decide
    ours = set(by_name)
    for direction, expected in (("ascending", by_name), ("descending", by_name[::-1])):
        name_header.click()
        expect(name_header).to_have_attribute("aria-sort", direction)
        expect(ui.by_id("th-cpu")).to_have_attribute("aria-sort", "none")
        rows = ui.table_rows()
        assert [node_id for node_id, _ in rows if node_id in ours] == expected
        names = [name for _, name in rows]
        in_order = ui.page.evaluate(
            f"([names, desc]) => {{ const c = {COLLATOR_JS}; "
            "return names.every((n, i) => i === 0 || (desc ? -1 : 1) * c.compare(names[i - 1], n) <= 0); }",
            [names, direction == "descending"],
        )
        assert in_order, f"rows not {direction} by name: {names}"


def test_search_filters_the_view(ui: UI, stack: Stack) -> None:
    ui.open("containers")
    ui.wait_nodes(present=stack.node_ids)

    ui.search(stack.prefix)
    ui.page.wait_for_function(
        "ids => JSON.stringify(window.scopeUI.nodeIds()) === JSON.stringify(ids)", arg=stack.node_ids
    )
    expect(ui.by_id("view-summary")).to_have_text(re.compile(rf"^{len(stack.containers)} of [\d,]+ nodes"))

    ui.search(f"name:{stack.name('web')}")
    ui.page.wait_for_function(
        "id => JSON.stringify(window.scopeUI.nodeIds()) === JSON.stringify([id])", arg=stack.node_id("web")
    )
    assert ui.node_position(stack.node_id("web")) is not None
    assert ui.node_position(stack.node_id("idle")) is None, "a node the search excludes is still drawn"

    # Terms are ANDed; `image:` matches the image metadata row.
    ui.search(f"image:{stack.image} {stack.prefix}")
    ui.page.wait_for_function(
        "ids => JSON.stringify(window.scopeUI.nodeIds()) === JSON.stringify(ids)", arg=stack.node_ids
    )

    ui.search("image:no-such-image-anywhere")
    ui.page.wait_for_function("() => window.scopeUI.nodeIds().length === 0")
    expect(ui.by_id("empty-state")).to_be_visible()
    expect(ui.by_id("empty-state")).to_contain_text("No nodes match")

    ui.by_id("search").press("Escape")
    ui.wait_nodes(present=stack.node_ids)
    expect(ui.by_id("empty-state")).to_be_hidden()


def test_connection_status_is_live(ui: UI, stack: Stack) -> None:
    ui.open("containers")
    status = ui.by_id("connection-status")
    expect(status).to_have_text("live")
    expect(status).to_have_attribute("data-state", "live")
    assert ui.stats()["connection"] == "live"


def _tab_count_agrees_js() -> str:
    """JS: whether the current tab's count is the number of nodes the view holds, at this very moment."""
    return """() => {
        const s = window.scopeUI.stats();
        const tab = document.querySelector(`[data-testid="topology-count-${s.topology}"]`);
        return tab !== null && Number(tab.textContent.replace(/,/g, "")) === s.totalNodes;
    }"""


def test_tab_counts_follow_the_view_as_containers_start_and_stop(ui: UI, stack: Stack, containers: Containers) -> None:
    ui.open("containers")
    ui.wait_nodes(present=stack.node_ids)
    assert ui.page.evaluate(_tab_count_agrees_js())

    late = containers.run(["sleep", "3600"], name="counted")
    late_id = ids.container_id(late.id)
    ui.wait_nodes(present=[late_id])
    # Checked the moment the node shows, not after some wait: the count comes with the same push.
    assert ui.page.evaluate(_tab_count_agrees_js()), "the tab count lags the view after a start"
    late.kill()
    ui.wait_nodes(absent=[late_id])
    assert ui.page.evaluate(_tab_count_agrees_js()), "the tab count lags the view after a stop"

    ui.by_id("topology-containers-by-image").click()
    ui.page.wait_for_function("() => window.scopeUI.stats().topology === 'containers-by-image'")
    ui.page.wait_for_function("() => window.scopeUI.stats().totalNodes > 0")
    assert ui.page.evaluate(_tab_count_agrees_js())


def test_an_empty_view_says_what_it_hides_and_shows_it_on_request(page: Page, scope: Scope) -> None:
    app = scope.app()  # no probe: every view is empty
    ui = UI(page, app)
    ui.open("containers")
    empty = ui.by_id("empty-state")
    expect(empty).to_be_visible()
    expect(empty).to_contain_text("Nothing in Containers")
    expect(empty).to_contain_text("stopped containers")
    expect(empty).to_contain_text("containers that talk to each other")
    path = screenshot(ui.page, "ui-empty-containers")
    print(f"empty view: {path}")

    ui.by_id("empty-show-stopped").click()
    expect(ui.by_id("option-stopped")).to_have_attribute("data-state", "show")
    expect(ui.by_id("empty-show-stopped")).to_have_count(0)
    expect(empty).to_contain_text("system containers")

    ui.by_id("topology-processes").click()
    expect(empty).to_contain_text("Nothing in Processes")
    expect(ui.by_id("empty-show-unconnected")).to_be_visible()
    assert not ui.errors, ui.errors


def test_default_logs_have_no_warnings_and_no_request_lines(page: Page, scope: Scope, containers: Containers) -> None:
    """App and probe at their default log level, through a browser session and containers starting and
    stopping: what they log is for a person to read."""
    app = scope.app()
    hostname = f"logs-{secrets.token_hex(3)}"
    probe = scope.probe([app.bus], hostname=hostname)
    wait_for(lambda: ids.host_id(hostname) in app.nodes("hosts"), timeout=15, what="the probe's first report")
    ui = UI(page, app)
    ui.open("containers")

    web = containers.run(["httpd", "-f", "-p", "80"], name="web")
    fetch = f"while :; do wget -q -O /dev/null http://{containers.ip(web)}/; sleep 0.3; done"
    client = containers.run(["sh", "-c", fetch], name="client")
    ui.wait_nodes(present=[ids.container_id(web.id), ids.container_id(client.id)])
    ui.by_id("view-table").click()
    ui.by_id("topology-processes").click()
    ui.page.wait_for_function("() => window.scopeUI.stats().topology === 'processes'")
    ui.by_id("topology-containers").click()
    ui.page.wait_for_function("() => window.scopeUI.stats().topology === 'containers'")
    client.remove(force=True)
    ui.wait_nodes(absent=[ids.container_id(client.id)])
    web.kill()
    ui.wait_nodes(absent=[ids.container_id(web.id)])
    time.sleep(2)  # a few more pushes and polls
    assert not ui.errors, ui.errors
    page.close()

    for process in (probe, app):
        process.terminate()
        lines = process.log().splitlines()
        loud = [line for line in lines if re.match(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ", line)]
        assert not loud, f"{process.name} logged:\n" + "\n".join(loud)
        requests = [line for line in lines if "tornado.access" in line]
        assert not requests, f"{process.name} logged requests:\n" + "\n".join(requests[:5])
        assert lines, f"{process.name} logged nothing at all"


def test_a_view_past_the_cap_says_it_shows_the_most_connected_of_how_many(page: Page, scope: Scope) -> None:
    app = scope.app(extra=["--max-view-nodes=2"])
    report = Report()
    host = ids.host_id("capped-host")
    report.add(Node.build(host, "host", latest={HOSTNAME: "capped-host", HOST_NODE_ID: host}))
    for n in range(4):
        container = f"{n:x}" * 64
        report.add(
            Node.build(
                ids.container_id(container),
                "container",
                latest={
                    CONTAINER_ID: container,
                    CONTAINER_NAME: f"c{n}",
                    CONTAINER_STATE: "running",
                    HOST_NODE_ID: host,
                },
            )
        )
    sender = ReportSender(app, host_id="capped-host")
    try:
        sender.send_until(report, lambda: app.nodes("containers"))
        ui = UI(page, app)
        ui.open("containers")
        expect(ui.by_id("view-summary")).to_have_text(re.compile(r"^2 nodes \(the most connected of 4\)"))
        assert app.get("/api/topology/containers")["total"] == 4
    finally:
        sender.close()
    assert not ui.errors, ui.errors
