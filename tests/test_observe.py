"""Log lines: role and machine context, and no secrets from query strings."""

from __future__ import annotations

import gc
import logging

from prometheus_client import REGISTRY

from livedata import observe
from livedata.observe import LogFormatter, log_context, time_gc


def _line(message: str, *args: object) -> str:
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, message, args, None)
    return LogFormatter().format(record)


def test_access_tokens_in_logged_urls_are_masked() -> None:
    """A WebSocket URL logged with ?access_token=… shows *** instead of the token."""
    line = _line(
        '%s - "WebSocket %s" [accepted]',
        "127.0.0.1:5000",
        "/api/resources/demo/_common/datasets/WL-0001/live?access_token=1.2.abcdef&msgType=x",
    )
    assert "abcdef" not in line
    assert "access_token=***&msgType=x" in line


def test_lines_carry_role_and_machine() -> None:
    """A record logged inside log_context names the role and the machine."""
    with log_context(role="ingest", machine="WL-0001"):
        line = _line("stored %d records", 5)
    assert "INFO role=ingest machine=WL-0001 uvicorn.error: stored 5 records" in line


def test_time_gc_counts_the_seconds_of_each_collection_by_generation() -> None:
    """Once time_gc is on (once, however often called), a full collection adds its CPU time
    under generation 2 of livedata_gc_seconds_total and counts in livedata_gc_collections_total."""
    sample = "livedata_gc_seconds_total"
    time_gc()
    time_gc()
    try:
        assert gc.callbacks.count(observe._gc_timer) == 1
        before = REGISTRY.get_sample_value(sample, {"generation": "2"}) or 0.0
        count = "livedata_gc_collections_total"
        collections = REGISTRY.get_sample_value(count, {"generation": "2"}) or 0.0
        garbage = [[n] for n in range(200_000)]  # something to walk
        gc.collect()
        after = REGISTRY.get_sample_value(sample, {"generation": "2"}) or 0.0
        assert after > before and len(garbage) == 200_000
        assert (REGISTRY.get_sample_value(count, {"generation": "2"}) or 0.0) > collections
    finally:
        gc.callbacks.remove(observe._gc_timer)


def test_records_in_counts_under_the_labels_of_the_message_type_and_kind() -> None:
    """records_in's child counts under the record's msg_type label (a /db/write table under
    user_table) and kind, the same child each time."""
    sample = "livedata_records_in_total"
    can = {"msg_type": "vehicle_can", "kind": "backfill"}
    table = {"msg_type": "user_table", "kind": "backfill"}
    before = [REGISTRY.get_sample_value(sample, labels) or 0.0 for labels in (can, table)]
    assert observe.records_in("vehicle_can", "backfill") is observe.records_in(
        "vehicle_can", "backfill"
    )
    observe.records_in("vehicle_can", "backfill").inc(3)
    observe.records_in("some_table", "backfill").inc(2)
    after = [REGISTRY.get_sample_value(sample, labels) or 0.0 for labels in (can, table)]
    assert after == [before[0] + 3, before[1] + 2]
