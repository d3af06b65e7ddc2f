"""`livedata users` and `livedata devices` in-process on a temporary data directory."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from livedata.auth import Role
from livedata.auth import credentials as cred
from livedata.auth.mosquitto import parse_password_file
from livedata.cli.main import main
from livedata.cli.simulate import device_urls
from livedata.devices.mqtt import MqttDevice
from livedata.errors import ConfigError
from livedata.metadata import Metadata
from livedata.metadata.accounts import Accounts

T = TypeVar("T")

pytestmark = pytest.mark.usefixtures("plain_logging")


def db(data_dir: Path, work: Callable[[Metadata, Accounts], Awaitable[T]]) -> T:
    """Run ``work`` on the metadata database of ``data_dir``."""

    async def run() -> T:
        meta = Metadata(f"sqlite:///{data_dir / 'metadata.db'}")
        await meta.start()
        try:
            return await work(meta, Accounts(meta))
        finally:
            await meta.close()

    return asyncio.run(run())


def cli(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str | None = None) -> str:
    """Run ``livedata ARGV`` and return its standard output; it must succeed."""
    if stdin is not None:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", io.StringIO(stdin))
            code = main(list(argv))
    else:
        code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def fails(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> str:
    """Run ``livedata ARGV``, which must fail with one ``error: …`` line; that line."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def value(out: str, label: str) -> str:
    """The value of the ``label: value`` line of ``out``."""
    prefix = label + ": "
    return next(x for x in out.splitlines() if x.startswith(prefix)).removeprefix(prefix)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def machines(data_dir: Path) -> list[str]:
    """Organisation ``acme`` with three machines, none with a secret yet."""
    ids = ["M1", "M2", "M3"]

    async def seed(meta: Metadata, _: Accounts) -> None:
        await meta.ensure_org("acme", "Acme")
        for chassis in ids:
            await meta.upsert_machine("acme", chassis, chassis, "WL")

    db(data_dir, seed)
    return ids


def test_create_first_admin_of_a_fresh_install(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`users create --create-org` makes the database, the org and an admin whose password logs in."""
    dd = str(data_dir)
    create = ["users", "create", "acme", "alice", "--role", "admin", "--data-dir", dd]
    line = fails(capsys, *create)  # a wrong --data-dir must not create an empty database
    assert "no metadata database at" in line and "--data-dir" in line
    assert "no metadata database" in fails(capsys, "users", "list", "--data-dir", dd)
    argv = ["devices", "mqtt-config", "--passwd", f"{dd}.p", "--acl", f"{dd}.a", "--data-dir", dd]
    assert "no metadata database" in fails(capsys, *argv)
    assert not data_dir.exists()
    out = cli(capsys, *create, "--create-org")
    assert "created organisation acme" in out and "shown this once" in out
    password = value(out, "password")

    async def check(meta: Metadata, accounts: Accounts) -> None:
        user = await accounts.check_password("alice", password)
        assert user is not None and (user.org_id, user.role) == ("acme", "admin")
        assert await accounts.check_password("alice", password + "x") is None
        assert [e.action for e in await accounts.list_audit("acme")] == [
            "user_created",
            "org_created",
        ]

    db(data_dir, check)
    line = fails(capsys, "users", "create", "acme", "alice", "--role", "viewer", "--data-dir", dd)
    assert "'alice' is taken" in line
    line = fails(capsys, "users", "create", "acne", "bob", "--role", "viewer", "--data-dir", dd)
    assert "organisation 'acne' not found (add --create-org" in line
    assert "invalid choice" in fails(capsys, "users", "create", "acme", "bob", "--role", "root")
    assert "username" in fails(
        capsys, "users", "create", "acme", "b/b", "--role", "viewer", "--data-dir", dd
    )


def test_create_with_password_from_stdin(
    data_dir: Path, machines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--password-stdin takes the first line, prints no password, refuses a short one."""
    dd = str(data_dir)
    argv = ["users", "create", "acme", "olga", "--role", "operator", "--password-stdin"]
    assert "at least 10" in fails(capsys, *argv, "--data-dir", dd, stdin="short\n")
    out = cli(capsys, *argv, "--data-dir", dd, stdin="a long passphrase\nignored\n")
    assert "password:" not in out and "a long passphrase" not in out

    async def check(meta: Metadata, accounts: Accounts) -> None:
        user = await accounts.check_password("olga", "a long passphrase")
        assert user is not None and Role[user.role] is Role.operator

    db(data_dir, check)


def test_passwd_sets_a_new_password_and_ends_sessions(
    data_dir: Path, machines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`users passwd` prints a new password once; the old one and the user's sessions stop working."""
    dd = str(data_dir)
    old = value(
        cli(capsys, "users", "create", "acme", "vic", "--role", "viewer", "--data-dir", dd),
        "password",
    )

    async def log_in(meta: Metadata, accounts: Accounts) -> str:
        user = await accounts.check_password("vic", old)
        assert user is not None
        session, _ = await accounts.create_session(user, 3600)
        assert await accounts.session_principal(cred.digest(session)) is not None
        return session

    session = db(data_dir, log_in)
    out = cli(capsys, "users", "passwd", "vic", "--data-dir", dd)
    new = value(out, "password")
    assert new != old and "sessions are ended" in out

    async def check(meta: Metadata, accounts: Accounts) -> None:
        assert await accounts.check_password("vic", old) is None
        assert await accounts.check_password("vic", new) is not None
        assert await accounts.session_principal(cred.digest(session)) is None
        assert "password_reset" in [e.action for e in await accounts.list_audit("acme")]

    db(data_dir, check)
    assert "user 'nobody' not found" in fails(capsys, "users", "passwd", "nobody", "--data-dir", dd)


def test_list_users_of_one_or_all_organisations(
    data_dir: Path, machines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`users list` shows org, user, role and state; `users list ORG` only that organisation."""
    dd = str(data_dir)
    cli(capsys, "users", "create", "acme", "ann", "--role", "admin", "--data-dir", dd)
    cli(
        capsys,
        "users",
        "create",
        "zeta",
        "zed",
        "--role",
        "viewer",
        "--create-org",
        "--org-name",
        "Zeta Ltd",
        "--data-dir",
        dd,
    )
    rows = [line.split() for line in cli(capsys, "users", "list", "--data-dir", dd).splitlines()]
    assert rows[0][:4] == ["ORG", "USER", "ROLE", "STATE"]
    assert [r[:4] for r in rows[1:]] == [
        ["acme", "ann", "admin", "active"],
        ["zeta", "zed", "viewer", "active"],
    ]
    only = cli(capsys, "users", "list", "zeta", "--data-dir", dd)
    assert "zed" in only and "ann" not in only
    assert "not found" in fails(capsys, "users", "list", "nosuch", "--data-dir", dd)


def test_token_is_printed_once_and_authenticates_as_the_user(
    data_dir: Path, machines: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """`users token` prints an API token that resolves to the user's org and role."""
    dd = str(data_dir)
    cli(capsys, "users", "create", "acme", "tom", "--role", "operator", "--data-dir", dd)
    out = cli(capsys, "users", "token", "tom", "--name", "grafana", "--data-dir", dd)
    token = value(out, "token")
    assert token.startswith(cred.TOKEN_PREFIX)
    expiring = value(
        cli(
            capsys, "users", "token", "tom", "--name", "ci", "--expires-days", "1", "--data-dir", dd
        ),
        "token",
    )

    async def check(meta: Metadata, accounts: Accounts) -> None:
        principal = await accounts.token_principal(cred.digest(token))
        assert principal is not None
        assert (principal.username, principal.org, principal.role) == ("tom", "acme", Role.operator)
        tokens = {t.name: t for t, _ in await accounts.list_tokens("acme")}
        assert tokens["grafana"].expires_ms is None and tokens["ci"].expires_ms is not None
        assert await accounts.token_principal(cred.digest(expiring)) is not None
        assert await accounts.token_principal(cred.digest(token + "x")) is None

    db(data_dir, check)
    assert "not found" in fails(capsys, "users", "token", "x", "--name", "n", "--data-dir", dd)
    assert "required" in fails(capsys, "users", "token", "tom", "--data-dir", dd)


def test_device_secret_printed_or_written_to_a_file(
    data_dir: Path, machines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`devices secret` prints one secret, or writes every machine's to a 0600 JSON file."""
    dd = str(data_dir)
    out = cli(capsys, "devices", "secret", "acme", "M1", "--data-dir", dd)
    first = value(out, "secret of acme/M1")
    assert "shown this once" in out
    assert "not found" in fails(capsys, "devices", "secret", "acme", "M1", "NOPE", "--data-dir", dd)
    assert "--all" in fails(capsys, "devices", "secret", "acme", "M1", "--all", "--data-dir", dd)
    assert "--all" in fails(capsys, "devices", "secret", "acme", "--data-dir", dd)

    async def check_first(meta: Metadata, accounts: Accounts) -> None:
        assert await accounts.check_device_secret("acme", "M1", first)  # NOPE changed nothing
        assert not await accounts.check_device_secret("acme", "M2", first)

    db(data_dir, check_first)
    out_file = tmp_path / "secrets.json"
    out_file.write_text(json.dumps({"OTHER": "kept"}))
    out = cli(
        capsys, "devices", "secret", "acme", "--all", "--out", str(out_file), "--data-dir", dd
    )
    assert "3 new secret" in out and first not in out
    written = json.loads(out_file.read_text())
    assert set(written) == {"OTHER", *machines}
    assert out_file.stat().st_mode & 0o777 == 0o600

    async def check_all(meta: Metadata, accounts: Accounts) -> None:
        for chassis in machines:
            assert await accounts.check_device_secret("acme", chassis, written[chassis])
        assert not await accounts.check_device_secret("acme", "M1", first)

    db(data_dir, check_all)


def test_mqtt_config_writes_the_broker_files(
    data_dir: Path, machines: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`devices mqtt-config` writes hashes only, generates the service password once, then keeps it."""
    dd = str(data_dir)
    cli(capsys, "devices", "secret", "acme", "M1", "M2", "--data-dir", dd)
    passwd, acl = tmp_path / "passwd", tmp_path / "acl"
    argv = ["devices", "mqtt-config", "--passwd", str(passwd), "--acl", str(acl), "--data-dir", dd]
    out = cli(capsys, *argv)
    service_password = value(out, "service user livedata's new password")
    assert "1 machine(s) have no secret" in out and "SIGHUP" in out
    users = parse_password_file(passwd.read_text())
    assert list(users) == ["livedata", "acme/M1", "acme/M2"]
    assert cred.verify_device_secret(users["livedata"], service_password)
    assert passwd.stat().st_mode & 0o777 == 0o600
    assert "user livedata" in acl.read_text()

    again = cli(capsys, *argv)  # regenerating keeps the service user's password
    assert "new password" not in again
    assert parse_password_file(passwd.read_text())["livedata"] == users["livedata"]
    cli(
        capsys,
        *argv,
        "--service-user",
        "ingest",
        "--service-password-stdin",
        stdin="ingest-password\n",
    )
    users = parse_password_file(passwd.read_text())
    assert list(users) == ["ingest", "acme/M1", "acme/M2"]
    assert cred.verify_device_secret(users["ingest"], "ingest-password")
    assert "no '/'" in fails(capsys, *argv, "--service-user", "a/b")
    missing = ["devices", "mqtt-config", "--passwd", str(tmp_path / "no" / "p"), "--acl", str(acl)]
    assert "does not exist" in fails(capsys, *missing, "--data-dir", dd)


def test_simulate_and_agent_carry_each_machines_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The secrets file becomes per-machine URLs (username org/chassis); bad input is one line."""
    urls = device_urls("mqtt://broker:1883?keepalive=20", "demo", ["WL-0001"], {"WL-0001": "s/e:c"})
    device = MqttDevice(urls["WL-0001"], "demo", "WL-0001")
    assert (device._broker.username, device._broker.password) == ("demo/WL-0001", "s/e:c")
    assert (device._broker.host, device._broker.port, device.keepalive) == ("broker", 1883, 20)
    with pytest.raises(ConfigError, match="no secret for 1 machine"):
        device_urls("mqtt://broker", "demo", ["WL-0001", "WL-0002"], {"WL-0001": "s"})
    with pytest.raises(ConfigError, match="already has credentials"):
        device_urls("mqtt://u:p@broker", "demo", ["WL-0001"], {"WL-0001": "s"})
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"WL-0001": "s"}))
    simulate = ["simulate", "--mqtt", "mqtt://127.0.0.1:1", "--machines", "2"]
    assert "WL-0002" in fails(capsys, *simulate, "--secrets", str(secrets))
    secrets.write_text("[1, 2]")
    assert "JSON object" in fails(capsys, *simulate, "--secrets", str(secrets))
    empty = tmp_path / "secret"
    empty.write_text("\n")
    agent = ["agent", "--mqtt", "mqtt://127.0.0.1:1", "--chassis", "WL-0001"]
    assert "is empty" in fails(capsys, *agent, "--secret-file", str(empty))
    empty.write_text("s3cret\n")
    line = fails(
        capsys,
        "agent",
        "--mqtt",
        "mqtt://u:p@127.0.0.1:1",
        "--chassis",
        "WL-0001",
        "--secret-file",
        str(empty),
    )
    assert "already has credentials" in line
