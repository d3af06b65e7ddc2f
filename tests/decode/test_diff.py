"""Differences between two DBC versions, signal by signal."""

from __future__ import annotations

from pathlib import Path

from livedata.decode.can import CanDecoder
from livedata.decode.diff import diff_signals

J1939_DBC = (Path(__file__).resolve().parent.parent / "files" / "can" / "j1939.dbc").read_text()


def test_added_removed_changed() -> None:
    """A new scale, unit and range, a removed and an added signal are each reported once."""
    new_text = (
        J1939_DBC.replace(
            'SG_ engine_speed : 24|16@1+ (0.125,0) [0|8031.875] "rpm" VCU',
            'SG_ engine_speed : 24|16@1+ (0.25,0) [0|16000] "1/min" VCU',
        )
        .replace(' SG_ door_count : 80|16@1+ (1,0) [0|65535] "" VCU\n', "")
        .replace(
            ' SG_ override_mode : 0|2@1+ (1,0) [0|3] "" ECM\n',
            ' SG_ override_mode : 0|2@1+ (1,0) [0|3] "" ECM\n'
            ' SG_ priority : 4|2@1+ (1,0) [0|3] "" ECM\n',
        )
    )
    diff = diff_signals(CanDecoder.from_dbc(J1939_DBC), CanDecoder.from_dbc(new_text))
    assert [(a["message"], a["name"], a["start"], a["length"]) for a in diff["added"]] == [
        ("TSC1", "priority", 4, 2)
    ]
    assert [(r["message"], r["name"]) for r in diff["removed"]] == [("BodyStatus", "door_count")]
    assert diff["changed"] == [
        {
            "message": "EEC1",
            "name": "engine_speed",
            "changes": {"scale": [0.125, 0.25], "unit": ["rpm", "1/min"], "max": [8031.875, 16000]},
        }
    ]


def test_same_file_has_no_differences() -> None:
    """A DBC compared with itself has nothing added, removed or changed; with nothing, all is added."""
    decoder = CanDecoder.from_dbc(J1939_DBC)
    assert diff_signals(decoder, decoder) == {"added": [], "removed": [], "changed": []}
    assert len(diff_signals(None, decoder)["added"]) == 9
