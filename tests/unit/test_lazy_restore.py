"""Lazy restore (``Nat.restore(..., lazy=True)``, ``gw.pending``): packets of restored flows are forwarded
before the rest of the table loads, new flows wait, and once every row is in, the table is the one an
eager restore builds. Each test runs on the Python loader and, when built, the compiled one."""

from __future__ import annotations

import random

import pytest

from gw import packet as P
from gw.nat import COMPILED, FORWARD, RESTORE_SLICE, Nat
from gw.packet import Drop
from gw.tcp_track import TcpState
from journal.events import MappingExpired, SessionOpened
from journal.segments import read_snapshot, write_snapshot
from tests.helpers.packets import CLIENT, NS, PUBLIC, SERVER, A, endpoints, make_nat, ntoa, verify

C, PUB, SRV = A(CLIENT), A(PUBLIC), A(SERVER)
T0 = 1_700_000_000 * NS
UDP, TCP, ICMP = P.PROTO_UDP, P.PROTO_TCP, P.PROTO_ICMP
FLOWS = 3 * RESTORE_SLICE  # enough rows for several slices
LOADERS = [False, True] if COMPILED else [False]
IDS = ["python", "compiled"][: len(LOADERS)]
loader = pytest.mark.parametrize("compiled", LOADERS, ids=IDS)


def at(seconds: float) -> int:
    return T0 + int(seconds * NS)


def _live() -> Nat:
    """FLOWS UDP flows from 250 clients, one established TCP connection and one ping, all answered."""
    nat = make_nat(max_mappings_per_client=1000)
    nat.open_session(T0, session=1, client="alice", vpn_addr=C)
    for i in range(FLOWS):
        src = C + i % 250
        pkt = P.build_udp(src, SRV, 10000 + i // 250, 53, b"q")
        assert nat.translate_outbound(pkt, T0) == FORWARD
    syn = P.build_tcp(C, SRV, 5555, 443, flags=P.TCP_SYN)
    assert nat.translate_outbound(syn, T0) == FORWARD
    synack = P.build_tcp(SRV, PUB, 443, endpoints(syn)[1], flags=P.TCP_SYN | P.TCP_ACK_FLAG, ack=1)
    assert nat.translate_inbound(synack, T0) == FORWARD
    assert nat.translate_outbound(P.build_icmp_echo(C, SRV, 77, 1, b"x"), T0) == FORWARD
    return nat


def _snapshot_file(nat: Nat, tmp_path, now: int):
    """The snapshot as a restarting gateway reads it: from a file (packed columns)."""
    return read_snapshot(write_snapshot(tmp_path, nat.snapshot_view(now).build(), fsync=False))


def _ext_port(nat: Nat, proto: int, src: int, sport: int) -> int:
    return nat.by_int[proto << 48 | src << 16 | sport].ext_key & 0xFFFF


@loader
def test_a_restored_flow_is_forwarded_both_ways_with_its_port_before_the_rest_loads(tmp_path, compiled):
    live = _live()
    snap = _snapshot_file(live, tmp_path, at(1))
    nat = Nat.restore(live.config, snap, [], random.Random(1), lazy=True, compiled=compiled)
    assert nat.restoring and len(nat) == len(live) and not nat.by_int  # nothing loaded yet, all counted
    src, sport = C + 17, 10000 + 3
    pkt = P.build_udp(src, SRV, sport, 53, b"again")
    assert nat.translate_outbound(pkt, at(2)) == FORWARD
    verify(pkt)
    assert endpoints(pkt)[1] == _ext_port(live, UDP, src, sport)
    reply = P.build_udp(SRV, PUB, 53, endpoints(pkt)[1], b"answer")
    assert nat.translate_inbound(reply, at(2)) == FORWARD
    assert endpoints(reply)[2:] == (ntoa(src), sport)
    assert nat.restoring and len(nat.by_int) == 1  # that row alone was loaded
    # an established TCP connection (no SYN: the fast path would refuse an unknown one) and a ping
    ack = P.build_tcp(C, SRV, 5555, 443, flags=P.TCP_ACK_FLAG, seq=1)
    assert nat.translate_outbound(ack, at(2)) == FORWARD
    assert endpoints(ack)[1] == _ext_port(live, TCP, C, 5555)
    assert nat.lookup_internal(TCP, C, 5555).state == TcpState.ESTABLISHED
    assert nat.translate_outbound(P.build_icmp_echo(C, SRV, 77, 2, b"x"), at(2)) == FORWARD
    assert nat.events == [] and len(nat) == len(live)


@loader
def test_new_flows_are_refused_while_rows_are_pending_and_never_take_a_restored_port(tmp_path, compiled):
    live = _live()
    nat = Nat.restore(live.config, _snapshot_file(live, tmp_path, at(1)), [], random.Random(1), lazy=True,
                      compiled=compiled)  # fmt: skip
    new = P.build_udp(C, SRV, 60000, 53, b"new")
    assert nat.translate_outbound(new, at(2)) == Drop.RESTORING
    assert nat.drops[Drop.RESTORING] == 1 and nat.events == []
    assert nat.create_mapping(UDP, C, 60001, 40000, at(2)) == Drop.RESTORING
    calls = 0
    while nat.expire(at(2)):
        calls += 1
    assert not nat.restoring and calls >= FLOWS // RESTORE_SLICE
    assert nat.translate_outbound(new, at(3)) == FORWARD
    held = {m.ext_key & 0xFFFF for m in live.mappings() if m.key >> 48 == UDP}
    assert endpoints(new)[1] not in held


@loader
def test_once_every_row_is_in_the_table_is_the_eager_restore_s_with_the_same_resume(tmp_path, compiled):
    live = _live()
    snap = _snapshot_file(live, tmp_path, at(100))
    crash, restart = at(100), at(399)  # UDP idle since T0: 300 s timeout from the crash, so all survive
    eager = Nat.restore(live.config, snap, [], random.Random(1), compiled=compiled)
    lazy = Nat.restore(live.config, snap, [], random.Random(1), lazy=True, compiled=compiled)
    assert eager.resume(restart, crash) == 1  # the ping: 60 s after the crash
    assert lazy.resume(restart, crash) == 0  # nothing loaded yet: its rows meet resume's rule as they load
    while lazy.expire(restart):
        pass
    eager.expire(restart)
    assert lazy.table_state(restart) == eager.table_state(restart)
    assert lazy.stale_at_recovery == eager.stale_at_recovery == 1
    assert lazy.events == eager.events  # the ping's stale_at_recovery, then a heartbeat
    assert [type(e).__name__ for e in lazy.events] == ["MappingExpired", "Heartbeat"]
    assert sorted(lazy._wheel_due) == sorted(eager._wheel_due)  # the same spread deadlines
    assert sorted(k for ks in lazy._wheel.values() for k in ks) == sorted(
        k for ks in eager._wheel.values() for k in ks
    )


@loader
def test_journal_events_after_the_snapshot_reach_the_rows_they_name(tmp_path, compiled):
    live = _live()
    snap = _snapshot_file(live, tmp_path, at(1))
    live.expire(at(1 + 300))  # every UDP flow idles out after the snapshot...
    for i in range(5):  # ...and a few clients come back
        assert live.translate_outbound(P.build_udp(C + i, SRV, 10000, 53, b"q"), at(302)) == FORWARD
    live.close_session(at(303), 1, "client_left")
    tail = [e for e in live.events if e.seq > snap.upto_seq]
    lazy = Nat.restore(live.config, snap, tail, random.Random(1), lazy=True, compiled=compiled)
    eager = Nat.restore(live.config, snap, tail, random.Random(1), compiled=compiled)
    assert lazy.table_state(at(303)) == eager.table_state(at(303)) == live.table_state(at(303))


@loader
def test_closing_a_session_while_rows_are_pending_ends_its_pending_mappings_too(tmp_path, compiled):
    live = _live()
    snap = _snapshot_file(live, tmp_path, at(1))
    lazy = Nat.restore(live.config, snap, [], random.Random(1), lazy=True, compiled=compiled)
    live.close_session(at(2), 1, "client_left")
    lazy.close_session(at(2), 1, "client_left")
    ended = [e for e in lazy.events if type(e) is MappingExpired]
    assert ended and sorted((e.ext_addr, e.ext_port) for e in ended) == sorted(
        (e.ext_addr, e.ext_port) for e in live.events if type(e) is MappingExpired
    )
    assert lazy.table_state(at(2)) == live.table_state(at(2))


@loader
def test_a_snapshot_of_a_table_still_loading_holds_every_row(tmp_path, compiled):
    live = _live()
    lazy = Nat.restore(live.config, _snapshot_file(live, tmp_path, at(1)), [], lazy=True, compiled=compiled)
    again = lazy.snapshot_view(at(2)).build()
    assert not lazy.restoring and len(again.proto) == len(live)


def test_the_pending_index_finds_every_row_by_either_key_and_nothing_else(tmp_path):
    from gw.pending import DictIndex, PendingRows

    live = _live()
    snap = _snapshot_file(live, tmp_path, at(1))
    kinds = [DictIndex] + ([__import__("gw._fastpath", fromlist=["RowIndex"]).RowIndex] if COMPILED else [])
    rows = PendingRows(snap, 0, compiled=False)
    c = rows.columns
    for index in kinds:
        by_int = index(c["proto"], c["int_addr"], c["int_port"])
        by_ext = index(c["proto"], c["ext_addr"], c["ext_port"])
        for i in range(rows.n):
            assert by_int.find(c["proto"][i] << 48 | c["int_addr"][i] << 16 | c["int_port"][i]) == i
            assert by_ext.find(c["proto"][i] << 48 | c["ext_addr"][i] << 16 | c["ext_port"][i]) == i
        assert by_int.find(UDP << 48 | C << 16 | 9) == -1 and by_ext.find(0) == -1


def test_a_snapshot_with_columns_of_unequal_length_is_refused():
    from journal.events import Snapshot

    nat_config = make_nat().config
    with pytest.raises(ValueError, match="unequal length"):
        Nat.restore(nat_config, Snapshot(upto_seq=1, at_ns=T0, proto=[17], int_addr=[C]), [], lazy=True)



@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize("column", ["created_ns", "last_seen_ns", "rest_until_ns"])
def test_a_snapshot_time_that_leaves_64_bits_on_the_monotonic_clock_is_refused(column, lazy, compiled):
    """Found by fuzzing: the compiled loader wrapped such a time, and the next snapshot raised OverflowError."""
    from journal.events import Snapshot

    rows = dict(proto=[17], int_addr=[C], int_port=[5], ext_addr=[C + 1], ext_port=[40000], session=[1],
                created_ns=[T0], last_seen_ns=[T0], tcp_state=[0], packets_out=[1], bytes_out=[1],
                packets_in=[0], bytes_in=[0], remote_addr=[0], remote_port=[0], client=[""],
                rest_proto=[17], rest_ext_addr=[C + 1], rest_ext_port=[40001], rest_until_ns=[T0])  # fmt: skip
    nat_config = make_nat().config
    Nat.restore(nat_config, Snapshot(upto_seq=1, at_ns=T0, **rows), [], wall_offset=T0, lazy=lazy, compiled=compiled)
    rows[column] = [-(1 << 63) + 5]  # a wall time that is fine in the file, and below int64 once T0 is taken off
    with pytest.raises(ValueError, match=f"{column}: a time out of range"):
        Nat.restore(nat_config, Snapshot(upto_seq=1, at_ns=T0, **rows), [], wall_offset=T0, lazy=lazy,
                    compiled=compiled)  # fmt: skip

def test_sessions_come_back_at_once_though_their_rows_are_pending(tmp_path):
    live = _live()
    lazy = Nat.restore(live.config, _snapshot_file(live, tmp_path, at(1)), [], lazy=True)
    assert lazy.sessions.holder[C] == (1, "alice") and lazy.restoring
    assert isinstance(lazy.sessions.opened[1], SessionOpened)
