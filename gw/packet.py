"""IPv4, UDP, TCP and ICMP at the byte level: offsets, one bounded reader, checksums, builders.

Theory of operation
-------------------
Packets are ``bytearray`` buffers rewritten in place. Every field the data path needs is read with a
precompiled ``struct.Struct`` (one read per header) and written with ``pack_into``; nothing here builds
a per-packet object.

``check_ipv4`` is the one bounded reader for bytes from the wire: it returns 0 when the buffer holds
one well-formed IPv4 header (version 4, 5 <= IHL, header inside the buffer, total length inside the
buffer and not shorter than the header, header checksum right) and a ``Drop`` reason otherwise. Bytes
past the total length (link padding) are the caller's to trim. The NAT's fast path accepts only the
common shape (IHL 5, total length == buffer length, checksum right) inline and sends everything else
through this reader.

Checksums (RFC 1071) are computed with one big-integer reduction: the ones'-complement sum of 16-bit
words equals the buffer read as one big-endian integer, modulo 0xFFFF, because 2**16 == 1 (mod 0xFFFF).
Rewrites update checksums incrementally (RFC 1624 eqn. 3, ``csum_adjust``).

Offsets named ``V4_*`` are absolute for IHL = 5 (the fast path); ``UDP_*``, ``TCP_*`` and ``ICMP_*``
are relative to the L4 header.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from gw.verdict import DROP_COUNT, Drop  # noqa: F401  (re-exported)

# --- RFC 791 IPv4 header -----------------------------------------------------------------------
IP_VER_IHL = 0
IP_TOTAL_LEN = 2
IP_ID = 4
IP_FRAG = 6  # flags (3 bits) + fragment offset in 8-byte units (13 bits)
IP_TTL = 8
IP_PROTO = 9
IP_CSUM = 10
IP_SRC = 12
IP_DST = 16
IP_MIN_HLEN = 20
IP_MF = 0x2000  # more fragments
IP_DF = 0x4000  # don't fragment
IP_OFFSET_MASK = 0x1FFF
IP_FRAG_MASK = IP_MF | IP_OFFSET_MASK  # nonzero: the packet is a fragment

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17

# --- RFC 768 UDP, RFC 9293 TCP, RFC 792 ICMP (offsets relative to the L4 header) ---------------
UDP_SPORT = 0
UDP_DPORT = 2
UDP_LEN = 4
UDP_CSUM = 6
UDP_HLEN = 8
TCP_SPORT = 0
TCP_DPORT = 2
TCP_SEQ = 4
TCP_ACK = 8
TCP_OFF = 12  # data offset (high nibble)
TCP_FLAGS = 13
TCP_WINDOW = 14
TCP_CSUM = 16
TCP_MIN_HLEN = 20
TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK_FLAG = 0x10
TCP_OPT_END = 0
TCP_OPT_NOP = 1
TCP_OPT_MSS = 2
TCP_OPT_WSCALE = 3  # RFC 7323
TCP_MAX_WSCALE = 14  # RFC 7323 2.3
ICMP_TYPE = 0
ICMP_CODE = 1
ICMP_CSUM = 2
ICMP_ID = 4
ICMP_SEQ = 6
ICMP_HLEN = 8
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAM_PROBLEM = 12
ICMP_FRAG_NEEDED = 4  # code of ICMP_DEST_UNREACH (RFC 1191)
ICMP_PORT_UNREACH = 3  # code of ICMP_DEST_UNREACH
ICMP_ERROR_TYPES = frozenset({ICMP_DEST_UNREACH, ICMP_SOURCE_QUENCH, ICMP_TIME_EXCEEDED, ICMP_PARAM_PROBLEM})

# --- absolute offsets for IHL = 5 (fast path) ----------------------------------------------------
V4_L4 = 20
V4_SPORT = 20  # UDP/TCP source port, ICMP type+code
V4_DPORT = 22
V4_UDP_CSUM = 26
V4_TCP_FLAGS = 33
V4_TCP_CSUM = 36
V4_ICMP_CSUM = 22
V4_ICMP_ID = 24

# IPv4 header (IHL=5): ver/ihl, total length, fragment word, proto, checksum, src, dst
_V4 = struct.Struct("!B x H 2x H x B H I I")
read_v4 = _V4.unpack_from
# the ten 16-bit words of an IHL=5 header, for the checksum check
_V4_WORDS = struct.Struct("!10H")
read_v4_words = _V4_WORDS.unpack_from
# IHL=5 header + the first 8 L4 bytes as ports and checksum: (UDP) sport, dport, csum
_V4_UDP = struct.Struct("!B x H 2x H x B H I I H H 2x H")
read_v4_udp = _V4_UDP.unpack_from
# IHL=5 + TCP: ver/ihl, total, frag, proto, ipcsum, src, dst, sport, dport, flags, tcp csum
_V4_TCP = struct.Struct("!B x H 2x H x B H I I H H 9x B 2x H")
read_v4_tcp = _V4_TCP.unpack_from
# IHL=5 + ICMP echo: ... type, code, icmp csum, identifier
_V4_ICMP = struct.Struct("!B x H 2x H x B H I I B B H H")
read_v4_icmp = _V4_ICMP.unpack_from

put_u8 = struct.Struct("!B").pack_into
put_u16 = struct.Struct("!H").pack_into
put_u32 = struct.Struct("!I").pack_into
put_2u16 = struct.Struct("!HH").pack_into
get_u8 = struct.Struct("!B").unpack_from
get_u16 = struct.Struct("!H").unpack_from
get_u32 = struct.Struct("!I").unpack_from
get_2u16 = struct.Struct("!HH").unpack_from

_IPV4_HDR = struct.Struct("!BBHHHBBHII")  # a whole option-less header, for builders


# Drop reasons live with the other outcomes in gw.verdict; re-exported here for the readers of packets.



def checksum(
    buf: bytes | bytearray | memoryview, start: int = 0, end: int | None = None, initial: int = 0
) -> int:
    """RFC 1071 internet checksum of buf[start:end], plus an initial ones'-complement sum (a pseudo-header)."""
    data = bytes(buf[start:end])
    if len(data) & 1:
        data += b"\0"
    s = int.from_bytes(data, "big") % 0xFFFF + initial
    s = s % 0xFFFF
    # the mod maps a sum of 0xFFFF to 0; the two are the same ones'-complement value except for all-zero data
    if s == 0 and (initial or any(data)):
        s = 0xFFFF
    return ~s & 0xFFFF


def pseudo_header_sum(src: int, dst: int, proto: int, length: int) -> int:
    """Ones'-complement sum of the TCP/UDP pseudo-header (RFC 768, RFC 9293 3.1), unfolded."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length


def csum_adjust(csum: int, delta: int) -> int:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'); ``delta`` is the summed ``~m + m'`` terms."""
    s = (~csum & 0xFFFF) + delta
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def addr_delta(old: int, new: int) -> int:
    """The ``~m + m'`` terms for a 32-bit field changing from old to new."""
    return (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)


def check_ipv4(pkt: bytes | bytearray | memoryview) -> int:
    """The bounded reader: 0 if pkt starts with a sound IPv4 header, else the ``Drop`` reason.

    Raises nothing; anything else is a bug.
    """
    n = len(pkt)
    if n < IP_MIN_HLEN:
        return Drop.TRUNCATED
    vihl = pkt[0]
    hlen = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or hlen < IP_MIN_HLEN:
        return Drop.BAD_VERSION
    if hlen > n:
        return Drop.TRUNCATED
    total = pkt[2] << 8 | pkt[3]
    if total < hlen or total > n:
        return Drop.BAD_LENGTH
    if checksum(pkt, 0, hlen) != 0:
        return Drop.BAD_CHECKSUM
    return 0


def ip_header_len(pkt: bytes | bytearray | memoryview) -> int:
    """Header length in bytes of a packet that passed ``check_ipv4``."""
    return (pkt[0] & 0x0F) * 4


def l4_checksum(pkt: bytes | bytearray, ihl: int | None = None) -> int:
    """The TCP/UDP checksum a packet's L4 segment should carry (computed over its current bytes, field zeroed)."""
    ihl = ip_header_len(pkt) if ihl is None else ihl
    total = get_u16(pkt, IP_TOTAL_LEN)[0]
    proto = pkt[IP_PROTO]
    src, dst = struct.unpack_from("!II", pkt, IP_SRC)
    seg = bytearray(pkt[ihl:total])
    off = TCP_CSUM if proto == PROTO_TCP else UDP_CSUM
    seg[off : off + 2] = b"\0\0"
    c = checksum(seg, initial=pseudo_header_sum(src, dst, proto, len(seg)) % 0xFFFF)
    if proto == PROTO_UDP and c == 0:
        c = 0xFFFF
    return c


def fix_checksums(pkt: bytearray) -> bytearray:
    """Recompute the IPv4 header checksum and, for an unfragmented TCP/UDP/ICMP packet, the L4 one.

    For builders and synthesized packets; the data path updates checksums incrementally.
    """
    ihl = ip_header_len(pkt)
    put_u16(pkt, IP_CSUM, 0)
    put_u16(pkt, IP_CSUM, checksum(pkt, 0, ihl))
    frag = get_u16(pkt, IP_FRAG)[0]
    if frag & IP_FRAG_MASK:
        return pkt
    proto = pkt[IP_PROTO]
    total = get_u16(pkt, IP_TOTAL_LEN)[0]
    if proto in (PROTO_TCP, PROTO_UDP):
        off = ihl + (TCP_CSUM if proto == PROTO_TCP else UDP_CSUM)
        put_u16(pkt, off, l4_checksum(pkt, ihl))
    elif proto == PROTO_ICMP:
        put_u16(pkt, ihl + ICMP_CSUM, 0)
        put_u16(pkt, ihl + ICMP_CSUM, checksum(pkt, ihl, total))
    return pkt


# --- builders (tests, and packets the gateway synthesizes) --------------------------------------


def build_ipv4(
    src: int,
    dst: int,
    proto: int,
    payload: bytes,
    *,
    ttl: int = 64,
    ident: int = 0,
    flags_frag: int = 0,
    tos: int = 0,
    options: bytes = b"",
) -> bytearray:
    """An IPv4 packet around ``payload`` with a correct header checksum (L4 checksums untouched)."""
    assert len(options) % 4 == 0, "IPv4 options are padded to 32 bits"
    hlen = IP_MIN_HLEN + len(options)
    pkt = bytearray(
        _IPV4_HDR.pack(0x40 | hlen // 4, tos, hlen + len(payload), ident, flags_frag, ttl, proto, 0, src, dst)
    )
    pkt += options
    put_u16(pkt, IP_CSUM, checksum(pkt, 0, hlen))
    pkt += payload
    return pkt


def build_udp(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    payload: bytes = b"",
    *,
    zero_checksum: bool = False,
    **ip: int,
) -> bytearray:
    """A UDP datagram with correct checksums; ``zero_checksum`` sends checksum 0 (RFC 768: none)."""
    seg = struct.pack("!HHHH", sport, dport, UDP_HLEN + len(payload), 0) + payload
    pkt = build_ipv4(src, dst, PROTO_UDP, seg, **ip)
    if not zero_checksum:
        ihl = ip_header_len(pkt)
        put_u16(pkt, ihl + UDP_CSUM, l4_checksum(pkt, ihl))
    return pkt


def build_tcp(
    src: int,
    dst: int,
    sport: int,
    dport: int,
    *,
    flags: int = TCP_ACK_FLAG,
    seq: int = 0,
    ack: int = 0,
    window: int = 65535,
    options: bytes = b"",
    payload: bytes = b"",
    **ip: int,
) -> bytearray:
    """A TCP segment with correct checksums."""
    assert len(options) % 4 == 0, "TCP options are padded to 32 bits"
    off = (TCP_MIN_HLEN + len(options)) // 4
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, window, 0, 0) + options + payload
    pkt = build_ipv4(src, dst, PROTO_TCP, seg, **ip)
    ihl = ip_header_len(pkt)
    put_u16(pkt, ihl + TCP_CSUM, l4_checksum(pkt, ihl))
    return pkt


def build_icmp(
    src: int, dst: int, icmp_type: int, code: int, rest: bytes, body: bytes = b"", **ip: int
) -> bytearray:
    """An ICMP message: type, code, checksum, the 4-byte ``rest`` word(s), then ``body``."""
    msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + body)
    put_u16(msg, ICMP_CSUM, checksum(msg))
    return build_ipv4(src, dst, PROTO_ICMP, bytes(msg), **ip)


def build_icmp_echo(
    src: int, dst: int, ident: int, seq: int, payload: bytes = b"", *, reply: bool = False, **ip: int
) -> bytearray:
    """An ICMP echo request (or reply) with identifier ``ident``."""
    kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    return build_icmp(src, dst, kind, 0, struct.pack("!HH", ident, seq), payload, **ip)


# RFC 1812 4.3.2.3: quote as much of the original as fits in 576 bytes; RFC 792 asks for header + 8.
ICMP_QUOTE_MAX = 576 - IP_MIN_HLEN - ICMP_HLEN


def build_icmp_error(
    src: int, dst: int, icmp_type: int, code: int, original: bytes | bytearray, *, mtu: int = 0, **ip: int
) -> bytearray:
    """An ICMP error from ``src`` to ``dst`` quoting ``original`` (next-hop MTU for "fragmentation needed")."""
    rest = (
        struct.pack("!HH", 0, mtu)
        if icmp_type == ICMP_DEST_UNREACH and code == ICMP_FRAG_NEEDED
        else b"\0\0\0\0"
    )
    return build_icmp(src, dst, icmp_type, code, rest, bytes(original[:ICMP_QUOTE_MAX]), **ip)


def tcp_options(pkt: bytes | bytearray | memoryview, l4: int) -> Iterator[tuple[int, int, int]]:
    """``(kind, offset, length)`` of each option of the TCP header at ``l4``, in order: the one bounded
    walk (it ends at END, at the header's or the packet's end, or at a length that does not fit)."""
    end = min(l4 + (pkt[l4 + TCP_OFF] >> 4) * 4, len(pkt))
    i = l4 + TCP_MIN_HLEN
    while i < end:
        kind = pkt[i]
        if kind == TCP_OPT_END:
            return
        if kind == TCP_OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or pkt[i + 1] < 2 or i + pkt[i + 1] > end:
            return  # malformed: the endpoints' business
        yield kind, i, pkt[i + 1]
        i += pkt[i + 1]


def mss_option(mss: int) -> bytes:
    """The 4-byte TCP MSS option."""
    return struct.pack("!BBH", TCP_OPT_MSS, 4, mss)


def fragment(pkt: bytes | bytearray, mtu: int) -> list[bytearray]:
    """Split an IPv4 packet into fragments of at most ``mtu`` bytes (RFC 791), for tests and the lab.

    Options are copied into every fragment (a simplification: RFC 791 copies only flagged options).
    """
    ihl = ip_header_len(pkt)
    total = get_u16(pkt, IP_TOTAL_LEN)[0]
    header, payload = bytes(pkt[:ihl]), bytes(pkt[ihl:total])
    step = (mtu - ihl) // 8 * 8
    assert step > 0, "MTU too small for the header"
    base_frag = get_u16(pkt, IP_FRAG)[0]
    base_off = base_frag & IP_OFFSET_MASK
    out = []
    for start in range(0, len(payload), step):
        chunk = payload[start : start + step]
        more = start + step < len(payload) or base_frag & IP_MF
        frag = bytearray(header) + chunk
        put_u16(frag, IP_TOTAL_LEN, ihl + len(chunk))
        put_u16(frag, IP_FRAG, (base_frag & IP_DF) | (IP_MF if more else 0) | (base_off + start // 8))
        put_u16(frag, IP_CSUM, 0)
        put_u16(frag, IP_CSUM, checksum(frag, 0, ihl))
        out.append(frag)
    return out
