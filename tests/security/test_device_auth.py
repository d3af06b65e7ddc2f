"""HTTP ingest takes a machine's own secret only: missing, wrong or borrowed ones get 401.

On the shared demo server.  Secrets are given to the demo's first two machines (the
HTTP ingest e2e tests use the last one); values are sent as backfill hours in the
past, so they are stored but never pushed to other tests' live clients.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx
import pytest

from livedata.cli.main import main
from tests.conftest import Server

pytestmark = pytest.mark.usefixtures("plain_logging")

_offsets = itertools.count()


def past_ts() -> int:
    """A distinct timestamp four hours ago, off the second grid the fleet uses."""
    return (int(time.time()) - 4 * 3600) * 1000 + 271 + next(_offsets) * 1000


def body(ts: int, value: float) -> dict[str, object]:
    return {"v": 1, "ts": ts, "kind": "backfill", "values": {"auth_probe": value}}


@pytest.fixture(scope="module")
def admin(demo: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.url, headers=demo.headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def secrets(demo: Server, admin: httpx.Client) -> dict[str, str]:
    """New secrets of the demo's first two machines, given through the admin endpoint."""
    given = {}
    for chassis in demo.machines[:2]:
        response = admin.post(f"/api/resources/demo/machines/{chassis}/secret")
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["username"] == f"demo/{chassis}"
        given[chassis] = answer["secret"]
    return given


def post(
    demo: Server, chassis: str, payload: dict[str, object], secret: str | None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {secret}".strip()} if secret is not None else {}
    return httpx.post(
        f"{demo.url}/api/ingest/demo/{chassis}/client_raw_data",
        json=payload,
        headers=headers,
        timeout=30,
    )


def stored(admin: httpx.Client, chassis: str, ts: int) -> list[list[float]]:
    response = admin.get(
        f"/api/resources/demo/_common/datasets/{chassis}/history",
        params={"msgType": "client_raw_data", "fields": "auth_probe", "from": ts, "to": ts},
    )
    assert response.status_code == 200, response.text
    series: list[list[float]] = response.json()["series"].get("auth_probe", [])
    return series


def test_missing_wrong_or_borrowed_secret_is_401_and_stores_nothing(
    demo: Server, admin: httpx.Client, secrets: dict[str, str]
) -> None:
    """No secret, a wrong one, another machine's, a user's API token: 401 each, nothing stored."""
    first, second = demo.machines[:2]
    ts = past_ts()
    for secret in (None, "", "wrong-secret", secrets[second], demo.token, secrets[first] + "x"):
        response = post(demo, first, body(ts, 1.0), secret)
        assert response.status_code == 401, (secret, response.text)
        assert response.json()["error"]["code"] == "unauthenticated"
    basic = httpx.post(
        f"{demo.url}/api/ingest/demo/{first}/client_raw_data",
        json=body(ts, 1.0),
        auth=("demo/" + first, secrets[first]),  # Basic is not Bearer
        timeout=30,
    )
    assert basic.status_code == 401
    assert stored(admin, first, ts) == []


def test_unknown_machine_or_organisation_is_401_not_404(
    demo: Server, secrets: dict[str, str]
) -> None:
    """With a valid secret, an unknown machine or another organisation is 401 like a wrong secret."""
    first = demo.machines[0]
    for org, chassis in (("demo", "NO-SUCH-1"), ("otherorg", first)):
        response = httpx.post(
            f"{demo.url}/api/ingest/{org}/{chassis}/client_raw_data",
            json=body(past_ts(), 1.0),
            headers={"Authorization": f"Bearer {secrets[first]}"},
            timeout=30,
        )
        assert response.status_code == 401, response.text


def test_own_secret_is_accepted_and_stored(
    demo: Server, admin: httpx.Client, secrets: dict[str, str]
) -> None:
    """Each machine's own secret is accepted (202) and its value reaches history."""
    for n, (chassis, secret) in enumerate(secrets.items()):
        ts = past_ts()
        response = post(demo, chassis, body(ts, 40.5 + n), secret)
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": True, "points": 1}
        assert stored(admin, chassis, ts) == [[ts, 40.5 + n]]


def test_a_secret_from_the_cli_replaces_the_old_one(
    demo: Server, secrets: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`livedata devices secret` on the server's data directory: the new secret works, the old is 401."""
    first = demo.machines[0]
    assert main(["devices", "secret", "demo", first, "--data-dir", str(demo.data_dir)]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"secret of demo/{first}: "))
    new = line.split(": ", 1)[1]
    assert post(demo, first, body(past_ts(), 1.0), secrets[first]).status_code == 401
    assert post(demo, first, body(past_ts(), 1.0), new).status_code == 202
    secrets[first] = new
