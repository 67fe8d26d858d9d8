"""The datapath as the daemon wires it, for the packet harnesses: router, NAT, offloads, two clients.

``World(flags)`` is a gateway with two attached clients (A = 10.66.77.2, B = 10.66.77.3) and a NAT that
already holds a few mappings, made by real packets through the same path: A's UDP to a DNS server, A's
TCP connection (SYN, the server's SYN-ACK, A's ACK: established), A's ping, B's UDP. The NAT's random
source is seeded, so those mappings get the same external ports every time and seeds can answer them.

``from_client`` and ``from_internet`` are ``gw.server.Gateway._from_client``/``_outbound`` and
``_from_internet``/``_queue`` without the sockets: the verdicts, the vnet handling (``translate_partial``
for ``NEEDS_CSUM``, ``segment`` for a destination without offloads), socket mode's caller-chosen ports
(``NEEDS_MAPPING`` -> ``create_mapping`` with a kernel-like port -> translate again), hairpins, the
router's Time Exceeded answers, and the fragments the NAT releases. Every packet that leaves is checked:
a sound IPv4 header, and the right side's addresses (no VPN address leaks to the internet, nothing but a
client address is delivered inside).

Header byte flags (the first byte of every packet harness input):
bit 0 the sender's packets carry a vnet header; bit 1 the compiled fast path (else the Python one);
bit 2 socket mode (caller-chosen ports, no TCP); bits 3-4 filtering; bit 5 the other client takes vnet
headers; bit 6 MSS clamping off; bit 7 destination logging.
"""

from __future__ import annotations

import random

from fuzz.common import record, require
from gw import inet
from gw import packet as P
from gw import vnet as V
from gw.config import NatConfig, VpnConfig
from gw.nat import Nat
from gw.offload import segment, translate_partial
from gw.router import Router
from gw.verdict import DROP_COUNT, Drop, Route, Verdict

NS = 1_000_000_000
T0 = 1_000 * NS  # the monotonic clock at setup
A = inet.aton
GATEWAY, CLIENT_A, CLIENT_B = A("10.66.77.1"), A("10.66.77.2"), A("10.66.77.3")
PUBLIC, PUBLIC_2 = A("198.51.100.1"), A("198.51.100.2")
SERVER, SERVER_2, ROUTER = A("203.0.113.10"), A("203.0.113.20"), A("198.51.100.254")
VPN = VpnConfig()
VPN_NET, VPN_LEN = inet.parse_prefix(VPN.subnet)
FILTERING = ("endpoint-independent", "address-dependent", "address-and-port-dependent",
             "address-and-port-dependent")  # fmt: skip
# the clock steps a record's kind byte can ask for (its top 3 bits): none, a packet train, a second, past the
# fragment timeout, past ICMP's, past UDP's, past TCP transitory's, past TCP established's
STEPS = (0, 1_000_000, NS, 31 * NS, 61 * NS, 301 * NS, 241 * NS, 7441 * NS)
VALID = {int(v) for v in (*Drop, *Verdict, *Route)}
SOCKET_PORT_FIRST = 32768  # socket mode: the "kernel" hands out ports from here, one after another

F_VNET, F_COMPILED, F_SOCKET, F_MSS_OFF, F_LOG_DEST, F_PEER_VNET = 1, 2, 4, 64, 128, 32


class Session:
    """A client session as the router sees it: a handle with an offload setting, and what it was sent."""

    __slots__ = ("addr", "vnet", "received")

    def __init__(self, addr: int, vnet: bool) -> None:
        self.addr, self.vnet, self.received = addr, vnet, 0


class World:
    """One gateway's cores, set up as the module docstring says."""

    def __init__(self, flags: int) -> None:
        self.vnet = bool(flags & F_VNET)
        self.socket_mode = bool(flags & F_SOCKET)
        config = NatConfig(
            external_addresses=["198.51.100.1", "198.51.100.2"],
            filtering=FILTERING[flags >> 3 & 3],
            tcp_mss=0 if flags & F_MSS_OFF else 1360,
            log_destination=bool(flags & F_LOG_DEST),
            max_mappings_per_client=8,  # small, so that a few packets reach the quota
            max_remotes_per_client=16,
            fragment_max_datagrams=4,  # small, so that eviction is reached
            fragment_max_datagrams_per_source=2,
        )
        self.nat = Nat(config, random.Random(7), bool(flags & F_COMPILED), vpn=VPN, caller_ports=self.socket_mode)
        self.ext = frozenset(self.nat.ext_addrs)
        self.router = Router(VPN)
        self.a = Session(CLIENT_A, self.vnet)
        self.b = Session(CLIENT_B, bool(flags & F_PEER_VNET))
        self.router.attach(CLIENT_A, self.a)
        self.router.attach(CLIENT_B, self.b)
        self.now = T0
        self.next_socket_port = SOCKET_PORT_FIRST
        self.out_count = 0  # packets that left for the internet
        for sender, pkt in setup_packets():
            session = self.session(sender)
            self.from_client(session, _with_header(pkt, session.vnet))
        for _sender, pkt, inbound in tcp_completion(self):
            if inbound:
                self.from_internet(_with_header(pkt, self.vnet and not self.socket_mode))
            else:
                self.from_client(self.a, _with_header(pkt, self.vnet))

    def session(self, addr: int) -> Session:
        return self.a if addr == CLIENT_A else self.b

    # ------------------------------------------------------------------ the clock
    def step(self, kind: int) -> None:
        """Advance the clock by the step ``kind``'s top bits name; with bit 3, run expiry as the timer does."""
        self.now += STEPS[kind >> 5]
        if kind & 8:
            for _ in range(4):  # the shell calls again while it says more is due; bounded here
                if not self.nat.expire(self.now):
                    break
            self.nat.events.clear()

    # ------------------------------------------------------------------ client -> gateway
    def from_client(self, sender: Session, pkt: bytearray) -> None:
        """``Gateway._from_client`` for one packet of a session (with its vnet header if the session has them)."""
        vnet = sender.vnet
        ip = memoryview(pkt)[V.VNET_HDR_LEN if vnet else 0 :]
        verdict, dest = self.router.route_from_client(ip, sender.addr)
        require(verdict in VALID, f"route_from_client returned {verdict!r}")
        if verdict == Route.CLIENT:
            require(dest is self.a or dest is self.b, "routed to a session nobody attached")
            require(P.check_ipv4(ip) == 0, "a packet routed to a client has a bad header")
            self.queue(dest, pkt, vnet)
        elif verdict == Route.NAT:
            self.outbound(sender, pkt, ip)
        self.drain()

    def outbound(self, sender: Session, pkt: bytearray, ip: memoryview) -> None:
        """``Gateway._outbound``: the NAT, then out (or back inside, hairpinned)."""
        nat = self.nat
        if self.socket_mode and ip[P.IP_PROTO] == P.PROTO_TCP:
            return  # socket mode carries no TCP: the shell answers a SYN with an RST (gw.server._refuse_tcp)
        vnet = sender.vnet
        partial = vnet and V.read_header(pkt)[0] & V.VNET_F_NEEDS_CSUM
        translate = nat.translate_outbound
        verdict = translate_partial(translate, ip, self.now) if partial else translate(ip, self.now)
        require(verdict in VALID, f"translate_outbound returned {verdict!r}")
        if verdict == Verdict.NEEDS_MAPPING:
            require(self.socket_mode, "NEEDS_MAPPING without caller-chosen ports")
            verdict = self.new_mapping(ip)
        if verdict == Verdict.FORWARD:
            self.to_internet(pkt, ip, vnet)
        elif verdict == Verdict.HAIRPIN:
            self.check_inside(ip, "hairpinned")
            require(P.get_u32(ip, P.IP_SRC)[0] in self.ext, "a hairpinned packet kept its VPN source")
            dest_verdict, dest = self.router.route_to_client(ip)
            if dest_verdict == Route.CLIENT:
                self.queue(dest, pkt, vnet)
        elif verdict == Drop.TTL_EXCEEDED:
            answer = self.router.time_exceeded_to_client(ip, self.now)
            if answer is not None:
                require(P.check_ipv4(answer) == 0, "a Time Exceeded with a bad header")
                self.queue(sender, answer, False)

    def new_mapping(self, ip: memoryview) -> int:
        """``SocketGateway.new_mapping`` with a counter for the kernel's port choice."""
        if P.get_u16(ip, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
            return Drop.FRAGMENT
        proto, src = ip[P.IP_PROTO], P.get_u32(ip, P.IP_SRC)[0]
        l4 = (ip[0] & 15) * 4
        port = P.get_u16(ip, l4 + 4)[0] if proto == P.PROTO_ICMP else P.get_u16(ip, l4)[0]
        ext_port = self.next_socket_port
        self.next_socket_port = SOCKET_PORT_FIRST + (self.next_socket_port + 1 - SOCKET_PORT_FIRST) % 28000
        made = self.nat.create_mapping(proto, src, port, ext_port, self.now)
        if isinstance(made, int):
            require(made in VALID, f"create_mapping returned {made!r}")
            return made
        verdict = self.nat.translate_outbound(ip, self.now)
        require(verdict != Verdict.NEEDS_MAPPING, "NEEDS_MAPPING again right after create_mapping")
        return verdict

    def to_internet(self, pkt: bytearray | memoryview, ip: memoryview | bytearray, vnet: bool) -> None:
        """A packet leaving for the internet: SNATed, sound; a super-packet is cut as the kernel would."""
        require(P.check_ipv4(ip) == 0, "a packet forwarded to the internet has a bad header")
        require(P.get_u32(ip, P.IP_SRC)[0] in self.ext, "a VPN source address leaked to the internet")
        self.out_count += 1
        if vnet:  # the kernel (raw) or UDP_SEGMENT (socket) cuts super-packets
            self.segments(pkt)

    # ------------------------------------------------------------------ internet -> gateway
    def from_internet(self, pkt: bytearray) -> None:
        """``Gateway._from_internet`` for one packet the external gateway handed on."""
        nat = self.nat
        vnet = self.vnet and not self.socket_mode  # socket mode hands on plain IPv4
        ip = memoryview(pkt)[V.VNET_HDR_LEN :] if vnet else memoryview(pkt)
        if vnet and pkt[0] & V.VNET_F_NEEDS_CSUM:
            verdict = translate_partial(nat.translate_inbound, ip, self.now)
        else:
            verdict = nat.translate_inbound(ip, self.now)
        require(verdict in VALID and verdict not in (Verdict.HAIRPIN, Verdict.NEEDS_MAPPING),
                f"translate_inbound returned {verdict!r}")  # fmt: skip
        if verdict == Drop.TTL_EXCEEDED:
            answer = self.router.time_exceeded_to_internet(ip, self.now)
            if answer is not None:
                require(P.check_ipv4(answer) == 0, "a Time Exceeded with a bad header")
        if verdict == Verdict.FORWARD:
            self.check_inside(ip, "translated inbound")
            verdict, dest = self.router.route_to_client(ip)
            require(verdict in (Route.CLIENT, Drop.NO_ROUTE, Drop.TRUNCATED), f"route_to_client: {verdict!r}")
            if verdict == Route.CLIENT:
                self.queue(dest, pkt, vnet)
        self.drain()

    # ------------------------------------------------------------------ out to sessions
    def check_inside(self, ip: memoryview | bytearray, what: str) -> None:
        require(P.check_ipv4(ip) == 0, f"a {what} packet has a bad header")
        dst = P.get_u32(ip, P.IP_DST)[0]
        require(inet.in_prefix(dst, VPN_NET, VPN_LEN), f"a {what} packet is not addressed to the VPN")

    def queue(self, dest: Session, pkt: bytearray | memoryview | bytes, vnet: bool) -> None:
        """``Gateway._queue``: converted to the destination's offload setting."""
        dest.received += 1
        if dest.vnet == vnet:
            return
        if dest.vnet:
            require(len(V.NO_OFFLOAD + bytes(pkt)) == len(pkt) + V.VNET_HDR_LEN, "vnet header")
            return
        self.segments(pkt)

    def segments(self, pkt: bytearray | memoryview | bytes) -> None:
        """``gw.offload.segment``: None (malformed) or plain packets, each sound."""
        plain = segment(pkt)
        if plain is None:
            return
        require(len(plain) <= 65536, "segment made more pieces than bytes")
        flags, _, _, _, csum_start, _ = V.read_header(pkt)
        inside_ip = flags & V.VNET_F_NEEDS_CSUM and csum_start < (pkt[V.VNET_HDR_LEN] & 15) * 4
        for seg in plain:
            if P.check_ipv4(seg):
                require(not inside_ip, "segment wrote a checksum into the IPv4 header (NEEDS_CSUM, csum_start "
                        "inside it)")  # fmt: skip
                require(False, "segment made a packet with a bad header")

    def drain(self) -> None:
        """What the shell does after a batch: the NAT's released fragments and events."""
        nat = self.nat
        out, nat.released_outbound = nat.released_outbound, []
        back, nat.released_inbound = nat.released_inbound, []
        for frag in out:
            require(P.check_ipv4(frag) == 0, "a released fragment has a bad header")
            require(P.get_u32(frag, P.IP_SRC)[0] in self.ext, "a released fragment kept its VPN source")
        for frag in back:
            self.check_inside(frag, "released inbound")
        nat.events.clear()
        require(len(nat.drops) == DROP_COUNT, "the drop counters changed shape")


def _with_header(pkt: bytearray, vnet: bool) -> bytearray:
    return bytearray(V.NO_OFFLOAD) + pkt if vnet else pkt


# ---------------------------------------------------------------------- the mappings made at setup

UDP_A = (CLIENT_A, 5000, SERVER, 53)  # int addr, int port, remote addr, remote port
TCP_A = (CLIENT_A, 40000, SERVER, 80)
ICMP_A_ID = 0x1234
UDP_B = (CLIENT_B, 6000, SERVER_2, 4000)
TCP_A_ISN, SERVER_ISN = 1000, 5000
MSS = P.mss_option(1460)


def setup_packets() -> list[tuple[int, bytearray]]:
    """(sender, packet) of the mappings made at setup, in order."""
    return [
        (CLIENT_A, P.build_udp(CLIENT_A, SERVER, 5000, 53, b"\x12\x34\x01\x00\x00\x01" + bytes(6))),
        (CLIENT_A, P.build_tcp(CLIENT_A, SERVER, 40000, 80, flags=P.TCP_SYN, seq=TCP_A_ISN, options=MSS)),
        (CLIENT_A, P.build_icmp_echo(CLIENT_A, SERVER, ICMP_A_ID, 1, b"ping")),
        (CLIENT_B, P.build_udp(CLIENT_B, SERVER_2, 6000, 4000, b"hello")),
    ]


def tcp_completion(world: World) -> list[tuple[int, bytearray, bool]]:
    """The server's SYN-ACK to A's SYN (to the external port it got) and A's ACK: (sender, packet, inbound)."""
    end = external_endpoint(world, P.PROTO_TCP, CLIENT_A, 40000)
    if end is None:  # socket mode has no TCP
        return []
    synack = P.build_tcp(SERVER, end[0], 80, end[1], flags=P.TCP_SYN | P.TCP_ACK_FLAG, seq=SERVER_ISN,
                         ack=TCP_A_ISN + 1, options=MSS)  # fmt: skip
    ack = P.build_tcp(CLIENT_A, SERVER, 40000, 80, seq=TCP_A_ISN + 1, ack=SERVER_ISN + 1)
    return [(SERVER, synack, True), (CLIENT_A, ack, False)]


def external_endpoint(world: World, proto: int, int_addr: int, int_port: int) -> tuple[int, int] | None:
    """The (ext_addr, ext_port) a setup mapping got, or None."""
    m = world.nat.lookup_internal(proto, int_addr, int_port)
    if m is None:
        return None
    return m.ext_key >> 16 & 0xFFFFFFFF, m.ext_key & 0xFFFF


def seed(flags: int, packets: list[tuple[int, bytes | bytearray]]) -> bytes:
    """A harness input: the header byte and one record per (kind, packet)."""
    return bytes([flags]) + b"".join(record(kind, pkt) for kind, pkt in packets)


def fixup(pkt: bytearray, at: int, kind: int) -> None:
    """Make a record's checksums right so that mutations reach past them: with ``kind`` bit 1 the IPv4
    header's, with bit 2 the TCP/UDP/ICMP one's too (unfragmented packets). Garbage is left as it is."""
    if not kind & 6:
        return
    ip = memoryview(pkt)[at:]
    n = len(ip)
    if n < P.IP_MIN_HLEN:
        return
    ihl = (ip[0] & 15) * 4
    if ihl < P.IP_MIN_HLEN or ihl > n:
        return
    total = P.get_u16(ip, P.IP_TOTAL_LEN)[0]
    if kind & 4 and ihl <= total <= n and not P.get_u16(ip, P.IP_FRAG)[0] & P.IP_FRAG_MASK:
        proto = ip[P.IP_PROTO]
        if proto == P.PROTO_TCP and total >= ihl + P.TCP_MIN_HLEN:
            P.put_u16(ip, ihl + P.TCP_CSUM, P.l4_checksum(ip, ihl))
        elif proto == P.PROTO_UDP and total >= ihl + P.UDP_HLEN:
            P.put_u16(ip, ihl + P.UDP_CSUM, P.l4_checksum(ip, ihl))
        elif proto == P.PROTO_ICMP and total >= ihl + P.ICMP_HLEN:
            P.put_u16(ip, ihl + P.ICMP_CSUM, 0)
            P.put_u16(ip, ihl + P.ICMP_CSUM, P.checksum(ip, ihl, total))
    P.put_u16(ip, P.IP_CSUM, 0)
    P.put_u16(ip, P.IP_CSUM, P.checksum(ip, 0, ihl))
    ip.release()


def packed_seeds(flags: int, packets: list[bytes], budget: int) -> list[bytes]:
    """Consecutive packets as inputs of at most ``budget`` bytes each (kind 0: client A / no clock step)."""
    out, batch, size = [], [], 1
    for pkt in packets:
        if batch and size + 3 + len(pkt) > budget:
            out.append(seed(flags, batch))
            batch, size = [], 1
        batch.append((0, pkt))
        size += 3 + len(pkt)
    if batch:
        out.append(seed(flags, batch))
    return out
