"""Validation of ``client_raw_data``: ready JSON values, nothing to decode.

A device sends a flat JSON object of named values (app metrics, GPS).  This module
only checks it: what passes is safe to store and chart.
"""

from __future__ import annotations

import math

from livedata.errors import DecodeError
from livedata.model import Value, valid_id

__all__ = ["decode_values"]

_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 63) - 1
_VALID_MAX = 10_000
_valid: set[str] = set()
"""Names :func:`valid_id` accepted already (at most ``_VALID_MAX``): a fleet sends the
same few names every second, and the check is most of the cost of a payload."""


def _show(key: object) -> str:
    """A short, safe rendering of a key for an error line (keys may be huge or odd)."""
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_values(
    obj: object, max_fields: int = 500, max_str: int = 256
) -> tuple[dict[str, Value], list[str]]:
    """Check a ``client_raw_data`` payload and return ``(values, errors)``.

    Whole-payload problems raise :class:`~livedata.errors.DecodeError`: ``obj`` is
    not a dict (a JSON object), or it has more than ``max_fields`` keys.  Nothing of
    such a payload is kept.

    Otherwise each key is judged on its own; a bad one is skipped with one line in
    ``errors`` and the others are kept:

    - keys must be strings satisfying :func:`livedata.model.valid_id`
      (``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``);
    - ``int`` values are kept if they fit in 64 bits, ``float`` values if finite
      (NaN and infinities are rejected), ``bool`` becomes ``0``/``1``;
    - ``str`` values are kept up to ``max_str`` characters (longer ones are
      rejected, not truncated);
    - ``None`` entries are dropped silently (a metric with no reading this second);
    - nested objects and arrays, and any other type, are rejected.

    Keys are rendered shortened in the error lines, so an attacker's megabyte key
    does not become a megabyte error message.
    """
    if not isinstance(obj, dict):
        raise DecodeError(f"client_raw_data must be a JSON object, not {type(obj).__name__}")
    if len(obj) > max_fields:
        raise DecodeError(f"client_raw_data has {len(obj)} fields, at most {max_fields} allowed")
    values: dict[str, Value] = {}
    errors: list[str] = []
    valid = _valid
    for key, value in obj.items():
        if key not in valid:
            if not isinstance(key, str) or not valid_id(key):
                errors.append(
                    f"field {_show(key)}: invalid name (letters, digits, '_', '.', '-'; "
                    "starting with a letter or digit; at most 64 characters)"
                )
                continue
            if len(valid) < _VALID_MAX and type(key) is str:
                valid.add(key)
        vtype = type(value)
        if vtype is float:  # the usual value first, without the chain below
            if math.isfinite(value):
                values[key] = value
            else:
                errors.append(f"field {key!r}: {value} is not a finite number")
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            values[key] = int(value)
        elif isinstance(value, int):
            if _INT_MIN <= value <= _INT_MAX:
                values[key] = value
            else:
                errors.append(f"field {key!r}: integer out of 64-bit range")
        elif isinstance(value, float):
            if math.isfinite(value):
                values[key] = value
            else:
                errors.append(f"field {key!r}: {value} is not a finite number")
        elif isinstance(value, str):
            if len(value) <= max_str:
                values[key] = value
            else:
                errors.append(
                    f"field {key!r}: string of {len(value)} characters, at most {max_str}"
                )
        elif isinstance(value, dict | list | tuple):
            kind = "object" if isinstance(value, dict) else "array"
            errors.append(f"field {key!r}: nested {kind} not allowed, values must be flat")
        else:
            errors.append(f"field {key!r}: unsupported type {type(value).__name__}")
    return values, errors
