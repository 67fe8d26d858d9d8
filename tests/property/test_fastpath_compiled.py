"""The compiled fast paths (gw/_fastpath.pyx) equal the pure-Python ones in gw/nat.py, which stay the spec.

Two NATs in one state (same seed, same history), one ``compiled=True`` and one ``compiled=False``, get
the same packets: verdicts, bytes, drops, events, fallbacks to the general path and every mapping's
counters, last-seen time, TCP state and remotes must stay identical. Without the extension this module
skips, except under CI (which builds it), where that is a failure.
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gw.nat import COMPILED, FORWARD, HAIRPIN, Nat
from tests.helpers.strategies import (
    ACK,
    CLIENTS,
    EXT,
    FILTERINGS,
    NS,
    REMOTES,
    SYN,
    T0,
    TCP,
    UDP,
    inet_checksum,
    pseudo,
    tcp,
    udp,
)
from tests.property.test_nat_properties import (
    MSS_1460,
    _config,
    _flow_packet,
    _per_packet_state,
    flow_specs,
    packet_specs,
)

NOT_BUILT = "gw._fastpath is not built (no compiler or Cython at install time)"


def _require_compiled() -> None:
    if not COMPILED:
        if os.environ.get("CI"):
            pytest.fail(NOT_BUILT + "; CI builds it, so this is a build failure")
        pytest.skip(NOT_BUILT)


def test_compiled_fast_path_is_built_and_used():
    _require_compiled()
    config = _config("address-and-port-dependent")
    assert Nat(config).translate_outbound.__func__.__module__ == "gw._fastpath"
    assert Nat(config).translate_inbound.__func__.__module__ == "gw._fastpath"
    assert Nat(config, compiled=False).translate_outbound.__func__ is Nat.translate_outbound_py


class Twins:
    """A compiled NAT and a pure-Python one, driven in lockstep and compared after every packet."""

    def __init__(self, filtering: str, seed: int) -> None:
        config = _config(filtering)
        self.config = config
        self.c, self.p = Nat(config, random.Random(seed)), Nat(config, random.Random(seed), compiled=False)
        self.fallbacks: dict[str, Counter[str]] = {"c": Counter(), "p": Counter()}
        for name, nat in (("c", self.c), ("p", self.p)):
            nat._outbound = self._counting(self.fallbacks[name], "out", nat._outbound)
            nat._inbound = self._counting(self.fallbacks[name], "in", nat._inbound)

    @staticmethod
    def _counting(counter: Counter, name: str, fn):
        def wrapper(pkt, t):
            counter[name] += 1
            return fn(pkt, t)

        return wrapper

    def send(self, pkt: bytes | bytearray, outbound: bool, now: int) -> tuple[int, bytearray]:
        a, b = bytearray(pkt), bytearray(pkt)
        if outbound:
            va, vb = self.c.translate_outbound(a, now), self.p.translate_outbound(b, now)
        else:
            va, vb = self.c.translate_inbound(a, now), self.p.translate_inbound(b, now)
        assert (type(va), va, bytes(a)) == (type(vb), vb, bytes(b)), f"compiled and Python differ on {pkt.hex()}"
        assert _per_packet_state(self.c) == _per_packet_state(self.p)
        assert self.c.drops == self.p.drops and self.c.events == self.p.events
        assert self.fallbacks["c"] == self.fallbacks["p"]
        return va, a


def _set_l4_csum(pkt: bytearray, value: int) -> None:
    struct.pack_into("!H", pkt, 20 + (16 if pkt[9] == TCP else 6), value)


def _fix_ip(pkt: bytearray) -> None:
    pkt[10:12] = b"\0\0"
    pkt[10:12] = struct.pack("!H", inet_checksum(pkt[:20]))


def _zero_result_csum(pkt: bytearray, outbound: bool, mapping) -> int:
    """The L4 checksum field that the fast path's RFC 1624 update turns into 0 (sent as 0xFFFF for UDP)."""
    src, dst = struct.unpack_from("!II", pkt, 12)
    sport, dport = struct.unpack_from("!HH", pkt, 20)
    if outbound:
        delta = mapping.ext_addr - src + mapping.ext_port - sport
    else:
        delta = mapping.int_addr - dst + mapping.int_port - dport
    # 0xFFFE - (delta - 1 - c) % 0xFFFF == 0  <=>  c == delta - 1 - 0xFFFE (mod 0xFFFF)
    return (delta - 1 - 0xFFFE) % 0xFFFF


EXTRAS = st.sampled_from(["none"] * 6 + ["zero result"] * 3 + ["any l4 csum", "truncated", "truncated fixed",
                                         "garbage", "ip csum ffff", "huge counters"])
# established-flow shapes whose checksum can be steered (a UDP "syn", "fin"... is a plain datagram)
ZERO_VARIANTS = ("data", "new remote", "syn", "synack", "fin", "rst")
extra_specs = st.tuples(EXTRAS, st.integers(0, 0xFFFF), st.integers(0, 80), st.binary(max_size=80))


def test_compiled_equals_python_fast_path():
    _require_compiled()
    seen: Counter[str] = Counter()

    # the coverage asserted below needs a few hundred examples whatever the profile: hypothesis mines
    # literals from every loaded module, so which examples a derandomized run draws depends on what else
    # the session imported
    @settings(max_examples=max(settings.default.max_examples, 600))
    @given(flows=st.lists(flow_specs, min_size=1, max_size=4),
           pkts=st.lists(st.tuples(packet_specs, extra_specs), min_size=1, max_size=40),
           filtering=st.sampled_from(FILTERINGS), seed=st.integers(0, 2**32 - 1))
    def run(flows, pkts, filtering, seed):
        _compiled_equals_python(flows, pkts, filtering, seed, seen)

    run()
    for what in ("UDP out forwarded", "UDP in forwarded", "TCP out forwarded", "TCP in forwarded",
                 "zero result UDP out forwarded", "zero result UDP in forwarded",
                 "UDP checksum 0 forwarded",  # TCP's zero results: by hand, below
                 "syn forwarded", "fin forwarded", "rst forwarded", "hairpin forwarded", "bad ip csum dropped",
                 "truncated fixed forwarded", "garbage dropped", "huge counters forwarded", "new flow forwarded",
                 "no mapping dropped", "fallback"):
        assert seen[what] > 0, f"{what!r} never happened: {dict(seen)}"


def _compiled_equals_python(flows, pkts, filtering, seed, seen: Counter) -> None:
    t = Twins(filtering, seed)
    now = T0
    ext: dict[tuple, tuple[int, int]] = {}
    established = []
    for flow in flows:
        proto, c, sport, r, rport = flow
        src, dst = CLIENTS[c], REMOTES[r]
        first = udp(src, dst, sport, rport, b"hello") if proto == UDP else \
            tcp(src, dst, sport, rport, SYN, tcp_options=MSS_1460)
        verdict, _ = t.send(first, True, now)
        if verdict != FORWARD:
            continue
        m = t.c.lookup_internal(proto, src, sport)
        ext[(proto, c, sport)] = (m.ext_addr, m.ext_port)
        if proto == TCP:
            t.send(tcp(dst, m.ext_addr, rport, m.ext_port, SYN | ACK, tcp_options=MSS_1460), False, now)
        established.append(flow)
    if not established:
        return

    for (i, outbound, payload, zero, variant, mutations, new_port), (extra, value, cut, junk) in pkts:
        flow = established[i % len(established)]
        proto, c, sport0, r, rport = flow
        now += NS // 10
        pkt, outbound, sport = _flow_packet(flow, ext[(proto, c, sport0)], outbound, payload, zero, variant,
                                            mutations, new_port)
        if variant == "no mapping" and proto == TCP:
            pkt = tcp(CLIENTS[c], REMOTES[r], sport, rport, ACK, payload)
        label = variant
        if extra == "zero result" and variant in ZERO_VARIANTS and not zero and not (proto == TCP and pkt[33] & SYN):
            value = _zero_result_csum(pkt, outbound, t.c.lookup_internal(proto, CLIENTS[c], sport0))
            if value:  # 0 would be "no checksum" for UDP, covered by the zero variant
                _set_l4_csum(pkt, value)
                label = f"zero result {'UDP' if proto == UDP else 'TCP'} {'out' if outbound else 'in'}"
        elif extra == "any l4 csum" and variant != "options":
            _set_l4_csum(pkt, value)
        elif extra == "truncated":
            pkt = pkt[: cut % (len(pkt) + 1)]
            label = "truncated"
        elif extra == "truncated fixed" and len(pkt) > 20:
            pkt = pkt[: 20 + cut % (len(pkt) - 19)]  # total length and header checksum made to agree
            struct.pack_into("!H", pkt, 2, len(pkt))
            _fix_ip(pkt)
            label = "truncated fixed"
        elif extra == "garbage":
            pkt = bytearray(junk)
            label = "garbage"
        elif extra == "ip csum ffff":  # 0 and 0xFFFF are the same ones'-complement number
            csum = struct.unpack_from("!H", pkt, 10)[0]
            if csum in (0, 0xFFFF):
                struct.pack_into("!H", pkt, 10, csum ^ 0xFFFF)
                label = "ip csum ffff"
        elif extra == "huge counters":  # the packed counters are Python ints: past 64 bits they keep counting
            for nat in (t.c, t.p):
                for m in nat.mappings():
                    m.out += 1 << 70
                    m.inb += (1 << 64) - 1
            label = "huge counters"
        before = Counter(t.fallbacks["c"])
        verdict, _ = t.send(pkt, outbound, now)
        seen["fallback"] += t.fallbacks["c"] != before
        if label == "data" and extra == "none" and zero and proto == UDP:
            label = "UDP checksum 0"
        elif label == "data" and extra == "none" and verdict == FORWARD:
            label = f"{'UDP' if proto == UDP else 'TCP'} {'out' if outbound else 'in'}"
        seen[f"{label} {'forwarded' if verdict in (FORWARD, HAIRPIN) else 'dropped'}"] += 1
    assert t.c.table_state() == t.p.table_state()


def test_computed_zero_checksum_is_sent_as_ffff_and_zero_stays_zero():
    """The two UDP checksum edge cases, by hand: both paths agree and follow RFC 768."""
    _require_compiled()
    t = Twins("address-and-port-dependent", 1)
    src, dst = CLIENTS[0], REMOTES[0]
    t.send(udp(src, dst, 5000, 53, b"hi"), True, T0)
    m = t.c.lookup_internal(UDP, src, 5000)
    pkt = udp(src, dst, 5000, 53, b"hi")
    _set_l4_csum(pkt, _zero_result_csum(pkt, True, m))
    verdict, out = t.send(pkt, True, T0 + 1)
    assert verdict == FORWARD and out[26:28] == b"\xff\xff"
    verdict, out = t.send(udp(src, dst, 5000, 53, b"hi", zero_csum=True), True, T0 + 2)
    assert verdict == FORWARD and out[26:28] == b"\0\0"
    reply = udp(dst, m.ext_addr, 53, m.ext_port, b"ok")
    _set_l4_csum(reply, _zero_result_csum(reply, False, m))
    verdict, out = t.send(reply, False, T0 + 3)
    assert verdict == FORWARD and out[26:28] == b"\xff\xff"
    assert m.ext_addr in EXT


def test_computed_zero_tcp_checksum_both_ways_is_sent_as_zero_by_both_paths():
    """TCP has no "no checksum": an RFC 1624 update that lands on 0 must leave as 0 (the complement of
    0xFFFF, the same ones'-complement number), in both directions, compiled and Python alike."""
    _require_compiled()
    t = Twins("address-and-port-dependent", 3)
    src, dst = CLIENTS[1], REMOTES[1]
    t.send(tcp(src, dst, 5001, 443, SYN, tcp_options=MSS_1460), True, T0)
    m = t.c.lookup_internal(TCP, src, 5001)
    t.send(tcp(dst, m.ext_addr, 443, m.ext_port, SYN | ACK, tcp_options=MSS_1460), False, T0)
    for outbound in (True, False):
        def segment(word: int, outbound: bool = outbound) -> bytearray:
            payload = struct.pack("!H", word)
            if outbound:
                return tcp(src, dst, 5001, 443, ACK, payload)
            return tcp(dst, m.ext_addr, 443, m.ext_port, ACK, payload)

        base = segment(0)  # a payload word w takes w off the checksum: choose it so the result is 0
        want = _zero_result_csum(base, outbound, m)
        pkt = segment((struct.unpack_from("!H", base, 36)[0] - want) % 0xFFFF)
        assert struct.unpack_from("!H", pkt, 36)[0] == want  # a valid segment, checksum and all
        verdict, out = t.send(pkt, outbound, T0 + 1)
        assert verdict == FORWARD and out[36:38] in (b"\0\0", b"\xff\xff")
        src_out, dst_out = struct.unpack_from("!II", out, 12)
        assert inet_checksum(out[20:], pseudo(src_out, dst_out, TCP, len(out) - 20)) == 0  # and it verifies


def test_non_bytearray_input_takes_the_python_path():
    """``bytes`` (read-only) is not what the shell passes; both paths must still behave the same."""
    _require_compiled()
    t = Twins("endpoint-independent", 2)
    pkt = bytes(udp(CLIENTS[0], REMOTES[0], 5000, 53, b"x"))
    results = []
    for nat in (t.c, t.p):
        try:
            results.append(("ok", nat.translate_outbound(pkt, T0)))
        except Exception as e:  # noqa: BLE001 - the same exception type is the property
            results.append(("raised", type(e)))
    assert results[0] == results[1]


def _table(nat: Nat) -> tuple:
    """Everything a snapshot load builds, in order: both tables, the mappings' fields, the wheel."""
    fields = ("key", "ext_key", "session", "remote", "created", "last_seen", "state", "out", "inb")
    rows = [(type(m).__name__, *(getattr(m, f) for f in fields)) for m in nat.by_int.values()]
    return (list(nat.by_int), list(nat.by_ext), rows, dict(nat._wheel), list(nat._wheel_due),
            {a: (c.count, c.remotes, c.low_ports, len(c.mappings)) for a, c in nat.clients.items()})


def test_compiled_snapshot_load_equals_python():
    """``_fastpath.load_rows`` (restore's per-row loop) builds the table ``Nat._load_rows`` builds."""
    _require_compiled()
    from bench.journal import build_snapshot

    snapshot = build_snapshot(5_000, seed=7)
    config = _config("address-and-port-dependent")
    compiled = Nat.restore(config, snapshot, [], wall_offset=123_456_789)
    python = Nat.restore(config, snapshot, [], wall_offset=123_456_789, compiled=False)
    assert compiled._load_rows.__func__.__module__ == "gw._fastpath"
    assert len(compiled) == len(snapshot.proto)
    assert _table(compiled) == _table(python)
    assert compiled.ports.free == python.ports.free
    assert compiled.ports.state == python.ports.state


@given(seed=st.integers(0, 2**16), touches=st.lists(st.integers(0, 1_199), max_size=40),
       resume_first=st.booleans(), slices=st.integers(0, 3))
def test_compiled_lazy_load_equals_python_in_any_order(seed, touches, resume_first, slices):
    """Rows loaded on demand (by either key), in slices, after ``resume`` or before it: the compiled
    loader and ``Nat._load_rows`` build the same table, wheel, port pool and events."""
    _require_compiled()
    from bench.journal import build_snapshot

    snapshot = build_snapshot(1_200, seed=seed)
    config = _config("address-and-port-dependent")
    twins = [Nat.restore(config, snapshot, [], wall_offset=5, lazy=True, compiled=flag) for flag in (True, False)]
    restart = snapshot.at_ns + 200 * 10**9  # some rows idle past their timeout by then, some not
    for nat in twins:
        if resume_first:
            nat.resume(restart, snapshot.at_ns)
        for i in touches:  # packets and events reach rows through both keys
            i %= len(snapshot.proto)
            if i % 2:
                nat.lookup_internal(snapshot.proto[i], snapshot.int_addr[i], snapshot.int_port[i])
            else:
                nat.lookup_external(snapshot.proto[i], snapshot.ext_addr[i], snapshot.ext_port[i])
        for _ in range(slices):  # slices smaller than the snapshot, in the order expire() takes them
            if nat.restoring:
                nat._load_range(nat._pending.cursor, nat._pending.cursor + 300, restart)
        if not resume_first:
            nat.resume(restart, snapshot.at_ns)
        nat.finish_restore(restart)
    compiled, python = twins
    assert _table(compiled) == _table(python)
    assert compiled.ports.state == python.ports.state and compiled.ports.free == python.ports.free
    assert compiled.ports.resting == python.ports.resting
    assert compiled.events == python.events and compiled.stale_at_recovery == python.stale_at_recovery
