"""gw.transport.wire: frames survive any chunking, and any garbage closes with a code, never a traceback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw.transport import wire
from gw.transport.wire import Close, FrameReader, ProtocolError

packets = st.lists(st.binary(min_size=20, max_size=3000), min_size=1, max_size=8)


def _stream(batches: list[list[bytes]]) -> bytes:
    out = bytearray(wire.encode_message(wire.Challenge(1, b"n" * 32)))
    for batch in batches:
        out += wire.encode_packets(batch)
        out += wire.keepalive()
    return bytes(out)


def _read(reader: FrameReader, data: bytes, cuts: list[int]) -> list[tuple]:
    """Feed ``data`` cut at ``cuts``; copy every frame out before the next read (views are reused)."""
    got = []
    at = 0
    for cut in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        for ftype, flags, count, payload in reader.feed(data[at:cut]):
            body = (
                [bytes(p) for p in wire.split_packets(payload, count, False)]
                if ftype == wire.PACKETS
                else bytes(payload)
            )
            got.append((ftype, flags, count, body))
        at = cut
    return got


@given(batches=st.lists(packets, min_size=1, max_size=5), cuts=st.lists(st.integers(0, 40_000), max_size=30))
def test_any_chunking_decodes_the_same_frames(batches, cuts):
    data = _stream(batches)
    whole = _read(FrameReader(), data, [])
    assert _read(FrameReader(), data, cuts) == whole
    assert [f[3] for f in whole if f[0] == wire.PACKETS] == batches


def test_a_reader_reused_across_many_frames_keeps_every_byte(tmp_path):
    """More bytes than the buffer holds, in reads that straddle frames: the compaction path."""
    batch = [bytes([i % 251]) * 1400 for i in range(150)]  # ~210 KB per frame
    data = b"".join(bytes(wire.encode_packets(batch)) for _ in range(12))
    got = _read(FrameReader(), data, list(range(0, len(data), 65_537)))
    assert len(got) == 12 and all(f[3] == batch for f in got)


@given(garbage=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=5))
def test_garbage_is_a_protocol_error_with_a_code_or_an_incomplete_frame_never_anything_else(garbage, cuts):
    reader = FrameReader()
    try:
        for ftype, flags, count, payload in reader.feed(garbage):
            if ftype == wire.PACKETS:
                wire.split_packets(payload, count, bool(flags & wire.VNET))
            elif ftype in wire.CONTROL_TYPES:
                wire.decode_message(ftype, payload)
    except ProtocolError as e:
        assert isinstance(e.code, Close)


@pytest.mark.parametrize(
    "header, code",
    [
        (wire.HEADER.pack(wire.PACKETS, 0, 1, wire.MAX_PAYLOAD + 1), Close.TOO_LARGE),
        (wire.HEADER.pack(wire.HELLO, 0, 0, wire.MAX_CONTROL + 1), Close.TOO_LARGE),
        (wire.HEADER.pack(99, 0, 0, 0), Close.PROTOCOL),
    ],
    ids=["huge-packets", "huge-control", "unknown-type"],
)
def test_a_header_is_judged_before_its_payload_arrives(header, code):
    with pytest.raises(ProtocolError) as e:
        FrameReader().feed(header)
    assert e.value.code == code


@pytest.mark.parametrize(
    "payload, count",
    [
        (b"\0\0\0\x05abcde", 1),
        (b"\0\0\0\x14" + b"x" * 20 + b"extra", 1),
        (b"\0\0\0\x14" + b"x" * 20, 2),
        (b"", 0),
    ],
    ids=["too-short-packet", "trailing-bytes", "count-too-high", "empty"],
)
def test_a_packet_frame_that_lies_about_its_packets_is_a_protocol_error(payload, count):
    with pytest.raises(ProtocolError) as e:
        wire.split_packets(memoryview(payload), count, False)
    assert e.value.code == Close.PROTOCOL


def test_a_handshake_reader_stops_after_each_control_message_so_the_session_can_grow_it():
    """One TLS read holds the welcome and the start of a packet frame too big for a handshake reader."""
    welcome = wire.encode_message(wire.Welcome(1, "10.66.77.2", 24, "10.66.77.1", [], 1400, True, 10, 30))
    big = bytes(wire.encode_packets([b"p" * 20_000]))  # over MAX_CONTROL, within the reader's buffer
    reader = FrameReader(wire.MAX_CONTROL)
    data = welcome + big[:10_000]
    reader.get_buffer()[: len(data)] = data
    [(ftype, *_rest)] = reader.buffer_updated(len(data))
    assert ftype == wire.WELCOME
    grown = reader.grown()
    assert grown.frames() == []
    grown.get_buffer()[: len(big) - 10_000] = big[10_000:]
    [(ftype, flags, count, payload)] = grown.buffer_updated(len(big) - 10_000)
    assert ftype == wire.PACKETS and bytes(wire.split_packets(payload, count, False)[0]) == b"p" * 20_000


def test_vnet_packets_cross_whole_with_their_header():
    from gw import vnet

    hdr = bytearray(vnet.VNET_HDR_LEN)
    vnet.write_header(hdr, 0, vnet.VNET_F_NEEDS_CSUM, vnet.VNET_GSO_TCPV4, 52, 1448, 20, 16)
    superpacket = bytes(hdr) + b"\x45" + b"s" * 65_000
    frame = wire.encode_packets([superpacket], vnet=True)
    [(ftype, flags, count, payload)] = FrameReader().feed(frame)
    assert flags & wire.VNET and bytes(wire.split_packets(payload, count, True)[0]) == superpacket


def test_bad_control_messages_are_protocol_errors():
    with pytest.raises(ProtocolError) as e:
        wire.decode_message(wire.HELLO, memoryview(b"\x93\x01"))
    assert e.value.code == Close.PROTOCOL
    with pytest.raises(ProtocolError) as e:
        wire.decode_message(wire.PACKETS, memoryview(b""))
    assert e.value.code == Close.UNEXPECTED


def test_a_batch_over_one_frames_limits_is_cut_into_frames_that_each_fit_and_carry_it_in_order():
    """64 super-packets (4 MiB, what one TUN read can bring) and 3000 small packets: several frames,
    each within MAX_PAYLOAD and MAX_PACKETS_PER_FRAME, whose packets are the batch in order."""
    for batch in ([bytes([i]) * (wire.MAX_PACKET - i) for i in range(64)], [b"%040d" % i for i in range(3000)]):
        data = bytes(wire.encode_packets(batch, vnet=True))
        reader, got, frames = FrameReader(), [], 0
        for at in range(0, len(data), 1 << 16):  # frames are views: copy them before the next feed
            for ftype, flags, count, payload in reader.feed(data[at : at + (1 << 16)]):
                assert ftype == wire.PACKETS and flags == wire.VNET
                assert len(payload) <= wire.MAX_PAYLOAD and count <= wire.MAX_PACKETS_PER_FRAME
                got += [bytes(p) for p in wire.split_packets(payload, count, True)]
                frames += 1
        assert got == batch and frames > 1
