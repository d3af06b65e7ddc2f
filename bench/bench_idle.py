"""What idle live connections cost the gateway: CPU of keep-alive pings and timers, memory.

For each target in turn (``--targets``, default ``before,livedata`` with ``--before``):
the gateway role alone on core 0 (as ``bench_fanout.py`` starts it: Redis pub/sub,
SQLite metadata, one admin token), ``--clients`` authenticated live WebSocket
connections from lean clients on core 1 that answer pings and receive nothing else
(no publisher), then ``--window`` seconds of server CPU with nothing to deliver: what
remains is the per-connection housekeeping (keep-alive pings and their pongs, the
timers behind them, the credential re-check).  ``--ping S`` makes the pings S seconds
apart instead of 20 (and their timeout S), to magnify that cost in a short window;
``--recheck S`` does the same for the credential re-check (every 30 s).

``--transport sse`` or ``sio`` opens SSE watch streams or Socket.IO WebSocket clients
instead (the clients of ``bench_transports.py``; at most 1,000 SSE streams and 5,000
Socket.IO clients per process).  They are not quite idle: an SSE stream gets its 1 s
period's events, a Socket.IO client ``dashboard:update`` every second.

Printed per target: connected clients, server CPU % of one core in the window and per
connection, KB per idle connection, the load average; and the ratios to the first.

    python bench/bench_idle.py --before /tmp/main --clients 10000 --ping 2
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fanout import chassis, lean_client_worker, server, start_clients, stop_clients
from bench_transports import sio_worker, sse_worker

WORKERS = {"ws": lean_client_worker, "sse": sse_worker, "sio": sio_worker}


def run(target: str, args: argparse.Namespace, redis_url: str, tmp: Path) -> dict[str, float]:
    with server(target, args, redis_url, tmp) as (proc, url, gc_log):
        ps = psutil.Process(proc.pid)
        ps = next((c for c in [ps, *ps.children(recursive=True)] if "python" in c.name()), ps)
        time.sleep(1.0)
        rss0 = ps.memory_info().rss
        targets = [chassis(i % args.machines) for i in range(args.clients)]
        if args.transport == "sse":
            url = url.replace("ws://", "http://")
        pipes, workers = start_clients(WORKERS[args.transport], url, targets, args.client_procs)
        try:
            t0 = time.time()
            connected = sum(p.recv()[1] for p in pipes)
            t1 = time.time()
            flood = collections(gc_log, t0, t1)
            time.sleep(args.settle)
            kb = (ps.memory_info().rss - rss0) / 1024 / max(1, connected)
            cpu0 = ps.cpu_times()
            time.sleep(args.window)
            cpu1 = ps.cpu_times()
            idle = collections(gc_log, t1 + args.settle, time.time())
            cpu = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / args.window
            for p in pipes:
                p.send(("report",))
            gone = sum(p.recv()[0].get("disconnected", 0) for p in pipes)
        finally:
            stop_clients(pipes, workers)
    load = os.getloadavg()[0]
    print(
        f"  {target}: {connected} connected, {gone} dropped, CPU {cpu:.1f} % "
        f"({cpu * 1e4 / max(1, connected):.2f} µs/s per connection), {kb:.1f} KB per connection, "
        f"load {load:.1f}\n    GC while {connected} connected in {t1 - t0:.1f} s: {flood}\n"
        f"    GC in the idle window: {idle}",
        flush=True,
    )
    return {"cpu": cpu, "kb": kb, "load": load, "connected": connected}


def collections(gc_log: Path, t0: float, t1: float) -> str:
    """The collections of 1 ms or more (CPU) between ``t0`` and ``t1``: count and longest
    per generation."""
    pauses: dict[int, list[float]] = {}
    if gc_log.exists():
        for line in gc_log.read_text().splitlines():
            if line.startswith("#"):
                if os.environ.get("BENCH_GC_COUNT"):
                    print("   ", line)
                continue
            at, gen, took = line.split()
            if t0 <= float(at) <= t1:
                pauses.setdefault(int(gen), []).append(float(took))
    return (
        ", ".join(
            f"gen{g} {len(p)}× (longest {max(p) * 1000:.1f} ms)" for g, p in sorted(pauses.items())
        )
        or "none of 1 ms or more"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--machines", type=int, default=100)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--ping", type=float, default=0.0, help="seconds between pings")
    parser.add_argument("--recheck", type=float, default=0.0, help="seconds between re-checks")
    parser.add_argument("--targets", default="")
    parser.add_argument("--transport", choices=sorted(WORKERS), default="ws")
    parser.add_argument(
        "--gc-threshold", default="", metavar="G0,G1,G2", help="gc.set_threshold of the gateways"
    )
    parser.add_argument("--before", metavar="DIR", help="a checkout of earlier code")
    args = parser.parse_args()
    targets = args.targets or ("before,livedata" if args.before else "livedata")
    if args.ping:
        os.environ["BENCH_WS_PING"] = str(args.ping)
    if args.recheck:
        os.environ["BENCH_RECHECK"] = str(args.recheck)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the clients inherit it
    from tests.servers.redis import start_redis

    tmp = Path(tempfile.mkdtemp(prefix="bench_idle_"))
    redis = None
    try:
        redis = start_redis(tmp / "redis")
        print(
            f"{args.clients} idle {args.transport} connections, pings every {args.ping or 20:g} s, "
            f"{args.window:g} s window; server on core 0, clients on core 1",
            flush=True,
        )
        results = {t: run(t, args, redis.url, tmp) for t in targets.split(",")}
        first = next(iter(results))
        for name, r in results.items():
            if name != first:
                print(
                    f"{name}/{first}: CPU {r['cpu'] / max(1e-9, results[first]['cpu']):.2f}x, "
                    f"KB per connection {r['kb'] / max(1e-9, results[first]['kb']):.2f}x"
                )
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
