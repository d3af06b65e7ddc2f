"""Limits against abuse, sans I/O: failed logins, live connections, command rate.

Every limiter is bounded in memory: it tracks at most ``max_keys`` keys and forgets
the least recently used one first (an attacker cycling through addresses can only
make it forget, never grow).  Refusals are counted in
``livedata_auth_refused_total{reason}`` by the caller.

- Failed logins: :data:`LOGIN_FAILURES_PER_ACCOUNT` per account and
  :data:`LOGIN_FAILURES_PER_ADDRESS` per client address within
  :data:`LOGIN_WINDOW_S`; beyond that the login answers 429 with ``Retry-After``
  even for the right password, until the oldest failure leaves the window.
- Live connections (WebSocket, SSE, Socket.IO together): ``max_live`` per user;
  the next one is refused (WebSocket close 1008, HTTP 429).
- Device methods: ``commands_per_minute`` per user (HTTP 429).
"""

from __future__ import annotations

from collections import OrderedDict, deque

LOGIN_WINDOW_S = 300.0
LOGIN_FAILURES_PER_ACCOUNT = 5
LOGIN_FAILURES_PER_ADDRESS = 20


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


class LoginThrottle:
    """Failed logins per account and per address."""

    def __init__(self) -> None:
        self.accounts = SlidingWindow(LOGIN_FAILURES_PER_ACCOUNT, LOGIN_WINDOW_S)
        self.addresses = SlidingWindow(LOGIN_FAILURES_PER_ADDRESS, LOGIN_WINDOW_S)

    def retry_after(self, username: str, address: str, now: float) -> float:
        return max(
            self.accounts.retry_after(username.lower(), now),
            self.addresses.retry_after(address, now),
        )

    def failed(self, username: str, address: str, now: float) -> None:
        self.accounts.add(username.lower(), now)
        self.addresses.add(address, now)

    def succeeded(self, username: str) -> None:
        self.accounts.reset(username.lower())


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
