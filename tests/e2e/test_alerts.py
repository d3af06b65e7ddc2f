"""Alerts end to end: the demo server, values driven over a threshold through the write API,
a webhook receiver and a real SMTP server (aiosmtpd) started here."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.conftest import Server, start_demo, stop
from tests.servers import free_port

SECRET = "webhook-secret-42"
ORG = "demo"


@dataclass
class Hook:
    """What the test webhook server received: (path, headers, raw body)."""

    calls: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    answers: dict[str, list[int]] = field(default_factory=dict)
    """Per path, the statuses to answer in turn (then 200)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(b) for p, _, b in self.calls if p == path]


def start_hook() -> tuple[ThreadingHTTPServer, Hook, str]:
    hook = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hook.lock:
                hook.calls.append((self.path, dict(self.headers), body))
                queue = hook.answers.get(self.path, [])
                status = queue.pop(0) if queue else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hook, f"http://127.0.0.1:{server.server_address[1]}"


class Mailbox:
    """An aiosmtpd handler keeping every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@dataclass
class Env:
    demo: Server
    hook: Hook
    hook_url: str
    mailbox: Mailbox


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A demo server whose alert e-mails go to an aiosmtpd server started here."""
    mailbox = Mailbox()
    smtp_port = free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    hook_server, hook, hook_url = start_hook()
    names = ("LIVEDATA_SMTP_HOST", "LIVEDATA_SMTP_PORT", "LIVEDATA_WEBHOOK_ALLOWED_NETWORKS")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["LIVEDATA_SMTP_HOST"] = "127.0.0.1"
    os.environ["LIVEDATA_SMTP_PORT"] = str(smtp_port)
    os.environ["LIVEDATA_WEBHOOK_ALLOWED_NETWORKS"] = "127.0.0.1/32"  # the test receiver
    try:
        demo = start_demo(Path(tmp_path_factory.mktemp("alerts-demo")), "--machines", "2")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield Env(demo, hook, hook_url, mailbox)
    finally:
        stop(demo)
        hook_server.shutdown()
        hook_server.server_close()
        smtp.stop()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def write(http: httpx.Client, chassis: str, metric: str, values: list[float]) -> None:
    """Write ``values`` of ``chassis.metric`` 10 ms apart, in order, the last one now."""
    now = int(time.time() * 1000)
    rows = [
        [f"{chassis}.{metric}", now - (len(values) - 1 - i) * 10, v] for i, v in enumerate(values)
    ]
    response = http.post(
        "/db/write/client_raw_data", params={"timeformat": "ms"}, json={"data": {"rows": rows}}
    )
    assert response.status_code == 200, response.text


def rule_body(name: str, metric: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "msgType": "client_raw_data",
        "field": metric,
        "condition": ">",
        "threshold": 50,
        "clearThreshold": 40,
        "forSeconds": 1,
        "severity": "critical",
        **extra,
    }


def active(http: httpx.Client, rule_id: int) -> list[dict[str, Any]]:
    alerts = http.get(f"/api/resources/{ORG}/alerts", params={"state": "active"}).json()["alerts"]
    return [a for a in alerts if a["ruleId"] == rule_id]


def test_crossing_raises_stores_notifies_and_clears(env: Env) -> None:
    """A value over the threshold for 1 s raises one stored alert, listed, sent to the SSE log
    table, the webhook (valid HMAC) and by e-mail; acknowledge works once, recorded under the
    caller's user name; a value between clear and threshold keeps it; below the clear threshold
    clears it, notified again."""
    chassis = env.demo.machines[0]
    with httpx.Client(base_url=env.demo.url, headers=env.demo.headers, timeout=10) as http:
        body = rule_body(
            "Load too high",
            "test_load",
            notify={
                "webhook": {"url": f"{env.hook_url}/alerts", "secret": SECRET},
                "email": ["ops@example.com"],
            },
        )
        created = http.post(f"/api/resources/{ORG}/alert-rules", json=body)
        assert created.status_code == 201, created.text
        rule = created.json()
        assert rule["notify"]["webhook"] == {"url": f"{env.hook_url}/alerts", "hasSecret": True}
        assert "secret" not in json.dumps(rule)

        rows: list[dict[str, Any]] = []

        def watch() -> None:
            with (
                httpx.Client(base_url=env.demo.url, headers=env.demo.headers, timeout=20) as sse,
                sse.stream("GET", "/db/watch/alerts", params={"period": "1s"}) as stream,
            ):
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        rows.append(json.loads(line[6:]))
                        return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        time.sleep(0.5)
        first = time.monotonic()
        write(http, chassis, "test_load", [75])
        time.sleep(0.5)
        assert active(http, rule["id"]) == [], "raised before the condition held for 1 s"
        time.sleep(max(0.0, first + 1.1 - time.monotonic()))
        started = time.monotonic()
        write(http, chassis, "test_load", [80])
        alerts = wait_until(lambda: active(http, rule["id"]), 3, "the alert to be stored")
        assert time.monotonic() - started < 2
        assert len(alerts) == 1
        alert = alerts[0]
        assert alert["chassisId"] == chassis
        assert alert["severity"] == "critical"
        assert alert["value"] == 80
        assert alert["message"] == "test_load = 80 (test_load > 50 for 1 s)"

        bodies = wait_until(lambda: env.hook.bodies("/alerts"), 5, "the webhook")
        _path, headers, raw = env.hook.calls[0]
        expected = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        assert headers["X-Livedata-Signature"] == expected
        assert bodies[0]["event"] == "raised"
        assert bodies[0]["alert"]["id"] == alert["id"]
        assert bodies[0]["rule"]["description"] == "test_load > 50 for 1 s"

        mails = wait_until(lambda: env.mailbox.messages, 5, "the e-mail")
        recipients, mail = mails[0]
        assert recipients == ["ops@example.com"]
        assert mail["Subject"] == f"[CRITICAL] Load too high on {chassis}"
        assert "test_load = 80" in mail.get_payload()

        watcher.join(5)
        assert rows and rows[0]["EVENT"] == "raised" and rows[0]["MACHINE"] == chassis

        notes = wait_until(
            lambda: [
                n
                for n in http.get(
                    f"/api/resources/{ORG}/alerts/{alert['id']}/notifications"
                ).json()["notifications"]
                if n["status"] == "sent"
            ],
            5,
            "notifications marked sent",
        )
        assert sorted(n["channel"] for n in notes) == ["email", "webhook"]

        write(http, chassis, "test_load", [90])  # still over: no second alert
        ack = http.post(f"/api/resources/{ORG}/alerts/{alert['id']}/ack", json={"comment": "on it"})
        assert ack.status_code == 200, ack.text
        assert (ack.json()["acknowledgedBy"], ack.json()["comment"]) == ("admin", "on it")
        again = http.post(f"/api/resources/{ORG}/alerts/{alert['id']}/ack", json={})
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "conflict"

        write(http, chassis, "test_load", [45, 30])  # 45 is inside the hysteresis band
        cleared = wait_until(
            lambda: (
                (a := http.get(f"/api/resources/{ORG}/alerts/{alert['id']}").json())["state"]
                == "cleared"
                and a
            ),
            3,
            "the alert to clear",
        )
        assert cleared["clearValue"] == 30
        all_alerts = http.get(f"/api/resources/{ORG}/alerts").json()["alerts"]
        assert [a["id"] for a in all_alerts if a["ruleId"] == rule["id"]] == [alert["id"]]
        wait_until(
            lambda: [b for b in env.hook.bodies("/alerts") if b["event"] == "cleared"],
            5,
            "the cleared webhook",
        )
        wait_until(
            lambda: any(m["Subject"].startswith("[RESOLVED]") for _, m in env.mailbox.messages),
            5,
            "the resolved e-mail",
        )


def test_failed_webhook_is_retried_and_visible(env: Env) -> None:
    """A webhook answering 500 is retried with backoff and its error is shown; one that fails
    once is sent on the second attempt."""
    chassis = env.demo.machines[1]
    env.hook.answers["/down"] = [500] * 100
    env.hook.answers["/flaky"] = [503]
    with httpx.Client(base_url=env.demo.url, headers=env.demo.headers, timeout=10) as http:
        for metric, path in (("down_metric", "/down"), ("flaky_metric", "/flaky")):
            body = rule_body(
                metric, metric, forSeconds=0, notify={"webhook": {"url": env.hook_url + path}}
            )
            assert http.post(f"/api/resources/{ORG}/alert-rules", json=body).status_code == 201
        write(http, chassis, "down_metric", [60])
        write(http, chassis, "flaky_metric", [60])

        def notes(metric: str) -> list[dict[str, Any]]:
            alerts = http.get(f"/api/resources/{ORG}/alerts", params={"state": "active"}).json()
            ids = [a["id"] for a in alerts["alerts"] if a["field"] == metric]
            if not ids:
                return []
            url = f"/api/resources/{ORG}/alerts/{ids[0]}/notifications"
            return http.get(url).json()["notifications"]

        flaky = wait_until(
            lambda: [n for n in notes("flaky_metric") if n["status"] == "sent"], 8, "flaky sent"
        )
        assert flaky[0]["attempts"] == 2
        down = wait_until(
            lambda: [n for n in notes("down_metric") if n["attempts"] >= 2], 8, "two attempts"
        )
        assert down[0]["status"] == "pending"
        assert "HTTP 500" in down[0]["lastError"]
        assert down[0]["nextAttemptMs"] > time.time() * 1000


def test_invalid_rules_are_refused_with_a_reason(env: Env) -> None:
    """Invalid rules get 400 with a message saying why; unknown rules, alerts and organisations
    (any but the caller's) get 404; nothing is stored."""
    with httpx.Client(base_url=env.demo.url, headers=env.demo.headers, timeout=10) as http:
        before = http.get(f"/api/resources/{ORG}/alert-rules").json()["rules"]
        cases = [
            ({"condition": "outside", "threshold": 20, "thresholdHigh": 10}, "low < high"),
            ({"clearThreshold": 60}, "clear threshold must be below the threshold for >"),
            ({"scope": "machine", "scopeValue": "NOPE-1"}, "not a machine of"),
            ({"threshold": "high"}, "threshold"),
            ({"severity": "apocalyptic"}, "severity"),
            ({"kind": "nodata"}, "nodataSeconds"),
        ]
        for change, reason in cases:
            response = http.post(
                f"/api/resources/{ORG}/alert-rules", json={**rule_body("bad", "x"), **change}
            )
            assert response.status_code == 400, (change, response.text)
            assert reason in response.json()["error"]["message"], (change, response.text)
        assert http.get(f"/api/resources/{ORG}/alert-rules").json()["rules"] == before
        assert http.get(f"/api/resources/{ORG}/alert-rules/99999").status_code == 404
        assert http.post(f"/api/resources/{ORG}/alerts/99999/ack", json={}).status_code == 404
        assert http.get("/api/resources/nobody/alert-rules").status_code == 404
        assert http.get("/api/resources/nobody/fleet").status_code == 404


def test_fleet_summary_is_live(env: Env) -> None:
    """The fleet summary lists every machine online with recent values and GPS, from memory."""
    with httpx.Client(base_url=env.demo.url, headers=env.demo.headers, timeout=10) as http:
        first = http.get(f"/api/resources/{ORG}/fleet", params={"fields": "engine_rpm"}).json()
        time.sleep(2.2)
        later = http.get(f"/api/resources/{ORG}/fleet", params={"fields": "engine_rpm"}).json()
    assert [m["chassisId"] for m in later["machines"]] == env.demo.machines
    assert later["online"] == later["total"] == 2
    for before, after in zip(first["machines"], later["machines"], strict=True):
        assert after["lastSeen"] >= before["lastSeen"] + 2000
        assert abs(after["lastSeen"] / 1000 - time.time()) < 3
        assert set(after["values"]) == {"engine_rpm"}
        assert after["realtime"] in ("on", "unknown")  # "on" once the background probe answered
        assert 50.9 < after["gps"]["lat"] < 51.1 and 6.9 < after["gps"]["lng"] < 7.1
    assert later["fields"][0] == {
        "name": "engine_rpm",
        "unit": "rpm",
        "min": 0,
        "max": 3000,
        "choices": None,
        "resolution": 0.125,
        "msgType": "vehicle_can",
    }
