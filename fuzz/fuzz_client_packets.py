"""Fuzz packets from a client: ``Router.route_from_client`` -> ``Nat.translate_outbound`` as the daemon runs them.

Input: a header byte (``fuzz.world`` flags: offloads, compiled or Python fast path, socket mode,
filtering...), then records ``[kind][len u16][packet]``, each a packet a session sent (starting with its
virtio-net header when that session has offloads). Record kind: bit 0 the sender (client A or B), bits 1-2
fix the IPv4 / L4 checksums first (``fuzz.world.fixup``), bit 3 run expiry, bits 5-7 advance the clock.

Contract under test: the router and the NAT raise nothing for any bytes (their docstrings); every packet
gets a verdict from ``gw.verdict``; what they forward is sound and correctly addressed (``fuzz.world``).
"""

from __future__ import annotations

import struct
import sys

from fuzz.common import fuzz, instrumented, records
from fuzz.targets import REPO

with instrumented():
    from fuzz import world as W
    from gw import packet as P
    from gw import vnet as V
    from gw.vnet import VNET_HDR_LEN

MAX_RECORDS = 16  # packets per input: enough for a flow's life, a fragment train, a quota


def one_input(data: bytes) -> None:
    if not data:
        return
    world = W.World(data[0])
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS:
            break
        world.step(kind)
        sender = world.b if kind & 1 else world.a
        pkt = bytearray(payload)
        W.fixup(pkt, VNET_HDR_LEN if sender.vnet else 0, kind)
        world.from_client(sender, pkt)


# ---------------------------------------------------------------------- seeds


def super_packet(pkt: bytearray, gso_type: int, gso_size: int) -> bytearray:
    """``pkt`` as a TUN with offloads hands it over: vnet header, NEEDS_CSUM, the L4 checksum partial."""
    ihl = (pkt[0] & 15) * 4
    proto = pkt[P.IP_PROTO]
    at = 16 if proto == P.PROTO_TCP else 6
    total = P.get_u16(pkt, P.IP_TOTAL_LEN)[0]
    src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
    s = P.pseudo_header_sum(src, dst, proto, total - ihl)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    P.put_u16(pkt, ihl + at, s)
    head = ihl + ((pkt[ihl + 12] >> 4) * 4 if proto == P.PROTO_TCP else 8)
    vh = struct.pack("<BBHHHH", V.VNET_F_NEEDS_CSUM, gso_type, head, gso_size, ihl, at)
    return bytearray(vh) + pkt


def seeds() -> list[bytes]:
    """Hand-made flows and the kernel-NAT capture's client packets (tests/vectors/kernel-nat)."""
    A_, B_, S, S2 = W.CLIENT_A, W.CLIENT_B, W.SERVER, W.SERVER_2
    ACK, SYN, FIN, RST, PSH = P.TCP_ACK_FLAG, P.TCP_SYN, P.TCP_FIN, P.TCP_RST, P.TCP_PSH
    big = P.build_udp(A_, S, 5001, 9000, bytes(range(256)) * 8)
    frags = P.fragment(big, 576)
    inbound_quote = P.build_udp(S, A_, 53, 5000, b"answer")
    flows = [
        # new flows of each protocol, then a second remote for an existing mapping
        [(0, P.build_udp(A_, S, 5002, 53, b"q")), (0, P.build_udp(A_, S2, 5000, 53, b"other remote")),
         (0, P.build_icmp_echo(A_, S, 99, 1, b"x" * 56)), (0, P.build_tcp(A_, S, 40001, 443, flags=SYN))],
        # the established connection: data, FIN both ways (outbound only here), RST
        [(0, P.build_tcp(A_, S, 40000, 80, seq=1001, ack=5001, flags=ACK | PSH, payload=b"GET / HTTP/1.0\r\n\r\n")),
         (0, P.build_tcp(A_, S, 40000, 80, seq=1019, ack=5001, flags=ACK | FIN)),
         (0xA8, P.build_tcp(A_, S, 40000, 80, seq=1020, ack=5001, flags=RST))],
        # fragments in order, then out of order
        [(0, f) for f in frags],
        [(0, f) for f in reversed(frags)],
        # TTL 1 (Time Exceeded), IP options, to client B (routed inside), to the gateway, denied, spoofed
        [(0, P.build_udp(A_, S, 5000, 53, b"ttl", ttl=1)),
         (0, P.build_udp(A_, S, 5000, 53, b"opt", options=b"\x94\x04\x00\x00")),
         (0, P.build_udp(A_, B_, 5000, 6000, b"to b")), (0, P.build_icmp_echo(A_, W.GATEWAY, 1, 1)),
         (0, P.build_udp(A_, P.get_u32(bytes([169, 254, 169, 254]), 0)[0], 5000, 80, b"metadata")),
         (0, P.build_udp(B_, S, 5000, 53, b"spoofed"))],
        # ICMP errors from the client about an inbound flow: port unreachable, fragmentation needed
        [(0, P.build_icmp_error(A_, S, P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, inbound_quote)),
         (0, P.build_icmp_error(A_, S, P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, inbound_quote, mtu=1280))],
        # quota: new flows until refused, then expiry frees them
        [(0, P.build_udp(A_, S, 6000 + i, 53, b"q")) for i in range(9)] + [(0xE8, P.build_udp(A_, S, 7000, 53))],
    ]
    out = []
    for flags in (0, W.F_COMPILED, W.F_SOCKET, 8, 16, W.F_MSS_OFF | W.F_LOG_DEST):
        for flow in flows:
            out.append(W.seed(flags, flow))
        # client B: its flow, and a hairpin to A's public UDP endpoint (the seeded NAT's port)
        ext_addr, ext_port = W.external_endpoint(W.World(flags), P.PROTO_UDP, A_, 5000)
        out.append(W.seed(flags, [(1, P.build_udp(B_, S2, 6000, 4000, b"again")),
                                  (1, P.build_udp(B_, ext_addr, 6001, ext_port, b"hairpin"))]))  # fmt: skip
    # offloads: a TCP super-packet (TSO) and a UDP one (USO), partial checksums, to the internet and to B
    tso = P.build_tcp(A_, S, 40000, 80, seq=1001, ack=5001, flags=ACK | PSH, payload=bytes(2800))
    uso = P.build_udp(A_, S, 5000, 53, bytes(3000))
    to_b = P.build_tcp(A_, B_, 40000, 22, seq=1, flags=ACK, payload=bytes(3000))
    for flags in (W.F_VNET | W.F_COMPILED, W.F_VNET, W.F_VNET | W.F_PEER_VNET, W.F_VNET | W.F_SOCKET):
        out.append(W.seed(flags, [(0, super_packet(bytearray(tso), V.VNET_GSO_TCPV4, 1400))]))
        out.append(W.seed(flags, [(0, super_packet(bytearray(uso), V.VNET_GSO_UDP_L4, 1000))]))
        out.append(W.seed(flags, [(0, super_packet(bytearray(to_b), V.VNET_GSO_TCPV4, 1000))]))
        out.append(W.seed(flags, [(0, bytearray(V.NO_OFFLOAD) + P.build_icmp_echo(A_, S, 7, 7, b"p"))]))
    out += kernel_capture_seeds()
    return out


def kernel_capture_seeds(budget: int = 4000) -> list[bytes]:
    """The client's packets of the kernel-NAT capture, in capture order, as many to an input as fit."""
    from tests.helpers.pcap import read_ipv4

    path = REPO / "tests" / "vectors" / "kernel-nat" / "inside.pcap"
    if not path.exists():
        return []
    client = [c.ip for c in read_ipv4(path) if P.get_u32(c.ip, P.IP_SRC)[0] == W.CLIENT_A]
    return W.packed_seeds(W.F_COMPILED, client, budget)


if __name__ == "__main__":
    fuzz("client_packets", one_input, sys.argv)
