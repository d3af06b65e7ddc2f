"""Bounds on what devices and users write, sans I/O: timestamps and field counts.

Every write path (MQTT and in-process ingest, HTTP ingest, ``POST /db/write``) runs
its timestamps through one :class:`TimestampPolicy` and its new field names through
:func:`check_field_count`:

- a timestamp before 2000-01-01 is refused; one more than ``max_skew_s`` (default
  300 s) ahead of this server's clock is refused (``mode="refuse"``, the default:
  the device gets a ``decode_error``/400 naming the skew) or set to the server's
  time (``mode="clamp"``: the value is kept, its time is now).  Either way it is
  counted in ``livedata_future_timestamps_total{action}``.  A point from the
  future would stay the newest value of its line until that time comes, and
  ``lastSeen`` would lie;
- a machine (or a ``/db/write`` user table) keeps at most ``max_fields`` distinct
  field names per message type (default 1,000).  A message that would add more is
  refused whole, with an error that names the cap and how to delete fields
  (``DELETE /api/resources/{orgId}/machines/{chassisId}/fields/{msgType}/{field}``);
  messages with known fields only keep flowing.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import Counter

from livedata.errors import DecodeError

EARLIEST_TS = 946_684_800_000
"""2000-01-01: older timestamps are a device's clock error, not data."""
MODES = ("refuse", "clamp")

FUTURE_TIMESTAMPS = Counter(
    "livedata_future_timestamps",
    "Timestamps further ahead of the server's clock than the allowed skew",
    ["action"],
)
TOO_MANY_FIELDS = Counter(
    "livedata_field_cap_refusals", "Messages refused for adding fields beyond the cap"
)


class TimestampPolicy:
    """What happens to a timestamp (ms since 1970) far from the server's clock."""

    def __init__(self, max_skew_s: float = 300.0, mode: str = "refuse") -> None:
        if mode not in MODES:
            raise ValueError(f"future timestamps: use one of {', '.join(MODES)}, not {mode!r}")
        self.max_skew_ms = int(max_skew_s * 1000)
        self.mode = mode

    def check(self, ts: int, now_ms: int) -> int:
        """``ts``, or the server's time when clamping; :class:`DecodeError` when refused."""
        if ts < EARLIEST_TS:
            raise DecodeError(f"timestamp {ts} is before 2000-01-01 (ms since 1970 expected)")
        ahead = ts - now_ms
        if ahead <= self.max_skew_ms:
            return ts
        if self.mode == "clamp":
            FUTURE_TIMESTAMPS.labels("clamped").inc()
            return now_ms
        FUTURE_TIMESTAMPS.labels("refused").inc()
        raise DecodeError(
            f"timestamp {ts} is {ahead / 1000:.0f} s ahead of the server's clock "
            f"(at most {self.max_skew_ms / 1000:g} s allowed): check the device's clock"
        )


def check_field_count(
    where: str, msg_type: str, known: int, new: Collection[str], max_fields: int
) -> None:
    """Refuse ``new`` field names when ``known`` + them would pass ``max_fields``."""
    if new and known + len(new) > max_fields:
        TOO_MANY_FIELDS.inc()
        sample = ", ".join(sorted(new)[:5]) + (", …" if len(new) > 5 else "")
        raise DecodeError(
            f"{where} has {known} {msg_type} fields and at most {max_fields} are allowed: "
            f"{len(new)} new fields refused ({sample}); delete unused ones with "
            "DELETE /api/resources/{orgId}/machines/{chassisId}/fields/{msgType}/{field}"
        )
