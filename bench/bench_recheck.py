"""The periodic credential re-check of live connections: one look-up per connection
(the code before ``Security.recheck``) against the batched check, in one run.

A fresh SQLite metadata database with one user and ``--connections`` API tokens, one
live connection registered per token (distinct credentials: the worst case; shared
ones hit the look-up cache).  Then, with the look-up cache cold (it lives 5 s, the
re-check runs every 30 s): the per-connection pass (``Accounts.token_principal`` for
each connection, as the earlier ``Security._recheck`` did) and one
``Security.recheck()``; printed: wall and CPU time of each pass, the SQL statements
run, and the CPU ratio.

    python bench/bench_recheck.py --connections 5000
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sqlalchemy import event

from livedata.auth import Role
from livedata.auth import credentials as cred
from livedata.gateway.security import Security
from livedata.metadata import Metadata
from livedata.settings import Settings


class NoTasks:
    def spawn(self, name: str, factory: object) -> None:
        raise AssertionError("nothing is started here")


async def run(count: int, tmp: Path) -> None:
    meta = Metadata(f"sqlite:///{tmp / 'meta.db'}")
    await meta.start()
    await meta.ensure_org("bench", "bench")
    settings = Settings(data_dir=tmp, live_per_user=count + 1)
    sec = Security(settings, meta, NoTasks(), lambda org, table, row: None)  # type: ignore[arg-type]
    user = await sec.accounts.create_user("bench", "bench", "a long enough password", Role.viewer)
    for i in range(count):
        _, raw = await sec.accounts.create_token(user.id, f"t{i}")
        principal = await sec.accounts.token_principal(cred.digest(raw))
        assert principal is not None
        sec.open_live(principal, lambda why: None)
    statements: list[str] = []
    event.listen(
        meta.engine.sync_engine,
        "before_cursor_execute",
        lambda conn, cursor, statement, *rest: statements.append(statement),
    )

    async def per_connection() -> None:
        sec.accounts._cache.clear()  # cold, as 30 s after the last pass
        for entry in list(sec._live.values()):
            await sec.accounts.token_principal(entry.principal.credential)

    async def batched() -> None:
        await sec.recheck()

    figures = {}
    for name, check in (("per connection", per_connection), ("batched", batched)):
        statements.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        await check()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        figures[name] = cpu
        print(
            f"  {name:15} {wall * 1000:8.0f} ms wall {cpu * 1000:8.0f} ms CPU "
            f"{len(statements):6} SQL statements",
            flush=True,
        )
    print(f"  batched / per connection: CPU {figures['batched'] / figures['per connection']:.3f}x")
    await meta.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_recheck_"))
    try:
        print(f"{args.connections} live connections, each with its own API token", flush=True)
        asyncio.run(run(args.connections, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
