"""What one client or one call may cost the NAT (issue 9's table), measured: ``bench.nat`` prints these.

Run on its own with ``python -m bench.nat_costs``. It sends nothing anywhere. How each figure is taken:

- **Refused new flows, full pool.** One public address, ``port_range`` 1024-2047 (1024 ports) filled by
  four clients, then 100,000 first packets of new flows: each must be ``PORTS_EXHAUSTED`` and counted.
  Free-port counts per (protocol, address) make the refusal O(1); before, each scanned the range.
- **A table of 1,000,000 mappings** (250 clients x 4000 UDP flows on 20 addresses), made through
  ``translate_outbound`` like traffic, then:
  - ``snapshot_view(now)``, the part on the event loop, and ``view.build()``, the part the journal
    writer's thread does;
  - ``close_session`` of an idle client's session (no mappings) and of a client with 4000;
  - ``expire`` when all of them come due at once: every call is bounded by ``EXPIRE_BUDGET``; the
    figures are the calls' median, 99th percentile and slowest (the loop's longest stall), and how many
    calls drained it. The slowest calls are the rest table's dict growing past a power of two (measured
    at 87 k, 174 k, 349 k and 699 k resting ports: 26-124 ms each, amortized, as any Python dict).
- **One hostile client's peak memory.** One client opens its whole quota (4096 UDP mappings) and sends
  from each to new remotes until the per-client remote budget (``max_remotes_per_client``) refuses
  them; tracemalloc's peak over the run. Before the budget, 4096 x 4096 remotes came to about 1 GiB.
- **Batch vs single calls.** ``translate_outbound_batch`` over 64-packet batches against a Python loop of
  ``translate_outbound`` calls on the same established 92-byte UDP packets.

Each timed figure is the median of its rounds with the spread (min-max) beside it.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc

from bench.harness import emit_json, out, si
from gw import packet as P
from gw.config import NatConfig
from gw.inet import aton
from gw.nat import EXPIRE_BUDGET, FORWARD, Nat
from gw.verdict import Drop

NS = 1_000_000_000
NOW = 1_000 * NS  # the NAT's monotonic clock
REMOTE = aton("203.0.113.9")
BIG_CLIENTS, BIG_PER_CLIENT = 250, 4000  # 1,000,000 mappings
REFUSED = 100_000
ROUNDS = 5


def _first_packets(client: int, sports: range, remote: int = REMOTE) -> list[bytearray]:
    tmpl = P.build_udp(client, remote, 0, 53, b"q" * 20)
    csum0 = P.get_u16(tmpl, P.V4_UDP_CSUM)[0]
    pkts = []
    for sport in sports:
        b = bytearray(tmpl)
        P.put_u16(b, P.V4_SPORT, sport)
        P.put_u16(b, P.V4_UDP_CSUM, P.csum_adjust(csum0, 0xFFFF + sport) or 0xFFFF)
        pkts.append(b)
    return pkts


def _spread(samples: list[float], unit: str, scale: float = 1.0) -> str:
    s = sorted(x * scale for x in samples)
    return f"{statistics.median(s):.3g} {unit} (spread {s[0]:.3g}-{s[-1]:.3g}, {len(s)} rounds)"


def refused_new_flows() -> tuple[float, list[float]]:
    """Refusals per second once the pool is full: (median rate, per-round ns per refusal)."""
    nat = Nat(NatConfig(external_addresses=["198.51.100.1"], port_range="1024-2047", max_mappings_per_client=512))
    for c in range(2, 6):
        for b in _first_packets(aton("10.66.77.0") + c, range(10_000, 10_256)):
            if nat.translate_outbound(b, NOW) != FORWARD:
                raise SystemExit("bench.nat_costs: the pool did not fill")
    nat.events.clear()
    samples = []
    for _ in range(ROUNDS):
        half = range(10_000, 10_000 + REFUSED // 2)
        pkts = _first_packets(aton("10.66.77.9"), half) + _first_packets(aton("10.66.77.10"), half)
        tr = nat.translate_outbound
        t0 = time.perf_counter_ns()
        for b in pkts:
            tr(b, NOW)
        samples.append((time.perf_counter_ns() - t0) / REFUSED)
    if nat.drops[Drop.PORTS_EXHAUSTED] != ROUNDS * REFUSED:
        raise SystemExit(f"bench.nat_costs: {nat.drops[Drop.PORTS_EXHAUSTED]} refusals counted")
    return 1e9 / statistics.median(samples), samples


def big_table() -> Nat:
    config = NatConfig(external_addresses=[f"198.51.100.{i}" for i in range(1, 21)], max_mappings_per_client=4096)
    nat = Nat(config)
    for c in range(BIG_CLIENTS):
        client = aton("10.66.0.0") + 2 + c
        nat.open_session(NOW, session=c + 1, client=f"client{c}", vpn_addr=client)
        for b in _first_packets(client, range(10_000, 10_000 + BIG_PER_CLIENT)):
            if nat.translate_outbound(b, NOW):
                raise SystemExit("bench.nat_costs: a flow of the big table was refused")
        nat.events.clear()
    return nat


def hostile_client_peak() -> tuple[int, int, int]:
    """(peak traced bytes, remotes admitted, remotes refused) for one client at its quota and remote budget."""
    nat = Nat(NatConfig(external_addresses=["198.51.100.1"]))
    client = aton("10.66.77.2")
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    pkts = _first_packets(client, range(10_000, 10_000 + 4096))
    for b in pkts:
        nat.translate_outbound(b, NOW)
    nat.events.clear()
    for r in range(1, 9):  # every mapping to 8 new remotes: 32,768 admissions asked for
        for b in _first_packets(client, range(10_000, 10_000 + 4096), REMOTE + r):
            nat.translate_outbound(b, NOW)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    admitted = nat.clients[client].remotes
    return peak, admitted, nat.remotes_refused


def batch_vs_single() -> tuple[list[float], list[float]]:
    nat = Nat(NatConfig(external_addresses=["198.51.100.1"]))
    client = aton("10.66.77.2")
    first = _first_packets(client, range(10_000, 11_000))
    for b in first:
        nat.translate_outbound(b, NOW)
    pool = [bytes(b) for b in _first_packets(client, range(10_000, 11_000))] * 20
    single, batched = [], []
    for _ in range(ROUNDS):
        pkts = [bytearray(p) for p in pool]
        tr = nat.translate_outbound
        t0 = time.perf_counter_ns()
        for b in pkts:
            tr(b, NOW)
        single.append((time.perf_counter_ns() - t0) / len(pkts))
        pkts = [bytearray(p) for p in pool]
        batches = [pkts[i : i + 64] for i in range(0, len(pkts), 64)]
        trb = nat.translate_outbound_batch
        t0 = time.perf_counter_ns()
        for batch in batches:
            trb(batch, NOW)
        batched.append((time.perf_counter_ns() - t0) / len(pkts))
    return single, batched


def measure() -> dict[str, object]:
    """Print the cost figures; return them for the JSON line."""
    figures: dict[str, object] = {}
    out("\nWhat one client or one call may cost (median of rounds, spread min-max)")
    rate, samples = refused_new_flows()
    out(f"  refused new flows, full pool (1024 ports)  {si(rate, '/s'):>11}  {_spread(samples, 'us each', 1e-3)}")
    figures.update(refused_new_flows_per_s=round(rate), refused_new_flow_us=round(statistics.median(samples) / 1e3, 3))

    single, batched = batch_vs_single()
    out(f"  translate_outbound, one call per packet   {_spread(single, 'ns/pkt')}")
    out(f"  translate_outbound_batch, 64 per call      {_spread(batched, 'ns/pkt')}")
    figures.update(single_call_ns=round(statistics.median(single), 1),
                   batch_call_ns=round(statistics.median(batched), 1))

    peak, admitted, refused = hostile_client_peak()
    out(f"  one hostile client: 4096 mappings, {admitted:,} remotes admitted, {refused:,} refused: "
        f"peak {peak / 2**20:.1f} MiB")
    figures.update(hostile_client_peak_mib=round(peak / 2**20, 1), hostile_client_remotes=admitted)

    t0 = time.perf_counter()
    nat = big_table()
    out(f"  a table of {len(nat):,} mappings ({BIG_CLIENTS} clients x {BIG_PER_CLIENT}), built in "
        f"{time.perf_counter() - t0:.1f} s; then:")
    views, builds = [], []
    for _ in range(3):
        t0 = time.perf_counter_ns()
        view = nat.snapshot_view(NOW)
        views.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        view.build()
        builds.append(time.perf_counter_ns() - t0)
    out(f"    snapshot_view(now), on the loop        {_spread(views, 'us', 1e-3)}")
    out(f"    view.build(), off the loop (writer)    {_spread(builds, 'ms', 1e-6)}")
    figures.update(snapshot_view_us=round(statistics.median(views) / 1e3, 1),
                   snapshot_build_ms=round(statistics.median(builds) / 1e6, 1))

    idle = aton("10.66.0.0") + 2 + BIG_CLIENTS
    closes_idle, closes_busy = [], []
    for i in range(3):
        nat.open_session(NOW, session=10_000 + i, client="idle", vpn_addr=idle)
        t0 = time.perf_counter_ns()
        nat.close_session(NOW, 10_000 + i, "client_left")
        closes_idle.append(time.perf_counter_ns() - t0)
        t0 = time.perf_counter_ns()
        nat.close_session(NOW, i + 1, "client_left")  # a client with 4000 mappings
        closes_busy.append(time.perf_counter_ns() - t0)
    nat.events.clear()
    out(f"    close_session, idle session            {_spread(closes_idle, 'us', 1e-3)}")
    out(f"    close_session, 4000 mappings           {_spread(closes_busy, 'ms', 1e-6)}")
    figures.update(close_session_idle_us=round(statistics.median(closes_idle) / 1e3, 1),
                   close_session_4000_ms=round(statistics.median(closes_busy) / 1e6, 2))

    due = NOW + 301 * NS  # every UDP flow idle past its 300 s at once
    left = len(nat)
    calls = []
    more = True
    while more:
        t0 = time.perf_counter_ns()
        more = nat.expire(due)
        calls.append(time.perf_counter_ns() - t0)
        nat.events.clear()
    calls.sort()
    p99 = calls[len(calls) * 99 // 100]
    out(f"    expire, all {left:,} due at once: {len(calls)} calls of budget {EXPIRE_BUDGET:,}, per call "
        f"median {statistics.median(calls) / 1e6:.1f} ms, p99 {p99 / 1e6:.1f} ms, slowest {calls[-1] / 1e6:.1f} ms; "
        f"all {sum(calls) / 1e9:.2f} s, {len(nat):,} left")
    figures.update(expire_calls=len(calls), expire_call_ms_median=round(statistics.median(calls) / 1e6, 2),
                   expire_call_ms_p99=round(p99 / 1e6, 2), expire_slowest_call_ms=round(calls[-1] / 1e6, 1),
                   expire_total_s=round(sum(calls) / 1e9, 2))
    return figures


if __name__ == "__main__":
    emit_json(measure())
