"""J1939: what marks a DBC J1939, PGN matching, transport protocol sessions, DM1 parsing."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livedata.decode import dm1 as dm1_module
from livedata.decode.can import CACHE_MAX, BusState, CanDecoder
from livedata.decode.dm1 import PARSED_MAX, parse_dm1
from livedata.decode.j1939 import frame_id, pgn_of
from livedata.decode.tp import T1, T2, T4, Reassembler
from livedata.model import Frame

FILES = Path(__file__).resolve().parent.parent / "files" / "can"
J1939_DBC = (FILES / "j1939.dbc").read_text()

BODY = bytes(range(20))
BODY_PGN = 0xFF10


def cm(sa: int, da: int, payload: bytes) -> tuple[int, bytes]:
    return 0x1CEC0000 | da << 8 | sa, payload


def dt(sa: int, da: int, seq: int, chunk: bytes) -> tuple[int, bytes]:
    return 0x1CEB0000 | da << 8 | sa, bytes([seq]) + chunk.ljust(7, b"\xff")


def bam(sa: int, pgn: int, payload: bytes) -> list[tuple[int, bytes]]:
    n = (len(payload) + 6) // 7
    head = bytes([32]) + struct.pack("<HB", len(payload), n) + b"\xff" + pgn.to_bytes(3, "little")
    return [cm(sa, 0xFF, head)] + [
        dt(sa, 0xFF, i + 1, payload[7 * i : 7 * i + 7]) for i in range(n)
    ]


def rts(sa: int, da: int, size: int, packets: int, pgn: int = BODY_PGN) -> tuple[int, bytes]:
    return cm(
        sa, da, bytes([16, size & 0xFF, size >> 8, packets, 0xFF]) + pgn.to_bytes(3, "little")
    )


def cts(receiver: int, sender: int, count: int, first: int) -> tuple[int, bytes]:
    return cm(receiver, sender, bytes([17, count, first, 0xFF, 0xFF, 0x10, 0xFF, 0x00]))


def feed_all(r: Reassembler, frames: list[tuple[int, bytes]], t0: int = 0, step: int = 10):
    done, errors = [], []
    for i, (can_id, data) in enumerate(frames):
        message, errs = r.feed(t0 + i * step, can_id, data)
        errors += errs
        if message is not None:
            done.append(message)
    return done, errors


def test_pgn_of_pdu1_and_pdu2() -> None:
    """PDU2 ids keep their group extension; PDU1 ids lose the destination address."""
    assert pgn_of(0x0CF00400) == 0xF004
    assert pgn_of(0x18F00417) == 0xF004
    assert pgn_of(0x0C000327) == 0x0000
    assert pgn_of(0x18EA00FE) == 0xEA00
    assert frame_id(0xEA00, sa=0xFE, da=0x00, priority=6) == 0x18EA00FE
    assert frame_id(0xFECA, sa=0x03) == 0x18FECA03


def test_j1939_marked_by_vframeformat() -> None:
    """A DBC whose messages say VFrameFormat J1939PG is J1939 without ProtocolType."""
    text = (
        'VERSION ""\nNS_ :\n\tBA_DEF_\n\tBA_\nBS_:\nBU_: A\n'
        'BO_ 2364539904 EEC1: 8 A\n SG_ rpm : 24|16@1+ (0.125,0) [0|8031] "rpm" A\n\n'
        'BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG";\n'
        'BA_DEF_DEF_ "VFrameFormat" "StandardCAN";\n'
        'BA_ "VFrameFormat" BO_ 2364539904 3;\n'
    )
    decoder = CanDecoder.from_dbc(text)
    assert decoder.j1939
    other_sa = Frame(0, 0x18F00417, True, bytes.fromhex("FFFFFF0032FFFFFF"))
    assert decoder.decode([other_sa]).values == {"rpm": 1600.0}


def test_plain_dbc_keeps_exact_ids() -> None:
    """A DBC not marked J1939 (or forced off) matches exact ids only, and has no TP or DM1."""
    decoder = CanDecoder.from_dbc(J1939_DBC, j1939=False)
    frames = [
        Frame(0, 0x0CF00405, True, bytes(8)),  # other source address: unknown
        Frame(1, 0x18FECA00, True, bytes(8)),  # DM1: unknown
        Frame(2, 0x0CF00400, True, bytes.fromhex("FFFF7DE02EFFFFFF")),
    ]
    result = decoder.decode(frames)
    assert (result.values, result.unknown, result.dm1) == (
        {"engine_torque": 0, "engine_speed": 1500.0},
        2,
        [],
    )


def test_forced_j1939_flag() -> None:
    """j1939=True makes an unmarked DBC match by PGN."""
    plain = J1939_DBC.replace('BA_ "ProtocolType" "J1939";', "")
    assert not CanDecoder.from_dbc(plain).j1939
    decoder = CanDecoder.from_dbc(plain, j1939=True)
    assert (
        decoder.decode_frame(0x18F00405, bytes.fromhex("FFFF7DE02EFFFFFF"))["engine_speed"]
        == 1500.0
    )


def test_id_memory_is_bounded() -> None:
    """Many distinct J1939 ids (untrusted) never grow the match memory past its bound."""
    decoder = CanDecoder.from_dbc(J1939_DBC)
    frames = [Frame(i, 0x18FE0000 | i, True, bytes(8)) for i in range(CACHE_MAX + 500)]
    result = decoder.decode(frames)
    assert result.unknown == len(frames)
    assert len(decoder._cache) <= CACHE_MAX + len(decoder._exact)


def test_sessions_continue_across_batches() -> None:
    """A BAM split over two batches is reassembled when the machine's BusState is passed."""
    decoder = CanDecoder.from_dbc(J1939_DBC)
    frames = [
        Frame(1000 + 50 * i, cid, True, data)
        for i, (cid, data) in enumerate(bam(0x21, BODY_PGN, BODY))
    ]
    state = BusState()
    first = decoder.decode(frames[:2], state)
    assert (first.values, first.errors, first.reassembled) == ({}, [], 0)
    second = decoder.decode(frames[2:], state)
    assert second.reassembled == 1 and second.errors == []
    assert second.values["door_count"] == 10 | 11 << 8
    # without the state the second half has no session
    alone = decoder.decode(frames[2:])
    assert alone.reassembled == 0 and "no open session" in alone.errors[0]


def test_bam_times_out_across_batches() -> None:
    """A BAM whose packets stop is abandoned once T1 has passed, counted once."""
    decoder = CanDecoder.from_dbc(J1939_DBC)
    state = BusState()
    frames = bam(0x21, BODY_PGN, BODY)
    decoder.decode([Frame(0, frames[0][0], True, frames[0][1])], state)
    late = Frame(T1 + 1, 0x0CF00400, True, bytes.fromhex("FFFF7DE02EFFFFFF"))
    result = decoder.decode([late], state)
    assert len(result.errors) == 1 and "timed out" in result.errors[0]
    assert len(state.reassembler) == 0


def test_rts_cts_windows_and_hold() -> None:
    """RTS/CTS follows the CTS windows; a hold (CTS of 0) waits T4, data must follow in T2."""
    r = Reassembler()
    frames = [
        rts(0x21, 0x00, 20, 3),
        cts(0x00, 0x21, 1, 1),
        dt(0x21, 0x00, 1, BODY[0:7]),
        cts(0x00, 0x21, 0, 0),  # hold
    ]
    done, errors = feed_all(r, frames)
    assert (done, errors) == ([], [])
    # still open after 1,000 ms of hold (T4 = 1,050)
    _, errors = r.feed(30 + T4 - 10, *cts(0x00, 0x21, 2, 2))
    assert errors == []
    _, errors = r.feed(30 + T4 - 10 + T2 + 1, *dt(0x21, 0x00, 2, BODY[7:14]))
    assert len(errors) == 2 and "timed out" in errors[0] and "no open session" in errors[1]


def test_packet_outside_window_abandons() -> None:
    """A data packet outside the CTS window abandons the RTS/CTS session."""
    r = Reassembler()
    done, errors = feed_all(
        r, [rts(0x21, 0x00, 20, 3), cts(0x00, 0x21, 1, 1), dt(0x21, 0x00, 3, BODY[14:20])]
    )
    assert done == [] and "outside the window 1..1" in errors[0]
    assert len(r) == 0


def test_abort_and_replacement_are_reported() -> None:
    """An abort and a new announcement over an open session each end it with one line."""
    r = Reassembler()
    _, errors = feed_all(
        r, [rts(0x21, 0x00, 20, 3), cm(0x00, 0x21, bytes([255, 3, 255, 255, 255, 0x10, 0xFF, 0]))]
    )
    assert len(errors) == 1 and "aborted by 0x00 (reason 3)" in errors[0]
    _, errors = feed_all(r, bam(0x21, BODY_PGN, BODY)[:1] + bam(0x21, BODY_PGN, BODY)[:1])
    assert len(errors) == 1 and "replaced" in errors[0]


def test_sessions_are_bounded() -> None:
    """Beyond max_sessions an announcement is refused; memory stays bounded."""
    r = Reassembler(max_sessions=4)
    announcements = [bam(sa, BODY_PGN, BODY)[0] for sa in range(10)]
    _, errors = feed_all(r, announcements)
    assert len(r) == 4
    assert len(errors) == 6 and all("refused: 4 sessions already open" in e for e in errors)


@pytest.mark.parametrize(("size", "packets"), [(5, 1), (20, 2), (1786, 0), (2000, 255)])
def test_malformed_announcements(size: int, packets: int) -> None:
    """Sizes outside 9..1785 bytes or a packet count that does not fit are refused."""
    r = Reassembler()
    _, errors = r.feed(0, *rts(0x21, 0x00, size, packets))
    assert len(errors) == 1 and "malformed announcement" in errors[0]
    assert len(r) == 0


def test_garbage_never_raises() -> None:
    """Random TP traffic gives errors and messages, never an exception, within bounds."""
    rng = random.Random(3)
    r = Reassembler(max_sessions=8)
    for i in range(20_000):
        can_id = rng.choice([0x1CEC0000, 0x1CEB0000]) | rng.randrange(1 << 16)
        data = bytes([rng.choice([16, 17, 19, 32, 255, 1, 2, 3])]) + rng.randbytes(
            rng.randint(0, 7)
        )
        r.feed(i * rng.randint(0, 3), can_id, data)
        assert len(r) <= 8


def test_dm1_filler_and_errors() -> None:
    """DM1: filler slots are skipped, short payloads refused."""
    dm1 = parse_dm1(5, 0x00, bytes([0x40, 0xFF, 0x6E, 0x00, 0x10, 0x03]) + b"\xff" * 8)
    assert [d.spn for d in dm1.dtcs] == [110] and dm1.lamps.mil == 1
    with pytest.raises(ValueError, match="at least 6"):
        parse_dm1(5, 0, b"\x00\xff")


def test_repeated_dm1_payloads_parse_as_the_first_time() -> None:
    """A DM1 payload seen before (bytes or bytearray) gives a DM1 equal to a fresh parse,
    sharing its lamps and DTCs; short payloads are refused each time; the memory of
    payloads stays within PARSED_MAX whatever is sent, and long payloads are not kept."""
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.choice([6, 8, 8, 8, 14, 40])) for _ in range(500)]
    payloads += [bytes([0x40, 0xFF, 0x6E, 0x00, 0x10, 0x03, 0xFF, 0xFF])] * 3
    for n, payload in enumerate(payloads):
        first = parse_dm1(n, 0x00, payload)
        again = parse_dm1(n + 1, 0x03, bytearray(payload))
        fresh = dm1_module.Dm1(n + 1, 0x03, *dm1_module._parse(payload))
        assert again == fresh and (again.ts, again.sa) == (n + 1, 0x03)
        assert first.lamps == again.lamps and first.dtcs == again.dtcs
        if len(payload) <= dm1_module.PARSED_BYTES:
            assert first.dtcs is again.dtcs and first.lamps is again.lamps
    assert all(len(key) <= dm1_module.PARSED_BYTES for key in dm1_module._parsed)
    for n in range(PARSED_MAX + 10):
        parse_dm1(0, 0, n.to_bytes(8, "big"))
    assert len(dm1_module._parsed) <= PARSED_MAX
    for _ in range(2):
        with pytest.raises(ValueError, match="at least 6"):
            parse_dm1(5, 0, b"\x00\xff\x00")


def test_short_dm1_frame_is_malformed() -> None:
    """A DM1 frame too short to hold a DTC is one malformed frame; the batch goes on."""
    decoder = CanDecoder.from_dbc(J1939_DBC)
    result = decoder.decode(
        [
            Frame(0, 0x18FECA00, True, b"\x00"),
            Frame(1, 0x0CF00400, True, bytes.fromhex("FFFF7DE02EFFFFFF")),
        ]
    )
    assert result.frames == 1 and result.dm1 == []
    assert result.errors == ["frame 0x18FECA00 (DM1): DM1 of 1 bytes, at least 6 expected"]


def test_reassembled_unknown_pgn_is_reported() -> None:
    """A completed multi-packet message of a PGN the DBC lacks is one error line."""
    decoder = CanDecoder.from_dbc(J1939_DBC)
    frames = [Frame(10 * i, cid, True, d) for i, (cid, d) in enumerate(bam(0x21, 0xFEEB, BODY))]
    result = decoder.decode(frames)
    assert result.errors == ["TP message PGN 65259 from 0x21: not in the DBC"]


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=9, max_size=300), min_size=1, max_size=6),
    order=st.randoms(use_true_random=False),
)
def test_interleaved_bams_reassemble_exactly(payloads: list[bytes], order: random.Random) -> None:
    """Any interleaving of BAMs from distinct senders (each in order) gives back each payload."""
    sessions = [bam(0x30 + i, BODY_PGN, p) for i, p in enumerate(payloads)]
    merged: list[tuple[int, bytes]] = []
    while any(sessions):
        pick = order.choice([s for s in sessions if s])
        merged.append(pick.pop(0))
    done, errors = feed_all(Reassembler(), merged, step=1)
    assert errors == []
    assert {m.sa: m.data for m in done} == {0x30 + i: p for i, p in enumerate(payloads)}
