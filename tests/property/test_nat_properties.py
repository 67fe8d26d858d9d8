"""NAT invariants (STYLE.md section 8): round trips, table invariants, well-formed output, garbage in,
fold equals live, and the fast paths equal the general paths and a readable reference."""

from __future__ import annotations

import functools
import random
import struct
from collections import Counter

from hypothesis import event, given
from hypothesis import strategies as st

from gw.nat import FORWARD, HAIRPIN, Nat
from gw.packet import Drop
from journal.events import DECODER, ENCODER, MappingCreated, MappingExpired
from tests.helpers.strategies import (
    ACK,
    CLIENTS,
    EXT,
    FILTERINGS,
    FIN,
    ICMP,
    NS,
    PSH,
    REMOTES,
    RST,
    SPORTS,
    SYN,
    T0,
    TCP,
    UDP,
    Driver,
    client_addrs,
    echo,
    fragments,
    icmp_error,
    inet_checksum,
    nat_config,
    op_lists,
    payloads,
    ports,
    problems,
    ref_rewrite,
    remote_addrs,
    tcp,
    udp,
)

VERDICTS = {int(FORWARD), int(HAIRPIN)} | {int(d) for d in Drop}


def fields(pkt: bytes | bytearray) -> tuple[int, int, int, int, int]:
    """(proto, src, sport, dst, dport) of an unfragmented packet; the ICMP echo identifier is both ports."""
    hl = (pkt[0] & 15) * 4
    src, dst = struct.unpack_from("!II", pkt, 12)
    if pkt[9] == ICMP:
        ident = struct.unpack_from("!H", pkt, hl + 4)[0]
        return ICMP, src, ident, dst, ident
    sport, dport = struct.unpack_from("!HH", pkt, hl)
    return pkt[9], src, sport, dst, dport


def l4_payload(pkt: bytes | bytearray) -> bytes:
    hl = (pkt[0] & 15) * 4
    if pkt[9] == TCP:
        return bytes(pkt[hl + (pkt[hl + 12] >> 4) * 4 :])
    return bytes(pkt[hl + 8 :])


def reply_to(pkt: bytes | bytearray, payload: bytes, flags: int = ACK, zero_csum: bool = False) -> bytearray:
    """The remote's answer to a translated outbound packet: endpoints swapped."""
    proto, src, sport, dst, dport = fields(pkt)
    if proto == UDP:
        return udp(dst, src, dport, sport, payload, zero_csum=zero_csum)
    if proto == TCP:
        return tcp(dst, src, dport, sport, flags, payload)
    return echo(dst, src, sport, 1, payload, reply=True)


# ---------------------------------------------------------------------- 1. outbound then inbound


@given(
    filtering=st.sampled_from(FILTERINGS), kind=st.sampled_from([UDP, TCP, ICMP]),
    src=client_addrs, sport=ports, dst=remote_addrs, dport=ports, dst2=remote_addrs,
    payloads=st.lists(payloads, min_size=4, max_size=4),
    zero_csum=st.booleans(), seed=st.integers(0, 2**32 - 1),
)
def test_outbound_then_inbound_returns_to_the_original_endpoint(
    filtering, kind, src, sport, dst, dport, dst2, payloads, zero_csum, seed
):
    nat = Nat(_config(filtering), random.Random(seed))
    now = T0
    if kind == UDP:
        conversation = [(udp(src, dst, sport, dport, payloads[0], zero_csum=zero_csum), 0),
                        (udp(src, dst, sport, dport, payloads[1], zero_csum=zero_csum), 0),
                        (udp(src, dst2, sport, 53, payloads[2]), 0)]
    elif kind == TCP:
        conversation = [(tcp(src, dst, sport, dport, SYN, tcp_options=b"\x02\x04\x05\xb4"), SYN | ACK),
                        (tcp(src, dst, sport, dport, ACK | PSH, payloads[0]), ACK | PSH),
                        (tcp(src, dst, sport, dport, ACK, payloads[1]), ACK)]
    else:
        conversation = [(echo(src, dst, sport, 1, payloads[0]), 0),
                        (echo(src, dst, sport, 2, payloads[1]), 0),
                        (echo(src, dst2, sport, 3, payloads[2]), 0)]
    ext_endpoints = set()
    for pkt, reply_flags in conversation:
        original = bytes(pkt)
        now += NS
        assert nat.translate_outbound(pkt, now) == FORWARD
        assert problems(pkt) == []
        proto, x_src, x_sport, x_dst, x_dport = fields(pkt)
        _, _, o_sport, o_dst, o_dport = fields(original)
        assert (x_dst, x_dport if kind != ICMP else 0) == (o_dst, o_dport if kind != ICMP else 0)
        assert x_src in EXT and l4_payload(pkt) == l4_payload(original)
        ext_endpoints.add((x_src, x_sport))
        if kind != ICMP and o_sport < 1024:
            assert 1 <= x_sport < 1024
        reply = reply_to(pkt, payloads[3], reply_flags, zero_csum)
        sent = bytes(reply)
        assert nat.translate_inbound(reply, now) == FORWARD
        assert problems(reply) == []
        _, r_src, r_sport, r_dst, r_dport = fields(reply)
        assert (r_dst, r_dport) == (src, sport)
        assert (r_src, r_sport) == (fields(sent)[1], fields(sent)[2] if kind != ICMP else sport)
        assert l4_payload(reply) == l4_payload(sent)
    assert len(ext_endpoints) == 1  # endpoint-independent mapping: one external endpoint for every remote


def _config(filtering: str, **kw):
    return nat_config(filtering=filtering, **kw)


# ---------------------------------------------------------------------- 2. table invariants

SMALL = {
    "port_range": "40000-40001", "max_mappings_per_client": 2, "port_reuse_delay_s": 30, "udp_timeout_s": 120,
    "icmp_timeout_s": 60, "tcp_transitory_timeout_s": 240,
}


def check_table(nat: Nat, quota: int) -> None:
    ms = list(nat.mappings())
    exts = [(m.proto, m.ext_addr, m.ext_port) for m in ms]
    assert len(set(exts)) == len(exts) == len(nat), "an external endpoint is held twice"
    lo, hi = nat.config.port_bounds()
    per_client: dict[int, set[int]] = {}
    for m in ms:
        assert nat.lookup_internal(m.proto, m.int_addr, m.int_port) is m
        assert nat.lookup_external(m.proto, m.ext_addr, m.ext_port) is m
        per_client.setdefault(m.int_addr, set()).add(m.ext_addr)
        if m.proto != ICMP and m.int_port < 1024:
            assert 1 <= m.ext_port <= 1023, m
        else:
            assert lo <= m.ext_port <= hi, m
    for client, ext_addrs in per_client.items():
        count = sum(m.int_addr == client for m in ms)
        assert count <= quota, f"client holds {count} mappings, quota {quota}"
        assert nat.client_mapping_count(client) == count
        assert len(ext_addrs) == 1, "paired pooling: one public address per client"


def test_table_invariants_under_random_operations():
    seen: Counter[str] = Counter()

    @given(ops=op_lists, seed=st.integers(0, 2**32 - 1), filtering=st.sampled_from(FILTERINGS))
    def run(ops, seed, filtering):
        config = _config(filtering, **SMALL)
        delay = config.port_reuse_delay_s * NS
        d = Driver(config, seed)
        resting_until: dict[tuple[int, int, int], int] = {}
        for op in ops:
            before = len(d.events)
            drops_before = list(d.nat.drops)
            d.step(op)
            for ev in d.events[before:]:
                if isinstance(ev, MappingExpired):
                    resting_until[(ev.proto, ev.ext_addr, ev.ext_port)] = ev.at_ns + delay
                    seen["expired " + ev.reason] += 1
                elif isinstance(ev, MappingCreated):
                    key = (ev.proto, ev.ext_addr, ev.ext_port)
                    assert ev.at_ns >= resting_until.get(key, 0), f"port {key} handed out while resting"
                    if key in resting_until:
                        seen["port reused after resting"] += 1
                    if any(k[:2] == key[:2] and u > ev.at_ns for k, u in resting_until.items()):
                        seen["created while a port rests"] += 1
                    if ev.proto != ICMP and ev.int_port < 1024:
                        seen["low port mapped"] += 1
            if d.nat.drops[Drop.QUOTA] > drops_before[Drop.QUOTA]:
                seen["quota hit"] += 1
                event("quota hit")
            if d.nat.drops[Drop.PORTS_EXHAUSTED] > drops_before[Drop.PORTS_EXHAUSTED]:
                seen["ports exhausted"] += 1
                event("ports exhausted")
                if any(u > d.now for u in resting_until.values()):
                    seen["exhausted while ports rest"] += 1
            check_table(d.nat, config.max_mappings_per_client)
            for key, until in resting_until.items():
                if until > d.now:
                    assert d.nat.is_resting(*key, d.now) and d.nat.lookup_external(*key) is None

    run()
    for what in ("quota hit", "ports exhausted", "exhausted while ports rest", "port reused after resting",
                 "created while a port rests", "low port mapped", "expired idle", "expired session_closed"):
        assert seen[what] > 0, f"no example exercised {what!r}: {dict(seen)}"


# ------------------------------------------------------------------ 3. every emitted packet is well formed


def test_every_emitted_packet_reparses_and_has_valid_checksums():
    seen: Counter[str] = Counter()

    @given(ops=op_lists, seed=st.integers(0, 2**32 - 1), filtering=st.sampled_from(FILTERINGS))
    def run(ops, seed, filtering):
        d = Driver(_config(filtering, **SMALL), seed, verify=True)
        d.run(ops)
        assert d.bad == [], d.bad[0]
        for verdict, pkt in d.emitted:
            seen["hairpin" if verdict == HAIRPIN else "forward"] += 1
            if verdict == HAIRPIN and struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF:
                seen["hairpinned fragment"] += 1
            if pkt[0] & 15 > 5:
                seen["ip options"] += 1
            if struct.unpack_from("!H", pkt, 6)[0] & 0x3FFF:
                seen["fragment"] += 1
            elif pkt[9] == ICMP and pkt[(pkt[0] & 15) * 4] in (3, 11, 12):
                seen["icmp error"] += 1
        seen["datagrams reassembled"] += d.datagrams_checked

    run()
    for what in ("forward", "hairpin", "ip options", "fragment", "icmp error", "datagrams reassembled",
                 "hairpinned fragment"):
        assert seen[what] > 0, f"no example emitted a {what!r}: {dict(seen)}"


# ---------------------------------------------------------------------- 4. garbage in


def _established() -> tuple[Nat, list[bytearray]]:
    """A NAT with a UDP, a TCP and an ICMP mapping, and valid packets of both directions for them."""
    nat = Nat(_config("address-and-port-dependent", port_range="40000-40003"), random.Random(5))
    c, r = CLIENTS[0], REMOTES[0]
    out = [udp(c, r, 40000, 53, b"q"), tcp(c, r, 40001, 80, SYN), echo(c, r, 7, 1, b"p")]
    valid = [bytearray(p) for p in out]
    for p in out:
        assert nat.translate_outbound(p, T0) == FORWARD
    valid += [reply_to(out[0], b"a"), reply_to(out[1], b"", SYN | ACK), reply_to(out[2], b"p"),
              reply_to(out[1], b"data", ACK), tcp(c, r, 40001, 80, ACK | PSH, b"more")]
    valid += [icmp_error(r, fields(out[0])[1], 3, 3, out[0]), icmp_error(c, r, 3, 3, valid[3][:28])]
    valid += fragments(udp(c, r, 40000, 53, bytes(100)), 24)
    valid += [udp(c, r, 40000, 53, b"opt", options=b"\x01\x01\x01\x00")]
    return nat, valid


@functools.cache
def _valid_packets() -> list[bytes]:
    return [bytes(p) for p in _established()[1]]


@st.composite
def mutated(draw):
    """A valid packet with bytes changed, cut short or extended, its IP header checksum sometimes made right."""
    pkt = bytearray(draw(st.sampled_from(_valid_packets())))
    for _ in range(draw(st.integers(0, 4))):
        if pkt:
            pkt[draw(st.integers(0, len(pkt) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        pkt = pkt[: draw(st.integers(0, len(pkt)))]
    pkt += draw(st.binary(max_size=8))
    if draw(st.booleans()) and len(pkt) >= 20 and 20 <= (pkt[0] & 15) * 4 <= len(pkt):
        hl = (pkt[0] & 15) * 4
        pkt[10:12] = b"\0\0"
        pkt[10:12] = struct.pack("!H", inet_checksum(pkt[:hl]))
    return pkt


def _check_verdict_and_drops(nat: Nat, pkt: bytearray, outbound: bool) -> int:
    before = list(nat.drops)
    released = len(nat.released_outbound) + len(nat.released_inbound)
    verdict = (nat.translate_outbound if outbound else nat.translate_inbound)(pkt, T0 + NS)
    assert isinstance(verdict, int)
    assert verdict in VERDICTS
    delta = [a - b for a, b in zip(nat.drops, before, strict=True)]
    expected = [0] * len(delta)
    if verdict not in (FORWARD, HAIRPIN):
        expected[verdict] = 1
    if len(nat.released_outbound) + len(nat.released_inbound) == released:
        assert delta == expected, (verdict, delta)
    else:  # held fragments released by a first fragment may be dropped on their own account
        assert all(x >= y for x, y in zip(delta, expected, strict=True))
    return verdict


@given(data=st.lists(st.tuples(st.binary(max_size=80), st.booleans()), max_size=10))
def test_random_bytes_get_a_verdict_and_are_counted(data):
    nat, _ = _established()
    for raw, outbound in data:
        _check_verdict_and_drops(nat, bytearray(raw), outbound)
    check_table(nat, 4096)


def test_mutated_packets_get_a_verdict_and_are_counted():
    verdicts: Counter[int] = Counter()

    @given(pkts=st.lists(st.tuples(mutated(), st.booleans()), max_size=10))
    def run(pkts):
        nat, _ = _established()
        for pkt, outbound in pkts:
            verdict = _check_verdict_and_drops(nat, pkt, outbound)
            verdicts[verdict] += 1
            event(f"verdict {verdict!r}")
        check_table(nat, 4096)

    run()
    # the mutations reach past the header checks into the translation code
    assert verdicts[FORWARD] > 0 and len(set(verdicts) - {FORWARD, HAIRPIN}) >= 6, verdicts


# ---------------------------------------------------------------------- 5. fold equals live


def _run_with_snapshot(ops, seed, filtering, snap_at) -> tuple[Driver, object]:
    config = _config(filtering, **SMALL)
    d = Driver(config, seed)
    d.run(ops, snapshot_at=snap_at % len(ops))
    return d, config


# table_state(now): a port whose rest ended is free whether or not expire() swept it, and a fold never
# runs expire(), so the live table and its fold are compared as of the live clock.


def test_fold_of_the_events_equals_the_live_table():
    seen: Counter[str] = Counter()

    @given(ops=op_lists, seed=st.integers(0, 2**32 - 1), filtering=st.sampled_from(FILTERINGS),
           snap_at=st.integers(0, 59))
    def run(ops, seed, filtering, snap_at):
        _fold_equals_live(ops, seed, filtering, snap_at, seen)

    run()
    for what in ("snapshot with mappings", "snapshot with resting ports", "snapshot with sessions",
                 "snapshot with a quota-flagged client", "events after the snapshot", "rest lapsed unswept"):
        assert seen[what] > 0, f"no example exercised {what!r}: {dict(seen)}"


def _fold_equals_live(ops, seed, filtering, snap_at, seen: Counter) -> None:
    d, config = _run_with_snapshot(ops, seed, filtering, snap_at)
    live = d.nat.table_state(d.now)
    if d.nat.table_state() != live:
        seen["rest lapsed unswept"] += 1

    folded = Nat(config)
    for ev in d.events:
        folded.apply(ev)
    assert folded.table_state(d.now) == live

    decoded = DECODER.decode(ENCODER.encode(d.events))
    assert decoded == d.events
    assert Nat.restore(config, None, decoded).table_state(d.now) == live

    snap, count = d.snapshots[0]
    assert [e.seq for e in d.events[count:]] == [e.seq for e in d.events if e.seq > snap.upto_seq]
    later = DECODER.decode(ENCODER.encode(d.events[count:]))
    assert Nat.restore(config, snap, later).table_state(d.now) == live
    assert Nat.restore(config, snap, later, lazy=True).table_state(d.now) == live  # rows loaded by the tail first
    seen["snapshot with mappings"] += bool(snap.proto)
    seen["snapshot with resting ports"] += bool(snap.rest_proto)
    seen["snapshot with sessions"] += bool(snap.sessions)
    seen["snapshot with a quota-flagged client"] += bool(snap.quota_flagged)
    seen["events after the snapshot"] += bool(later)


# ---------------------------------------------------------------------- 6. fast path equals general path


MSS_1460 = b"\x02\x04\x05\xb4"
flow_specs = st.tuples(st.sampled_from([UDP, TCP]), st.integers(0, 3), st.sampled_from(SPORTS[1:]),
                       st.integers(0, 2), st.integers(1, 65535))
VARIANTS = ["data"] * 4 + [
    "syn", "synack", "rst", "fin", "new flow", "no mapping", "new remote",  # fast path, flags and new flows
] * 2 + [
    "options", "padded", "df", "bad ip csum", "mutated", "hairpin",  # shapes the fast path hands on or drops
]
packet_specs = st.tuples(
    st.integers(0, 7),  # which flow
    st.booleans(),  # outbound?
    payloads,
    st.integers(0, 9).map(lambda x: x == 0),  # 10% UDP checksum 0
    st.sampled_from(VARIANTS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),  # "mutated" bytes
    st.integers(1024, 65535),  # the source port of a "new flow" or "no mapping" packet
)


def _flow_packet(flow, ext, outbound: bool, payload: bytes, zero: bool, variant: str, mutations,
                 new_port: int) -> tuple[bytearray, bool, int]:
    """A packet of (or next to) an established flow: (packet, outbound?, the client's source port)."""
    proto, c, sport, r, rport = flow
    src, dst = CLIENTS[c], REMOTES[r]
    ea, ep = ext
    if variant == "new remote":
        dst, rport = REMOTES[(r + 1) % 3], rport ^ 1
    if variant in ("new flow", "no mapping"):
        outbound, sport = True, new_port
    if variant == "hairpin":  # the client sends to its own public endpoint
        outbound, (dst, rport) = True, ext
    ip: dict = {}
    if variant == "options":
        ip["options"] = b"\x01\x01\x01\x00"
    if variant == "df":
        ip["frag"] = 0x4000
    flags = {"fin": FIN | ACK, "rst": RST | ACK, "syn": SYN, "synack": SYN | ACK, "new flow": SYN}.get(
        variant, ACK | PSH)
    options = MSS_1460 if flags & SYN else b""
    if variant == "synack":
        outbound = False
    if outbound:
        pkt = udp(src, dst, sport, rport, payload, zero_csum=zero, **ip) if proto == UDP else \
            tcp(src, dst, sport, rport, flags, payload, tcp_options=options, **ip)
    else:
        pkt = udp(dst, ea, rport, ep, payload, zero_csum=zero, **ip) if proto == UDP else \
            tcp(dst, ea, rport, ep, flags, payload, tcp_options=options, **ip)
    if variant == "padded":
        pkt += b"\0" * 6
    if variant == "bad ip csum":
        pkt[11] ^= 0x40
    if variant == "mutated":  # a few bytes changed, the IP header checksum made right again
        for at, value in mutations:
            pkt[at % len(pkt)] = value
        hl = (pkt[0] & 15) * 4
        if 20 <= hl <= len(pkt):
            pkt[10:12] = b"\0\0"
            pkt[10:12] = struct.pack("!H", inet_checksum(pkt[:hl]))
    return pkt, outbound, sport


def test_fast_path_equals_general_path_and_reference():
    seen: Counter[str] = Counter()

    @given(flows=st.lists(flow_specs, min_size=1, max_size=4),
           pkts=st.lists(packet_specs, min_size=1, max_size=40),
           filtering=st.sampled_from(FILTERINGS), seed=st.integers(0, 2**32 - 1))
    def run(flows, pkts, filtering, seed):
        _fast_equals_general(flows, pkts, filtering, seed, seen)

    run()
    for proto in ("UDP", "TCP"):
        for way in ("out", "in"):
            assert seen[f"{proto} {way} fast = general = reference"] > 0, dict(seen)
    for what in ("UDP checksum 0 fast", "SYN clamped fast", "flow created fast", "TCP syn fast", "TCP synack fast",
                 "TCP rst fast", "TCP fin fast", "hairpin forwarded", "mutated forwarded", "no mapping dropped",
                 "bad ip csum dropped"):
        assert seen[what] > 0, f"{what!r} never happened: {dict(seen)}"


def _per_packet_state(nat: Nat) -> list[tuple]:
    """Every mapping with its counters, last-seen time, TCP state and remembered remotes."""
    return sorted((m.key, m.ext_key, m.out, m.inb, m.last_seen, m.state, m.remote, frozenset(m.remotes or ()))
                  for m in nat.mappings())


def _fast_equals_general(flows, pkts, filtering, seed, seen: Counter) -> None:
    """Two NATs in one state: ``fast`` gets ``translate_*``, ``slow`` the general ``_outbound``/``_inbound``."""
    config = _config(filtering)
    fast, slow = Nat(config, random.Random(seed)), Nat(config, random.Random(seed))
    fallbacks: Counter[str] = Counter()

    def counting(name, fn):
        def wrapper(pkt, t):
            fallbacks[name] += 1
            return fn(pkt, t)
        return wrapper

    fast._outbound, fast._inbound = counting("out", fast._outbound), counting("in", fast._inbound)

    def both(pkt: bytearray, outbound: bool, now: int) -> tuple[int, bytearray]:
        a, b = bytearray(pkt), bytearray(pkt)
        if outbound:
            va, vb = fast.translate_outbound(a, now), slow._outbound(b, now)
        else:
            va, vb = fast.translate_inbound(a, now), slow._inbound(b, now)
        assert (va, bytes(a)) == (vb, bytes(b)), f"fast and general paths differ on {pkt.hex()}"
        assert _per_packet_state(fast) == _per_packet_state(slow)
        assert fast.drops == slow.drops and fast.events == slow.events
        return va, a

    now = T0
    ext: dict[tuple, tuple[int, int]] = {}
    established = []
    for flow in flows:  # open each flow: new mappings, made by the fast path and by the general path
        proto, c, sport, r, rport = flow
        src, dst = CLIENTS[c], REMOTES[r]
        first = udp(src, dst, sport, rport, b"hello") if proto == UDP else \
            tcp(src, dst, sport, rport, SYN, tcp_options=MSS_1460)
        verdict, out = both(first, True, now)
        if verdict != FORWARD:
            continue
        m = fast.lookup_internal(proto, src, sport)
        assert out == ref_rewrite(first, src=m.ext_addr, sport=m.ext_port, mss=config.tcp_mss)
        ext[(proto, c, sport)] = (m.ext_addr, m.ext_port)
        if proto == TCP:  # the SYN-ACK makes it established
            verdict, _ = both(tcp(dst, m.ext_addr, rport, m.ext_port, SYN | ACK, tcp_options=MSS_1460), False, now)
            assert verdict == FORWARD
        established.append(flow)
    if not established:
        return

    for i, outbound, payload, zero, variant, mutations, new_port in pkts:
        flow = established[i % len(established)]
        proto, c, _, r, rport = flow
        now += NS // 10
        pkt, outbound, sport = _flow_packet(flow, ext[(proto, c, flow[2])], outbound, payload, zero, variant,
                                            mutations, new_port)
        if variant == "no mapping" and proto == TCP:
            pkt = tcp(CLIENTS[c], REMOTES[r], sport, rport, ACK, payload)  # only a SYN opens a TCP mapping
        before = Counter(fallbacks)
        verdict, out = both(pkt, outbound, now)
        seen[f"{variant} {'forwarded' if verdict in (FORWARD, HAIRPIN) else 'dropped'}"] += 1
        if verdict in (FORWARD, HAIRPIN) and variant != "mutated":
            total = struct.unpack_from("!H", out, 2)[0]  # link padding past it is the caller's to cut
            assert problems(out[:total]) == [] and out[total:] == pkt[total:]
        if verdict != FORWARD or variant not in ("data", "syn", "synack", "rst", "fin", "new flow", "new remote"):
            continue
        assert fallbacks == before, f"a common-shape {variant} packet left the fast path"
        m = fast.lookup_internal(proto, CLIENTS[c], sport)
        mss = config.tcp_mss if proto == TCP and pkt[33] & SYN else 0
        if outbound:
            want = ref_rewrite(pkt, src=m.ext_addr, sport=m.ext_port, mss=mss)
        else:
            want = ref_rewrite(pkt, dst=m.int_addr, dport=m.int_port, mss=mss)
        assert out == want, f"NAT output differs from the reference rewrite: {out.hex()} != {want.hex()}"
        seen[f"{'UDP' if proto == UDP else 'TCP'} {'out' if outbound else 'in'} fast = general = reference"] += 1
        seen["UDP checksum 0 fast"] += proto == UDP and zero
        seen["SYN clamped fast"] += bool(mss)  # every SYN here offers MSS 1460, above tcp_mss
        seen["flow created fast"] += variant == "new flow"
        seen[f"TCP {variant} fast"] += proto == TCP
    assert fast.table_state() == slow.table_state()
