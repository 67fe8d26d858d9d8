"""Fuzz packets from the internet: ``Nat.translate_inbound`` (``translate_partial`` with a vnet header) ->
``Router.route_to_client``, as ``gw.server.Gateway._from_internet`` runs them.

Input: a header byte (``fuzz.world`` flags), then records ``[kind][len u16][packet]``. A record is a packet
the external gateway handed on (raw mode with offloads: starting with its virtio-net header), or with kind
bit 0 a packet client A sent, so the fuzzer can open flows and answer them. Kind bits 1-2 fix the
checksums first, bit 3 runs expiry, bits 5-7 advance the clock (``fuzz.world``).

The NAT starts with mappings (``fuzz.world``: A's UDP to 203.0.113.10:53, an established TCP connection
to :80, a ping; B's UDP), so seeds that answer them reach past the mapping lookup.
Contract under test: no exception for any bytes; a verdict from ``gw.verdict``; what is delivered inside
is sound and addressed to a VPN address.
"""

from __future__ import annotations

import sys

from fuzz.common import fuzz, instrumented, records
from fuzz.targets import REPO

with instrumented():
    from fuzz import world as W
    from gw import packet as P
    from gw import vnet as V
    from gw.vnet import VNET_HDR_LEN

MAX_RECORDS = 16
RAW_MIN = VNET_HDR_LEN + 20  # raw mode drops frames shorter than a vnet header and an IPv4 header


def one_input(data: bytes) -> None:
    if not data:
        return
    world = W.World(data[0])
    vnet_in = world.vnet and not world.socket_mode  # raw mode hands on vnet headers; socket mode plain IPv4
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS:
            break
        world.step(kind)
        pkt = bytearray(payload)
        if kind & 1:
            W.fixup(pkt, VNET_HDR_LEN if world.a.vnet else 0, kind)
            world.from_client(world.a, pkt)
            continue
        if vnet_in and len(pkt) < RAW_MIN:
            continue  # gw.external.raw never hands these on
        W.fixup(pkt, VNET_HDR_LEN if vnet_in else 0, kind)
        world.from_internet(pkt)


# ---------------------------------------------------------------------- seeds


def seeds() -> list[bytes]:
    """Answers to the setup mappings, ICMP errors about them, fragments, martians; the kernel capture."""
    out = []
    for flags in (0, W.F_COMPILED, W.F_SOCKET, 8, 16, W.F_VNET, W.F_VNET | W.F_COMPILED):
        world = W.World(flags)
        vnet = world.vnet and not world.socket_mode
        for flow in inbound_flows(world):
            out.append(W.seed(flags, [(k, bytearray(V.NO_OFFLOAD) + p if vnet and not k & 1 else p) for k, p in flow]))
    out += kernel_capture_seeds()
    return out


def inbound_flows(world: W.World) -> list[list[tuple[int, bytearray]]]:
    S, S2, A_ = W.SERVER, W.SERVER_2, W.CLIENT_A
    ACK, FIN, RST, SYN, PSH = P.TCP_ACK_FLAG, P.TCP_FIN, P.TCP_RST, P.TCP_SYN, P.TCP_PSH
    flows: list[list[tuple[int, bytearray]]] = []
    udp = W.external_endpoint(world, P.PROTO_UDP, A_, 5000)
    tcp = W.external_endpoint(world, P.PROTO_TCP, A_, 40000)
    icmp = W.external_endpoint(world, P.PROTO_ICMP, A_, W.ICMP_A_ID)
    udp_b = W.external_endpoint(world, P.PROTO_UDP, W.CLIENT_B, 6000)
    sent_udp = P.build_udp(udp[0], S, udp[1], 53, b"\x12\x34\x01\x00\x00\x01" + bytes(6))
    answer = P.build_udp(S, udp[0], 53, udp[1], b"\x12\x34\x81\x80\x00\x01\x00\x01" + bytes(4) + b"answer" * 40)
    flows.append([(0, answer), (0, P.build_udp(S2, udp[0], 53, udp[1], b"filtered remote")),
                  (0, P.build_udp(S, udp[0], 53, udp[1] ^ 1, b"no mapping")),
                  (0, P.build_udp(S, udp[0], 53, udp[1], b"ttl", ttl=1))])  # fmt: skip
    frags = P.fragment(P.build_udp(S, udp[0], 53, udp[1], bytes(range(256)) * 8), 600)
    flows.append([(0, f) for f in frags])
    flows.append([(0, f) for f in reversed(frags)])
    flows.append([(0, P.build_icmp_error(W.ROUTER, udp[0], P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, sent_udp)),
                  (0, P.build_icmp_error(W.ROUTER, udp[0], P.ICMP_TIME_EXCEEDED, 0, sent_udp[:28])),
                  (0, P.build_icmp_error(S, udp[0], P.ICMP_PARAM_PROBLEM, 0, sent_udp))])  # fmt: skip
    flows.append([(0, P.build_udp(udp[0], udp[0], 53, udp[1], b"martian: our own address")),
                  (0, P.build_udp(W.CLIENT_B, udp[0], 53, udp[1], b"martian: the VPN")),
                  (0, P.build_udp(P.get_u32(bytes([224, 0, 0, 1]), 0)[0], udp[0], 53, udp[1], b"multicast"))])
    if udp_b is not None:
        flows.append([(0, P.build_udp(S2, udp_b[0], 4000, udp_b[1], b"to b"))])
    if icmp is not None:
        flows.append([(0, P.build_icmp_echo(S, icmp[0], icmp[1], 1, b"ping", reply=True))])
    if tcp is not None:
        data = P.build_tcp(S, tcp[0], 80, tcp[1], seq=5001, ack=1001, flags=ACK | PSH, payload=b"HTTP/1.0 200 OK\r\n")
        sent_tcp = P.build_tcp(tcp[0], S, tcp[1], 80, seq=1001, ack=5001, flags=ACK, payload=bytes(1400))
        flows.append([(0, data), (0, P.build_tcp(S, tcp[0], 80, tcp[1], seq=5018, ack=1001, flags=ACK | FIN)),
                      (1, P.build_tcp(A_, S, 40000, 80, seq=1001, ack=5019, flags=ACK | FIN)),
                      (0, P.build_tcp(S, tcp[0], 80, tcp[1], seq=5019, ack=1002, flags=ACK))])  # fmt: skip
        flows.append([(0, P.build_tcp(S, tcp[0], 80, tcp[1], seq=5001, flags=RST)),
                      (0, P.build_tcp(S, tcp[0], 80, tcp[1], seq=99, flags=RST)),
                      (0, P.build_tcp(S, tcp[0], 80, tcp[1] + 1, seq=1, flags=SYN))])  # fmt: skip
        flows.append([(0, P.build_icmp_error(W.ROUTER, tcp[0], P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED,
                                             sent_tcp, mtu=1280))])  # fmt: skip
        big = P.build_tcp(S, tcp[0], 80, tcp[1], seq=5001, ack=1001, flags=ACK, payload=bytes(3000))
        flows.append([(0, big)])
    # client A opens a new UDP flow; the internet answers it (its port is the next the seeded NAT picks)
    flows.append([(1, P.build_udp(A_, S2, 5555, 123, b"ntp")), (0, P.build_udp(S2, udp[0], 123, udp[1], b"x"))])
    return flows


def kernel_capture_seeds(budget: int = 4000) -> list[bytes]:
    """The internet's packets of the kernel-NAT capture, readdressed to the setup mappings' external ports."""
    from tests.helpers.pcap import read_ipv4

    path = REPO / "tests" / "vectors" / "kernel-nat" / "outside.pcap"
    if not path.exists():
        return []
    world = W.World(W.F_COMPILED)
    ports = {proto: W.external_endpoint(world, proto, W.CLIENT_A, port)
             for proto, port in ((P.PROTO_UDP, 5000), (P.PROTO_TCP, 40000), (P.PROTO_ICMP, W.ICMP_A_ID))}  # fmt: skip
    public = P.get_u32(bytes([198, 51, 100, 1]), 0)[0]
    inbound = []
    for c in read_ipv4(path):
        ip = bytearray(c.ip)
        if P.get_u32(ip, P.IP_DST)[0] != public:
            continue
        ihl, proto, frag = (ip[0] & 15) * 4, ip[P.IP_PROTO], P.get_u16(ip, P.IP_FRAG)[0]
        end = ports.get(proto)
        if end is not None and not frag & P.IP_OFFSET_MASK and len(ip) >= ihl + 8:
            if proto == P.PROTO_ICMP:
                if ip[ihl] == P.ICMP_ECHO_REPLY:
                    P.put_u16(ip, ihl + 4, end[1])
            else:
                P.put_u16(ip, ihl + 2, end[1])
            W.fixup(ip, 0, 4 if not frag & P.IP_MF else 2)
        inbound.append(ip)
    return W.packed_seeds(W.F_COMPILED, inbound, budget)


if __name__ == "__main__":
    fuzz("internet_packets", one_input, sys.argv)
