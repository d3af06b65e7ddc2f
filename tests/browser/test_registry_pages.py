"""The Machines and Models & DBC pages in Chromium: add a machine by form (its connection
details shown once), import a CSV by drag and drop, delete with the data question, upload
a DBC (an invalid one shows cantools' line), assign it and search the signal catalog."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from livedata.sim.demo import DBC_PATH
from tests.browser.conftest import DEMO_ADMIN, admin_password, login
from tests.conftest import Server, start_demo, stop

CSV = "chassis,name,model,tags\nIMP-1,Imported 1,EX300,north\nbad id!,Broken,EX300,\nIMP-2,Imported 2,EX300,\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A demo server with one simulated machine."""
    server = start_demo(tmp_path_factory.mktemp("registry-pages"), "--machines", "1")
    yield server
    stop(server)


def open_page(browser: Any, server: Server, path: str, viewport: tuple[int, int]) -> Any:
    """A logged-in admin's page; console errors and uncaught exceptions are collected."""
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    login(context, server.url, DEMO_ADMIN, admin_password(server))
    page = context.new_page()
    page.problems = []
    page.on("pageerror", lambda exc: page.problems.append(str(exc)))
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    # the refusals these tests provoke (a bad DBC file) show as failed loads: not problems
    page.goto(f"{server.url}{path}")
    return page


def drop_file(page: Any, selector: str, name: str, text: str) -> None:
    """Drop a file on an element as a user dragging it from the desktop would."""
    page.evaluate(
        """([selector, name, text]) => {
          const data = new DataTransfer();
          data.items.add(new File([text], name, { type: 'text/plain' }));
          const zone = document.querySelector(selector);
          zone.dispatchEvent(new DragEvent('dragover', { dataTransfer: data, bubbles: true, cancelable: true }));
          zone.dispatchEvent(new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true }));
        }""",
        [selector, name, text],
    )


def test_machines_page_add_import_delete(browser: Any, server: Server, artifacts: Any) -> None:
    """Add by form shows the secret, agent command and config file; a dropped CSV reports
    its bad row and creates the good ones; delete asks keep/delete and says how much."""
    page = open_page(browser, server, "/static/machines.html", (1360, 900))
    page.wait_for_selector("#machines-body tr[data-chassis='WL-0001']")
    page.click("#add-machine")
    page.fill("#machine-form [name=chassisId]", "EX-0100")
    page.fill("#machine-form [name=name]", "Excavator 100")
    page.fill("#machine-form [name=model]", "EX300")
    page.fill("#machine-form [name=tags]", "north, rental")
    page.fill("#machine-form [name=location]", "Yard 3")
    page.click("#machine-submit")
    page.wait_for_selector("#provision:not([hidden])")
    secret = page.input_value("#p-secret")
    assert len(secret) >= 32
    assert page.text_content("#p-http").endswith("/api/ingest/demo/EX-0100/{msgType}")
    assert page.locator("#p-mqtt-row").is_hidden()  # the demo has no broker: HTTP only
    page.wait_for_selector("#machines-body tr[data-chassis='EX-0100']")
    page.screenshot(path=str(artifacts / "machines-provision-1360.png"), full_page=True)
    page.click("#provision-done")

    page.click("#import-open")
    drop_file(page, "#import-drop", "fleet.csv", CSV)
    page.wait_for_selector("#import-report .report-errors li")
    report = page.text_content("#import-report")
    assert "2 created" in report and "Line 3 (bad id!)" in report
    page.wait_for_selector("#machines-body tr[data-chassis='IMP-2']")

    page.click("#machines-body tr[data-chassis='IMP-1'] >> text=Delete")
    page.wait_for_function(
        "document.querySelector('#delete-text').textContent.includes('stored value')"
    )
    assert "0 stored values" in page.text_content("#delete-text")
    page.check("#delete-form input[value=delete]")
    page.click("#delete-ok")
    page.wait_for_selector("#machines-body tr[data-chassis='IMP-1']", state="detached")
    page.fill("#machine-search", "rental")
    assert page.locator("#machines-body tr").count() == 1
    assert page.problems == []
    page.context.close()


def test_models_page_upload_assign_catalog(browser: Any, server: Server, artifacts: Any) -> None:
    """A dropped invalid DBC shows cantools' line with the column marked; a valid one is
    listed, assigned to a model, and its signal catalog is searchable."""
    page = open_page(browser, server, "/static/models.html", (1360, 900))
    page.wait_for_selector("#models-body tr")
    text = DBC_PATH.read_text()
    drop_file(page, "#dbc-drop", "broken.dbc", text.replace("BO_ 928 ", "BO_ 928 X ", 1))
    page.wait_for_selector("#dbc-error:not([hidden]) pre mark")
    assert "broken.dbc was refused" in page.text_content("#dbc-error")
    page.screenshot(path=str(artifacts / "models-dbc-error-1360.png"), full_page=True)
    page.set_input_files(
        "#dbc-file",
        files=[{"name": "excavator.dbc", "mimeType": "text/plain", "buffer": text.encode()}],
    )
    page.wait_for_selector("#dbc-body tr >> text=excavator.dbc")
    page.fill("#model-form [name=name]", "EX400")
    page.click("#model-form button[type=submit]")
    row = page.wait_for_selector("#models-body tr[data-model='EX400']")
    dbc_id = page.eval_on_selector_all("#dbc-body tr", "rows => rows[0].dataset.dbcId")
    page.select_option("#models-body tr[data-model='EX400'] select", dbc_id)
    page.wait_for_function(
        "[...document.querySelectorAll('#catalog-model option')].some(o => o.value === 'EX400')"
    )
    page.select_option("#catalog-model", "EX400")
    page.wait_for_selector("#catalog-body tr[data-signal='speed']")
    page.fill("#catalog-search", "km/h")
    page.wait_for_function("document.querySelectorAll('#catalog-body tr').length === 1")
    assert "PGN 65265" in page.text_content("#catalog-body tr[data-signal='speed']")
    page.fill("#catalog-search", "")
    page.screenshot(path=str(artifacts / "models-catalog-1360.png"), full_page=True)
    assert row is not None
    assert [p for p in page.problems if "status of 400" not in p] == []
    page.context.close()


@pytest.mark.parametrize("path", ["/static/machines.html", "/static/models.html"])
def test_pages_fit_a_phone(browser: Any, server: Server, artifacts: Any, path: str) -> None:
    """At 390×844 the pages need no sideways scrolling."""
    page = open_page(browser, server, path, (390, 844))
    page.wait_for_selector("#machines-body tr, #models-body tr")
    page.wait_for_timeout(300)
    width = page.evaluate("document.documentElement.scrollWidth")
    name = path.rsplit("/", 1)[1].removesuffix(".html")
    page.screenshot(path=str(artifacts / f"{name}-390.png"), full_page=True)
    assert width <= 390
    assert page.problems == []
    page.context.close()


def test_http_machine_has_start_stop_disabled_with_reason(browser: Any, server: Server) -> None:
    """On the Live Data page a machine that sends over HTTP shows it is sending, and Start /
    Stop are disabled with the reason instead of answering 404."""
    headers = server.headers
    made = httpx.post(
        f"{server.url}/api/resources/demo/machines",
        json={"chassisId": "HTTP-9", "name": "Sender", "model": "WL"},
        headers=headers,
    )
    secret = made.json()["provisioning"]["secret"]
    sent = httpx.post(
        f"{server.url}/api/ingest/demo/HTTP-9/client_raw_data",
        json={"v": 1, "ts": int(time.time() * 1000), "values": {"cpu_usage": 5}},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert sent.status_code == 202
    page = open_page(browser, server, "/?machine=HTTP-9", (1360, 900))
    page.wait_for_function(
        "[...document.querySelectorAll('.rt-state')].some(e => e.textContent.includes('Sending'))"
    )
    start = page.locator(".rt-start").first
    assert start.is_disabled() and "HTTP ingest" in (start.get_attribute("title") or "")
    assert "no command channel" in page.text_content(".rt-reason")
    page.context.close()


def test_admin_renames_the_organisation(browser: Any, server: Server) -> None:
    """The admin page renames one's own organisation and sets its time zone and viewer-following
    real-time; the audit log says so; the Live Data page offers the organisation's zone."""
    page = open_page(browser, server, "/static/admin.html", (1360, 900))
    page.wait_for_function("document.querySelector('#org-id').textContent === 'demo'")
    assert page.is_checked("#org-form [name=followViewers]"), "the demo follows viewers"
    page.fill("#org-form [name=name]", "Demo Earthworks")
    page.fill("#org-form [name=timezone]", "Asia/Kolkata")
    page.uncheck("#org-form [name=followViewers]")
    page.fill("#org-form [name=graceMinutes]", "2")
    page.click("#org-form button[type=submit]")
    page.wait_for_selector("#audit-body tr[data-action='org_renamed']")
    page.wait_for_selector("#audit-body tr[data-action='org_settings']")
    assert "Demo Earthworks" in page.text_content("#admin-info")
    orgs = httpx.get(f"{server.url}/api/orgs", headers=server.headers).json()["orgs"]
    assert orgs == [
        {
            "id": "demo",
            "name": "Demo Earthworks",
            "timezone": "Asia/Kolkata",
            "followViewers": False,
            "viewerGraceSeconds": 120,
        }
    ]
    assert page.problems == []
    page.fill("#org-form [name=timezone]", "Nowhere/Atlantis")
    page.click("#org-form button[type=submit]")
    page.wait_for_selector("#org-error:not([hidden])")
    assert "IANA" in page.text_content("#org-error")
    page.goto(f"{server.url}/")
    page.wait_for_selector("#tz-select option[value=org]", state="attached")
    assert "Asia/Kolkata" in page.text_content("#tz-select option[value=org]")
    page.select_option("#tz-select", "org")
    page.wait_for_selector(".card .chart canvas")
    label = page.evaluate(
        "() => echarts.getInstanceByDom(document.querySelector('.card .chart'))"
        ".getOption().xAxis[0].axisLabel.formatter(0)"
    )
    assert label.startswith("05:30"), label  # the epoch in India: 05:30
    page.context.close()


def test_groups_of_another_model_are_not_shown(browser: Any, server: Server) -> None:
    """A mixed fleet: a group made for model EX500 shows on its machine, not on a loader."""
    headers = server.headers
    httpx.post(
        f"{server.url}/api/resources/demo/machines",
        json={"chassisId": "EX-0500", "name": "Ex 500", "model": "EX500", "provision": False},
        headers=headers,
    )
    group = {
        "name": "Boom EX500",
        "msgType": "vehicle_can",
        "fields": ["boom_angle"],
        "model": "EX500",
    }
    made = httpx.post(f"{server.url}/api/resources/demo/groups", json=group, headers=headers)
    assert made.status_code == 201
    page = open_page(browser, server, f"/?machine={server.machines[0]}", (1360, 900))
    page.wait_for_selector(".card h2")
    assert "Boom EX500" not in page.eval_on_selector_all(
        ".card h2", "els => els.map(e => e.textContent)"
    )
    page.goto(f"{server.url}/?machine=EX-0500")
    page.wait_for_selector(".card h2 >> text=Boom EX500")
    names = page.eval_on_selector_all(".card h2", "els => els.map(e => e.textContent)")
    assert "Boom EX500" in names and len(names) >= 2  # the demo's groups are for every machine
    httpx.delete(f"{server.url}/api/resources/demo/groups/{made.json()['id']}", headers=headers)
    page.context.close()


def test_alerts_page_acknowledges(browser: Any, server: Server) -> None:
    """The alert rules page acknowledges an alert with a comment; the table says who."""
    rule = {
        "name": "Always on",
        "kind": "value",
        "msgType": "client_raw_data",
        "field": "cpu_usage",
        "condition": ">",
        "threshold": -1,
    }
    made = httpx.post(
        f"{server.url}/api/resources/demo/alert-rules", json=rule, headers=server.headers
    )
    assert made.status_code == 201, made.text
    page = open_page(browser, server, "/static/alerts.html", (1360, 900))
    page.on("dialog", lambda dialog: dialog.accept("seen it"))
    button = page.wait_for_selector("#history-body .alert-ack", timeout=30_000)
    button.click()
    page.wait_for_selector("#history-body td >> text=admin: “seen it”")
    httpx.delete(
        f"{server.url}/api/resources/demo/alert-rules/{made.json()['id']}", headers=server.headers
    )
    assert page.problems == []
    page.context.close()


def test_rule_and_alert_tables_fit_a_phone(browser: Any, server: Server, artifacts: Any) -> None:
    """At 390×844 the rules and recent alerts need no sideways scrolling, even in their tables."""
    rule = {"name": "Phone", "kind": "value", "msgType": "client_raw_data", "field": "cpu_usage", "condition": ">", "threshold": -1}  # fmt: skip
    made = httpx.post(
        f"{server.url}/api/resources/demo/alert-rules", json=rule, headers=server.headers
    )
    page = open_page(browser, server, "/static/alerts.html", (390, 844))
    page.wait_for_selector("#history-body tr", timeout=30_000)
    widths = page.eval_on_selector_all(
        ".table-wrap", "els => els.map(e => e.scrollWidth - e.clientWidth)"
    )
    page.screenshot(path=str(artifacts / "alerts-390.png"), full_page=True)
    httpx.delete(
        f"{server.url}/api/resources/demo/alert-rules/{made.json()['id']}", headers=server.headers
    )
    assert widths == [0, 0] and page.evaluate("document.documentElement.scrollWidth") <= 390
    page.context.close()


def test_machine_gets_a_dbc_of_its_own(browser: Any, server: Server) -> None:
    """The edit dialog decodes one machine with a DBC file of its own, and back with its
    model's; the list shows which file decodes it."""
    h = server.headers
    dbc = httpx.post(
        f"{server.url}/api/resources/demo/dbc",
        json={"name": "own.dbc", "content": DBC_PATH.read_text()},
        headers=h,
    ).json()
    httpx.post(
        f"{server.url}/api/resources/demo/machines",
        json={"chassisId": "OWN-1", "name": "Own", "model": "NODBC", "provision": False},
        headers=h,
    )
    page = open_page(browser, server, "/static/machines.html", (1360, 900))
    row = "#machines-body tr[data-chassis='OWN-1']"
    page.wait_for_selector(f"{row} td[data-label=DBC] >> text=none")
    page.click(f"{row} >> text=Edit")
    page.wait_for_selector(
        f"#machine-form [name=dbc] option[value='{dbc['id']}']", state="attached"
    )
    page.select_option("#machine-form [name=dbc]", str(dbc["id"]))
    page.click("#machine-submit")
    page.wait_for_selector(f"{row} td[data-label=DBC] >> text=own.dbc")
    page.click(f"{row} >> text=Edit")
    page.wait_for_function(
        f"document.querySelector('#machine-form [name=dbc]').value === '{dbc['id']}'"
    )
    page.select_option("#machine-form [name=dbc]", "")
    page.click("#machine-submit")
    page.wait_for_selector(f"{row} td[data-label=DBC] >> text=none")
    assert page.problems == []
    page.context.close()
