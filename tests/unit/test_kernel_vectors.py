"""Independent oracle: real traffic through gw's NAT compared with what Linux conntrack NAT made of it.

``tests/vectors/kernel-nat/`` (see its README) holds one capture on the client's link (``inside.pcap``)
and one on the NAT's public link (``outside.pcap``) of real tools run through a Linux MASQUERADE NAT.
The client's packets from ``inside.pcap`` go through ``translate_outbound`` and the internet's packets
from ``outside.pcap`` through ``translate_inbound``, interleaved in capture order with the capture
times as the clock. Each packet gw emits must equal the kernel's packet on the other side except:

- the external port (or echo identifier): gw draws its own. The map kernel port <-> gw port is learned
  from the first packet of each flow and must stay a consistent one-to-one map; an inbound packet is
  readdressed from the kernel's port to gw's (the test fixes its checksums) before gw sees it;
- IP ID and the IP header checksum; outbound also the L4 checksum (the port is in it). The TTL must
  be the kernel's: both are a router hop and take one off.

gw's checksums must be right by full recomputation (fragments: on the reassembled datagram). The kernel
answered the two TTL=1 traceroute probes itself: gw's NAT must refuse them with ``TTL_EXCEEDED`` (the
router answers them); the kernel's two ICMP time-exceeded messages (from 10.66.77.1) have no NAT
counterpart.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter, defaultdict, deque
from pathlib import Path

import pytest

from gw.config import NatConfig
from gw.nat import FORWARD, Nat
from gw.packet import Drop
from tests.helpers.pcap import Captured, read_ipv4
from tests.helpers.strategies import A, Reassembler, inet_checksum, l4_ok, problems

REPO = Path(__file__).resolve().parents[2]
CLIENT, VPN_GW, PUBLIC = A("10.66.77.2"), A("10.66.77.1"), A("198.51.100.1")
ICMP, TCP, UDP = 1, 6, 17
MF, DF, OFFSET = 0x2000, 0x4000, 0x1FFF
IP_TTL, IP_ID, IP_CSUM = 8, (4, 5), (10, 11)
L4_CSUM = {UDP: 6, TCP: 16, ICMP: 2}
ICMP_ERRORS = (3, 4, 11, 12)

# what the captured commands should exercise, each in the directions it has (README.md, commands.txt)
REQUIRED = [
    ("out", "ping"), ("in", "ping"),
    ("out", "ping 3000 B (fragments)"), ("in", "ping 3000 B (fragments)"),
    ("out", "PMTU probe (DF)"), ("in", "PMTU: fragmentation needed"),
    ("out", "DNS UDP"), ("in", "DNS UDP"), ("out", "DNS TCP"), ("in", "DNS TCP"),
    ("out", "HTTP download"), ("in", "HTTP download"),
    ("out", "traceroute UDP"), ("in", "traceroute UDP: TTL exceeded"), ("in", "traceroute UDP: port unreachable"),
    ("out", "traceroute ICMP"), ("in", "traceroute ICMP"), ("in", "traceroute ICMP: TTL exceeded"),
    ("out", "UDP 3000 B (fragments)"), ("in", "UDP 3000 B (fragments)"),
    ("out", "closed UDP port"), ("in", "port unreachable (closed UDP port)"),
    ("out", "TCP to a closed port"), ("in", "TCP RST"),
]


def vector_dir() -> Path:
    """The kernel-nat vectors: in the repo, else $GW_VECTORS, else ../shared beside the repo."""
    candidates = [REPO / "tests" / "vectors" / "kernel-nat"]
    if os.environ.get("GW_VECTORS"):
        env = Path(os.environ["GW_VECTORS"])
        candidates += [env, env / "kernel-nat", env / "vectors" / "kernel-nat"]
    candidates.append(REPO.parent / "shared" / "vectors" / "kernel-nat")
    for c in candidates:
        if (c / "inside.pcap").is_file() and (c / "outside.pcap").is_file():
            return c
    msg = "kernel-nat vectors not found (looked in: " + ", ".join(map(str, candidates)) + ")"
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI must run this oracle")
    pytest.skip(msg)


# ---------------------------------------------------------------------- packet fields (independent of gw)


def hlen(p: bytes | bytearray) -> int:
    return (p[0] & 15) * 4


def frag_word(p: bytes | bytearray) -> int:
    return struct.unpack_from("!H", p, 6)[0]


def addrs(p: bytes | bytearray) -> tuple[int, int]:
    return struct.unpack_from("!II", p, 12)


def has_l4_header(p: bytes | bytearray) -> bool:
    return not frag_word(p) & OFFSET


def is_echo(p: bytes | bytearray) -> bool:
    return p[9] == ICMP and p[hlen(p)] in (0, 8)


def port_offset(p: bytes | bytearray, source: bool) -> int | None:
    """Offset of the NAT-relevant port: a TCP/UDP port, or the echo identifier (both ends)."""
    if not has_l4_header(p):
        return None
    if p[9] in (TCP, UDP):
        return hlen(p) + (0 if source else 2)
    if is_echo(p):
        return hlen(p) + 4
    return None


def quote_offsets(p: bytes | bytearray) -> tuple[int, int] | None:
    """(start of the quoted IP header, start of its L4 header) in an ICMP error."""
    if p[9] != ICMP or not has_l4_header(p) or p[hlen(p)] not in ICMP_ERRORS:
        return None
    q = hlen(p) + 8
    return q, q + hlen(p[q:])


def csum_replace16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for one 16-bit word, written out here so the test does not lean on gw.packet."""
    s = (~csum & 0xFFFF) + (~old & 0xFFFF) + new
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def mask(p: bytes | bytearray, offsets) -> bytes:
    out = bytearray(p)
    for o in offsets:
        if o < len(out):
            out[o] = 0
    return bytes(out)


def variable_offsets(p: bytes | bytearray, *, ext_port: bool) -> set[int]:
    """Bytes that may differ from the kernel's copy: TTL, IP ID, IP checksum; the external port and the
    outer L4 checksum (``ext_port``, outbound); the quoted checksums only for finding the counterpart."""
    offs = {IP_TTL, *IP_ID, *IP_CSUM}
    if has_l4_header(p) and p[9] in L4_CSUM:
        at = hlen(p) + L4_CSUM[p[9]]
        if ext_port:
            offs |= {at, at + 1}
            port = port_offset(p, source=True)
            if port is not None:
                offs |= {port, port + 1}
    return offs


def match_key(p: bytes | bytearray, *, ext_port: bool) -> bytes:
    """What identifies a packet on both sides of a NAT: everything but the bytes a NAT may change."""
    offs = variable_offsets(p, ext_port=ext_port)
    if has_l4_header(p) and p[9] in L4_CSUM:  # the counterpart is found first, then compared in full
        offs |= {hlen(p) + L4_CSUM[p[9]], hlen(p) + L4_CSUM[p[9]] + 1}
    q = quote_offsets(p)
    if q is not None:
        qip, ql4 = q
        offs |= {qip + 10, qip + 11}
        if p[qip + 9] in L4_CSUM:
            offs |= {ql4 + L4_CSUM[p[qip + 9]], ql4 + L4_CSUM[p[qip + 9]] + 1}
    return mask(p, offs)


class Queues:
    """The other side's packets, by match key, each key's packets in capture order."""

    def __init__(self, packets: list[Captured], *, ext_port: bool) -> None:
        self.ext_port = ext_port
        self.by_key: dict[bytes, deque[Captured]] = defaultdict(deque)
        for c in packets:
            self.by_key[match_key(c.ip, ext_port=ext_port)].append(c)

    def take(self, p: bytes | bytearray) -> Captured | None:
        q = self.by_key.get(match_key(p, ext_port=self.ext_port))
        return q.popleft() if q else None

    def left(self) -> list[Captured]:
        return sorted(c for q in self.by_key.values() for c in q)


# ---------------------------------------------------------------------- the replay


class Replay:
    """Feeds both captures through one gw NAT and compares every packet it emits with the kernel's."""

    def __init__(self, inside: list[Captured], outside: list[Captured]) -> None:
        config = NatConfig(external_addresses=["198.51.100.1"], tcp_mss=0, filtering="address-and-port-dependent")
        self.nat = Nat(config, random.Random(20240601))
        self.client_out = [c for c in inside if addrs(c.ip)[0] == CLIENT]
        self.internet_in = [c for c in outside if addrs(c.ip)[1] == PUBLIC]
        self.kernel_out = Queues([c for c in outside if addrs(c.ip)[0] == PUBLIC], ext_port=True)
        to_client = [c for c in inside if addrs(c.ip)[1] == CLIENT]
        self.kernel_own = [c for c in to_client if addrs(c.ip)[0] == VPN_GW]  # the kernel's own answers
        self.kernel_in = Queues([c for c in to_client if addrs(c.ip)[0] != VPN_GW], ext_port=False)
        self.ours_for_kernel: dict[tuple[int, int], int] = {}  # (proto, kernel's port) -> gw's port
        self.kernel_for_ours: dict[tuple[int, int], int] = {}
        self.matched: Counter[tuple[str, str]] = Counter()
        self.failures: list[str] = []
        self.expired_probes: list[Captured] = []  # TTL=1 probes gw, like the kernel, did not forward
        self.id_differs = 0
        self.datagrams_checked = 0
        self._whole = Reassembler()
        self._category_of_datagram: dict[tuple, str] = {}
        self._traceroute_ids: set[int] = set()
        self._held: dict[int, Captured] = {}

    def fail(self, cap: Captured, direction: str, why: str) -> None:
        self.failures.append(f"{direction} frame {cap.index} at {cap.at_ns}: {why}")

    def run(self) -> Replay:
        stream = sorted([(c.at_ns, 0, c.index, "out", c) for c in self.client_out]
                        + [(c.at_ns, 1, c.index, "in", c) for c in self.internet_in])
        for now, _, _, direction, cap in stream:
            self.nat.expire(now)
            pkt = bytearray(cap.ip)
            if direction == "in" and not self._to_our_port(pkt, cap):
                continue
            verdict = (self.nat.translate_outbound if direction == "out" else self.nat.translate_inbound)(pkt, now)
            emitted = [(pkt, cap)] if verdict == FORWARD else []
            if verdict == Drop.HELD:
                self._held[id(pkt)] = cap
            elif verdict == Drop.TTL_EXCEEDED and direction == "out" and cap.ip[IP_TTL] == 1:
                self.expired_probes.append(cap)  # the router answers it, like the kernel did
            elif verdict != FORWARD:
                self.fail(cap, direction, f"gw said {Drop(verdict).name}")
            released = self.nat.released_outbound + self.nat.released_inbound
            self.nat.released_outbound.clear()
            self.nat.released_inbound.clear()
            emitted += [(p, self._held.pop(id(p))) for p in released]
            for p, c in emitted:
                (self._compare_out if direction == "out" else self._compare_in)(p, c)
        for c in self.kernel_out.left():
            self.fail(c, "out", "the kernel forwarded it, gw emitted nothing like it")
        for c in self.kernel_in.left():
            self.fail(c, "in", "the kernel delivered it, gw emitted nothing like it")
        if self._held:
            self.failures.append(f"{len(self._held)} fragments still held at the end")
        return self

    # -- inbound packets are readdressed from the kernel's external port to gw's

    def _our_port(self, proto: int, kernel_port: int, cap: Captured) -> int | None:
        ours = self.ours_for_kernel.get((proto, kernel_port))
        if ours is None:
            self.fail(cap, "in", f"addressed to kernel port {proto}/{kernel_port} of no flow seen outbound")
        return ours

    def _to_our_port(self, pkt: bytearray, cap: Captured) -> bool:
        if not has_l4_header(pkt):
            return True
        proto, l4 = pkt[9], hlen(pkt)
        q = quote_offsets(pkt)
        if q is not None:  # an error quoting the kernel's outbound packet: its source port becomes ours
            qip, ql4 = q
            qproto = pkt[qip + 9]
            at = ql4 + (4 if qproto == ICMP else 0)
            kernel_port = struct.unpack_from("!H", pkt, at)[0]
            ours = self._our_port(qproto, kernel_port, cap)
            if ours is None:
                return False
            struct.pack_into("!H", pkt, at, ours)
            csum_at = ql4 + L4_CSUM[qproto]
            if csum_at + 2 <= len(pkt):
                c = struct.unpack_from("!H", pkt, csum_at)[0]
                if c or qproto != UDP:
                    struct.pack_into("!H", pkt, csum_at, csum_replace16(c, kernel_port, ours))
            struct.pack_into("!H", pkt, l4 + 2, 0)
            struct.pack_into("!H", pkt, l4 + 2, inet_checksum(pkt[l4:]))
            return True
        at = port_offset(pkt, source=False)
        if at is None:
            return True
        kernel_port = struct.unpack_from("!H", pkt, at)[0]
        ours = self._our_port(proto, kernel_port, cap)
        if ours is None:
            return False
        struct.pack_into("!H", pkt, at, ours)
        csum_at = l4 + L4_CSUM[proto]
        c = struct.unpack_from("!H", pkt, csum_at)[0]
        if c or proto != UDP:
            struct.pack_into("!H", pkt, csum_at, csum_replace16(c, kernel_port, ours))
        return True

    # -- comparisons

    def _valid(self, p: bytearray, cap: Captured, direction: str) -> None:
        for why in problems(p):
            self.fail(cap, direction, f"gw's packet: {why}")
        if frag_word(p) & (MF | OFFSET):
            whole = self._whole.add(p)
            if whole is not None:
                src, dst, proto, body = whole
                self.datagrams_checked += 1
                if not l4_ok(src, dst, proto, body):
                    self.fail(cap, direction, "gw's reassembled datagram has a wrong L4 checksum")

    def _same_but(self, ours: bytearray, kern: Captured, allowed: set[int], direction: str, cap: Captured) -> None:
        if len(ours) != len(kern.ip):
            self.fail(cap, direction, f"length {len(ours)} != kernel's {len(kern.ip)}")
            return
        diff = [i for i in range(len(ours)) if ours[i] != kern.ip[i] and i not in allowed]
        if diff:
            self.fail(cap, direction, f"differs from kernel frame {kern.index} at bytes {diff[:12]}: "
                      f"gw {bytes(ours[diff[0]:diff[0] + 4]).hex()} kernel {kern.ip[diff[0]:diff[0] + 4].hex()}")
        if ours[IP_TTL] != kern.ip[IP_TTL]:  # both are a router hop: each takes one off
            self.fail(cap, direction, f"TTL {ours[IP_TTL]}, kernel's {kern.ip[IP_TTL]}")
        if ours[4:6] != kern.ip[4:6]:
            self.id_differs += 1

    def _compare_out(self, ours: bytearray, cap: Captured) -> None:
        category = self._category(cap.ip, outbound=True)
        self._valid(ours, cap, "out")
        kern = self.kernel_out.take(ours)
        if kern is None:
            self.fail(cap, "out", f"no kernel counterpart ({category})")
            return
        at = port_offset(ours, source=True)
        if at is not None:
            key_ours = (ours[9], struct.unpack_from("!H", ours, at)[0])
            key_kern = (ours[9], struct.unpack_from("!H", kern.ip, at)[0])
            known_ours = self.ours_for_kernel.setdefault(key_kern, key_ours[1])
            known_kern = self.kernel_for_ours.setdefault(key_ours, key_kern[1])
            if (known_ours, known_kern) != (key_ours[1], key_kern[1]):
                self.fail(cap, "out", f"port map broken: kernel {key_kern} <-> gw {key_ours}, "
                          f"earlier {known_kern} <-> {known_ours}")
        self._same_but(ours, kern, variable_offsets(ours, ext_port=True), "out", cap)
        self.matched[("out", category)] += 1

    def _compare_in(self, ours: bytearray, cap: Captured) -> None:
        self._valid(ours, cap, "in")
        kern = self.kernel_in.take(ours)
        if kern is None:
            self.fail(cap, "in", "no kernel counterpart")
            return
        self._same_but(ours, kern, variable_offsets(ours, ext_port=False), "in", cap)
        self.matched[("in", self._category(kern.ip, outbound=False))] += 1

    # -- what a packet is, from the client's side (for the counts)

    def _category(self, p: bytes, outbound: bool) -> str:
        src, dst = addrs(p)
        datagram = (src, dst, p[9], struct.unpack_from("!H", p, 4)[0])
        if not has_l4_header(p):
            return self._category_of_datagram.get(datagram, "fragment of an unknown datagram")
        l4 = hlen(p)
        category = "other"
        if p[9] == ICMP:
            icmp_type, code = p[l4], p[l4 + 1]
            if icmp_type in (0, 8):
                ident = struct.unpack_from("!H", p, l4 + 4)[0]
                if outbound and p[IP_TTL] < 64:
                    self._traceroute_ids.add(ident)
                if frag_word(p) & MF:
                    category = "ping 3000 B (fragments)"
                elif ident in self._traceroute_ids:
                    category = "traceroute ICMP"
                elif frag_word(p) & DF and len(p) > 1400:
                    category = "PMTU probe (DF)"
                else:
                    category = "ping"
            else:
                qip, ql4 = quote_offsets(p) or (l4 + 8, l4 + 28)
                quoted = {UDP: "UDP", ICMP: "ICMP", TCP: "TCP"}.get(p[qip + 9], "?")
                if icmp_type == 3 and code == 4:
                    category = "PMTU: fragmentation needed"
                elif icmp_type == 11:
                    category = f"traceroute {quoted}: TTL exceeded"
                elif icmp_type == 3 and code == 3:
                    qdport = struct.unpack_from("!H", p, ql4 + 2)[0]
                    category = "port unreachable (closed UDP port)" if qdport == 9 else \
                        "traceroute UDP: port unreachable"
        else:
            sport, dport = struct.unpack_from("!HH", p, l4)
            remote = dport if outbound else sport
            if p[9] == UDP:
                category = {53: "DNS UDP", 7: "UDP 3000 B (fragments)", 9: "closed UDP port"}.get(
                    remote, "traceroute UDP" if 33434 <= remote < 33534 else "other")
            elif p[9] == TCP:
                flags = p[l4 + 13]
                category = {53: "DNS TCP", 80: "HTTP download"}.get(remote, "other")
                if remote == 81:
                    category = "TCP RST" if flags & 0x04 else "TCP to a closed port"
        if frag_word(p) & MF:
            self._category_of_datagram[datagram] = category
        return category


@pytest.fixture(scope="module")
def replay() -> Replay:
    where = vector_dir()
    return Replay(read_ipv4(where / "inside.pcap"), read_ipv4(where / "outside.pcap")).run()


def test_vectors_are_what_the_readme_says() -> None:
    where = vector_dir()
    inside, outside = read_ipv4(where / "inside.pcap"), read_ipv4(where / "outside.pcap")
    assert len(inside) == 482 and len(outside) == 478  # README: 484 and 478 frames; inside has 2 ARP
    for c in inside + outside:  # every checksum in the files is real
        assert problems(c.ip) == [], (c.index, problems(c.ip))


def test_every_packet_matches_the_kernel_except_port_ttl_and_id(replay: Replay) -> None:
    assert replay.failures == [], "\n".join(replay.failures[:30])


def test_the_two_ttl_1_probes_expire_at_gw_as_at_the_kernel(replay: Replay) -> None:
    assert len(replay.expired_probes) == 2
    assert sorted(c.ip[9] for c in replay.expired_probes) == [ICMP, UDP]
    own = replay.kernel_own
    assert len(own) == 2 and all(c.ip[9] == ICMP and c.ip[hlen(c.ip)] == 11 for c in own)


def test_the_port_map_is_one_to_one(replay: Replay) -> None:
    assert len(replay.ours_for_kernel) == len(replay.kernel_for_ours) > 0
    assert {(p, k) for (p, k), _ in replay.ours_for_kernel.items()} == \
        {(p, k) for (p, _), k in replay.kernel_for_ours.items()}


def test_every_captured_command_is_covered(replay: Replay) -> None:
    counts = "\n".join(f"  {d:3} {c:40} {n}" for (d, c), n in sorted(replay.matched.items()))
    print(f"\nmatched packets per category:\n{counts}\n  reassembled datagrams checked: "
          f"{replay.datagrams_checked}; IP IDs that differ: {replay.id_differs}")
    missing = [r for r in REQUIRED if replay.matched[r] == 0]
    assert missing == [], f"nothing matched for {missing}\n{counts}"
    assert not [k for k in replay.matched if "other" in k[1] or "unknown" in k[1]], counts
    total = sum(replay.matched.values())
    assert total == len(replay.client_out) - 2 + len(replay.internet_in)
