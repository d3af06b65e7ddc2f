"""Seeding the demo organisation (``livedata serve --seed-demo N``) into a real metadata database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event

from livedata.metadata import Metadata
from livedata.metadata.tables import Machine
from livedata.sim.demo import MODEL, ORG, seed_demo
from livedata.sim.fleet import default_chassis_ids


async def test_seed_demo_writes_its_machines_in_a_fixed_number_of_statements(
    tmp_path: Path,
) -> None:
    """seed_demo of 600 machines creates each as "Wheel loader n" of the demo model, decoded
    with loader.dbc, in the same few statements as 6 machines; seeding again with more
    renames nothing, adds the new ones and keeps what a user set on the old ones."""
    meta = Metadata(f"sqlite:///{tmp_path / 'meta.db'}")
    await meta.start()
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(meta.engine.sync_engine, "before_cursor_execute", count)
    try:
        await seed_demo(meta, default_chassis_ids(6))
        few = len(statements)
        async with meta.session() as s:
            first = await s.get(Machine, (ORG, "WL-0001"))
            assert first is not None
            first.tags, first.disabled = ["north"], True
        statements.clear()
        chassis = default_chassis_ids(600)
        await seed_demo(meta, chassis)
        assert len(statements) <= few
        decoding = await meta.org_decoding(ORG)
        rows = {m.chassis_id: (m.name, m.model, d.name if d else None) for m, d in decoding}
        assert rows == {
            c: (f"Wheel loader {n}", MODEL, "loader.dbc") for n, c in enumerate(chassis, 1)
        }
        first = await meta.get_machine(ORG, "WL-0001")
        assert (first.tags, first.disabled) == (["north"], True)
    finally:
        await meta.close()
