"""``PortPool.hold_all``, the bulk hold of a snapshot load, leaves the pool as one ``hold`` per port does."""

from __future__ import annotations

import random

import pytest

from gw.mapping import flow_key
from gw.ports import PortPool

ADDRS = [0xC6336401, 0xC6336402]  # 198.51.100.1-2
SECOND = 1_000_000_000


def _pool() -> PortPool:
    return PortPool(ADDRS, 1024, 65535, 120 * SECOND, random.Random(1))


def _rows(seed: int, n: int) -> tuple[list[int], list[int], list[int]]:
    """n (proto, address, port) rows: all three protocols, low ports, duplicates and an unknown address."""
    rng = random.Random(seed)
    addrs = [*ADDRS, 0xC6336409]
    port = lambda: rng.choice((rng.randrange(1, 1024), rng.randrange(1024, 65536)))  # noqa: E731
    rows = [(rng.choice((1, 6, 17)), rng.choice(addrs), port()) for _ in range(n)]
    rows += rows[:5]  # a snapshot never holds a port twice, but the bulk path must not count it twice
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


@pytest.mark.parametrize("resting", [False, True], ids=["fresh-pool", "ports-resting"])
def test_hold_all_equals_one_hold_per_port(resting: bool):
    protos, addrs, ports = _rows(3, 3000)
    bulk, single = _pool(), _pool()
    if resting:  # rest some of the very ports the snapshot holds, and others
        for pool in (bulk, single):
            for p, a, q in list(zip(protos, addrs, ports))[::7]:
                pool.rest(flow_key(p, a, q), 5 * SECOND)
            pool.rest(flow_key(17, ADDRS[0], 4000), 5 * SECOND)
    bulk.hold_all(protos, addrs, ports)
    for p, a, q in zip(protos, addrs, ports):
        single.hold(p, a, q, True)
    assert bulk.state == single.state
    assert bulk.free == single.free
    assert bulk.resting == single.resting
    for p, a in {(p, a) for p, a in zip(protos, addrs)}:
        state = bulk.state[p << 32 | a]
        assert bulk.free_count(p, a, low=True) == state.count(0, 1, 1024)
        assert bulk.free_count(p, a) == state.count(0, 1024, 65536)
