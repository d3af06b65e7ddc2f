"""A throwaway ``clickhouse-server`` (Debian's 18.16 here) on free loopback ports.

Everything lives in one directory: ``config.xml`` and ``users.xml`` written here
(user ``default`` without password, loopback only), the data ``path``,
``tmp_path``, ``user_files`` and the logs.  The native (TCP), HTTP and interserver
ports are picked free; :meth:`ClickHouseServer.restart` comes back on the same
ports with the same data.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import free_port, log_file, stop_process, wait_port

_CONFIG = """<?xml version="1.0"?>
<yandex>
  <logger>
    <level>warning</level>
    <log>{dir}/log/clickhouse-server.log</log>
    <errorlog>{dir}/log/clickhouse-server.err.log</errorlog>
    <size>10M</size>
    <count>1</count>
  </logger>
  <tcp_port>{tcp_port}</tcp_port>
  <http_port>{http_port}</http_port>
  <interserver_http_port>{interserver_port}</interserver_http_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{dir}/data/</path>
  <tmp_path>{dir}/tmp/</tmp_path>
  <user_files_path>{dir}/user_files/</user_files_path>
  <format_schema_path>{dir}/format_schemas/</format_schema_path>
  <users_config>{dir}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <max_concurrent_queries>100</max_concurrent_queries>
  <mlock_executable>false</mlock_executable>
</yandex>
"""

_USERS = """<?xml version="1.0"?>
<yandex>
  <profiles>
    <default>
      <max_memory_usage>4000000000</max_memory_usage>
      <!-- idle connections notice a shutdown within this many seconds (default 10) -->
      <poll_interval>1</poll_interval>
    </default>
  </profiles>
  <users>
    <default>
      <password></password>
      <networks>
        <ip>127.0.0.1</ip>
        <ip>::1</ip>
      </networks>
      <profile>default</profile>
      <quota>default</quota>
    </default>
  </users>
  <quotas>
    <default>
      <interval>
        <duration>3600</duration>
        <queries>0</queries>
        <errors>0</errors>
        <result_rows>0</result_rows>
        <read_rows>0</read_rows>
        <execution_time>0</execution_time>
      </interval>
    </default>
  </quotas>
</yandex>
"""


def clickhouse_binary() -> str:
    """The server binary, or RuntimeError naming the package to install."""
    for name in ("clickhouse-server", "/usr/sbin/clickhouse-server", "clickhouse"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("clickhouse-server is not installed (apt-get install clickhouse-server)")


@dataclass
class ClickHouseServer:
    """A running ``clickhouse-server``; :meth:`restart` keeps ports and data."""

    directory: Path
    tcp_port: int
    http_port: int
    interserver_port: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def url(self, database: str = "default") -> str:
        """A ``clickhouse://`` store URL for ``database`` on this server."""
        return f"clickhouse://default@127.0.0.1:{self.tcp_port}/{database}"

    def write_config(self) -> Path:
        for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        config = self.directory / "config.xml"
        config.write_text(
            _CONFIG.format(
                dir=self.directory,
                tcp_port=self.tcp_port,
                http_port=self.http_port,
                interserver_port=self.interserver_port,
            )
        )
        (self.directory / "users.xml").write_text(_USERS)
        return config

    def start(self, timeout: float = 30.0) -> None:
        config = self.write_config()
        binary = clickhouse_binary()
        command = [binary, f"--config-file={config}"]
        if Path(binary).name == "clickhouse":  # the single-binary layout of newer releases
            command = [binary, "server", f"--config-file={config}"]
        with log_file(self.directory / "log", "stdout").open("ab") as out:
            self.process = subprocess.Popen(
                command, cwd=self.directory, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_port(self.tcp_port, timeout=timeout, process=self.process)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20.0)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_clickhouse(directory: Path) -> ClickHouseServer:
    """Start ``clickhouse-server`` with its config, data and logs under ``directory``."""
    server = ClickHouseServer(directory, free_port(), free_port(), free_port())
    server.start()
    return server
