"""ICMP errors the kernel reports on a socket gateway's socket, rebuilt as the packets the offender sent.

Theory of operation
-------------------
With ``IP_RECVERR`` on, Linux queues every error about a datagram a socket sent on that socket's error
queue (``recvmsg(..., MSG_ERRQUEUE)``, ip(7)). One entry is:

- a control message (SOL_IP, IP_RECVERR): ``struct sock_extended_err`` (linux/errqueue.h, host byte
  order) then the offender's ``sockaddr_in`` (SO_EE_OFFENDER). For ``ee_origin`` SO_EE_ORIGIN_ICMP the
  ICMP message's type and code are ``ee_type``/``ee_code``, and ``ee_info`` is its 32-bit "rest" word's
  meaning: the next-hop MTU of "fragmentation needed" (RFC 1191), the pointer of "parameter problem".
  SO_EE_ORIGIN_LOCAL is the kernel's own error (EMSGSIZE...): no packet was ever sent about it;
- the address (msg_name): the datagram's destination, the remote endpoint;
- the data: what the offender quoted of the datagram, past its UDP header (UDP sockets) or from its ICMP
  header on (ICMP echo sockets, whose identifier is the socket's port).

``decode_extended_err`` reads the control message; it is the bounded reader for it (None for anything
short or without an IPv4 offender). ``build_offender_error`` rebuilds the ICMP error as the offender sent
it to the public endpoint: offender -> public address, the type, code and rest word, quoting an IPv4 header
public endpoint -> remote endpoint with the UDP header (or the ICMP echo message) and the quoted data, cut
to 576 bytes in all (RFC 1812 4.3.2.3). Handed to ``Nat.translate_inbound``, it is translated like any
ICMP error from the internet (RFC 5508): the quote rewritten to the client's endpoint, filtered like the
flow it quotes, counted.

What cannot be rebuilt: the quoted header's identification, TTL and options, and the datagram's length when
the offender quoted less than all of it (Linux keeps no more than the quote: 520 bytes of UDP payload behind a
576-byte one). The quoted lengths are then those of the quote. Stacks match an ICMP error to a socket by the
quoted addresses and ports (identifier), never by those lengths. The quoted UDP checksum is 0 (RFC 768:
none), since the quote may not hold the whole datagram.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from gw import packet as P

# --- linux/errqueue.h, linux/in.h ----------------------------------------------------------------
SO_EE_ORIGIN_LOCAL = 1  # the local stack's own error (EMSGSIZE...)
SO_EE_ORIGIN_ICMP = 2  # an ICMP error from the network
AF_INET = 2  # sockaddr_in.sin_family of the offender
# struct sock_extended_err {u32 ee_errno; u8 ee_origin, ee_type, ee_code, ee_pad; u32 ee_info, ee_data;}
# then the offender's sockaddr_in: sin_family (host order), sin_port, sin_addr (network order)
_EXTENDED_ERR = struct.Struct("=IBBBxI4xH")
_OFFENDER_ADDR = 20  # sin_addr: 16 bytes of sock_extended_err, then sin_family and sin_port
EXTENDED_ERR_LEN = 32  # both structs: the control message's data, for the ancillary buffer

# --- what is rebuilt -----------------------------------------------------------------------------
ERROR_TTL = 64  # the rebuilt error's TTL: above 1, so that the NAT forwards it (it takes one hop off)
QUOTE_TTL = 64  # the quoted header's TTL: the kernel's default (ours is not known by the time it is quoted)
QUOTE_TTL_EXPIRED = 1  # ... unless it expired in transit: it arrived there with TTL 1
QUOTED_MAX = 0xFFFF - P.IP_MIN_HLEN - P.UDP_HLEN  # the most a quoted IPv4 datagram's length fields can say


class ExtendedErr(NamedTuple):
    """One error-queue entry's ``sock_extended_err`` and its IPv4 offender (0 when there is none)."""

    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int
    offender: int


def decode_extended_err(data: bytes) -> ExtendedErr | None:
    """The IP_RECVERR control message's fields, or None when it is short. Raises nothing."""
    if len(data) < _OFFENDER_ADDR + 4:
        return None
    errno, origin, icmp_type, icmp_code, info, family = _EXTENDED_ERR.unpack_from(data)
    offender = P.get_u32(data, _OFFENDER_ADDR)[0] if family == AF_INET else 0
    return ExtendedErr(errno, origin, icmp_type, icmp_code, info, offender)


def build_offender_error(
    proto: int,
    ext_addr: int,
    ext_port: int,
    remote_addr: int,
    remote_port: int,
    quoted: bytes | bytearray | memoryview,
    err: ExtendedErr,
) -> bytearray | None:
    """The ICMP error ``err.offender`` sent about our datagram ext -> remote, whose quoted data (past the UDP
    header, or from the ICMP header on) is ``quoted``; None when ``err`` is no IPv4 ICMP error. Raises nothing.
    """
    if err.origin != SO_EE_ORIGIN_ICMP or not err.offender or err.icmp_type not in P.ICMP_ERROR_TYPES:
        return None
    quoted = bytes(quoted[:QUOTED_MAX])
    if proto == P.PROTO_UDP:
        datagram = struct.pack("!HHHH", ext_port, remote_port, P.UDP_HLEN + len(quoted), 0) + quoted
    elif proto == P.PROTO_ICMP and len(quoted) >= P.ICMP_HLEN:  # RFC 792: header + 8 bytes at least
        datagram = quoted
    else:
        return None
    expired = err.icmp_type == P.ICMP_TIME_EXCEEDED and err.icmp_code == 0
    inner = P.build_ipv4(ext_addr, remote_addr, proto, datagram, flags_frag=P.IP_DF,
                         ttl=QUOTE_TTL_EXPIRED if expired else QUOTE_TTL)  # fmt: skip
    if err.icmp_type == P.ICMP_DEST_UNREACH and err.icmp_code == P.ICMP_FRAG_NEEDED:
        rest = struct.pack("!HH", 0, err.info & 0xFFFF)  # RFC 1191: the next-hop MTU
    elif err.icmp_type == P.ICMP_PARAM_PROBLEM:
        rest = struct.pack("!B3x", err.info & 0xFF)  # RFC 792: the pointer
    else:
        rest = b"\0\0\0\0"
    return P.build_icmp(err.offender, ext_addr, err.icmp_type, err.icmp_code, rest,
                        bytes(inner[: P.ICMP_QUOTE_MAX]), ttl=ERROR_TTL)  # fmt: skip
