"""J1939-73 DM1: active diagnostic trouble codes, decoded without any DBC entry.

DM1 (PGN 65226 = ``0xFECA``) is sent by every ECU with a fault once a second (and
on change): two bytes of lamp status, then four bytes per active DTC.  With one
DTC it fits a single frame; with more it travels over the transport protocol
(:mod:`livedata.decode.tp`) as a BAM.

Layout (SAE J1939-73, conversion method 0, the only one in use since 1996)::

    byte 0  bits 8-7 malfunction indicator lamp, 6-5 red stop, 4-3 amber warning, 2-1 protect
    byte 1  the same four lamps' flash status
    then per DTC:
    byte 2  SPN bits 1-8
    byte 3  SPN bits 9-16
    byte 4  bits 8-6 SPN bits 17-19, bits 5-1 FMI
    byte 5  bit 8 conversion method (CM), bits 7-1 occurrence count (OC)

Lamp status: 0 off, 1 on, 2 error, 3 not available.  Flash: 0 slow (1 Hz), 1 fast
(2 Hz), 2 reserved, 3 off / not available.  A DM1 whose only DTC is all zeros (SPN 0,
FMI 0) says "no active DTC"; all-``0xFF`` DTC slots are filler and ignored.  A DTC
with CM 1 was written with one of the pre-1996 SPN layouts, which cannot be told
apart from the message; it is decoded with the current layout and its ``cm`` is
reported so that a reader can tell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from livedata.model import slot_constructor

__all__ = ["PGN_DM1", "Dm1", "Dtc", "Lamps", "parse_dm1"]

PGN_DM1 = 0xFECA

LAMP_NAMES = ("mil", "red_stop", "amber_warning", "protect")
"""The four lamps, in the bit order of the message (most significant first)."""


@dataclass(frozen=True, slots=True)
class Dtc:
    """One diagnostic trouble code: suspect parameter, failure mode, occurrences."""

    spn: int
    fmi: int
    oc: int
    cm: int

    def to_dict(self) -> dict[str, int]:
        return {"spn": self.spn, "fmi": self.fmi, "oc": self.oc, "cm": self.cm}


@dataclass(frozen=True, slots=True)
class Lamps:
    """Lamp status (0 off, 1 on, 2 error, 3 n/a) and flash (0 slow, 1 fast, 3 none)."""

    mil: int
    red_stop: int
    amber_warning: int
    protect: int
    mil_flash: int
    red_stop_flash: int
    amber_warning_flash: int
    protect_flash: int

    def to_dict(self) -> dict[str, int]:
        return {  # spelt out: a comprehension of getattr costs 3x (one per DM1 with DTCs)
            "mil": self.mil,
            "mil_flash": self.mil_flash,
            "red_stop": self.red_stop,
            "red_stop_flash": self.red_stop_flash,
            "amber_warning": self.amber_warning,
            "amber_warning_flash": self.amber_warning_flash,
            "protect": self.protect,
            "protect_flash": self.protect_flash,
        }


@dataclass(frozen=True, slots=True)
class Dm1:
    """One DM1 message of one ECU (source address): the complete set of its active DTCs."""

    ts: int
    sa: int
    lamps: Lamps
    dtcs: tuple[Dtc, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "sa": self.sa,
            "lamps": self.lamps.to_dict(),
            "dtcs": [d.to_dict() for d in self.dtcs],
        }


LAMP_CHOICES = {0: "off", 1: "on"}

SUMMARY_FIELDS: tuple[tuple[str, int, int | None, dict[int, str] | None], ...] = (
    ("dtc_active", 0, None, None),
    *((f"lamp_{name}", 0, 1, LAMP_CHOICES) for name in LAMP_NAMES),
)
"""The fields ingest adds to a J1939 machine's ``vehicle_can`` records from its DM1s:
(name, minimum, maximum, choices); see :mod:`livedata.pipeline.dtcs`."""


def _quad(byte: int) -> tuple[int, int, int, int]:
    return (byte >> 6) & 3, (byte >> 4) & 3, (byte >> 2) & 3, byte & 3


_dm1 = slot_constructor(Dm1)
"""``Dm1(...)`` without the frozen dataclass's ``__init__`` (one per DM1)."""
PARSED_MAX = 4_096
"""Distinct short DM1 payloads remembered with their parse; beyond, the memory starts again."""
PARSED_BYTES = 32
"""Payloads up to this size are remembered (a single frame is 8 bytes): at most 4,096
entries of 32 bytes, whatever a device sends."""
_parsed: dict[bytes, tuple[Lamps, tuple[Dtc, ...]]] = {}


def parse_dm1(ts: int, sa: int, data: bytes) -> Dm1:
    """Decode a DM1 payload (8 bytes or a reassembled multi-packet one).

    Raises :class:`ValueError` for a payload shorter than 6 bytes.  Bytes after the
    last whole 4-byte DTC (the 2 reserved bytes of a single frame) and all-``0xFF``
    DTC slots (filler) are ignored.

    An ECU repeats its DM1 every second and most list nothing: a payload of at most
    :data:`PARSED_BYTES` seen before gives the same :class:`Lamps` and DTC tuple objects
    as its first parse (they are immutable), without parsing again.
    """
    key = data if type(data) is bytes else bytes(data)
    parts = _parsed.get(key)
    if parts is None:
        parts = _parse(key)
        if len(key) <= PARSED_BYTES:
            if len(_parsed) >= PARSED_MAX:
                _parsed.clear()
            _parsed[key] = parts
    return _dm1(ts, sa, *parts)


def _parse(data: bytes) -> tuple[Lamps, tuple[Dtc, ...]]:
    if len(data) < 6:
        raise ValueError(f"DM1 of {len(data)} bytes, at least 6 expected")
    lamps = Lamps(*_quad(data[0]), *_quad(data[1]))
    dtcs = []
    for i in range(2, len(data) - 3, 4):
        b0, b1, b2, b3 = data[i : i + 4]
        if b0 == b1 == b2 == b3 == 0xFF:
            continue  # filler
        spn = b0 | b1 << 8 | (b2 >> 5) << 16
        fmi = b2 & 0x1F
        if spn == 0 and fmi == 0:
            continue  # "no active DTC"
        dtcs.append(Dtc(spn=spn, fmi=fmi, oc=b3 & 0x7F, cm=b3 >> 7))
    return lamps, tuple(dtcs)


FMI_TEXT = {
    0: "above normal range (most severe)",
    1: "below normal range (most severe)",
    2: "erratic, intermittent or incorrect",
    3: "voltage above normal or shorted to high",
    4: "voltage below normal or shorted to low",
    5: "current below normal or open circuit",
    6: "current above normal or grounded circuit",
    7: "mechanical system not responding or out of adjustment",
    8: "abnormal frequency, pulse width or period",
    9: "abnormal update rate",
    10: "abnormal rate of change",
    11: "root cause not known",
    12: "bad intelligent device or component",
    13: "out of calibration",
    14: "special instructions",
    15: "above normal (least severe)",
    16: "above normal (moderately severe)",
    17: "below normal (least severe)",
    18: "below normal (moderately severe)",
    19: "received network data in error",
    20: "data drifted high",
    21: "data drifted low",
    31: "condition exists",
}
"""SAE J1939-73 failure mode identifiers, in words."""

SPN_NAMES = {
    51: "Throttle position",
    84: "Wheel-based vehicle speed",
    91: "Accelerator pedal position 1",
    94: "Fuel delivery pressure",
    96: "Fuel level 1",
    97: "Water in fuel indicator",
    98: "Engine oil level",
    100: "Engine oil pressure",
    102: "Intake manifold 1 pressure",
    105: "Intake manifold 1 temperature",
    108: "Barometric pressure",
    110: "Engine coolant temperature",
    111: "Engine coolant level",
    157: "Injector metering rail 1 pressure",
    158: "Key switch battery potential",
    168: "Battery potential / power input 1",
    171: "Ambient air temperature",
    174: "Fuel temperature 1",
    175: "Engine oil temperature 1",
    177: "Transmission oil temperature 1",
    190: "Engine speed",
    247: "Engine total hours of operation",
    513: "Actual engine percent torque",
    523: "Transmission current gear",
    597: "Brake switch",
    629: "Controller 1",
    639: "J1939 network 1",
    651: "Engine injector cylinder 1",
    652: "Engine injector cylinder 2",
    653: "Engine injector cylinder 3",
    654: "Engine injector cylinder 4",
    655: "Engine injector cylinder 5",
    656: "Engine injector cylinder 6",
    1569: "Engine protection torque derate",
    1761: "Aftertreatment 1 DEF tank volume",
    3031: "Aftertreatment 1 DEF tank temperature 1",
    3226: "Aftertreatment 1 outlet NOx 1",
    3251: "Aftertreatment 1 DPF differential pressure",
    3719: "Aftertreatment 1 DPF soot load percent",
    4364: "Aftertreatment 1 SCR conversion efficiency",
    5246: "Aftertreatment SCR operator inducement severity",
}
"""Names of common SPNs (SAE J1939-71/-73), for DTCs whose SPN no DBC names."""
