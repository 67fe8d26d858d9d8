"""A restore writes its rows' ports straight into the pool's state arrays and then ``recount``s them; the
pool must end as one ``hold`` per port leaves it (fresh, and with some of those ports resting)."""

from __future__ import annotations

import random

import pytest

from gw.config import NatConfig
from gw.mapping import flow_key
from gw.nat import COMPILED, Nat
from gw.ports import PortPool
from journal.events import Snapshot

ADDRS = [0xC6336401, 0xC6336402]  # 198.51.100.1-2
UNKNOWN = 0xC6336409  # an address a journal written under another config may name
SECOND = 1_000_000_000
CONFIG = NatConfig(external_addresses=["198.51.100.1", "198.51.100.2"], port_reuse_delay_s=120)


def _rows(seed: int, n: int) -> list[tuple[int, int, int]]:
    """n distinct (proto, address, port) rows: all three protocols, low ports and an unknown address."""
    rng = random.Random(seed)
    rows = {
        (
            rng.choice((1, 6, 17)),
            rng.choice([*ADDRS, UNKNOWN]),
            rng.choice((rng.randrange(1, 1024), rng.randrange(1024, 65536))),
        )
        for _ in range(n)
    }
    return sorted(rows)


def _snapshot(rows: list[tuple[int, int, int]], rests: list[tuple[int, int, int]]) -> Snapshot:
    n = len(rows)
    return Snapshot(
        upto_seq=n,
        at_ns=10 * SECOND,
        proto=[r[0] for r in rows],
        int_addr=[0x0A000002 + i // 60000 for i in range(n)],
        int_port=[i % 60000 + 1 for i in range(n)],
        ext_addr=[r[1] for r in rows],
        ext_port=[r[2] for r in rows],
        session=[0] * n,
        created_ns=[SECOND] * n,
        last_seen_ns=[2 * SECOND] * n,
        tcp_state=[0] * n,
        packets_out=[1] * n,
        bytes_out=[60] * n,
        packets_in=[0] * n,
        bytes_in=[0] * n,
        remote_addr=[0] * n,
        remote_port=[0] * n,
        client=[""] * n,
        rest_proto=[r[0] for r in rests],
        rest_ext_addr=[r[1] for r in rests],
        rest_ext_port=[r[2] for r in rests],
        rest_until_ns=[50 * SECOND] * len(rests),
    )


@pytest.mark.parametrize(
    "compiled", [False, True] if COMPILED else [False], ids=["python", "compiled"][: 1 + COMPILED]
)
@pytest.mark.parametrize("resting", [False, True], ids=["fresh-pool", "ports-resting"])
def test_a_restore_holds_every_row_port_as_one_hold_per_port_does(resting: bool, compiled: bool):
    rows = _rows(3, 3000)
    rests = rows[::7] + [(17, ADDRS[0], 4000)] if resting else []  # some of the very ports the rows hold
    rests = sorted(set(rests))
    nat = Nat.restore(CONFIG, _snapshot(rows, rests), [], compiled=compiled)
    single = PortPool(ADDRS, 1024, 65535, 120 * SECOND, random.Random(1))
    for p, a, q in rests:
        single.rest(flow_key(p, a, q), 50 * SECOND)
    for p, a, q in rows:
        single.hold(p, a, q, True)
    assert nat.ports.state == single.state
    assert nat.ports.free == single.free
    assert nat.ports.resting == single.resting
    for p, a in {(p, a) for p, a, _ in rows}:
        state = nat.ports.state[p << 32 | a]
        assert nat.ports.free_count(p, a, low=True) == state.count(0, 1, 1024)
        assert nat.ports.free_count(p, a) == state.count(0, 1024, 65536)
