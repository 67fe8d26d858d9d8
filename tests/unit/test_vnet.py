"""The virtio-net header codec: a vector table run both ways, round trips, bounds."""

from __future__ import annotations

import struct

import pytest

from gw import vnet

# (annotated bytes, fields): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VECTORS = [
    # a plain packet: all zero
    ("00 00 0000 0000 0000 0000", (0, 0, 0, 0, 0, 0)),
    # TCPv4 super-packet, partial checksum: hdr_len 66 (0x42), gso_size 1448 (0x05a8), csum at 20 + 16
    ("01 01 4200 a805 1400 1000", (vnet.VNET_F_NEEDS_CSUM, vnet.VNET_GSO_TCPV4, 66, 1448, 20, 16)),
    # USO super-packet: hdr_len 28, gso_size 1000 (0x03e8), UDP checksum at 20 + 6
    ("01 05 1c00 e803 1400 0600", (vnet.VNET_F_NEEDS_CSUM, vnet.VNET_GSO_UDP_L4, 28, 1000, 20, 6)),
    # TCPv6 with ECN, checksum already verified; every u16 byte distinct to catch a byte swap
    ("02 84 0201 0403 0605 0807", (vnet.VNET_F_DATA_VALID, 0x84, 0x0102, 0x0304, 0x0506, 0x0708)),
]


@pytest.mark.parametrize(("hexbytes", "fields"), VECTORS)
def test_read_vector(hexbytes: str, fields: tuple[int, ...]) -> None:
    assert vnet.read_header(bytes.fromhex(hexbytes)) == fields


@pytest.mark.parametrize(("hexbytes", "fields"), VECTORS)
def test_write_vector(hexbytes: str, fields: tuple[int, ...]) -> None:
    buf = bytearray(b"\xff" * 14)
    vnet.write_header(buf, 2, *fields)
    assert buf == b"\xff\xff" + bytes.fromhex(hexbytes) + b"\xff\xff"  # exactly 10 bytes at the offset


def test_round_trip_at_offset_in_memoryview() -> None:
    fields = (vnet.VNET_F_NEEDS_CSUM, vnet.VNET_GSO_TCPV6 | vnet.VNET_GSO_ECN, 74, 1428, 54, 16)
    buf = bytearray(64)
    view = memoryview(buf)
    vnet.write_header(view, 7, *fields)
    assert vnet.read_header(view, 7) == fields
    assert vnet.read_header(bytes(buf[7:17])) == fields


def test_constants() -> None:
    assert vnet.VNET_HDR_LEN == 10
    assert vnet.NO_OFFLOAD == bytes(10)
    assert vnet.read_header(vnet.NO_OFFLOAD) == (0, vnet.VNET_GSO_NONE, 0, 0, 0, 0)
    gso = (
        vnet.VNET_GSO_NONE,
        vnet.VNET_GSO_TCPV4,
        vnet.VNET_GSO_UDP,
        vnet.VNET_GSO_TCPV6,
        vnet.VNET_GSO_UDP_L4,
    )
    assert gso == (0, 1, 3, 4, 5)
    assert (vnet.VNET_F_NEEDS_CSUM, vnet.VNET_F_DATA_VALID, vnet.VNET_GSO_ECN) == (1, 2, 0x80)


@pytest.mark.parametrize(("size", "offset"), [(0, 0), (9, 0), (10, 1), (20, 11)])
def test_short_buffer_raises(size: int, offset: int) -> None:
    with pytest.raises(struct.error):
        vnet.read_header(bytes(size), offset)
    with pytest.raises(struct.error):
        vnet.write_header(bytearray(size), offset, 0, 0, 0, 0, 0, 0)


def test_field_out_of_range_raises() -> None:
    with pytest.raises(struct.error):
        vnet.write_header(bytearray(10), 0, 0, 0, 65536, 0, 0, 0)
