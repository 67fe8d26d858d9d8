"""Fuzz socket mode's ICMP errors: ``decode_extended_err`` -> ``build_offender_error`` -> ``Nat.translate_inbound``,
as ``SocketGateway._read_errors`` and the daemon run them.

Input: a header byte, then records ``[kind][len u16][bytes]``. Each record is one error-queue entry: its
first 32 bytes the IP_RECVERR control message (``sock_extended_err`` and the offender's ``sockaddr_in``),
the rest the quoted data ``recvmsg`` returned. Kind bits 0-1 pick the mapping's socket it arrived on
(client A's UDP, A's ping, B's UDP, or a socket of a mapping that is gone), bit 2 the remote endpoint it
names (the flow's own, or another), bit 3 makes the entry an ICMP error from an IPv4 offender (origin,
family, type kept in range), so mutations reach the builder.
Contract under test: both functions raise nothing; a rebuilt error is a sound IPv4 ICMP error from the
offender to the public address, at most 576 bytes; the NAT gives it a verdict and what it forwards is
addressed to the client.
"""

from __future__ import annotations

import struct
import sys

from fuzz.common import fuzz, instrumented, record, records, require

with instrumented():
    from fuzz import world as W
    from gw import packet as P
    from gw.external import icmp_errors as E

MAX_RECORDS = 8
_ERR = struct.Struct("=IBBBxII")
_ADDR = struct.Struct("=H2s4s8x")  # sockaddr_in: family (host order), port, address (network order)
TYPES = (P.ICMP_DEST_UNREACH, P.ICMP_SOURCE_QUENCH, P.ICMP_TIME_EXCEEDED, P.ICMP_PARAM_PROBLEM)


def one_input(data: bytes) -> None:
    if not data:
        return
    world = W.World(W.F_SOCKET | (data[0] & ~(W.F_VNET | W.F_SOCKET)))
    sockets = [(P.PROTO_UDP, W.CLIENT_A, 5000, W.SERVER, 53), (P.PROTO_ICMP, W.CLIENT_A, W.ICMP_A_ID, W.SERVER, 0),
               (P.PROTO_UDP, W.CLIENT_B, 6000, W.SERVER_2, 4000)]  # fmt: skip
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS:
            break
        world.step(kind & 0xE0)
        anc, quoted = bytearray(payload[: E.EXTENDED_ERR_LEN]), payload[E.EXTENDED_ERR_LEN :]
        if kind & 8 and len(anc) >= E.EXTENDED_ERR_LEN:
            anc[4], anc[5] = E.SO_EE_ORIGIN_ICMP, TYPES[anc[5] & 3]
            anc[16:18] = E.AF_INET.to_bytes(2, "little")
        err = E.decode_extended_err(bytes(anc))
        if err is None or err.origin == E.SO_EE_ORIGIN_LOCAL:
            continue
        which = kind & 3
        if which < 3:
            proto, int_addr, int_port, remote, rport = sockets[which]
            end = W.external_endpoint(world, proto, int_addr, int_port)
            if end is None:
                continue
            ext_addr, ext_port = end
        else:
            proto, ext_addr, ext_port, remote, rport = P.PROTO_UDP, W.PUBLIC_2, 61000, W.SERVER, 9
        if kind & 4:
            remote, rport = W.ROUTER, 7
        pkt = E.build_offender_error(proto, ext_addr, ext_port, remote, rport, quoted, err)
        if pkt is None:
            continue
        require(len(pkt) <= 576 and P.check_ipv4(pkt) == 0, "a rebuilt ICMP error that is not a sound packet")
        require(pkt[P.IP_PROTO] == P.PROTO_ICMP and pkt[20] in P.ICMP_ERROR_TYPES, "not an ICMP error")
        require(P.checksum(pkt, 20, len(pkt)) == 0, "a rebuilt ICMP error with a bad ICMP checksum")
        require(P.get_u32(pkt, P.IP_DST)[0] == ext_addr, "a rebuilt error not to the public address")
        world.from_internet(pkt)


def entry(
    icmp_type: int, code: int, info: int, offender: int, quoted: bytes, origin: int = E.SO_EE_ORIGIN_ICMP
) -> bytes:
    """An error-queue entry as the kernel fills it."""
    offender_addr = _ADDR.pack(E.AF_INET, b"\0\0", offender.to_bytes(4, "big"))
    return _ERR.pack(113, origin, icmp_type, code, info, 0) + offender_addr + quoted


def seeds() -> list[bytes]:
    query = b"\x12\x34\x01\x00\x00\x01" + bytes(6)
    echo = struct.pack("!BBHHH", 8, 0, 0, W.ICMP_A_ID, 1) + b"ping"
    flows = [
        [(0, entry(P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, 0, W.SERVER, query))],
        [(0, entry(P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, 1280, W.ROUTER, query * 40))],
        [(1, entry(P.ICMP_TIME_EXCEEDED, 0, 0, W.ROUTER, echo))],
        [(2, entry(P.ICMP_PARAM_PROBLEM, 0, 20, W.ROUTER, b"x" * 8))],
        [(3, entry(P.ICMP_DEST_UNREACH, 1, 0, W.ROUTER, query))],
        [(4, entry(P.ICMP_DEST_UNREACH, 3, 0, W.ROUTER, query))],
        [(0, entry(0, 0, 0, 0, b"", origin=E.SO_EE_ORIGIN_LOCAL)),
         (0, entry(P.ICMP_ECHO_REPLY, 0, 0, W.SERVER, query))],
        [(1, entry(P.ICMP_DEST_UNREACH, 3, 0, W.SERVER, echo[:4]))],
    ]
    return [bytes([h]) + b"".join(record(k, p) for k, p in flow) for flow in flows for h in (0, W.F_COMPILED)]


if __name__ == "__main__":
    fuzz("icmp_errors", one_input, sys.argv)
