"""A throwaway ``redis-server`` on a free loopback port, without persistence."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port, log_file, stop_process, wait_port


@dataclass
class RedisServer:
    """A running ``redis-server``; :meth:`restart` comes back on the same port."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        with log_file(self.directory, "redis").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, timeout=10, process=self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis(directory: Path) -> RedisServer:
    """Start ``redis-server`` with ``directory`` as working directory and log place."""
    server = RedisServer(free_port(), directory)
    server.start()
    return server
