"""The metadata contract on SQLite."""

from __future__ import annotations

import pytest

from tests.metadata.contract import MetadataContract


class TestSQLiteMetadata(MetadataContract):
    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path) -> None:
        self.path = tmp_path / "meta.db"

    def make_url(self) -> str:
        return f"sqlite:///{self.path}"
