"""Per-segment audit index: a derived file, rebuildable at any time, that lets an audit skip segments.

``<segment>.idx`` holds the segment's seq and time range and the sorted set of external endpoints
``(proto, ext_addr, ext_port)`` that its MappingCreated and MappingExpired events touch, each packed into
one int (``endpoint_key``). An audit for "who held 198.51.100.2:40001/udp at T" then opens only the
segments whose index holds that key and whose first event is not after T.

File layout: magic ``b"GWI2"``, a little-endian u32 zlib.crc32 of the payload, then the payload
(msgpack of ``SegmentIndex``). An index whose magic, checksum or content does not check out is bad: the
readers note it (``bad_index``) and fall back to the segment itself, and ``gw-replay verify`` reports it.
An index is stale when the segment's size or mtime differs from the ones it records; it is then rebuilt.
Writing one is the writer's job (when it closes a segment) and ``gw-audit reindex``'s; it is best effort
(a read-only journal directory just means no cache). A segment's torn or corrupt tail ends the index
walk; ``complete`` says so (read such a segment with the reader).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec

from journal.errors import CorruptFrame, JournalCorruptError, TornFrame
from journal.events import MappingCreated, MappingExpired
from journal.frames import decode_frame, new_decompressor
from journal.segments import FILE_MODE, SEGMENT_RE, segment_paths

__all__ = [
    "INDEX_SUFFIX",
    "INDEX_TMP_SUFFIX",
    "INDEX_VERSION",
    "SegmentIndex",
    "build_index",
    "decode_index",
    "encode_index",
    "endpoint_key",
    "index_path",
    "is_current",
    "load_or_build_index",
    "read_index",
    "remove_stale_index_tmp",
    "segments_touching",
    "write_index",
]

INDEX_SUFFIX = ".idx"
INDEX_TMP_SUFFIX = ".idx.tmp"
INDEX_VERSION = 2  # bump when SegmentIndex or the file layout changes: old files are rebuilt, never misread
_INDEX_MAGIC = b"GWI2"
_INDEX_HEADER = struct.Struct("<4sI")  # magic, crc32 of the payload


class SegmentIndex(msgspec.Struct, frozen=True, array_like=True):
    """What one segment holds, for skipping it without decompressing it."""

    version: int
    size_bytes: int  # of the segment when indexed (staleness check)
    mtime_ns: int
    first_seq: int
    last_seq: int  # first_seq - 1 when empty
    min_at_ns: int | None
    max_at_ns: int | None
    endpoints: list[int]  # sorted unique endpoint_key of MappingCreated/MappingExpired events
    complete: bool = True  # False: the walk stopped at a torn or corrupt frame

    def touches(self, proto: int, addr: int, port: int) -> bool:
        """Whether a MappingCreated or MappingExpired in the segment names this external endpoint."""
        key = endpoint_key(proto, addr, port)
        i = bisect.bisect_left(self.endpoints, key)
        return i < len(self.endpoints) and self.endpoints[i] == key


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(SegmentIndex)


def encode_index(index: SegmentIndex) -> bytes:
    """An index file's bytes: magic, payload checksum, msgpack payload."""
    payload = _ENCODER.encode(index)
    return _INDEX_HEADER.pack(_INDEX_MAGIC, zlib.crc32(payload)) + payload


def decode_index(buf: bytes, path: str | os.PathLike[str] = "<index>") -> SegmentIndex:
    """Check and decode an index file's bytes.

    Raises: JournalCorruptError for a bad magic, checksum, version or payload (an old version included).
    """
    if len(buf) < _INDEX_HEADER.size:
        raise JournalCorruptError(path, 0, f"index file of {len(buf)} bytes is shorter than its header")
    magic, crc = _INDEX_HEADER.unpack_from(buf)
    payload = memoryview(buf)[_INDEX_HEADER.size :]
    if magic != _INDEX_MAGIC:
        raise JournalCorruptError(path, 0, f"bad index magic {magic!r} (an older or foreign file)")
    if zlib.crc32(payload) != crc:
        raise JournalCorruptError(path, _INDEX_HEADER.size, "index checksum mismatch")
    try:
        index = _DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise JournalCorruptError(path, _INDEX_HEADER.size, f"index does not decode: {exc}") from None
    if index.version != INDEX_VERSION:
        raise JournalCorruptError(path, _INDEX_HEADER.size, f"index version {index.version}")
    return index


def read_index(segment_path: str | os.PathLike[str]) -> SegmentIndex | None:
    """The segment's ``.idx`` as stored (current or not); None when there is none.

    Raises: JournalCorruptError when the file does not check out; OSError when it cannot be read.
    """
    target = index_path(segment_path)
    try:
        buf = target.read_bytes()
    except FileNotFoundError:
        return None
    return decode_index(buf, target)


def is_current(index: SegmentIndex, st: os.stat_result) -> bool:
    """Whether an index was made from the segment as it is now (same size and mtime)."""
    return (index.size_bytes, index.mtime_ns) == (st.st_size, st.st_mtime_ns)


def endpoint_key(proto: int, addr: int, port: int) -> int:
    """One int for an external endpoint: proto (8 bits), IPv4 address (32), port or ICMP id (16)."""
    return (proto << 48) | (addr << 16) | port


def index_path(segment_path: str | os.PathLike[str]) -> Path:
    """Where a segment's index lives."""
    path = Path(segment_path)
    return path.with_name(path.name + INDEX_SUFFIX)


def build_index(segment_path: str | os.PathLike[str], *, write: bool = True) -> SegmentIndex:
    """Decode a segment and index it; write ``<segment>.idx`` too unless ``write`` is False (best effort)."""
    path = Path(segment_path)
    m = SEGMENT_RE.match(path.name)
    first = int(m.group(1)) if m else 0
    st = path.stat()
    buf = path.read_bytes()
    dctx = new_decompressor()
    keys: set[int] = set()
    lo = hi = None
    last = first - 1
    offset, complete = 0, True
    while offset < len(buf):
        try:
            events, offset = decode_frame(buf, offset, dctx)
        except (TornFrame, CorruptFrame):
            complete = False
            break
        if last < first:
            first = events[0].seq
        last = events[-1].seq
        for e in events:
            if type(e) is MappingCreated or type(e) is MappingExpired:
                keys.add((e.proto << 48) | (e.ext_addr << 16) | e.ext_port)
            at = e.at_ns
            if lo is None or at < lo:
                lo = at
            if hi is None or at > hi:
                hi = at
    index = SegmentIndex(
        INDEX_VERSION, st.st_size, st.st_mtime_ns, first, last, lo, hi, sorted(keys), complete
    )
    if write:
        with contextlib.suppress(OSError):  # derived data: no cache is fine
            write_index(path, index)
    return index


def load_or_build_index(
    segment_path: str | os.PathLike[str],
    *,
    write: bool = True,
    on_bad: Callable[[JournalCorruptError], None] | None = None,
) -> SegmentIndex:
    """The segment's index from its ``.idx`` file, rebuilt if missing, stale (size, mtime) or bad.

    A bad file (checksum, magic, decode) is passed to ``on_bad`` before the segment itself is indexed.
    """
    path = Path(segment_path)
    st = path.stat()
    try:
        index = read_index(path)
        if index is not None and is_current(index, st):
            return index
    except JournalCorruptError as exc:
        if on_bad is not None:
            on_bad(exc)
    except OSError:
        pass
    return build_index(path, write=write)


def segments_touching(
    directory: str | os.PathLike[str],
    proto: int,
    addr: int,
    port: int,
    until_ns: int | None = None,
    *,
    write: bool = True,
) -> list[Path]:
    """Segments, in seq order, with a MappingCreated/Expired for the endpoint at or before ``until_ns``.

    Segments whose index is incomplete (torn or corrupt tail) are always included.
    """
    found = []
    for _, path in segment_paths(Path(directory)):
        index = load_or_build_index(path, write=write)
        if index.complete and not index.touches(proto, addr, port):
            continue
        if until_ns is not None and index.min_at_ns is not None and index.min_at_ns > until_ns:
            continue
        found.append(path)
    return found


def write_index(segment_path: str | os.PathLike[str], index: SegmentIndex) -> Path:
    """Write ``<segment>.idx`` (temp file, then rename; not fsynced: derived data); return its path.

    Raises: OSError (the temp file is removed).
    """
    target = index_path(segment_path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), FILE_MODE)
        try:
            view = memoryview(encode_index(index))
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return target


def remove_stale_index_tmp(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove ``*.idx.tmp`` files a crash left behind (never renamed, never read); return them."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.endswith(INDEX_TMP_SUFFIX) and SEGMENT_RE.match(name[: -len(INDEX_TMP_SUFFIX)]):
            path = Path(directory) / name
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove (a directory)
                path.unlink()
                removed.append(path)
    return removed
