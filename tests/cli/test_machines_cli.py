"""`livedata orgs` and `livedata machines` in-process on a temporary data directory."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from livedata.auth import credentials as cred
from livedata.cli.main import main
from livedata.model import Kind, Record
from livedata.store import open_store
from tests.cli.test_users_cli import cli, db, fails

pytestmark = pytest.mark.usefixtures("plain_logging")


def store_points(data_dir: Path, chassis: str, n: int = 0) -> int:
    """Write ``n`` values of ``chassis`` in org acme to the data dir's store; how many it has."""

    async def run() -> int:
        store = open_store(f"sqlite:///{data_dir / 'telemetry.db'}")
        await store.start()
        try:
            records = [
                Record(
                    "acme",
                    chassis,
                    "client_raw_data",
                    1_700_000_000_000 + i,
                    Kind.REALTIME,
                    {"x": i},
                )
                for i in range(n)
            ]
            await store.write(records)
            return await store.machine_points("acme", chassis)
        finally:
            await store.close()

    return asyncio.run(run())


@pytest.fixture
def data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A data dir with organisation acme (and its admin alice)."""
    d = tmp_path / "data"
    out = cli(
        capsys, "orgs", "create", "acme", "--name", "ACME", "--admin", "alice", "--data-dir", str(d)
    )
    assert "created user alice (admin)" in out and re.search(r"password: \S+", out)
    return d


def test_orgs_create_list_rename(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Organisations are created (twice is refused), listed with counts and renamed."""
    assert "already exists" in fails(capsys, "orgs", "create", "acme", "--data-dir", str(data))
    assert "not a valid" in fails(capsys, "orgs", "create", "bad id", "--data-dir", str(data))
    cli(capsys, "orgs", "rename", "acme", "ACME Earthworks", "--data-dir", str(data))
    listing = cli(capsys, "orgs", "list", "--data-dir", str(data))
    assert re.search(r"acme\s+ACME Earthworks\s+0\s+1", listing), listing
    assert "not found" in fails(capsys, "orgs", "rename", "nope", "X", "--data-dir", str(data))


def test_add_prints_the_bundle_and_writes_broker_files(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`machines add` issues a secret that verifies, prints MQTT/HTTP/agent details, writes
    the agent's TOML with --config-out and rewrites the configured broker files."""
    monkeypatch.setenv("LIVEDATA_DEVICES", "mqtt://livedata:service-pass@127.0.0.1:1883")
    monkeypatch.setenv("LIVEDATA_MQTT_PASSWD_FILE", str(tmp_path / "passwd"))
    monkeypatch.setenv("LIVEDATA_MQTT_ACL_FILE", str(tmp_path / "acl"))
    d = ("--data-dir", str(data))
    out = cli(
        capsys,
        "machines",
        "add",
        "acme",
        "WL-1",
        "--name",
        "Loader 1",
        "--model",
        "WL900",
        "--tags",
        "north,rental",
        "--location",
        "Yard 3",
        *d,
    )
    assert "MQTT: mqtt://127.0.0.1:1883  username: acme/WL-1" in out
    secret = re.search(r"secret: (\S+)", out)
    assert secret is not None
    assert f"LIVEDATA_AGENT_SECRET={secret[1]} livedata agent" in out
    assert "broker files rewritten (1 machine(s))" in out
    passwd = (tmp_path / "passwd").read_text()
    assert passwd.startswith("livedata:$7$") and "acme/WL-1:$7$" in passwd
    stored = db(data, lambda meta, _a: meta.get_machine("acme", "WL-1"))
    assert cred.verify_device_secret(stored.secret_hash, secret[1])
    config = tmp_path / "agent.toml"
    cli(
        capsys,
        "machines",
        "add",
        "acme",
        "WL-2",
        "--name",
        "L2",
        "--model",
        "WL900",
        "--config-out",
        str(config),
        *d,
    )
    parsed = tomllib.loads(config.read_text())
    assert parsed["chassis"] == "WL-2" and parsed["mqtt"] == "mqtt://127.0.0.1:1883"
    assert config.stat().st_mode & 0o777 == 0o600
    listing = cli(capsys, "machines", "list", "acme", *d)
    assert re.search(r"WL-1\s+Loader 1\s+WL900\s+north;rental\s+Yard 3\s+enabled\s+yes", listing)
    assert "already exists" in fails(
        capsys, "machines", "add", "acme", "WL-1", "--name", "x", "--model", "M", *d
    )
    out = cli(capsys, "machines", "edit", "acme", "WL-1", "--disable", *d)
    assert "acme/WL-1:" not in (tmp_path / "passwd").read_text()
    assert "nothing to change" in fails(capsys, "machines", "edit", "acme", "WL-1", *d)


def test_import_reports_bad_rows_and_is_idempotent(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad rows are reported by line with exit status 1, good rows created; again: unchanged."""
    csv = tmp_path / "m.csv"
    csv.write_text("chassis,name,model,tags\nA-1,One,M1,x;y\nbad!,Two,M1,\nA-2,Two,M1,\n")
    d = ("--data-dir", str(data))
    assert main(["machines", "import", "acme", str(csv), *d]) == 1
    out = capsys.readouterr().out
    assert "2 created, 0 updated, 0 unchanged, 1 bad row(s)" in out
    assert "line 3: bad!: chassis id" in out
    csv.write_text("chassis,name,model,tags\nA-1,One,M1,x;y\nA-2,Two,M1,\n")
    assert "0 created, 0 updated, 2 unchanged, 0 bad" in cli(
        capsys, "machines", "import", "acme", str(csv), *d
    )


def test_remove_asks_then_keeps_or_deletes_data(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`remove` without --data says how much is stored and changes nothing; keep and delete do
    what they say."""
    d = ("--data-dir", str(data))
    for chassis in ("K-1", "D-1"):
        cli(
            capsys,
            "machines",
            "add",
            "acme",
            chassis,
            "--name",
            chassis,
            "--model",
            "M",
            "--no-secret",
            *d,
        )
        assert store_points(data, chassis, 25) == 25
    assert "K-1 has 25 stored values" in fails(capsys, "machines", "remove", "acme", "K-1", *d)
    assert "kept 25 stored values" in cli(
        capsys, "machines", "remove", "acme", "K-1", "--data", "keep", *d
    )
    assert "deleted 25 stored values" in cli(
        capsys, "machines", "remove", "acme", "D-1", "--data", "delete", *d
    )
    assert store_points(data, "K-1") == 25 and store_points(data, "D-1") == 0
    assert "no machines" in cli(capsys, "machines", "list", "acme", *d)


def test_serve_on_an_empty_install_says_how_to_begin(tmp_path: Path) -> None:
    """`livedata serve` with no organisation prints the `orgs create … --admin` line."""
    process = subprocess.Popen(
        [sys.executable, "-m", "livedata", "serve", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "is serving on" in line:
                break
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
    text = "".join(lines)
    assert "no organisation yet" in text
    assert (
        f"livedata orgs create ORG --name 'Your company' --admin USERNAME --data-dir {tmp_path}"
        in text
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            'mqtt = "mqtt://h:1883"\norg = "acme"\nchassis = "WL-1"\ncolour = "red"\n',
            "unknown keys",
        ),
        ("mqtt = \n", "is not TOML"),
        ('org = "acme"\n', "give --mqtt and --chassis"),
        ('mqtt = "mqtt://h:1883"\nchassis = 7\n', "must be a string"),
    ],
)
def test_agent_config_file_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    """`livedata agent --config` refuses a file it cannot use with one line saying why."""
    config = tmp_path / "agent.toml"
    config.write_text(content)
    assert message in fails(capsys, "agent", "--config", str(config))
