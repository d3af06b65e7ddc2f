"""Browser sessions end to end in Chromium: the login page, the header, logout, roles, admin page."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.browser.conftest import DEMO_ADMIN, LivePage, admin_password, login
from tests.conftest import Server, start_demo, stop

pytestmark = pytest.mark.browser

ORG = "demo"
LOGIN_PATH = "/static/login.html"
HTTP_401 = r"status of 401 \(Unauthorized\)"
WS_REFUSED = r"WebSocket connection to .* failed"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server of this module's own: its users and failed logins stay here."""
    demo = start_demo(tmp_path_factory.mktemp("login-demo"), "--machines", "2")
    yield demo
    stop(demo)


@pytest.fixture
def context(browser) -> Iterator[Any]:
    """A fresh, logged-out browser context at laptop size."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    yield ctx
    ctx.close()


def make_user(server: Server, username: str, role: str) -> str:
    """Create a user through the admin API; its password."""
    password = f"{username}-password-123"
    response = httpx.post(
        f"{server.url}/api/resources/{ORG}/users",
        json={"username": username, "password": password, "role": role},
        headers=server.headers,
    )
    assert response.status_code == 201, response.text
    return password


def fill_login(page, username: str, password: str) -> None:
    page.locator("input[name=username]").fill(username)
    page.locator("input[name=password]").fill(password)
    page.get_by_role("button", name="Log in").click()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def wait_until_drawing(page: LivePage) -> None:
    page.page.wait_for_selector(".card .chart canvas")
    page.wait_for(lambda: page.connection_state("vehicle_can") == "live", what="live")
    first = page.point_counts()
    page.wait_for(
        lambda: all(
            n >= first[g][f] + 2
            for g, fields in page.point_counts().items()
            for f, n in fields.items()
        ),
        what="charts drawing live points",
    )


def test_log_in_see_live_data_and_log_out(server: Server, context, artifacts) -> None:
    """Log in with the demo's password, see the charts move, log out: the socket closes."""
    live = LivePage(context.new_page(), server.url, artifacts)
    page = live.page
    sockets: list[dict[str, Any]] = []

    def on_socket(ws) -> None:
        entry = {"url": ws.url, "closed": False}
        sockets.append(entry)
        ws.on("close", lambda _ws: entry.update(closed=True))

    page.on("websocket", on_socket)
    page.goto(f"{server.url}/")
    page.wait_for_url(re.compile(re.escape(LOGIN_PATH)))
    assert parse_qs(urlsplit(page.url).query)["next"] == ["/"]
    assert page.locator("#login-notice").inner_text() == "Log in to continue."
    page.screenshot(path=str(artifacts / "login-page.png"))

    fill_login(page, DEMO_ADMIN, admin_password(server))
    page.wait_for_url(f"{server.url}/?*")
    wait_until_drawing(live)
    menu = page.locator(".user-menu")
    assert menu.locator(".user-name").inner_text() == DEMO_ADMIN
    assert menu.locator(".role-badge").inner_text() == "admin"
    assert menu.get_by_role("link", name="Admin").is_visible()
    assert page.get_by_role("button", name="Add group").is_visible()
    assert page.locator(".rt-stop").first.is_visible()
    live.screenshot("live-data-logged-in")
    live_sockets = [s for s in sockets if "/live?" in s["url"]]
    assert live_sockets and not any(s["closed"] for s in live_sockets)
    session = next(c for c in context.cookies() if c["name"] == "livedata_session")
    assert session["httpOnly"] and session["sameSite"] == "Lax"

    menu.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(re.escape(LOGIN_PATH)))
    assert page.locator("#login-notice").inner_text() == "You have logged out."
    live.wait_for(lambda: all(s["closed"] for s in live_sockets), what="live sockets closed")
    assert not [c for c in context.cookies() if c["name"].startswith("livedata_")]
    gone = httpx.get(f"{server.url}/api/auth/me", cookies={"livedata_session": session["value"]})
    assert gone.status_code == 401  # the session ended on the server, not only in this tab
    live.assert_clean()


def test_logout_closes_the_live_connection_of_another_tab(
    server: Server, context, artifacts
) -> None:
    """Logging out in one tab closes the other tab's WebSocket; that tab then asks to log in."""
    login(context, server.url, DEMO_ADMIN, admin_password(server))
    other = LivePage(context.new_page(), server.url, artifacts)
    sockets: list[dict[str, Any]] = []
    to_login: list[float] = []

    def on_socket(ws) -> None:
        entry = {"url": ws.url, "closed_at": None}
        sockets.append(entry)
        ws.on("close", lambda _ws: entry.update(closed_at=time.monotonic()))

    other.page.on("websocket", on_socket)
    other.page.on(
        "framenavigated",
        lambda frame: to_login.append(time.monotonic()) if LOGIN_PATH in frame.url else None,
    )
    other.open()
    other.wait_for(lambda: other.connection_state("vehicle_can") == "live", what="live")
    first = [s for s in sockets if "/live?" in s["url"]]
    assert first and all(s["closed_at"] is None for s in first)

    tab = context.new_page()
    tab.goto(f"{server.url}/static/alerts.html")
    tab.get_by_role("button", name="Log out").click()
    tab.wait_for_url(re.compile(re.escape(LOGIN_PATH)))

    other.wait_for(lambda: all(s["closed_at"] for s in first), timeout=5, what="sockets closed")
    other.page.wait_for_url(re.compile(re.escape(LOGIN_PATH)), timeout=10_000)
    # closed by the server while the page was still open, not by leaving it
    assert max(s["closed_at"] for s in first) < to_login[0]
    assert parse_qs(urlsplit(other.page.url).query)["next"][0].startswith("/?org=demo")
    other.assert_clean(allow=(HTTP_401, WS_REFUSED))


def test_wrong_password_and_throttling_are_explained(server: Server, context, artifacts) -> None:
    """A wrong password says so and keeps the user on the page; too many say how long to wait."""
    name = "throttled-user"
    make_user(server, name, "viewer")
    page = context.new_page()
    page.goto(f"{server.url}{LOGIN_PATH}")
    fill_login(page, name, "not-the-password")
    error = page.locator("#login-error")
    error.wait_for()
    assert error.inner_text() == "Wrong user name or password."
    assert urlsplit(page.url).path == LOGIN_PATH
    assert page.locator("input[name=password]").evaluate("e => e === document.activeElement")
    page.screenshot(path=str(artifacts / "login-wrong-password.png"))
    for _ in range(8):  # 3 free failures, then the address waits 1, 2, 4 … s
        fill_login(page, name, "still-not-the-password")
        page.wait_for_function(
            "!document.querySelector('#login-form button').disabled"
            " || document.querySelector('#login-error').textContent.includes('Try again')"
        )
        if "Try again" in error.inner_text():
            break
    text = error.inner_text()
    wait = re.fullmatch(r"Too many failed attempts\. Try again in (\d+) s\.", text)
    assert wait, text
    assert 1 <= int(wait[1]) <= 60, text
    assert page.get_by_role("button", name="Log in").is_disabled()
    page.screenshot(path=str(artifacts / "login-throttled.png"))
    page.locator("input[name=username]").fill("someone-else")  # another name may try
    assert page.get_by_role("button", name="Log in").is_enabled()


def test_anonymous_visit_logs_in_and_comes_back(server: Server, context) -> None:
    """A page opened without a session goes to the login page and, after it, back to itself."""
    page = context.new_page()
    page.goto(f"{server.url}/static/alerts.html?org={ORG}")
    page.wait_for_url(re.compile(re.escape(LOGIN_PATH)))
    assert parse_qs(urlsplit(page.url).query)["next"] == [f"/static/alerts.html?org={ORG}"]
    fill_login(page, DEMO_ADMIN, admin_password(server))
    page.wait_for_url(f"{server.url}/static/alerts.html?org={ORG}")
    page.locator("#rules-body tr, #rules-empty:not([hidden])").first.wait_for()
    assert page.locator(".user-menu .user-name").inner_text() == DEMO_ADMIN


@pytest.mark.parametrize(
    "target", ["https://example.org/", "//example.org/", "/\\example.org", "javascript:alert(1)"]
)
def test_login_never_redirects_off_site(server: Server, context, target: str) -> None:
    """A `next` that is not a path on this site is ignored: the user lands on the Live Data page."""
    page = context.new_page()
    page.goto(f"{server.url}{LOGIN_PATH}?next={quote(target, safe='')}")
    fill_login(page, DEMO_ADMIN, admin_password(server))
    page.wait_for_url(f"{server.url}/**")
    page.locator(".user-menu").wait_for()
    assert urlsplit(page.url).netloc == urlsplit(server.url).netloc
    assert urlsplit(page.url).path == "/"


def test_viewer_and_operator_see_only_what_their_role_allows(
    server: Server, live_page, artifacts
) -> None:
    """Viewers get no group editing nor Start/Stop, operators Start/Stop only; 403s show."""
    viewer = live_page(server, user="viewer1", password=make_user(server, "viewer1", "viewer"))
    viewer.open()
    p = viewer.page
    p.locator(".rt-panel .rt-state").first.wait_for()
    assert p.locator(".card").count() >= 1
    assert p.locator(".user-menu .role-badge").inner_text() == "viewer"
    assert not p.get_by_role("button", name="Add group").is_visible()
    assert p.locator(".card-actions .needs-admin").first.is_hidden()
    assert (
        p.get_by_role("button", name="Edit").count() == 0
        or not p.get_by_role("button", name="Edit").first.is_visible()
    )
    assert p.locator(".rt-start").first.is_hidden() and p.locator(".rt-stop").first.is_hidden()
    assert not p.get_by_role("link", name="Admin").count()
    assert p.get_by_role("link", name="API tokens").is_visible()
    viewer.screenshot("live-data-viewer")
    refused = p.evaluate(
        """async () => {
          const { api } = await import('/static/api.js');
          try {
            await api.createGroup('demo', {name: 'x', msgType: 'vehicle_can', fields: ['speed']});
            return 'created';
          } catch (err) { return `${err.status} ${err.message}`; }
        }"""
    )
    assert refused == "403 this needs the admin role"
    viewer.assert_clean(allow=(r"status of 403 \(Forbidden\)",))

    operator = live_page(
        server, user="operator1", password=make_user(server, "operator1", "operator")
    )
    operator.open()
    q = operator.page
    q.locator(".rt-stop").first.wait_for()
    assert q.locator(".rt-stop").first.is_visible()
    assert not q.get_by_role("button", name="Add group").is_visible()
    assert q.locator(".card-actions .needs-admin").first.is_hidden()
    operator.assert_clean()


def test_admin_page_users_tokens_secrets_and_audit(server: Server, live_page, artifacts) -> None:
    """Users, a token and a device secret (each shown once) are managed and audited."""
    tab = live_page(server)
    p = tab.page
    p.goto(f"{server.url}/")
    p.locator(".user-menu").get_by_role("link", name="Admin").click()
    p.wait_for_url(f"{server.url}/static/admin.html")
    p.locator(f'#users-body tr[data-username="{DEMO_ADMIN}"]').wait_for()

    # users: create, change role, reset password, disable, enable
    p.get_by_role("button", name="Add user").click()
    form = p.locator("#user-form")
    form.locator("input[name=username]").fill("newcomer")
    form.locator("input[name=password]").fill("short")
    form.locator("select[name=role]").select_option("operator")
    form.get_by_role("button", name="Add user").click()
    assert "at least 10 characters" in p.locator("#user-error").inner_text()
    form.get_by_role("button", name="Generate").click()
    password = form.locator("input[name=password]").input_value()
    assert len(password) == 16
    form.get_by_role("button", name="Add user").click()
    p.locator("#user-dialog").wait_for(state="hidden")
    row = p.locator('#users-body tr[data-username="newcomer"]')
    assert row.locator("select").input_value() == "operator"
    assert httpx.post(
        f"{server.url}/api/auth/login", json={"username": "newcomer", "password": password}
    ).is_success

    row.locator("select").select_option("viewer")
    p.wait_for_function(
        """() => !document.querySelector('#users-body tr[data-username="newcomer"] select').disabled"""
    )
    users = httpx.get(f"{server.url}/api/resources/{ORG}/users", headers=server.headers).json()
    assert {u["username"]: u["role"] for u in users["users"]}["newcomer"] == "viewer"

    row.get_by_role("button", name="Reset password").click()
    form.locator("input[name=password]").fill("a-brand-new-password")
    form.get_by_role("button", name="Set password").click()
    p.locator("#user-dialog").wait_for(state="hidden")
    assert httpx.post(
        f"{server.url}/api/auth/login",
        json={"username": "newcomer", "password": "a-brand-new-password"},
    ).is_success

    row.get_by_role("button", name="Disable").click()
    p.locator("#confirm-form").get_by_role("button", name="Disable").click()
    p.locator("#confirm-dialog").wait_for(state="hidden")
    assert row.locator(".state-pill").inner_text() == "disabled"
    row.get_by_role("button", name="Enable").click()
    row.locator(".state-pill", has_text="active").wait_for()
    own = p.locator(f'#users-body tr[data-username="{DEMO_ADMIN}"]')
    assert own.locator("select").is_disabled() and own.get_by_role("button").count() == 0

    # API token: created, shown once with a copy button, works, revoked
    p.locator("#token-form input[name=name]").fill("report script")
    p.locator("#token-form").get_by_role("button", name="Create token").click()
    reveal = p.locator("#token-reveal")
    reveal.wait_for()
    token = p.locator("#token-value").input_value()
    assert token.startswith("ld_") and "copy it now" in reveal.inner_text()
    assert reveal.get_by_role("button", name="Copy").is_visible()
    bearer = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{server.url}/api/auth/me", headers=bearer).json()["user"] == DEMO_ADMIN
    token_row = p.locator("#tokens-body tr", has_text="report script")
    assert token[:8] in token_row.inner_text()

    # device secret: generated, shown once
    machine = server.machines[0]
    p.locator("#secret-machine").select_option(machine)
    p.locator("#secret-form").get_by_role("button", name="Generate new secret").click()
    p.locator("#confirm-form").get_by_role("button", name="Generate").click()
    p.locator("#secret-reveal").wait_for()
    assert p.locator("#secret-username").inner_text() == f"{ORG}/{machine}"
    assert len(p.locator("#secret-value").input_value()) >= 20

    # audit log, newest first
    p.locator("#audit-body tr", has_text="created token").first.wait_for()
    actions = p.eval_on_selector_all("#audit-body tr", "rows => rows.map(r => r.dataset.action)")
    assert actions.index("token_created") < actions.index("login")
    assert "POST" in actions and "PUT" in actions
    p.wait_for_timeout(300)
    tab.screenshot("admin-page")

    token_row.get_by_role("button", name="Revoke").click()
    p.locator("#confirm-form").get_by_role("button", name="Revoke").click()
    token_row.locator(".state-pill", has_text="revoked").wait_for()
    assert httpx.get(f"{server.url}/api/auth/me", headers=bearer).status_code == 401
    p.get_by_role("button", name="Done").first.click()

    row.get_by_role("button", name="Delete").click()
    p.locator("#confirm-form").get_by_role("button", name="Delete").click()
    row.wait_for(state="detached")
    tab.assert_clean(allow=(r"status of 400 \(Bad Request\)",))


def test_admin_page_on_a_phone(server: Server, live_page, artifacts) -> None:
    """At 390×844 the admin page fits the width: rows become labelled cards, nothing overflows."""
    make_user(server, "phone-user", "viewer")
    tab = live_page(server, viewport=(390, 844))
    p = tab.page
    p.goto(f"{server.url}/static/admin.html")
    p.locator('#users-body tr[data-username="phone-user"]').wait_for()
    p.locator("#audit-body tr").first.wait_for()
    p.locator("#token-form input[name=name]").fill("phone token")
    p.locator("#token-form").get_by_role("button", name="Create token").click()
    p.locator("#token-reveal").wait_for()
    p.wait_for_timeout(300)
    tab.screenshot("admin-page-phone")
    assert p.evaluate("document.documentElement.scrollWidth") <= 390
    for selector in ("#users-section", "#tokens-section", "#secrets-section", "#audit-section"):
        box = p.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    tab.assert_clean()


def test_non_admin_page_shows_only_own_tokens(server: Server, live_page) -> None:
    """An operator's link leads to their own API tokens only: no users, secrets or audit log."""
    tab = live_page(server, user="operator2", password=make_user(server, "operator2", "operator"))
    p = tab.page
    p.goto(f"{server.url}/")
    p.locator(".user-menu").get_by_role("link", name="API tokens").click()
    p.wait_for_url(f"{server.url}/static/admin.html")
    p.locator("#tokens-empty:not([hidden])").wait_for()
    assert p.locator("h1").inner_text() == "API tokens"
    for selector in ("#users-section", "#secrets-section", "#audit-section"):
        assert p.locator(selector).is_hidden()
    p.locator("#token-form input[name=name]").fill("mine")
    p.locator("#token-form").get_by_role("button", name="Create token").click()
    p.locator("#tokens-body tr", has_text="mine").wait_for()
    assert p.locator("#tokens-table th", has_text="User").is_hidden()
    tab.assert_clean()
