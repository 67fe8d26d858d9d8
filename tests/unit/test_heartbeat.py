"""Heartbeats (issue 10): while the table holds mappings, ``expire`` journals one every
HEARTBEAT_INTERVAL_S, so that after a crash ``resume`` counts the outage from when the gateway really
stopped, not from the last mapping change."""

from __future__ import annotations

from gw import packet as P
from gw.nat import FORWARD, Nat
from journal.events import HEARTBEAT_INTERVAL_S, Heartbeat, MappingExpired
from journal.recovery import Recovered
from tests.helpers.packets import CLIENT, NS, SERVER, A, make_nat

C, SRV = A(CLIENT), A(SERVER)
T0 = 1_700_000_000 * NS


def _beats(nat: Nat) -> list[Heartbeat]:
    return [e for e in nat.events if type(e) is Heartbeat]


def test_a_table_with_mappings_journals_one_heartbeat_per_interval_and_an_empty_one_none():
    idle = make_nat()
    for s in range(30):
        idle.expire(T0 + s * NS)
    assert _beats(idle) == [] and idle.next_deadline() is None
    nat = make_nat()
    assert nat.translate_outbound(P.build_udp(C, SRV, 40000, 53, b"q"), T0) == FORWARD
    for s in range(3 * HEARTBEAT_INTERVAL_S):
        nat.expire(T0 + s * NS)
    beats = _beats(nat)
    assert [b.at_ns for b in beats] == [T0 + k * HEARTBEAT_INTERVAL_S * NS for k in range(3)]
    assert all(b.mappings_count == 1 for b in beats)
    assert nat.next_deadline() == T0 + 3 * HEARTBEAT_INTERVAL_S * NS  # the shell's timer wakes for the next


def test_a_flow_busy_until_the_crash_survives_a_journal_quiet_for_ten_minutes():
    """The reproduction in issue 10: no mapping changed for 10 minutes, then a 5 s outage."""
    live = make_nat()
    for s in range(600):  # one datagram a second (the fast path journals nothing), the shell's timer
        assert live.translate_outbound(P.build_udp(C, SRV, 40000, 53, b"q"), T0 + s * NS) == FORWARD
        live.expire(T0 + s * NS)
    assert not [e for e in live.events if type(e) is MappingExpired]
    rec = Recovered(last_at_ns=live.events[-1].at_ns)  # what recovery.load reports: the last event's time
    restored = Nat.restore(live.config, None, live.events)
    restart = T0 + 605 * NS
    assert restored.resume(restart, rec.down_since_ns) == 0
    assert restored.lookup_internal(P.PROTO_UDP, C, 40000) is not None
