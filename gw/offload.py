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


def finish_checksum(pkt: bytearray, csum_start: int, csum_offset: int) -> None:
    """What the kernel does with a ``NEEDS_CSUM`` packet: the sum from ``csum_start``, stored inverted."""
    s = P.checksum(pkt, csum_start, P.get_u16(pkt, P.IP_TOTAL_LEN)[0])
    P.put_u16(pkt, csum_start + csum_offset, s)
