"""Journal properties (hypothesis): round trips, every cut a prefix, garbage in -> only the contract."""

from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path

import msgspec
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from journal.errors import CorruptFrame, JournalCorruptError, JournalGapError, TornFrame
from journal.events import (
    ENCODER,
    GatewayStarted,
    GatewayStopped,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    SessionRefused,
    SnapshotTaken,
)
from journal.frames import decode_frame, decode_header, encode_frame
from journal.segments import SegmentReader, segment_name

u8 = st.integers(0, 255)
u16 = st.integers(0, 65535)
u32 = st.integers(0, 2**32 - 1)
count = st.integers(0, 2**64 - 1)
text = st.text(max_size=12)
at_ns = st.integers(-(2**63), 2**63 - 1)
common = {"seq": st.just(0), "at_ns": at_ns}

EVENT_BODIES = st.one_of(
    st.builds(
        GatewayStarted,
        **common,
        version=text,
        ext_addrs=st.lists(u32, max_size=3),
        recovered=st.booleans(),
        unclean=st.booleans(),
    ),
    st.builds(GatewayStopped, **common, reason=text),
    st.builds(
        SessionOpened,
        **common,
        session=u32,
        client=text,
        fingerprint=text,
        remote_addr=text,
        remote_port=u16,
        vpn_addr=u32,
    ),
    st.builds(
        SessionRefused,
        **common,
        fingerprint=text,
        remote_addr=text,
        remote_port=u16,
        reason=text,
        client=text,
    ),
    st.builds(
        SessionClosed,
        **common,
        session=u32,
        client=text,
        reason=text,
        packets_in=count,
        bytes_in=count,
        packets_out=count,
        bytes_out=count,
    ),
    st.builds(
        MappingCreated,
        **common,
        proto=u8,
        int_addr=u32,
        int_port=u16,
        ext_addr=u32,
        ext_port=u16,
        client=text,
        session=u32,
        remote_addr=u32,
        remote_port=u16,
    ),
    st.builds(
        MappingExpired,
        **common,
        proto=u8,
        ext_addr=u32,
        ext_port=u16,
        reason=text,
        packets_out=count,
        bytes_out=count,
        packets_in=count,
        bytes_in=count,
    ),
    st.builds(QuotaHit, **common, proto=u8, int_addr=u32, int_port=u16, quota=u32, client=text, session=u32),
    st.builds(SnapshotTaken, **common, upto_seq=count, file=text, mappings_count=u32),
)


def numbered(bodies: list, first: int) -> list:
    return [msgspec.structs.replace(e, seq=first + i) for i, e in enumerate(bodies)]


@st.composite
def journals(draw, max_frames: int = 4) -> list[list]:
    """Frames (lists of events) with seqs continuing from frame to frame."""
    first = draw(st.integers(1, 2**40))
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=max_frames))
    out = []
    for size in sizes:
        out.append(numbered(draw(st.lists(EVENT_BODIES, min_size=size, max_size=size)), first))
        first += size
    return out


def wrap(payload: bytes, count: int, first_seq: int, lo: int, hi: int) -> bytes:
    """A frame with valid checksums around any payload (the documented layout)."""
    head = struct.pack(
        "<4sHHIIQqqI", b"GWJ1", 48, 0, len(payload), count, first_seq, lo, hi, zlib.crc32(payload)
    )
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def decode_all(buf: bytes) -> tuple[list, bool]:
    """Decode frames until the end or a torn frame: (events, torn?)."""
    offset, events = 0, []
    while offset < len(buf):
        try:
            batch, offset = decode_frame(buf, offset)
        except TornFrame:
            return events, True
        events.extend(batch)
    return events, False


def assert_contract(buf: bytes, offset: int = 0) -> list | None:
    """decode_frame returns events or raises TornFrame/CorruptFrame; anything else escapes as a failure."""
    try:
        events, end = decode_frame(buf, offset)
    except (TornFrame, CorruptFrame):
        return None
    assert offset < end <= len(buf) and events
    return events


# -- round trips and prefixes ----------------------------------------------------------------------


@given(journals(max_frames=1))
def test_any_events_round_trip_through_a_frame(frames):
    (events,) = frames
    assert decode_frame(encode_frame(events)) == (events, len(encode_frame(events)))


@given(journals(), st.data())
def test_any_truncation_of_a_segment_decodes_to_a_prefix_of_its_events(frames, data):
    blobs = [encode_frame(f) for f in frames]
    buf = b"".join(blobs)
    cut = data.draw(st.integers(0, len(buf)))
    events, torn = decode_all(buf[:cut])
    whole = sum(1 for end in _ends(blobs) if end <= cut)
    assert events == [e for f in frames[:whole] for e in f]
    assert torn == (cut not in (0, *_ends(blobs)))


@given(journals(), st.data())
def test_reader_on_a_cut_newest_segment_yields_a_prefix_and_reports_the_tail(frames, data):
    blobs = [encode_frame(f) for f in frames]
    buf = b"".join(blobs)
    cut = data.draw(st.integers(0, len(buf)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / segment_name(frames[0][0].seq)
        path.write_bytes(buf[:cut])
        reader = SegmentReader(tmp, truncate_torn_tail=True)
        events = list(reader.events())
        whole_ends = [end for end in _ends(blobs) if end <= cut]
        assert events == [e for f in frames[: len(whole_ends)] for e in f]
        boundary = whole_ends[-1] if whole_ends else 0
        assert [(n.kind, n.offset, n.bytes_count) for n in reader.notes] == (
            [("torn_tail", boundary, cut - boundary)] if cut != boundary else []
        )
        assert path.stat().st_size == boundary


def _ends(blobs: list[bytes]) -> list[int]:
    ends, at = [], 0
    for blob in blobs:
        at += len(blob)
        ends.append(at)
    return ends


# -- garbage in ------------------------------------------------------------------------------------


@given(st.binary(max_size=400), st.integers(0, 8))
def test_garbage_into_decode_frame_raises_only_torn_or_corrupt(buf, offset):
    assert_contract(buf, offset)
    try:
        decode_header(buf, offset)
    except (TornFrame, CorruptFrame):
        pass


@given(st.binary(max_size=300))
def test_garbage_after_the_magic_raises_only_torn_or_corrupt(tail):
    assert_contract(b"GWJ1" + tail)


@given(journals(max_frames=1), st.data())
def test_mutated_frames_raise_only_torn_or_corrupt(frames, data):
    frame = bytearray(encode_frame(frames[0]))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        at = data.draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[at] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(frame) > 1:
            del frame[at]
    events = assert_contract(bytes(frame))
    assert events is None or events == frames[0]  # only a change past the frame's end can leave it whole


@given(st.binary(max_size=300), st.integers(0, 3), st.integers(0, 2**64 - 1))
def test_well_summed_frames_around_any_payload_raise_only_corrupt(payload, n, first):
    assert_contract(wrap(payload, n, first, -(2**63), 2**63 - 1))


@given(st.binary(max_size=300), st.integers(0, 3))
def test_well_summed_zstd_of_any_bytes_raises_only_corrupt(raw, n):
    assert_contract(wrap(zstandard.ZstdCompressor().compress(raw), n, 1, -(2**63), 2**63 - 1))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=30,
)


@given(st.lists(msgpack_values, min_size=1, max_size=5), st.integers(1, 2**40))
def test_well_summed_zstd_of_any_msgpack_raises_only_corrupt(items, first):
    payload = zstandard.ZstdCompressor().compress(msgspec.msgpack.encode(items))
    assert_contract(wrap(payload, len(items), first, -(2**63), 2**63 - 1))


@given(st.lists(st.tuples(st.integers(1, 9), st.integers(0, 2**40)), min_size=1, max_size=4))
def test_well_summed_zstd_of_event_shaped_arrays_raises_only_corrupt(rows):
    # arrays that start like events (a known tag, then ints) but have the wrong arity or types
    payload = zstandard.ZstdCompressor().compress(ENCODER.encode([[tag, 1, value] for tag, value in rows]))
    assert_contract(wrap(payload, len(rows), 1, -(2**63), 2**63 - 1))


# -- readers over damaged journals -----------------------------------------------------------------


@given(journals(), st.data())
def test_damaged_segment_reads_as_a_prefix_or_raises_a_journal_error(frames, data):
    buf = bytearray(b"".join(encode_frame(f) for f in frames))
    for _ in range(data.draw(st.integers(1, 3))):
        buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
    everything = [e for f in frames for e in f]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / segment_name(frames[0][0].seq)).write_bytes(bytes(buf))
        events = []
        try:
            for event in SegmentReader(tmp).events():
                events.append(event)
        except (JournalCorruptError, JournalGapError):
            pass
        assert events == everything[: len(events)]
        salvaged = list(SegmentReader(tmp, salvage=True).events())  # never raises on bad data
        assert all(e == everything[e.seq - frames[0][0].seq] for e in salvaged)
