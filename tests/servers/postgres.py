"""A throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``) on a free loopback port.

The cluster lives in a temporary directory of its own (not under pytest's
``tmp_path``, which the ``postgres`` user cannot enter): ``data/`` made by
``initdb`` with trust authentication for the superuser ``postgres``, ``sock/``
for the Unix socket, ``postgres.log``.  PostgreSQL refuses to run as root, so
when the tests run as root every command runs as the ``postgres`` user
(``runuser``) and the directory is handed to it; otherwise as the current user.

:meth:`PostgresServer.restart` comes back on the same port with the same data;
:meth:`PostgresServer.stop` with ``remove=True`` also deletes the directory.
``fsync=False`` (the tests' default) turns off ``fsync`` for speed: data still
survives a clean stop/restart, only not a crash of the machine.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers import free_port, wait_port


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server program (``initdb``, ``pg_ctl``), newest version first."""
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
        reverse=True,
    )
    found = candidates[0] if candidates else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found (apt-get install postgresql)")
    return found


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster on 127.0.0.1:``port``."""

    directory: Path
    port: int
    fsync: bool = True

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` store URL for ``database`` as the superuser."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, timeout: float = 60.0) -> None:
        result = subprocess.run(
            _as_server_user(list(command)),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\n{tail}"
            )

    def init(self) -> None:
        (self.directory / "sock").mkdir(exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (self.directory, self.directory / "sock"):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self, timeout: float = 30.0) -> None:
        options = (
            f"-p {self.port} -k {self.directory / 'sock'} -c listen_addresses=127.0.0.1"
            f" -c max_connections=200"
        )
        if not self.fsync:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(int(timeout)),
            "start",
            timeout=timeout + 10,
        )
        wait_port(self.port, timeout=timeout)

    def stop(self, remove: bool = False) -> None:
        """Stop the cluster (fast shutdown; killed if it hangs); ``remove`` deletes its files."""
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                self._kill()
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _kill(self) -> None:
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            pid_file.unlink(missing_ok=True)

    def restart(self) -> None:
        self.stop()
        self.start()


def start_postgres(fsync: bool = False) -> PostgresServer:
    """``initdb`` a cluster in a fresh temporary directory and start it on a free port."""
    directory = Path(tempfile.mkdtemp(prefix="livedata-pg-"))
    server = PostgresServer(directory, free_port(), fsync=fsync)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop(remove=True)
        raise
    return server
