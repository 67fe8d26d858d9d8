"""gw.frag.FragmentTable: held fragments, release on the first fragment, bounds by bytes, datagrams and age.

The NAT-level behaviour (translation of fragments in both directions, in any order) is in test_nat.py.
"""

from __future__ import annotations

import itertools

from gw.frag import FragmentTable, datagram_key
from tests.helpers.packets import CLIENT, PUBLIC, SERVER, A

NS = 1_000_000_000
T0 = 1_000 * NS


def table(max_bytes: int = 10_000, max_datagrams: int = 8, timeout_s: int = 30, **per_source: int) -> FragmentTable:
    return FragmentTable(
        timeout_ns=timeout_s * NS, max_datagrams=max_datagrams, max_bytes=max_bytes, **per_source
    )


def key(ident: int, src: str = CLIENT) -> int:
    return datagram_key(A(src), A(SERVER), 17, ident)


def frag(n: int, tag: int = 0) -> bytearray:
    return bytearray([tag]) * n


def test_rfc791_datagram_key_distinguishes_source_destination_protocol_and_identification() -> None:
    addrs = (A(CLIENT), A(SERVER), A(PUBLIC), 0, 0xFFFFFFFF)
    keys = {
        datagram_key(s, d, p, i): (s, d, p, i)
        for s, d, p, i in itertools.product(addrs, addrs, (1, 6, 17, 255), (0, 1, 0xFFFF))
    }
    assert len(keys) == len(addrs) ** 2 * 4 * 3


def test_a_held_fragment_is_returned_once_when_the_first_fragment_resolves_the_datagram() -> None:
    t = table()
    a, b = frag(100, 1), frag(200, 2)
    assert t.hold(key(1), a, T0) and t.hold(key(1), b, T0)
    assert t.held_bytes == 300 and t.mapping_for(key(1)) is None
    mapping = object()
    entry, held = t.resolve(key(1), mapping, T0)
    assert held == [a, b] and entry is t.resolved(key(1))
    assert t.held_bytes == 0 and t.mapping_for(key(1)) is mapping
    assert t.resolve(key(1), mapping, T0)[1] == []  # nothing is released twice


def test_datagrams_are_independent() -> None:
    t = table()
    t.hold(key(1), frag(10, 1), T0)
    t.hold(key(2), frag(20, 2), T0)
    assert t.resolve(key(2), "m2", T0)[1] == [frag(20, 2)]
    assert t.held_bytes == 10 and t.mapping_for(key(1)) is None


def test_held_bytes_are_bounded_and_a_refused_fragment_is_counted() -> None:
    t = table(max_bytes=250)
    assert t.hold(key(1), frag(100), T0) and t.hold(key(2), frag(100), T0)
    assert not t.hold(key(3), frag(100), T0)
    assert (t.held_bytes, t.dropped) == (200, 1)
    assert t.hold(key(3), frag(50), T0)  # exactly at the limit is fine


def test_hold_over_the_byte_limit_first_ages_out_old_datagrams() -> None:
    t = table(max_bytes=250, timeout_s=30)
    t.hold(key(1), frag(200), T0)
    assert t.hold(key(2), frag(200), T0 + 31 * NS)
    assert (t.held_bytes, t.dropped, len(t)) == (200, 1, 1)


def test_datagram_count_is_bounded_and_the_oldest_is_evicted_with_its_fragments_counted() -> None:
    t = table(max_datagrams=2, max_datagrams_per_source=8)
    t.hold(key(1), frag(10), T0)
    t.hold(key(1), frag(10), T0)
    t.hold(key(2), frag(10), T0 + 1)
    t.hold(key(3), frag(10), T0 + 2)
    assert len(t) == 2 and t.dropped == 2 and t.held_bytes == 20
    assert t.resolve(key(1), "m", T0 + 3)[1] == []  # evicted; and resolving makes room by evicting key 2
    assert len(t) == 2 and t.dropped == 3


def test_expire_forgets_datagrams_older_than_the_timeout_and_returns_fragments_dropped() -> None:
    t = table(timeout_s=30)
    t.hold(key(1), frag(10), T0)
    t.hold(key(1), frag(10), T0)
    t.resolve(key(2), "m", T0 + 10 * NS)  # a datagram whose first fragment passed: no fragments to drop
    t.hold(key(3), frag(10), T0 + 20 * NS)
    assert t.expire(T0 + 29 * NS) == 0
    assert t.expire(T0 + 30 * NS) == 2
    assert t.mapping_for(key(2)) == "m"
    assert t.expire(T0 + 40 * NS) == 0 and t.mapping_for(key(2)) is None
    assert t.expire(T0 + 50 * NS) == 1
    assert (len(t), t.held_bytes, t.dropped) == (0, 0, 3)


def test_a_resolved_datagram_lets_later_fragments_through_until_it_ages_out() -> None:
    t = table(timeout_s=30)
    t.resolve(key(9), "m", T0)
    assert t.mapping_for(key(9)) == "m"
    t.expire(T0 + 31 * NS)
    assert t.mapping_for(key(9)) is None


def test_a_source_over_its_share_is_refused_while_another_source_still_gets_in() -> None:
    t = table(max_bytes=1000, max_datagrams=8, max_bytes_per_source=300, max_datagrams_per_source=2)
    assert t.hold(key(1), frag(200), T0) and t.hold(key(2), frag(100), T0)
    assert not t.hold(key(2), frag(1), T0)  # bytes: 300 is its share
    assert not t.hold(key(3), frag(0), T0)  # datagrams: two is its share
    assert t.resolve(key(4), "m", T0) == (None, [])  # a first fragment over the share gets no entry either
    assert t.hold(key(1, "10.66.77.9"), frag(300), T0)  # another host has its own share
    assert t.source_use(A(CLIENT)) == (2, 300) and t.dropped == 2


def test_a_source_share_is_freed_by_age_before_a_fragment_is_refused() -> None:
    t = table(max_bytes=1000, max_bytes_per_source=300, timeout_s=30)
    assert t.hold(key(1), frag(300), T0)
    assert t.hold(key(2), frag(300), T0 + 31 * NS)  # the old datagram aged out and made room
    assert t.source_use(A(CLIENT)) == (1, 300) and t.dropped == 1
