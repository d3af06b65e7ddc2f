"""Server start-up: what exists once the runtime has started is out of later collections' reach."""

from __future__ import annotations

import gc

from livedata.cli.common import GC_THRESHOLDS, tune_gc


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
