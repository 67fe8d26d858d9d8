"""Per-segment audit index: a derived file, rebuildable at any time, that lets an audit skip segments.

``<segment>.idx`` (msgpack) holds the segment's seq and time range and the sorted set of external
endpoints ``(proto, ext_addr, ext_port)`` that its MappingCreated and MappingExpired events touch, each
packed into one int (``endpoint_key``). An audit for "who held 198.51.100.2:40001/udp at T" then opens only
the segments whose index holds that key and whose first event is not after T.

An index is stale when the segment's size or mtime differs from the ones it records; it is then rebuilt.
Writing it is best effort (a read-only journal directory just means no cache). A segment's torn or
corrupt tail ends the index walk; ``complete`` says so (read such a segment with SegmentReader).
"""

from __future__ import annotations

import bisect
import contextlib
import os
from pathlib import Path

import msgspec

from journal.errors import CorruptFrame, TornFrame
from journal.events import MappingCreated, MappingExpired
from journal.frames import decode_frame, new_decompressor
from journal.segments import FILE_MODE, SEGMENT_RE, segment_paths

__all__ = [
    "INDEX_SUFFIX",
    "SegmentIndex",
    "build_index",
    "endpoint_key",
    "load_or_build_index",
    "segments_touching",
]

INDEX_SUFFIX = ".idx"
INDEX_VERSION = 1  # bump when SegmentIndex changes: old files are then rebuilt, never misread


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
        _write_index(path, index)
    return index


def load_or_build_index(segment_path: str | os.PathLike[str], *, write: bool = True) -> SegmentIndex:
    """The segment's index from its ``.idx`` file, rebuilt if missing, unreadable or stale (size, mtime)."""
    path = Path(segment_path)
    st = path.stat()
    try:
        index = _DECODER.decode(index_path(path).read_bytes())
        if (index.version, index.size_bytes, index.mtime_ns) == (INDEX_VERSION, st.st_size, st.st_mtime_ns):
            return index
    except (OSError, msgspec.DecodeError):
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


def _write_index(segment_path: Path, index: SegmentIndex) -> None:
    target = index_path(segment_path)
    tmp = target.with_name(target.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), FILE_MODE)
        try:
            os.write(fd, _ENCODER.encode(index))
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except OSError:  # derived data: no cache is fine
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
