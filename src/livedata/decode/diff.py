"""What changed between two versions of a DBC, signal by signal (sans I/O).

:func:`diff_signals` compares two decoders' signals, keyed by (message name, signal
name): ``added`` and ``removed`` list signals that exist in only one, ``changed``
lists each signal whose layout or meaning differs with the old and new value of every
property that changed -- the CAN id, start bit, length, byte order, signedness,
scale, offset, unit, minimum, maximum, value table and multiplexer value.  A changed
scale or offset changes every decoded value of the signal; a changed unit or range
only how it is shown.
"""

from __future__ import annotations

from typing import Any

from cantools.database.can import Message, Signal

from livedata.decode.can import CanDecoder, format_can_id

__all__ = ["diff_signals"]


def _properties(message: Message, signal: Signal) -> dict[str, Any]:
    return {
        "id": format_can_id(message.frame_id, message.is_extended_frame),
        "start": signal.start,
        "length": signal.length,
        "byteOrder": signal.byte_order,
        "signed": signal.is_signed,
        "scale": signal.conversion.scale,
        "offset": signal.conversion.offset,
        "unit": signal.unit or "",
        "min": signal.minimum,
        "max": signal.maximum,
        "choices": (
            {str(k): str(v) for k, v in signal.choices.items()} if signal.choices else None
        ),
        "multiplexerIds": signal.multiplexer_ids,
    }


def _signals(decoder: CanDecoder | None) -> dict[tuple[str, str], dict[str, Any]]:
    if decoder is None:
        return {}
    return {
        (m.name, s.name): _properties(m, s)
        for m in decoder.database.messages
        for s in m.signals
        if not s.is_multiplexer
    }


def diff_signals(old: CanDecoder | None, new: CanDecoder) -> dict[str, list[dict[str, Any]]]:
    """``{"added": [...], "removed": [...], "changed": [...]}``, each sorted by name
    (``old=None``: there was no earlier version, every signal is added).

    Added and removed entries are ``{"message", "name", **properties}``; changed ones
    ``{"message", "name", "changes": {property: [old, new]}}``.
    """
    before, after = _signals(old), _signals(new)
    added = [
        {"message": m, "name": n, **after[(m, n)]} for m, n in sorted(after.keys() - before.keys())
    ]
    removed = [
        {"message": m, "name": n, **before[(m, n)]} for m, n in sorted(before.keys() - after.keys())
    ]
    changed = []
    for key in sorted(before.keys() & after.keys()):
        a, b = before[key], after[key]
        changes = {p: [a[p], b[p]] for p in a if a[p] != b[p]}
        if changes:
            changed.append({"message": key[0], "name": key[1], "changes": changes})
    for entries in (added, removed, changed):
        entries.sort(key=lambda e: (e["name"], e["message"]))
    return {"added": added, "removed": removed, "changed": changed}
