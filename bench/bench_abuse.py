"""Abuse figures: what hostile clients do to a running demo (loopback only).

Starts ``livedata demo --machines 2 --period 0.1`` (10 Hz: a live client should get
10 messages a second) with the default limits, watches it with a /healthz prober
(every 50 ms), a live WebSocket client and an RSS sampler, and runs each attack in
turn after a quiet baseline phase of the same run:

- ``chunked``: 4 parallel chunked 512 MiB login bodies (the issue's 3.1 GB case);
- ``idle``: 25,000 idle connections from two child processes (the fd limit of
  each process here is 20,000; the server's connection cap is 90 % of it);
- ``slow``: 500 slowloris connections (a header byte every 0.5 s);
- ``lockout``: 6 wrong passwords for admin from each of 5 addresses, then the
  right password from a sixth;
- ``dbc``: a 10,000-signal DBC fetched by 10 viewers at once (twice: cold, warm);
- ``writes``: 20 rows a day ahead and 20 × 500 new fields through /db/write.

Per phase: /healthz p50 and max latency, failed probes, live messages per second
and the longest gap, the server's peak RSS, the load average.  ``--src DIR`` runs the
server from another source tree; ``--before DIR`` runs the same phases first with the
server from ``DIR`` (e.g. a worktree of ``main``'s ``src``), then from this tree, in one
invocation; ``--only`` picks attacks.  Run: ``PYTHONPATH=src python3 bench/bench_abuse.py``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from tests.conftest import Server, start_demo, stop
from tests.security import abuse


def _chunked(server: Server) -> str:
    results: list[tuple[int, bytes]] = []
    threads = [
        threading.Thread(target=lambda: results.append(abuse.chunked_body(server, 512 * 2**20)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return "; ".join(f"{sent / 2**20:.0f} MiB sent → {answer.decode()}" for sent, answer in results)


def _idle(server: Server) -> str:
    lines = abuse.idle_flood(server, 25_000, hold=5.0)
    return "opened/failed per process: " + ", ".join(lines)


def _slow(server: Server) -> str:
    return f"{abuse.slow_headers(server, 500, seconds=30)} of 500 closed by the server"


def _lockout(server: Server) -> str:
    statuses = abuse.lockout_attempts(server, "admin", addresses=5, tries=6)
    right = httpx.post(
        f"{server.url}/api/auth/login",
        json={"username": "admin", "password": server.password},
        timeout=30,
    ).status_code
    return f"attacker: {statuses.count(401)}×401 {statuses.count(429)}×429; real admin: {right}"


def _dbc(server: Server) -> str:
    start = time.monotonic()
    upload = httpx.post(
        f"{server.url}/api/resources/demo/dbc",
        json={"name": "huge.dbc", "content": abuse.big_dbc(10_000)},
        headers=server.headers,
        timeout=300,
    )
    took = time.monotonic() - start
    if upload.status_code != 201:
        return f"upload {upload.status_code}: {upload.text[:100]}"
    path = f"/api/resources/demo/dbc/{upload.json()['id']}"
    out = [f"upload {took:.1f} s"]
    for label in ("cold", "warm"):
        start = time.monotonic()
        statuses = abuse.fetch_concurrently(server, path, 10)
        out.append(f"10 GETs {label}: {time.monotonic() - start:.2f} s {sorted(set(statuses))}")
    return "; ".join(out)


def _writes(server: Server) -> str:
    chassis = server.machines[1]
    future, flood = [], []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as client:
        for n in range(20):
            now = int(time.time() * 1000)
            for sink, rows in (
                (future, [[f"{chassis}.cpu_usage", now + 86_400_000, 1.0]]),
                (flood, [[f"{chassis}.flood_{n}_{k}", now, 1.0] for k in range(500)]),
            ):
                sink.append(
                    client.post(
                        "/db/write/client_raw_data",
                        params={"timeformat": "ms"},
                        json={"data": {"rows": rows}},
                    ).status_code
                )
        size = len(client.get("/api/resources/demo/machines").content)
    return (
        f"future: {future.count(400)}/20 refused; flood: {flood.count(200)} accepted, "
        f"{flood.count(400)} refused; machines list {size / 1024:.0f} KB"
    )


ATTACKS: dict[str, Callable[[Server], str]] = {
    "chunked": _chunked,
    "idle": _idle,
    "slow": _slow,
    "lockout": _lockout,
    "dbc": _dbc,
    "writes": _writes,
}


def run(src: str | None, names: list[str], baseline: float) -> None:
    """Every phase against one demo server, run from ``src`` (``None``: this tree)."""
    env_path = os.environ.get("PYTHONPATH")
    if src:
        os.environ["PYTHONPATH"] = src
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = start_demo(Path(tmp), "--machines", "2", "--period", "0.1")
        finally:
            if env_path is not None:
                os.environ["PYTHONPATH"] = env_path
        try:
            with abuse.Monitor(server, server.machines[0]) as monitor:
                print(f"server pid {server.process.pid} from {src or 'this tree'}")
                header = (
                    f"{'phase':10} {'probes':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>8} {'fail':>5} "
                    f"{'live/s':>7} {'gap s':>6} {'RSS MB':>7} {'load':>5}  what happened"
                )
                print(header)
                rows = [("baseline", lambda s: (time.sleep(baseline), "quiet")[1])]
                rows += [(name, ATTACKS[name]) for name in names]
                for name, attack in rows:
                    since = monitor.mark()
                    failures = len(monitor.health_failures)
                    monitor.rss_max = 0
                    what = attack(server)
                    time.sleep(1.0)
                    f = monitor.phase(since)
                    print(
                        f"{name:10} {f['health_probes']:6.0f} {f['health_p50_ms']:7.1f} "
                        f"{f['health_p99_ms']:7.1f} "
                        f"{f['health_max_ms']:8.1f} {len(monitor.health_failures) - failures:5d} "
                        f"{f['live_per_s']:7.1f} {f['live_max_gap_s']:6.2f} "
                        f"{monitor.rss_max / 2**20:7.0f} {os.getloadavg()[0]:5.1f}  {what}",
                        flush=True,
                    )
                if monitor.live_errors:
                    print("live client:", monitor.live_errors)
            log = server.log()
            print(f"server log: {len(log) / 1024:.0f} KB, {log.count(chr(10))} lines")
        finally:
            stop(server)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="run the server from this source tree")
    parser.add_argument("--before", help="first run every phase with the server from this tree")
    parser.add_argument("--only", help="comma-separated attacks (default all)")
    parser.add_argument("--baseline", type=float, default=5.0, help="quiet seconds first")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ATTACKS)
    if args.before:
        run(args.before, names, args.baseline)
    run(args.src, names, args.baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
