"""gw.nat: RFC 4787 / 5382 / 5508 / 6888 / 7857 behaviour, checked packet by packet with dpkt as the oracle.

Every packet the NAT forwards is re-parsed by ``verify`` (dpkt + checksums recomputed from scratch).
Where a real Linux NAT translated the same packet (shared/vectors/kernel-nat), our bytes must equal
the kernel's except for the TTL, which the kernel decrements and this NAT does not.
"""

from __future__ import annotations

import random
import struct

import msgspec
import pytest

from gw import packet as P
from gw.config import NatConfig
from gw.nat import FORWARD, HAIRPIN, Nat
from gw.packet import Drop
from gw.tcp_track import TcpState
from journal.events import (
    GatewayStarted,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    Snapshot,
)
from tests.helpers.packets import (
    CLIENT,
    CLIENT_B,
    NS,
    PUBLIC,
    PUBLIC_2,
    ROUTER,
    SERVER,
    SERVER_2,
    A,
    Clock,
    endpoints,
    fragment,
    hopped,
    make_nat,
    ntoa,
    reassemble,
    verify,
)

C, CB, CC, CD = A(CLIENT), A(CLIENT_B), A("10.66.77.4"), A("10.66.77.5")
PUB, PUB2 = A(PUBLIC), A(PUBLIC_2)
SRV, SRV2, RTR = A(SERVER), A(SERVER_2), A(ROUTER)
T0 = 1_700_000_000 * NS
SYN, ACK, FIN, RST, PSH = P.TCP_SYN, P.TCP_ACK_FLAG, P.TCP_FIN, P.TCP_RST, P.TCP_PSH
UDP, TCP, ICMP = P.PROTO_UDP, P.PROTO_TCP, P.PROTO_ICMP
SERVER_ISN = 5000  # the server's initial sequence number in open_tcp: its next byte is 5001
MODES = ["endpoint-independent", "address-dependent", "address-and-port-dependent"]


# ---------------------------------------- harness


def out(nat: Nat, pkt: bytearray, now: int = T0) -> int:
    """Translate outbound; verify every packet that leaves."""
    v = nat.translate_outbound(pkt, now)
    if v in (FORWARD, HAIRPIN):
        verify(pkt)
    return v


def inb(nat: Nat, pkt: bytearray, now: int = T0) -> int:
    v = nat.translate_inbound(pkt, now)
    assert v != HAIRPIN, "inbound packets are never hairpinned"
    if v == FORWARD:
        verify(pkt)
    return v


def udp(src: int, sport: int, dst: int, dport: int, payload: bytes = b"data", **kw) -> bytearray:
    return P.build_udp(src, dst, sport, dport, payload, **kw)


def tcp(src: int, sport: int, dst: int, dport: int, flags: int = ACK, **kw) -> bytearray:
    return P.build_tcp(src, dst, sport, dport, flags=flags, **kw)


def ping(src: int, dst: int, ident: int, seq: int = 1, **kw) -> bytearray:
    return P.build_icmp_echo(src, dst, ident, seq, b"abcdefgh", **kw)


def pong(src: int, dst: int, ident: int, seq: int = 1) -> bytearray:
    return P.build_icmp_echo(src, dst, ident, seq, b"abcdefgh", reply=True)


def open_udp(
    nat: Nat, src: int = C, sport: int = 40000, dst: int = SRV, dport: int = 53, now: int = T0
) -> int:
    """Send one datagram out and return the external port it used."""
    pkt = udp(src, sport, dst, dport)
    assert out(nat, pkt, now) == FORWARD
    return endpoints(pkt)[1]


def open_tcp(
    nat: Nat, src: int = C, sport: int = 40000, dst: int = SRV, dport: int = 80, now: int = T0
) -> int:
    """SYN out, SYN-ACK in: an established connection; returns the external port."""
    syn = tcp(src, sport, dst, dport, SYN)
    assert out(nat, syn, now) == FORWARD
    ep = endpoints(syn)[1]
    assert inb(nat, tcp(dst, dport, A(endpoints(syn)[0]), ep, SYN | ACK, seq=SERVER_ISN, ack=1), now) == FORWARD
    assert nat.lookup_internal(TCP, src, sport).state == TcpState.ESTABLISHED
    return ep


def events(nat: Nat, kind: type) -> list:
    return [e for e in nat.events if type(e) is kind]


def at(seconds: float) -> int:
    return T0 + int(seconds * NS)


# ---------------------------------------- mapping (RFC 4787 REQ-1, 5382 REQ-1)


def test_outbound_udp_source_becomes_the_public_endpoint_and_the_reply_returns_to_the_client() -> None:
    nat = make_nat()
    pkt = udp(C, 40000, SRV, 53, b"query")
    assert out(nat, pkt) == FORWARD
    src, ep, dst, dport = endpoints(pkt)
    assert (src, dst, dport) == (PUBLIC, SERVER, 53)
    assert bytes(verify(pkt).data.data) == b"query"
    reply = udp(SRV, 53, PUB, ep, b"answer")
    assert inb(nat, reply) == FORWARD
    assert endpoints(reply) == (SERVER, 53, CLIENT, 40000)
    [created] = events(nat, MappingCreated)
    assert (created.proto, created.int_addr, created.int_port, created.ext_addr, created.ext_port) == (
        UDP,
        C,
        40000,
        PUB,
        ep,
    )


@pytest.mark.parametrize("proto", [UDP, TCP])
def test_rfc4787_req1_rfc5382_req1_endpoint_independent_mapping_same_port_for_two_remotes(proto: int) -> None:
    nat = make_nat()
    ports = set()
    for dst, dport in ((SRV, 53), (SRV2, 443), (SRV, 9999)):
        pkt = udp(C, 40000, dst, dport) if proto == UDP else tcp(C, 40000, dst, dport, SYN)
        assert out(nat, pkt) == FORWARD
        ports.add(endpoints(pkt)[:2])
    assert len(ports) == 1
    assert len(nat) == 1 and len(events(nat, MappingCreated)) == 1


def test_two_internal_endpoints_never_share_an_external_endpoint() -> None:
    nat = make_nat()
    seen = {open_udp(nat, src, sport) for src in (C, CB) for sport in (40000, 40001)}
    assert len(seen) == 4


# ---------------------------------------- filtering (RFC 4787 REQ-8)


def test_default_filtering_is_address_and_port_dependent() -> None:
    assert NatConfig().filtering == "address-and-port-dependent"
    nat = make_nat()
    ep = open_udp(nat, dport=53)
    assert inb(nat, udp(SRV, 54, PUB, ep)) == Drop.FILTERED


# (remote that answers, verdict in each mode: EIF, ADF, APDF)
FILTER_CASES = [
    ("same address and port", SRV, 53, (FORWARD, FORWARD, FORWARD)),
    ("same address, other port", SRV, 5353, (FORWARD, FORWARD, Drop.FILTERED)),
    ("other address, same port", SRV2, 53, (FORWARD, Drop.FILTERED, Drop.FILTERED)),
    ("unknown remote", A("192.0.2.77"), 1234, (FORWARD, Drop.FILTERED, Drop.FILTERED)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("remote", "rport", "verdicts"), [c[1:] for c in FILTER_CASES], ids=[c[0] for c in FILTER_CASES]
)
def test_rfc4787_req8_inbound_udp_filtering_per_mode(
    mode: str, remote: int, rport: int, verdicts: tuple
) -> None:
    nat = make_nat(filtering=mode)
    ep = open_udp(nat, dport=53)
    pkt = udp(remote, rport, PUB, ep)
    want = verdicts[MODES.index(mode)]
    assert inb(nat, pkt) == want
    assert nat.drops[Drop.FILTERED] == (want == Drop.FILTERED)
    if want == FORWARD:
        assert endpoints(pkt)[2:] == (CLIENT, 40000)


@pytest.mark.parametrize("mode", MODES)
def test_rfc5382_inbound_tcp_filtering_per_mode(mode: str) -> None:
    nat = make_nat(filtering=mode)
    ep = open_tcp(nat, dport=80)
    assert inb(nat, tcp(SRV, 80, PUB, ep, ACK)) == FORWARD
    other_port = inb(nat, tcp(SRV, 81, PUB, ep, ACK))
    other_addr = inb(nat, tcp(SRV2, 80, PUB, ep, ACK))
    assert (other_port, other_addr) == {
        "endpoint-independent": (FORWARD, FORWARD),
        "address-dependent": (FORWARD, Drop.FILTERED),
        "address-and-port-dependent": (Drop.FILTERED, Drop.FILTERED),
    }[mode]


def test_rfc4787_req8_a_remote_is_admitted_once_the_client_sent_to_it() -> None:
    nat = make_nat()
    ep = open_udp(nat, dport=53)
    assert inb(nat, udp(SRV2, 443, PUB, ep)) == Drop.FILTERED
    assert out(nat, udp(C, 40000, SRV2, 443)) == FORWARD
    assert inb(nat, udp(SRV2, 443, PUB, ep)) == FORWARD


def test_inbound_to_an_unmapped_external_port_is_no_mapping() -> None:
    nat = make_nat()
    ep = open_udp(nat)
    other = 1024 if ep != 1024 else 1025
    assert inb(nat, udp(SRV, 53, PUB, other)) == Drop.NO_MAPPING
    assert inb(nat, tcp(SRV, 53, PUB, ep, SYN)) == Drop.NO_MAPPING  # the UDP mapping is not a TCP one
    assert nat.drops[Drop.NO_MAPPING] == 2


# ---------------------------------------- TCP state (RFC 5382, 7857)


def test_rfc5382_outbound_syn_creates_the_mapping() -> None:
    nat = make_nat()
    assert out(nat, tcp(C, 40000, SRV, 80, SYN)) == FORWARD
    m = nat.lookup_internal(TCP, C, 40000)
    assert m is not None and m.state == TcpState.SYN_OUT


@pytest.mark.parametrize(
    "flags",
    [ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK, 0],
    ids=["ack", "data", "fin", "rst", "rst-ack", "syn-ack", "none"],
)
def test_rfc5382_outbound_non_syn_without_mapping_is_dropped_no_mapping(flags: int) -> None:
    nat = make_nat()
    assert out(nat, tcp(C, 40000, SRV, 80, flags)) == Drop.NO_MAPPING
    assert len(nat) == 0 and nat.events == [] and nat.drops[Drop.NO_MAPPING] == 1


def test_rfc5382_inbound_syn_without_mapping_is_dropped() -> None:
    nat = make_nat()
    assert inb(nat, tcp(SRV, 80, PUB, 40000, SYN)) == Drop.NO_MAPPING
    assert len(nat) == 0


def test_rfc5382_req5_syn_both_ways_is_established_with_the_7440s_timeout() -> None:
    nat = make_nat()
    open_tcp(nat)
    nat.expire(at(7439))
    assert nat.lookup_internal(TCP, C, 40000) is not None
    nat.expire(at(7441))
    assert nat.lookup_internal(TCP, C, 40000) is None
    [gone] = events(nat, MappingExpired)
    assert gone.reason == "idle"


def test_rfc9293_simultaneous_open_outbound_syn_then_inbound_bare_syn_is_established() -> None:
    nat = make_nat()
    syn = tcp(C, 40000, SRV, 80, SYN)
    assert out(nat, syn) == FORWARD
    ep = endpoints(syn)[1]
    crossing = tcp(SRV, 80, PUB, ep, SYN)  # the peer's own SYN, no ACK
    assert inb(nat, crossing) == FORWARD
    assert endpoints(crossing)[2:] == (CLIENT, 40000)
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.ESTABLISHED


def test_rfc5382_req5_syn_without_answer_uses_the_transitory_timeout() -> None:
    nat = make_nat()
    assert out(nat, tcp(C, 40000, SRV, 80, SYN)) == FORWARD
    nat.expire(at(239))
    assert len(nat) == 1
    nat.expire(at(241))
    assert len(nat) == 0


def test_rfc7857_fin_both_ways_is_transitory_240s_then_expires_as_tcp_closed() -> None:
    nat = make_nat()
    ep = open_tcp(nat)
    assert out(nat, tcp(C, 40000, SRV, 80, FIN | ACK), at(10)) == FORWARD
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.FIN_OUT
    assert inb(nat, tcp(SRV, 80, PUB, ep, FIN | ACK), at(11)) == FORWARD
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.TIME_WAIT
    assert out(nat, tcp(C, 40000, SRV, 80, ACK), at(12)) == FORWARD  # the last ACK still passes
    nat.expire(at(12 + 239))
    assert len(nat) == 1
    nat.expire(at(12 + 241))
    assert len(nat) == 0
    [gone] = events(nat, MappingExpired)
    assert gone.reason == "tcp_closed"


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_rfc7857_2_2_rst_is_transitory_240s_not_immediate_then_tcp_closed(direction: str) -> None:
    nat = make_nat()
    ep = open_tcp(nat)
    if direction == "outbound":
        assert out(nat, tcp(C, 40000, SRV, 80, RST), at(5)) == FORWARD
    else:
        blind = tcp(SRV, 80, PUB, ep, RST | ACK, seq=SERVER_ISN + 1 + 0x20000)  # past the window
        assert inb(nat, blind, at(5)) == FORWARD
        assert nat.lookup_internal(TCP, C, 40000).state == TcpState.ESTABLISHED  # RFC 5961: ignored
        assert nat.rsts_ignored == 1
        assert inb(nat, tcp(SRV, 80, PUB, ep, RST | ACK, seq=SERVER_ISN + 1), at(5)) == FORWARD
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.CLOSED
    assert inb(nat, tcp(SRV, 80, PUB, ep, ACK), at(6)) == FORWARD  # late segments still get through
    nat.expire(at(200))
    assert len(nat) == 1
    nat.expire(at(5 + 241))
    assert len(nat) == 0
    assert events(nat, MappingExpired)[0].reason == "tcp_closed"


def test_fin_one_way_shortens_an_established_mapping_to_the_transitory_timeout() -> None:
    nat = make_nat()
    open_tcp(nat)
    assert out(nat, tcp(C, 40000, SRV, 80, FIN | ACK), at(100)) == FORWARD
    nat.expire(at(100 + 241))
    assert len(nat) == 0  # not kept for 7440 s


def test_new_outbound_syn_on_a_closed_connection_starts_over() -> None:
    nat = make_nat()
    ep = open_tcp(nat)
    assert out(nat, tcp(C, 40000, SRV, 80, RST), at(1)) == FORWARD
    syn = tcp(C, 40000, SRV, 80, SYN)
    assert out(nat, syn, at(2)) == FORWARD
    assert endpoints(syn)[1] == ep
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.SYN_OUT


# ---------------------------------------- TCP MSS clamping


def _mss_of(pkt: bytearray) -> int:
    import dpkt

    opts = dict(dpkt.tcp.parse_opts(verify(pkt).data.opts))
    return struct.unpack("!H", opts[dpkt.tcp.TCP_OPT_MSS])[0]


@pytest.mark.parametrize(
    ("mss", "clamp", "expect"),
    [(1460, 1360, 1360), (1200, 1360, 1200), (1460, 0, 1460), (1361, 1360, 1360), (1360, 1360, 1360)],
)
def test_syn_mss_is_clamped_down_to_tcp_mss_never_raised_and_0_disables(
    mss: int, clamp: int, expect: int
) -> None:
    nat = make_nat(tcp_mss=clamp)
    syn = tcp(C, 40000, SRV, 80, SYN, options=P.mss_option(mss))
    assert out(nat, syn) == FORWARD  # verify() inside: the TCP checksum covers the new option
    assert _mss_of(syn) == expect


def test_syn_ack_inbound_mss_is_clamped_too() -> None:
    nat = make_nat(tcp_mss=1360)
    syn = tcp(C, 40000, SRV, 80, SYN, options=P.mss_option(1200))
    assert out(nat, syn) == FORWARD
    synack = tcp(SRV, 80, PUB, endpoints(syn)[1], SYN | ACK, options=P.mss_option(1460) + b"\x01\x01\x04\x02")
    assert inb(nat, synack) == FORWARD
    assert _mss_of(synack) == 1360


def test_mss_option_after_other_options_is_found_and_the_rest_is_untouched() -> None:
    nat = make_nat(tcp_mss=1360)
    opts = (
        b"\x01\x01\x08\x0a" + b"\x11\x22\x33\x44\x00\x00\x00\x00" + P.mss_option(1460) + b"\x01\x03\x03\x07"
    )
    syn = tcp(C, 40000, SRV, 80, SYN, options=opts)
    assert out(nat, syn) == FORWARD
    assert _mss_of(syn) == 1360
    assert bytes(syn[40:52]) == opts[:12] and bytes(syn[56:60]) == opts[16:]


def test_mss_is_not_touched_on_non_syn_segments() -> None:
    nat = make_nat(tcp_mss=1360)
    ep = open_tcp(nat)
    seg = tcp(C, 40000, SRV, 80, ACK, options=P.mss_option(1460))
    assert out(nat, seg) == FORWARD and _mss_of(seg) == 1460
    seg = tcp(SRV, 80, PUB, ep, ACK, options=P.mss_option(1460))
    assert inb(nat, seg) == FORWARD and _mss_of(seg) == 1460


# ---------------------------------------- ICMP echo (RFC 5508)


def test_rfc5508_echo_identifier_is_the_port_and_the_reply_comes_back_with_the_client_identifier() -> None:
    nat = make_nat(port_range="20000-20099")
    req = ping(C, SRV, 0x1234)
    assert out(nat, req) == FORWARD
    src, ext_id, dst, _ = endpoints(req)
    assert (src, dst) == (PUBLIC, SERVER) and 20000 <= ext_id <= 20099
    assert nat.lookup_external(ICMP, PUB, ext_id).int_port == 0x1234
    rep = pong(SRV, PUB, ext_id)
    assert inb(nat, rep) == FORWARD
    assert endpoints(rep) == (SERVER, 0x1234, CLIENT, 0x1234)


def test_rfc5508_two_clients_with_the_same_identifier_get_different_external_identifiers() -> None:
    nat = make_nat()
    a, b = ping(C, SRV, 7), ping(CB, SRV, 7)
    assert out(nat, a) == FORWARD and out(nat, b) == FORWARD
    assert endpoints(a)[1] != endpoints(b)[1]
    ra, rb = pong(SRV, PUB, endpoints(a)[1]), pong(SRV, PUB, endpoints(b)[1])
    assert inb(nat, ra) == FORWARD and inb(nat, rb) == FORWARD
    assert endpoints(ra)[2] == CLIENT and endpoints(rb)[2] == CLIENT_B


def test_rfc5508_echo_reply_from_another_address_is_filtered_by_default() -> None:
    nat = make_nat()
    req = ping(C, SRV, 7)
    assert out(nat, req) == FORWARD
    assert inb(nat, pong(SRV2, PUB, endpoints(req)[1])) == Drop.FILTERED


def test_unsupported_icmp_types_are_dropped_not_translated() -> None:
    nat = make_nat()
    assert out(nat, P.build_icmp(C, SRV, 13, 0, b"\0" * 4, b"\0" * 12)) == Drop.UNSUPPORTED  # timestamp
    assert (
        inb(nat, ping(SRV, PUB, 5)) == Drop.UNSUPPORTED
    )  # echo requests from outside are not ours to answer
    assert out(nat, pong(C, SRV, 5)) == Drop.UNSUPPORTED
    assert nat.drops[Drop.UNSUPPORTED] == 3


# ---------------------------------------- ICMP errors (RFC 5508 REQ-3, REQ-4)


ERRORS = [
    ("port unreachable", P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, SRV, 0),
    ("time exceeded from a router", P.ICMP_TIME_EXCEEDED, 0, RTR, 0),
    ("fragmentation needed from a router", P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, RTR, 1280),
]


@pytest.mark.parametrize(
    ("icmp_type", "code", "sender", "mtu"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
@pytest.mark.parametrize("proto", [UDP, TCP])
def test_rfc5508_req4_inbound_error_quoting_our_packet_reaches_the_client_with_every_checksum_right(
    proto: int, icmp_type: int, code: int, sender: int, mtu: int
) -> None:
    nat = make_nat()
    original = udp(C, 40000, SRV, 9, b"probe") if proto == UDP else tcp(C, 40000, SRV, 80, SYN, seq=99)
    sent = bytearray(original)
    assert out(nat, sent) == FORWARD
    err = P.build_icmp_error(sender, PUB, icmp_type, code, sent, mtu=mtu)
    assert inb(nat, err) == FORWARD  # verify(): outer IP, ICMP, quoted IP and quoted L4 checksums
    assert endpoints(err)[0::2] == (ntoa(sender), CLIENT)
    assert bytes(err[28:]) == hopped(original)  # the client's own packet again, as it left this hop
    assert struct.unpack_from("!HH", err, 24) == (0, mtu)  # the next-hop MTU survives (RFC 1191)


def test_rfc5508_inbound_frag_needed_with_a_548_byte_quote_of_a_long_segment() -> None:
    nat = make_nat()
    original = tcp(C, 40000, SRV, 80, ACK | PSH, payload=bytes(range(256)) * 6, flags_frag=P.IP_DF)
    open_tcp(nat)
    sent = bytearray(original)
    assert out(nat, sent) == FORWARD
    err = P.build_icmp_error(RTR, PUB, P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, sent, mtu=1280)
    assert len(err) == 576
    assert inb(nat, err) == FORWARD
    assert bytes(err[28:]) == hopped(original)[:548]  # quoted header, ports and the TCP checksum restored


def test_rfc5508_inbound_time_exceeded_quoting_an_echo_request_restores_the_identifier() -> None:
    nat = make_nat()
    original = ping(C, SRV, 0x4242, ttl=2)  # leaves this hop with TTL 1; the next router answers
    sent = bytearray(original)
    assert out(nat, sent) == FORWARD
    err = P.build_icmp_error(RTR, PUB, P.ICMP_TIME_EXCEEDED, 0, sent)
    assert inb(nat, err) == FORWARD
    assert bytes(err[28:]) == hopped(original)


def test_rfc5508_req3_outbound_error_about_an_inbound_packet_quotes_the_external_endpoint() -> None:
    nat = make_nat()
    ep = open_udp(nat, dport=53)
    arriving = udp(SRV, 53, PUB, ep, b"late answer")
    delivered = bytearray(arriving)
    assert inb(nat, delivered) == FORWARD
    err = P.build_icmp_error(C, SRV, P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, delivered)
    assert out(nat, err) == FORWARD
    assert endpoints(err)[0::2] == (PUBLIC, SERVER)
    assert bytes(err[28:]) == hopped(arriving)  # what the server sent, as it passed this hop


def test_rfc5508_outbound_error_about_an_inbound_tcp_segment() -> None:
    nat = make_nat()
    ep = open_tcp(nat)
    arriving = tcp(SRV, 80, PUB, ep, ACK | PSH, payload=b"x" * 30)
    delivered = bytearray(arriving)
    assert inb(nat, delivered) == FORWARD
    err = P.build_icmp_error(C, SRV, P.ICMP_DEST_UNREACH, 3, delivered)
    assert out(nat, err) == FORWARD
    assert bytes(err[28:]) == hopped(arriving)


def test_rfc5508_icmp_error_never_refreshes_a_mapping() -> None:
    nat = make_nat()
    ep = open_udp(nat, dport=53)
    sent = udp(C, 40000, SRV, 53)
    assert out(nat, sent) == FORWARD
    delivered = udp(SRV, 53, PUB, ep)
    assert inb(nat, delivered) == FORWARD
    for t in (100, 200, 290):
        e_in = P.build_icmp_error(SRV, PUB, P.ICMP_DEST_UNREACH, 3, sent)
        e_out = P.build_icmp_error(C, SRV, P.ICMP_DEST_UNREACH, 3, delivered)
        assert inb(nat, e_in, at(t)) == FORWARD and out(nat, e_out, at(t)) == FORWARD
        assert nat.lookup_internal(UDP, C, 40000).last_seen == T0
    nat.expire(at(301))
    assert len(nat) == 0


def test_rfc5508_icmp_error_never_ends_a_mapping_or_changes_tcp_state() -> None:
    nat = make_nat()
    open_tcp(nat)
    sent = tcp(C, 40000, SRV, 80, ACK, payload=b"hi")
    assert out(nat, sent) == FORWARD
    for icmp_type, code in ((3, 3), (3, 1), (11, 0), (12, 0), (4, 0)):
        assert inb(nat, P.build_icmp_error(RTR, PUB, icmp_type, code, sent)) == FORWARD
    assert nat.lookup_internal(TCP, C, 40000).state == TcpState.ESTABLISHED
    nat.expire(at(3600))
    assert len(nat) == 1 and events(nat, MappingExpired) == []


def test_icmp_error_quoting_an_unknown_flow_is_dropped_both_ways() -> None:
    nat = make_nat()
    ep = open_udp(nat)
    stranger = udp(PUB, ep ^ 1, SRV, 53)  # our address, a port nobody holds
    assert inb(nat, P.build_icmp_error(RTR, PUB, 3, 3, stranger)) == Drop.ICMP_ERROR_MISMATCH
    wrong_proto = tcp(PUB, ep, SRV, 53, SYN)  # the port is held, but for UDP
    assert inb(nat, P.build_icmp_error(RTR, PUB, 3, 3, wrong_proto)) == Drop.ICMP_ERROR_MISMATCH
    not_delivered = udp(SRV, 53, C, 40001)  # the client quotes a flow it has no mapping for
    assert out(nat, P.build_icmp_error(C, SRV, 3, 3, not_delivered)) == Drop.ICMP_ERROR_MISMATCH
    assert nat.drops[Drop.ICMP_ERROR_MISMATCH] == 3


def test_client_cannot_send_an_icmp_error_about_another_clients_flow() -> None:
    nat = make_nat()
    ep = open_udp(nat, C, 40000)
    delivered = udp(SRV, 53, PUB, ep)
    assert inb(nat, delivered) == FORWARD
    err = P.build_icmp_error(CB, SRV, 3, 3, delivered)  # client B quoting client A's packet
    assert out(nat, err) == Drop.ICMP_ERROR_MISMATCH


def test_rfc5508_icmp_error_about_a_remote_the_client_never_sent_to_is_filtered() -> None:
    nat = make_nat()
    ep = open_udp(nat, dport=53)
    forged = udp(PUB, ep, SRV2, 53)
    assert inb(nat, P.build_icmp_error(RTR, PUB, 3, 3, forged)) == Drop.FILTERED


@pytest.mark.parametrize("quote_len", [0, 10, 20, 27])
def test_icmp_error_with_a_quote_shorter_than_header_plus_8_is_truncated(quote_len: int) -> None:
    nat = make_nat()
    ep = open_udp(nat)
    sent = udp(PUB, ep, SRV, 53)
    err = P.build_icmp(SRV, PUB, 3, 3, b"\0" * 4, bytes(sent[:quote_len]))
    assert inb(nat, err) == Drop.TRUNCATED


# ---------------------------------------- fragments (gw.frag)


def _big_udp(
    src: int = C,
    sport: int = 40000,
    dst: int = SRV,
    dport: int = 7,
    n: int = 3000,
    ident: int = 0x4242,
    zero: bool = False,
) -> bytearray:
    return P.build_udp(
        src, dst, sport, dport, bytes(i % 251 for i in range(n)), ident=ident, zero_checksum=zero
    )


def test_fragments_outbound_in_order_all_get_the_public_source() -> None:
    nat = make_nat()
    original = _big_udp()
    frags = fragment(original, 1480)
    assert [out(nat, f) for f in frags] == [FORWARD] * 3
    assert all(endpoints(f)[0] == PUBLIC for f in frags)
    whole = reassemble(frags)
    assert endpoints(whole)[0::2] == (PUBLIC, SERVER)
    assert verify(whole).data.data == original[28:]  # verify(): the UDP checksum over the whole datagram


@pytest.mark.parametrize(
    "order", [(2, 1, 0), (1, 2, 0), (2, 0, 1)], ids=["reversed", "tail-first", "last-first"]
)
def test_fragments_outbound_out_of_order_are_held_then_released_translated(order: tuple) -> None:
    nat = make_nat()
    frags = fragment(_big_udp(), 1480)
    verdicts = {}
    for i in order:
        verdicts[i] = out(nat, frags[i])
        if i == 0:
            break
    early = [i for i in order[: order.index(0)]]
    assert all(verdicts[i] == Drop.HELD for i in early)
    assert verdicts[0] == FORWARD
    released = nat.released_outbound
    assert len(released) == len(early)
    for i in order[order.index(0) + 1 :]:
        assert out(nat, frags[i]) == FORWARD
    assert all(endpoints(p)[0] == PUBLIC for p in released)
    whole = reassemble([frags[0], *released, *(frags[i] for i in order[order.index(0) + 1 :])])
    verify(whole)
    assert nat.drops[Drop.FRAGMENT] == 0


def test_fragments_inbound_in_and_out_of_order() -> None:
    nat = make_nat()
    ep = open_udp(nat, dport=7)
    reply = _big_udp(SRV, 7, PUB, ep, n=3000, ident=0x77)
    frags = fragment(reply, 1256)
    assert inb(nat, frags[2]) == Drop.HELD
    assert inb(nat, frags[0]) == FORWARD
    assert inb(nat, frags[1]) == FORWARD
    released = nat.released_inbound
    assert len(released) == 1
    whole = reassemble([frags[0], frags[1], *released])
    assert endpoints(whole) == (SERVER, 7, CLIENT, 40000)
    verify(whole)


def test_a_finished_datagram_is_forgotten_so_a_later_one_reusing_its_ip_id_cannot_borrow_its_mapping() -> (
    None
):
    nat = make_nat()
    first = fragment(_big_udp(sport=40000, ident=0x99), 1480)
    assert [out(nat, f) for f in first] == [FORWARD] * 3  # all of it went through: the entry is gone
    second = fragment(_big_udp(sport=40001, ident=0x99), 1480)  # same src, dst, protocol and IP ID
    assert out(nat, second[2]) == Drop.HELD  # not rewritten with the first datagram's mapping
    assert out(nat, second[0]) == FORWARD
    [released] = nat.released_outbound
    assert nat.released_inbound == [] and endpoints(released)[0] == PUBLIC
    assert out(nat, second[1]) == FORWARD
    verify(reassemble([second[0], second[1], released]))


def test_a_later_fragment_of_a_mapping_that_ended_meanwhile_is_dropped_not_delivered() -> None:
    nat = make_nat()
    nat.open_session(T0, session=7, client="alice", vpn_addr=C)
    frags = fragment(_big_udp(), 1480)
    assert out(nat, frags[0], at(0)) == FORWARD
    nat.close_session(at(1), 7, "client_left")  # within the fragment timeout
    assert nat.lookup_internal(UDP, C, 40000) is None
    assert out(nat, frags[1], at(1)) == Drop.FRAGMENT
    assert nat.drops[Drop.FRAGMENT] == 1


def test_next_deadline_covers_held_fragments() -> None:
    nat = make_nat()
    assert nat.next_deadline() is None
    assert out(nat, fragment(_big_udp(), 1480)[2], at(0)) == Drop.HELD
    assert nat.next_deadline() == at(30)  # fragment_timeout_s: expire must run then to drop it


def test_fragments_of_a_zero_checksum_udp_datagram_keep_checksum_zero() -> None:
    nat = make_nat()
    frags = fragment(_big_udp(zero=True), 1480)
    assert [out(nat, f) for f in frags] == [FORWARD] * 3
    assert reassemble(frags)[26:28] == b"\0\0"


def test_fragment_memory_is_bounded_per_source_and_in_total() -> None:
    nat = make_nat(fragment_max_bytes=100_000, fragment_max_bytes_per_source=65535)
    held = {}
    for client in (C, CB):
        held[client] = 0
        for ident in range(50):
            tail = fragment(_big_udp(client, ident=ident), 1480)[1]  # 1500 bytes, held
            v = out(nat, tail)
            held[client] += v == Drop.HELD
            assert v in (Drop.HELD, Drop.FRAGMENT)
    assert held[C] == 43  # its share: 43 * 1500 <= 65535 < 44 * 1500
    assert held[CB] == 23  # what the whole table has left: 64500 + 23 * 1500 <= 100000
    assert nat.drops[Drop.FRAGMENT] == 100 - 43 - 23


def test_fragment_datagrams_are_bounded_and_evicted_held_fragments_are_counted() -> None:
    nat = make_nat(fragment_max_datagrams=2)
    tails = [fragment(_big_udp(ident=i), 1480)[2] for i in range(3)]
    assert [out(nat, t) for t in tails] == [Drop.HELD] * 3  # the third evicts the oldest datagram
    assert nat.drops[Drop.FRAGMENT] == 1
    first = fragment(_big_udp(ident=0), 1480)[0]
    assert out(nat, first) == FORWARD
    assert nat.released_outbound == nat.released_inbound == []  # its held tail was the one evicted


def test_held_fragments_expire_after_fragment_timeout_and_are_counted() -> None:
    clock = Clock(T0)
    nat = make_nat(fragment_timeout_s=30)
    frags = fragment(_big_udp(), 1480)
    assert out(nat, frags[1], clock.now) == Drop.HELD and out(nat, frags[2], clock.now) == Drop.HELD
    nat.expire(clock.advance(29))
    assert nat.drops[Drop.FRAGMENT] == 0
    nat.expire(clock.advance(2))
    assert nat.drops[Drop.FRAGMENT] == 2
    assert out(nat, frags[0], clock.now) == FORWARD
    assert nat.released_outbound == nat.released_inbound == []


def test_fragments_of_a_filtered_datagram_are_not_released() -> None:
    nat = make_nat()
    ep = open_udp(nat, dport=7)
    frags = fragment(_big_udp(SRV2, 7, PUB, ep), 1480)  # a stranger
    assert inb(nat, frags[1]) == Drop.HELD
    assert inb(nat, frags[0]) == Drop.FILTERED
    assert nat.released_outbound == nat.released_inbound == []


# ---------------------------------------- timeouts and expiry


TIMEOUTS = [
    ("udp 300 s (RFC 4787 REQ-5)", lambda n: open_udp(n), UDP, 300, {}),
    ("udp configured 600 s", lambda n: open_udp(n), UDP, 600, {"udp_timeout_s": 600}),
    ("tcp established 7440 s (RFC 5382 REQ-5)", lambda n: open_tcp(n), TCP, 7440, {}),
    (
        "tcp established configured 9000 s",
        lambda n: open_tcp(n),
        TCP,
        9000,
        {"tcp_established_timeout_s": 9000},
    ),
    ("tcp transitory 240 s (RFC 5382 REQ-5)", lambda n: out(n, tcp(C, 40000, SRV, 80, SYN)), TCP, 240, {}),
    (
        "tcp transitory configured 400 s",
        lambda n: out(n, tcp(C, 40000, SRV, 80, SYN)),
        TCP,
        400,
        {"tcp_transitory_timeout_s": 400},
    ),
    ("icmp 60 s (RFC 5508 REQ-1)", lambda n: out(n, ping(C, SRV, 40000)), ICMP, 60, {}),
    ("icmp configured 90 s", lambda n: out(n, ping(C, SRV, 40000)), ICMP, 90, {"icmp_timeout_s": 90}),
]


@pytest.mark.parametrize(
    ("setup", "proto", "timeout", "cfg"), [t[1:] for t in TIMEOUTS], ids=[t[0] for t in TIMEOUTS]
)
def test_idle_mapping_expires_after_its_protocol_timeout_and_not_before(
    setup, proto: int, timeout: int, cfg: dict
) -> None:
    nat = make_nat(**cfg)
    setup(nat)
    nat.expire(at(timeout - 1))
    assert nat.lookup_internal(proto, C, 40000) is not None
    assert nat.next_deadline() is not None and nat.next_deadline() <= at(timeout + 1)
    nat.expire(at(timeout + 1))
    assert nat.lookup_internal(proto, C, 40000) is None
    [gone] = events(nat, MappingExpired)
    assert (gone.proto, gone.reason) == (proto, "idle")


def test_rfc4787_req6_outbound_packets_refresh_a_mapping() -> None:
    nat = make_nat()
    open_udp(nat)
    assert out(nat, udp(C, 40000, SRV, 53), at(200)) == FORWARD
    nat.expire(at(450))
    assert len(nat) == 1
    nat.expire(at(501))
    assert len(nat) == 0


def test_rfc4787_req6_inbound_packets_do_not_refresh_a_mapping() -> None:
    nat = make_nat()
    ep = open_udp(nat)
    for t in (100, 200, 299):
        assert inb(nat, udp(SRV, 53, PUB, ep), at(t)) == FORWARD
    nat.expire(at(301))
    assert len(nat) == 0


def test_mapping_expired_carries_reason_and_packet_and_byte_counters_each_way() -> None:
    nat = make_nat()
    p1, p2 = udp(C, 40000, SRV, 53, b"a" * 10), udp(C, 40000, SRV, 53, b"b" * 100)
    n1, n2 = len(p1), len(p2)
    assert out(nat, p1) == FORWARD and out(nat, p2) == FORWARD
    reply = udp(SRV, 53, PUB, endpoints(p1)[1], b"c" * 50)
    n3 = len(reply)
    assert inb(nat, reply) == FORWARD
    nat.expire(at(301))
    [gone] = events(nat, MappingExpired)
    assert (gone.reason, gone.packets_out, gone.bytes_out, gone.packets_in, gone.bytes_in) == (
        "idle",
        2,
        n1 + n2,
        1,
        n3,
    )
    assert (gone.ext_addr, gone.ext_port, gone.proto) == (PUB, endpoints(p1)[1], UDP)


def test_expire_with_nothing_due_emits_nothing() -> None:
    nat = make_nat()
    open_udp(nat)
    nat.expire(at(10))
    nat.expire(at(10))
    assert events(nat, MappingExpired) == []
    assert make_nat().next_deadline() is None


# ---------------------------------------- ports (RFC 4787 REQ-2/3, 6056, 6888)


def test_rfc6056_external_ports_are_random_within_port_range() -> None:
    nat = make_nat(port_range="20000-29999")
    ports = [open_udp(nat, C, 40000 + i) for i in range(60)]
    assert all(20000 <= p <= 29999 for p in ports)
    assert len(set(ports)) == 60
    assert ports != sorted(ports)
    assert sum(abs(a - b) == 1 for a, b in zip(ports, ports[1:], strict=False)) < 5  # not sequential
    other = make_nat(seed=8, port_range="20000-29999")
    assert [open_udp(other, C, 40000 + i) for i in range(60)] != ports  # drawn from the rng it was given


@pytest.mark.parametrize(
    ("sport", "low"), [(1, True), (123, True), (1023, True), (1024, False), (65535, False)]
)
def test_rfc4787_req3_source_port_below_1024_maps_below_1024(sport: int, low: bool) -> None:
    nat = make_nat(port_range="30000-30999")
    ep = open_udp(nat, C, sport)
    assert (1 <= ep <= 1023) if low else (30000 <= ep <= 30999)


def test_rfc4787_req2_paired_pooling_one_client_one_public_address_new_clients_balanced() -> None:
    nat = make_nat(external_addresses=[PUBLIC, PUBLIC_2])
    clients = [C, CB, CC, CD]
    used: dict[int, set[str]] = {c: set() for c in clients}
    for c in clients:
        for sport in (40000, 40001, 40002):
            pkt = udp(c, sport, SRV, 53)
            assert out(nat, pkt) == FORWARD
            used[c].add(endpoints(pkt)[0])
        syn = tcp(c, 41000, SRV2, 80, SYN)
        assert out(nat, syn) == FORWARD
        used[c].add(endpoints(syn)[0])
        echo = ping(c, SRV, 9)
        assert out(nat, echo) == FORWARD
        used[c].add(endpoints(echo)[0])
    assert all(len(addrs) == 1 for addrs in used.values())
    per_address = sorted(sum(addrs == {a} for addrs in used.values()) for a in (PUBLIC, PUBLIC_2))
    assert per_address == [2, 2]


def test_never_two_mappings_on_one_external_endpoint_and_ports_exhausted_when_the_range_is_full() -> None:
    nat = make_nat(port_range="30000-30009")
    eps = set()
    for i in range(10):
        pkt = udp((C, CB)[i % 2], 40000 + i, SRV, 53)
        assert out(nat, pkt) == FORWARD
        eps.add(endpoints(pkt)[:2])
    assert len(eps) == 10
    assert out(nat, udp(CC, 40000, SRV, 53)) == Drop.PORTS_EXHAUSTED
    assert nat.drops[Drop.PORTS_EXHAUSTED] == 1 and len(nat) == 10
    assert out(nat, tcp(CC, 40000, SRV, 80, SYN)) == FORWARD  # TCP ports are a separate space
    assert out(nat, ping(CC, SRV, 40000)) == FORWARD  # and so are ICMP identifiers


def test_rfc7857_freed_port_rests_port_reuse_delay_before_anyone_gets_it() -> None:
    nat = make_nat(port_range="30000-30000")
    assert open_udp(nat, C, 40000) == 30000
    nat.expire(at(301))
    assert len(nat) == 0 and nat.is_resting(UDP, PUB, 30000, at(301))
    assert out(nat, udp(CB, 50000, SRV, 53), at(302)) == Drop.PORTS_EXHAUSTED
    assert out(nat, udp(CB, 50000, SRV, 53), at(301 + 119)) == Drop.PORTS_EXHAUSTED
    nat.expire(at(301 + 121))
    assert not nat.is_resting(UDP, PUB, 30000, at(301 + 121))
    assert open_udp(nat, CB, 50000, now=at(301 + 121)) == 30000


def test_port_reuse_delay_0_reuses_at_once() -> None:
    nat = make_nat(port_range="30000-30000", port_reuse_delay_s=0)
    open_udp(nat, C, 40000)
    nat.expire(at(301))
    assert open_udp(nat, CB, 50000, now=at(301)) == 30000


def test_rfc6888_req4_quota_refuses_new_flows_never_evicts_and_emits_quota_hit_once() -> None:
    nat = make_nat(max_mappings_per_client=3)
    nat.open_session(T0, session=4, client="carol", vpn_addr=C)
    eps = [open_udp(nat, C, 40000), open_udp(nat, C, 40001)]
    assert out(nat, tcp(C, 40002, SRV, 80, SYN)) == FORWARD  # quota counts every protocol
    for attempt in range(5):
        assert out(nat, udp(C, 50000 + attempt, SRV, 53), at(1)) == Drop.QUOTA
    assert out(nat, ping(C, SRV, 7), at(1)) == Drop.QUOTA
    [hit] = events(nat, QuotaHit)
    assert (hit.proto, hit.int_addr, hit.int_port, hit.quota, hit.client, hit.session) == (
        UDP,
        C,
        50000,
        3,
        "carol",
        4,
    )
    assert nat.drops[Drop.QUOTA] == 6 and nat.client_mapping_count(C) == 3
    for i, ep in enumerate(eps):  # nothing was evicted: the old flows still work both ways
        assert out(nat, udp(C, 40000 + i, SRV, 53), at(2)) == FORWARD
        assert inb(nat, udp(SRV, 53, PUB, ep), at(2)) == FORWARD
    assert open_udp(nat, CB, 40000, now=at(2)) > 0  # another client is not affected


def test_rfc6888_quota_hit_is_emitted_again_after_the_client_dropped_below() -> None:
    nat = make_nat(max_mappings_per_client=2)
    open_udp(nat, C, 40000)
    open_udp(nat, C, 40001)
    assert out(nat, udp(C, 40002, SRV, 53)) == Drop.QUOTA
    assert out(nat, udp(C, 40001, SRV, 53), at(200)) == FORWARD  # keep 40001 alive
    nat.expire(at(301))  # 40000 ends
    assert nat.client_mapping_count(C) == 1
    assert open_udp(nat, C, 40002, now=at(302)) > 0
    assert out(nat, udp(C, 40003, SRV, 53), at(303)) == Drop.QUOTA
    assert out(nat, udp(C, 40004, SRV, 53), at(303)) == Drop.QUOTA
    assert len(events(nat, QuotaHit)) == 2


# ---------------------------------------- hairpinning (RFC 4787 REQ-9, 5382 REQ-8)


def test_rfc4787_req9_hairpin_udp_reaches_the_other_client_from_the_senders_public_endpoint() -> None:
    nat = make_nat(filtering="endpoint-independent")
    eb = open_udp(nat, CB, 5000, SRV, 3478)  # B learned its public endpoint from a STUN server
    pkt = udp(C, 4000, PUB, eb, b"hello B")
    assert out(nat, pkt) == HAIRPIN
    ea = nat.lookup_internal(UDP, C, 4000).ext_port
    assert endpoints(pkt) == (PUBLIC, ea, CLIENT_B, 5000)
    back = udp(CB, 5000, PUB, ea, b"hello A")
    assert out(nat, back) == HAIRPIN
    assert endpoints(back) == (PUBLIC, eb, CLIENT, 4000)


def test_rfc4787_req9_hairpin_under_default_filtering_needs_both_sides_to_have_sent() -> None:
    nat = make_nat()
    ea = open_udp(nat, C, 4000, SRV, 3478)
    eb = open_udp(nat, CB, 5000, SRV, 3478)
    assert out(nat, udp(CB, 5000, PUB, ea)) == Drop.FILTERED  # A never sent to B's public endpoint
    pkt = udp(C, 4000, PUB, eb)  # A punches: B did send to A's public endpoint just now
    assert out(nat, pkt) == HAIRPIN
    assert endpoints(pkt) == (PUBLIC, ea, CLIENT_B, 5000)
    again = udp(CB, 5000, PUB, ea)
    assert out(nat, again) == HAIRPIN
    assert endpoints(again) == (PUBLIC, eb, CLIENT, 4000)


def test_rfc5382_req8_hairpin_tcp_syn_is_a_simultaneous_open_for_the_listener() -> None:
    nat = make_nat(filtering="endpoint-independent")
    syn_b = tcp(CB, 5000, SRV, 80, SYN)
    assert out(nat, syn_b) == FORWARD
    eb = endpoints(syn_b)[1]
    syn_a = tcp(C, 4000, PUB, eb, SYN)
    assert out(nat, syn_a) == HAIRPIN
    assert endpoints(syn_a)[2:] == (CLIENT_B, 5000)
    assert nat.lookup_internal(TCP, CB, 5000).state == TcpState.ESTABLISHED


# ---------------------------------------- RFC 768: UDP checksum 0


def test_rfc768_udp_checksum_zero_stays_zero_both_ways_on_new_and_known_mappings() -> None:
    nat = make_nat()
    for i in range(3):  # the first creates the mapping (general path), the rest ride the known mapping
        pkt = udp(C, 40000, SRV, 53, b"n%d" % i, zero_checksum=True)
        assert out(nat, pkt) == FORWARD
        assert pkt[26:28] == b"\0\0" and endpoints(pkt)[0] == PUBLIC
        reply = udp(SRV, 53, PUB, endpoints(pkt)[1], b"r%d" % i, zero_checksum=True)
        assert inb(nat, reply) == FORWARD
        assert reply[26:28] == b"\0\0" and endpoints(reply)[2:] == (CLIENT, 40000)


def test_rfc768_udp_checksum_zero_stays_zero_in_a_hairpin() -> None:
    nat = make_nat(filtering="endpoint-independent")
    eb = open_udp(nat, CB, 5000)
    pkt = udp(C, 4000, PUB, eb, zero_checksum=True)
    assert out(nat, pkt) == HAIRPIN
    assert pkt[26:28] == b"\0\0"


# ---------------------------------------- bad input: a counted Drop, never a raise


def _fix_ip(pkt: bytearray) -> bytearray:
    hl = (pkt[0] & 15) * 4
    struct.pack_into("!H", pkt, 10, 0)
    struct.pack_into("!H", pkt, 10, P.checksum(pkt, 0, hl))
    return pkt


def _set(pkt: bytearray, off: int, fmt: str, value: int, fix: bool = True) -> bytearray:
    pkt = bytearray(pkt)
    struct.pack_into(fmt, pkt, off, value)
    return _fix_ip(pkt) if fix else pkt


def _bad_cases(src: int, dst: int) -> list[tuple[str, bytearray, int]]:
    good = udp(src, 40000, dst, 53, b"0123456789")
    good_tcp = tcp(src, 40000, dst, 80, ACK)
    return [
        ("empty", bytearray(), Drop.TRUNCATED),
        ("cut inside the IPv4 header", good[:12], Drop.TRUNCATED),
        ("IPv6 version", _set(good, 0, "!B", 0x60), Drop.BAD_VERSION),
        ("IHL 4", _set(good, 0, "!B", 0x44), Drop.BAD_VERSION),
        ("IHL past the buffer", _set(good[:30], 0, "!B", 0x4F, fix=False), Drop.TRUNCATED),
        ("total length larger than the buffer", _set(good, 2, "!H", 200), Drop.BAD_LENGTH),
        ("total length below the header", _set(good, 2, "!H", 12), Drop.BAD_LENGTH),
        ("buffer cut short of its total length", good[:30], Drop.BAD_LENGTH),
        (
            "bad header checksum",
            _set(good, 10, "!H", P.get_u16(good, 10)[0] ^ 0x0100, fix=False),
            Drop.BAD_CHECKSUM,
        ),
        ("UDP header cut (total 24)", _fix_ip(_set(good[:24], 2, "!H", 24)), Drop.TRUNCATED),
        ("TCP header cut (total 32)", _fix_ip(_set(good_tcp[:32], 2, "!H", 32)), Drop.TRUNCATED),
        ("ICMP header cut (total 24)", _fix_ip(_set(ping(src, dst, 1)[:24], 2, "!H", 24)), Drop.TRUNCATED),
        ("protocol 47 (GRE)", _set(good, 9, "!B", 47), Drop.UNSUPPORTED),
    ]


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_bad_input_is_a_counted_drop_with_the_right_reason(direction: str) -> None:
    for name, pkt, reason in _bad_cases(C, SRV) if direction == "outbound" else _bad_cases(SRV, PUB):
        nat = make_nat()
        translate = nat.translate_outbound if direction == "outbound" else nat.translate_inbound
        assert translate(bytearray(pkt), T0) == reason, name
        assert nat.drops[reason] == 1 and sum(nat.drops) == 1, name
        assert nat.events == [] and len(nat) == 0, name


def test_link_padding_past_total_length_is_left_alone_and_the_packet_translated() -> None:
    nat = make_nat()
    pkt = udp(C, 40000, SRV, 53) + b"\xee" * 6
    assert nat.translate_outbound(pkt, T0) == FORWARD
    assert len(pkt) == 38 and pkt[32:] == b"\xee" * 6  # the caller sends total-length bytes
    verify(pkt[:32])
    assert endpoints(pkt[:32])[0] == PUBLIC


def _valid_packets(nat: Nat) -> list[tuple[bool, bytearray]]:
    ep = open_udp(nat)
    et = open_tcp(nat)
    echo = ping(C, SRV, 3)
    out(nat, echo)
    sent = udp(C, 40000, SRV, 53)
    out(nat, sent)
    return [
        (True, udp(C, 40000, SRV, 53, b"abcdefgh")),
        (True, tcp(C, 40000, SRV, 80, SYN, options=P.mss_option(1460))),
        (True, ping(C, SRV, 3)),
        (True, P.build_icmp_error(C, SRV, 3, 3, udp(SRV, 53, C, 40000))),
        (True, fragment(_big_udp(n=100), 48)[1]),
        (False, udp(SRV, 53, PUB, ep, b"abcdefgh")),
        (False, tcp(SRV, 80, PUB, et, SYN | ACK, options=P.mss_option(1460))),
        (False, pong(SRV, PUB, endpoints(echo)[1])),
        (False, P.build_icmp_error(RTR, PUB, 3, 4, sent, mtu=1280)),
        (False, P.build_icmp_error(RTR, PUB, 11, 0, tcp(PUB, et, SRV, 80, ACK))),
    ]


def test_random_bytes_and_mutated_packets_are_verdicts_never_exceptions() -> None:
    rng = random.Random(20240601)
    valid = set(Drop) | {FORWARD, HAIRPIN}
    nat = make_nat(port_range="2000-2100")
    cases = _valid_packets(nat)
    for n in range(2000):
        if n % 2:
            outbound = bool(rng.getrandbits(1))
            buf = bytearray(rng.randbytes(rng.randrange(0, 90)))
            if len(buf) >= 20 and rng.random() < 0.7:  # make many of them pass the header check
                buf[0] = 0x45
                struct.pack_into("!H", buf, 2, len(buf))
                _fix_ip(buf)
        else:
            outbound, base = rng.choice(cases)
            buf = bytearray(base)
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            if rng.random() < 0.3:
                del buf[rng.randrange(len(buf)) :]
            if len(buf) >= 20 and rng.random() < 0.8:
                struct.pack_into("!H", buf, 2, len(buf))
                if buf[0] >> 4 == 4 and (buf[0] & 15) * 4 <= len(buf):
                    _fix_ip(buf)
        before = sum(nat.drops)
        v = (nat.translate_outbound if outbound else nat.translate_inbound)(buf, at(n / 1000))
        assert v in valid, (outbound, bytes(buf).hex())
        if v not in (FORWARD, HAIRPIN):
            assert sum(nat.drops) == before + 1, (v, bytes(buf).hex())
    nat.expire(at(10_000))  # and the table is still sound enough to age out


# ---------------------------------------- journal: fold, snapshot, sessions, seq


def _traffic(nat: Nat, t: float) -> None:
    """A varied slice of traffic: UDP, TCP open/close, ICMP, an inbound reply, an error."""
    for i, c in enumerate((C, CB, CC)):
        ep = open_udp(nat, c, 40000 + int(t), SRV, 53, now=at(t))
        assert inb(nat, udp(SRV, 53, PUB, ep), at(t)) == FORWARD
        assert out(nat, ping(c, SRV2, 100 + i), at(t)) == FORWARD
    syn = tcp(C, 41000 + int(t), SRV, 443, SYN)
    assert out(nat, syn, at(t)) == FORWARD
    et = endpoints(syn)[1]
    assert inb(nat, tcp(SRV, 443, PUB, et, SYN | ACK), at(t)) == FORWARD
    assert out(nat, tcp(C, 41000 + int(t), SRV, 443, FIN | ACK), at(t)) == FORWARD
    assert inb(nat, tcp(SRV, 443, PUB, et, FIN | ACK), at(t)) == FORWARD


def _live(**cfg: object) -> Nat:
    nat = make_nat(**cfg)
    nat.record_event(GatewayStarted, T0, version="test", ext_addrs=list(nat.ext_addrs))
    nat.open_session(
        T0,
        session=1,
        client="alice",
        vpn_addr=C,
        fingerprint="aa" * 32,
        remote_addr="192.0.2.1",
        remote_port=50001,
    )
    nat.open_session(T0, session=2, client="bob", vpn_addr=CB)
    _traffic(nat, 0)
    _traffic(nat, 100)
    nat.expire(at(341))  # the t=0 TCP connection (closed) and ICMP are gone; t=0 UDP is gone too
    _traffic(nat, 350)
    nat.close_session(at(360), 2, "client_left", packets_in=5)
    return nat


def test_fold_a_fresh_nat_applying_every_event_has_the_live_table() -> None:
    live = _live()
    assert events(live, MappingExpired) and events(live, SessionClosed)
    fresh = Nat(live.config, random.Random(99))
    for e in live.events:
        fresh.apply(e)
    assert fresh.table_state() == live.table_state()
    assert len(fresh) == len(live)


def test_fold_after_decoding_the_events_through_msgpack_has_the_live_table() -> None:
    from journal.events import DECODER, ENCODER

    live = _live()
    decoded = DECODER.decode(ENCODER.encode(live.events))
    assert Nat.restore(live.config, None, decoded).table_state() == live.table_state()


def test_snapshot_then_later_events_restore_the_live_table() -> None:
    live = _live()
    snap = live.snapshot_view(at(360)).build()
    snap = msgspec.msgpack.decode(msgspec.msgpack.encode(snap), type=Snapshot)
    _traffic(live, 370)
    live.close_session(at(380), 1, "client_left")
    later = [e for e in live.events if e.seq > snap.upto_seq]
    assert later
    restored = Nat.restore(live.config, snap, later, rng=random.Random(5))
    assert restored.table_state() == live.table_state()


def test_restored_table_keeps_translating_to_the_same_external_ports() -> None:
    live = make_nat()
    ep = open_udp(live, C, 40000)
    restored = Nat.restore(live.config, live.snapshot_view(at(1)).build(), [], rng=random.Random(1))
    pkt = udp(C, 40000, SRV, 53)
    assert out(restored, pkt, at(2)) == FORWARD and endpoints(pkt)[1] == ep
    reply = udp(SRV, 53, PUB, ep)
    assert inb(restored, reply, at(2)) == FORWARD  # the snapshot keeps the first remote for filtering
    assert restored.events == []


def test_snapshot_restores_a_client_already_flagged_at_quota() -> None:
    live = make_nat(max_mappings_per_client=1)
    open_udp(live, C, 40000)
    assert out(live, udp(C, 40001, SRV, 53)) == Drop.QUOTA
    restored = Nat.restore(live.config, live.snapshot_view(at(1)).build(), [])
    assert restored.table_state() == live.table_state()
    assert out(restored, udp(C, 40002, SRV, 53), at(2)) == Drop.QUOTA
    assert events(restored, QuotaHit) == []  # QuotaHit is journaled once until the client drops below


def test_fold_equals_live_at_now_after_a_freed_port_finished_resting() -> None:
    live = make_nat()
    open_udp(live)
    live.expire(at(301))
    live.expire(at(301 + 121))  # sweeps the lapsed rest from the live table; a fold never runs expire
    fresh = Nat.restore(live.config, None, live.events)
    assert fresh.table_state(at(301 + 121)) == live.table_state(at(301 + 121))
    assert fresh.table_state(at(301 + 119)) != live.table_state(at(301 + 119))  # the rest mattered until then


def test_sessions_name_their_mappings_and_close_session_expires_them_then_session_closed() -> None:
    nat = make_nat()
    nat.open_session(T0, session=7, client="alice", vpn_addr=C)
    ea = open_udp(nat, C, 40000)
    assert out(nat, tcp(C, 40001, SRV, 80, SYN)) == FORWARD
    open_udp(nat, CB, 40000)  # no session: anonymous
    created = events(nat, MappingCreated)
    assert [(e.client, e.session) for e in created] == [("alice", 7), ("alice", 7), ("", 0)]
    before = len(nat.events)
    nat.close_session(at(5), 7, "client_left", packets_in=3, bytes_in=300)
    tail = nat.events[before:]
    assert [type(e) for e in tail] == [MappingExpired, MappingExpired, SessionClosed]
    assert all(e.reason == "session_closed" for e in tail[:2])
    assert (tail[2].session, tail[2].client, tail[2].reason, tail[2].packets_in) == (
        7,
        "alice",
        "client_left",
        3,
    )
    assert nat.lookup_internal(UDP, C, 40000) is None and nat.lookup_internal(TCP, C, 40001) is None
    assert nat.lookup_internal(UDP, CB, 40000) is not None
    assert nat.is_resting(UDP, PUB, ea, at(6))
    n = len(nat.events)
    nat.close_session(at(6), 7, "again")  # unknown or already closed: nothing happens
    assert len(nat.events) == n


def test_closing_a_dead_session_keeps_the_flows_of_the_same_client_reconnected_on_its_address() -> None:
    # alice reconnected (session 8) before the gateway noticed session 7 was dead: her sockets go on
    nat = make_nat()
    nat.open_session(T0, session=7, client="alice", vpn_addr=C)
    port = open_udp(nat, C, 40000)
    nat.open_session(at(1), session=8, client="alice", vpn_addr=C)
    nat.close_session(at(2), 7, "dead_peer")
    assert events(nat, MappingExpired) == []
    assert nat.lookup_internal(UDP, C, 40000).ext_port == port
    nat.close_session(at(3), 8, "client_left")  # when the address is let go, the leftovers end too
    assert [e.ext_port for e in events(nat, MappingExpired)] == [port]


def test_closing_a_dead_session_ends_its_mappings_when_another_client_now_holds_the_address() -> None:
    nat = make_nat()
    nat.open_session(T0, session=7, client="alice", vpn_addr=C)
    open_udp(nat, C, 40000)
    nat.open_session(at(1), session=8, client="bob", vpn_addr=C)  # the address went to bob
    assert out(nat, udp(C, 40001, SRV, 53), at(1)) == FORWARD
    nat.close_session(at(2), 7, "dead_peer")
    assert nat.lookup_internal(UDP, C, 40000) is None  # alice's flow must not run on as bob's
    kept = nat.lookup_internal(UDP, C, 40001)
    assert kept is not None and kept.session == 8


def test_every_event_seq_is_gap_free_starting_at_1() -> None:
    nat = _live(max_mappings_per_client=8)
    for i in range(10):
        out(nat, udp(CC, 45000 + i, SRV, 53), at(361))  # reaches the quota: a QuotaHit among them
    kinds = {type(e) for e in nat.events}
    assert {GatewayStarted, SessionOpened, MappingCreated, MappingExpired, SessionClosed, QuotaHit} <= kinds
    assert [e.seq for e in nat.events] == list(range(1, len(nat.events) + 1))
    assert nat.next_seq == len(nat.events) + 1


def test_log_destination_records_the_first_remote_in_mapping_created() -> None:
    quiet, logged = make_nat(), make_nat(log_destination=True)
    open_udp(quiet, dport=53)
    open_udp(logged, dport=53)
    q, l = events(quiet, MappingCreated)[0], events(logged, MappingCreated)[0]
    assert (q.remote_addr, q.remote_port) == (0, 0)
    assert (l.remote_addr, l.remote_port) == (SRV, 53)


# ---------------------------------------- fast path == general path


def _twins(**cfg: object) -> tuple[Nat, Nat]:
    a, b = make_nat(seed=11, **cfg), make_nat(seed=11, **cfg)
    for nat in (a, b):
        for c in (C, CB):
            open_udp(nat, c, 40000)
            open_udp(nat, c, 40001, SRV2, 123)
            open_tcp(nat, c, 41000)
    assert a.table_state() == b.table_state()
    return a, b


def _forbid_general(nat: Nat) -> None:
    def boom(pkt: bytearray, now: int) -> int:
        raise AssertionError("this packet should have taken the fast path")

    nat._outbound = boom  # type: ignore[method-assign]
    nat._inbound = boom  # type: ignore[method-assign]


def _fast_path_cases(nat: Nat, rng: random.Random) -> list[tuple[bool, bytearray]]:
    cases = []
    for _ in range(150):
        c = rng.choice((C, CB))
        payload = rng.randbytes(rng.randrange(0, 64))
        kind = rng.randrange(3)
        if kind == 0:
            sport, dst, dport = rng.choice(((40000, SRV, 53), (40001, SRV2, 123)))
            m = nat.lookup_internal(UDP, c, sport)
            zero = rng.random() < 0.2
            cases.append(
                (True, udp(c, sport, dst, dport, payload, zero_checksum=zero, ident=rng.randrange(65536)))
            )
            cases.append((False, udp(dst, dport, m.ext_addr, m.ext_port, payload, zero_checksum=zero)))
        else:
            m = nat.lookup_internal(TCP, c, 41000)
            flags = rng.choice((ACK, ACK | PSH, 0, P.TCP_PSH))
            seq, ack = rng.getrandbits(32), rng.getrandbits(32)
            cases.append((True, tcp(c, 41000, SRV, 80, flags, seq=seq, ack=ack, payload=payload)))
            cases.append(
                (False, tcp(SRV, 80, m.ext_addr, m.ext_port, flags, seq=seq, ack=ack, payload=payload))
            )
    return cases


def _udp_summing_to_negative_zero(nat: Nat, c: int, outbound: bool) -> bytearray:
    """A datagram whose checksum after translation computes to 0, so it must be sent as 0xffff (RFC 768)."""
    m = nat.lookup_internal(UDP, c, 40000)
    if outbound:
        after = udp(m.ext_addr, m.ext_port, SRV, 53, b"\0\0")
    else:
        after = udp(SRV, 53, c, 40000, b"\0\0")
    s = ~P.get_u16(after, 26)[0] & 0xFFFF
    word = struct.pack("!H", (0xFFFF - s) % 0xFFFF or 0xFFFF)
    return udp(c, 40000, SRV, 53, word) if outbound else udp(SRV, 53, m.ext_addr, m.ext_port, word)


def test_fast_path_and_general_path_translate_to_identical_bytes_and_state() -> None:
    fast, general = _twins()
    _forbid_general(fast)
    rng = random.Random(3)
    cases = _fast_path_cases(general, rng)
    cases += [(True, _udp_summing_to_negative_zero(general, c, True)) for c in (C, CB)]
    cases += [(False, _udp_summing_to_negative_zero(general, c, False)) for c in (C, CB)]
    for i, (outbound, pkt) in enumerate(cases):
        a, b = bytearray(pkt), bytearray(pkt)
        now = at(i / 100)
        if outbound:
            va, vb = fast.translate_outbound(a, now), general._outbound(b, now)
        else:
            va, vb = fast.translate_inbound(a, now), general._inbound(b, now)
        assert (va, a.hex()) == (vb, b.hex()), (outbound, pkt.hex())
        assert va == FORWARD
        verify(a)

    def table(nat: Nat) -> list[tuple]:
        return sorted((m.key, m.ext_key, m.last_seen, m.out, m.inb, m.state) for m in nat.mappings())

    assert table(fast) == table(general)
    assert fast.drops == general.drops


def test_fast_path_udp_checksum_that_computes_to_zero_is_sent_as_ffff() -> None:
    nat = make_nat()
    open_udp(nat)
    pkt = _udp_summing_to_negative_zero(nat, C, True)
    assert nat.translate_outbound(pkt, T0) == FORWARD
    assert pkt[26:28] == b"\xff\xff"
    verify(pkt)
    reply = _udp_summing_to_negative_zero(nat, C, False)
    assert nat.translate_inbound(reply, T0) == FORWARD
    assert reply[26:28] == b"\xff\xff"


@pytest.mark.parametrize("direction", ["outbound", "inbound"])
def test_fast_path_refuses_what_it_must_not_translate_the_same_as_the_general_path(direction: str) -> None:
    """Shapes the fast path hands over: options, padding, bad checksum, fragments, unadmitted remotes."""
    fast, general = _twins()
    m = general.lookup_internal(UDP, C, 40000)
    if direction == "outbound":
        base = [udp(C, 40000, SRV, 53, b"x"), udp(C, 40000, SRV2, 53, b"x"), tcp(C, 41000, SRV, 80, SYN)]
    else:
        mt = general.lookup_internal(TCP, C, 41000)
        base = [
            udp(SRV, 53, m.ext_addr, m.ext_port, b"x"),
            udp(SRV2, 9, m.ext_addr, m.ext_port, b"x"),
            tcp(SRV, 80, mt.ext_addr, mt.ext_port, RST),
        ]
    variants = []
    for pkt in base:
        variants.append(pkt + b"\0\0")  # link padding
        variants.append(_set(pkt, 10, "!H", P.get_u16(pkt, 10)[0] ^ 1, fix=False))  # bad header checksum
        variants.append(_set(pkt, 6, "!H", P.IP_MF))  # a first fragment
        variants.append(pkt)
    variants.append(
        P.build_udp(
            *(C, SRV) if direction == "outbound" else (SRV, m.ext_addr),
            40000,
            53,
            b"o",
            options=b"\x01\x01\x01\x00",
        )
    )
    for i, pkt in enumerate(variants):
        a, b = bytearray(pkt), bytearray(pkt)
        if direction == "outbound":
            va, vb = fast.translate_outbound(a, at(i)), general._outbound(b, at(i))
        else:
            va, vb = fast.translate_inbound(a, at(i)), general._inbound(b, at(i))
        assert (va, a.hex()) == (vb, b.hex()), pkt.hex()
    assert fast.drops == general.drops and fast.table_state() == general.table_state()


# ---------------------------------------- real packets: Linux conntrack as the reference
#
# Each pair is one packet on the client's link (inside.pcap) and the same packet on the public link
# (outside.pcap) of a Linux NAT. A one-port port_range makes us pick the port the kernel kept.


def _h(text: str) -> bytearray:
    return bytearray.fromhex(text.replace(" ", ""))


def _kernel_nat(port: int) -> Nat:
    return make_nat(port_range=f"{port}-{port}")


def test_kernel_vector_udp_out_and_port_unreachable_in_match_linux() -> None:
    nat = _kernel_nat(36670)
    pkt = _h("4500001d c0a74000 4011e6d9 0a424d02 cb00710a 8f3e0009 00096545 78")  # inside #480
    assert out(nat, pkt) == FORWARD
    assert bytes(pkt) == bytes(_h("4500001d c0a74000 3f1114e9 c6336401 cb00710a 8f3e0009 00099254 78"))
    err = _h(
        "45c00039 2a1f0000 3f01eaa5 cb00710a c6336401 03036357 00000000"  # outside #475
        "4500001d c0a74000 3e1115e9 c6336401 cb00710a 8f3e0009 00099254 78"
    )
    assert inb(nat, err) == FORWARD
    assert bytes(err) == bytes(
        _h(
            "45c00039 2a1f0000 3e01be96 cb00710a 0a424d02 03039066 00000000"  # inside #481
            "4500001d c0a74000 3e11e8d9 0a424d02 cb00710a 8f3e0009 00096545 78"
        )
        )


def test_kernel_vector_traceroute_time_exceeded_from_the_router_matches_linux() -> None:
    nat = _kernel_nat(37489)
    probe_payload = "40414243 44454647 48494a4b 4c4d4e4f 50515253 54555657 58595a5b 5c5d5e5f"
    pkt = _h(
        "4500003c e8ba0000 02113ca8 0a424d02 cb00710a 9271829b 0028623d" + probe_payload
    )  # inside #460, ttl 2
    assert out(nat, pkt) == FORWARD
    assert bytes(pkt) == bytes(
        _h("4500003c e8ba0000 01116ab7 c6336401 cb00710a 9271829b 00288f4c" + probe_payload))
    err = _h(
        "45c00058 125e0000 40011221 c63364fe c6336401 0b005b79 00000000"  # outside #457
        "4500003c e8ba0000 01116ab7 c6336401 cb00710a 9271829b 00288f4c" + probe_payload
    )
    assert inb(nat, err) == FORWARD
    assert bytes(err) == bytes(
        _h(
            "45c00058 125e0000 3f01e611 c63364fe 0a424d02 0b008888 00000000"  # inside #461
            "4500003c e8ba0000 01113da8 0a424d02 cb00710a 9271829b 0028623d" + probe_payload
        )
        )


def test_kernel_vector_tcp_syn_synack_and_rst_match_linux() -> None:
    nat = _kernel_nat(39515)
    opts_out = "020404c4 0402080a 8cb1e771 00000000 0103030a"
    syn = _h(
        "4500003c bc124000 4006eb5a 0a424d02 cb00710a 9a5b0035 49946ab6 00000000 a002fc94 f60a0000" + opts_out
    )
    assert out(nat, syn) == FORWARD
    assert bytes(syn) == bytes(
        _h(
            "4500003c bc124000 3f06196a c6336401 cb00710a 9a5b0035 49946ab6 00000000"
            "a002fc94 231a0000" + opts_out
        )
        )
    opts_in = "020404d8 0402080a ce3202f8 8cb1e771 0103030a"
    synack = _h(
        "4500003c 00004000 3f06d57c cb00710a c6336401 00359a5b dd4ec5a6 49946ab7 a012fe3c ad2c0000" + opts_in
    )
    assert inb(nat, synack) == FORWARD
    assert bytes(synack) == bytes(
        _h(
            "4500003c 00004000 3e06a96d cb00710a 0a424d02 00359a5b dd4ec5a6 49946ab7"
            "a012fe3c 801d0000" + opts_in
        )
        )
    nat2 = _kernel_nat(43806)
    opts = "020404d8 0402080a a9574a7a 00000000 0103030a"
    syn2 = _h(
        "4500003c 72b34000 400634ba 0a424d02 cb00710a ab1e0051 3b653b0f 00000000 a002fbe0 a3f30000" + opts
    )
    assert out(nat2, syn2) == FORWARD
    assert bytes(syn2) == bytes(
        _h("4500003c 72b34000 3f0662c9 c6336401 cb00710a ab1e0051 3b653b0f 00000000a002fbe0 d1020000" + opts)
        )
    rst = _h("45000028 00004000 3f06d590 cb00710a c6336401 0051ab1e 00000000 3b653b10 50140000 27ac0000")
    assert inb(nat2, rst) == FORWARD
    assert bytes(rst) == bytes(
        _h("45000028 00004000 3e06a981 cb00710a 0a424d02 0051ab1e 00000000 3b653b1050140000 fa9c0000"))


def _ping_payload(n: int, stamp: str) -> bytes:
    return bytes.fromhex(stamp) + bytes((0x10 + i) & 0xFF for i in range(n - 16))


def test_kernel_vector_echo_and_frag_needed_for_a_df_ping_match_linux() -> None:
    nat = _kernel_nat(0x110E)
    body = _ping_payload(1400, "f198036b00000000fe3b060000000000")
    req = bytearray(_h("45000594 00004000 4001a21a 0a424d02 cb00710a 08008294 110e0001") + body)  # inside #12
    assert out(nat, req) == FORWARD
    assert bytes(req) == bytes(
        _h("45000594 00004000 3f01d029 c6336401 cb00710a 08008294 110e0001") + body)
    quote = bytes(req[:548])
    err = _h("45c00240 110f0000 40011188 c63364fe c6336401 03040ec9 00000500") + bytes(
        quote)  # outside #11
    assert inb(nat, err) == FORWARD
    want = (
        _h(
            "45c00240 110f0000 3f01e578 c63364fe 0a424d02 03040ec9 00000500"  # inside #13
            "45000594 00004000 3f01a31a 0a424d02 cb00710a 08008294 110e0001"
        )
        + err[56:]
    )
    assert bytes(err) == bytes(want)


def _but_id(pkt: bytes | bytearray) -> bytes:
    return bytes(pkt[:4]) + bytes(pkt[6:10]) + bytes(pkt[12:])


def test_kernel_vector_fragmented_ping_both_ways_matches_linux_in_order_and_reversed() -> None:
    req = bytes.fromhex("08006e19110c0001") + _ping_payload(3000, "f198036b000000009e27060000000000")
    rep = bytes.fromhex("00007619110c0001") + _ping_payload(3000, "f198036b000000009e27060000000000")

    def frags(headers: list[str], body: bytes) -> list[bytearray]:
        result = []
        for h in headers:
            hb = _h(h)
            off = (struct.unpack_from("!H", hb, 6)[0] & 0x1FFF) * 8
            size = struct.unpack_from("!H", hb, 2)[0] - 20
            result.append(hb + body[off : off + size])
        return result

    inside_req = frags(
        [
            "450005dc f6022000 4001cbcf 0a424d02 cb00710a",
            "450005dc f60220b9 4001cb16 0a424d02 cb00710a",
            "45000044 f6020172 4001eff5 0a424d02 cb00710a",
        ],
        req,
    )
    outside_req = frags(
        [
            "450005dc f6022000 3f01f9de c6336401 cb00710a",
            "450005dc f60220b9 3f01f925 c6336401 cb00710a",
            "45000044 f6020172 3f011e05 c6336401 cb00710a",
        ],
        req,
    )
    outside_rep = frags(
        [
            "450004fc 29392000 3f01c788 cb00710a c6336401",
            "450004fc 2939209d 3f01c6eb cb00710a c6336401",
            "45000204 2939013a 3f01e946 cb00710a c6336401",
        ],
        rep,
    )
    inside_rep = frags(
        [
            "450004fc 29392000 3e019b79 cb00710a 0a424d02",
            "450004fc 2939209d 3e019adc cb00710a 0a424d02",
            "45000204 2939013a 3e01bd37 cb00710a 0a424d02",
        ],
        rep,
    )
    for order in ((0, 1, 2), (2, 1, 0)):
        nat = _kernel_nat(0x110C)
        got_out, got_in = {}, {}
        for i in order:
            pkt = bytearray(inside_req[i])
            if out(nat, pkt) == FORWARD:
                got_out[i] = pkt
        for pkt in nat.released_outbound:
            got_out[[bytes(x[6:8]) for x in inside_req].index(bytes(pkt[6:8]))] = pkt
        for i in order:
            pkt = bytearray(outside_rep[i])
            if inb(nat, pkt) == FORWARD:
                got_in[i] = pkt
        for pkt in nat.released_inbound:
            got_in[[bytes(x[6:8]) for x in outside_rep].index(bytes(pkt[6:8]))] = pkt
        assert len({bytes(got_out[i][4:6]) for i in range(3)}) == 1  # one new IP ID for the datagram
        for i in range(3):  # outbound: all but the IP ID gw chose (and so the header checksum)
            assert _but_id(got_out[i]) == _but_id(outside_req[i]), (order, i)
            assert bytes(got_in[i]) == bytes(inside_rep[i]), (order, i)


def test_resume_after_restore_ends_mappings_that_idled_out_during_the_outage_and_rests_their_ports() -> None:
    live = make_nat()
    ping = P.build_icmp_echo(C, SRV, 0x4242, 1, b"ping")
    assert out(live, ping, at(0)) == FORWARD
    ping_id = live.lookup_internal(ICMP, C, 0x4242).ext_port
    assert out(live, udp(C, 40001, SRV, 53), at(200)) == FORWARD  # the last journaled event: the crash
    udp_port = live.lookup_internal(UDP, C, 40001).ext_port
    restored = Nat.restore(live.config, None, live.events)
    ended = restored.resume(at(300), down_since=at(200))  # ICMP 60 s and UDP 300 s, counted from the crash
    assert ended == 1
    [expired] = events(restored, MappingExpired)
    assert (expired.proto, expired.ext_port, expired.reason) == (ICMP, ping_id, "stale_at_recovery")
    assert expired.at_ns == at(300)
    assert restored.is_resting(ICMP, PUB, ping_id, at(300 + 119))  # 120 s from the restart, not the crash
    assert not restored.is_resting(ICMP, PUB, ping_id, at(300 + 120))
    assert restored.lookup_internal(UDP, C, 40001).ext_port == udp_port  # the live flow keeps its port
    restored.expire(at(499))
    assert restored.lookup_internal(UDP, C, 40001) is not None
    restored.expire(at(500 + 60 + 1))  # idle since the crash: a timeout after it, spread over a minute
    assert restored.lookup_internal(UDP, C, 40001) is None
