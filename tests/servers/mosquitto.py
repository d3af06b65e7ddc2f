"""Mosquitto started from the installed binary on a free loopback port.

Anonymous access (unless ``anonymous=False``), no persistence (a restart forgets sessions and retained
messages), the log in ``<directory>/mosquitto.log``.  ``extra`` adds configuration
lines (a password file and an ACL, say); paths in it must be readable by the user
Mosquitto runs as, which is the current user (``user`` is set to it, so running the
tests as root does not make Mosquitto drop to the ``mosquitto`` user).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, log_file, stop_process, wait_port

BINARY = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


@dataclass
class Mosquitto:
    """A running broker; ``restart()`` brings it back on the same port, ``reload()`` is SIGHUP."""

    port: int
    conf: Path
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """Stop at once (SIGKILL): no goodbye to the clients."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        self.stop()
        self.process = _spawn(self.conf, self.log, self.port)

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP: re-read the password file and ACL; returns once the broker has."""
        before = self.read_log().count("Reloading config")
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.read_log().count("Reloading config") == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not reload in {timeout} s")
            time.sleep(0.05)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")


def start_mosquitto(directory: Path, extra: str = "", *, anonymous: bool = True) -> Mosquitto:
    """Start a broker with its configuration and log in ``directory``."""
    if not Path(BINARY).exists():
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        f"allow_anonymous {'true' if anonymous else 'false'}\n"
        "persistence false\n"
        f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
        "log_dest stderr\n"
        "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        "connection_messages true\n"
        "max_queued_messages 10000\n"
        f"{extra}\n"
    )
    log = log_file(directory, "mosquitto")
    return Mosquitto(port, conf, log, _spawn(conf, log, port))


def _spawn(conf: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        process = subprocess.Popen([BINARY, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 10.0, process)
    except BaseException:
        stop_process(process)
        raise
    return process
