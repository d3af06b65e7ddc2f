"""The signal catalog of a DBC file, for people choosing what to chart (sans I/O).

:func:`signal_catalog` lists every signal of a parsed DBC (a cantools
:class:`~cantools.database.can.Database`) with its message, CAN id, J1939 parameter
group number (extended ids), unit, range, resolution (scale), offset, value table
and comment.  :func:`error_location` pulls the line and column out of cantools' syntax errors, so a page can point at them.
"""

from __future__ import annotations

import re
from typing import Any

from cantools.database.can import Database

_LOCATION = re.compile(r"line (\d+), column (\d+)")


def pgn(frame_id: int) -> int:
    """The J1939 parameter group number of a 29-bit id (PDU1: destination dropped)."""
    dp = (frame_id >> 24) & 0x3
    pf = (frame_id >> 16) & 0xFF
    ps = (frame_id >> 8) & 0xFF
    return (dp << 16) | (pf << 8) | (ps if pf >= 240 else 0)


def signal_catalog(db: Database) -> list[dict[str, Any]]:
    """Every signal (multiplexer selectors included), by message then signal name."""
    out: list[dict[str, Any]] = []
    for message in sorted(db.messages, key=lambda m: m.name):
        ident = (
            f"0x{message.frame_id:08X}"
            if message.is_extended_frame
            else f"0x{message.frame_id:03X}"
        )
        for signal in sorted(message.signals, key=lambda s: s.name):
            choices: dict[Any, Any] = dict(signal.choices or {})
            out.append(
                {
                    "name": signal.name,
                    "message": message.name,
                    "id": ident,
                    "pgn": pgn(message.frame_id) if message.is_extended_frame else None,
                    "unit": signal.unit or "",
                    "min": signal.minimum,
                    "max": signal.maximum,
                    "resolution": signal.conversion.scale,
                    "offset": signal.conversion.offset,
                    "choices": {str(k): str(v) for k, v in choices.items()} or None,
                    "comment": signal.comment or "",
                    "multiplexer": signal.is_multiplexer,
                }
            )
    return out


def error_location(message: str) -> dict[str, int] | None:
    """``{"line", "column"}`` named in a cantools error message, if any."""
    m = _LOCATION.search(message)
    return {"line": int(m[1]), "column": int(m[2])} if m else None
