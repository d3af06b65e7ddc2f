"""The metadata contract, subclassed per database (SQLite here, PostgreSQL in test_postgres.py)."""

from __future__ import annotations

import abc
import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from livedata.errors import NotFound
from livedata.metadata import GroupSpec, Metadata
from livedata.metadata.decoding import (
    add_range,
    delete_ranges_before,
    extend_ranges,
    machine_ranges,
)
from livedata.metadata.dtcs import LOAD_CHUNK, DtcLog
from livedata.metadata.tables import Machine, MachineModel
from livedata.pipeline.dtcs import DtcChange


def unique_org() -> str:
    return f"org-{uuid.uuid4().hex[:10]}"


class MetadataContract(abc.ABC):
    @abc.abstractmethod
    def make_url(self) -> str:
        """The URL of a metadata database (may be shared between tests)."""

    @pytest.fixture
    async def meta(self) -> AsyncIterator[Metadata]:
        meta = Metadata(self.make_url())
        await meta.start()
        yield meta
        await meta.close()

    async def test_migrations_are_idempotent_and_concurrent(self) -> None:
        """Several processes' worth of Metadata objects can start at once on one database."""
        url = self.make_url()
        metas = [Metadata(url) for _ in range(3)]
        await asyncio.gather(*(m.start() for m in metas))
        for m in metas:
            await m.close()

    async def test_machines_models_and_dbc_assignment(self, meta: Metadata) -> None:
        """A machine is decoded with its own DBC, else its model's, else none."""
        org = unique_org()
        await meta.ensure_org(org, "Org")
        model_dbc = await meta.add_dbc(org, "model.dbc", "content-a")
        own_dbc = await meta.add_dbc(org, "own.dbc", "content-b")
        await meta.upsert_machine(org, "A", "Machine A", "WL")
        await meta.upsert_machine(org, "B", "Machine B", "WL")
        await meta.upsert_machine(org, "C", "Machine C", "EX")
        await meta.assign_model_dbc(org, "WL", model_dbc.id)
        await meta.assign_machine_dbc(org, "B", own_dbc.id)
        decoding = {m.chassis_id: d.name if d else None for m, d in await meta.org_decoding(org)}
        assert decoding == {"A": "model.dbc", "B": "own.dbc", "C": None}
        assert model_dbc.created_ms > 1_600_000_000_000

    async def test_upsert_machines_creates_and_renames_keeping_the_rest(
        self, meta: Metadata
    ) -> None:
        """upsert_machines creates new machines (and their models) and sets only name and
        model on existing ones: their tags, location, DBC, secret and disabled flag stay."""
        org = unique_org()
        await meta.ensure_org(org, "Org")
        dbc = await meta.add_dbc(org, "own.dbc", "content")
        await meta.upsert_machine(org, "B", "Machine B", "EX")
        async with meta.session() as s:
            b = await s.get(Machine, (org, "B"))
            assert b is not None
            b.tags, b.location, b.disabled = ["north"], "Pit 2", True
            b.dbc_id, b.secret_hash = dbc.id, "$7$hash"
        batch = [("A", "Machine A", "WL"), ("B", "Machine B2", "WL"), ("C", "Machine C", "NEW")]
        await meta.upsert_machines(org, batch)
        await meta.upsert_machines(org, batch)  # again: changes nothing
        names = ("name", "model", "tags", "location", "disabled", "dbc_id", "secret_hash")
        rows = {m.chassis_id: [getattr(m, n) for n in names] for m in await meta.list_machines(org)}
        assert rows == {
            "A": ["Machine A", "WL", None, "", False, None, None],
            "B": ["Machine B2", "WL", ["north"], "Pit 2", True, dbc.id, "$7$hash"],
            "C": ["Machine C", "NEW", None, "", False, None, None],
        }
        async with meta.session() as s:
            models = await s.scalars(select(MachineModel.name).where(MachineModel.org_id == org))
            assert sorted(models.all()) == ["EX", "NEW", "WL"]

    async def test_org_decoding_rows_carry_what_the_machine_has(self, meta: Metadata) -> None:
        """org_decoding's machine rows read as the machines do: name, model, own DBC,
        tags, location and disabled, equal to get_machine's."""
        org = unique_org()
        await meta.ensure_org(org, "Org")
        dbc = await meta.add_dbc(org, "own.dbc", "content")
        await meta.upsert_machine(org, "A", "Machine A", "WL")
        await meta.upsert_machine(org, "B", "Machine B", "EX")
        await meta.assign_machine_dbc(org, "B", dbc.id)
        async with meta.session() as s:
            b = await s.get(Machine, (org, "B"))
            a = await s.get(Machine, (org, "A"))
            assert a is not None and b is not None
            b.tags, b.location, a.disabled = ["north", "pit 2"], "Pit 2", True
        names = ("chassis_id", "name", "model", "dbc_id", "tags", "location", "disabled")
        rows = {m.chassis_id: m for m, _ in await meta.org_decoding(org)}
        for chassis in ("A", "B"):
            machine = await meta.get_machine(org, chassis)
            assert [getattr(rows[chassis], n) for n in names] == [
                getattr(machine, n) for n in names
            ]
        assert rows["B"].tags == ["north", "pit 2"] and rows["A"].disabled is True

    async def test_objects_of_another_org_are_not_found(self, meta: Metadata) -> None:
        """DBC files, machines and groups of another organisation are NotFound."""
        mine, theirs = unique_org(), unique_org()
        for org in (mine, theirs):
            await meta.ensure_org(org, org)
        dbc = await meta.add_dbc(theirs, "x.dbc", "c")
        await meta.upsert_machine(theirs, "T1", "T", "WL")
        group = await meta.create_group(theirs, GroupSpec("g", "vehicle_can", ["speed"], ""))
        with pytest.raises(NotFound):
            await meta.get_dbc(mine, dbc.id)
        with pytest.raises(NotFound):
            await meta.get_machine(mine, "T1")
        with pytest.raises(NotFound):
            await meta.update_group(mine, group.id, GroupSpec("g", "vehicle_can", ["x"], ""))
        with pytest.raises(NotFound):
            await meta.delete_group(mine, group.id)
        assert await meta.list_groups(mine) == []

    async def test_groups_keep_order_and_content(self, meta: Metadata) -> None:
        """Groups are listed in creation order with their fields and unit, and can be changed."""
        org = unique_org()
        await meta.ensure_org(org, "Org")
        a = await meta.create_group(org, GroupSpec("A", "vehicle_can", ["speed", "gear"], "km/h"))
        b = await meta.create_group(org, GroupSpec("B", "client_raw_data", ["cpu_usage"], "%"))
        await meta.update_group(org, a.id, GroupSpec("A2", "vehicle_can", ["gear"], ""))
        groups = await meta.list_groups(org)
        assert [(g.id, g.name, g.fields, g.unit) for g in groups] == [
            (a.id, "A2", ["gear"], ""),
            (b.id, "B", ["cpu_usage"], "%"),
        ]

    async def test_seen_fields_are_kept_once(self, meta: Metadata) -> None:
        """Field names noted twice are stored once, sorted."""
        org = unique_org()
        await meta.add_fields(org, "M", "client_raw_data", ["b", "a"])
        await meta.add_fields(org, "M", "client_raw_data", ["a", "c"])
        assert await meta.list_fields(org, "M", "client_raw_data") == ["a", "b", "c"]

    async def test_fields_of_several_machines_are_kept_in_one_call(self, meta: Metadata) -> None:
        """add_fields_many stores each machine's names, those already stored left alone."""
        org = unique_org()
        await meta.add_fields(org, "M1", "client_raw_data", ["a"])
        rows = [("M1", "client_raw_data", "a"), ("M1", "client_raw_data", "b")]
        rows += [("M2", "client_raw_data", "a"), ("M2", "vehicle_can", "x")]
        await meta.add_fields_many(org, rows)
        assert await meta.list_fields(org, "M1", "client_raw_data") == ["a", "b"]
        assert await meta.list_fields(org, "M2", "client_raw_data") == ["a"]
        assert await meta.list_fields(org, "M2", "vehicle_can") == ["x"]

    async def test_dtc_log_and_dbc_options(self, meta: Metadata) -> None:
        """DTC rows become active, change, clear, and are listed per machine; DBC J1939 options
        are kept."""
        org = unique_org()
        await meta.ensure_org(org, "Org")
        log = DtcLog(meta)
        lamps = {"amber_warning": 1}
        await log.apply([(org, "M", DtcChange("active", 0, 110, 16, 1, lamps, 1000))])
        await log.apply([(org, "M", DtcChange("active", 3, 523, 2, 1, lamps, 1500))])
        await log.apply([(org, "M", DtcChange("oc", 0, 110, 16, 2, lamps, 2000))])
        assert await log.active([(org, "M")]) == {(org, "M"): {(0, 110, 16): 2, (3, 523, 2): 1}}
        await log.apply([(org, "M", DtcChange("cleared", 0, 110, 16, 2, lamps, 3000))])
        active, cleared = await log.listing(org, "M")
        assert [(r.sa, r.spn, r.since_ms, r.cleared_ms) for r in active] == [(3, 523, 1500, None)]
        assert [(r.spn, r.oc, r.cleared_ms, r.lamps) for r in cleared] == [(110, 2, 3000, lamps)]
        assert await log.listing(org, "OTHER") == ([], [])
        dbc = await meta.add_dbc(org, "d", "x", j1939=True, separate_sources=True)
        stored = await meta.get_dbc(org, dbc.id)
        assert (stored.j1939, stored.separate_sources) == (True, True)
        plain = await meta.get_dbc(org, (await meta.add_dbc(org, "p", "x")).id)
        assert (plain.j1939, plain.separate_sources) == (None, False)

    async def test_dtc_changes_of_many_machines_in_one_write(self, meta: Metadata) -> None:
        """One write of several machines' changes in order -- a row active before it counted
        up and cleared, a code that appears, clears and appears again, another that appears
        and changes its count -- leaves the rows one write per change would; active DTCs of
        many machines (more than one query's worth, two organisations) load in one call."""
        org, other = unique_org(), unique_org()
        await meta.ensure_org(org, "Org")
        await meta.ensure_org(other, "Other")
        log = DtcLog(meta)
        on, off = {"amber_warning": 1}, {"amber_warning": 0}
        await log.apply([(org, "A", DtcChange("active", 0, 110, 16, 1, on, 1000))])
        await log.apply(
            [
                (org, "A", DtcChange("oc", 0, 110, 16, 2, on, 2000)),
                (org, "B", DtcChange("active", 0, 100, 1, 1, on, 2000)),
                (org, "A", DtcChange("cleared", 0, 110, 16, 2, off, 3000)),
                (org, "B", DtcChange("cleared", 0, 100, 1, 1, off, 3000)),
                (org, "A", DtcChange("active", 0, 110, 16, 1, on, 4000)),
                (org, "B", DtcChange("active", 0, 100, 1, 1, on, 4000)),
                (other, "A", DtcChange("active", 3, 523, 2, 1, on, 4000)),
                (other, "A", DtcChange("oc", 3, 523, 2, 5, off, 5000)),
            ]
        )
        rows = {}
        for machine in ((org, "A"), (org, "B"), (other, "A")):
            active, cleared = await log.listing(*machine)
            rows[machine] = [
                (r.spn, r.oc, r.lamps, r.since_ms, r.cleared_ms) for r in active + cleared
            ]
        assert rows == {
            (org, "A"): [(110, 1, on, 4000, None), (110, 2, off, 1000, 3000)],
            (org, "B"): [(100, 1, on, 4000, None), (100, 1, off, 2000, 3000)],
            (other, "A"): [(523, 5, off, 4000, None)],
        }
        machines = [(org, f"M{n}") for n in range(LOAD_CHUNK + 10)]
        await log.apply(
            [(o, c, DtcChange("active", 0, 1, 2, n, on, n)) for n, (o, c) in enumerate(machines)]
        )
        loaded = await log.active([*machines, (org, "A"), (other, "A"), (other, "NONE")])
        assert loaded == {
            **{m: {(0, 1, 2): n} for n, m in enumerate(machines)},
            (org, "A"): {(0, 110, 16): 1},
            (other, "A"): {(3, 523, 2): 5},
            (other, "NONE"): {},
        }

    async def test_decode_ranges_timeline_and_retention(self, meta: Metadata) -> None:
        """Rows of a machine paint its timeline (later rows over earlier, same DBC merged),
        ends can move (several rows in one call), other machines apart; retention drops rows
        that ended before it."""
        org = unique_org()
        await meta.ensure_org(org, "Org")
        v1 = await meta.add_dbc(org, "m.dbc", "content-1")
        v2 = await meta.add_dbc(org, "m.dbc", "content-2")
        first = await add_range(meta, org, "A", v1.id, "m.dbc", 1_000, 5_000, "ingest")
        await add_range(meta, org, "A", v2.id, "m.dbc", 2_000, 3_000, "redecode")
        other = await add_range(meta, org, "B", v1.id, "m.dbc", 0, 5, "ingest")
        await extend_ranges(meta, [(first, 1_000, 9_000), (other, 0, 10)])
        assert [r.to_ms for r in await machine_ranges(meta, org, "B")] == [10]
        timeline = [r.to_dict() for r in await machine_ranges(meta, org, "A")]
        assert [(r["from"], r["to"], r["dbcId"], r["source"]) for r in timeline] == [
            (1_000, 1_999, v1.id, "ingest"),
            (2_000, 3_000, v2.id, "redecode"),
            (3_001, 9_000, v1.id, "ingest"),
        ]
        assert await delete_ranges_before(meta, 100) >= 1  # B's row (and other tests' old rows)
        assert await machine_ranges(meta, org, "B") == []
        assert len(await machine_ranges(meta, org, "A")) == 3
