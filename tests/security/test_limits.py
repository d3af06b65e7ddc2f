"""Limits against abuse, sans I/O: sliding windows, login back-off, live-connection counts."""

from __future__ import annotations

import pytest

from livedata.auth.limits import (
    LOGIN_BASE_DELAY_S,
    LOGIN_FREE_PER_ACCOUNT,
    LOGIN_FREE_PER_ADDRESS,
    Backoff,
    ConnectionCount,
    LoginThrottle,
    SlidingWindow,
    address_key,
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


def test_backoff_doubles_after_the_free_failures_up_to_the_cap() -> None:
    """Free failures cost nothing; then 1, 2, 4 … seconds, never more than the cap."""
    backoff = Backoff(free=2, base=1.0, cap=8.0, forget=3600.0)
    assert [backoff.delay(n) for n in range(8)] == [0, 0, 1, 2, 4, 8, 8, 8]
    assert backoff.delay(10_000) == 8.0
    backoff.failed("k", 0.0)
    backoff.failed("k", 0.0)
    assert backoff.retry_after("k", 0.5) == pytest.approx(0.5)
    assert backoff.retry_after("k", 1.0) == 0.0
    backoff.failed("k", 1.0)
    assert backoff.retry_after("k", 1.0) == pytest.approx(2.0)
    assert backoff.retry_after("k", 3600.9) == 0.0  # forgotten after `forget`
    backoff.failed("k", 3601.0)
    assert backoff.retry_after("k", 3601.0) == 0.0  # counting starts again


def test_backoff_memory_is_bounded() -> None:
    """An attacker cycling through addresses makes it forget, never grow."""
    backoff = Backoff(0, 1.0, 10.0, 60.0, max_keys=100)
    for n in range(10_000):
        backoff.failed(f"10.{n}", 0.0)
    assert len(backoff._failures) == 100


def test_wrong_passwords_from_many_addresses_do_not_lock_the_user_out() -> None:
    """Failures for admin from 5 (or 500) addresses leave the real user's address free."""
    throttle = LoginThrottle()
    for n in range(500):
        for _ in range(LOGIN_FREE_PER_ACCOUNT + 2):
            throttle.failed("admin", f"198.51.{n // 250}.{n % 250}", 0.0)
    assert throttle.retry_after("admin", "192.0.2.10", 1.0) == 0.0
    assert throttle.retry_after("ADMIN", "198.51.0.7", 1.0) > 0


def test_one_address_guessing_slows_down_exponentially() -> None:
    """Guessing one username from one address: 3 free failures, then 1 s, 2 s, 4 s …"""
    throttle = LoginThrottle()
    now = 0.0
    waits = []
    for _ in range(LOGIN_FREE_PER_ACCOUNT + 5):
        now += throttle.retry_after("alice", "192.0.2.1", now)
        throttle.failed("alice", "192.0.2.1", now)
        waits.append(throttle.retry_after("alice", "192.0.2.1", now))
    assert waits == [0, 0, 1, 2, 4, 8, 16, 32]
    assert throttle.retry_after("alice", "192.0.2.2", now) == 0.0
    throttle.succeeded("alice", "192.0.2.1")
    assert throttle.retry_after("alice", "192.0.2.1", now) == 0.0


def test_spraying_usernames_from_one_address_is_throttled_per_address() -> None:
    """Many usernames from one address: after 10 failures every login from it waits."""
    throttle = LoginThrottle()
    for n in range(LOGIN_FREE_PER_ADDRESS):
        assert throttle.retry_after(f"user{n}", "192.0.2.1", 0.0) == 0.0
        throttle.failed(f"user{n}", "192.0.2.1", 0.0)
    assert throttle.retry_after("someone-else", "192.0.2.1", 0.1) == pytest.approx(
        LOGIN_BASE_DELAY_S - 0.1
    )
    assert throttle.retry_after("someone-else", "192.0.2.2", 0.1) == 0.0
    throttle.succeeded("user1", "192.0.2.1")  # a success of one's own does not reset it
    assert throttle.retry_after("user1", "192.0.2.1", 0.1) > 0


def test_ipv6_addresses_count_per_64() -> None:
    """Hosts of one IPv6 /64 share a budget; an IPv4-mapped address counts as IPv4."""
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("testclient") == "testclient"


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
