"""Helpers of the J1939 end-to-end tests (HTTP ingest and MQTT): frames, polling, DBC."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import httpx

from livedata.model import DeviceMessage, Frame, Kind, MsgType

FILES = Path(__file__).resolve().parent.parent / "files" / "can"
ORG = "demo"


def use_j1939_dbc(http: httpx.Client, chassis: str) -> str:
    """Upload tests/files/can/j1939.dbc through the API and decode ``chassis`` with it."""
    body = {"name": "j1939-test", "content": (FILES / "j1939.dbc").read_text()}
    created = http.post(f"/api/resources/{ORG}/dbc", json=body)
    assert created.status_code == 201, created.text
    assigned = http.put(
        f"/api/resources/{ORG}/machines/{chassis}/dbc", json={"dbcId": created.json()["id"]}
    )
    assert assigned.status_code == 200, assigned.text
    return chassis


def can_message(chassis: str, ts: int, frames: list[tuple[int, int, bytes]]) -> DeviceMessage:
    """A real-time vehicle_can message of ``chassis`` with 29-bit frames (ts, id, data)."""
    return DeviceMessage(
        ORG,
        chassis,
        MsgType.VEHICLE_CAN,
        ts,
        Kind.REALTIME,
        frames=tuple(Frame(t, cid, True, data) for t, cid, data in frames),
    )


def bam(sa: int, pgn: int, payload: bytes, t0: int) -> list[tuple[int, int, bytes]]:
    """A BAM of ``payload`` from ``sa`` as (ts, id, data): TP.CM at ``t0``, TP.DT 50 ms apart."""
    n = (len(payload) + 6) // 7
    head = bytes([32]) + struct.pack("<HB", len(payload), n) + b"\xff" + pgn.to_bytes(3, "little")
    frames = [(t0, 0x1CECFF00 | sa, head)]
    for i in range(n):
        chunk = payload[7 * i : 7 * i + 7].ljust(7, b"\xff")
        frames.append((t0 + 50 * (i + 1), 0x1CEBFF00 | sa, bytes([i + 1]) + chunk))
    return frames


def dtc(spn: int, fmi: int, oc: int) -> bytes:
    """One DTC of a DM1 (conversion method 0)."""
    return bytes([spn & 0xFF, (spn >> 8) & 0xFF, ((spn >> 16) & 7) << 5 | fmi, oc])


def history(http: httpx.Client, chassis: str, fields: str, ts: int) -> dict[str, Any]:
    response = http.get(
        f"/api/resources/{ORG}/_common/datasets/{chassis}/history",
        params={"msgType": "vehicle_can", "fields": fields, "from": ts, "to": ts},
    )
    assert response.status_code == 200, response.text
    return response.json()["series"]


def stored(http: httpx.Client, chassis: str, fields: str, ts: int) -> dict[str, Any]:
    """The history at ``ts`` once every field has its point there (or after 15 s)."""

    def complete() -> dict[str, Any] | None:
        series = history(http, chassis, fields, ts)
        return series if all(series.values()) else None

    return wait_for(complete) or history(http, chassis, fields, ts)


def dtcs(http: httpx.Client, chassis: str) -> dict[str, Any]:
    response = http.get(f"/api/resources/{ORG}/machines/{chassis}/dtcs")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)
