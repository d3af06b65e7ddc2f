"""The viewer-following real-time policy without I/O: viewers and clock in, commands out."""

from __future__ import annotations

from livedata.follow import START, STOP, Command, FollowPolicy, OrgConfig

ORG, M = "acme", "WL-1"


def policy(enabled: bool = True, grace: float = 300.0) -> FollowPolicy:
    p = FollowPolicy(retry_s=30.0)
    p.configure(ORG, OrgConfig(enabled, grace))
    return p


def test_first_viewer_starts_and_last_one_stops_after_the_grace_time() -> None:
    """The first viewer starts the stream; it stops `grace` after the last one left, not before."""
    p = policy(grace=300)
    assert p.joined(ORG, M, 0) == [Command(ORG, M, START)]
    assert p.joined(ORG, M, 1) == []
    assert p.left(ORG, M, 2) == []
    assert p.left(ORG, M, 10) == []
    assert p.next_deadline() == 310
    assert p.tick(309.9) == []
    assert p.tick(310) == [Command(ORG, M, STOP)]
    assert p.tick(1000) == []
    assert len(p) == 0, "nothing is kept for a machine nobody watches"


def test_a_viewer_back_within_the_grace_time_keeps_it_running() -> None:
    """Leaving and coming back within the grace time sends nothing at all."""
    p = policy(grace=60)
    p.joined(ORG, M, 0)
    p.left(ORG, M, 5)
    assert p.joined(ORG, M, 30) == []
    assert p.tick(100) == []
    p.left(ORG, M, 100)
    assert p.tick(160) == [Command(ORG, M, STOP)]


def test_manual_stop_holds_until_manual_start() -> None:
    """After a manual Stop no viewer starts the stream; a manual Start releases the hold."""
    p = policy(grace=60)
    p.joined(ORG, M, 0)
    p.manual(ORG, M, STOP, 1)
    assert p.held(ORG, M)
    p.left(ORG, M, 2)
    assert p.joined(ORG, M, 3) == []
    p.left(ORG, M, 4)
    assert p.tick(1000) == []
    p.manual(ORG, M, START, 1000)
    assert not p.held(ORG, M)
    assert p.tick(1059) == []
    assert p.tick(1060) == [Command(ORG, M, STOP)], "a manual Start nobody watches runs out"
    assert p.joined(ORG, M, 2000) == [Command(ORG, M, START)]


def test_manual_start_while_watched_stops_after_the_viewers() -> None:
    """A manual Start with viewers present is stopped only after they leave."""
    p = policy(grace=10)
    p.joined(ORG, M, 0)
    p.manual(ORG, M, START, 1)
    assert p.tick(100) == []
    p.left(ORG, M, 100)
    assert p.tick(110) == [Command(ORG, M, STOP)]


def test_disabled_organisation_only_counts() -> None:
    """With the setting off viewers are counted but nothing is sent; turning it off cancels stops."""
    p = policy(enabled=False)
    assert p.joined(ORG, M, 0) == []
    assert p.viewers(ORG, M) == 1
    p.left(ORG, M, 1)
    assert p.tick(10_000) == [] and len(p) == 0
    p.joined(ORG, M, 0)
    assert p.configure(ORG, OrgConfig(True, 5)) == [Command(ORG, M, START)], "watched now: starts"
    assert p.configure(ORG, OrgConfig(True, 5)) == [], "only a change from off to on starts"
    p.left(ORG, M, 1)
    p.configure(ORG, OrgConfig(False, 5))
    assert p.next_deadline() is None
    assert p.tick(100) == []


def test_failed_start_is_retried_while_watched() -> None:
    """A start that did not reach the machine is tried again every retry_s while someone watches."""
    p = policy()
    [start] = p.joined(ORG, M, 0)
    p.sent(start, ok=False, now=1)
    assert p.next_deadline() == 31
    assert p.tick(31) == [Command(ORG, M, START)]
    p.sent(start, ok=False, now=32)
    p.left(ORG, M, 40)
    assert p.tick(1000) == [] and len(p) == 0, "nobody watches: no retry, no stop"


def test_unbalanced_leave_and_other_machines() -> None:
    """A leave without a join is ignored; machines and organisations are independent."""
    p = policy(grace=1)
    assert p.left(ORG, M, 0) == []
    p.configure("other", OrgConfig(True, 1))
    assert p.joined(ORG, "A", 0) == [Command(ORG, "A", START)]
    assert p.joined("other", "A", 0) == [Command("other", "A", START)]
    p.left(ORG, "A", 1)
    assert p.tick(2) == [Command(ORG, "A", STOP)]
    assert p.viewers("other", "A") == 1


def test_a_stream_running_before_the_viewers_is_left_running() -> None:
    """A start found unnecessary (already running) makes the stream not the viewers' to stop."""
    p = policy(grace=1)
    [start] = p.joined(ORG, M, 0)
    p.sent(start, ok=True, now=0, already=True)
    p.left(ORG, M, 1)
    assert p.tick(100) == [] and len(p) == 0
