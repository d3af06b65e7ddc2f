"""How the commands take SIGINT (Ctrl-C) and SIGTERM.

Two ways a stop signal went wrong, both of which left ``livedata simulate`` running:

- Started with SIGINT ignored — a shell without job control (a script's or CI's
  ``command &``) starts background commands so — Python keeps it ignored and
  :class:`asyncio.Runner` installs no handler: ``kill -INT`` did nothing.
  :func:`interruptible` (called by ``main``) makes it an interrupt again.
- :class:`asyncio.Runner`'s own handling of a *second* Ctrl-C raises
  :class:`KeyboardInterrupt` wherever the event loop happens to be; raised between
  taking a callback off the ready queue and running it, it loses that callback (a
  task's wake-up), and ``Runner.close()`` then waits for that task forever.
  :func:`cancel_on_signals` takes both signals in the event loop instead: each one
  cancels the main task (a second one cancels its clean-up too).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def interruptible() -> None:
    """Make SIGINT raise :class:`KeyboardInterrupt` again if it was inherited as ignored."""
    if threading.current_thread() is not threading.main_thread():
        return  # called in-process from a thread (tests): signals are the main thread's
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def cancel_on_signals(task: asyncio.Task[object] | None = None) -> None:
    """SIGINT and SIGTERM cancel ``task`` (default: the current one), each time, from the
    event loop.  Once ``task`` is done the signal is the default one again (the loop may
    run on for something else, as in tests): a handler left behind does that itself."""
    task = task or asyncio.current_task()
    if task is None:
        return
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _cancel, loop, sig, task)


def _cancel(loop: asyncio.AbstractEventLoop, sig: int, task: asyncio.Task[object]) -> None:
    if not task.done():
        task.cancel()
        return
    loop.remove_signal_handler(sig)  # SIGINT: KeyboardInterrupt again; SIGTERM: the default
    signal.raise_signal(sig)
