"""The virtio-net header between a TUN (offsets from the IP header) and an AF_PACKET socket (offsets from
the Ethernet header): a vector table run both ways, the bounds of each direction, and garbage in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw import vnet

NEEDS_CSUM, TCPV4, UDP_L4 = vnet.VNET_F_NEEDS_CSUM, vnet.VNET_GSO_TCPV4, vnet.VNET_GSO_UDP_L4


def _hdr(*fields: int) -> bytes:
    buf = bytearray(vnet.VNET_HDR_LEN)
    vnet.write_header(buf, 0, *fields)
    return bytes(buf)


# (on a TUN, on the link): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VECTORS = [
    # a plain packet: nothing to move
    ((0, 0, 0, 0, 0, 0), (0, 0, 0, 0, 0, 0)),
    # a TCPv4 super-packet with a partial checksum: hdr_len 20 + 20 + 12, csum at 20 + 16
    ((NEEDS_CSUM, TCPV4, 52, 1448, 20, 16), (NEEDS_CSUM, TCPV4, 66, 1448, 34, 16)),
    # a USO super-packet
    ((NEEDS_CSUM, UDP_L4, 28, 1000, 20, 6), (NEEDS_CSUM, UDP_L4, 42, 1000, 34, 6)),
    # a checksum verified by the kernel: csum_start means nothing without NEEDS_CSUM and is left alone
    ((vnet.VNET_F_DATA_VALID, 0, 0, 0, 7, 9), (vnet.VNET_F_DATA_VALID, 0, 0, 0, 7, 9)),
    # the largest offsets that still fit in 16 bits on the link
    ((NEEDS_CSUM, TCPV4, 0xFFFF - 14, 1, 0xFFFF - 14, 0xFFFF), (NEEDS_CSUM, TCPV4, 0xFFFF, 1, 0xFFFF, 0xFFFF)),
]


@pytest.mark.parametrize(("tun", "link"), VECTORS)
def test_to_link_adds_the_ethernet_header(tun, link):
    assert vnet.to_link(_hdr(*tun)) == _hdr(*link)


@pytest.mark.parametrize(("tun", "link"), VECTORS)
def test_from_link_takes_it_off(tun, link):
    assert vnet.from_link(_hdr(*link)) == _hdr(*tun)


@pytest.mark.parametrize(
    "tun",
    [
        (NEEDS_CSUM, 0, 0, 0, 0xFFFF - 13, 6),  # csum_start + 14 > 0xFFFF
        (NEEDS_CSUM, 0, 0, 0, 0xFFFF, 6),
        (0, TCPV4, 0xFFFF - 13, 1448, 0, 0),  # hdr_len + 14 > 0xFFFF
    ],
)
def test_to_link_refuses_offsets_that_cannot_take_the_header(tun):
    assert vnet.to_link(_hdr(*tun)) is None


@pytest.mark.parametrize(
    "link",
    [
        (NEEDS_CSUM, 0, 0, 0, 13, 6),  # the checksum would start inside the Ethernet header
        (NEEDS_CSUM, 0, 0, 0, 0, 6),
        (0, TCPV4, 13, 1448, 0, 0),  # a header length shorter than the Ethernet header
        (0, TCPV4, 1, 1448, 0, 0),
    ],
)
def test_from_link_refuses_offsets_inside_the_ethernet_header(link):
    assert vnet.from_link(_hdr(*link)) is None


def test_the_edges_of_from_link():
    assert vnet.from_link(_hdr(NEEDS_CSUM, 0, 0, 0, 14, 6)) == _hdr(NEEDS_CSUM, 0, 0, 0, 0, 6)
    assert vnet.from_link(_hdr(0, TCPV4, 14, 1448, 0, 0)) == _hdr(0, TCPV4, 0, 1448, 0, 0)  # no hint left


def test_short_input_and_trailing_bytes():
    for helper in (vnet.to_link, vnet.from_link):
        assert helper(b"") is None and helper(bytes(9)) is None
        assert helper(bytes(10) + b"packet") == bytes(10)  # only the header is read
        assert helper(memoryview(bytearray(12))) == bytes(10)


u8, u16 = st.integers(0, 0xFF), st.integers(0, 0xFFFF)  # hypothesis favours their edges: 0, 13, 14, 0xFFFF...
headers = st.tuples(u8, u8, u16, u16, u16, u16).map(lambda fields: _hdr(*fields))


@given(st.one_of(headers, st.binary(max_size=24)))
def test_garbage_in_gives_a_header_or_none_and_the_two_undo_each_other(buf):
    link = vnet.to_link(buf)
    assert link is None or len(link) == vnet.VNET_HDR_LEN
    if link is not None:
        assert vnet.from_link(link) == bytes(buf[: vnet.VNET_HDR_LEN])
    tun = vnet.from_link(buf)
    assert tun is None or len(tun) == vnet.VNET_HDR_LEN
    if tun is not None:
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = vnet.read_header(buf)
        # hdr_len 14 (the Ethernet header alone) comes back as 0, "no hint"; all else exactly
        want = _hdr(flags, gso_type, 0 if hdr_len == 14 else hdr_len, gso_size, csum_start, csum_offset)
        assert vnet.to_link(tun) == want
