"""The catalog's cache: first loads wait, stale organisations reload in the background."""

from __future__ import annotations

import asyncio

from livedata.catalog import Catalog
from livedata.metadata import Metadata


async def reloads_done(catalog: Catalog) -> None:
    while catalog._reloads:
        await asyncio.gather(*catalog._reloads.values())


async def test_stale_organisation_is_served_from_cache_while_it_reloads(meta: Metadata) -> None:
    """A stale organisation answers from its cache at once and reloads behind; the reload's
    machines answer from then on."""
    await meta.upsert_machine("acme", "M1", "one", "WL")
    catalog = Catalog(meta, ttl=0)  # every lookup after the first finds it stale
    assert (await catalog.machine("acme", "M1")) is not None  # the first load is waited for
    await meta.upsert_machine("acme", "M2", "two", "WL")
    assert await catalog.machine("acme", "M2") is None  # cached answer, reload started
    assert catalog._reloads
    await reloads_done(catalog)
    info = await catalog.machine("acme", "M2")
    assert info is not None and info.name == "two"


async def test_a_reload_begun_before_an_invalidation_is_not_kept(meta: Metadata) -> None:
    """A background reload that began before invalidate() does not store its (older)
    answer: the next lookup loads afresh and sees the change."""
    await meta.upsert_machine("acme", "M1", "one", "WL")
    catalog = Catalog(meta, ttl=0)
    await catalog.machine("acme", "M1")
    await catalog.machine("acme", "M1")  # starts a background reload
    catalog.invalidate()  # the API changed something meanwhile
    await reloads_done(catalog)
    assert "acme" not in catalog._orgs
    await meta.upsert_machine("acme", "M3", "three", "WL")
    assert await catalog.machine("acme", "M3") is not None


async def test_cached_answers_without_waiting_once_the_organisation_is_loaded(
    meta: Metadata,
) -> None:
    """cached() is None before an organisation's first load and its machines after it,
    invalidate() forgets them again, and machines() waits for the load."""
    await meta.upsert_machine("acme", "M1", "one", "WL")
    catalog = Catalog(meta)
    assert catalog.cached("acme") is None
    machines = await catalog.machines("acme")
    assert set(machines) == {"M1"}
    assert catalog.cached("acme") is machines
    catalog.invalidate()
    assert catalog.cached("acme") is None
    assert set(await catalog.machines("acme")) == {"M1"}


async def test_fields_known_only_for_names_already_noted(meta: Metadata) -> None:
    """fields_known() holds for names note_fields() remembered (also after a restart, from
    the database) and not for a new one, nor for another machine or message type."""
    await meta.upsert_machine("acme", "M1", "one", "WL")
    catalog = Catalog(meta)
    assert not catalog.fields_known("acme", "M1", "client_raw_data", ["cpu"])
    await catalog.note_fields("acme", "M1", "client_raw_data", ["cpu", "mem"])
    assert catalog.fields_known("acme", "M1", "client_raw_data", {"cpu": 1}.keys())
    assert not catalog.fields_known("acme", "M1", "client_raw_data", ["cpu", "disk"])
    assert not catalog.fields_known("acme", "M2", "client_raw_data", ["cpu"])
    assert not catalog.fields_known("acme", "M1", "vehicle_can", ["cpu"])
    fresh = Catalog(meta)
    await fresh.note_fields("acme", "M1", "client_raw_data", ["cpu"])  # loads what was noted
    assert fresh.fields_known("acme", "M1", "client_raw_data", ["mem"])
