"""Shared fixtures: a real livedata server in a subprocess on a free loopback port."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ADMIN_TOKEN = "ld_test_admin_token_0123456789abcdefghijklmnop"
"""The admin API token every test server is started with (``LIVEDATA_ADMIN_TOKEN``)."""


@dataclass
class Server:
    """A running ``livedata demo`` process."""

    url: str
    machines: list[str]
    process: subprocess.Popen[str]
    data_dir: Path
    log_path: Path
    token: str = ADMIN_TOKEN
    password: str = ""

    @property
    def headers(self) -> dict[str, str]:
        """The headers of an API client acting as the demo organisation's admin."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http")

    def live_url(self, chassis: str, msg_type: str = "vehicle_can", org: str = "demo") -> str:
        return (
            f"{self.ws_url}/api/resources/{org}/_common/datasets/{chassis}/live?msgType={msg_type}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_demo(data_dir: Path, *args: str, timeout: float = 60.0) -> Server:
    """Start ``livedata demo`` on a free port and wait until it prints its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "server.log"
    cmd = [sys.executable, "-m", "livedata", "demo", "--port", "0", "--data-dir", str(data_dir)]
    process = subprocess.Popen(
        [*cmd, *args],
        stdout=subprocess.PIPE,
        stderr=log_path.open("a"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "LIVEDATA_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    url, machines, password = None, None, ""
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline and (url is None or machines is None):
        line = process.stdout.readline()
        if not line:
            break
        if m := re.search(r"open (http://\S+)", line):
            url = m.group(1)
        if m := re.search(r"password: (\S+)", line):
            password = m.group(1)
        if line.startswith("machines:"):
            machines = line.split(":", 1)[1].split()
    if url is None or machines is None:
        process.kill()
        raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
    return Server(url, machines, process, data_dir, log_path, password=password)


def stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGINT)
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One demo server with 3 simulated machines for the whole session."""
    server = start_demo(tmp_path_factory.mktemp("demo"), "--machines", "3")
    yield server
    stop(server)


@pytest.fixture
def plain_logging() -> Iterator[None]:
    """No root log handler while a ``livedata`` command runs in-process (modules that run
    one: ``pytestmark = pytest.mark.usefixtures("plain_logging")``).

    An earlier in-process ``livedata demo``/``serve`` test may have left one writing to
    a capture stream that is closed by now (``setup_logging``).
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
