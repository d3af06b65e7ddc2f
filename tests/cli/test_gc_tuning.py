"""Server start-up: what exists once the runtime has started is out of later collections' reach."""

from __future__ import annotations

import gc

import pytest

from livedata.cli.common import GC_THRESHOLDS, INGEST_GC_THRESHOLDS, tune_gc


def test_objects_alive_at_start_up_are_not_walked_by_later_collections() -> None:
    """After tune_gc an object made before it is in no generation a collection walks."""
    built_at_start_up = [object() for _ in range(10)]
    thresholds = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        walked = {id(o) for gen in (0, 1, 2) for o in gc.get_objects(generation=gen)}
        assert id(built_at_start_up) not in walked
        assert gc.get_freeze_count() > 0
        made_later: list[object] = []
        assert id(made_later) in {id(o) for o in gc.get_objects(generation=0)}
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


@pytest.mark.parametrize(
    ("roles", "thresholds"),
    [
        ({"ingest"}, INGEST_GC_THRESHOLDS),
        ({"ingest", "distribute", "alerts"}, INGEST_GC_THRESHOLDS),
        ({"ingest", "distribute", "alerts", "gateway"}, GC_THRESHOLDS),
        ({"gateway"}, GC_THRESHOLDS),
        ({"distribute", "gateway"}, GC_THRESHOLDS),
        ({"distribute"}, INGEST_GC_THRESHOLDS),
        ({"alerts"}, INGEST_GC_THRESHOLDS),
        ({"distribute", "alerts"}, INGEST_GC_THRESHOLDS),
    ],
)
def test_a_process_without_the_gateway_collects_less_often(
    roles: set[str], thresholds: tuple[int, int, int]
) -> None:
    """tune_gc gives a process running pipeline roles (ingest, distribute, alerts) without the
    gateway the higher young-generation threshold, and a process with the gateway the
    gateway's."""
    before = gc.get_threshold()
    try:
        tune_gc(roles)
        assert gc.get_threshold() == thresholds
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert INGEST_GC_THRESHOLDS[0] > GC_THRESHOLDS[0]
