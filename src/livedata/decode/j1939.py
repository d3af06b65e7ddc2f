"""SAE J1939 identifiers: parameter group numbers, matching keys, and what marks a DBC J1939.

A 29-bit J1939 identifier is ``priority (3) | EDP, DP (2) | PF (8) | PS (8) | SA (8)``.
The parameter group number (PGN) is ``EDP DP PF PS`` when PF >= 240 (PDU2: PS is a
group extension) and ``EDP DP PF 00`` when PF < 240 (PDU1: PS is the destination
address).  Two frames of one parameter group differ only in priority, source
address and, for PDU1, destination -- what :func:`match_key` leaves out.
"""

from __future__ import annotations

from cantools.database.can import Database, Message

__all__ = ["frame_id", "is_j1939", "match_key", "pgn_of", "source_address"]

PDU2_MIN_PF = 240


def pgn_of(can_id: int) -> int:
    """The PGN of a 29-bit id (destination address left out for PDU1 groups)."""
    pgn = (can_id >> 8) & 0x3FFFF
    if (pgn >> 8) & 0xFF < PDU2_MIN_PF:
        pgn &= 0x3FF00
    return pgn


def match_key(can_id: int) -> int:
    """The PGN, as the key frames of one parameter group share."""
    return pgn_of(can_id)


def source_address(can_id: int) -> int:
    return can_id & 0xFF


def frame_id(pgn: int, sa: int, da: int = 0xFF, priority: int = 6) -> int:
    """A 29-bit id for ``pgn`` from ``sa`` (to ``da`` when the group is PDU1)."""
    if (pgn >> 8) & 0xFF < PDU2_MIN_PF:
        pgn = (pgn & 0x3FF00) | da
    return (priority & 7) << 26 | pgn << 8 | sa


def _attribute(owner: object, name: str) -> object:
    dbc = getattr(owner, "dbc", None)
    attributes = getattr(dbc, "attributes", None) or {}
    attr = attributes.get(name)
    return None if attr is None else attr.value


def _message_is_j1939(message: Message) -> bool:
    value = _attribute(message, "VFrameFormat")
    if value is None:
        return False
    if isinstance(value, str):
        return value == "J1939PG"
    # an enum attribute may come back as its index: look the name up in its definition
    attributes = message.dbc.attributes if message.dbc is not None else {}
    definition = getattr(attributes.get("VFrameFormat"), "definition", None)
    choices = getattr(definition, "choices", None) or []
    return isinstance(value, int) and 0 <= value < len(choices) and choices[value] == "J1939PG"


def is_j1939(db: Database) -> bool:
    """Whether the DBC says it is J1939: ``BA_ "ProtocolType" "J1939"`` or a
    message with ``VFrameFormat`` ``J1939PG``."""
    if str(_attribute(db, "ProtocolType") or "").upper() == "J1939":
        return True
    return any(_message_is_j1939(m) for m in db.messages)
