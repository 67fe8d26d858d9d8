"""Packets whose TCP/UDP checksum the kernel will finish (virtio-net ``NEEDS_CSUM``), through the NAT.

Theory of operation
-------------------
With ``TUN_F_CSUM`` on, the kernel hands user space TCP and UDP packets, super-packets of up to 64 KB
included, whose checksum field holds the folded pseudo-header sum, not inverted, and finishes the
checksum over ``csum_start``.. itself when the packet goes back (Linux ``CHECKSUM_PARTIAL``). The NAT's
rewrites assume a full checksum. So ``translate_partial`` lets the NAT rewrite everything as usual
(addresses, ports, TTL, MSS, the IPv4 header checksum, which is always full; what it does to the L4
field does not matter), and then writes the partial field the new packet needs: the old pseudo-header
sum with the address change applied, without inversion (Linux ``inet_proto_csum_replace4`` with
``pseudohdr``). The field is never 0 (a folded sum of a nonzero pseudo-header), so the NAT never takes
it for UDP's "no checksum".
Ports and MSS are not in that sum: the kernel covers them when it finishes the checksum. The cost is a
few microseconds per packet, which with super-packets is per 64 KB.
"""

from __future__ import annotations

from collections.abc import Callable

from gw import packet as P
from gw import vnet as V
from gw.verdict import Verdict

_CSUM_AT = {P.PROTO_TCP: 16, P.PROTO_UDP: 6}  # the checksum's offset in the TCP and UDP headers
_PASSED = (Verdict.FORWARD, Verdict.HAIRPIN)


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def translate_partial(
    translate: Callable[[bytearray | memoryview, int], int], pkt: bytearray | memoryview, now: int
) -> int:
    """``translate(pkt, now)`` (a NAT direction) for a ``NEEDS_CSUM`` packet; the partial field follows.

    A packet that is not TCP/UDP, too short, or a later fragment goes through ``translate`` as it is."""
    if len(pkt) < 20:
        return translate(pkt, now)
    proto, l4 = pkt[P.IP_PROTO], (pkt[0] & 15) * 4
    at = _CSUM_AT.get(proto, -1)
    if at < 0 or len(pkt) < l4 + at + 2 or P.get_u16(pkt, P.IP_FRAG)[0] & P.IP_OFFSET_MASK:
        return translate(pkt, now)
    field = l4 + at
    partial = P.get_u16(pkt, field)[0]
    src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
    verdict = translate(pkt, now)
    if verdict not in _PASSED:  # untouched (a drop, or TTL exceeded to be quoted): as it came
        P.put_u16(pkt, field, partial)
        return verdict
    new_src, new_dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
    P.put_u16(pkt, field, _fold(partial + P.addr_delta(src, new_src) + P.addr_delta(dst, new_dst)))
    return verdict


MIN_GSO_SIZE = 128  # smallest segment size taken from a client: no real MSS is below it, and a tiny
# one would make the kernel cut one 64 KB packet into hundreds of frames


def header_fits(pkt: bytes | bytearray | memoryview) -> bool:
    """Whether a packet's virtio-net header (as a client sent it) describes the packet: the kernel acts
    on it when the packet goes out (raw gateway's GSO, another client's TUN), so a header from a
    client is checked before anything passes it on. A checksum to finish must be the L4 checksum of a
    TCP/UDP packet that is not a later fragment; a super-packet's type must match its protocol (a TCP
    one with a whole TCP header), with a checksum to finish and a segment size of at least
    ``MIN_GSO_SIZE``; ``hdr_len`` within the packet."""
    if len(pkt) < V.VNET_HDR_LEN + 20:
        return False
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = V.read_header(pkt)
    ihl, proto = (pkt[V.VNET_HDR_LEN] & 15) * 4, pkt[V.VNET_HDR_LEN + P.IP_PROTO]
    if hdr_len > len(pkt) - V.VNET_HDR_LEN:
        return False
    needs_csum = flags & V.VNET_F_NEEDS_CSUM
    if needs_csum and (csum_start != ihl or csum_offset != _CSUM_AT.get(proto, -1)
                       or P.get_u16(pkt, V.VNET_HDR_LEN + P.IP_FRAG)[0] & P.IP_OFFSET_MASK):  # fmt: skip
        return False
    kind = gso_type & ~V.VNET_GSO_ECN
    if kind == V.VNET_GSO_NONE:
        return True
    wanted = {V.VNET_GSO_TCPV4: P.PROTO_TCP, V.VNET_GSO_UDP_L4: P.PROTO_UDP}.get(kind)
    if wanted == P.PROTO_TCP and (len(pkt) < V.VNET_HDR_LEN + ihl + 20 or pkt[V.VNET_HDR_LEN + ihl + 12] >> 4 < 5):
        return False  # no whole TCP header to repeat in each segment
    return wanted == proto and bool(needs_csum) and gso_size >= MIN_GSO_SIZE


def finish_checksum(pkt: bytearray, csum_start: int, csum_offset: int) -> None:
    """What the kernel does with a ``NEEDS_CSUM`` packet: the sum from ``csum_start``, stored inverted;
    for UDP a computed 0 goes out as 0xFFFF, as the NAT writes it (0 means no checksum, RFC 768)."""
    s = P.checksum(pkt, csum_start, P.get_u16(pkt, P.IP_TOTAL_LEN)[0])
    P.put_u16(pkt, csum_start + csum_offset, s or 0xFFFF if pkt[P.IP_PROTO] == P.PROTO_UDP else s)


def segment(pkt: bytes | bytearray | memoryview) -> list[bytearray] | None:
    """A packet with its vnet header, as the plain, fully checksummed IPv4 packets a peer without
    offloads can take: a TCP or UDP super-packet cut at ``gso_size`` as the kernel's software GSO
    does (Linux ``tcp_gso_segment``, ``__udp_gso_segment``), anything else with its checksum finished.
    None when the header or the packet is malformed (a checksum to finish inside the IPv4 header
    included), or its GSO type is not IPv4 TCP/UDP."""
    if len(pkt) < V.VNET_HDR_LEN + 20:
        return None
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = V.read_header(pkt)
    ip = bytearray(pkt[V.VNET_HDR_LEN :])
    ihl, total = (ip[0] & 15) * 4, P.get_u16(ip, P.IP_TOTAL_LEN)[0]
    if ip[0] >> 4 != 4 or ihl < 20 or not ihl <= total <= len(ip):
        return None
    del ip[total:]
    kind = gso_type & ~V.VNET_GSO_ECN
    if flags & V.VNET_F_NEEDS_CSUM and csum_start < ihl:
        return None  # the checksum would be written over the IPv4 header
    if kind == V.VNET_GSO_NONE:
        if flags & V.VNET_F_NEEDS_CSUM:
            if csum_start + csum_offset + 2 > total:
                return None
            finish_checksum(ip, csum_start, csum_offset)
        return [ip]
    proto = ip[P.IP_PROTO]
    if kind == V.VNET_GSO_TCPV4 and proto == P.PROTO_TCP and total >= ihl + 20 and ip[ihl + 12] >> 4 >= 5:
        head_len = ihl + (ip[ihl + 12] >> 4) * 4  # a data offset below 5 words is no TCP header (fuzzing)
    elif kind == V.VNET_GSO_UDP_L4 and proto == P.PROTO_UDP and total >= ihl + 8:
        head_len = ihl + 8
    else:
        return None
    if not gso_size or head_len > total:
        return None
    head, payload = ip[:head_len], memoryview(ip)[head_len:]
    ident, seq, tcp_flags = P.get_u16(ip, P.IP_ID)[0], 0, 0
    if proto == P.PROTO_TCP:
        seq, tcp_flags = P.get_u32(ip, ihl + 4)[0], ip[ihl + 13]
    out = []
    for i, start in enumerate(range(0, len(payload), gso_size)):
        seg = head + payload[start : start + gso_size]
        last = start + gso_size >= len(payload)
        P.put_u16(seg, P.IP_TOTAL_LEN, len(seg))
        P.put_u16(seg, P.IP_ID, (ident + i) & 0xFFFF)
        P.put_u16(seg, P.IP_CSUM, 0)
        P.put_u16(seg, P.IP_CSUM, P.checksum(seg, 0, ihl))
        if proto == P.PROTO_TCP:
            P.put_u32(seg, ihl + 4, (seq + start) & 0xFFFFFFFF)
            # FIN and PSH belong to the last segment, CWR to the first (Linux tcp_gso_segment)
            seg[ihl + 13] = tcp_flags & ~(0 if last else 0x09) & ~(0 if i == 0 else 0x80)
            P.put_u16(seg, ihl + 16, 0)
            P.put_u16(seg, ihl + 16, P.l4_checksum(seg, ihl))
        else:
            P.put_u16(seg, ihl + 4, len(seg) - ihl)
            P.put_u16(seg, ihl + 6, 0)
            P.put_u16(seg, ihl + 6, P.l4_checksum(seg, ihl) or 0xFFFF)
        out.append(seg)
    return out
