"""The `livedata` command: help texts and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from livedata.cli.main import main


def test_help_explains_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`livedata --help` lists the subcommands and each subcommand's help lists its flags."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "demo" in out and "serve" in out
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--machines", "--data-dir", "--config"):
        assert flag in out


def test_simulate_imports_no_server_module() -> None:
    """`livedata simulate --help` imports neither the gateway, the runtime, the metadata
    database nor cantools, and makes no password hash: it starts in a fraction of the time."""
    probe = (
        "import sys\n"
        "from livedata.cli.main import main\n"
        "try:\n"
        "    main(['simulate', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "import livedata.auth.credentials as cred\n"
        "heavy = ('livedata.gateway', 'livedata.runtime', 'livedata.metadata', 'cantools')\n"
        "print(sorted({m for m in sys.modules if m.startswith(heavy)}))\n"
        "print(cred._dummy.cache_info().currsize)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-2:] == ["[]", "0"]


def test_unknown_user_password_check_is_false() -> None:
    """verify_password against no stored hash (an unknown user) is False, the dummy hash
    being made on first use."""
    from livedata.auth.credentials import hash_password, verify_password

    assert not verify_password(None, "secret")
    assert not verify_password("", "secret")
    assert verify_password(hash_password("secret"), "secret")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["demo", "--port", "abc"], "invalid int value"),
        (["demo", "--frobnicate"], "unrecognized arguments"),
        (["serve", "--store", "foo://x"], "unsupported store URL"),
        (["serve", "--pubsub", "not a url"], "not a URL"),
        (["demo", "--machines", "-1"], "machines"),
        (["simulate", "--mqtt", "mqtt://127.0.0.1:1", "--spool", "0"], "--spool"),
        (["serve", "--config", "/no/such/file.toml"], "does not exist"),
        (["nosuch"], "invalid choice"),
    ],
)
def test_wrong_input_gives_one_line_error(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong flag, value or URL prints one `error: …` line and no traceback."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]
    assert "Traceback" not in err


def test_port_in_use_is_a_one_line_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    """Starting on a port that is taken fails with one line naming the address."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--port", str(port), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err


def test_settings_come_from_toml_and_environment(tmp_path) -> None:
    """A TOML file sets values, LIVEDATA_* overrides it, and a flag overrides both."""
    config = tmp_path / "livedata.toml"
    config.write_text('port = 9100\nretention_days = 3\nlog_level = "debug"\n')
    code = (
        "from livedata.settings import load_settings; from pathlib import Path; "
        f"s = load_settings({{'retention_days': 2}}, Path({str(config)!r})); "
        "print(s.port, s.retention_days, s.log_level)"
    )
    env = {"LIVEDATA_PORT": "9200", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["9200", "2.0", "debug"]
