"""Journal files on disk: segment and snapshot naming, snapshot files, and SegmentReader.

Theory of operation
-------------------
A journal is a directory (created 0700) holding:

- segments ``seg-<first_seq:020d>.gwj`` (0600): frames back to back (``journal/frames.py``). Names sort in
  seq order; a segment's events run from its name's seq to the next segment's seq minus one.
- snapshots ``snap-<upto_seq:020d>.gws`` (0600): the state after event ``upto_seq``, written to a
  ``.tmp`` file, fsynced, renamed, then the directory fsynced, so a snapshot file is whole or absent.
  Layout: a 40-byte header (magic b"GWS1", header_len, flags, payload_len, upto_seq, at_ns, payload_crc,
  header_crc) then zstd(msgpack(Snapshot)). With flag ``SNAPSHOT_PACKED`` (what gw writes) each integer
  column is one msgpack bin of fixed-width little-endian integers (``PACKED_COLUMNS``), read back as an
  ``array.array``: decoding 1 M rows is then a copy per column instead of 20 M integer objects, which
  is most of a restart. Flag 0 (lists of integers) is still read.
- derived files the reader ignores: ``<segment>.broken`` (torn tails cut by recovery, kept for a person),
  ``<segment>.idx`` (journal/index.py), ``lock`` (the writer's).

Invariants the writer keeps and the reader checks: seq increases by exactly one across frames and
segments; only the newest segment can end in a torn frame (the writer fsyncs a segment before opening the
next). A snapshot is written only after every event up to its ``upto_seq`` is durable.

``SegmentReader`` modes:

- default (read-only): a torn tail at the end of the newest segment is reported in ``notes`` and left in
  place. Tools read a live journal this way and never modify it.
- ``truncate_torn_tail=True`` (recovery, before the writer starts): the torn bytes are copied to
  ``<segment>.broken`` and the segment is truncated at its last whole frame.
- ``salvage=True``: never raises on bad data; corrupt regions and gaps are skipped and reported.

What counts as a torn tail (a write that never finished, the normal crash tail): bytes at the end of the
newest segment, with no valid frame header after them, that are a frame cut short (a whole, checked
header and the file ends inside its payload, or a partial header that begins like one) or zeros (a file
extended before its data reached the disk). Filesystems that write data before they grow a file (ext4
data=ordered, xfs, btrfs) leave nothing else after a crash. So a frame whole in length that fails its
checksum there, or a whole header that does not check out, is damage to data the writer had finished
(bit rot, a bad disk, another process): strict reads and recovery raise ``JournalCorruptError`` naming
``gw-replay DIR repair`` instead of cutting it as routine. A bad frame followed by a valid one is
corruption too, as is a torn frame in an older segment. A sequence gap between segments (a segment file
removed) is a ``JournalGapError`` naming both sides.
"""

from __future__ import annotations

import array
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgspec
import zstandard

from journal.errors import CorruptFrame, JournalCorruptError, JournalGapError, TornFrame
from journal.events import PACKED_COLUMNS, JournalEvent, Snapshot
from journal.frames import (
    FRAME_HEADER_LEN,
    FrameHeader,
    decode_frame,
    decode_header,
    new_decompressor,
    next_frame_offset,
)

__all__ = [
    "Frame",
    "Note",
    "SegmentInfo",
    "SegmentReader",
    "SnapshotInfo",
    "cut_tail",
    "decode_snapshot",
    "encode_snapshot",
    "first_header",
    "walk_headers",
    "is_torn_tail",
    "fsync_dir",
    "list_segments",
    "list_snapshots",
    "make_journal_dir",
    "read_snapshot",
    "segment_info",
    "segment_name",
    "segment_paths",
    "snapshot_name",
    "write_snapshot",
]

SEGMENT_RE = re.compile(r"^seg-(\d{20})\.gwj$")
SNAPSHOT_RE = re.compile(r"^snap-(\d{20})\.gws$")
SNAPSHOT_TMP_SUFFIX = ".tmp"
BROKEN_SUFFIX = ".broken"
LOCK_NAME = "lock"  # the writer's advisory lock (journal.writer; journal.recovery.repair takes it too)
DIR_MODE = 0o700  # events name clients and their flows: owner only
FILE_MODE = 0o600

_SNAP_MAGIC = b"GWS1"
_SNAP_HEADER = struct.Struct("<4sHHQQqII")  # magic, header_len, flags, payload_len, upto_seq, at_ns, crcs
_SNAP_HEADER_CRC_OFF = _SNAP_HEADER.size - 4
# A snapshot of 1 M mappings is ~60 MB of msgpack; 4 GiB bounds memory for a corrupt header.
MAX_SNAPSHOT_RAW_BYTES = 4 << 30
_SNAP_ENCODER = msgspec.msgpack.Encoder()
_SNAP_DECODER = msgspec.msgpack.Decoder(Snapshot)  # flag 0: columns as msgpack lists
SNAPSHOT_PACKED = 1
assert array.array("I").itemsize == 4 and array.array("q").itemsize == 8
_SNAP_FIELDS = Snapshot.__struct_fields__
# The packed file's schema: Snapshot's fields, integer columns as bytes; msgspec checks every type.
_PackedSnapshot = msgspec.defstruct(
    "_PackedSnapshot",
    [(f.name, bytes if f.name in PACKED_COLUMNS else f.type) for f in msgspec.structs.fields(Snapshot)],
    array_like=True,
    frozen=True,
)
_SNAP_PACKED_DECODER = msgspec.msgpack.Decoder(_PackedSnapshot)
_SNAPSHOT_ZSTD_LEVEL = 3  # snapshots are rare and large: a better ratio is worth the time


def segment_name(first_seq: int) -> str:
    """File name of the segment whose first event has ``first_seq``."""
    return f"seg-{first_seq:020d}.gwj"


def snapshot_name(upto_seq: int) -> str:
    """File name of the snapshot taken after event ``upto_seq``."""
    return f"snap-{upto_seq:020d}.gws"


def make_journal_dir(directory: str | os.PathLike[str]) -> Path:
    """Create the journal directory (0700) if it does not exist; return it as a Path."""
    path = Path(directory)
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make renames and new files in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows: directories cannot be opened; NTFS metadata is journaled
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def segment_paths(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(first_seq, path) of every segment, in seq order (from names only)."""
    directory = Path(directory)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), directory / n) for n in names if (m := SEGMENT_RE.match(n))]
    found.sort()
    return found


# -- notes -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Note:
    """Something a reader found and handled: a torn tail, a skipped region, a gap, a bad snapshot."""

    kind: str  # "torn_tail" | "skipped" | "gap" | "bad_snapshot" | "stale_tmp"
    path: str
    offset: int
    bytes_count: int
    detail: str

    def __str__(self) -> str:
        return f"{Path(self.path).name}: {self.detail}"


# -- segment listing (headers only) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment's seq and time range from its frame headers (payloads are not read or checked).

    ``last_seq`` is ``first_seq - 1`` for an empty segment; ``tail_bytes`` are bytes after the last whole
    frame header walk (a torn tail, or corruption the walk could not pass).
    """

    path: Path
    first_seq: int
    last_seq: int
    min_at_ns: int | None
    max_at_ns: int | None
    size_bytes: int
    frames_count: int
    tail_bytes: int

    @property
    def events_count(self) -> int:
        """Events in the segment's whole frames."""
        return self.last_seq - self.first_seq + 1


def walk_headers(path: str | os.PathLike[str]) -> tuple[list[FrameHeader], int, int]:
    """A segment's whole frame headers, one 48-byte pread each (nothing decompressed), stopping at the
    first bad or incomplete frame; with the offset where the walk stopped and the file's size."""
    found = []
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        size, offset = os.fstat(fd).st_size, 0
        while offset < size:
            try:
                h = decode_header(os.pread(fd, FRAME_HEADER_LEN, offset), 0)
            except (TornFrame, CorruptFrame):
                break
            h = h._replace(offset=offset, end=offset + h.end)
            if h.end > size:
                break
            found.append(h)
            offset = h.end
    finally:
        os.close(fd)
    return found, offset, size


def segment_info(path: str | os.PathLike[str]) -> SegmentInfo:
    """Walk one segment's frame headers (no decompression) and summarize it."""
    path = Path(path)
    m = SEGMENT_RE.match(path.name)
    name_seq = int(m.group(1)) if m else 0
    first = last = lo = hi = None
    headers, end, size = walk_headers(path)
    for h in headers:
        if first is None:
            first = h.first_seq
        last = h.last_seq
        lo = h.min_at_ns if lo is None else min(lo, h.min_at_ns)
        hi = h.max_at_ns if hi is None else max(hi, h.max_at_ns)
    frames_count = len(headers)
    first = name_seq if first is None else first
    last = first - 1 if last is None else last
    return SegmentInfo(path, first, last, lo, hi, size, frames_count, size - end)


def list_segments(directory: str | os.PathLike[str]) -> list[SegmentInfo]:
    """Every segment with its first/last seq and time range, in seq order (headers only)."""
    return [segment_info(p) for _, p in segment_paths(Path(directory))]


def first_header(path: str | os.PathLike[str]) -> FrameHeader | None:
    """The first frame header of a segment, or None if it has no valid one (one 48-byte read)."""
    try:
        with open(path, "rb") as f:
            return decode_header(f.read(FRAME_HEADER_LEN), 0)
    except (OSError, TornFrame, CorruptFrame):
        return None


# -- snapshots ---------------------------------------------------------------------------------------


class SnapshotInfo(NamedTuple):
    """A snapshot file found by name (not yet read or checked)."""

    upto_seq: int
    path: Path


def list_snapshots(directory: str | os.PathLike[str]) -> list[SnapshotInfo]:
    """Snapshot files in ``directory``, oldest first (by the upto_seq in their names)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [SnapshotInfo(int(m.group(1)), Path(directory) / n) for n in names if (m := SNAPSHOT_RE.match(n))]
    found.sort()
    return found


def _pack(column: str, values) -> bytes:
    """One integer column as fixed-width little-endian bytes (OverflowError past its width: loud)."""
    packed = values if isinstance(values, array.array) else array.array(PACKED_COLUMNS[column], values)
    if packed.typecode != PACKED_COLUMNS[column]:
        packed = array.array(PACKED_COLUMNS[column], packed)
    if sys.byteorder == "big":
        packed = array.array(packed.typecode, packed)
        packed.byteswap()
    return packed.tobytes()


def _encode_columns(snapshot: Snapshot) -> bytes:
    """msgpack array of the Snapshot's fields, integer columns packed, one column per encode call.

    The GIL is free between columns: one call over 1 M mappings would hold it ~0.3 s and stall the packet
    loop.
    """
    parts = [b"\xdc" + len(_SNAP_FIELDS).to_bytes(2, "big")]  # msgpack array16 header
    for name in _SNAP_FIELDS:
        value = getattr(snapshot, name)
        parts.append(_SNAP_ENCODER.encode(_pack(name, value) if name in PACKED_COLUMNS else value))
    return b"".join(parts)


def _unpack(name: str, raw: bytes) -> array.array:
    column = array.array(PACKED_COLUMNS[name])
    if len(raw) % column.itemsize:
        raise ValueError(f"column {name} of {len(raw)} bytes is not whole {column.itemsize}-byte integers")
    column.frombytes(raw)
    if sys.byteorder == "big":
        column.byteswap()
    return column


def _decode_packed(raw: bytes) -> Snapshot:
    """A packed snapshot's payload; raises DecodeError (a field of the wrong type) or ValueError."""
    wire = _SNAP_PACKED_DECODER.decode(raw)
    return Snapshot(
        **{
            name: _unpack(name, value) if name in PACKED_COLUMNS else value
            for name, value in zip(_SNAP_FIELDS, msgspec.structs.astuple(wire))
        }
    )


def encode_snapshot(snapshot: Snapshot, cctx: zstandard.ZstdCompressor | None = None) -> bytes:
    """A snapshot file's bytes: checked header then zstd(msgpack(snapshot)), integer columns packed."""
    payload = (cctx or zstandard.ZstdCompressor(level=_SNAPSHOT_ZSTD_LEVEL)).compress(
        _encode_columns(snapshot)
    )
    fields = (
        _SNAP_MAGIC,
        _SNAP_HEADER.size,
        SNAPSHOT_PACKED,
        len(payload),
        snapshot.upto_seq,
        snapshot.at_ns,
        zlib.crc32(payload),
    )
    header_crc = zlib.crc32(_SNAP_HEADER.pack(*fields, 0)[:_SNAP_HEADER_CRC_OFF])
    return _SNAP_HEADER.pack(*fields, header_crc) + payload


def decode_snapshot(buf: bytes, path: str | os.PathLike[str] = "<snapshot>") -> Snapshot:
    """Check and decode a snapshot file's bytes.

    Raises: JournalCorruptError (naming ``path`` and the offset) for anything but a whole, valid snapshot.
    """
    if len(buf) < _SNAP_HEADER.size:
        raise JournalCorruptError(path, 0, f"snapshot file of {len(buf)} bytes is shorter than its header")
    magic, header_len, flags, payload_len, upto_seq, at_ns, payload_crc, header_crc = (
        _SNAP_HEADER.unpack_from(buf)
    )
    if magic != _SNAP_MAGIC or zlib.crc32(buf[:_SNAP_HEADER_CRC_OFF]) != header_crc:
        raise JournalCorruptError(path, 0, "bad snapshot header (magic or checksum)")
    if header_len != _SNAP_HEADER.size or flags not in (0, SNAPSHOT_PACKED):
        raise JournalCorruptError(
            path, 0, f"unknown snapshot header (header_len {header_len}, flags {flags:#x})"
        )
    if len(buf) != header_len + payload_len:
        raise JournalCorruptError(
            path, header_len, f"snapshot payload is {len(buf) - header_len} bytes, header says {payload_len}"
        )
    payload = memoryview(buf)[header_len:]
    if zlib.crc32(payload) != payload_crc:
        raise JournalCorruptError(path, header_len, "snapshot payload checksum mismatch")
    try:
        raw_len = zstandard.frame_content_size(payload)
        if not 0 <= raw_len <= MAX_SNAPSHOT_RAW_BYTES:
            raise JournalCorruptError(path, header_len, f"snapshot content size {raw_len} out of range")
        raw = zstandard.ZstdDecompressor().decompress(payload)
        snapshot = _decode_packed(raw) if flags == SNAPSHOT_PACKED else _SNAP_DECODER.decode(raw)
    except (zstandard.ZstdError, msgspec.DecodeError, ValueError) as exc:
        raise JournalCorruptError(path, header_len, f"snapshot payload does not decode: {exc}") from None
    if snapshot.upto_seq != upto_seq or snapshot.at_ns != at_ns:
        raise JournalCorruptError(path, 0, "snapshot header disagrees with its content")
    return snapshot


def write_snapshot(
    directory: str | os.PathLike[str],
    snapshot: Snapshot,
    *,
    fsync: bool = True,
    cctx: zstandard.ZstdCompressor | None = None,
) -> Path:
    """Write ``snap-<upto_seq>.gws`` atomically (temp file, fsync, rename, dir fsync); return its path."""
    directory = make_journal_dir(directory)
    path = directory / snapshot_name(snapshot.upto_seq)
    tmp = path.with_name(path.name + SNAPSHOT_TMP_SUFFIX)
    data = encode_snapshot(snapshot, cctx)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(directory)
    return path


def read_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Read and check one snapshot file.

    Raises: JournalCorruptError if it is not a whole, valid snapshot; OSError if it cannot be read.
    """
    with open(path, "rb") as f:
        return decode_snapshot(f.read(), path)


# -- reading -----------------------------------------------------------------------------------------


class Frame(NamedTuple):
    """One decoded frame and where it came from (``events`` may be filtered by the reader's window)."""

    path: Path
    offset: int
    first_seq: int
    count: int
    min_at_ns: int
    max_at_ns: int
    events: list[JournalEvent]


class SegmentReader:
    """The journal's one frame reader: frames and events of a directory in seq order, seq continuity checked.

    Raises (strict mode): JournalCorruptError for a corrupt frame, a torn one in a segment that is not the
    newest, or damage at the end of the newest segment (see the module doc: not a torn tail);
    JournalGapError when seq does not increase by exactly one, across frames and across segments (a
    missing segment file is a gap). A torn tail of the newest segment is added to ``notes`` (and cut with
    ``truncate_torn_tail=True``). With ``salvage=True`` nothing is raised for bad data: each skipped
    region and gap becomes a note (once per place).

    Frame at a time: ``frames`` (whole journal, by seq or time window, frames outside the window skipped
    by their headers), ``segment_frames`` (one segment, continuing the seq check from ``expected``) and
    ``poll`` (the whole frames a live writer has appended since an offset, for ``--follow``).
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, salvage: bool = False, truncate_torn_tail: bool = False
    ) -> None:
        if salvage and truncate_torn_tail:
            raise ValueError("salvage mode is read-only: it cannot truncate a torn tail")
        self.directory = Path(directory)
        self.salvage = salvage
        self.truncate_torn_tail = truncate_torn_tail
        self.notes: list[Note] = []
        self.last_seq: int | None = None  # seq of the last event in the frames walked so far
        self.expected: int | None = None  # the seq the next frame must start at (None: not checked)
        self._noted: set[tuple[str, str, int]] = set()
        self._dctx = new_decompressor()

    def note(self, kind: str, path: Path | str, offset: int, size: int, detail: str) -> None:
        """Record something handled (a torn tail, a skipped region, a gap), once per kind and place."""
        key = (kind, str(path), offset)
        if key not in self._noted:
            self._noted.add(key)
            self.notes.append(Note(kind, str(path), offset, size, detail))

    def segments(self) -> list[SegmentInfo]:
        """Every segment with first/last seq and time range (frame headers only, nothing decompressed)."""
        return list_segments(self.directory)

    def events(
        self, *, start_seq: int | None = None, since_ns: int | None = None, until_ns: int | None = None
    ) -> Iterator[JournalEvent]:
        """Events with seq >= start_seq and since_ns <= at_ns <= until_ns, in seq order."""
        for frame in self.frames(start_seq=start_seq, since_ns=since_ns, until_ns=until_ns):
            yield from frame.events

    def frames(
        self, *, start_seq: int | None = None, since_ns: int | None = None, until_ns: int | None = None
    ) -> Iterator[Frame]:
        """Decoded frames, in seq order, holding events in the window (others skipped by their headers).

        Segments wholly before ``start_seq`` are not opened; the seq check starts at the first segment read.
        """
        paths = segment_paths(self.directory)
        if not paths:
            return
        newest = paths[-1][1]
        if start_seq is not None:
            first_needed = 0
            for i, (seq, _) in enumerate(paths):
                if seq <= start_seq:
                    first_needed = i
            if paths[0][0] > start_seq:
                self.gap(
                    paths[0][1],
                    0,
                    start_seq,
                    paths[0][0],
                    f"events from seq {start_seq} are needed but the oldest segment starts at "
                    f"seq {paths[0][0]}"
                    f" (events {start_seq}..{paths[0][0] - 1} are missing)",
                )
            paths = paths[first_needed:]
        self.expected = None
        for name_seq, path in paths:
            if self.last_seq is None:
                self.last_seq = name_seq - 1  # an empty first segment still says where the journal stands
            yield from self.segment_frames(
                name_seq, path, path == newest, since_ns=since_ns, until_ns=until_ns, start_seq=start_seq
            )

    def segment_frames(
        self,
        name_seq: int,
        path: Path,
        is_newest: bool,
        *,
        since_ns: int | None = None,
        until_ns: int | None = None,
        start_seq: int | None = None,
    ) -> Iterator[Frame]:
        """One segment's decoded frames holding events in the window, continuing the seq check from
        ``self.expected`` (set it to None to start afresh); events are filtered to the window."""
        lo = since_ns if since_ns is not None else -(1 << 63)
        hi = until_ns if until_ns is not None else (1 << 63) - 1
        window = since_ns is not None or until_ns is not None
        buf = path.read_bytes()
        size = len(buf)
        offset = 0
        if self.expected is not None and name_seq != self.expected and size:
            # the previous segment ended before this one's name says it starts: a segment file is missing
            self.gap(
                path,
                0,
                self.expected,
                name_seq,
                f"the previous segment ends at seq {self.expected - 1} but this one starts at seq {name_seq}"
                f" (events {self.expected}..{name_seq - 1} are missing: a segment file was removed?)"
                if name_seq > self.expected
                else None,
            )
            self.expected = name_seq  # reported once; the frames are checked against the name from here
        first_in_segment = True
        while offset < size:
            try:
                h = decode_header(buf, offset)
                if h.end > size:
                    raise TornFrame(
                        offset, f"file ends {size - offset} bytes into a frame of {h.end - offset} bytes"
                    )
                skip = (
                    h.max_at_ns < lo or h.min_at_ns > hi or (start_seq is not None and h.last_seq < start_seq)
                )
                events = None if skip else decode_frame(buf, offset, self._dctx)[0]
            except (TornFrame, CorruptFrame) as exc:
                resume = self._bad_frame(path, buf, offset, exc, is_newest)
                if resume is None:
                    break
                offset = resume
                continue
            if first_in_segment and h.first_seq != name_seq:
                self._corrupt(
                    path,
                    offset,
                    f"segment is named for seq {name_seq} but its first frame holds seq {h.first_seq}",
                )
            first_in_segment = False
            if self.expected is not None and h.first_seq != self.expected:
                self.gap(path, offset, self.expected, h.first_seq)
            self.expected = h.last_seq + 1
            self.last_seq = h.last_seq
            offset = h.end
            if events is None:
                continue
            if (start_seq is not None and h.first_seq < start_seq) or (
                window and (h.min_at_ns < lo or h.max_at_ns > hi)
            ):
                events = [
                    e for e in events if (start_seq is None or e.seq >= start_seq) and lo <= e.at_ns <= hi
                ]
                if not events:
                    continue
            yield Frame(path, h.offset, h.first_seq, h.count, h.min_at_ns, h.max_at_ns, events)

    def poll(self, path: Path, offset: int) -> tuple[list[Frame], int]:
        """The whole frames from ``offset`` of a segment a writer may still be appending to, and the offset
        after them. Stops quietly at a frame not yet whole (or not yet readable whole) with nothing valid
        after it: the writer is in the middle of it. Bad data followed by a valid frame is bad data."""
        try:
            buf = path.read_bytes()
        except FileNotFoundError:
            return [], offset
        found = []
        while offset < len(buf):
            try:
                h = decode_header(buf, offset)
                if h.end > len(buf):
                    break
                events = decode_frame(buf, offset, self._dctx)[0]
            except TornFrame:
                break
            except CorruptFrame as exc:
                if next_frame_offset(buf, offset + 1) is None:
                    break  # maybe a frame still being written
                resume = self._bad_frame(path, buf, offset, exc, is_newest=False)
                if resume is None:
                    break
                offset = resume
                continue
            found.append(Frame(path, h.offset, h.first_seq, h.count, h.min_at_ns, h.max_at_ns, events))
            offset = h.end
        return found, offset

    def last_event(self) -> JournalEvent | None:
        """The last event of the last whole frame in the journal (decodes one frame), or None if empty."""
        for _, path in reversed(segment_paths(self.directory)):
            buf = path.read_bytes()
            offset = 0
            last = None
            while offset < len(buf):
                try:
                    h = decode_header(buf, offset)
                except (TornFrame, CorruptFrame):
                    break
                if h.end > len(buf):
                    break
                last, offset = h.offset, h.end
            if last is None:
                continue  # an empty segment: look at the one before
            try:
                return decode_frame(buf, last, self._dctx)[0][-1]
            except (TornFrame, CorruptFrame):
                return None  # a corrupt payload: the strict read reports it, this helper only looks
        return None

    # -- bad data ------------------------------------------------------------------------------------

    def _bad_frame(self, path: Path, buf: bytes, offset: int, exc: Exception, is_newest: bool) -> int | None:
        """Handle a torn or corrupt frame at ``offset``: return where to resume, None to end the segment."""
        size = len(buf)
        detail = getattr(exc, "detail", str(exc))
        following = next_frame_offset(buf, offset + 1)
        if following is None and is_newest:
            if is_torn_tail(buf, offset, exc):
                self._torn_tail(path, buf, offset, exc)
                return None
            if not self.salvage:
                raise JournalCorruptError(
                    path,
                    offset,
                    f"the last {size - offset} bytes are damaged, not a torn write ({detail}): data the "
                    "writer finished writing (and may have fsynced) no longer checks out",
                    hint=REPAIR_HINT.format(directory=path.parent),
                )
        elif not self.salvage:
            if isinstance(exc, TornFrame):
                detail = f"torn frame in a segment that is not the newest ({detail})"
            hint = REPAIR_HINT.format(directory=path.parent) if is_newest else None
            raise JournalCorruptError(path, offset, detail, hint=hint)
        resume = next_frame_offset(buf, offset + 1, whole=True, dctx=self._dctx)
        end = size if resume is None else resume
        self.note(
            "skipped",
            path,
            offset,
            end - offset,
            f"skipped {end - offset} bytes at offset {offset}: {detail}",
        )
        return resume

    def _torn_tail(self, path: Path, buf: bytes, offset: int, exc: Exception) -> None:
        """Report (and in truncate mode cut) the bytes from ``offset`` to the end of the newest segment."""
        cut = len(buf) - offset
        why = getattr(exc, "detail", str(exc))
        if not self.truncate_torn_tail:
            self.note(
                "torn_tail",
                path,
                offset,
                cut,
                f"torn tail of {cut} bytes at offset {offset} left in place ({why})",
            )
            return
        broken = cut_tail(path, buf, offset)
        self.note(
            "torn_tail",
            path,
            offset,
            cut,
            f"cut {cut} bytes of torn tail at offset {offset} (kept in {broken.name}; {why})",
        )

    def _corrupt(self, path: Path, offset: int, detail: str) -> None:
        if not self.salvage:
            raise JournalCorruptError(path, offset, detail)
        self.note("skipped", path, offset, 0, detail)

    def gap(self, path: Path, offset: int, expected: int, got: int, detail: str | None = None) -> None:
        """A sequence gap: JournalGapError, or a note in salvage mode."""
        if not self.salvage:
            raise JournalGapError(path, offset, expected, got, detail)
        self.note(
            "gap",
            path,
            offset,
            0,
            detail or f"sequence gap at offset {offset}: expected seq {expected}, found {got}",
        )


REPAIR_HINT = (
    "to start from the whole frames before it, run `gw-replay {directory} repair` (it keeps what it cuts "
    "in <segment>.broken); or read around it with salvage mode"
)


def is_torn_tail(buf: bytes, offset: int, exc: Exception) -> bool:
    """Whether the bytes from ``offset`` to the end look like a write that never finished: a frame cut
    short (its header whole and checked but the file ends inside its payload, or a partial header that
    begins like one), or zeros (a file extended before its data reached the disk). A frame whole in
    length that fails its checksum, or a whole header that does not check out, is damage instead."""
    if isinstance(exc, TornFrame):
        return True
    return not buf[offset:].strip(b"\0")


def cut_tail(path: Path, buf: bytes, offset: int) -> Path:
    """Copy a segment's bytes from ``offset`` to ``<segment>.broken`` (fsynced), then truncate the segment
    there (fsynced, and the directory); return the file that keeps them."""
    broken = _free_name(path.with_name(path.name + BROKEN_SUFFIX))
    fd = os.open(broken, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), FILE_MODE)
    try:
        view = memoryview(buf)[offset:]
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.ftruncate(fd, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)
    return broken


def _free_name(path: Path) -> Path:
    """``path`` if it does not exist, else ``path.1``, ``path.2``... (never overwrite a kept tail)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
