"""The recovery path as ``journal/recovery.py`` documents it, end to end on a real journal directory:
live NAT -> writer (snapshot in the middle) -> crash (no GatewayStopped) -> ``load`` -> ``Nat.restore``
-> ``resume``, in a process whose monotonic clock started elsewhere."""

from __future__ import annotations

import random

from gw import packet as P
from gw.config import NatConfig
from gw.nat import FORWARD, Nat
from journal.events import MappingExpired
from journal.recovery import load
from journal.writer import JournalWriter
from tests.helpers.packets import CLIENT, PUBLIC, SERVER, A, endpoints

NS = 1_000_000_000
WALL_AT_BOOT = 1_764_000_000 * NS  # the crashed process: wall clock = monotonic + this
C, SRV = A(CLIENT), A(SERVER)


def _udp(sport: int) -> bytearray:
    return P.build_udp(C, SRV, sport, 53, b"q")


def _ping(ident: int) -> bytearray:
    return P.build_icmp_echo(C, SRV, ident, 1, b"p")


def _held(nat: Nat) -> set[tuple]:
    """Each mapping by its identity and its birth on the wall clock (the monotonic clocks differ)."""
    return {(m.key, m.ext_key, m.session, m.created + nat.wall_offset) for m in nat.mappings()}


def _crashed(tmp_path) -> tuple[NatConfig, Nat, int, int]:
    """A live NAT journaling to ``tmp_path`` (snapshot in the middle) that dies: (config, live, wall
    clock of the crash, the external port of the flow that was busy until the crash)."""
    config = NatConfig(external_addresses=[PUBLIC])
    live = Nat(config, random.Random(9), wall_offset=WALL_AT_BOOT)
    writer = JournalWriter(tmp_path, fsync="always")
    writer.start()
    mono = 50 * NS
    live.open_session(mono, session=1, client="alice", vpn_addr=C)
    assert live.translate_outbound(_ping(7), mono) == FORWARD  # idle from here: ICMP times out in 60 s
    for sport in range(40000, 40010):
        assert live.translate_outbound(_udp(sport), mono) == FORWARD
    writer.submit(live.events)
    live.events = []
    writer.submit_snapshot(live.snapshot_view(mono))
    mono += 100 * NS
    for sport in range(40010, 40015):  # after the snapshot: only in the segments
        assert live.translate_outbound(_udp(sport), mono) == FORWARD
    mono += 100 * NS
    busy = _udp(40000)
    assert live.translate_outbound(busy, mono) == FORWARD  # busy until the crash: it must survive
    busy_port = endpoints(busy)[1]
    writer.submit(live.events)
    live.events = []
    writer.flush()
    writer.close()  # the process dies here: no GatewayStopped
    return config, live, mono + WALL_AT_BOOT, busy_port


def test_the_documented_recovery_path_brings_back_the_table_after_a_crash(tmp_path) -> None:
    config, live, crash_wall, busy_port = _crashed(tmp_path)


    # a new process 30 s later, whose monotonic clock reads 7 s
    now = 7 * NS
    restart_wall = crash_wall + 30 * NS
    rec = load(tmp_path)
    assert rec.snapshot is not None and not rec.clean
    nat = Nat.restore(config, rec.snapshot, rec.events, wall_offset=restart_wall - now)
    assert _held(nat) == _held(live)  # the same table, the same external ports
    ended = nat.resume(now, rec.down_since_ns if rec.down_since_ns is not None else restart_wall)
    assert ended == 1  # the ping idled out during the outage, nothing else did
    [gone] = [e for e in nat.events if isinstance(e, MappingExpired)]
    assert gone.reason == "stale_at_recovery" and gone.at_ns == restart_wall
    assert gone.seq == rec.last_seq + 1  # the journal goes on without a gap
    again = _udp(40000)
    assert nat.translate_outbound(again, now + NS) == FORWARD
    assert endpoints(again)[1] == busy_port  # the flow goes on through the same public port
    ping_port = live.lookup_internal(P.PROTO_ICMP, C, 7).ext_port
    assert nat.lookup_internal(P.PROTO_ICMP, C, 7) is None
    assert nat.is_resting(P.PROTO_ICMP, A(PUBLIC), ping_port, now + 119 * NS)  # 120 s from the restart


def test_a_lazy_restore_forwards_the_busy_flow_before_the_table_is_whole_then_ends_the_idle_one(tmp_path):
    config, live, crash_wall, busy_port = _crashed(tmp_path)
    now, restart_wall = 7 * NS, crash_wall + 30 * NS
    rec = load(tmp_path)
    nat = Nat.restore(config, rec.snapshot, rec.events, wall_offset=restart_wall - now, lazy=True)
    assert nat.resume(now, rec.down_since_ns) == 0 and nat.restoring  # the snapshot's rows wait
    again = _udp(40000)
    assert nat.translate_outbound(again, now + NS) == FORWARD and nat.restoring
    assert endpoints(again)[1] == busy_port
    while nat.expire(now + 2 * NS):
        pass
    assert _held(nat) | {_identity(live, P.PROTO_ICMP, 7)} == _held(live)
    [gone] = [e for e in nat.events if isinstance(e, MappingExpired)]
    assert gone.reason == "stale_at_recovery" and gone.at_ns == restart_wall + 2 * NS  # when its row loaded
    assert gone.seq == rec.last_seq + 1 and nat.stale_at_recovery == 1


def _identity(nat: Nat, proto: int, ident: int) -> tuple:
    m = nat.lookup_internal(proto, C, ident)
    return (m.key, m.ext_key, m.session, m.created + nat.wall_offset)
