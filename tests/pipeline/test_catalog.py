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
