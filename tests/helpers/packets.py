"""Shared test helpers: addresses, a fake clock, a seeded NAT factory, and independent packet oracles.

The oracles here do not use ``gw.packet``'s checksum code: ``inet_sum`` is a plain RFC 1071 loop, and
``verify`` re-parses with dpkt and recomputes every checksum from scratch, so a wrong incremental update
in the code under test cannot hide behind the same wrong arithmetic in the test.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass

import dpkt

from gw.config import NatConfig
from gw.nat import Nat

NS = 1_000_000_000

# the lab's addresses (DESIGN.md "Lab and tests")
VPN_GW = "10.66.77.1"
CLIENT = "10.66.77.2"
CLIENT_B = "10.66.77.3"
PUBLIC = "198.51.100.1"
PUBLIC_2 = "198.51.100.2"
ROUTER = "198.51.100.254"
SERVER = "203.0.113.10"
SERVER_2 = "203.0.113.20"


def A(text: str) -> int:
    """'10.66.77.2' -> int (independent of gw.inet)."""
    return int(ipaddress.IPv4Address(text))


def ntoa(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


# ---------------------------------------------------------------------- clock and NAT factory


@dataclass
class Clock:
    """The fake clock: an int of nanoseconds the test advances."""

    now: int = 1_700_000_000 * NS

    def advance(self, seconds: float) -> int:
        self.now += int(seconds * NS)
        return self.now


def nat_config(**overrides: object) -> NatConfig:
    return NatConfig(**overrides)


def make_nat(seed: int = 7, **overrides: object) -> Nat:
    """A Nat with the default config changed by ``overrides`` and a seeded ``random.Random``."""
    return Nat(NatConfig(**overrides), random.Random(seed))


# ---------------------------------------------------------------------- independent checksum oracle


def inet_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 ones'-complement sum of 16-bit words, folded to 16 bits (a plain loop, on purpose)."""
    if len(data) % 2:
        data += b"\0"
    s = (initial & 0xFFFF) + (initial >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    return inet_sum(src + dst + struct.pack("!BBH", 0, proto, length))


def ip_header_ok(header: bytes) -> bool:
    return inet_sum(header) == 0xFFFF


def l4_ok(src: bytes, dst: bytes, proto: int, segment: bytes) -> bool:
    """Whether a complete TCP/UDP segment's checksum verifies (a UDP checksum of 0 means none: RFC 768)."""
    if proto == dpkt.ip.IP_PROTO_UDP and segment[6:8] == b"\0\0":
        return True
    return inet_sum(segment, pseudo_sum(src, dst, proto, len(segment))) == 0xFFFF


def fresh_ip_checksum(header: bytes) -> int:
    """The header checksum a header should carry, recomputed from scratch."""
    h = bytearray(header)
    h[10:12] = b"\0\0"
    return ~inet_sum(bytes(h)) & 0xFFFF


def fresh_l4_checksum(src: bytes, dst: bytes, proto: int, segment: bytes) -> int:
    """The TCP/UDP checksum a complete segment should carry, recomputed from scratch (UDP 0 -> 0xFFFF)."""
    seg = bytearray(segment)
    at = 16 if proto == dpkt.ip.IP_PROTO_TCP else 6
    seg[at : at + 2] = b"\0\0"
    c = ~inet_sum(bytes(seg), pseudo_sum(src, dst, proto, len(seg))) & 0xFFFF
    return 0xFFFF if c == 0 and proto == dpkt.ip.IP_PROTO_UDP else c


def _is_fragment(ip: dpkt.ip.IP) -> bool:
    return bool(ip.mf or ip.offset)


def verify(pkt: bytes | bytearray) -> dpkt.ip.IP:
    """Re-parse with dpkt and check every checksum by full recomputation; return the dpkt packet.

    Checks: IPv4 header checksum; total length == buffer length; for an unfragmented packet the TCP/UDP
    checksum over the pseudo-header or the ICMP checksum; for an ICMP error the quoted header checksum
    and, when the quote holds the whole original datagram, its L4 checksum too.
    """
    raw = bytes(pkt)
    ip = dpkt.ip.IP(raw)
    hlen = ip.hl * 4
    assert ip.v == 4
    assert ip.len == len(raw), f"total length {ip.len} != buffer {len(raw)}"
    assert ip_header_ok(raw[:hlen]), f"bad IPv4 header checksum {raw[10:12].hex()}"
    if _is_fragment(ip):
        return ip
    body = raw[hlen:]
    if ip.p in (dpkt.ip.IP_PROTO_TCP, dpkt.ip.IP_PROTO_UDP):
        assert l4_ok(raw[12:16], raw[16:20], ip.p, body), f"bad L4 checksum in {raw.hex()}"
    elif ip.p == dpkt.ip.IP_PROTO_ICMP:
        assert inet_sum(body) == 0xFFFF, f"bad ICMP checksum in {raw.hex()}"
        if body[0] in (3, 4, 11, 12):
            _verify_quote(body[8:])
    return ip


def _verify_quote(quote: bytes) -> None:
    qhl = (quote[0] & 0x0F) * 4
    assert ip_header_ok(quote[:qhl]), "bad quoted IPv4 header checksum"
    qtotal, qproto = struct.unpack_from("!H", quote, 2)[0], quote[9]
    qfrag = struct.unpack_from("!H", quote, 6)[0]
    if qtotal <= len(quote) and not qfrag & 0x3FFF:  # the whole original is quoted: check its L4 sum
        seg = quote[qhl:qtotal]
        if qproto in (dpkt.ip.IP_PROTO_TCP, dpkt.ip.IP_PROTO_UDP):
            assert l4_ok(quote[12:16], quote[16:20], qproto, seg), "bad quoted L4 checksum"
        elif qproto == dpkt.ip.IP_PROTO_ICMP:
            assert inet_sum(seg) == 0xFFFF, "bad quoted ICMP checksum"


def endpoints(pkt: bytes | bytearray) -> tuple[str, int, str, int]:
    """(src, sport, dst, dport) of a TCP/UDP packet, or (src, ident, dst, ident) of an ICMP echo."""
    ip = dpkt.ip.IP(bytes(pkt))
    src, dst = ntoa(int.from_bytes(ip.src, "big")), ntoa(int.from_bytes(ip.dst, "big"))
    if ip.p == dpkt.ip.IP_PROTO_ICMP:
        ident = struct.unpack_from("!H", bytes(pkt), ip.hl * 4 + 4)[0]
        return src, ident, dst, ident
    sport, dport = struct.unpack_from("!HH", bytes(pkt), ip.hl * 4)
    return src, sport, dst, dport


def with_ttl(pkt: bytes | bytearray, ttl: int) -> bytes:
    """The packet with another TTL and a freshly computed header checksum."""
    b = bytearray(pkt)
    b[8] = ttl
    b[10:12] = struct.pack("!H", fresh_ip_checksum(bytes(b[: (b[0] & 0x0F) * 4])))
    return bytes(b)


def hopped(pkt: bytes | bytearray) -> bytes:
    """The packet as a router hop forwards it: TTL one less (what an ICMP error beyond the NAT quotes)."""
    return with_ttl(pkt, pkt[8] - 1)


# ---------------------------------------------------------------------- fragments


def fragment(pkt: bytes | bytearray, size: int) -> list[bytearray]:
    """Split an option-less IPv4 packet into fragments of at most ``size`` payload bytes (a multiple of 8)."""
    assert size % 8 == 0
    raw = bytes(pkt)
    hlen = (raw[0] & 0x0F) * 4
    header, payload = raw[:hlen], raw[hlen:]
    frags = []
    for off in range(0, len(payload), size):
        chunk = payload[off : off + size]
        more = off + size < len(payload)
        h = bytearray(header)
        struct.pack_into("!H", h, 2, hlen + len(chunk))
        struct.pack_into("!H", h, 6, (0x2000 if more else 0) | off // 8)
        struct.pack_into("!H", h, 10, 0)
        struct.pack_into("!H", h, 10, ~inet_sum(bytes(h)) & 0xFFFF)
        frags.append(bytearray(h + chunk))
    return frags


def reassemble(frags: list[bytes | bytearray]) -> bytes:
    """Join fragments (any order) back into one datagram with a fresh header checksum; asserts no gaps."""
    parts = sorted((struct.unpack_from("!H", f, 6)[0] & 0x1FFF) * 8 for f in frags)
    by_off = {(struct.unpack_from("!H", f, 6)[0] & 0x1FFF) * 8: bytes(f) for f in frags}
    first = by_off[0]
    hlen = (first[0] & 0x0F) * 4
    payload = b""
    for off in parts:
        f = by_off[off]
        assert off == len(payload), f"gap or overlap at {off}"
        payload += f[(f[0] & 0x0F) * 4 :]
    last = by_off[parts[-1]]
    assert not struct.unpack_from("!H", last, 6)[0] & 0x2000, "last fragment has MF set"
    h = bytearray(first[:hlen])
    struct.pack_into("!H", h, 2, hlen + len(payload))
    struct.pack_into("!H", h, 6, struct.unpack_from("!H", h, 6)[0] & 0x4000)
    struct.pack_into("!H", h, 10, 0)
    struct.pack_into("!H", h, 10, ~inet_sum(bytes(h)) & 0xFFFF)
    return bytes(h) + payload
