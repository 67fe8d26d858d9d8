"""Fuzz journal frames: ``journal.frames.decode_header``, ``decode_frame``, ``next_frame_offset``.

Input: a mode byte, then the bytes. Two CRCs guard a frame, so plain mutation rarely gets past them; the
mode byte (low 2 bits) lets the harness make them right so the fuzzer reaches the decoder behind them:

- 0: the bytes as they are (from offset ``mode >> 2 & 7``);
- 1: the bytes with the header CRC made right (and the payload CRC, over what is there);
- 2: the bytes are a msgpack event batch: the harness compresses them (zstd, content size in the header)
  and writes a header around them whose count, first seq and time range come from the first 28 bytes
  (so the agreement checks are fuzzed too) and whose CRCs are right;
- 3: as 2, but the bytes are the zstd payload itself (the fuzzer's own zstd frames, bombs included:
  the decoder must refuse them by their declared size).

Contract under test (journal/frames.py): nothing but ``TornFrame`` and ``CorruptFrame`` for any bytes. A
frame that decodes must encode back (``encode_frame``, when its fields fit a header) to a frame that
decodes to the same events.
"""

from __future__ import annotations

import struct
import sys
import zlib

from fuzz.common import fuzz, instrumented, require

with instrumented():
    import zstandard

    from journal import events as E
    from journal.errors import CorruptFrame, TornFrame
    from journal.frames import (
        FRAME_HEADER_LEN,
        FRAME_MAGIC,
        decode_frame,
        decode_header,
        encode_frame,
        next_frame_offset,
    )

_HEADER = struct.Struct("<4sHHIIQqqII")
_FIELDS = struct.Struct("<IQqq")  # count, first_seq, min_at_ns, max_at_ns: what mode 2/3 take from the input
_CCTX = zstandard.ZstdCompressor(level=1)


def fix_crcs(buf: bytearray, at: int = 0) -> int:
    """Rewrite the header CRC (and the payload CRC, over the bytes present) of the frame at ``at``; returns
    the offset after the frame its header describes."""
    if len(buf) < at + FRAME_HEADER_LEN:
        return len(buf)
    payload_len = struct.unpack_from("<I", buf, at + 8)[0]
    end = at + FRAME_HEADER_LEN + payload_len
    struct.pack_into("<I", buf, at + 40, zlib.crc32(buf[at + FRAME_HEADER_LEN : end]))
    struct.pack_into("<I", buf, at + 44, zlib.crc32(buf[at : at + 44]))
    return end


def build_frame(fields: bytes, payload: bytes) -> bytes:
    """A frame around ``payload`` with header fields from ``fields`` and right CRCs."""
    count, first, lo, hi = _FIELDS.unpack(fields.ljust(_FIELDS.size, b"\0")[: _FIELDS.size])
    head = [FRAME_MAGIC, FRAME_HEADER_LEN, 0, len(payload), count, first, lo, hi, zlib.crc32(payload)]
    crc = zlib.crc32(_HEADER.pack(*head, 0)[:44])
    return _HEADER.pack(*head, crc) + payload


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    kind = mode & 3
    offset = 0
    if kind == 0:
        buf = body
        offset = mode >> 2 & 7
    elif kind == 1:
        buf = bytearray(body)
        fix_crcs(buf)
    else:
        fields, rest = body[: _FIELDS.size], body[_FIELDS.size :]
        buf = build_frame(fields, _CCTX.compress(rest) if kind == 2 else rest)
    try:
        decode_header(buf, offset)
    except (TornFrame, CorruptFrame):
        pass
    try:
        events, end = decode_frame(buf, offset)
    except (TornFrame, CorruptFrame):
        events = None
    next_frame_offset(buf, 0, whole=bool(mode & 32))
    if events is None:
        return
    require(offset < end <= len(buf) and events, "decode_frame returned a bad end or no events")
    require(all(type(e) in E.JournalEvent.__args__ for e in events), "decode_frame returned a non-event")
    try:
        again = encode_frame(events)
    except ValueError:
        return  # fields a frame header cannot hold (seq beyond u64...): encode_frame's documented refusal
    require(decode_frame(again)[0] == events, "a decoded frame does not encode back to the same events")


# ---------------------------------------------------------------------- seeds


def sample_events(first_seq: int = 1, at: int = 1_700_000_000_000_000_000) -> list:
    """One event of every type, consecutive seqs."""
    kinds = [
        E.GatewayStarted(seq=0, at_ns=0, version="0.1.0", ext_addrs=[3325256705], recovered=True),
        E.SessionOpened(seq=0, at_ns=0, session=1, client="alice", fingerprint="ab" * 32,
                        remote_addr="192.0.2.7", remote_port=50000, vpn_addr=172117250),  # fmt: skip
        E.MappingCreated(seq=0, at_ns=0, proto=17, int_addr=172117250, int_port=5000, ext_addr=3325256705,
                         ext_port=40001, client="alice", session=1, remote_addr=3405803786,
                         remote_port=53),  # fmt: skip
        E.QuotaHit(seq=0, at_ns=0, proto=6, int_addr=172117250, int_port=40000, quota=8, client="alice"),
        E.MappingExpired(seq=0, at_ns=0, proto=17, ext_addr=3325256705, ext_port=40001, reason="idle",
                         packets_out=3, bytes_out=300, packets_in=2, bytes_in=900),  # fmt: skip
        E.SessionRefused(seq=0, at_ns=0, fingerprint="cd" * 32, remote_addr="192.0.2.8", remote_port=1,
                         reason="unknown"),  # fmt: skip
        E.Heartbeat(seq=0, at_ns=0, mappings_count=1),
        E.SnapshotTaken(seq=0, at_ns=0, upto_seq=7, file="snap-00000000000000000007.gws", mappings_count=1),
        E.SessionClosed(seq=0, at_ns=0, session=1, client="alice", reason="shutdown"),
        E.GatewayStopped(seq=0, at_ns=0),
    ]
    import msgspec

    return [msgspec.structs.replace(e, seq=first_seq + i, at_ns=at + i * 1000) for i, e in enumerate(kinds)]


def seeds() -> list[bytes]:
    events = sample_events()
    frame = encode_frame(events)
    raw = E.ENCODER.encode(events)
    fields = _FIELDS.pack(len(events), events[0].seq, events[0].at_ns, events[-1].at_ns)
    out = [b"\x00" + frame, b"\x00" + frame + frame[:30], b"\x00" + frame[:-5], b"\x01" + frame,
           b"\x02" + fields + raw, b"\x03" + fields + _CCTX.compress(raw), b"\x00" + frame[:20],
           b"\x02" + fields + E.ENCODER.encode(events[:1]), b"\x20" + bytes(7) + frame]  # fmt: skip
    for e in events:
        one = [e]
        out.append(b"\x02" + _FIELDS.pack(1, e.seq, e.at_ns, e.at_ns) + E.ENCODER.encode(one))
    return out


if __name__ == "__main__":
    fuzz("journal_frames", one_input, sys.argv)
