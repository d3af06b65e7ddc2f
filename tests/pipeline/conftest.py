"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from livedata.metadata import Metadata


@pytest.fixture
async def meta(tmp_path: Path) -> AsyncIterator[Metadata]:
    """A fresh SQLite metadata database with organisation ``acme``."""
    meta = Metadata(f"sqlite:///{tmp_path}/meta.db")
    await meta.start()
    await meta.ensure_org("acme", "Acme")
    yield meta
    await meta.close()
