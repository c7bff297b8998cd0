"""The multi-tenant service in the browser: `scope app --multitenant`, two tenants with a probe each on a
host of its own (a network namespace reaching the service's bus on the bridge), and headless Chromium
logging in as a person would, through the login page's form.

One service and its two probes serve the module; each test has a fresh browser context (no cookie).
The probes are pointed at no Docker engine: every namespace shares this machine's engine, and the map
of hosts is what these tests read. No asyncio here (the Playwright sync API owns the loop).
"""

from __future__ import annotations

import secrets
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, Response, expect

from tests.fixtures.browser import screenshot
from tests.fixtures.netns import Netns
from tests.fixtures.service import Service, TenantTokens, tenants
from tests.fixtures.waiting import wait_for
from tests.ui.test_map import UI

pytestmark = [pytest.mark.root, pytest.mark.browser]

NO_ENGINE = "--docker-url=unix:///nonexistent/docker.sock"
TIMEOUT_MS = 15_000
WRONG_TOKEN = "That is no user token of this service"


@dataclass(frozen=True)
class Tenancy:
    """The module's service and, by tenant, its tokens and the host its probe reports."""

    service: Service
    tokens: dict[str, TenantTokens]
    hosts: dict[str, str]

    def host_node(self, tenant: str) -> str:
        return f"{self.hosts[tenant]};<host>"


@pytest.fixture(scope="module")
def tenancy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenancy]:
    namespaces = Netns()
    service: Service | None = None
    try:
        machines = {"alpha": namespaces.create(), "beta": namespaces.create()}
        state: Path = tmp_path_factory.mktemp("tenancy") / "state"
        service = Service(state, bus_host=namespaces.gateway)
        suffix = secrets.token_hex(3)
        tokens, hosts = {}, {}
        for tenant, machine in machines.items():
            tokens[tenant] = service.add_tenant(tenant)
            hosts[tenant] = f"{tenant}-{suffix}"
            service.probe(
                tokens[tenant].probe_token,
                hostname=hosts[tenant],
                service_key=tokens[tenant].service_key,
                prefix=machine.argv([]),
                extra=[NO_ENGINE],
            )
        running = service
        wait_for(
            lambda: all(running.hostnames(tokens[tenant].user_token) == {host} for tenant, host in hosts.items()),
            timeout=40,
            what=f"each tenant's probe in its namespace (service log: {service.app.log_path})",
        )
        yield Tenancy(service, tokens, hosts)
    finally:
        if service is not None:
            service.close()
        namespaces.cleanup()


def _log_in(page: Page, tenancy: Tenancy, token: str) -> Response | None:
    """Open the service's page without a session and submit `token` in the login form; the response of
    the form's request."""
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(tenancy.service.app.url + "/")
    expect(page.get_by_test_id("login")).to_be_visible()
    page.get_by_label("Token").fill(token)
    with page.expect_navigation() as submitted:
        page.get_by_role("button", name="Log in").click()
    return submitted.value


def _host_nodes(ui: UI) -> set[str]:
    return {node_id for node_id in ui.node_ids() if node_id.endswith(";<host>")}


def test_without_a_token_the_page_is_the_login_page(page: Page, tenancy: Tenancy) -> None:
    response = page.goto(tenancy.service.app.url + "/#/hosts")
    assert response is not None and response.status == 401
    expect(page.get_by_test_id("login")).to_be_visible()
    expect(page.get_by_test_id("login")).to_contain_text("user token")
    expect(page.get_by_label("Token")).to_be_visible()
    assert page.evaluate("() => window.scopeUI === undefined"), "no map is served without a token"


@pytest.mark.parametrize("which", ["made-up", "probe token"])
def test_a_wrong_token_stays_on_the_login_page_and_says_so(page: Page, tenancy: Tenancy, which: str) -> None:
    # A probe token that leaks from a host is no way into the UI either.
    token = "not-a-token-at-all" if which == "made-up" else tenancy.tokens["alpha"].probe_token
    response = _log_in(page, tenancy, token)
    assert response is not None and response.status == 401
    expect(page.get_by_test_id("login")).to_be_visible()
    expect(page.get_by_test_id("login")).to_contain_text(WRONG_TOKEN)
    assert not page.context.cookies(), "no session for a wrong token"
    screenshot(page, f"tenants-wrong-{which}")


@pytest.mark.parametrize("tenant", ["alpha", "beta"])
def test_a_user_sees_exactly_its_tenants_hosts(page: Page, tenancy: Tenancy, tenant: str) -> None:
    other = "beta" if tenant == "alpha" else "alpha"
    response = _log_in(page, tenancy, tenancy.tokens[tenant].user_token)
    assert response is not None and response.ok
    # The session names the tenant, and the address no longer holds the token.
    assert [cookie["value"].split(".")[0] for cookie in page.context.cookies()] == [tenant]
    assert "token=" not in page.url
    ui = UI(page, tenancy.service.app)
    ui.open("hosts")
    ui.wait_nodes(present=[tenancy.host_node(tenant)])
    ui.settle()
    assert _host_nodes(ui) == {tenancy.host_node(tenant)}
    assert not [node_id for node_id in ui.node_ids() if tenancy.hosts[other] in node_id]
    expect(ui.by_id("topology-count-hosts")).to_have_text("1")
    screenshot(page, f"tenants-map-{tenant}")
    assert not ui.errors, f"JavaScript errors on the page: {ui.errors}"


def test_the_other_tenants_node_is_not_found(page: Page, tenancy: Tenancy) -> None:
    _log_in(page, tenancy, tenancy.tokens["alpha"].user_token)
    ui = UI(page, tenancy.service.app)
    # Alpha's own host opens in the details panel...
    ui.open(f"hosts?{urllib.parse.urlencode({'node': tenancy.host_node('alpha')})}")
    expect(ui.by_id("details-title")).to_have_text(tenancy.hosts["alpha"])
    # ...beta's, by its id in the address, is not found, exactly as a node that does not exist.
    for node_id in (tenancy.host_node("beta"), "no-such-host;<host>"):
        ui.page.goto(f"{tenancy.service.app.url}/#/hosts?{urllib.parse.urlencode({'node': node_id})}")
        expect(ui.by_id("details")).to_have_attribute("data-node-id", node_id)
        expect(ui.by_id("details-error")).to_have_text("This node is not in the current report.")
        # Nothing of beta's host is shown: no metadata, no metrics.
        expect(page.locator('[data-testid^="details-meta-"], [data-testid^="details-metric-"]')).to_have_count(0)
    screenshot(page, "tenants-other-node")
    assert _host_nodes(ui) == {tenancy.host_node("alpha")}
    assert not ui.errors, f"JavaScript errors on the page: {ui.errors}"


def test_an_address_opened_before_logging_in_is_where_the_login_leads(page: Page, tenancy: Tenancy) -> None:
    # A link to a node, followed without a session: the login page, then that node, not the bare map.
    node = tenancy.host_node("beta")
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{tenancy.service.app.url}/#/hosts?{urllib.parse.urlencode({'node': node})}")
    expect(page.get_by_test_id("login")).to_be_visible()
    page.get_by_label("Token").fill(tenancy.tokens["beta"].user_token)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()
    ui = UI(page, tenancy.service.app)
    expect(ui.by_id("details-title")).to_have_text(tenancy.hosts["beta"])
    assert urllib.parse.urlsplit(page.url).fragment.startswith("/hosts?")
    assert not ui.errors, f"JavaScript errors on the page: {ui.errors}"


def test_a_revoked_tenants_open_page_goes_back_to_the_login_page(page: Page, tenancy: Tenancy) -> None:
    gamma = tenancy.service.add_tenant(f"gamma-{secrets.token_hex(3)}")
    _log_in(page, tenancy, gamma.user_token)
    ui = UI(page, tenancy.service.app)
    ui.open("hosts")
    assert _host_nodes(ui) == set(), "gamma has no probe: an empty map, none of the others' hosts"
    done = tenants(tenancy.service.state_dir, "revoke", gamma.tenant)
    assert done.returncode == 0, done.stderr
    revoked = time.monotonic()
    expect(page.get_by_test_id("login")).to_be_visible(timeout=TIMEOUT_MS)
    print(f"the login page showed {time.monotonic() - revoked:.2f} s after `scope tenants revoke` returned")
    expect(page.get_by_test_id("login")).to_contain_text("user token")
    screenshot(page, "tenants-revoked")
