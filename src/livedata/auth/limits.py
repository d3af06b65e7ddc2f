"""Limits against abuse, sans I/O: failed logins, live connections, command rate.

Every limiter is bounded in memory: it tracks at most ``max_keys`` keys and forgets
the least recently used one first (an attacker cycling through addresses can only
make it forget, never grow).  Refusals are counted in
``livedata_auth_refused_total{reason}`` by the caller.

- Failed logins slow down the **address** they come from, never the account: after
  :data:`LOGIN_FREE_PER_ADDRESS` failures from one address (any usernames), or
  :data:`LOGIN_FREE_PER_ACCOUNT` failures for one username from one address, that
  address must wait :data:`LOGIN_BASE_DELAY_S` seconds, then twice as long after each
  further failure, up to :data:`LOGIN_MAX_DELAY_S`; a login attempted earlier answers
  429 with ``Retry-After`` (and is not counted).  The count is forgotten
  :data:`LOGIN_FORGET_S` after the last failure.  So a stranger who guesses wrong
  from five addresses slows down those five addresses only: the real user logs in
  from theirs.  IPv6 addresses count per /64 (one host usually has a whole /64).
  A success resets the username-and-address count, not the address's.
- Live connections (WebSocket, SSE, Socket.IO together): ``max_live`` per user;
  the next one is refused (WebSocket close 1008, HTTP 429).
- Device methods: ``commands_per_minute`` per user (HTTP 429).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque

LOGIN_FREE_PER_ADDRESS = 10
LOGIN_FREE_PER_ACCOUNT = 3
LOGIN_BASE_DELAY_S = 1.0
LOGIN_MAX_DELAY_S = 900.0
LOGIN_FORGET_S = 3600.0


class SlidingWindow:
    """At most ``limit`` events per key within ``window`` seconds."""

    def __init__(self, limit: int, window: float, max_keys: int = 10_000) -> None:
        self.limit, self.window, self.max_keys = limit, window, max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            events = self._events[key] = deque()
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        self._events.move_to_end(key)
        while events and events[0] <= now - self.window:
            events.popleft()
        return events

    def retry_after(self, key: str, now: float) -> float:
        """0 when another event is allowed now, else the seconds until it is."""
        events = self._recent(key, now)
        if len(events) < self.limit:
            return 0.0
        return max(0.001, events[0] + self.window - now)

    def add(self, key: str, now: float) -> None:
        self._recent(key, now).append(now)

    def take(self, key: str, now: float) -> float:
        """Record an event if allowed (0.0), else the seconds to wait (nothing recorded)."""
        wait = self.retry_after(key, now)
        if not wait:
            self.add(key, now)
        return wait

    def reset(self, key: str) -> None:
        self._events.pop(key, None)


class Backoff:
    """Failures per key: ``free`` of them cost nothing, then each one doubles the wait
    before the next attempt (from ``base`` up to ``cap`` seconds)."""

    def __init__(
        self, free: int, base: float, cap: float, forget: float, max_keys: int = 10_000
    ) -> None:
        self.free, self.base, self.cap, self.forget = free, base, cap, forget
        self.max_keys = max_keys
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def _state(self, key: str, now: float) -> tuple[int, float]:
        state = self._failures.get(key)
        if state is None:
            return 0, 0.0
        if now - state[1] >= self.forget:
            del self._failures[key]
            return 0, 0.0
        return state

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` failures."""
        if failures < self.free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(failures - self.free, 64))

    def retry_after(self, key: str, now: float) -> float:
        """0 when an attempt is allowed now, else the seconds until it is."""
        failures, last = self._state(key, now)
        return max(0.0, last + self.delay(failures) - now)

    def failed(self, key: str, now: float) -> None:
        failures, _ = self._state(key, now)
        self._failures[key] = (failures + 1, now)
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)


def address_key(address: str) -> str:
    """The throttling key of a client address: IPv4 as is, IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginThrottle:
    """Failed logins per address and per username-and-address (never per account alone)."""

    def __init__(self) -> None:
        args = (LOGIN_BASE_DELAY_S, LOGIN_MAX_DELAY_S, LOGIN_FORGET_S)
        self.addresses = Backoff(LOGIN_FREE_PER_ADDRESS, *args)
        self.pairs = Backoff(LOGIN_FREE_PER_ACCOUNT, *args)

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        where = address_key(address)
        return where, f"{username.lower()}\0{where}"

    def retry_after(self, username: str, address: str, now: float) -> float:
        where, pair = self._keys(username, address)
        return max(self.addresses.retry_after(where, now), self.pairs.retry_after(pair, now))

    def failed(self, username: str, address: str, now: float) -> None:
        where, pair = self._keys(username, address)
        self.addresses.failed(where, now)
        self.pairs.failed(pair, now)

    def succeeded(self, username: str, address: str) -> None:
        self.pairs.reset(self._keys(username, address)[1])


class ConnectionCount:
    """Open live connections per user, at most ``limit`` each."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[int, int] = {}

    def acquire(self, user_id: int) -> bool:
        count = self._open.get(user_id, 0)
        if count >= self.limit:
            return False
        self._open[user_id] = count + 1
        return True

    def release(self, user_id: int) -> None:
        count = self._open.get(user_id, 0) - 1
        if count > 0:
            self._open[user_id] = count
        else:
            self._open.pop(user_id, None)
