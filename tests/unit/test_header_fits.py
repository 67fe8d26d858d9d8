"""gw.offload.header_fits: a client's virtio-net header is passed on only when it describes its packet
(the kernel acts on it: GSO on the raw gateway's socket, another client's TUN)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw import inet
from gw import packet as P
from gw import vnet as V
from gw.offload import MIN_GSO_SIZE, header_fits, segment

SRC, DST = inet.aton("10.66.77.2"), inet.aton("203.0.113.10")
TCP = bytes(P.build_tcp(SRC, DST, 40000, 80, payload=bytes(4000)))
UDP = bytes(P.build_udp(SRC, DST, 40000, 53, bytes(3000)))


def _with(ip: bytes, flags=V.VNET_F_NEEDS_CSUM, gso=V.VNET_GSO_TCPV4, hdr_len=40, gso_size=1448, start=20,
          offset=16) -> bytearray:  # fmt: skip
    pkt = bytearray(V.VNET_HDR_LEN) + ip
    V.write_header(pkt, 0, flags, gso, hdr_len, gso_size, start, offset)
    return pkt


def test_what_a_client_tun_gives_fits():
    assert header_fits(_with(TCP))
    assert header_fits(_with(TCP, gso=V.VNET_GSO_TCPV4 | V.VNET_GSO_ECN))
    assert header_fits(_with(UDP, gso=V.VNET_GSO_UDP_L4, hdr_len=28, gso_size=1200, offset=6))
    assert header_fits(_with(TCP, flags=0, gso=V.VNET_GSO_NONE, hdr_len=0, gso_size=0, start=0, offset=0))
    assert header_fits(_with(TCP, gso=V.VNET_GSO_NONE, gso_size=0))  # a partial checksum, no GSO


@pytest.mark.parametrize(
    "pkt",
    [
        _with(TCP, start=0),  # the kernel would write the checksum into the IP header
        _with(TCP, start=20, offset=10),  # not the TCP checksum's place
        _with(TCP, offset=6),  # UDP's place in a TCP packet
        _with(UDP, gso=V.VNET_GSO_TCPV4, offset=6),  # a TCP super-packet that is UDP
        _with(TCP, gso=V.VNET_GSO_UDP_L4),  # the other way round
        _with(TCP, gso=V.VNET_GSO_TCPV4, gso_size=MIN_GSO_SIZE - 1),  # hundreds of frames from one packet
        _with(TCP, flags=0),  # GSO without a checksum to finish
        _with(TCP, hdr_len=9000),  # headers longer than the packet
        _with(TCP, gso=7),  # an unknown GSO type
        _with(bytes(P.fragment(bytearray(UDP), 1000)[1]), gso=V.VNET_GSO_NONE, offset=6),  # a later fragment
        _with(TCP[:32] + b"\x00" + TCP[33:]),  # a TCP data offset of 0 words (found by fuzzing)
    ],
    ids=["start-in-ip-header", "offset", "udp-offset-in-tcp", "tcp-gso-on-udp", "udp-gso-on-tcp", "tiny-gso",
         "gso-without-csum", "hdr-len", "unknown-gso", "later-fragment", "tcp-offset-0"],
)
def test_a_header_that_does_not_describe_its_packet_is_refused(pkt):
    assert not header_fits(pkt)


@pytest.mark.parametrize("words", [0, 1, 4])
def test_a_tcp_super_packet_without_a_whole_tcp_header_is_not_segmented(words):
    """Found by fuzzing: a data offset below five words made ``segment`` write past its segments."""
    bad = bytearray(TCP)
    bad[32] = words << 4
    assert segment(_with(bytes(bad))) is None


@given(st.binary(min_size=0, max_size=80))
def test_any_bytes_get_an_answer_never_an_exception(data):
    assert header_fits(data) in (True, False)
    assert header_fits(data + TCP) in (True, False)
