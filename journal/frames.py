"""Journal frames: one group-committed batch of events, whole or not there. Pure: bytes in, bytes out.

Theory of operation
-------------------
A segment file is a plain concatenation of frames. A frame is a fixed 48-byte header followed by a zstd
frame (with its content size) holding ``ENCODER.encode(events)``: one msgpack array of ``array_like``
events with consecutive ``seq``. Layout, little-endian:

    off  size  field
      0     4  magic         b"GWJ1" (a new layout gets a new magic)
      4     2  header_len    48; other values are refused
      6     2  flags         0; reserved, nonzero is refused
      8     4  payload_len   bytes of zstd payload after the header
     12     4  count         events in the frame, >= 1
     16     8  first_seq     seq of the first event; the rest follow by +1
     24     8  min_at_ns     smallest at_ns in the frame (signed)
     32     8  max_at_ns     largest at_ns in the frame (signed)
     40     4  payload_crc   zlib.crc32 of the payload
     44     4  header_crc    zlib.crc32 of bytes 0..43
     48     -  payload

Two checksums, because the header's own CRC makes ``payload_len`` trustworthy before the payload is
read. A reader can then tell "the file ends inside this frame" (torn: the normal tail after a crash)
from "this header is garbage" (corrupt), and can skip a frame by its time range or seqs without
decompressing it (``decode_header``).

Contract for untrusted bytes: ``decode_header`` and ``decode_frame`` raise nothing but ``TornFrame``
(the bytes end inside a frame, including inside its header) and ``CorruptFrame`` (a whole frame or
header fails its magic, checksums, limits, decompression, decoding, or its header disagrees with its
content: count, first/last seq, time range). Anything else is a bug. ``tests/property`` fuzzes both.

Checks on decode are O(1) per frame (count, first and last seq, first and last at_ns inside the header's
range): a frame that passed its CRC was written by ``encode_frame``, which checked its seqs. The
reader checks seq continuity across frames from the headers.

Threads: zstandard compressor and decompressor objects must not be used by two threads at once. These
functions take an optional ``cctx``/``dctx``; an owner (the writer thread, each reader) passes its own
and reuses it. Without one, a fresh context is made per call (measured ~4 us, a few ns per event at
1000 events per frame), which is always safe.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import zstandard

from journal.errors import CorruptFrame, TornFrame
from journal.events import DECODER, ENCODER, JournalEvent

__all__ = [
    "FRAME_HEADER_LEN",
    "FRAME_MAGIC",
    "CorruptFrame",
    "FrameHeader",
    "TornFrame",
    "decode_frame",
    "decode_header",
    "encode_frame",
    "new_compressor",
    "new_decompressor",
    "next_frame_offset",
]

# -- format (changing any of these is a new magic) --------------------------------------------------
FRAME_MAGIC = b"GWJ1"
_HEADER = struct.Struct("<4sHHIIQqqII")
FRAME_HEADER_LEN = _HEADER.size  # 48
_HEADER_CRC_OFF = FRAME_HEADER_LEN - 4  # header_crc covers bytes before it

# -- implementation limits (bound memory for any input; the writer stays far below them) ------------
MAX_FRAME_EVENTS = 1 << 20  # the writer's batch_count is ~1024; a frame of 1 M events is already absurd
MAX_FRAME_PAYLOAD_BYTES = 64 << 20  # compressed; one frame never needs more than a segment
MAX_FRAME_RAW_BYTES = 256 << 20  # decompressed; refuse zstd bombs before allocating the output

# zstd level: measured on MappingCreated/MappingExpired traffic at 1024 events per frame (bench/journal.py),
# levels 1..4 all land near 22-23 B/event and level 1 compresses fastest; level 3 costs ~40% more CPU for
# <1% smaller frames. Above 4 the CPU cost doubles for ~5% less.
ZSTD_LEVEL = 1


class FrameHeader(NamedTuple):
    """A frame header that passed its magic, limits and CRC; ``end`` is the offset after the frame."""

    offset: int
    payload_len: int
    count: int
    first_seq: int
    min_at_ns: int
    max_at_ns: int
    payload_crc: int
    end: int

    @property
    def last_seq(self) -> int:
        """Seq of the frame's last event."""
        return self.first_seq + self.count - 1


def new_compressor() -> zstandard.ZstdCompressor:
    """A compressor for one thread's frames (zstandard objects are not thread-safe)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL)


def new_decompressor() -> zstandard.ZstdDecompressor:
    """A decompressor for one thread's reads."""
    return zstandard.ZstdDecompressor()


def encode_frame(events: Sequence[JournalEvent], cctx: zstandard.ZstdCompressor | None = None) -> bytes:
    """Encode events with consecutive seqs as one frame.

    Raises: ValueError for an empty or oversized batch or non-consecutive seqs (a caller bug).
    """
    count = len(events)
    if not 0 < count <= MAX_FRAME_EVENTS:
        raise ValueError(f"a frame holds 1..{MAX_FRAME_EVENTS} events, got {count}")
    first_seq = events[0].seq
    if events[-1].seq - first_seq != count - 1:
        raise ValueError(
            f"a frame needs consecutive seqs: {count} events from seq {first_seq} to {events[-1].seq}"
        )
    at = [e.at_ns for e in events]
    raw = ENCODER.encode(events)
    if len(raw) > MAX_FRAME_RAW_BYTES:
        raise ValueError(f"frame of {len(raw)} bytes before compression exceeds {MAX_FRAME_RAW_BYTES}")
    payload = (cctx or new_compressor()).compress(raw)
    if len(payload) > MAX_FRAME_PAYLOAD_BYTES:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME_PAYLOAD_BYTES}")
    fields = (
        FRAME_MAGIC,
        FRAME_HEADER_LEN,
        0,
        len(payload),
        count,
        first_seq,
        min(at),
        max(at),
        zlib.crc32(payload),
    )
    try:
        header_crc = zlib.crc32(_HEADER.pack(*fields, 0)[:_HEADER_CRC_OFF])
        return _HEADER.pack(*fields, header_crc) + payload
    except struct.error as exc:  # seq beyond u64 or at_ns beyond i64
        raise ValueError(f"event field out of range for a frame header: {exc}") from None


def decode_header(buf: bytes | bytearray | memoryview, offset: int = 0) -> FrameHeader:
    """Check and decode the header at ``offset``; the payload is not read (compare ``.end`` with the size).

    Raises nothing but TornFrame (fewer than 48 bytes left, and they begin like a header) and
    CorruptFrame (bad magic, header_len, flags, limits or header CRC).
    """
    if offset < 0:
        raise ValueError(f"negative offset {offset}")
    avail = len(buf) - offset
    if avail < FRAME_HEADER_LEN:
        start = bytes(buf[offset : offset + len(FRAME_MAGIC)])
        if FRAME_MAGIC.startswith(start):
            raise TornFrame(
                offset, f"file ends {max(avail, 0)} bytes into a {FRAME_HEADER_LEN}-byte frame header"
            )
        raise CorruptFrame(offset, f"bad magic {start!r} in a partial header")
    magic, header_len, flags, payload_len, count, first_seq, lo, hi, payload_crc, header_crc = (
        _HEADER.unpack_from(buf, offset)
    )
    if magic != FRAME_MAGIC:
        raise CorruptFrame(offset, f"bad magic {magic!r}")
    if zlib.crc32(buf[offset : offset + _HEADER_CRC_OFF]) != header_crc:
        raise CorruptFrame(offset, "header checksum mismatch")
    if header_len != FRAME_HEADER_LEN or flags:
        raise CorruptFrame(offset, f"unknown frame header (header_len {header_len}, flags {flags:#x})")
    if not 0 < count <= MAX_FRAME_EVENTS or payload_len > MAX_FRAME_PAYLOAD_BYTES or lo > hi:
        raise CorruptFrame(
            offset, f"header out of limits (count {count}, payload {payload_len} B, at {lo}..{hi})"
        )
    return FrameHeader(
        offset, payload_len, count, first_seq, lo, hi, payload_crc, offset + FRAME_HEADER_LEN + payload_len
    )


def decode_frame(
    buf: bytes | bytearray | memoryview, offset: int = 0, dctx: zstandard.ZstdDecompressor | None = None
) -> tuple[list[JournalEvent], int]:
    """Decode the whole frame at ``offset``; return its events and the offset after it.

    Raises nothing but TornFrame (the bytes end inside the frame) and CorruptFrame (see the module doc).
    """
    h = decode_header(buf, offset)
    if h.end > len(buf):
        raise TornFrame(offset, f"file ends {len(buf) - offset} bytes into a frame of {h.end - offset} bytes")
    payload = memoryview(buf)[offset + FRAME_HEADER_LEN : h.end]
    if zlib.crc32(payload) != h.payload_crc:
        raise CorruptFrame(offset, "payload checksum mismatch")
    try:
        raw_len = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as exc:
        raise CorruptFrame(offset, f"bad zstd payload: {exc}") from None
    if not 0 <= raw_len <= MAX_FRAME_RAW_BYTES:  # -1: size unknown, never written by encode_frame
        raise CorruptFrame(offset, f"zstd content size {raw_len} outside 0..{MAX_FRAME_RAW_BYTES}")
    try:
        raw = (dctx or new_decompressor()).decompress(payload)
        events = DECODER.decode(raw)
    except (zstandard.ZstdError, msgspec.DecodeError) as exc:
        raise CorruptFrame(offset, f"payload does not decode: {exc}") from None
    if (
        len(events) != h.count
        or events[0].seq != h.first_seq
        or events[-1].seq != h.last_seq
        or not h.min_at_ns <= events[0].at_ns <= h.max_at_ns
        or not h.min_at_ns <= events[-1].at_ns <= h.max_at_ns
    ):
        raise CorruptFrame(offset, "header disagrees with its events (count, seqs or time range)")
    return events, h.end


def next_frame_offset(
    buf: bytes | bytearray | memoryview,
    start: int,
    *,
    whole: bool = False,
    dctx: zstandard.ZstdDecompressor | None = None,
) -> int | None:
    """Offset of the first valid frame header at or after ``start`` (a whole decodable frame if ``whole``)."""
    view = bytes(buf) if isinstance(buf, memoryview) else buf
    pos = view.find(FRAME_MAGIC, start)
    while pos >= 0:
        try:
            if whole:
                decode_frame(view, pos, dctx)
            else:
                decode_header(view, pos)
            return pos
        except (TornFrame, CorruptFrame):
            pos = view.find(FRAME_MAGIC, pos + 1)
    return None
