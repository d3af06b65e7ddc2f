"""The store interface; its contract is tested by ``tests/store/contract.py`` on every backend.

The store keeps values in a narrow shape, one row per
(tenant, chassis, msg_type, field, ts).  Writing the same key twice keeps one row
(writes are idempotent, so a record delivered twice is stored once).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from livedata.model import Record, Value

Series = dict[str, list[tuple[int, Value]]]
"""Per field, ``[ts_ms, value]`` pairs in time order: what an ECharts time axis takes."""


class Store(abc.ABC):
    """Where every record is kept.

    Under stress: ``write`` raises :class:`~livedata.errors.StoreError` when the
    engine fails; nothing is half-written in a way that a retry of the same batch
    would duplicate.  ``query`` never returns more than ``limit`` points per field
    (the oldest are dropped first, so a chart keeps its newest data).
    """

    url: str

    def __init__(self, url: str) -> None:
        self.url = url

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and create the schema if needed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release connections."""

    @abc.abstractmethod
    async def write(self, records: Sequence[Record]) -> int:
        """Store ``records``; return the number of values (points) written."""

    @abc.abstractmethod
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
        """Values of ``fields`` with ``start_ms <= ts <= end_ms``; every asked field is a key."""

    @abc.abstractmethod
    async def delete_before(self, ts_ms: int) -> int:
        """Retention: delete values older than ``ts_ms``; return how many were deleted."""

    @abc.abstractmethod
    async def latest_ts(self, tenant: str, chassis: str, msg_type: str) -> int | None:
        """Timestamp of the newest stored value of a machine and message type."""
