"""gw.offload: a packet with a partial checksum (virtio-net NEEDS_CSUM), super-packets included, comes
out of the NAT so that the checksum the kernel finishes is the one a full-checksum packet gets: byte
for byte the NAT's ordinary translation, and valid for dpkt."""

from __future__ import annotations

import random

from hypothesis import example, given
from hypothesis import strategies as st

from gw import packet as P
from gw.nat import COMPILED, FORWARD, Nat
from gw.offload import finish_checksum, translate_partial
from tests.helpers.packets import CLIENT, PUBLIC, SERVER, A, make_nat, verify

C, SRV, PUB = A(CLIENT), A(SERVER), A(PUBLIC)


def _partial(full: bytearray) -> bytearray:
    """The same packet as the kernel hands it with TUN_F_CSUM: the field holds the pseudo-header sum."""
    pkt = bytearray(full)
    l4 = (pkt[0] & 15) * 4
    proto = pkt[P.IP_PROTO]
    length = P.get_u16(pkt, P.IP_TOTAL_LEN)[0] - l4
    s = P.pseudo_header_sum(P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0], proto, length)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    P.put_u16(pkt, l4 + (16 if proto == P.PROTO_TCP else 6), s)
    return pkt


def _csum_at(pkt) -> tuple[int, int]:
    l4 = (pkt[0] & 15) * 4
    return l4, 16 if pkt[P.IP_PROTO] == P.PROTO_TCP else 6


@given(
    size=st.integers(0, 65_000),
    tcp=st.booleans(),
    sport=st.integers(1024, 65535),
    syn=st.booleans(),
    compiled=st.booleans() if COMPILED else st.just(False),
    seed=st.integers(0, 2**16),
)
# a UDP datagram whose checksum computes to 0: sent as 0xFFFF, by the NAT and by the finished partial one
@example(size=1024, tcp=False, sport=1024, syn=False, compiled=False, seed=355)
def test_a_partial_checksum_packet_translates_to_what_a_full_one_does_both_ways(
    size, tcp, sport, syn, compiled, seed
):
    payload = random.Random(seed).randbytes(size)
    flags = P.TCP_SYN if syn else P.TCP_ACK_FLAG
    options = P.mss_option(1460) if syn else b""

    def build(s: int, d: int, sp: int, dp: int) -> bytearray:
        if tcp:
            return P.build_tcp(s, d, sp, dp, payload=payload, flags=flags, options=options)
        return P.build_udp(s, d, sp, dp, payload)

    full_nat, partial_nat = (Nat(make_nat().config, random.Random(1), compiled) for _ in range(2))
    if tcp and not syn:  # an established connection on both NATs first
        for nat in (full_nat, partial_nat):
            assert nat.translate_outbound(P.build_tcp(C, SRV, sport, 443, flags=P.TCP_SYN), 0) == FORWARD
    full = build(C, SRV, sport, 443)
    partial = _partial(full)
    assert full_nat.translate_outbound(full, 1) == FORWARD
    assert translate_partial(partial_nat.translate_outbound, partial, 1) == FORWARD
    finish_checksum(partial, *_csum_at(partial))
    assert partial == full
    if size < 60_000:
        verify(partial)  # dpkt, every checksum recomputed from scratch
    ext = P.get_2u16(full, (full[0] & 15) * 4)[0]
    if tcp and syn:
        return  # the reply would be a SYN-ACK: covered by the outbound SYN's MSS clamp above
    reply_full = build(SRV, PUB, 443, ext)
    reply_partial = _partial(reply_full)
    assert full_nat.translate_inbound(reply_full, 2) == FORWARD
    assert translate_partial(partial_nat.translate_inbound, reply_partial, 2) == FORWARD
    finish_checksum(reply_partial, *_csum_at(reply_partial))
    assert reply_partial == reply_full


def test_a_dropped_packet_keeps_its_partial_field_for_the_icmp_error_that_quotes_it():
    nat = make_nat()
    pkt = _partial(P.build_udp(C, SRV, 4000, 53, b"x" * 100, ttl=1))
    before = bytes(pkt)
    assert translate_partial(nat.translate_outbound, pkt, 0) != FORWARD
    assert bytes(pkt) == before


@given(
    size=st.integers(1, 65_000),
    gso_size=st.integers(500, 1460),
    tcp=st.booleans(),
    fin=st.booleans(),
    seq=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**16),
)
def test_a_super_packet_is_cut_into_the_packets_the_kernel_would_send(size, gso_size, tcp, fin, seq, seed):
    """``segment`` (a super-packet for a client without offloads) against dpkt: every piece a valid,
    fully checksummed packet of at most gso_size bytes of payload; together, the payload in order; TCP
    sequence numbers contiguous; FIN and PSH on the last piece only."""
    import dpkt

    from gw import vnet as V
    from gw.offload import segment

    payload = random.Random(seed).randbytes(size)
    if tcp:
        flags = P.TCP_ACK_FLAG | 0x08 | (0x01 if fin else 0)
        full = P.build_tcp(C, SRV, 40000, 443, payload=payload, flags=flags, seq=seq, ident=7)
        gso = V.VNET_GSO_TCPV4
    else:
        full = P.build_udp(C, SRV, 40000, 443, payload, ident=7)
        gso = V.VNET_GSO_UDP_L4
    l4, at = _csum_at(full)
    hdr = bytearray(V.VNET_HDR_LEN)
    V.write_header(hdr, 0, V.VNET_F_NEEDS_CSUM, gso, 0, gso_size, l4, at)
    pieces = segment(bytes(hdr + _partial(full)))
    assert pieces is not None and len(pieces) == -(-size // gso_size)
    got = b""
    for i, piece in enumerate(pieces):
        ip = dpkt.ip.IP(bytes(piece))
        assert ip.len == len(piece) and P.checksum(piece, 0, 20) == 0
        seg = ip.data
        assert 0 < len(seg.data) <= gso_size
        assert P.l4_checksum(bytearray(piece)) == (seg.sum if tcp else (seg.sum if seg.sum != 0xFFFF else 0))
        if tcp:
            assert seg.seq == (seq + len(got)) & 0xFFFFFFFF
            last = i == len(pieces) - 1
            assert bool(seg.flags & 0x01) == (fin and last) and bool(seg.flags & 0x08) == last
        got += seg.data
    assert got == payload
