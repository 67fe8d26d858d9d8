"""gw.nat under hostile traffic (issue 9): isolation, ingress checks, the router hop, bounded costs, the API.

Each test names the defect it guards against; each failed on the NAT before the hardening. Packets that
leave are re-parsed by ``verify`` (dpkt + checksums recomputed from scratch), the independent oracle.
"""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest

from gw import packet as P
from gw.config import NatConfig
from gw.errors import ConfigError
from gw.nat import COMPILED, FORWARD, HAIRPIN, NEEDS_MAPPING, Nat
from gw.tcp_track import TcpState
from gw.verdict import Drop
from journal.events import MappingCreated, MappingExpired
from tests.helpers.packets import NS, A, fragment, reassemble, verify

C, M, B = A("10.66.77.3"), A("10.66.77.4"), A("10.66.77.5")
PUB, PUB2 = A("198.51.100.1"), A("198.51.100.2")
SRV, SRV2 = A("203.0.113.10"), A("203.0.113.20")
T0 = 1_000 * NS  # a monotonic clock reading
UDP, TCP = P.PROTO_UDP, P.PROTO_TCP
SYN, ACK, RST = P.TCP_SYN, P.TCP_ACK_FLAG, P.TCP_RST
BOTH = [pytest.param(True, id="compiled"), pytest.param(False, id="python")]


def nat_for(compiled: bool = False, seed: int = 3, **overrides: object) -> Nat:
    if compiled and not COMPILED:
        pytest.skip("gw._fastpath not built")
    return Nat(NatConfig(**overrides), random.Random(seed), compiled)


def udp(src: int, sport: int, dst: int, dport: int, payload: bytes = b"data", **kw: int) -> bytearray:
    return P.build_udp(src, dst, sport, dport, payload, **kw)


def sport_of(pkt: bytearray) -> int:
    return P.get_u16(pkt, P.V4_SPORT)[0]


def open_udp(nat: Nat, src: int, sport: int, dst: int = SRV, dport: int = 53, now: int = T0) -> int:
    pkt = udp(src, sport, dst, dport)
    assert nat.translate_outbound(pkt, now) == FORWARD
    return sport_of(pkt)


# ---------------------------------------------------------------------- isolation and ingress


def test_hairpinned_fragments_of_two_clients_with_one_ip_id_never_cross() -> None:
    """Issue 9: A's and M's hairpinned datagrams with ID 0x5A5A once shared one inbound fragment entry."""
    nat = nat_for(filtering="endpoint-independent")
    b_port = open_udp(nat, B, 5000)  # B's public endpoint, reachable by anyone (EIF)
    m_port = open_udp(nat, M, 6000)  # M's own other port
    m_other = open_udp(nat, M, 6001)
    a_big = udp(C, 4000, PUB, b_port, b"A" * 3000, ident=0x5A5A)
    m_big = udp(M, 6001, PUB, m_port, b"M" * 3000, ident=0x5A5A)
    assert m_other
    a_frags, m_frags = fragment(a_big, 1400), fragment(m_big, 1400)
    delivered: dict[int, list[bytearray]] = {B: [], M: []}
    # out of order for A: its last fragment first (held), then M's first, then A's first and middle
    order = [(a_frags[2], C), (m_frags[0], M), (a_frags[0], C), (a_frags[1], C), (m_frags[1], M), (m_frags[2], M)]
    for frag, _sender in order:
        verdict = nat.translate_outbound(frag, T0)
        if verdict == HAIRPIN:
            delivered[P.get_u32(frag, P.IP_DST)[0]].append(frag)
        else:
            assert verdict == Drop.HELD
        for released in nat.released_inbound:
            delivered[P.get_u32(released, P.IP_DST)[0]].append(released)
        nat.released_inbound.clear()
    assert len(delivered[B]) == 3 and len(delivered[M]) == 3
    to_b, to_m = reassemble(delivered[B]), reassemble(delivered[M])
    assert to_b[28:] == b"A" * 3000 and to_m[28:] == b"M" * 3000
    verify(to_b)
    verify(to_m)


@pytest.mark.parametrize("compiled", BOTH)
@pytest.mark.parametrize(
    "source",
    ["198.51.100.1", "10.66.77.9", "0.1.2.3", "127.0.0.1", "224.0.0.5", "240.0.0.1", "255.255.255.255"],
)
def test_inbound_martian_sources_are_dropped_and_counted(compiled: bool, source: str) -> None:
    """Issue 9: a packet from 198.51.100.1:extB to 198.51.100.1:extV was delivered; Linux drops martians."""
    nat = nat_for(compiled, filtering="endpoint-independent")
    port = open_udp(nat, C, 4000)
    pkt = udp(A(source), 9, PUB, port)
    assert nat.translate_inbound(pkt, T0) == Drop.MARTIAN
    assert nat.drops[Drop.MARTIAN] == 1
    assert nat.translate_inbound(udp(SRV, 9, PUB, port), T0) == FORWARD  # an ordinary source still comes in


@pytest.mark.parametrize("compiled", BOTH)
@pytest.mark.parametrize("proto", [UDP, TCP])
def test_the_gateway_is_a_hop_ttl_decremented_both_ways(compiled: bool, proto: int) -> None:
    nat = nat_for(compiled)
    if proto == UDP:
        pkt = udp(C, 4000, SRV, 53, ttl=64)
    else:
        pkt = P.build_tcp(C, SRV, 4000, 80, flags=SYN, ttl=64)
    assert nat.translate_outbound(pkt, T0) == FORWARD
    assert pkt[P.IP_TTL] == 63
    verify(pkt)
    port = sport_of(pkt)
    if proto == UDP:
        back = udp(SRV, 53, PUB, port, ttl=50)
    else:
        back = P.build_tcp(SRV, PUB, 80, port, flags=SYN | ACK, ttl=50)
    assert nat.translate_inbound(back, T0) == FORWARD
    assert back[P.IP_TTL] == 49
    verify(back)


@pytest.mark.parametrize("compiled", BOTH)
def test_ttl_1_is_not_forwarded_and_left_untouched_for_the_time_exceeded_answer(compiled: bool) -> None:
    nat = nat_for(compiled)
    pkt = udp(C, 4000, SRV, 33434, ttl=1)
    before = bytes(pkt)
    assert nat.translate_outbound(pkt, T0) == Drop.TTL_EXCEEDED
    assert bytes(pkt) == before
    port = open_udp(nat, C, 4001)
    back = udp(SRV, 53, PUB, port, ttl=1)
    before = bytes(back)
    assert nat.translate_inbound(back, T0) == Drop.TTL_EXCEEDED
    assert bytes(back) == before
    assert nat.drops[Drop.TTL_EXCEEDED] == 2


@pytest.mark.parametrize("compiled", BOTH)
def test_an_inbound_ttl_1_packet_nobody_would_get_is_the_drop_it_gets_anyway(compiled: bool) -> None:
    """A TTL=1 scan must not learn more than another scan: only a delivered packet is a hop's business."""
    nat = nat_for(compiled)
    assert nat.translate_inbound(udp(SRV, 53, PUB, 4444, ttl=1), T0) == Drop.NO_MAPPING
    port = open_udp(nat, C, 4001)  # it talked to SRV:53 only
    assert nat.translate_inbound(udp(SRV, 54, PUB, port, ttl=1), T0) == Drop.FILTERED
    assert nat.drops[Drop.TTL_EXCEEDED] == 0


def test_outbound_fragmented_datagrams_get_new_ip_ids_per_public_address() -> None:
    """RFC 4963 / 6864: two clients' datagrams with one ID to one remote must not meet at its reassembly."""
    nat = nat_for()
    out_ids = []
    for client in (C, M):
        frags = fragment(udp(client, 4000, SRV, 7000, b"x" * 3000, ident=0x1234), 1400)
        for f in frags:
            assert nat.translate_outbound(f, T0) == FORWARD
            verify(f) if not (P.get_u16(f, P.IP_FRAG)[0] & P.IP_FRAG_MASK) else None
            assert P.checksum(f, 0, 20) == 0
        ids = {P.get_u16(f, P.IP_ID)[0] for f in frags}
        assert len(ids) == 1  # one datagram, one ID
        out_ids.append(ids.pop())
        verify(reassemble(frags))
    assert out_ids[0] != out_ids[1]
    whole = udp(C, 4000, SRV, 7000, b"small", ident=0x4321)
    assert nat.translate_outbound(whole, T0) == FORWARD
    assert P.get_u16(whole, P.IP_ID)[0] == 0x4321  # an unfragmented packet keeps its ID


# ---------------------------------------------------------------------- what one client may cost


def test_remotes_remembered_are_bounded_per_client() -> None:
    nat = nat_for(max_remotes_per_client=50)
    for port in range(10):
        for r in range(20):
            assert nat.translate_outbound(udp(C, 4000 + port, SRV + r, 53), T0) == FORWARD
    # 50, plus the first remote of each later mapping: a mapping always admits the remote that opened it
    assert nat.clients[C].remotes == 57
    assert sum(m.remote_count() for m in nat.mappings()) == 57
    assert nat.remotes_refused == 200 - 57
    last = nat.lookup_internal(UDP, C, 4009)
    refused = udp(SRV + 19, 53, PUB, last.ext_port)
    assert nat.translate_inbound(refused, T0) == Drop.FILTERED  # not admitted: its replies are filtered


def test_a_full_pool_refuses_new_flows_without_scanning() -> None:
    nat = nat_for(port_range="40000-40003", max_mappings_per_client=100)
    for port in range(4):
        open_udp(nat, C, 5000 + port)
    assert nat.ports.free_count(UDP, PUB) == 0

    class NoDraws(random.Random):
        def randbytes(self, n: int) -> bytes:
            raise AssertionError("a full pool drew randomness")

        def randrange(self, *args: int) -> int:
            raise AssertionError("a full pool scanned")

    nat.ports._rng = NoDraws()
    nat.ports.words.clear()
    assert nat.translate_outbound(udp(C, 6000, SRV, 53), T0) == Drop.PORTS_EXHAUSTED
    assert nat.drops[Drop.PORTS_EXHAUSTED] == 1


def test_one_client_gets_only_its_share_of_the_low_ports_then_port_range() -> None:
    nat = nat_for(low_ports_per_client=4)
    ports = [open_udp(nat, C, 500 + i) for i in range(10)]
    assert sum(p < 1024 for p in ports) == 4
    lo, hi = nat.config.port_bounds()
    assert all(lo <= p <= hi for p in ports if p >= 1024)
    assert open_udp(nat, M, 500) < 1024  # another client still has its share


def _established(nat: Nat, isn: int = 1000, wscale: int | None = None) -> tuple[int, int]:
    """SYN out, SYN-ACK in, ACK out; returns (external port, the client's ACK number)."""
    opts = b"" if wscale is None else bytes([1, 3, 3, wscale])
    syn = P.build_tcp(C, SRV, 40000, 443, flags=SYN, seq=isn, options=opts)
    assert nat.translate_outbound(syn, T0) == FORWARD
    port = sport_of(syn)
    assert nat.translate_inbound(P.build_tcp(SRV, PUB, 443, port, flags=SYN | ACK, seq=5000, ack=isn + 1), T0) == 0
    ack = P.build_tcp(C, SRV, 40000, 443, flags=ACK, seq=isn + 1, ack=5001)
    assert nat.translate_outbound(ack, T0) == FORWARD
    return port, 5001


@pytest.mark.parametrize("compiled", BOTH)
def test_a_blind_rst_is_forwarded_but_changes_nothing(compiled: bool) -> None:
    """Issue 9: under endpoint-independent filtering anyone could move a flow to the 240 s timeout."""
    nat = nat_for(compiled, filtering="endpoint-independent")
    port, rcv_nxt = _established(nat)
    blind = P.build_tcp(SRV2, PUB, 443, port, flags=RST, seq=rcv_nxt + 0x4000_0000)
    assert nat.translate_inbound(blind, T0) == FORWARD  # the client's TCP judges it (RFC 5961)
    m = nat.lookup_internal(TCP, C, 40000)
    assert m.state == TcpState.ESTABLISHED and nat.rsts_ignored == 1
    in_window = P.build_tcp(SRV, PUB, 443, port, flags=RST, seq=rcv_nxt + 100)
    assert nat.translate_inbound(in_window, T0) == FORWARD
    assert m.state == TcpState.CLOSED


def test_rst_window_follows_the_clients_window_scale_and_syn_sent_needs_the_right_ack() -> None:
    nat = nat_for()
    port, rcv_nxt = _established(nat, wscale=7)
    far = P.build_tcp(SRV, PUB, 443, port, flags=RST, seq=rcv_nxt + (65535 << 7) - 1)
    assert nat.translate_inbound(far, T0) == FORWARD
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.CLOSED
    nat2 = nat_for()
    syn = P.build_tcp(C, SRV, 41000, 443, flags=SYN, seq=777)
    nat2.translate_outbound(syn, T0)
    port2 = sport_of(syn)
    wrong = P.build_tcp(SRV, PUB, 443, port2, flags=RST | ACK, ack=779)
    nat2.translate_inbound(wrong, T0)
    assert nat2.lookup_internal(TCP, C, 41000).state == TcpState.SYN_OUT
    right = P.build_tcp(SRV, PUB, 443, port2, flags=RST | ACK, ack=778)
    nat2.translate_inbound(right, T0)
    assert nat2.lookup_internal(TCP, C, 41000).state == TcpState.CLOSED


def test_inbound_lone_fragments_to_addresses_not_ours_are_not_held() -> None:
    nat = nat_for()
    tail = fragment(udp(SRV, 53, A("198.51.100.77"), 4000, b"z" * 3000), 1400)[1]
    assert nat.translate_inbound(tail, T0) == Drop.NO_MAPPING
    assert nat._frags_in.held_bytes == 0


def test_one_remote_cannot_take_the_whole_fragment_budget() -> None:
    nat = nat_for(fragment_max_bytes_per_source=70_000)
    held = refused = 0
    for ident in range(200):
        tail = fragment(udp(SRV, 53, PUB, 4000, b"z" * 2900, ident=ident), 1400)[1]
        verdict = nat.translate_inbound(tail, T0)
        held += verdict == Drop.HELD
        refused += verdict == Drop.FRAGMENT
    assert refused and nat._frags_in.source_use(SRV)[1] <= 70_000
    other = fragment(udp(SRV2, 53, PUB, 4000, b"y" * 2900, ident=1), 1400)[2]
    assert nat.translate_inbound(other, T0) == Drop.HELD  # another source still gets room


def test_expire_works_within_a_budget_and_says_when_more_is_due() -> None:
    nat = nat_for(max_mappings_per_client=100_000)
    for i in range(5000):
        open_udp(nat, C, 10_000 + i)
    later = T0 + 301 * NS
    assert nat.expire(later, budget=1000) is True
    assert len(nat) == 4000
    calls = 1
    while nat.expire(later, budget=1000):
        calls += 1
    assert len(nat) == 0 and calls <= 6


def test_resume_spreads_the_deadlines_of_restored_flows() -> None:
    live = nat_for(max_mappings_per_client=100_000)
    for i in range(2000):
        open_udp(live, C, 10_000 + i)
    restored = Nat.restore(live.config, None, live.events, random.Random(1))
    down = T0 + 10 * NS
    assert restored.resume(T0 + 20 * NS, down_since=down) == 0
    due = down + 300 * NS  # every flow counts as seen at the crash
    restored.expire(due + 2 * NS, budget=1 << 30)
    assert 0 < 2000 - len(restored) < 200  # a few come due in the first seconds, not all at once
    restored.expire(due + 62 * NS, budget=1 << 30)
    assert len(restored) == 0  # and never more than a minute late


def test_close_session_costs_its_clients_mappings_not_the_table() -> None:
    nat = nat_for(max_mappings_per_client=100_000)
    nat.open_session(T0, session=1, client="alice", vpn_addr=C)
    nat.open_session(T0, session=2, client="bob", vpn_addr=M)
    for i in range(3000):
        open_udp(nat, M, 10_000 + i)
    open_udp(nat, C, 4000)
    open_udp(nat, C, 4001)
    assert len(nat.clients[C].mappings) == 2
    by_int = nat.by_int

    class NoScan(dict):
        def values(self):  # type: ignore[override]
            raise AssertionError("close_session scanned the table")

    nat.by_int = NoScan(by_int)
    nat.close_session(T0 + NS, 1, "bye")
    expired = [e for e in nat.events if isinstance(e, MappingExpired)]
    assert len(expired) == 2 and all(e.reason == "session_closed" for e in expired)
    assert nat.client_mapping_count(M) == 3000


def test_snapshot_view_copies_no_mapping_on_the_loop_and_builds_the_table_as_of_the_view() -> None:
    nat = nat_for(max_mappings_per_client=100_000)
    for i in range(20_000):
        open_udp(nat, C + i % 4, 10_000 + i // 4)
    tracemalloc.start()
    try:
        view = nat.snapshot_view(T0)
        used = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert used < 20_000  # a list of 20,000 mappings alone would be 160 kB
    gone = nat.lookup_internal(UDP, C, 10_000)
    nat._expire_mapping(gone, T0 + NS, "idle")  # after the view: still in the snapshot
    newcomer = A("10.66.77.50")
    open_udp(nat, newcomer, 9999, now=T0 + NS)  # after the view: not in it
    snap = view.build()
    assert snap.upto_seq == 20_000 and len(snap.proto) == 20_000
    assert newcomer not in snap.int_addr and 10_000 in snap.int_port
    folded = Nat.restore(nat.config, snap, [e for e in nat.events if e.seq > snap.upto_seq])
    assert folded.table_state(T0 + NS) == nat.table_state(T0 + NS)


def test_a_wall_clock_step_moves_timestamps_not_deadlines() -> None:
    nat = nat_for()
    nat.wall_offset = 1_700_000_000 * NS
    open_udp(nat, C, 4000)
    [created] = [e for e in nat.events if isinstance(e, MappingCreated)]
    assert created.at_ns == T0 + nat.wall_offset
    nat.wall_offset += 3600 * NS  # the wall clock steps an hour forward; the monotonic clock does not
    nat.expire(T0 + 10 * NS)
    assert len(nat) == 1
    nat.expire(T0 + 301 * NS)
    [expired] = [e for e in nat.events if isinstance(e, MappingExpired)]
    assert expired.at_ns == T0 + 301 * NS + nat.wall_offset


# ---------------------------------------------------------------------- the packet API


@pytest.mark.parametrize("compiled", BOTH)
def test_translate_takes_memoryviews_and_buffers_with_live_views(compiled: bool) -> None:
    nat = nat_for(compiled)
    ring = bytearray(2048)
    pkt = udp(C, 4000, SRV, 53)
    ring[: len(pkt)] = pkt
    view = memoryview(ring)[: len(pkt)]
    assert nat.translate_outbound(view, T0) == FORWARD
    verify(bytearray(view))
    held = bytearray(udp(C, 4001, SRV, 53))
    live = memoryview(held)  # an export: resizing ``held`` would raise BufferError
    assert nat.translate_outbound(held, T0) == FORWARD
    live.release()


@pytest.mark.parametrize("compiled", BOTH)
def test_ethernet_padded_packets_stay_on_the_fast_path_and_keep_their_padding(compiled: bool) -> None:
    nat = nat_for(compiled)
    syn = P.build_tcp(C, SRV, 40000, 80, flags=SYN)
    nat.translate_outbound(syn, T0)
    ack = P.build_tcp(C, SRV, 40000, 80, flags=ACK)  # 40 bytes: padded to the 46-byte Ethernet minimum
    frame = ack + b"\xee" * 6
    calls = []
    general = nat._outbound
    nat._outbound = lambda p, t: calls.append(1) or general(p, t)
    assert nat.translate_outbound(frame, T0) == FORWARD
    assert calls == [] and len(frame) == 46 and frame[40:] == b"\xee" * 6
    verify(frame[:40])


@pytest.mark.parametrize("compiled", BOTH)
def test_batch_calls_give_the_verdicts_of_single_calls(compiled: bool) -> None:
    nat, twin = nat_for(compiled), nat_for(compiled)
    pkts = [udp(C, 4000 + i % 7, SRV, 53) for i in range(50)] + [bytearray(b"junk")]
    copies = [bytearray(p) for p in pkts]
    assert nat.translate_outbound_batch(pkts, T0) == [twin.translate_outbound(p, T0) for p in copies]
    assert pkts == copies


@pytest.mark.parametrize("compiled", BOTH)
def test_caller_chosen_ports_for_socket_mode_and_the_seq_strict_audit_waits_for(compiled: bool) -> None:
    if compiled and not COMPILED:
        pytest.skip("gw._fastpath not built")
    nat = Nat(NatConfig(), random.Random(1), compiled, caller_ports=True)
    pkt = udp(C, 4000, SRV, 53)
    before = bytes(pkt)
    assert nat.translate_outbound(pkt, T0) == NEEDS_MAPPING
    assert bytes(pkt) == before and not nat.events
    assert nat.paired_address(C) == PUB
    m = nat.create_mapping(UDP, C, 4000, 45678, T0, remote=(SRV, 53))
    assert m.ext_port == 45678
    [created] = nat.events
    assert created.ext_port == 45678 and nat.last_mapping_seq == created.seq
    assert nat.translate_outbound(pkt, T0) == FORWARD
    assert (P.get_u32(pkt, P.IP_SRC)[0], sport_of(pkt)) == (PUB, 45678)
    assert nat.create_mapping(UDP, M, 4000, 45678, T0) == Drop.PORTS_EXHAUSTED  # held: never twice


def test_nat_refuses_an_unchecked_config() -> None:
    with pytest.raises(ConfigError, match="external_addresses"):
        Nat(NatConfig(external_addresses=[]))
    with pytest.raises(ConfigError, match="port_range"):
        Nat(NatConfig(port_range="40000-3000"))


def test_fast_path_struct_reads_the_fields_it_names() -> None:
    """The TCP read takes the ACK number at offset 28 (a wrong offset reads the sequence number)."""
    from gw.nat import _read_tcp

    pkt = P.build_tcp(C, SRV, 1, 2, flags=ACK, seq=0x11111111, ack=0x22222222)
    assert _read_tcp(pkt)[7:9] == (0x22222222, ACK)
    assert struct.calcsize("!5I HH 4x I x B 2x H") == 38
