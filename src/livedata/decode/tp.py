"""SAE J1939-21 transport protocol: multi-packet messages reassembled, sans I/O.

A J1939 parameter group longer than 8 bytes travels as a connection-management
frame (TP.CM, PGN 60416 = ``0xEC00``) that announces it, then numbered data frames
(TP.DT, PGN 60160 = ``0xEB00``) of 7 bytes each:

- **BAM** (broadcast announce, control byte 32) to the global address ``0xFF``: the
  data frames follow at 50-200 ms intervals, nobody answers;
- **RTS/CTS** (request to send 16, clear to send 17, end of message
  acknowledgement 19, abort 255) to one destination: the receiver paces the sender
  with CTS windows and may ask for packets again.

:class:`Reassembler` listens to the bus passively (as a logger does: it sees both
sides of a connection and answers nothing) and keeps one session per sender and
destination (``(source address, destination address)``); feed it every TP frame of
one machine in timestamp order, across as many batches as the machine sends.  It
returns each completed message as a :class:`Reassembled` (PGN, source, destination,
payload) and a readable line for every session it had to give up.

Under stress (everything here is untrusted input):

- Timeouts are J1939-21's, measured on the frames' own timestamps: a session whose
  next frame does not come within T1 (750 ms) after a data frame, T2 (1,250 ms)
  after a CTS, T3 (1,250 ms) after an RTS or the last packet of a CTS window, or
  T4 (1,050 ms) after a CTS that holds the connection open, is abandoned.
- A lost packet of a BAM (a sequence number skipped) abandons the session at
  once; in RTS/CTS the receiver's CTS may ask for it again, and a packet outside
  the current window abandons the session.
- An announcement with a size outside 9..1,785 bytes (or the ``max_bytes`` given),
  a packet count that does not match the size, a data frame of a session that was
  never announced, a second announcement from the same sender and destination
  while one is open (the old one is abandoned, the new one starts) and an abort
  are each reported as one line.
- At most ``max_sessions`` sessions are open at once; an announcement beyond that
  is refused with one line.  Memory is therefore bounded by ``max_sessions`` ×
  ``max_bytes``.

Nothing here raises for bad frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "PGN_TP_CM",
    "PGN_TP_DT",
    "T1",
    "T2",
    "T3",
    "T4",
    "Reassembled",
    "Reassembler",
]

PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
GLOBAL = 0xFF
MAX_SIZE = 1785  # 255 packets of 7 bytes

T1 = 750
"""ms: the longest gap after a data frame before the next one."""
T2 = 1250
"""ms: the longest wait for data after a CTS."""
T3 = 1250
"""ms: the longest wait for a CTS (or acknowledgement) after an RTS or a window's last packet."""
T4 = 1050
"""ms: the longest wait after a CTS of 0 packets (the receiver holds the connection)."""

RTS, CTS, ACK, BAM, ABORT = 16, 17, 19, 32, 255


@dataclass(frozen=True, slots=True)
class Reassembled:
    """A complete multi-packet message: decode it like a frame of ``pgn`` from ``sa``."""

    ts: int
    """Timestamp of its last data frame (ms)."""
    pgn: int
    sa: int
    da: int
    data: bytes


@dataclass(slots=True)
class _Session:
    bam: bool
    pgn: int
    size: int
    packets: int
    deadline: int
    buffer: bytearray
    received: set[int] = field(default_factory=set)
    last_seq: int = 0
    window: range = range(0)

    def describe(self, sa: int, da: int) -> str:
        kind = "BAM" if self.bam else "RTS/CTS"
        to = "" if self.bam else f" to 0x{da:02X}"
        return (
            f"TP {kind} from 0x{sa:02X}{to} (PGN {self.pgn}, {self.size} bytes, "
            f"{len(self.received)} of {self.packets} packets)"
        )


def _pgn(data: bytes) -> int:
    return data[5] | data[6] << 8 | data[7] << 16


class Reassembler:
    """Open TP sessions of one machine's bus; see the module docstring."""

    def __init__(self, max_sessions: int = 32, max_bytes: int = MAX_SIZE) -> None:
        self.max_sessions = max_sessions
        self.max_bytes = min(max_bytes, MAX_SIZE)
        self._sessions: dict[tuple[int, int], _Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def expire(self, now: int) -> list[str]:
        """Abandon the sessions whose deadline is before ``now`` (ms); one line each."""
        errors: list[str] = []
        if not self._sessions:  # the usual batch: no multi-packet message under way
            return errors
        for key, session in list(self._sessions.items()):
            if session.deadline < now:
                del self._sessions[key]
                errors.append(f"{session.describe(*key)} abandoned: timed out")
        return errors

    def feed(self, ts: int, can_id: int, data: bytes) -> tuple[Reassembled | None, list[str]]:
        """Take one TP.CM or TP.DT frame (29-bit ``can_id``); returns (completed message, errors).

        Sessions whose deadline passed before ``ts`` are abandoned first.
        """
        errors = self.expire(ts)
        pf = (can_id >> 16) & 0xFF
        da = (can_id >> 8) & 0xFF
        sa = can_id & 0xFF
        if len(data) < 8:
            errors.append(f"TP frame 0x{can_id:08X}: {len(data)} bytes, expected 8")
            return None, errors
        if pf == PGN_TP_CM >> 8:
            self._control(ts, sa, da, data, errors)
            return None, errors
        if pf == PGN_TP_DT >> 8:
            return self._data(ts, sa, da, data, errors), errors
        errors.append(f"frame 0x{can_id:08X} is not a TP frame")
        return None, errors

    def _control(self, ts: int, sa: int, da: int, data: bytes, errors: list[str]) -> None:
        control = data[0]
        if control in (RTS, BAM):
            bam = control == BAM
            if bam:
                da = GLOBAL
            size = data[1] | data[2] << 8
            packets = data[3]
            pgn = _pgn(data)
            kind = "BAM" if bam else "RTS"
            if not 9 <= size <= self.max_bytes or packets != (size + 6) // 7:
                errors.append(
                    f"TP {kind} from 0x{sa:02X}: malformed announcement of PGN {pgn} "
                    f"({size} bytes in {packets} packets; 9..{self.max_bytes} bytes, 7 per packet)"
                )
                self._sessions.pop((sa, da), None)
                return
            old = self._sessions.pop((sa, da), None)
            if old is not None:
                errors.append(f"{old.describe(sa, da)} abandoned: a new {kind} replaced it")
            if len(self._sessions) >= self.max_sessions:
                errors.append(
                    f"TP {kind} from 0x{sa:02X} for PGN {pgn} refused: "
                    f"{self.max_sessions} sessions already open"
                )
                return
            self._sessions[(sa, da)] = _Session(
                bam=bam,
                pgn=pgn,
                size=size,
                packets=packets,
                deadline=ts + (T1 if bam else T3),
                buffer=bytearray(7 * packets),
            )
            return
        # CTS, ACK and ABORT may come from the receiver: the session is (da, sa)
        if control == CTS:
            session = self._sessions.get((da, sa))
            if session is None or session.bam:
                return  # a CTS for a connection we did not see open: nothing to follow
            count, first = data[1], data[2]
            if count == 0:
                session.deadline = ts + T4
                session.window = range(0)
                return
            session.window = range(first, first + count)
            session.deadline = ts + T2
            return
        if control == ACK:
            session = self._sessions.pop((da, sa), None)
            if session is not None and len(session.received) < session.packets:
                errors.append(f"{session.describe(da, sa)} abandoned: acknowledged incomplete")
            return
        if control == ABORT:
            for key in ((sa, da), (da, sa)):
                session = self._sessions.pop(key, None)
                if session is not None:
                    errors.append(
                        f"{session.describe(*key)} aborted by 0x{sa:02X} (reason {data[1]})"
                    )
            return
        errors.append(f"TP.CM from 0x{sa:02X}: unknown control byte {control}")

    def _data(
        self, ts: int, sa: int, da: int, data: bytes, errors: list[str]
    ) -> Reassembled | None:
        key = (sa, da)
        session = self._sessions.get(key)
        seq = data[0]
        if session is None:
            errors.append(f"TP.DT from 0x{sa:02X} packet {seq}: no open session")
            return None
        if session.bam:
            if seq == session.last_seq:
                return None  # a repeated packet: already have it
            if seq != session.last_seq + 1 or seq > session.packets:
                del self._sessions[key]
                errors.append(
                    f"{session.describe(sa, da)} abandoned: packet {seq} after "
                    f"{session.last_seq} (lost packet)"
                )
                return None
        elif seq not in session.window or seq > session.packets:
            del self._sessions[key]
            errors.append(
                f"{session.describe(sa, da)} abandoned: packet {seq} outside the window "
                f"{session.window.start}..{session.window.stop - 1}"
            )
            return None
        start = 7 * (seq - 1)
        session.buffer[start : start + 7] = data[1:8]
        session.received.add(seq)
        session.last_seq = seq
        session.deadline = ts + (T3 if not session.bam and seq == session.window[-1] else T1)
        if len(session.received) == session.packets:
            del self._sessions[key]  # an RTS/CTS acknowledgement that follows finds nothing
            return Reassembled(ts, session.pgn, sa, da, bytes(session.buffer[: session.size]))
        return None
