"""Limits against abuse, sans I/O: sliding windows, login throttling, live-connection counts."""

from __future__ import annotations

import pytest

from livedata.auth.limits import (
    LOGIN_FAILURES_PER_ACCOUNT,
    LOGIN_FAILURES_PER_ADDRESS,
    LOGIN_WINDOW_S,
    ConnectionCount,
    LoginThrottle,
    SlidingWindow,
)


def test_window_allows_limit_events_then_says_how_long_to_wait() -> None:
    """`limit` events pass; the next waits until the oldest leaves the window."""
    window = SlidingWindow(3, 60.0)
    assert [window.take("u", t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert window.take("u", 10.0) == pytest.approx(50.0)
    assert window.retry_after("u", 59.9) == pytest.approx(0.1)
    assert window.take("u", 60.0) == 0.0  # the event at 0.0 has left
    assert window.take("u", 60.5) == pytest.approx(0.5)


def test_refused_events_are_not_recorded() -> None:
    """A refused take() does not extend the wait (hammering does not lock forever)."""
    window = SlidingWindow(1, 10.0)
    assert window.take("u", 0.0) == 0.0
    for t in range(1, 10):
        assert window.take("u", float(t)) > 0
    assert window.take("u", 10.0) == 0.0


def test_window_keys_are_independent_and_reset() -> None:
    """Each key has its own budget; reset() forgets one key only."""
    window = SlidingWindow(1, 60.0)
    assert window.take("a", 0.0) == 0.0
    assert window.take("b", 0.0) == 0.0
    assert window.take("a", 1.0) > 0 and window.take("b", 1.0) > 0
    window.reset("a")
    assert window.take("a", 2.0) == 0.0
    assert window.take("b", 2.0) > 0
    window.reset("never-seen")  # no error


def test_window_retry_after_is_never_zero_while_refusing() -> None:
    """While refusing, retry_after is > 0 even at the very edge of the window."""
    window = SlidingWindow(1, 5.0)
    window.add("u", 0.0)
    assert window.retry_after("u", 5.0 - 1e-9) > 0


def test_window_memory_is_bounded_and_forgets_least_recent() -> None:
    """At most max_keys keys are tracked; the least recently used one is forgotten first."""
    window = SlidingWindow(1, 60.0, max_keys=3)
    for key in ("a", "b", "c"):
        window.add(key, 0.0)
    assert window.retry_after("a", 1.0) > 0  # touching "a" makes "b" the oldest
    for n in range(1000):
        window.retry_after(f"addr{n}", 1.0)
        assert len(window._events) <= 3
    window.add("d", 1.0)
    assert len(window._events) <= 3
    assert window.retry_after("b", 2.0) == 0.0  # forgotten: allowed again
    assert window.retry_after("d", 2.0) > 0


def test_login_throttle_per_account() -> None:
    """After 5 failures an account waits (any address, any case); others do not; success resets."""
    throttle = LoginThrottle()
    for n in range(LOGIN_FAILURES_PER_ACCOUNT):
        assert throttle.retry_after("Alice", f"10.0.0.{n}", float(n)) == 0.0
        throttle.failed("Alice", f"10.0.0.{n}", float(n))
    wait = throttle.retry_after("alice", "10.9.9.9", 10.0)
    assert wait == pytest.approx(LOGIN_WINDOW_S - 10.0)
    assert throttle.retry_after("ALICE", "10.9.9.9", 10.0) == wait
    assert throttle.retry_after("bob", "10.0.0.1", 10.0) == 0.0
    assert throttle.retry_after("alice", "10.9.9.9", LOGIN_WINDOW_S) == 0.0  # first one expired
    throttle.succeeded("ALICE")
    assert throttle.retry_after("alice", "10.9.9.9", 10.0) == 0.0


def test_login_throttle_per_address() -> None:
    """20 failures from one address throttle every account from it, and no other address."""
    throttle = LoginThrottle()
    for n in range(LOGIN_FAILURES_PER_ADDRESS):
        throttle.failed(f"user{n}", "192.0.2.1", 0.0)
    assert throttle.retry_after("someone-else", "192.0.2.1", 1.0) > 0
    assert throttle.retry_after("someone-else", "192.0.2.2", 1.0) == 0.0
    throttle.succeeded("user1")  # a success resets the account, not the address
    assert throttle.retry_after("user1", "192.0.2.1", 1.0) > 0


def test_connection_count_caps_per_user_and_releases() -> None:
    """Each user gets `limit` connections; releasing one allows one more."""
    count = ConnectionCount(3)
    assert [count.acquire(1) for _ in range(4)] == [True, True, True, False]
    assert count.acquire(2)
    count.release(1)
    assert count.acquire(1)
    assert not count.acquire(1)


def test_connection_count_keeps_only_users_with_open_connections() -> None:
    """A user with nothing open is forgotten; extra releases never go negative."""
    count = ConnectionCount(2)
    for user in range(1000):
        assert count.acquire(user)
        count.release(user)
    assert count._open == {}
    count.release(5)
    count.release(5)
    assert count._open == {}
    assert count.acquire(5) and count.acquire(5) and not count.acquire(5)
