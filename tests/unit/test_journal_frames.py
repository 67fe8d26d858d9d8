"""journal/frames.py: the frame layout as documented, torn versus corrupt, and nothing else escaping."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgspec
import pytest
import zstandard

from journal import frames
from journal.errors import CorruptFrame, TornFrame
from journal.events import ENCODER, GatewayStopped, MappingCreated, MappingExpired
from journal.frames import FRAME_HEADER_LEN, decode_frame, decode_header, encode_frame, next_frame_offset

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "journal"
T = 1_767_225_600_000_000_000

# The documented header, written out independently of journal/frames.py (little-endian).
LAYOUT = struct.Struct("<4sHHIIQqqII")


def created(seq: int, at: int | None = None) -> MappingCreated:
    return MappingCreated(
        seq=seq,
        at_ns=T + seq * 1000 if at is None else at,
        proto=17,
        int_addr=0x0A424D02,
        int_port=50000 + seq,
        ext_addr=0xC6336402,
        ext_port=40000 + seq,
        client="alice",
        session=1,
    )


def wrap(
    payload: bytes, count: int, first_seq: int, lo: int, hi: int, header_len: int = 48, flags: int = 0
) -> bytes:
    """A frame with valid checksums around any payload (to reach the checks behind the CRCs)."""
    fields = (b"GWJ1", header_len, flags, len(payload), count, first_seq, lo, hi, zlib.crc32(payload))
    head = LAYOUT.pack(*fields, 0)[:44]
    return head + struct.pack("<I", zlib.crc32(head)) + payload


# -- the layout ------------------------------------------------------------------------------------


def test_header_is_laid_out_as_documented():
    events = [created(7, T + 30), created(8, T + 10), created(9, T + 20)]  # time not monotonic: min/max
    frame = encode_frame(events)
    magic, header_len, flags, payload_len, count, first_seq, lo, hi, payload_crc, header_crc = (
        LAYOUT.unpack_from(frame)
    )
    assert frame[:8].hex() == "47574a3130000000"  # b"GWJ1", header_len 48, flags 0
    assert (magic, header_len, flags) == (b"GWJ1", 48, 0)
    assert (count, first_seq, lo, hi) == (3, 7, T + 10, T + 30)
    assert payload_len == len(frame) - 48
    assert payload_crc == zlib.crc32(frame[48:])
    assert header_crc == zlib.crc32(frame[:44])
    assert msgspec.msgpack.decode(
        zstandard.ZstdDecompressor().decompress(frame[48:])
    ) == msgspec.msgpack.decode(ENCODER.encode(events))


def test_decode_header_reads_ranges_without_the_payload():
    frame = encode_frame([created(7, T + 30), created(8, T + 10)])
    h = decode_header(frame[:FRAME_HEADER_LEN])  # the header alone is enough
    assert (h.offset, h.count, h.first_seq, h.last_seq, h.min_at_ns, h.max_at_ns) == (
        0,
        2,
        7,
        8,
        T + 10,
        T + 30,
    )
    assert h.end == len(frame)


# Frames of the committed v1 segment: (offset, first_seq, count, next offset). Guards the layout on disk.
V1_FRAMES = [(0, 1, 5, 220), (220, 6, 4, 399), (399, 10, 3, 535)]


@pytest.mark.parametrize(("offset", "first_seq", "count", "end"), V1_FRAMES)
def test_committed_v1_frames_decode_at_their_offsets(offset, first_seq, count, end):
    buf = (VECTORS / "v1" / "seg-00000000000000000001.gwj").read_bytes()
    events, next_offset = decode_frame(buf, offset)
    assert next_offset == end
    assert [e.seq for e in events] == list(range(first_seq, first_seq + count))


def test_frames_back_to_back_decode_in_order_with_one_decompressor():
    batches = [[created(s) for s in range(a, a + n)] for a, n in ((1, 3), (4, 1), (5, 50))]
    buf = b"".join(encode_frame(b) for b in batches)
    dctx, offset, got = frames.new_decompressor(), 0, []
    while offset < len(buf):
        events, offset = decode_frame(buf, offset, dctx)
        got.append(events)
    assert got == batches


def test_decode_accepts_bytearray_and_memoryview():
    frame = encode_frame([created(1), created(2)])
    assert decode_frame(bytearray(frame))[0] == decode_frame(memoryview(frame))[0] == [created(1), created(2)]


# -- encode refuses caller bugs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "events",
    [[], [created(1), created(3)], [created(2), created(1)]],
    ids=["empty", "gap", "backwards"],
)
def test_encode_refuses_batches_that_are_not_consecutive(events):
    with pytest.raises(ValueError):
        encode_frame(events)


def test_encode_refuses_a_time_beyond_the_header_range():
    with pytest.raises(ValueError):
        encode_frame([created(1, at=2**63)])


# -- torn ------------------------------------------------------------------------------------------


def test_every_truncation_of_a_frame_is_torn():
    frame = encode_frame([created(s) for s in range(1, 20)])
    for cut in range(len(frame)):
        with pytest.raises(TornFrame) as info:
            decode_frame(frame[:cut])
        assert info.value.offset == 0


def test_truncation_inside_a_later_frame_is_torn_at_its_offset():
    first = encode_frame([created(1)])
    buf = first + encode_frame([created(2)])[:30]
    assert decode_frame(buf)[1] == len(first)
    with pytest.raises(TornFrame) as info:
        decode_frame(buf, len(first))
    assert info.value.offset == len(first)


# -- corrupt ---------------------------------------------------------------------------------------


def test_any_flipped_byte_in_a_whole_frame_is_corrupt():
    frame = encode_frame([created(1), GatewayStopped(seq=2, at_ns=T)])
    for i in range(len(frame)):
        bad = bytearray(frame)
        bad[i] ^= 0x01
        with pytest.raises(CorruptFrame):
            decode_frame(bytes(bad))


def test_a_partial_header_that_is_not_a_header_is_corrupt():
    with pytest.raises(CorruptFrame):
        decode_frame(b"\x00\x00\x00")


PAYLOAD = zstandard.ZstdCompressor().compress(ENCODER.encode([created(5), created(6)]))

# Frames whose checksums pass but whose content is wrong: (what, frame).
WELL_SUMMED_BUT_WRONG = [
    ("count says 3, payload holds 2", wrap(PAYLOAD, 3, 5, T, T + 10**9)),
    ("first seq says 4, payload starts at 5", wrap(PAYLOAD, 2, 4, T, T + 10**9)),
    ("time range excludes the events", wrap(PAYLOAD, 2, 5, T + 10**9, T + 2 * 10**9)),
    ("count 0", wrap(PAYLOAD, 0, 5, T, T + 10**9)),
    ("min after max", wrap(PAYLOAD, 2, 5, T + 10**9, T)),
    ("header_len from a future version", wrap(PAYLOAD, 2, 5, T, T + 10**9, header_len=64)),
    ("unknown flags", wrap(PAYLOAD, 2, 5, T, T + 10**9, flags=1)),
    ("payload not zstd", wrap(b"not zstd at all", 2, 5, T, T + 10**9)),
    (
        "zstd without content size",
        wrap(zstandard.ZstdCompressor(write_content_size=False).compress(b"\x90"), 1, 5, T, T),
    ),
    (
        "zstd of msgpack that is not events",
        wrap(zstandard.ZstdCompressor().compress(b"\x92\x01\x02"), 2, 5, T, T),
    ),
    ("zstd of an empty event list", wrap(zstandard.ZstdCompressor().compress(b"\x90"), 1, 5, T, T)),
    (
        "zstd of an unknown tag",
        wrap(zstandard.ZstdCompressor().compress(b"\x91\x93\x63\x05\x01"), 1, 5, T, T),
    ),
]


@pytest.mark.parametrize(
    "frame", [f for _, f in WELL_SUMMED_BUT_WRONG], ids=[w for w, _ in WELL_SUMMED_BUT_WRONG]
)
def test_frame_whose_header_disagrees_with_its_content_is_corrupt(frame):
    with pytest.raises(CorruptFrame):
        decode_frame(frame)


def test_well_summed_frame_with_the_right_header_decodes():
    assert [e.seq for e in decode_frame(wrap(PAYLOAD, 2, 5, T, T + 10**9))[0]] == [5, 6]


def test_zstd_content_size_above_the_limit_is_corrupt_before_decompressing(monkeypatch):
    frame = encode_frame([created(1), created(2)])
    monkeypatch.setattr(frames, "MAX_FRAME_RAW_BYTES", 16)
    with pytest.raises(CorruptFrame, match="content size"):
        decode_frame(frame)


def test_next_frame_offset_skips_garbage_to_the_next_valid_header():
    one, two = encode_frame([created(1)]), encode_frame([created(2)])
    buf = one + b"GWJ1 garbage that looks like a start" + two
    assert next_frame_offset(buf, 1) == len(buf) - len(two)
    assert next_frame_offset(buf, len(buf) - len(two) + 1) is None


def test_next_frame_offset_whole_requires_a_decodable_frame():
    one = encode_frame([created(1)])
    bad = bytearray(encode_frame([created(2)]))
    bad[-1] ^= 0xFF
    buf = one + bytes(bad) + encode_frame([created(3)])
    assert next_frame_offset(buf, 1) == len(one)
    assert next_frame_offset(buf, 1, whole=True) == len(one) + len(bad)


def test_expired_event_counters_survive_a_frame():
    e = MappingExpired(
        seq=1, at_ns=T, proto=6, ext_addr=1, ext_port=2, reason="idle", packets_out=2**63 - 1, bytes_in=7
    )
    assert decode_frame(encode_frame([e]))[0] == [e]
