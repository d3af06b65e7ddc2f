"""The longest event-loop turn of the HTTP server while a flood connects and then closes.

A child process runs livedata's server layer (``uvicorn_config`` with a ``/healthz`` app,
served the way ``livedata serve`` serves it) on a loopback port; a grandchild opens
``--connections`` idle connections as fast as it can, holds them, then closes them all at
once.  A ticker in the server's loop measures every gap between two of its turns, in
CPU time of the loop's thread (so other processes on a busy machine do not count) and in
wall time (the garbage collector tuned as ``livedata serve`` tunes it; its own CPU is
also shown apart).  Printed per phase (connects, closes): the longest and the 99th-percentile gap,
and the server's CPU for the phase.  ``--before DIR`` runs the same first with the server
layer from another source tree (e.g. a worktree of ``main``'s ``src``).

Run: ``PYTHONPATH=src python3 bench/bench_accept.py --before /tmp/base/src``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

SERVER = r"""
import asyncio, gc, socket, sys, time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from livedata.cli.common import tune_gc
from livedata.gateway import server as layer
from livedata.settings import Settings

count, event_loop = int(sys.argv[1]), sys.argv[2]
FLOOD = '''
import socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
print("open", flush=True)
sys.stdin.readline()
for sock in socks:
    sock.close()
print("closed", flush=True)
sys.stdin.readline()
'''


async def healthz(request):
    return PlainTextResponse("ok")


async def main():
    loop = asyncio.get_running_loop()
    settings = Settings(event_loop=event_loop, header_timeout=300.0)  # idle stays idle
    config = layer.uvicorn_config(Starlette(routes=[Route("/healthz", healthz)]), settings)
    server = getattr(layer, "LimitedServer", None) or __import__("uvicorn").Server
    server = server(config)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(layer.ACCEPT_BATCH)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    gate = config.http_protocol_class.gate
    tune_gc()  # as livedata serve does
    gaps = []
    last = [time.thread_time(), time.perf_counter()]
    collecting = [0.0, 0.0]  # CPU in collections since the last tick, start of this one

    def collection(phase, info):
        if phase == "start":
            collecting[1] = time.thread_time()
        else:
            collecting[0] += time.thread_time() - collecting[1]

    gc.callbacks.append(collection)

    def tick():
        now = [time.thread_time(), time.perf_counter()]
        gaps.append((now[0] - last[0], now[1] - last[1], collecting[0]))
        last[:] = now
        collecting[0] = 0.0
        loop.call_later(0.001, tick)

    tick()

    async def phase(name, wait):
        gaps.clear()
        cpu = time.process_time()
        await wait()
        cpu = time.process_time() - cpu
        cpu_gaps = sorted(g[0] for g in gaps)
        wall_gaps = sorted(g[1] for g in gaps)
        without_gc = max(g[0] - g[2] for g in gaps)
        p99 = len(gaps) * 99 // 100
        print(
            f"{name:9} longest turn {cpu_gaps[-1] * 1000:6.1f} ms CPU ({wall_gaps[-1] * 1000:6.1f} ms wall,"
            f" {without_gc * 1000:6.1f} ms CPU without GC; longest GC {max(g[2] for g in gaps) * 1000:5.1f} ms)"
            f"  p99 {cpu_gaps[p99] * 1000:5.1f} ms CPU  server CPU {cpu:5.2f} s",
            flush=True,
        )

    flood = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOOD, str(port), str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.05)  # starting the child (a fork) is no turn of the server's

    async def opened():
        await flood.stdout.readline()
        while len(gate) < count:
            await asyncio.sleep(0.01)

    async def closed():
        flood.stdin.write(b"\n")
        await flood.stdout.readline()
        while len(gate) > 0:
            await asyncio.sleep(0.01)

    await phase("connects", opened)
    await phase("closes", closed)
    flood.stdin.write(b"\n")
    await flood.wait()
    server.should_exit = True
    await serving


factory = layer.event_loop_factory(event_loop)
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
"""


def run(src: str, count: int, event_loop: str) -> None:
    """One server from ``src``: its figures, printed as they come."""
    print(f"server layer from {src}, {event_loop}, load {os.getloadavg()[0]:.1f}", flush=True)
    env = {**os.environ, "PYTHONPATH": src}
    subprocess.run([sys.executable, "-c", SERVER, str(count), event_loop], env=env, check=True)
    print(f"  load after {os.getloadavg()[0]:.1f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", help="first run the server layer from this source tree")
    parser.add_argument("--connections", type=int, default=15_000)
    parser.add_argument("--loops", default="uvloop,asyncio", help="event loops to run on")
    args = parser.parse_args(argv)
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    for event_loop in args.loops.split(","):
        for src in [args.before, os.path.normpath(here)] if args.before else [here]:
            run(src, args.connections, event_loop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
