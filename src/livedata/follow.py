"""Real-time that follows the viewers: a sans-I/O policy (events in, commands out).

An organisation may let its machines' real-time streams follow the people watching
them (the organisation setting ``followViewers``, with ``viewerGraceSeconds``,
300 by default): the first viewer of a machine starts its stream (``startMs``),
and ``grace`` seconds after the last one left it is stopped (``endMs``); a viewer
who comes back within the grace time keeps it running and nothing is sent.

Only what the viewers started is stopped by them: a stream that was already running
when the first viewer came (started by hand before, or by the device itself) is left
running (the driver asks the machine first and reports ``already``).  A manual Start
while the organisation follows viewers hands the stream to them.

A manual Stop holds the machine: no viewer starts it again until a manual Start,
which releases the hold (and, with nobody watching, starts the grace time so the
stream does not run on forever).  A command that could not be delivered (machine
not connected, no answer) is tried again every ``retry_s`` seconds while someone
watches; a failed stop is not repeated (the machine is unreachable, its link
ending is the end of its stream too).

:class:`FollowPolicy` does no I/O and reads no clock: the driver
(:mod:`livedata.gateway.viewers`) feeds it viewer and command events with the time,
calls :meth:`FollowPolicy.tick` at :meth:`FollowPolicy.next_deadline`, sends the
:class:`Command` s it returns, and reports each outcome with :meth:`FollowPolicy.sent`.

Under stress: state is kept per machine only while something is pending (viewers,
a running stream it started, a timer or a manual hold), so viewers coming and going
for machines that do not exist leave nothing behind; the number of entries is at
most the number of open viewer connections plus the machines holding a manual Stop.
"""

from __future__ import annotations

from dataclasses import dataclass

START = "startMs"
STOP = "endMs"
DEFAULT_GRACE_S = 300.0
RETRY_S = 30.0

Key = tuple[str, str]
"""(organisation, chassis id)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A direct method to send because of the viewers (reason ``viewers``)."""

    org: str
    chassis: str
    method: str


@dataclass(frozen=True, slots=True)
class OrgConfig:
    enabled: bool = False
    grace_s: float = DEFAULT_GRACE_S


@dataclass(slots=True)
class _Machine:
    viewers: int = 0
    held: bool = False
    """A manual Stop: viewers do not start it until a manual Start."""
    on: bool = False
    """Started (by this policy or by hand) and not stopped since, as far as known."""
    ours: bool = False
    """The viewers (or a manual Start under following) started it: the viewers stop it."""
    stop_at: float | None = None
    retry_at: float | None = None

    def idle(self) -> bool:
        pending = self.stop_at is not None or self.retry_at is not None
        return not (self.viewers or self.held or (self.on and self.ours) or pending)


class FollowPolicy:
    """Which real-time streams to start and stop, given who watches what."""

    def __init__(self, retry_s: float = RETRY_S) -> None:
        self.retry_s = retry_s
        self._orgs: dict[str, OrgConfig] = {}
        self._machines: dict[Key, _Machine] = {}

    # configuration ------------------------------------------------------------

    def configure(self, org: str, config: OrgConfig) -> list[Command]:
        """The organisation's setting.  Turning it on starts the streams of the machines
        watched now; turning it off cancels its pending stops and retries."""
        was = self.config(org).enabled
        self._orgs[org] = config
        out: list[Command] = []
        for key, m in list(self._machines.items()):
            if key[0] != org:
                continue
            if not config.enabled:
                m.stop_at = m.retry_at = None
                self._forget_if_idle(key)
            elif not was and m.viewers and not m.held and not m.on:
                out.append(self._start(key, m))
        return out

    def config(self, org: str) -> OrgConfig:
        return self._orgs.get(org, OrgConfig())

    def viewers(self, org: str, chassis: str) -> int:
        m = self._machines.get((org, chassis))
        return m.viewers if m else 0

    def held(self, org: str, chassis: str) -> bool:
        m = self._machines.get((org, chassis))
        return bool(m and m.held)

    def __len__(self) -> int:
        return len(self._machines)

    # events -------------------------------------------------------------------

    def joined(self, org: str, chassis: str, now: float) -> list[Command]:
        """A viewer opened the machine; its stream starts when it is the first one."""
        key = (org, chassis)
        m = self._machines.setdefault(key, _Machine())
        m.viewers += 1
        m.stop_at = None
        if m.viewers == 1 and self.config(org).enabled and not m.held and not m.on:
            return [self._start(key, m)]
        return []

    def left(self, org: str, chassis: str, now: float) -> list[Command]:
        """A viewer went away; the last one starts the grace time (nothing is sent now)."""
        key = (org, chassis)
        m = self._machines.get(key)
        if m is None or m.viewers == 0:
            return []
        m.viewers -= 1
        if m.viewers == 0:
            m.retry_at = None
            if m.on and m.ours and self.config(org).enabled and not m.held:
                m.stop_at = now + self.config(org).grace_s
        self._forget_if_idle(key)
        return []

    def manual(self, org: str, chassis: str, method: str, now: float) -> list[Command]:
        """Someone started or stopped the stream by hand (and the machine said yes)."""
        key = (org, chassis)
        m = self._machines.setdefault(key, _Machine())
        m.retry_at = None
        if method == STOP:
            m.held, m.on, m.ours, m.stop_at = True, False, False, None
        elif method == START:
            config = self.config(org)
            m.held, m.on, m.ours = False, True, config.enabled
            m.stop_at = now + config.grace_s if config.enabled and m.viewers == 0 else None
        self._forget_if_idle(key)
        return []

    def sent(self, command: Command, ok: bool, now: float, already: bool = False) -> list[Command]:
        """The outcome of a command this policy asked for; ``already``: the start was not
        sent because the stream was running before (it is then not the viewers' to stop)."""
        key = (command.org, command.chassis)
        m = self._machines.get(key)
        if m is None:
            return []
        if command.method == START and already:
            m.ours = False
        elif command.method == START and not ok:
            m.on = m.ours = False
            if m.viewers and not m.held:
                m.retry_at = now + self.retry_s
        self._forget_if_idle(key)
        return []

    def tick(self, now: float) -> list[Command]:
        """Commands that are due: stops after the grace time, retried starts."""
        out: list[Command] = []
        for key, m in list(self._machines.items()):
            if m.stop_at is not None and m.stop_at <= now:
                m.stop_at = None
                if m.viewers == 0 and m.on and m.ours and not m.held:
                    m.on = m.ours = False
                    out.append(Command(key[0], key[1], STOP))
            if m.retry_at is not None and m.retry_at <= now:
                m.retry_at = None
                if m.viewers and not m.on and not m.held and self.config(key[0]).enabled:
                    out.append(self._start(key, m))
            self._forget_if_idle(key)
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (``None``: nothing pending)."""
        times = [
            t for m in self._machines.values() for t in (m.stop_at, m.retry_at) if t is not None
        ]
        return min(times) if times else None

    # -------------------------------------------------------------------------

    def _start(self, key: Key, m: _Machine) -> Command:
        m.on = m.ours = True
        return Command(key[0], key[1], START)

    def _forget_if_idle(self, key: Key) -> None:
        m = self._machines.get(key)
        if m is not None and m.idle():
            del self._machines[key]
