"""NAT benchmark: established-flow translation rate, new mappings/s, memory per live mapping, dpkt baseline.

Run ``python -m bench.nat``. It prints readable lines and ends with one JSON line of every figure. It sends
nothing anywhere: packets are built in memory and translated in memory.

How each figure is taken:

- **Established flows.** 1000 UDP and 1000 TCP flows (8 clients in 10.66.77.0/24, 50 remotes in
  203.0.113.0/24, TCP opened by SYN out, SYN-ACK in, ACK out) live in one table. Per round, a batch of
  fresh ``bytearray`` copies (the NAT rewrites in place, so a buffer is translated exactly once) is
  prepared outside the timed region, then only the ``translate_*`` loop is timed. TCP packets are ACK/PSH
  data segments. After the loop every verdict must be FORWARD, or the run stops. 92-byte packets
  measure the per-packet cost; 1400-byte ones are shown too.
- **Compiled vs pure Python.** By default ``Nat`` uses the compiled fast paths (``gw._fastpath``) when they
  are built (``gw.nat.COMPILED``); the run says which it measures. When compiled, a second table built the
  same way with ``Nat(..., compiled=False)`` times the pure-Python fast paths on the same 92-byte packets.
- **General path.** The same established packets through ``Nat._outbound``, to show what the inline
  fast path buys.
- **dpkt baseline.** The same UDP outbound translation with dpkt: parse ``dpkt.ip.IP(bytes)``, look the
  mapping up in a dict, set the source address and port, zero both checksums, ``bytes(ip)`` (which
  recomputes them), after lowering the TTL (gw is a router hop). Its output was checked equal to gw's for every flow.
- **New mappings.** 200,000 distinct UDP flows (200 clients x 1000 source ports, 8 public addresses, port
  range 1024-65535, a quota that never binds) through ``translate_outbound``, which creates and journals
  each mapping. Like the shell, one ``now`` per batch of 64 packets, and ``nat.events`` drained after each
  batch. The production RNG (``SystemRandom``) is the figure; a seeded ``random.Random`` is shown for
  comparison.
- **Memory per live mapping.** ``tracemalloc`` delta over creating N mappings, after ``gc.collect()``,
  divided by N. Same batching of ``now`` (one int object per 64 packets, so ``created`` and ``last_seen``
  share it); also shown with a distinct ``now`` int per packet. N = 25,000 because tracemalloc slows
  creation 15-20x here. The figure depends on N through dict sizing: at 25k, 50k, 100k and 200k
  mappings both dicts sit 1.14x past a resize, so the figure is the same (measured 358.5, 358.6 and
  357.8 B at 25k, 50k and 200k). Process RSS growth over the 200,000-mapping timing run cross-checks it.

Rounds are interleaved (see ``bench.harness``): the figure is the best wall-clock round; the median shows
the noise and the best thread-CPU-time round ("CPU") what the code costs when other processes compete for
the cores. Established-flow rounds stop early past ``BUDGET_S`` so the run stays near a minute.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time
import tracemalloc

import dpkt

from bench import nat_costs
from bench.harness import Timing, best_of, cpu_share, emit_json, interleave, mark, out, si, start, stop
from gw import packet as P
from gw.config import NatConfig
from gw.inet import aton
from gw.nat import COMPILED, FORWARD, Nat

# ------------------------------------------------------------------ workload

CLIENTS = [aton("10.66.77.2") + i for i in range(8)]
REMOTES = [aton("203.0.113.1") + i for i in range(50)]
UDP_RPORTS = (443, 53, 123, 4500)  # QUIC, DNS, NTP, IPsec NAT-T
TCP_RPORTS = (443, 80, 22)
FLOWS = 1000  # per protocol
SMALL, LARGE = 92, 1400  # bytes: per-packet cost, and a full tunnel MTU
NOW = 1_700_000_000 * 1_000_000_000  # ns; any fixed wall-clock value
ROUNDS = 12
BUDGET_S = 20  # established-flow rounds stop early past this (at least MIN_ROUNDS)
MIN_ROUNDS = 5
BATCH = {SMALL: 20_000, LARGE: 5_000}  # packets per timed loop
SLOW_BATCH = 5_000  # general path and dpkt, several times slower

NEW_MAPPINGS = 200_000
NEW_CLIENTS = 200  # x 1000 source ports each
NEW_ROUNDS = 3
NEW_BUDGET_S = 10
CMP_MAPPINGS = 100_000  # seeded-Random comparison
CMP_ROUNDS = 2
MEM_MAPPINGS = 25_000  # see the module docstring
SHELL_BATCH = 64  # packets per readiness callback: one `now` per batch

TARGET_PPS = 1_000_000
TARGET_DPKT_RATIO = 8.0
TARGET_NEW_PER_S = 200_000
TARGET_BYTES = 400

ACK_PSH = P.TCP_ACK_FLAG | P.TCP_PSH
_payload_rng = random.Random(7)


def payload(n: int) -> bytes:
    return _payload_rng.randbytes(n)


def established_config() -> NatConfig:
    return NatConfig(external_addresses=["198.51.100.1", "198.51.100.2"])


def creation_config() -> NatConfig:
    return NatConfig(
        external_addresses=[f"198.51.100.{i}" for i in range(1, 9)],
        port_range="1024-65535",
        max_mappings_per_client=100_000,
    )


class Flow:
    __slots__ = ("proto", "client", "sport", "remote", "rport", "ext_addr", "ext_port")

    def __init__(self, proto: int, i: int) -> None:
        self.proto = proto
        self.client = CLIENTS[i % len(CLIENTS)]
        self.sport = 30_000 + i
        self.remote = REMOTES[i % len(REMOTES)]
        ports = UDP_RPORTS if proto == P.PROTO_UDP else TCP_RPORTS
        self.rport = ports[i % len(ports)]
        self.ext_addr = self.ext_port = 0

    def outbound(self, size: int, flags: int = ACK_PSH) -> bytearray:
        if self.proto == P.PROTO_UDP:
            return P.build_udp(self.client, self.remote, self.sport, self.rport, payload(size - 28))
        return P.build_tcp(self.client, self.remote, self.sport, self.rport, flags=flags, seq=1000, ack=5000,
                           payload=payload(size - 40) if size else b"")

    def inbound(self, size: int, flags: int = ACK_PSH) -> bytearray:
        if self.proto == P.PROTO_UDP:
            return P.build_udp(self.remote, self.ext_addr, self.rport, self.ext_port, payload(size - 28))
        return P.build_tcp(self.remote, self.ext_addr, self.rport, self.ext_port, flags=flags, seq=5000,
                           ack=1001, payload=payload(size - 40) if size else b"")


def open_flows(nat: Nat) -> dict[int, list[Flow]]:
    """1000 UDP and 1000 TCP flows, established through the NAT itself."""
    flows = {P.PROTO_UDP: [Flow(P.PROTO_UDP, i) for i in range(FLOWS)],
             P.PROTO_TCP: [Flow(P.PROTO_TCP, i) for i in range(FLOWS)]}
    for f in flows[P.PROTO_UDP]:
        _must_forward(nat.translate_outbound(f.outbound(SMALL), NOW), "UDP first packet")
        _learn_ext(nat, f)
    for f in flows[P.PROTO_TCP]:
        _must_forward(nat.translate_outbound(f.outbound(0, P.TCP_SYN), NOW), "SYN")
        _learn_ext(nat, f)
        _must_forward(nat.translate_inbound(f.inbound(0, P.TCP_SYN | P.TCP_ACK_FLAG), NOW), "SYN-ACK")
        _must_forward(nat.translate_outbound(f.outbound(0, P.TCP_ACK_FLAG), NOW), "ACK")
    nat.events.clear()
    return flows


def _learn_ext(nat: Nat, f: Flow) -> None:
    m = nat.lookup_internal(f.proto, f.client, f.sport)
    f.ext_addr, f.ext_port = m.ext_addr, m.ext_port


def _must_forward(verdict: int, what: str) -> None:
    if verdict != FORWARD:
        raise SystemExit(f"bench.nat: {what} was not forwarded (verdict {verdict!r}); figures would be wrong")


def _check_translated(pkt: bytearray, outbound: bool, f: Flow) -> None:
    """The translated packet is sound and says what it should (checked once per packet kind, untimed)."""
    assert P.check_ipv4(pkt) == 0
    ihl = P.ip_header_len(pkt)
    off = ihl + (P.TCP_CSUM if f.proto == P.PROTO_TCP else P.UDP_CSUM)
    assert P.get_u16(pkt, off)[0] == P.l4_checksum(pkt), "L4 checksum"
    src, dst = P.get_u32(pkt, P.IP_SRC)[0], P.get_u32(pkt, P.IP_DST)[0]
    sport, dport = P.get_2u16(pkt, ihl)
    if outbound:
        assert (src, sport, dst, dport) == (f.ext_addr, f.ext_port, f.remote, f.rport)
    else:
        assert (src, sport, dst, dport) == (f.remote, f.rport, f.client, f.sport)


# ------------------------------------------------------------------ cases


def translate_case(fn, pool: list[bytes], batch: int):
    """Time ``fn(buf, NOW)`` over ``batch`` fresh copies of the pool's packets; verdicts must be FORWARD."""
    seq = pool * (batch // len(pool))

    def case() -> tuple[int, int, int]:
        bufs = [bytearray(p) for p in seq]
        v = 0
        t0 = start()
        for b in bufs:
            v |= fn(b, NOW)
        wall, cpu = stop(t0)
        if v:
            raise SystemExit(f"bench.nat: {getattr(fn, '__name__', fn)} returned a verdict besides FORWARD")
        return len(bufs), wall, cpu

    return case


def _noop(pkt: bytearray, now: int) -> int:
    return 0


def dpkt_case(pool: list[bytes], table: dict[tuple[bytes, int], tuple[bytes, int]], batch: int):
    """The same UDP SNAT with dpkt: parse, look up, set src and sport, zero checksums, serialize."""
    seq = pool * (batch // len(pool))
    IP = dpkt.ip.IP

    def case() -> tuple[int, int, int]:
        t0 = start()
        for b in seq:
            ip = IP(b)
            udp = ip.data
            ip.src, udp.sport = table[ip.src, udp.sport]
            ip.ttl -= 1
            ip.sum = 0
            udp.sum = 0
            bytes(ip)
        return len(seq), *stop(t0)

    return case


def dpkt_translate(b: bytes, table: dict[tuple[bytes, int], tuple[bytes, int]]) -> bytes:
    ip = dpkt.ip.IP(b)
    udp = ip.data
    ip.src, udp.sport = table[ip.src, udp.sport]
    ip.ttl -= 1
    ip.sum = 0
    udp.sum = 0
    return bytes(ip)


def creation_batches(n: int) -> list[list[bytearray]]:
    """``n`` first packets of distinct UDP flows (up to 1000 source ports per client), in shell batches."""
    pkts: list[bytearray] = []
    per_client = 1000
    for c in range((n + per_client - 1) // per_client):
        client = aton("10.66.77.2") + c  # 200 clients: .2 to .201
        tmpl = P.build_udp(client, REMOTES[c % len(REMOTES)], 0, UDP_RPORTS[c % 4], payload(SMALL - 28))
        csum0 = P.get_u16(tmpl, P.V4_UDP_CSUM)[0]
        for s in range(min(per_client, n - len(pkts))):
            sport = 10_000 + s
            b = bytearray(tmpl)
            P.put_u16(b, P.V4_SPORT, sport)
            P.put_u16(b, P.V4_UDP_CSUM, P.csum_adjust(csum0, 0xFFFF + sport) or 0xFFFF)  # port 0 -> sport
            pkts.append(b)
    return [pkts[i : i + SHELL_BATCH] for i in range(0, n, SHELL_BATCH)]


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def creation_case(n: int, rng_factory, rss: dict):
    def case() -> tuple[int, int, int]:
        batches = creation_batches(n)
        nat = Nat(creation_config(), rng_factory())
        tr = nat.translate_outbound
        v = 0
        gc.collect()
        rss0 = _rss()
        t0 = start()
        for i, batch in enumerate(batches):
            now = NOW + i * 1000  # one clock read per batch, a new int each time
            for b in batch:
                v |= tr(b, now)
            nat.events.clear()  # the shell drains events after every batch
        wall, cpu = stop(t0)
        rss.setdefault("bytes", _rss() - rss0)
        if v or len(nat) != n:
            raise SystemExit(f"bench.nat: creation refused packets or lost mappings ({len(nat)} of {n})")
        return n, wall, cpu

    return case


def traced_bytes_per_mapping(n: int, batched_now: bool) -> float:
    """tracemalloc delta per mapping over creating ``n`` mappings the real way (events drained per batch)."""
    batches = creation_batches(n)
    nat = Nat(creation_config())
    tr = nat.translate_outbound
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    k = 0
    for i, batch in enumerate(batches):
        now = NOW + i * 1000
        for b in batch:
            if not batched_now:
                now = NOW + k * 10  # a distinct int object per packet
                k += 1
            tr(b, now)
        nat.events.clear()
    del now, b, batch
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    if len(nat) != n:
        raise SystemExit(f"bench.nat: {len(nat)} mappings instead of {n}")
    return used / n


# ------------------------------------------------------------------ main


def main() -> None:
    started, cpu_started = time.perf_counter(), time.process_time()
    out(f"gw NAT benchmark: Python {platform.python_version()}, dpkt {dpkt.__version__}, "
        f"{os.cpu_count()} CPUs, one core used")
    out("Figures: the best wall-clock round of interleaved rounds; then the median (noise) and the best")
    out("thread-CPU-time round (CPU: the cost without time lost to other processes). GC stays on.")
    path = "compiled" if COMPILED else "pure Python"
    out(f"Fast path measured: {path}" + (" (gw._fastpath); the pure-Python fast path is measured too" if COMPILED
                                         else " (gw._fastpath is not built)"))

    nat = Nat(established_config(), random.Random(1))
    flows = open_flows(nat)
    pools: dict[tuple[str, int, int], list[bytes]] = {}
    for proto, fl in flows.items():
        for size in (SMALL, LARGE):
            outs = [f.outbound(size) for f in fl]
            ins = [f.inbound(size) for f in fl]
            for f, po, pi in zip(fl, outs, ins, strict=True):  # soundness once per packet, untimed
                a, b = bytearray(po), bytearray(pi)
                _must_forward(nat.translate_outbound(a, NOW), "established outbound")
                _must_forward(nat.translate_inbound(b, NOW), "established inbound")
                _check_translated(a, True, f)
                _check_translated(b, False, f)
            pools["out", proto, size] = [bytes(p) for p in outs]
            pools["in", proto, size] = [bytes(p) for p in ins]

    if COMPILED:  # the same table, pure-Python fast paths
        nat_py = Nat(established_config(), random.Random(1), compiled=False)
        flows_py = open_flows(nat_py)
        if [(f.ext_addr, f.ext_port) for fl in flows_py.values() for f in fl] != \
                [(f.ext_addr, f.ext_port) for fl in flows.values() for f in fl]:
            raise SystemExit("bench.nat: the pure-Python table differs from the compiled one")

    table = {(f.client.to_bytes(4, "big"), f.sport): (f.ext_addr.to_bytes(4, "big"), f.ext_port)
             for f in flows[P.PROTO_UDP]}
    for p in pools["out", P.PROTO_UDP, SMALL]:
        b = bytearray(p)
        nat.translate_outbound(b, NOW)
        assert dpkt_translate(p, table) == b, "dpkt and gw disagree"

    names = {P.PROTO_UDP: "udp", P.PROTO_TCP: "tcp"}
    cases = {}
    for size in (SMALL, LARGE):
        for proto in (P.PROTO_UDP, P.PROTO_TCP):
            cases[f"{names[proto]}_out_{size}"] = translate_case(
                nat.translate_outbound, pools["out", proto, size], BATCH[size])
            cases[f"{names[proto]}_in_{size}"] = translate_case(
                nat.translate_inbound, pools["in", proto, size], BATCH[size])
    if COMPILED:
        for proto in (P.PROTO_UDP, P.PROTO_TCP):
            cases[f"{names[proto]}_out_{SMALL}_py"] = translate_case(
                nat_py.translate_outbound, pools["out", proto, SMALL], BATCH[SMALL])
            cases[f"{names[proto]}_in_{SMALL}_py"] = translate_case(
                nat_py.translate_inbound, pools["in", proto, SMALL], BATCH[SMALL])
    for proto in (P.PROTO_UDP, P.PROTO_TCP):
        cases[f"{names[proto]}_out_{SMALL}_general"] = translate_case(
            nat._outbound, pools["out", proto, SMALL], SLOW_BATCH)
    cases["dpkt_udp_out_92"] = dpkt_case(pools["out", P.PROTO_UDP, SMALL], table, SLOW_BATCH)
    cases["loop_noop"] = translate_case(_noop, pools["out", P.PROTO_UDP, SMALL], BATCH[SMALL])

    out(f"\nEstablished flows: {FLOWS} UDP + {FLOWS} TCP live, {len(CLIENTS)} clients, "
        f"{len(REMOTES)} remotes; best of {ROUNDS} rounds, {BATCH[SMALL]:,} packets per round "
        f"({BATCH[LARGE]:,} at {LARGE} B)")
    t = interleave(cases, ROUNDS, BUDGET_S, MIN_ROUNDS)
    rounds = t["loop_noop"].rounds
    out(f" ({rounds} rounds run)")

    figures: dict[str, object] = {"python": platform.python_version(), "dpkt": dpkt.__version__, "fast_path": path,
                                  "rounds": rounds, "flows_per_proto": FLOWS}

    def show(label: str, tm: Timing, target: float | None = None) -> None:
        line = (f"  {label:<34} {si(tm.rate, '/s'):>11}  {tm.best_ns:6.0f} ns/pkt "
                f"(median {tm.median_ns:5.0f}, CPU {tm.best_cpu_ns:5.0f})")
        if target is not None:
            line += f"   target >= {si(target, '/s')}  {mark(tm.rate >= target)}"
        out(line)
        figures[f"{tm.name}_per_s"] = round(tm.rate)
        figures[f"{tm.name}_ns"] = round(tm.best_ns, 1)
        figures[f"{tm.name}_ns_median"] = round(tm.median_ns, 1)
        figures[f"{tm.name}_ns_cpu"] = round(tm.best_cpu_ns, 1)

    primary = []
    for size in (SMALL, LARGE):
        out(f" {size}-byte packets{' (the per-packet figure)' if size == SMALL else ''}:")
        for proto in (P.PROTO_UDP, P.PROTO_TCP):
            for way, word in (("out", "outbound"), ("in", "inbound")):
                name = f"{names[proto]}_{way}_{size}"
                show(f"{names[proto].upper()} {word}", t[name], TARGET_PPS if size == SMALL else None)
                if size == SMALL:
                    primary.append(t[name].rate)
    established_ok = min(primary) >= TARGET_PPS

    if COMPILED:
        out(f" pure-Python fast paths (Nat(..., compiled=False)), {SMALL}-byte packets:")
        for proto in (P.PROTO_UDP, P.PROTO_TCP):
            for way, word in (("out", "outbound"), ("in", "inbound")):
                name = f"{names[proto]}_{way}_{SMALL}"
                show(f"{names[proto].upper()} {word}, pure Python", t[name + "_py"], TARGET_PPS)
                speedup = t[name + "_py"].best_ns / t[name].best_ns
                out(f"  {'':<34} compiled is {speedup:.2f}x faster")
                figures[f"{name}_compiled_vs_py"] = round(speedup, 2)

    out(" fast path vs general path (Nat._outbound on the same established 92-byte packets):")
    for proto in (P.PROTO_UDP, P.PROTO_TCP):
        fast, general = t[f"{names[proto]}_out_{SMALL}"], t[f"{names[proto]}_out_{SMALL}_general"]
        show(f"{names[proto].upper()} outbound, general path", general)
        out(f"  {'':<34} fast path is {general.best_ns / fast.best_ns:.2f}x faster "
            f"(CPU time: {general.best_cpu_ns / fast.best_cpu_ns:.2f}x)")
        figures[f"{names[proto]}_fast_vs_general"] = round(general.best_ns / fast.best_ns, 2)
        figures[f"{names[proto]}_fast_vs_general_cpu"] = round(general.best_cpu_ns / fast.best_cpu_ns, 2)
    show("timing loop alone (no-op translator)", t["loop_noop"])
    out(f"  {'':<34} (inside every figure above, not subtracted; also a machine-speed reference)")

    dp, gw_udp = t["dpkt_udp_out_92"], t[f"udp_out_{SMALL}"]
    ratio = dp.best_ns / gw_udp.best_ns
    ratio_cpu = dp.best_cpu_ns / gw_udp.best_cpu_ns
    dpkt_ok = min(ratio, ratio_cpu) >= TARGET_DPKT_RATIO  # noise must not make a pass
    out(f" dpkt baseline, UDP outbound {SMALL} B (parse, dict lookup, set src/sport, TTL-1, zero sums, bytes()):")
    show("dpkt", dp)
    out(f"  {'gw / dpkt':<34} {ratio:11.2f}x  (CPU time: {ratio_cpu:.2f}x)   "
        f"target >= {TARGET_DPKT_RATIO:.0f}x on both  {mark(dpkt_ok)}")
    figures["gw_over_dpkt"] = round(ratio, 2)
    figures["gw_over_dpkt_cpu"] = round(ratio_cpu, 2)
    del nat, flows, pools, cases
    if COMPILED:
        del nat_py, flows_py

    out(f"\nNew mappings: {NEW_MAPPINGS:,} distinct UDP flows ({NEW_CLIENTS} clients x 1000 ports, 8 public "
        f"addresses), one `now` per {SHELL_BATCH} packets, events drained per batch")
    rss: dict[str, int] = {}
    new = best_of(creation_case(NEW_MAPPINGS, lambda: None, rss), NEW_ROUNDS, NEW_BUDGET_S, 2)
    cmp = best_of(creation_case(CMP_MAPPINGS, lambda: random.Random(1), {}), CMP_ROUNDS)
    new_ok = new.rate >= TARGET_NEW_PER_S
    out(f"  {'SystemRandom (production), best of ' + str(new.rounds):<40} {si(new.rate, '/s'):>11}  "
        f"{new.best_ns / 1000:5.2f} us/mapping (median {new.median_ns / 1000:.2f}, CPU "
        f"{new.best_cpu_ns / 1000:.2f})   target >= {si(TARGET_NEW_PER_S, '/s')}  {mark(new_ok)}")
    out(f"  {'random.Random(1), ' + f'{CMP_MAPPINGS:,}' + ', best of ' + str(CMP_ROUNDS):<40} "
        f"{si(cmp.rate, '/s'):>11}  {cmp.best_ns / 1000:5.2f} us/mapping   (for comparison)")
    figures.update(new_mappings_per_s=round(new.rate), new_mappings_us=round(new.best_ns / 1000, 3),
                   new_mappings_us_median=round(new.median_ns / 1000, 3),
                   new_mappings_us_cpu=round(new.best_cpu_ns / 1000, 3),
                   new_mappings_seeded_rng_per_s=round(cmp.rate))

    out(f"\nMemory per live mapping: tracemalloc over {MEM_MAPPINGS:,} creations (docstring: why this N)")
    batched = traced_bytes_per_mapping(MEM_MAPPINGS, batched_now=True)
    distinct = traced_bytes_per_mapping(MEM_MAPPINGS, batched_now=False)
    mem_ok = batched <= TARGET_BYTES
    out(f"  {'one `now` int per 64-packet batch':<40} {batched:7.0f} B/mapping   "
        f"target <= {TARGET_BYTES} B  {mark(mem_ok)}")
    out(f"  {'a distinct `now` int per packet':<40} {distinct:7.0f} B/mapping   "
        f"{'PASS' if distinct <= TARGET_BYTES else 'MISS'} (without the batching assumption)")
    rss_per = rss.get("bytes", 0) / NEW_MAPPINGS
    out(f"  {'RSS growth over the 200k timing run':<40} {rss_per:7.0f} B/mapping   "
        "(cross-check, allocator included)")
    figures.update(bytes_per_mapping=round(batched, 1), bytes_per_mapping_distinct_now=round(distinct, 1),
                   rss_bytes_per_mapping=round(rss_per, 1), mem_mappings=MEM_MAPPINGS)

    figures.update(nat_costs.measure())

    elapsed, cpu_used = time.perf_counter() - started, time.process_time() - cpu_started
    out(f"\nTargets: established >= 1 M/s {mark(established_ok)}, >= 8x dpkt {mark(dpkt_ok)}, "
        f"new mappings >= 200 k/s {mark(new_ok)}, <= 400 B/mapping {mark(mem_ok)}")
    out(f"Run took {elapsed:.0f} s; {cpu_share(elapsed, cpu_used)}.")
    figures.update(pass_established=established_ok, pass_dpkt_ratio=dpkt_ok, pass_new_mappings=new_ok,
                   pass_memory=mem_ok, seconds=round(elapsed, 1), cpu_share=round(cpu_used / elapsed, 2))
    emit_json(figures)


if __name__ == "__main__":
    main()
