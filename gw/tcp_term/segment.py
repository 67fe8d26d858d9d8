"""TCP segments to and from a client, for the terminating endpoint (``gw.tcp_term.conn``): one bounded
reader, one builder.

``parse`` checks what the endpoint relies on (an IPv4 packet whose TCP header and options lie inside it,
a correct checksum unless the client's offload left it partial) and returns the fields as a tuple, or
None: a malformed segment is dropped, never raised. ``build`` makes the endpoint's answer, impersonating
the remote (source = the remote's address and port).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from gw import packet as P
from gw import vnet as V

_TCP = struct.Struct("!HHIIBBHHH")
_IP = struct.Struct("!BBHHHBBHII")
DF = P.IP_DF
TTL = 64


class Segment(NamedTuple):
    """A client's segment: addresses and ports as on the wire, the payload as a slice of the packet."""

    src: int
    dst: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int  # unscaled, as in the header
    payload: memoryview
    mss: int  # the MSS option (0: absent); read on SYN only
    wscale: int  # the window-scale option (-1: absent); read on SYN only


def parse(pkt: bytes | bytearray | memoryview, checked: bool = True) -> Segment | None:
    """The segment in an IPv4 packet, or None if it is not a whole, sound TCP segment.
    ``checked``: verify the TCP checksum (False where the client's offload left it partial)."""
    view = memoryview(pkt)
    n = len(view)
    if n < P.IP_MIN_HLEN + P.TCP_MIN_HLEN or view[0] >> 4 != 4 or view[P.IP_PROTO] != P.PROTO_TCP:
        return None
    ihl = (view[0] & 0x0F) * 4
    total = P.get_u16(view, P.IP_TOTAL_LEN)[0]
    if ihl < P.IP_MIN_HLEN or total > n or total < ihl + P.TCP_MIN_HLEN:
        return None
    if P.get_u16(view, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
        return None  # a fragment: the NAT's reassembly comes first
    sport, dport, seq, ack, off, flags, window, _csum, _urg = _TCP.unpack_from(view, ihl)
    thl = (off >> 4) * 4
    if thl < P.TCP_MIN_HLEN or ihl + thl > total:
        return None
    src, dst = P.get_u32(view, P.IP_SRC)[0], P.get_u32(view, P.IP_DST)[0]
    if checked:
        initial = P.pseudo_header_sum(src, dst, P.PROTO_TCP, total - ihl)
        if P.checksum(view, ihl, total, initial) not in (0, 0xFFFF):
            return None
    mss, wscale = 0, -1
    if flags & P.TCP_SYN:
        mss, wscale = _options(view[:total], ihl)
    return Segment(src, dst, sport, dport, seq, ack, flags, window, view[ihl + thl : total], mss, wscale)


def _options(view: memoryview, l4: int) -> tuple[int, int]:
    """MSS and window scale from a SYN's options."""
    mss, wscale = 0, -1
    for kind, at, length in P.tcp_options(view, l4):
        if kind == P.TCP_OPT_MSS and length == 4:
            mss = P.get_u16(view, at + 2)[0]
        elif kind == P.TCP_OPT_WSCALE and length == 3:
            wscale = min(view[at + 2], P.TCP_MAX_WSCALE)  # RFC 7323 2.3: larger values are taken as 14
    return mss, wscale


def build(
    src: int, sport: int, dst: int, dport: int, seq: int, ack: int, flags: int, window: int,
    payload: bytes | memoryview = b"", options: bytes = b"", gso_size: int = 0,
) -> bytearray:  # fmt: skip
    """A segment from ``src:sport`` to ``dst:dport``, DF set (the client's path MTU is the tunnel's, known).

    ``gso_size`` 0: a plain IPv4 packet with correct checksums. Otherwise the packet a TUN with offloads
    takes: a virtio-net header first, the TCP checksum left for the receiving kernel to finish
    (``NEEDS_CSUM``: the field holds the pseudo-header sum), and, when the payload is longer than
    ``gso_size``, a TCP super-packet the kernel cuts into segments of that size. No pass over the
    payload in Python either way but the copy (the plain packet's checksum excepted)."""
    hdr = V.VNET_HDR_LEN if gso_size else 0
    thl = P.TCP_MIN_HLEN + len(options)
    total = P.IP_MIN_HLEN + thl + len(payload)
    buf = bytearray(hdr + total)
    _IP.pack_into(buf, hdr, 0x45, 0, total, 0, DF, TTL, P.PROTO_TCP, 0, src, dst)
    P.put_u16(buf, hdr + P.IP_CSUM, P.checksum(buf, hdr, hdr + P.IP_MIN_HLEN))
    l4 = hdr + P.IP_MIN_HLEN
    _TCP.pack_into(buf, l4, sport, dport, seq, ack, (thl // 4) << 4, flags, window, 0, 0)
    buf[l4 + P.TCP_MIN_HLEN : l4 + thl] = options
    buf[l4 + thl :] = payload
    initial = P.pseudo_header_sum(src, dst, P.PROTO_TCP, total - P.IP_MIN_HLEN)
    if not gso_size:
        P.put_u16(buf, l4 + P.TCP_CSUM, P.checksum(buf, l4, hdr + total, initial))
        return buf
    initial = (initial & 0xFFFF) + (initial >> 16)
    P.put_u16(buf, l4 + P.TCP_CSUM, (initial & 0xFFFF) + (initial >> 16))  # folded, not inverted
    super_packet = len(payload) > gso_size
    V.write_header(buf, 0, V.VNET_F_NEEDS_CSUM, V.VNET_GSO_TCPV4 if super_packet else V.VNET_GSO_NONE,
                   P.IP_MIN_HLEN + thl, gso_size if super_packet else 0, P.IP_MIN_HLEN, P.TCP_CSUM)  # fmt: skip
    return buf


def syn_options(mss: int, wscale: int) -> bytes:
    """MSS, then NOP and window scale (``wscale`` -1: none): the SYN-ACK's options, 32-bit aligned."""
    opts = struct.pack("!BBH", P.TCP_OPT_MSS, 4, mss)
    if wscale >= 0:
        opts += struct.pack("!BBBB", P.TCP_OPT_NOP, P.TCP_OPT_WSCALE, 3, wscale)
    return opts


def reset_for(seg: Segment) -> bytearray:
    """The RST that answers a segment no connection takes (RFC 9293 3.10.7.1), from its destination."""
    if seg.flags & P.TCP_ACK_FLAG:
        return build(seg.dst, seg.dport, seg.src, seg.sport, seg.ack, 0, P.TCP_RST, 0)
    length = len(seg.payload) + bool(seg.flags & P.TCP_SYN) + bool(seg.flags & P.TCP_FIN)
    ack = (seg.seq + length) & 0xFFFFFFFF
    return build(seg.dst, seg.dport, seg.src, seg.sport, 0, ack, P.TCP_RST | P.TCP_ACK_FLAG, 0)
