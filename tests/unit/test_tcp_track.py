"""gw.tcp_track: the docstring's text table and TRANSITIONS agree; every (state, kind) gives a valid state."""

from __future__ import annotations

import itertools
import re

import pytest

from gw import tcp_track
from gw.packet import TCP_ACK_FLAG, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN
from gw.tcp_track import (
    ESTABLISHED_STATES,
    NEXT_STATE,
    SEG_KINDS,
    TRANSITIONS,
    Seg,
    TcpState,
    classify,
    next_state,
)

ROW = re.compile(r"^\s+([A-Z_]+)\s+([a-z_]+)\s+->\s+([A-Z_]+)\s*$")


def docstring_table() -> dict[tuple[TcpState, Seg], TcpState]:
    rows = [ROW.match(line) for line in tcp_track.__doc__.splitlines()]
    table = {}
    for m in filter(None, rows):
        key = (TcpState[m[1]], Seg[m[2].upper()])
        assert key not in table, f"{m[0].strip()!r} listed twice"
        table[key] = TcpState[m[3]]
    return table


def test_docstring_table_is_found_and_not_empty() -> None:
    assert len(docstring_table()) >= 10


def test_docstring_table_and_transitions_agree() -> None:
    assert docstring_table() == TRANSITIONS


def test_every_state_and_segment_kind_gives_a_valid_state_and_unlisted_pairs_keep_their_state() -> None:
    assert len(NEXT_STATE) == len(TcpState) * SEG_KINDS
    for state, kind in itertools.product(TcpState, Seg):
        nxt = NEXT_STATE[state * SEG_KINDS + kind]
        assert nxt in set(TcpState), (state, kind)
        assert nxt == TRANSITIONS.get((state, kind), state), (
            state,
            kind,
        )  # "Anything not listed keeps its state"


def test_plain_segments_never_change_the_state_except_a_remote_answer_to_a_known_syn() -> None:
    for state in TcpState:
        for flags in (0, TCP_ACK_FLAG, TCP_ACK_FLAG | TCP_PSH):
            for outbound in (True, False):
                if state == TcpState.SYN_OUT and not outbound:
                    continue  # the pickup rule, tested below
                assert next_state(state, flags, outbound) == state


def test_a_plain_inbound_segment_after_our_syn_picks_the_connection_up_as_established() -> None:
    # after a restart the journal knows only the SYN; the remote's ACKs show the handshake happened
    assert next_state(TcpState.SYN_OUT, TCP_ACK_FLAG, False) == TcpState.ESTABLISHED
    assert next_state(TcpState.SYN_OUT, TCP_ACK_FLAG, True) == TcpState.SYN_OUT


def test_udp_and_icmp_mappings_stay_in_state_none_whatever_the_flags() -> None:
    for flags in range(64):
        for outbound in (True, False):
            assert next_state(TcpState.NONE, flags, outbound) == TcpState.NONE


def test_rfc5382_req2_syn_seen_both_ways_in_either_order_is_established() -> None:
    assert next_state(TcpState.SYN_OUT, TCP_SYN, outbound=False) == TcpState.ESTABLISHED
    assert next_state(TcpState.SYN_OUT, TCP_SYN | TCP_ACK_FLAG, outbound=False) == TcpState.ESTABLISHED


def test_fin_both_ways_in_either_order_is_time_wait() -> None:
    for first, second in ((True, False), (False, True)):
        s = next_state(TcpState.ESTABLISHED, TCP_FIN | TCP_ACK_FLAG, first)
        assert s in (TcpState.FIN_OUT, TcpState.FIN_IN)
        assert next_state(s, TCP_FIN | TCP_ACK_FLAG, second) == TcpState.TIME_WAIT


def test_rfc7857_rst_from_any_state_either_way_is_closed() -> None:
    for state, outbound in itertools.product(set(TcpState) - {TcpState.NONE}, (True, False)):
        assert next_state(state, TCP_RST | TCP_ACK_FLAG, outbound) == TcpState.CLOSED


def test_a_new_outbound_syn_after_close_starts_over() -> None:
    for state in (TcpState.TIME_WAIT, TcpState.CLOSED):
        assert next_state(state, TCP_SYN, outbound=True) == TcpState.SYN_OUT


def test_only_established_uses_the_established_timeout() -> None:
    assert ESTABLISHED_STATES == {TcpState.ESTABLISHED}


def test_every_tcp_state_is_reachable_from_a_new_outbound_syn() -> None:
    seen, todo = {TcpState.SYN_OUT}, [TcpState.SYN_OUT]
    while todo:
        s = todo.pop()
        for k in Seg:
            n = TcpState(NEXT_STATE[s * SEG_KINDS + k])
            if n not in seen:
                seen.add(n)
                todo.append(n)
    assert seen == set(TcpState) - {TcpState.NONE}  # NONE is for UDP and ICMP mappings


@pytest.mark.parametrize(
    ("flags", "outbound", "kind"),
    [
        (TCP_SYN, True, Seg.SYN_OUT),
        (TCP_SYN, False, Seg.SYN_IN),
        (TCP_SYN | TCP_ACK_FLAG, False, Seg.SYN_IN),
        (TCP_FIN | TCP_ACK_FLAG, True, Seg.FIN_OUT),
        (TCP_FIN, False, Seg.FIN_IN),
        (TCP_RST, True, Seg.RST),
        (TCP_RST | TCP_SYN, False, Seg.RST),  # RST wins over SYN
        (TCP_RST | TCP_FIN, True, Seg.RST),
        (TCP_SYN | TCP_FIN, True, Seg.SYN_OUT),  # SYN wins over FIN
        (TCP_ACK_FLAG, True, Seg.OTHER),
        (TCP_ACK_FLAG | TCP_PSH, False, Seg.ACK_IN),
        (0, True, Seg.OTHER),
    ],
)
def test_classify_by_flags_and_direction(flags: int, outbound: bool, kind: Seg) -> None:
    assert classify(flags, outbound) == kind
