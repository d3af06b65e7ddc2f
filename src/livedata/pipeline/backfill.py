"""Import recorded CAN logs into history, as backfill.

A log file (candump ``.log``, Vector ``.asc`` / ``.blf``, PEAK ``.trc``, python-can
``.csv``, ASAM ``.mf4`` bus logging) is read with python-can's readers (asammdf
underneath for MF4), its frames are cut into the same one-second windows the edge
agent sends (``ts // 1000 * 1000``), each window is decoded with the machine's DBC
through :meth:`~livedata.decode.can.CanDecoder.decode` (latest frame wins within the
window, as live), and the resulting :class:`~livedata.model.Record` objects
(``vehicle_can``, kind ``backfill``) are written straight to the store in batches,
with each window's raw frames (:mod:`livedata.store.frames`, kept for re-decoding
like ingest's).  Nothing goes to the log, so nothing is pushed to live pages.

Idempotent and resumable.  A window's record is a pure function of the file, so a
second import of the same file writes the same keys, which every store keeps once
(:mod:`livedata.store.base`): importing twice never duplicates.  A window whose
frames are not consecutive in the file (an out-of-order recording) becomes two
records of the same second; the later one overwrites the fields it has, every time
the file is imported.  Batches end on window boundaries; after each batch is
stored, a checkpoint (the number of messages read up to the first one not yet
stored, and the counters so far) is written atomically next to the data, when
the caller gives a checkpoint path.  A resumed import skips that many messages
without decoding them, so an import killed at any moment and started again ends
with exactly the rows of an uninterrupted one, and loses only the batch that was
being written.  A checkpoint of another file (other size or modification time)
is ignored.

Under stress:

- **Bounded memory**: the file is streamed (python-can reads line by line or
  object by object, MF4 in chunks of 1000 records); one batch of
  ``batch_records`` records is held at a time, whatever the file's size.  Writing
  a batch while decoding the next was measured no faster (both ~190k frames/s on
  a loaded 2-core machine), so batches are decoded, then written.
- **Bad frames** (unknown ids, too short, bad multiplexer value) are counted, as
  ingest counts them, with the first :data:`ERROR_SAMPLES` messages kept; frames
  with a timestamp outside 2000 … tomorrow are counted as errors and skipped.
  Error and remote frames are skipped and counted.
- **A file python-can cannot parse** stops the import with an
  :class:`~livedata.errors.InputError` naming the file and the line (text formats)
  or the byte offset (BLF) where reading failed; everything before it is stored
  and checkpointed first.
- **A file of another machine's id space** decodes to nothing and shows up as
  many unknown ids in the summary.
- **Store errors** propagate (:class:`~livedata.errors.StoreError`); the
  checkpoint stays at the last stored batch, so running again resumes there.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import can
import orjson

from livedata.decode.can import BusState, CanDecoder
from livedata.errors import ConfigError, InputError
from livedata.model import DeviceMessage, Frame, Kind, MsgType, Record, Value
from livedata.pipeline.limits import EARLIEST_TS, TimestampPolicy
from livedata.store.base import Store
from livedata.store.frames import FrameBlob, pack_frames

FORMATS = (".log", ".asc", ".blf", ".trc", ".csv", ".mf4")
"""The file suffixes :func:`open_log` reads (case-insensitive)."""
WINDOW_MS = 1000
"""Frames of one second are decoded together, into one record (as the agent sends them)."""
BATCH_RECORDS = 2000
"""Records per store write."""
ERROR_SAMPLES = 10
"""Decode error messages kept in the summary (all are counted)."""


@dataclass
class ImportSummary:
    """What an import did: counters over the whole file (a resumed run included)."""

    file: str
    messages: int = 0
    """Messages read from the file, error and remote frames included."""
    frames: int = 0
    """Data frames handed to the decoder."""
    decoded: int = 0
    unknown: int = 0
    """Frames whose id the machine's DBC does not define."""
    errors: int = 0
    """Malformed frames and frames with an impossible timestamp."""
    skipped: int = 0
    """Error and remote frames (not data)."""
    records: int = 0
    points: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    resumed_at: int = 0
    """Messages skipped because a checkpoint said they were stored already."""
    error_samples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, camelCase as the API's."""
        d = asdict(self)
        return {
            "file": d["file"],
            "messages": d["messages"],
            "frames": d["frames"],
            "decoded": d["decoded"],
            "unknownIds": d["unknown"],
            "errors": d["errors"],
            "skipped": d["skipped"],
            "records": d["records"],
            "points": d["points"],
            "from": d["first_ts"],
            "to": d["last_ts"],
            "resumedAt": d["resumed_at"],
            "errorSamples": d["error_samples"],
        }


@dataclass(frozen=True)
class Progress:
    """How far an import is; ``total`` and ``done`` in bytes (or MF4 records)."""

    messages: int
    records: int
    done: int
    total: int
    elapsed: float


class _Position(io.RawIOBase):
    """A binary file that knows how far it has been read (for progress and BLF errors)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        self.pos += n or 0
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Lines:
    """A text file that counts the lines python-can's readers take from it."""

    def __init__(self, raw: _Position) -> None:
        self._text = io.TextIOWrapper(
            io.BufferedReader(raw, 1 << 16), encoding="utf-8", errors="replace"
        )
        self.line = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._text.readline()
        if not line:
            raise StopIteration
        self.line += 1
        return line

    def close(self) -> None:
        self._text.close()


Entry = tuple[float, int, bool, bytes | None]
"""One message of a log: timestamp (s), arbitration id, extended, data (``None``: an
error or remote frame)."""


class LogFile:
    """One log file, read as :data:`Entry` tuples.

    candump ``.log`` files are parsed by :func:`candump_entries` (python-can's rules,
    without a ``can.Message`` per line: the reader is most of an import's time);
    every other format by python-can's reader of its suffix.  A reader error becomes
    an :class:`InputError` naming :meth:`where` it happened.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.suffix = path.suffix.lower()
        if self.suffix not in FORMATS:
            raise InputError(
                f"{path.name}: unknown log format {path.suffix!r}; use one of {', '.join(FORMATS)}"
            )
        try:
            self.size = path.stat().st_size
            raw = path.open("rb")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        self._position = _Position(raw)
        self._lines: _Lines | None = None
        self._reader: Any = None
        self._read = 0
        self.total = self.size
        try:
            if self.suffix == ".mf4":
                self._position.close()
                self._reader = self._open_mf4()
            elif self.suffix == ".blf":
                self._reader = can.BLFReader(io.BufferedReader(self._position, 1 << 16))
            else:
                self._lines = _Lines(self._position)
                if self.suffix != ".log":
                    self._reader = _TEXT_READERS[self.suffix](self._lines)
        except InputError:
            raise
        except Exception as exc:  # python-can raises many kinds for a bad header
            self.close()
            raise InputError(
                f"{path.name}{self.where()}: not a valid {self.suffix} file: {exc}"
            ) from None
        self._iter: Iterator[Entry] = (
            candump_entries(self._lines)
            if self._reader is None and self._lines is not None
            else _entries(self._reader)
        )

    def _open_mf4(self) -> Any:
        try:
            import asammdf
            from can.io.mf4 import MF4Reader
        except ImportError:
            raise ConfigError("reading .mf4 needs asammdf: pip install 'livedata[mf4]'") from None
        reader = MF4Reader(str(self.path))
        mdf = asammdf.MDF(str(self.path))
        try:
            self.total = sum(g.channel_group.cycles_nr for g in mdf.groups)
        finally:
            mdf.close()
        return reader

    @property
    def done(self) -> int:
        """Bytes read so far (MF4: messages)."""
        return self._read if self.suffix == ".mf4" else self._position.pos

    def where(self) -> str:
        """`` line N`` or `` near byte N``: where reading is now, for error messages."""
        if self._lines is not None:
            return f" line {self._lines.line}"
        if self.suffix == ".blf":
            return f" near byte {self._position.pos}"
        return ""

    def __iter__(self) -> Iterator[Entry]:
        return self

    def __next__(self) -> Entry:
        try:
            entry = next(self._iter)
        except StopIteration:
            raise
        except Exception as exc:
            raise InputError(
                f"{self.path.name}{self.where()}: cannot read {self.suffix} data: "
                f"{str(exc) or type(exc).__name__}"
            ) from None
        self._read += 1
        return entry

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop()
        if self._lines is not None:
            self._lines.close()
        self._position.close()


def _entries(reader: Any) -> Iterator[Entry]:
    for msg in reader:
        data = None if msg.is_error_frame or msg.is_remote_frame else bytes(msg.data)
        yield msg.timestamp, msg.arbitration_id, msg.is_extended_id, data


_CAN_ERR_FLAG = 0x20000000
_CAN_ERR_BUSERROR = 0x00000080


def candump_entries(lines: Iterator[str]) -> Iterator[Entry]:
    """``candump -L`` lines (``(1768471200.000000) can0 0CF00400#FFFF867E18FFFFFF [R|T]``).

    The rules of python-can's ``CanutilsLogReader``: an id of more than 3 digits is
    extended, ``#R`` is a remote frame, ``##F…`` a CAN FD frame (flags digit, then
    data), an id with the error and bus-error flags an error frame; empty lines are
    skipped.  Raises ``ValueError`` for a line of another shape.
    """
    fromhex = bytes.fromhex
    for line in lines:
        parts = line.split()
        if not parts:
            continue
        stamp = parts[0]
        if not (
            (len(parts) == 3 or (len(parts) == 4 and parts[3] in ("R", "T", "r", "t")))
            and stamp[0] == "("
            and stamp[-1] == ")"
        ):
            raise ValueError("expected '(timestamp) interface id#data'")
        can_id, sep, data = parts[2].partition("#")
        if not sep:
            raise ValueError(f"expected id#data, not {parts[2]!r}")
        ident = int(can_id, 16)
        if data[:1] == "#":
            data = data[2:]
        if data[:1] in ("R", "r") or (ident & _CAN_ERR_FLAG and ident & _CAN_ERR_BUSERROR):
            yield float(stamp[1:-1]), ident & 0x1FFFFFFF, len(can_id) > 3, None
        else:
            yield float(stamp[1:-1]), ident & 0x1FFFFFFF, len(can_id) > 3, fromhex(data)


_TEXT_READERS: dict[str, Callable[[Any], Any]] = {
    ".asc": lambda f: can.ASCReader(f, relative_timestamp=False),
    ".trc": can.TRCReader,
    ".csv": can.CSVReader,
}


@dataclass
class Batch:
    records: list[Record]
    resume_at: int
    """Messages of the file that are stored once this batch is."""
    summary: dict[str, Any]
    """The counters as of ``resume_at`` (what a checkpoint keeps)."""
    blobs: list[FrameBlob] = field(default_factory=list)
    """The raw frames of the batch's windows (a window beyond the wire encoding's
    10,000 frames keeps none)."""


class LogImport:
    """The sans-store part of an import: a log file in, batches of records out.

    :meth:`next_batch` is synchronous (reading and decoding are CPU work); the
    async driver :func:`import_log` runs it in a thread while the previous batch
    is written.
    """

    def __init__(
        self,
        log: LogFile,
        decoder: CanDecoder,
        tenant: str,
        chassis: str,
        *,
        start_ms: int | None = None,
        resume_at: int = 0,
        summary: ImportSummary | None = None,
        batch_records: int = BATCH_RECORDS,
        now_ms: int | None = None,
    ) -> None:
        self.log = log
        self.decoder = decoder
        self.tenant = tenant
        self.chassis = chassis
        self.start_ms = start_ms
        self.resume_at = resume_at
        self.summary = summary or ImportSummary(str(log.path))
        self.summary.resumed_at = resume_at
        self.batch_records = batch_records
        self.latest_ts = (
            now_ms if now_ms is not None else int(time.time() * 1000)
        ) + TimestampPolicy().max_skew_ms
        self._batches = self._run()

    def next_batch(self) -> Batch | None:
        """The next batch of records, ``None`` at the end of the file.

        Raises :class:`InputError` when the file cannot be read further, after the
        batch of everything before the bad spot was returned.
        """
        return next(self._batches, None)

    def _shift(self, first_ts: int) -> int:
        if self.start_ms is not None:
            return self.start_ms - first_ts
        if first_ts < EARLIEST_TS:
            raise InputError(
                f"{self.log.path.name}: timestamps start at {first_ts / 1000:.3f} s, not a date "
                "(relative to the recording's start?): give the recording's start time (--start)"
            )
        return 0

    def _run(self) -> Iterator[Batch]:
        s = self.summary
        decode = self.decoder.decode
        tenant, chassis = self.tenant, self.chassis
        kind, msg_type = Kind.BACKFILL, MsgType.VEHICLE_CAN.value
        earliest, latest = EARLIEST_TS, self.latest_ts
        records: list[Record] = []
        blobs: list[FrameBlob] = []
        frames: list[Frame] = []
        window = -1
        shift: int | None = None
        read = 0
        bus = BusState()  # J1939 multi-packet messages span the one-second windows

        def close_window() -> None:
            message = DeviceMessage(
                tenant, chassis, MsgType.VEHICLE_CAN, window, kind, tuple(frames)
            )
            with contextlib.suppress(ValueError):  # beyond a message's 10,000 frames: values only
                blobs.append(pack_frames(message, window))
            result = decode(frames, bus)
            s.frames += len(frames)
            s.decoded += result.frames
            s.unknown += result.unknown
            s.errors += len(result.errors)
            room = ERROR_SAMPLES - len(s.error_samples)
            if room > 0 and result.errors:
                s.error_samples.extend(result.errors[:room])
            if result.values:
                values = cast(dict[str, Value], result.values)  # numbers are values
                records.append(Record(tenant, chassis, msg_type, window, kind, values))
                s.records += 1
                s.points += len(result.values)
                if s.first_ts is None or window < s.first_ts:
                    s.first_ts = window
                if s.last_ts is None or window > s.last_ts:
                    s.last_ts = window

        messages = iter(self.log)
        failure: InputError | None = None
        try:
            for stamp, ident, extended, data in messages:
                read += 1
                if shift is None:
                    shift = self._shift(round(stamp * 1000))
                if read <= self.resume_at:
                    continue
                s.messages = read
                if data is None:
                    s.skipped += 1
                    continue
                ts = round(stamp * 1000) + shift
                if not earliest <= ts <= latest:
                    s.errors += 1
                    if len(s.error_samples) < ERROR_SAMPLES:
                        s.error_samples.append(
                            f"{self.log.path.name}{self.log.where()}: timestamp {ts} ms is "
                            "not between 2000 and tomorrow"
                        )
                    continue
                second = ts - ts % WINDOW_MS
                if second != window:
                    if frames:
                        close_window()
                        frames = []
                        if max(len(records), len(blobs)) >= self.batch_records:
                            yield Batch(records, read - 1, asdict(s), blobs)
                            records, blobs = [], []
                    window = second
                frames.append(Frame(ts, ident, extended, data))
        except InputError as exc:
            failure = exc
        if frames:
            close_window()
        if failure is not None:
            s.messages = read
            if records or blobs:
                # the partial window is stored too: a rerun of a fixed file rewrites it whole
                yield Batch(records, read, asdict(s), blobs)
            raise failure
        s.messages = read
        if records or blobs:
            yield Batch(records, read, asdict(s), blobs)


@dataclass(frozen=True)
class Checkpoint:
    """Where a resumable import keeps its position (a small JSON file, replaced atomically)."""

    path: Path

    @staticmethod
    def identity(log: Path) -> dict[str, Any]:
        st = log.stat()
        return {"file": str(log.resolve()), "size": st.st_size, "mtimeNs": st.st_mtime_ns}

    def load(self, log: Path) -> tuple[int, ImportSummary] | None:
        """The stored position and counters, or ``None`` (none, unreadable or another file)."""
        try:
            data = orjson.loads(self.path.read_bytes())
            if data["identity"] != self.identity(log):
                return None
            return int(data["resumeAt"]), ImportSummary(**data["summary"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, log: Path, resume_at: int, summary: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {"identity": self.identity(log), "resumeAt": resume_at, "summary": summary}
        with tmp.open("wb") as f:
            f.write(orjson.dumps(body))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


async def import_log(
    store: Store,
    decoder: CanDecoder,
    tenant: str,
    chassis: str,
    path: Path,
    *,
    start_ms: int | None = None,
    checkpoint: Checkpoint | None = None,
    progress: Callable[[Progress], None] | None = None,
    batch_records: int = BATCH_RECORDS,
) -> ImportSummary:
    """Import one log file into ``store`` as backfill of ``tenant``/``chassis``; see the module doc.

    With ``checkpoint`` the import resumes where an earlier run of the same file
    stopped, and the checkpoint is removed when the file is done.  ``progress`` is
    called after each stored batch.  Reading and decoding run in a thread, so the
    event loop stays free; a batch is written after it is decoded, not while the
    next one is (see :data:`BATCH_RECORDS`).
    """
    resume_at, summary = 0, None
    if checkpoint is not None and (saved := checkpoint.load(path)) is not None:
        resume_at, summary = saved
    log = LogFile(path)
    job = LogImport(
        log,
        decoder,
        tenant,
        chassis,
        start_ms=start_ms,
        resume_at=resume_at,
        summary=summary,
        batch_records=batch_records,
    )
    s = job.summary
    started = time.monotonic()
    try:
        while (batch := await asyncio.to_thread(job.next_batch)) is not None:
            await store.write(batch.records)
            await store.write_frames(batch.blobs)
            if checkpoint is not None:
                await asyncio.to_thread(checkpoint.save, path, batch.resume_at, batch.summary)
            if progress is not None:
                elapsed = time.monotonic() - started
                progress(Progress(s.messages, s.records, log.done, log.total, elapsed))
    finally:
        log.close()
    if checkpoint is not None:
        checkpoint.clear()
    return s
