"""``livedata simulate`` stops on SIGINT by itself: status 0, every machine ``offline``.

The simulator is started the way a script's or CI's ``command &`` starts it: with
SIGINT ignored (inherited).  Before the fix it ran on after SIGINT — Python keeps an
inherited ``SIG_IGN`` and ``asyncio.run`` then installs no interrupt handler — and the
cluster test's simulator had to be killed.  A second SIGINT soon after the first
(asyncio's runner raised KeyboardInterrupt inside the loop, which could lose a task's
wake-up) sometimes left it waiting forever in ``Runner.close()``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import orjson
import pytest

from livedata.cli.signals import cancel_on_signals, interruptible
from livedata.sim.fleet import default_chassis_ids
from tests.servers import stop_process
from tests.servers.mosquitto import Mosquitto, start_mosquitto

MACHINES = 20
SIMULATE = [
    sys.executable,
    "-m",
    "livedata",
    "simulate",
    "--machines",
    str(MACHINES),
    "--period",
    "0.2",
]
EXIT_BOUND_S = 60.0
"""A hang detector, not a speed claim: a clean stop takes seconds (the close is bounded
at 2 + 2 s), an import of the CLI up to 15 s on a loaded 2-core machine."""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield server
    server.stop()


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_and_interrupt(
    broker: Mosquitto, org: str, delay: float, tmp_path: Path, again: float | None = None
) -> int:
    """Start the simulator with SIGINT ignored, SIGINT it ``delay`` s after it announced
    (and again ``again`` s later), and return its exit status (the test fails if it does
    not exit by itself)."""
    log = tmp_path / f"simulate-{org}.log"
    process = subprocess.Popen(
        [*SIMULATE, "--mqtt", broker.url, "--org", org],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=_ignore_sigint,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("machines:"):
                break
        else:
            raise AssertionError(f"simulate did not start:\n{log.read_text()[-3000:]}")
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        if again is not None:
            time.sleep(again)
            process.send_signal(signal.SIGINT)
        try:
            return process.wait(EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"simulate ({org}, SIGINT after {delay} s) did not exit") from None
    finally:
        stop_process(process)


def retained_statuses(broker: Mosquitto, org: str) -> dict[str, dict]:
    """The retained status message of every machine of ``org`` on the broker."""

    async def read() -> dict[str, dict]:
        found: dict[str, dict] = {}
        async with aiomqtt.Client("127.0.0.1", broker.port) as client:
            await client.subscribe(f"livedata/{org}/+/status", qos=1)
            async with asyncio.timeout(20):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    found[message.topic.value.split("/")[2]] = orjson.loads(message.payload)
                    if len(found) == MACHINES:
                        break
        return found

    return asyncio.run(read())


def test_interruptible_makes_an_inherited_ignored_sigint_an_interrupt_again() -> None:
    """SIG_IGN for SIGINT becomes Python's default handler; a handler of its own is kept."""
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        interruptible()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, _handler := lambda *_: None)
        interruptible()
        assert signal.getsignal(signal.SIGINT) is _handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_simulate_started_with_sigint_ignored_stops_on_sigint(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """SIGINT stops it with status 0, and every machine leaves its retained `offline` (closed)."""
    assert run_and_interrupt(broker, "sigint", 0.5, tmp_path) == 0
    statuses = retained_statuses(broker, "sigint")
    assert set(statuses) == set(default_chassis_ids(MACHINES))
    assert all(s["online"] is False and s["reason"] == "closed" for s in statuses.values())


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.05, 0.13, 1.0, 2.37])
def test_simulate_stops_on_sigint_at_any_moment(
    broker: Mosquitto, tmp_path: Path, delay: float
) -> None:
    """SIGINT right after the start, within a tick and between ticks: it exits by itself, 0."""
    org = f"at{int(delay * 100)}"
    assert run_and_interrupt(broker, org, delay, tmp_path) == 0
    statuses = retained_statuses(broker, org)
    assert all(s["online"] is False for s in statuses.values())


@pytest.mark.slow
@pytest.mark.parametrize("again", [0.0, 0.01, 0.02, 0.03, 0.05, 0.1])
def test_simulate_stops_on_a_second_sigint_during_its_close(
    broker: Mosquitto, tmp_path: Path, again: float
) -> None:
    """A second SIGINT while the machines close cuts that short: it still exits by itself."""
    status = run_and_interrupt(broker, f"twice{int(again * 100)}", 1.0, tmp_path, again)
    # 0; or the second signal came once the work was done, when the interpreter's
    # finalisation has put SIGINT back to the system default (terminated by it)
    assert status in (0, -signal.SIGINT)


def test_cancel_on_signals_cancels_its_task_then_gives_the_signal_back() -> None:
    """SIGINT cancels the task while it runs; once it is done SIGINT is KeyboardInterrupt again."""

    async def main() -> None:
        cancel_on_signals()
        signal.raise_signal(signal.SIGINT)
        await asyncio.sleep(3600)

    async def later() -> None:
        signal.raise_signal(signal.SIGINT)
        await asyncio.sleep(10)  # a handler that still cancelled the old task: no interrupt

    with asyncio.Runner() as runner:
        with pytest.raises(asyncio.CancelledError):
            runner.run(main())
        with pytest.raises(KeyboardInterrupt):
            runner.run(later())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
