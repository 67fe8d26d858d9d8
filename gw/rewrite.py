"""In-place rewrites for the NAT's general path: addresses, ports, identifiers, TTL, IP ID, TCP MSS.

Each function changes one field of a packet that passed ``packet.check_ipv4`` and updates the checksums
it covers incrementally (RFC 1624 eqn. 3, ``packet.csum_adjust``); none builds a per-packet object. The
fast paths in ``gw.nat`` (and their compiled twin) do the same arithmetic inline.
"""

from __future__ import annotations

from gw import packet as P


def decrement_ttl(pkt: bytearray | memoryview) -> None:
    """Lower the TTL by one, fixing the header checksum (RFC 1812 5.3.1; the caller checked TTL > 1)."""
    ttl = pkt[P.IP_TTL]
    pkt[P.IP_TTL] = ttl - 1
    # the TTL is the high byte of the TTL/protocol word: the word drops by 0x0100
    P.put_u16(pkt, P.IP_CSUM, P.csum_adjust(P.get_u16(pkt, P.IP_CSUM)[0], 0xFEFF))


def rewrite_ip_id(pkt: bytearray | memoryview, new: int) -> None:
    """Set the IP identification, fixing the header checksum."""
    old = P.get_u16(pkt, P.IP_ID)[0]
    P.put_u16(pkt, P.IP_ID, new)
    P.put_u16(pkt, P.IP_CSUM, P.csum_adjust(P.get_u16(pkt, P.IP_CSUM)[0], (~old & 0xFFFF) + new))


def rewrite_addr(pkt: bytearray | memoryview, field: int, new: int) -> None:
    """Set the IPv4 source or destination and fix the header checksum (RFC 1624)."""
    old = P.get_u32(pkt, field)[0]
    csum = P.get_u16(pkt, P.IP_CSUM)[0]
    P.put_u32(pkt, field, new)
    P.put_u16(pkt, P.IP_CSUM, P.csum_adjust(csum, P.addr_delta(old, new)))


def rewrite_port(
    pkt: bytearray | memoryview,
    l4: int,
    proto: int,
    port_off: int,
    old_addr: int,
    new_addr: int,
    old_port: int,
    new_port: int,
) -> None:
    """Set a TCP/UDP port and fix the L4 checksum for it and the pseudo-header address change."""
    P.put_u16(pkt, l4 + port_off, new_port)
    at = l4 + (P.TCP_CSUM if proto == P.PROTO_TCP else P.UDP_CSUM)
    c = P.get_u16(pkt, at)[0]
    if c == 0 and proto == P.PROTO_UDP:
        return  # no checksum stays no checksum (RFC 768)
    c = P.csum_adjust(c, P.addr_delta(old_addr, new_addr) + (~old_port & 0xFFFF) + new_port)
    P.put_u16(pkt, at, c or 0xFFFF if proto == P.PROTO_UDP else c)


def rewrite_icmp_id(pkt: bytearray | memoryview, l4: int, old: int, new: int, limit: int | None = None) -> None:
    """Set an ICMP echo identifier and fix the ICMP checksum (no pseudo-header in ICMP)."""
    P.put_u16(pkt, l4 + P.ICMP_ID, new)
    if limit is None or l4 + P.ICMP_CSUM + 2 <= limit:
        c = P.get_u16(pkt, l4 + P.ICMP_CSUM)[0]
        P.put_u16(pkt, l4 + P.ICMP_CSUM, P.csum_adjust(c, (~old & 0xFFFF) + new))


def clamp_mss(pkt: bytearray | memoryview, l4: int, mss: int) -> None:
    """Lower the MSS option of a SYN to ``mss`` (RFC 6691), fixing the TCP checksum; other options untouched."""
    for kind, at, length in P.tcp_options(pkt, l4):
        if kind == P.TCP_OPT_MSS and length == 4:
            old = P.get_u16(pkt, at + 2)[0]
            if old > mss:
                P.put_u16(pkt, at + 2, mss)
                csum = l4 + P.TCP_CSUM
                P.put_u16(pkt, csum, P.csum_adjust(P.get_u16(pkt, csum)[0], (~old & 0xFFFF) + mss))
            return
