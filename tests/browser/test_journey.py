"""The whole journey of a new user with a real machine, on `livedata serve` (no demo data).

The organisation and its admin are made with the CLI, the broker's files with
`livedata devices mqtt-config`; Mosquitto runs with them (no anonymous access) and the
server rewrites them and reloads Mosquitto (SIGHUP) when machines change.  In
Chromium the admin logs in, uploads a J1939 DBC, creates a model and two machines (one
by form, one by CSV), copies the agent command shown once and runs it (with a recorded
CAN log instead of a bus); the decoded signals then move on the Live Data page, the
machine's real-time state is known to the fleet API without anyone having asked the
machine, and the screenshots at 1360×900 and 390×844 are kept.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import pytest

from livedata.decode.can import CanDecoder
from livedata.sim.demo import DBC_PATH
from livedata.sim.machine import Machine
from tests.browser.conftest import LivePage
from tests.servers import stop_process
from tests.servers.mosquitto import Mosquitto, start_mosquitto

PASSWORD = "journey-password-0123"
SERVICE_PASSWORD = "service-password-0123"
CHASSIS = "WL-0101"


def cli(*argv: str, data: Path, stdin: str = "") -> str:
    """Run `livedata ARGV --data-dir DATA` as a user would; its output (it must succeed)."""
    done = subprocess.run(
        [sys.executable, "-m", "livedata", *argv, "--data-dir", str(data)],
        input=stdin, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def record_can_log(path: Path, seconds: int = 30) -> None:
    """A candump log of a simulated wheel loader, 4 batches a second (the "recorded drive")."""
    machine = Machine(CHASSIS, CanDecoder.from_dbc(DBC_PATH.read_text()), 0)
    start = time.time()
    with can.Logger(str(path)) as logger:
        for step in range(seconds * 4):
            now = start + step / 4
            frames, _ = machine.step(int(now * 1000))
            for f in frames:
                logger(can.Message(timestamp=now, arbitration_id=f.arbitration_id,
                                   is_extended_id=f.is_extended, data=f.data, channel="can0"))  # fmt: skip


@dataclass
class Install:
    url: str
    data: Path
    broker: Mosquitto
    server: subprocess.Popen[str]


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    """A fresh install: organisation acme with admin alice, Mosquitto on the generated files,
    `livedata serve` rewriting them and reloading Mosquitto."""
    root = tmp_path_factory.mktemp("journey")
    data, passwd, acl = root / "data", root / "livedata.passwd", root / "livedata.acl"
    out = cli("orgs", "create", "acme", "--name", "ACME Earthworks", "--admin", "alice",
              "--password-stdin", data=data, stdin=PASSWORD + "\n")  # fmt: skip
    assert "created user alice (admin)" in out
    cli("devices", "mqtt-config", "--passwd", str(passwd), "--acl", str(acl),
        "--service-password-stdin", data=data, stdin=SERVICE_PASSWORD + "\n")  # fmt: skip
    broker = start_mosquitto(
        root / "mosquitto", f"password_file {passwd}\nacl_file {acl}\n", anonymous=False
    )
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LIVEDATA_MQTT_PASSWD_FILE": str(passwd),
        "LIVEDATA_MQTT_ACL_FILE": str(acl),
        "LIVEDATA_MQTT_RELOAD_COMMAND": f"kill -HUP {broker.process.pid}",
    }
    devices = f"mqtt://livedata:{SERVICE_PASSWORD}@127.0.0.1:{broker.port}?client_id=journey-ingest"
    server = subprocess.Popen(
        [sys.executable, "-m", "livedata", "serve", "--port", "0", "--data-dir", str(data),
         "--devices", devices],
        stdout=subprocess.PIPE, stderr=(root / "server.log").open("a"), text=True, env=env,
    )  # fmt: skip
    url = None
    assert server.stdout is not None
    deadline = time.monotonic() + 60
    while url is None and time.monotonic() < deadline:
        line = server.stdout.readline()
        assert "no organisation yet" not in line
        if m := re.search(r"serving on (http://\S+)", line):
            url = m.group(1)
        elif not line and server.poll() is not None:
            break
    if url is None:
        server.kill()
        broker.stop()
        raise RuntimeError((root / "server.log").read_text()[-3000:])
    yield Install(url, data, broker, server)
    stop_process(server)
    broker.stop()


def test_new_user_connects_a_real_machine(
    browser: Any, install: Install, artifacts: Path, tmp_path: Path
) -> None:
    """CLI org + admin → log in → DBC, model, machines by form and CSV → the shown agent
    command on a real Mosquitto → decoded signals live on the Live Data page."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto(f"{install.url}/static/machines.html")
    page.wait_for_selector("input[name=username]")  # sent to the login page
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/static/machines.html")
    page.wait_for_selector("#machines-empty:not([hidden])")

    # a J1939 DBC and a model
    page.goto(f"{install.url}/static/models.html")
    page.wait_for_selector("#models-empty:not([hidden])")
    page.set_input_files("#dbc-file", files=[{"name": "wl900-j1939.dbc", "mimeType": "text/plain", "buffer": DBC_PATH.read_bytes()}])  # fmt: skip
    page.wait_for_selector("#dbc-body tr >> text=wl900-j1939.dbc")
    page.fill("#model-form [name=name]", "WL900")
    page.click("#model-form button[type=submit]")
    page.wait_for_selector("#models-body tr[data-model='WL900']")
    dbc_id = page.eval_on_selector("#dbc-body tr", "row => row.dataset.dbcId")
    page.select_option("#models-body tr[data-model='WL900'] select", dbc_id)
    page.wait_for_selector("#catalog-body tr[data-signal='engine_rpm']")

    # one machine by form, one by CSV
    page.goto(f"{install.url}/static/machines.html")
    page.click("#add-machine")
    page.fill("#machine-form [name=chassisId]", CHASSIS)
    page.fill("#machine-form [name=name]", "Loader 101")
    page.fill("#machine-form [name=model]", "WL900")
    page.click("#machine-submit")
    page.wait_for_selector("#provision:not([hidden])")
    command = page.input_value("#p-agent")
    assert f"--mqtt mqtt://127.0.0.1:{install.broker.port}" in command
    assert "broker reloaded" in page.text_content("#p-broker")
    page.screenshot(path=str(artifacts / "journey-provision-1360.png"), full_page=True)
    page.click("#import-open")
    page.set_input_files("#import-file", files=[{"name": "fleet.csv", "mimeType": "text/csv", "buffer": b"chassis,name,model,tags\nWL-0102,Loader 102,WL900,spare\n"}])  # fmt: skip
    page.wait_for_selector("#import-report >> text=1 created")

    page.evaluate(
        """() => {
          window.statusRows = [];
          const source = new EventSource('/db/watch/device_status?period=1s&timeformat=ms');
          source.addEventListener('message', (e) => window.statusRows.push(JSON.parse(e.data)));
        }"""
    )
    # the technician pastes the command on the machine (a recorded log instead of can0)
    log = tmp_path / "drive.log"
    record_can_log(log)
    pasted = command.replace("--can-interface socketcan --can-channel can0", f"--can-log {log}")
    pasted = pasted.replace(
        " livedata agent ", f" {shlex.quote(sys.executable)} -m livedata agent "
    )
    agent = subprocess.Popen(
        ["bash", "-c", f"{pasted} --data-dir {tmp_path / 'agent'}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "agent.log").open("w"),
        start_new_session=True,
    )  # fmt: skip
    try:
        # known without anyone asking: the machine comes online, the server asks it
        # getStatus once and pushes the answer (nothing here asked for its status)
        page.wait_for_function(
            f"window.statusRows.some(r => r.MACHINE === '{CHASSIS}' && r.REALTIME === 'on')",
            timeout=30_000,
        )
        # a line group for the organisation (admins make them on the Live Data page)
        csrf = next(c["value"] for c in context.cookies() if c["name"] == "livedata_csrf")
        group = {
            "name": "Engine",
            "msgType": "vehicle_can",
            "fields": ["engine_rpm", "speed"],
            "unit": "",
        }
        made = context.request.post(f"{install.url}/api/resources/acme/groups", data=group, headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert made.ok, made.text()
        live = LivePage(page, install.url, artifacts)
        live.open(f"?machine={CHASSIS}")
        live.wait_for(
            lambda: live.point_counts().get("Engine", {}).get("engine_rpm", 0) >= 5,
            timeout=60,
            what=f"decoded engine_rpm on the page (agent log: {(tmp_path / 'agent.log').read_text()[-500:]})",
        )
        page.wait_for_function(
            "document.querySelector('.rt-state').textContent.includes('Real-Time is running')"
        )
        live.screenshot("journey-live-1360")
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(500)
        live.screenshot("journey-live-390")
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        live.assert_clean()

        fleet = context.request.get(f"{install.url}/api/resources/acme/fleet").json()
        states = {m["chassisId"]: m for m in fleet["machines"]}
        assert states[CHASSIS]["realtime"] == "on"
        assert states["WL-0102"]["online"] is False
    finally:
        os.killpg(agent.pid, signal.SIGTERM)
        agent.wait(20)
        context.close()
