"""Hypothesis strategies for NAT property tests, an independent packet codec, and a readable reference NAT.

Nothing here uses ``gw.packet``'s checksum or builder code: ``inet_checksum`` is a plain RFC 1071 word
sum, the builders pack every field with ``struct``, ``problems`` re-parses with dpkt and recomputes every
checksum from scratch, and ``ref_rewrite`` is the readable SNAT/DNAT the tuned paths are checked against
(STYLE.md section 3, rule 4). ``Driver`` turns a list of drawn operations into traffic through one ``Nat``
and keeps what the invariants need (emitted packets, events, snapshots).
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections import Counter

import dpkt
import msgspec
from hypothesis import strategies as st

from gw.config import NatConfig
from gw.nat import FORWARD, HAIRPIN, Nat
from journal.events import Snapshot

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
UDP, TCP, ICMP = 17, 6, 1
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
FILTERINGS = ("endpoint-independent", "address-dependent", "address-and-port-dependent")


def A(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


VPN_NET = A("10.66.77.0")
EXT = [A("198.51.100.1"), A("198.51.100.2")]
ROUTER = A("198.51.100.254")


# ---------------------------------------------------------------------- an independent codec


def inet_checksum(data: bytes | bytearray, initial: int = 0) -> int:
    """RFC 1071, plainly: add the 16-bit words (and ``initial``), fold the carries, complement."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo(src: int, dst: int, proto: int, length: int) -> int:
    """Sum of the RFC 768 / RFC 9293 pseudo-header words."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length


def ip_packet(src: int, dst: int, proto: int, payload: bytes, *, ttl: int = 64, ip_id: int = 0,
              frag: int = 0, options: bytes = b"", tos: int = 0) -> bytearray:
    """An IPv4 packet with a correct header checksum (``frag`` is the flags + offset word)."""
    hlen = 20 + len(options)
    hdr = bytearray(struct.pack("!BBHHHBBHII", 0x40 | hlen // 4, tos, hlen + len(payload), ip_id, frag, ttl,
                                proto, 0, src, dst) + options)
    struct.pack_into("!H", hdr, 10, inet_checksum(hdr))
    return hdr + payload


def udp_segment(src: int, dst: int, sport: int, dport: int, payload: bytes, zero_csum: bool = False) -> bytes:
    seg = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    if not zero_csum:
        c = inet_checksum(seg, pseudo(src, dst, UDP, len(seg)))
        struct.pack_into("!H", seg, 6, c or 0xFFFF)  # RFC 768: a computed 0 is sent as all ones
    return bytes(seg)


def tcp_segment(src: int, dst: int, sport: int, dport: int, flags: int, payload: bytes = b"", *,
                seq: int = 1000, ack: int = 0, window: int = 65535, options: bytes = b"") -> bytes:
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, (20 + len(options)) // 4 << 4, flags,
                                window, 0, 0) + options + payload)
    struct.pack_into("!H", seg, 16, inet_checksum(seg, pseudo(src, dst, TCP, len(seg))))
    return bytes(seg)


def icmp_message(icmp_type: int, code: int, rest: bytes, body: bytes = b"") -> bytes:
    msg = bytearray(struct.pack("!BBH", icmp_type, code, 0) + rest + body)
    struct.pack_into("!H", msg, 2, inet_checksum(msg))
    return bytes(msg)


def udp(src: int, dst: int, sport: int, dport: int, payload: bytes = b"", *, zero_csum: bool = False,
        **ip: object) -> bytearray:
    return ip_packet(src, dst, UDP, udp_segment(src, dst, sport, dport, payload, zero_csum), **ip)


def tcp(src: int, dst: int, sport: int, dport: int, flags: int = ACK, payload: bytes = b"", *,
        tcp_options: bytes = b"", **ip: object) -> bytearray:
    seg = tcp_segment(src, dst, sport, dport, flags, payload, options=tcp_options)
    return ip_packet(src, dst, TCP, seg, **ip)


def echo(src: int, dst: int, ident: int, seq: int = 1, payload: bytes = b"", *, reply: bool = False,
         **ip: object) -> bytearray:
    body = icmp_message(0 if reply else 8, 0, struct.pack("!HH", ident, seq), payload)
    return ip_packet(src, dst, ICMP, body, **ip)


def icmp_error(src: int, dst: int, icmp_type: int, code: int, quoted: bytes | bytearray, *, mtu: int = 0,
               **ip: object) -> bytearray:
    rest = struct.pack("!HH", 0, mtu)
    return ip_packet(src, dst, ICMP, icmp_message(icmp_type, code, rest, bytes(quoted)), **ip)


def fragments(pkt: bytes | bytearray, size: int) -> list[bytearray]:
    """Split an option-less packet into fragments carrying ``size`` (rounded to 8) bytes of payload each."""
    size = max(8, size // 8 * 8)
    hlen = (pkt[0] & 15) * 4
    src, dst = struct.unpack_from("!II", pkt, 12)
    ident, word = struct.unpack_from("!HH", pkt, 4)
    body = bytes(pkt[hlen:])
    out = []
    for off in range(0, len(body), size):
        more = 0x2000 if off + size < len(body) else 0
        out.append(ip_packet(src, dst, pkt[9], body[off : off + size], ttl=pkt[8], ip_id=ident,
                             frag=(word & 0x4000) | more | off // 8))
    return out


def l4_ok(src: int, dst: int, proto: int, seg: bytes) -> bool:
    """Whether a whole TCP/UDP/ICMP message carries a valid checksum (a zero UDP checksum means none)."""
    if proto == UDP and seg[6:8] == b"\0\0":
        return True
    if proto == ICMP:
        return inet_checksum(seg) == 0
    return inet_checksum(seg, pseudo(src, dst, proto, len(seg))) == 0


def problems(pkt: bytes | bytearray) -> list[str]:
    """Why a packet leaving the NAT is not well formed: dpkt re-parse, every checksum recomputed in full.

    Fragments get their IP header checked here; their L4 checksum is checked on the reassembled datagram.
    ICMP errors: the ICMP checksum over the whole message, the quoted IP header's checksum, and the quoted
    L4 checksum when the whole quoted datagram is there.
    """
    pkt = bytes(pkt)
    bad = []
    try:
        ip = dpkt.ip.IP(pkt)
    except (dpkt.UnpackError, struct.error) as e:  # pragma: no cover - reported, not expected
        return [f"dpkt cannot parse: {e!r}"]
    hlen = ip.hl * 4
    if ip.v != 4 or ip.len != len(pkt) or hlen < 20:
        bad.append(f"bad version/length: v={ip.v} len={ip.len} buf={len(pkt)}")
    if inet_checksum(pkt[:hlen]) != 0:
        bad.append("IP header checksum")
    if struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF:  # a fragment: L4 is checked after reassembly
        return bad
    seg = pkt[hlen : ip.len]
    src, dst = struct.unpack_from("!II", pkt, 12)
    if ip.p in (TCP, UDP, ICMP) and not l4_ok(src, dst, ip.p, seg):
        bad.append(f"L4 checksum (proto {ip.p})")
    if ip.p == TCP and not isinstance(ip.data, dpkt.tcp.TCP):
        bad.append("dpkt did not parse TCP")
    if ip.p == UDP and not isinstance(ip.data, dpkt.udp.UDP):
        bad.append("dpkt did not parse UDP")
    if ip.p == ICMP and len(seg) >= 8 and seg[0] in (3, 4, 11, 12):
        bad += [f"quoted: {p}" for p in quote_problems(seg[8:])]
    return bad


def quote_problems(quote: bytes) -> list[str]:
    """Checks on the datagram an ICMP error quotes: its header checksum, and L4 when it is quoted whole."""
    if len(quote) < 20:
        return ["quote shorter than an IP header"]
    qhl = (quote[0] & 15) * 4
    bad = [] if inet_checksum(quote[:qhl]) == 0 else ["IP header checksum"]
    qlen = struct.unpack_from("!H", quote, 2)[0]
    qoff = struct.unpack_from("!H", quote, 6)[0]
    if qlen <= len(quote) and not qoff & 0x3FFF:
        qsrc, qdst = struct.unpack_from("!II", quote, 12)
        if quote[9] in (TCP, UDP, ICMP) and not l4_ok(qsrc, qdst, quote[9], quote[qhl:qlen]):
            bad.append(f"L4 checksum of the whole quoted datagram (proto {quote[9]})")
    return bad


class Reassembler:
    """Collects fragments by (src, dst, proto, id); returns a datagram's L4 message once it is complete."""

    def __init__(self) -> None:
        self.parts: dict[tuple, dict[int, tuple[bytes, bool]]] = {}

    def add(self, pkt: bytes | bytearray) -> tuple[int, int, int, bytes] | None:
        hlen = (pkt[0] & 15) * 4
        total, ident, word = struct.unpack_from("!HHH", pkt, 2)
        src, dst = struct.unpack_from("!II", pkt, 12)
        key = (src, dst, pkt[9], ident)
        parts = self.parts.setdefault(key, {})
        parts[(word & 0x1FFF) * 8] = (bytes(pkt[hlen:total]), bool(word & 0x2000))
        body, at = b"", 0
        while at in parts:
            data, more = parts[at]
            body += data
            at += len(data)
            if not more:
                del self.parts[key]
                return src, dst, pkt[9], body
            if not data:
                return None
        return None


# ---------------------------------------------------------------------- the readable reference NAT


def ref_rewrite(pkt: bytes | bytearray, *, src: int | None = None, sport: int | None = None,
                dst: int | None = None, dport: int | None = None, mss: int = 0) -> bytearray:
    """Readable SNAT/DNAT of an unfragmented UDP, TCP or ICMP echo packet, as a router hop forwards it: TTL one
    less, every checksum recomputed in full.

    ``sport``/``dport`` are the ICMP echo identifier for ICMP. ``mss``: clamp a SYN's MSS option (0: off).
    """
    out = bytearray(pkt)
    hlen = (out[0] & 15) * 4
    proto = out[9]
    out[8] -= 1
    if src is not None:
        struct.pack_into("!I", out, 12, src)
    if dst is not None:
        struct.pack_into("!I", out, 16, dst)
    struct.pack_into("!H", out, 10, 0)
    struct.pack_into("!H", out, 10, inet_checksum(out[:hlen]))
    l4 = hlen
    new_src, new_dst = struct.unpack_from("!II", out, 12)
    seg_len = len(out) - l4
    if proto == ICMP:
        new_id = sport if sport is not None else dport
        if new_id is not None:
            struct.pack_into("!H", out, l4 + 4, new_id)
        struct.pack_into("!H", out, l4 + 2, 0)
        struct.pack_into("!H", out, l4 + 2, inet_checksum(out[l4:]))
        return out
    if sport is not None:
        struct.pack_into("!H", out, l4, sport)
    if dport is not None:
        struct.pack_into("!H", out, l4 + 2, dport)
    if proto == UDP:
        if struct.unpack_from("!H", out, l4 + 6)[0] == 0:
            return out  # no checksum stays no checksum
        struct.pack_into("!H", out, l4 + 6, 0)
        c = inet_checksum(out[l4:], pseudo(new_src, new_dst, UDP, seg_len))
        struct.pack_into("!H", out, l4 + 6, c or 0xFFFF)
        return out
    if proto == TCP:
        if mss and out[l4 + 13] & SYN:
            i, end = l4 + 20, l4 + (out[l4 + 12] >> 4) * 4
            while i < end and out[i] != 0:
                if out[i] == 1:
                    i += 1
                    continue
                if out[i] == 2 and out[i + 1] == 4:
                    old = struct.unpack_from("!H", out, i + 2)[0]
                    struct.pack_into("!H", out, i + 2, min(old, mss))
                    break
                i += max(out[i + 1], 2)
        struct.pack_into("!H", out, l4 + 16, 0)
        struct.pack_into("!H", out, l4 + 16, inet_checksum(out[l4:], pseudo(new_src, new_dst, TCP, seg_len)))
    return out


# ---------------------------------------------------------------------- strategies


def nat_config(**kw: object) -> NatConfig:
    base: dict[str, object] = {"external_addresses": [str(ipaddress.IPv4Address(a)) for a in EXT]}
    base.update(kw)
    return NatConfig(**base)


# Small pools so flows collide, quotas fill and ports run out. Source ports below 1024 must map below 1024.
CLIENTS = [VPN_NET | h for h in (2, 3, 4, 5)]
SPORTS = [53, 1000, 1024, 40000, 40001, 40002, 50000, 60000]
REMOTES = [A("203.0.113.10"), A("203.0.113.11"), A("192.0.2.7")]
RPORTS = [53, 80, 443, 9]

client_addrs = st.integers(2, 254).map(lambda h: VPN_NET | h)
# internet hosts: never one of the sources a NAT drops inbound as martian (tested on their own)
remote_addrs = st.integers(0x0100_0000, 0xDFFF_FFFF).filter(
    lambda a: a not in EXT and a >> 8 != VPN_NET >> 8 and a >> 24 != 127
)
ports = st.integers(0, 65535)
payloads = st.binary(max_size=64)
# no options, NOPs + EOL, router alert (RFC 2113), two words of NOPs
ip_options = st.sampled_from([b"", b"\x01\x01\x01\x00", b"\x94\x04\x00\x00", b"\x01" * 8])
tcp_flags = st.sampled_from([SYN, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK])

small = st.integers(0, 7)
_OUT = [
    st.tuples(st.just("udp"), small, small, small, small, payloads, st.booleans(), ip_options),
    st.tuples(st.just("tcp"), small, small, small, small, tcp_flags, payloads, ip_options),
    st.tuples(st.just("ping"), small, small, small, payloads),
    st.tuples(st.just("frag_out"), small, small, small, small, st.sampled_from([UDP, ICMP, TCP]),
              st.integers(9, 400), st.integers(8, 120), st.randoms(use_true_random=False),
              st.none() | st.integers(0, 63)),  # hairpin: to this mapping's public endpoint
]
_OTHER = [
    st.tuples(st.just("reply"), st.integers(0, 63), st.booleans(), small, small, tcp_flags, payloads),
    st.tuples(st.just("stray"), st.sampled_from([UDP, TCP, ICMP]), small, st.integers(1, 65535), small),
    st.tuples(st.just("err_in"), st.integers(0, 63), st.sampled_from([(3, 3), (3, 4), (11, 0), (12, 0)]),
              st.sampled_from([28, 36, 548, 10_000]), st.booleans()),
    st.tuples(st.just("err_out"), st.integers(0, 63), st.sampled_from([(3, 3), (3, 1), (11, 0)])),
    st.tuples(st.just("frag_in"), st.integers(0, 63), st.integers(9, 400), st.integers(8, 120),
              st.randoms(use_true_random=False)),
    st.tuples(st.just("hairpin"), small, small, st.integers(0, 63), payloads),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1, 29, 31, 61, 121, 241, 7441])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("open"), small),
    st.tuples(st.just("close"), small),
]
# new flows are drawn nearly as often as everything else together, so quotas and port ranges fill up
OPS = st.one_of(*_OUT, *_OUT, *_OTHER)
op_lists = st.lists(OPS, min_size=20, max_size=60)


class Driver:
    """Runs drawn operations through one NAT, as the shell would, recording what the properties check.

    ``emitted``: every packet the NAT let out, (verdict, bytes), released fragments included.
    ``events``: every journal event in order. ``snapshots``: (snapshot, events seen so far).
    """

    def __init__(self, config: NatConfig, seed: int, *, verify: bool = False) -> None:
        self.nat = Nat(config, random.Random(seed))
        self.now = T0
        self.verify = verify
        self.emitted: list[tuple[int, bytes]] = []
        self.verdicts: Counter[int] = Counter()
        self.events: list = []
        self.snapshots: list[tuple[Snapshot, int]] = []
        self.bad: list[tuple[str, bytes]] = []
        self.whole = Reassembler()
        self.datagrams_checked = 0
        self._ident = 1
        self._last_out: dict[int, bytes] = {}  # ext flow key -> last translated outbound packet
        self._last_in: dict[int, bytes] = {}  # int flow key -> last translated inbound packet
        self._remote: dict[int, tuple[int, int]] = {}  # ext flow key -> remote the client last sent to
        self._sessions: list[int] = []  # session numbers handed out

    # -- packets in, packets out

    def outbound(self, pkt: bytearray) -> int:
        v = self.nat.translate_outbound(pkt, self.now)
        self._after(v, pkt, True)
        return v

    def inbound(self, pkt: bytearray) -> int:
        v = self.nat.translate_inbound(pkt, self.now)
        self._after(v, pkt, False)
        return v

    def _after(self, verdict: int, pkt: bytearray, outbound: bool) -> None:
        self.verdicts[verdict] += 1
        out = [(verdict, pkt, outbound)] if verdict in (FORWARD, HAIRPIN) else []
        nat = self.nat
        out += [(FORWARD, p, True) for p in nat.released_outbound]  # to the internet
        out += [(FORWARD, p, False) for p in nat.released_inbound]  # to clients, hairpinned ones too
        nat.released_outbound, nat.released_inbound = [], []
        for v, p, o in out:
            self.emitted.append((v, bytes(p)))
            if self.verify:
                self._check(p)
            if (p[6] & 0x3F) or p[7]:
                continue
            if o and v == FORWARD:
                key = self._ext_key_of(p, src=True)
                if key is not None:
                    self._last_out[key] = bytes(p)
                    self._remote[key] = self._endpoint(p, src=False)
            elif not o or v == HAIRPIN:
                key = self._ext_key_of(p, src=False, internal=True)
                if key is not None:
                    self._last_in[key] = bytes(p)

    def _check(self, p: bytearray) -> None:
        for why in problems(p):
            self.bad.append((why, bytes(p)))
        if struct.unpack_from("!H", p, 6)[0] & 0x3FFF:
            whole = self.whole.add(p)
            if whole is not None:
                src, dst, proto, body = whole
                self.datagrams_checked += 1
                if proto in (TCP, UDP, ICMP) and not l4_ok(src, dst, proto, body):
                    self.bad.append((f"L4 checksum of a reassembled datagram (proto {proto})", bytes(p)))

    @staticmethod
    def _endpoint(p: bytes | bytearray, src: bool) -> tuple[int, int]:
        hlen = (p[0] & 15) * 4
        addr = struct.unpack_from("!I", p, 12 if src else 16)[0]
        if p[9] == ICMP:
            return addr, 0
        return addr, struct.unpack_from("!H", p, hlen + (0 if src else 2))[0]

    def _ext_key_of(self, p: bytes | bytearray, src: bool, internal: bool = False) -> int | None:
        hlen = (p[0] & 15) * 4
        proto = p[9]
        if len(p) < hlen + 8 or proto not in (TCP, UDP, ICMP):
            return None
        if proto == ICMP:
            if p[hlen] not in (0, 8):
                return None
            port = struct.unpack_from("!H", p, hlen + 4)[0]
        else:
            port = struct.unpack_from("!H", p, hlen + (0 if src else 2))[0]
        addr = struct.unpack_from("!I", p, 12 if src else 16)[0]
        m = (self.nat.lookup_internal if internal else self.nat.lookup_external)(proto, addr, port)
        return None if m is None else (m.key if internal else m.ext_key)

    def _mapping(self, i: int):
        ms = sorted(self.nat.mappings(), key=lambda m: m.ext_key)
        return ms[i % len(ms)] if ms else None

    def _next_ident(self) -> int:
        self._ident = self._ident % 0xFFFF + 1
        return self._ident

    # -- the operations

    def run(self, ops: list[tuple], snapshot_at: int | None = None) -> None:
        for i, op in enumerate(ops):
            if i == snapshot_at:
                self.snapshot()
            self.step(op)

    def step(self, op: tuple) -> None:
        getattr(self, "op_" + op[0])(*op[1:])
        new, self.nat.events = self.nat.events, []
        self.events += new

    def snapshot(self) -> None:
        snap = self.nat.snapshot_view(self.now).build()
        snap = msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot)
        self.snapshots.append((snap, len(self.events)))

    def op_udp(self, c, s, r, rp, payload, zero_csum, options) -> None:
        self.outbound(udp(CLIENTS[c % 4], REMOTES[r % 3], SPORTS[s], RPORTS[rp % 4], payload,
                          zero_csum=zero_csum, options=options, ip_id=self._next_ident()))

    def op_tcp(self, c, s, r, rp, flags, payload, options) -> None:
        self.outbound(tcp(CLIENTS[c % 4], REMOTES[r % 3], SPORTS[s], RPORTS[rp % 4], flags, payload,
                          tcp_options=b"\x02\x04\x05\xb4" if flags & SYN else b"", options=options))

    def op_ping(self, c, ident, r, payload) -> None:
        self.outbound(echo(CLIENTS[c % 4], REMOTES[r % 3], SPORTS[ident] or 7, 1, payload))

    def op_reply(self, i, same, r, rp, flags, payload) -> None:
        m = self._mapping(i)
        if m is None:
            return
        raddr, rport = self._remote.get(m.ext_key, (REMOTES[r % 3], RPORTS[rp % 4]))
        if not same:
            raddr, rport = REMOTES[r % 3], RPORTS[rp % 4]
        if m.proto == UDP:
            pkt = udp(raddr, m.ext_addr, rport, m.ext_port, payload)
        elif m.proto == TCP:
            pkt = tcp(raddr, m.ext_addr, rport, m.ext_port, flags, payload)
        else:
            pkt = echo(raddr, m.ext_addr, m.ext_port, 1, payload, reply=True)
        self.inbound(pkt)

    def op_stray(self, proto, e, port, r) -> None:
        ext = EXT[e % 2]
        if proto == UDP:
            self.inbound(udp(REMOTES[r % 3], ext, 53, port, b"x"))
        elif proto == TCP:
            self.inbound(tcp(REMOTES[r % 3], ext, 80, port, SYN))
        else:
            self.inbound(echo(REMOTES[r % 3], ext, port, 1, reply=True))

    def op_err_in(self, i, type_code, quote_len, from_router) -> None:
        """The remote (or a router on the way) reports an error about our last outbound packet of a flow."""
        m = self._mapping(i)
        sent = self._last_out.get(m.ext_key) if m is not None else None
        if sent is None:
            return
        dst = struct.unpack_from("!I", sent, 16)[0]
        src = ROUTER if from_router else dst
        self.inbound(icmp_error(src, m.ext_addr, *type_code, sent[: min(quote_len, 548)], mtu=1280))

    def op_err_out(self, i, type_code) -> None:
        """The client reports an error about the last packet a flow delivered to it."""
        m = self._mapping(i)
        got = self._last_in.get(m.key) if m is not None else None
        if got is None:
            return
        dst = struct.unpack_from("!I", got, 16)[0]
        src = struct.unpack_from("!I", got, 12)[0]
        self.outbound(icmp_error(dst, src, *type_code, got[:548]))

    def op_frag_out(self, c, s, r, rp, proto, size, chunk, rnd, hairpin) -> None:
        src, dst, payload = CLIENTS[c % 4], REMOTES[r % 3], bytes(range(256)) * 2
        ident = self._next_ident()
        m = self._mapping(hairpin) if hairpin is not None else None
        if m is not None and m.proto == UDP:  # to another client's (or its own) public endpoint
            pkt = udp(src, m.ext_addr, SPORTS[s], m.ext_port, payload[:size], ip_id=ident)
        elif proto == UDP:
            pkt = udp(src, dst, SPORTS[s], RPORTS[rp % 4], payload[:size], ip_id=ident)
        elif proto == TCP:
            pkt = tcp(src, dst, SPORTS[s], RPORTS[rp % 4], ACK | PSH, payload[:size], ip_id=ident)
        else:
            pkt = echo(src, dst, SPORTS[s] or 7, 2, payload[:size], ip_id=ident)
        frags = fragments(pkt, chunk)
        rnd.shuffle(frags)
        for f in frags:
            self.outbound(f)

    def op_frag_in(self, i, size, chunk, rnd) -> None:
        m = self._mapping(i)
        if m is None:
            return
        raddr, rport = self._remote.get(m.ext_key, (REMOTES[0], RPORTS[0]))
        payload, ident = bytes(range(256)) * 2, self._next_ident()
        if m.proto == UDP:
            pkt = udp(raddr, m.ext_addr, rport, m.ext_port, payload[:size], ip_id=ident)
        elif m.proto == TCP:
            pkt = tcp(raddr, m.ext_addr, rport, m.ext_port, ACK, payload[:size], ip_id=ident)
        else:
            pkt = echo(raddr, m.ext_addr, m.ext_port, 2, payload[:size], reply=True, ip_id=ident)
        frags = fragments(pkt, chunk)
        rnd.shuffle(frags)
        for f in frags:
            self.inbound(f)

    def op_hairpin(self, c, s, i, payload) -> None:
        m = self._mapping(i)
        if m is None or m.proto != UDP:
            return
        self.outbound(udp(CLIENTS[c % 4], m.ext_addr, SPORTS[s], m.ext_port, payload))

    def op_advance(self, seconds) -> None:
        self.now += int(seconds * NS)

    def op_expire(self) -> None:
        self.nat.expire(self.now)

    def op_open(self, c) -> None:
        """A new session (numbers are gateway-unique); the address may still be held by an older one."""
        self._sessions.append(len(self._sessions) + 1)
        self.nat.open_session(self.now, session=self._sessions[-1], client=f"client{c % 4}", vpn_addr=CLIENTS[c % 4])

    def op_close(self, i) -> None:
        """Close one of the sessions opened so far (closing one twice is a no-op)."""
        if self._sessions:
            self.nat.close_session(self.now, self._sessions[i % len(self._sessions)], "closed")
