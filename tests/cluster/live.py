"""A reconnecting live client of one machine, shared by the cluster test and
``bench/bench_cluster.py --faults``: it moves to the next gateway when its own dies."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import orjson
import websockets

from livedata.sim.demo import ORG


@dataclass
class Client:
    """A WebSocket client of ``chassis``'s live ``vehicle_can`` ``fields``, on ``gateways`` in turn.

    Every message received is kept with its wall-clock receipt time (``time.time()``).
    Under stress: a refused or broken connection is retried after 0.5 s on the next
    gateway of the list (``reconnects`` counts them), until ``stop`` is set.
    """

    chassis: str
    gateways: list[str]
    token: str
    fields: tuple[str, ...]
    received: list[tuple[float, dict]] = field(default_factory=list)
    reconnects: int = 0
    used: list[str] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        for gateway in itertools.cycle(self.gateways):
            if stop.is_set():
                return
            url = (
                gateway.replace("http", "ws")
                + f"/api/resources/{ORG}/_common/datasets/{self.chassis}/live?msgType=vehicle_can"
            )
            try:
                headers = {"Authorization": f"Bearer {self.token}"}
                async with websockets.connect(
                    url, open_timeout=3, additional_headers=headers
                ) as ws:
                    self.used.append(gateway)
                    init = {"type": "INIT_FIELD_LIST", "payload": list(self.fields)}
                    await ws.send(orjson.dumps(init).decode())
                    while not stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 1.0)
                        except TimeoutError:
                            continue
                        self.received.append((time.time(), orjson.loads(raw)))
                    return
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError):
                self.reconnects += 1
                await asyncio.sleep(0.5)
