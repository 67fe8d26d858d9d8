"""Strict audit's hold (gw.strict) without a daemon: what waits, for which seq, in which order, within
which bounds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gw import inet
from gw import packet as P
from gw.strict import ENTRY_COST, Hold, public_key

PUBLIC = inet.aton("198.51.100.1")
REMOTE = inet.aton("203.0.113.10")


def _udp(port: int) -> bytearray:
    return P.build_udp(PUBLIC, REMOTE, port, 7, b"x")


def test_the_public_key_is_protocol_address_and_port_or_echo_identifier():
    assert public_key(_udp(40001)) == 17 << 48 | PUBLIC << 16 | 40001
    echo = P.build_icmp_echo(PUBLIC, REMOTE, 777, 1, b"ping")
    assert public_key(echo) == 1 << 48 | PUBLIC << 16 | 777
    later = P.fragment(P.build_udp(PUBLIC, REMOTE, 40001, 7, bytes(3000)), 1000)[1]
    assert public_key(later) is None  # no ports in it: it shows no port on its own


def test_packets_wait_for_their_own_mappings_seq_and_leave_in_order():
    hold = Hold()
    a, b = public_key(_udp(1)), public_key(_udp(2))
    hold.created(a, 10)
    hold.created(b, 11)
    assert hold.seq_for(a) == 10 and hold.seq_for(b) == 11 and hold.seq_for(public_key(_udp(3))) is None
    for item, seq in (("a1", 10), ("b1", 11), ("a2", 10)):
        assert hold.hold(seq, 0, item, 100)
    assert hold.release(9) == []
    assert hold.release(10) == ["a1", "a2"]  # b1 still waits: its mapping is not durable yet
    assert hold.seq_for(a) is None and hold.seq_for(b) == 11
    assert hold.release(12) == ["b1"] and len(hold) == 0 and hold.pending == {}


def test_a_mapping_already_durable_holds_nothing():
    hold = Hold()
    hold.release(20)
    hold.created(public_key(_udp(1)), 15)
    assert hold.seq_for(public_key(_udp(1))) is None


def test_what_waits_is_bounded_in_bytes_and_in_age():
    hold = Hold(max_bytes=1000 + 2 * ENTRY_COST, max_age_ns=5)  # each packet costs ENTRY_COST more
    assert hold.hold(1, 0, "first", 600)
    assert not hold.hold(1, 0, "over", 600)
    assert hold.counts["held_dropped"] == 1
    assert hold.hold(2, 3, "second", 400)
    assert not hold.hold(2, 3, "one byte", 1)
    assert hold.expire(4) == 0
    assert hold.expire(6) == 1  # "first" waited 6 > 5
    assert hold.release(5) == ["second"]
    assert hold.hold(6, 10, "fits again", 1000 + ENTRY_COST)  # the bytes were given back


def test_tiny_packets_are_bounded_by_what_holds_them():
    hold = Hold(max_bytes=100 * ENTRY_COST)
    held = sum(hold.hold(1, 0, i, 1) for i in range(1000))
    assert held == 100 * ENTRY_COST // (ENTRY_COST + 1)


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(1, 30)), max_size=60), st.integers(0, 40))
def test_release_gives_exactly_what_is_durable_in_arrival_order(items, durable):
    hold = Hold()
    for i, (flow, seq) in enumerate(items):
        hold.hold(seq, 0, (i, flow, seq), 1)
    out = hold.release(durable)
    assert out == [(i, f, s) for i, (f, s) in enumerate(items) if s <= durable]
    assert len(hold) == len(items) - len(out)
