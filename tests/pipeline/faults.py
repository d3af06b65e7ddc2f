"""Fault injection for the backpressure tests: a real store or log that fails or stalls on
demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence

from livedata.bus.base import Log
from livedata.errors import BusError, StoreError
from livedata.model import Record, Value
from livedata.store.base import LatestWindow, Series, Store
from livedata.store.frames import FrameBlob


class FlakyStore(Store):
    """Wraps a real store: while ``down`` every call raises StoreError; while ``gate`` is
    clear, writes and replacements wait for it (a stalled store)."""

    def __init__(self, inner: Store, *, down: bool = False) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.down = down
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0
        self.started = 0
        """Writes begun (past the outage check), finished or not."""
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            self.failures += 1
            raise StoreError(f"{self.url}: injected outage")

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def write(self, records: Sequence[Record]) -> int:
        self._check()
        self.started += 1
        await self.gate.wait()
        self._check()
        self.writes += 1
        return await self.inner.write(records)

    async def query(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        limit: int = 100_000,
    ) -> Series:
        self._check()
        return await self.inner.query(tenant, chassis, msg_type, fields, start_ms, end_ms, limit)

    async def downsample(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        fields: Sequence[str],
        start_ms: int,
        end_ms: int,
        buckets: int,
    ) -> Series:
        self._check()
        return await self.inner.downsample(
            tenant, chassis, msg_type, fields, start_ms, end_ms, buckets
        )

    async def delete_before(self, ts_ms: int) -> int:
        self._check()
        return await self.inner.delete_before(ts_ms)

    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        self._check()
        return await self.inner.latest_ts(tenant, chassis, msg_type)

    async def _latest_rows(
        self, tenant: str, chassis: Sequence[str]
    ) -> Iterable[tuple[str, str, int]]:
        self._check()
        return await self.inner._latest_rows(tenant, chassis)

    async def _latest_value_rows(
        self, tenant: str, msg_type: str, windows: Sequence[LatestWindow]
    ) -> Iterable[tuple[str, str, Value]]:
        self._check()
        return await self.inner._latest_value_rows(tenant, msg_type, windows)

    async def machine_points(self, tenant: str, chassis: str) -> int:
        self._check()
        return await self.inner.machine_points(tenant, chassis)

    async def delete_machine(self, tenant: str, chassis: str) -> int:
        self._check()
        return await self.inner.delete_machine(tenant, chassis)

    async def write_frames(self, blobs: Sequence[FrameBlob]) -> int:
        self._check()
        return await self.inner.write_frames(blobs)

    async def read_frames(
        self, tenant: str, chassis: str, start_ms: int, end_ms: int, limit: int = 1_000
    ) -> list[FrameBlob]:
        self._check()
        return await self.inner.read_frames(tenant, chassis, start_ms, end_ms, limit)

    async def count_frames(self, tenant: str, chassis: str, start_ms: int, end_ms: int) -> int:
        self._check()
        return await self.inner.count_frames(tenant, chassis, start_ms, end_ms)

    async def delete_frames_before(self, ts_ms: int) -> int:
        self._check()
        return await self.inner.delete_frames_before(ts_ms)

    async def replace_values(
        self,
        tenant: str,
        chassis: str,
        msg_type: str,
        start_ms: int,
        end_ms: int,
        records: Sequence[Record],
        keep: Sequence[str] = (),
    ) -> int:
        self._check()
        await self.gate.wait()
        return await self.inner.replace_values(
            tenant, chassis, msg_type, start_ms, end_ms, records, keep
        )


class FlakyLog(Log):
    """Wraps a real log: while ``down`` every append raises BusError (Kafka restarting);
    while ``gate`` is clear, appends wait for it (a stopped Kafka before its timeout)."""

    def __init__(self, inner: Log) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.down = False
        self.failures = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def append(self, records: Sequence[Record]) -> None:
        if self.down:
            self.failures += 1
            raise BusError(f"{self.url}: injected outage")
        await self.gate.wait()
        await self.inner.append(records)

    def consume(self, group: str) -> AsyncIterator[list[Record]]:
        return self.inner.consume(group)
