"""The agent's bounded on-disk queue: what a full spool drops, and what it keeps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from livedata.agent import Spool
from livedata.agent import spool as spool_module


def payloads(spool: Spool) -> list[bytes]:
    return [p for _, _, p in spool.oldest(1000)]


def test_full_spool_drops_the_oldest_rows_first(tmp_path: Path) -> None:
    """Past max_rows each push drops the oldest row, and the drops are counted."""
    spool = Spool(tmp_path / "spool.sqlite", max_rows=3)
    try:
        dropped = [spool.push("client_raw_data", b"m%d" % i) for i in range(5)]
        assert dropped == [0, 0, 0, 1, 1]
        assert payloads(spool) == [b"m2", b"m3", b"m4"]
        assert spool.rows == 3 and spool.dropped == 2
    finally:
        spool.close()


def test_spool_byte_bound_drops_as_many_old_rows_as_needed(tmp_path: Path) -> None:
    """Past max_bytes the oldest rows go until the new payload fits."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=10)
    try:
        for i in range(3):
            spool.push("vehicle_can", bytes([i]) * 4)
        assert spool.rows == 2 and spool.bytes == 8
        assert spool.push("vehicle_can", b"x" * 9) == 2
        assert payloads(spool) == [b"x" * 9] and spool.dropped == 3
    finally:
        spool.close()


def test_a_payload_larger_than_the_spool_is_dropped_alone(tmp_path: Path) -> None:
    """A single message larger than max_bytes is not stored (counted) and the spool is not emptied for it."""
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=10)
    try:
        spool.push("vehicle_can", b"keep")
        assert spool.push("vehicle_can", b"y" * 11) == 1
        assert payloads(spool) == [b"keep"] and spool.dropped == 1
    finally:
        spool.close()


def test_rows_and_the_drop_count_survive_a_restart(tmp_path: Path) -> None:
    """Reopening the spool file finds the same rows, in order, and the same drop count."""
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_rows=2)
    for i in range(4):
        spool.push("client_raw_data", b"m%d" % i)
    spool.close()
    again = Spool(path, max_rows=2)
    try:
        assert payloads(again) == [b"m2", b"m3"]
        assert again.rows == 2 and again.dropped == 2
    finally:
        again.close()


def test_rows_leave_only_when_deleted(tmp_path: Path) -> None:
    """oldest() does not remove rows; delete() does, and deleting a dropped row is harmless."""
    spool = Spool(tmp_path / "spool.sqlite", max_rows=2)
    try:
        spool.push("client_raw_data", b"a")
        ((row_id, msg_type, payload),) = spool.oldest(10)
        assert (msg_type, payload) == ("client_raw_data", b"a")
        assert spool.oldest(10) == [(row_id, msg_type, payload)]
        spool.push("client_raw_data", b"b")
        spool.push("client_raw_data", b"c")  # drops "a" while it may be in flight
        spool.delete(row_id)
        assert payloads(spool) == [b"b", b"c"] and spool.rows == 2
        spool.delete(spool.oldest(1)[0][0])
        assert payloads(spool) == [b"c"] and spool.rows == 1 and spool.bytes == 1
    finally:
        spool.close()


def test_drops_are_logged_first_at_once_then_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first drop is logged at once; while the spool stays full drops are summed into one line a minute."""
    caplog.set_level(logging.WARNING, logger="livedata.agent.spool")
    clock = [1000.0]
    monkeypatch.setattr(spool_module.time, "monotonic", lambda: clock[0])
    spool = Spool(tmp_path / "spool.sqlite", max_rows=1)
    try:
        spool.push("client_raw_data", b"0")
        spool.push("client_raw_data", b"1")
        assert len(caplog.records) == 1 and "dropped 1 message" in caplog.records[0].getMessage()
        for i in range(5):
            clock[0] += 10
            spool.push("client_raw_data", b"%d" % (i + 2))
        assert len(caplog.records) == 1
        clock[0] += 15
        spool.push("client_raw_data", b"x")
        assert len(caplog.records) == 2
        message = caplog.records[1].getMessage()
        assert "dropped 6 message" in message and "7 dropped in all" in message
    finally:
        spool.close()


def test_an_unreadable_spool_file_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool file that is not a database is renamed *.corrupt-* and an empty spool starts."""
    path = tmp_path / "spool.sqlite"
    path.write_bytes(b"this is not a database, it is noise" * 100)
    spool = Spool(path)
    try:
        assert spool.rows == 0
        spool.push("client_raw_data", b"new")
        assert payloads(spool) == [b"new"]
    finally:
        spool.close()
    assert len(list(tmp_path.glob("spool.sqlite.corrupt-*"))) == 1
    assert any("unreadable" in r.getMessage() for r in caplog.records)
