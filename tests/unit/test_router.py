"""gw.router: RFC 2827 anti-spoofing, the RFC 6890 deny list, delivery, counters; garbage is a Drop."""

from __future__ import annotations

import random

import pytest

from gw import packet as P
from gw.config import VpnConfig
from gw.nat import FORWARD
from gw.packet import Drop
from gw.router import Route, Router
from tests.helpers.packets import CLIENT, CLIENT_B, PUBLIC, SERVER, VPN_GW, A, make_nat, verify

C, CB = A(CLIENT), A(CLIENT_B)


class Session:
    """An opaque session handle, as the shell would register."""

    def __init__(self, name: str) -> None:
        self.name = name


def make_router(**vpn: object) -> tuple[Router, Session, Session]:
    r = Router(VpnConfig(**vpn))
    a, b = Session("a"), Session("b")
    r.attach(C, a)
    r.attach(CB, b)
    return r, a, b


def from_client(r: Router, dst: str, src: int = C, client: int = C) -> tuple[int, object]:
    return r.route_from_client(P.build_udp(src, A(dst), 40000, 53, b"x"), client)


def test_rfc2827_source_other_than_the_sessions_address_is_spoofed() -> None:
    r, _, _ = make_router()
    for src in (CB, A(VPN_GW), A(PUBLIC), A("10.66.77.200"), A("0.0.0.0")):
        assert from_client(r, SERVER, src=src) == (Drop.SPOOFED, None)
    assert r.counts[Drop.SPOOFED] == 5


def test_rfc2827_spoofing_is_checked_before_the_destination() -> None:
    r, _, _ = make_router()
    assert from_client(r, "127.0.0.1", src=CB) == (Drop.SPOOFED, None)
    assert from_client(r, VPN_GW, src=CB) == (Drop.SPOOFED, None)


DENIED = [
    ("0.0.0.0", "this network, RFC 6890"),
    ("0.255.255.255", "this network, last"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback, last"),
    ("169.254.169.254", "link-local cloud metadata"),
    ("169.254.0.1", "link-local, first"),
    ("224.0.0.1", "multicast all-hosts"),
    ("239.255.255.250", "multicast SSDP"),
    ("255.255.255.255", "limited broadcast"),
    ("10.66.77.255", "the VPN subnet's broadcast"),
    ("10.66.77.0", "the VPN subnet's network address"),
]
ALLOWED_NEIGHBOURS = [
    "1.0.0.0",
    "126.255.255.255",
    "128.0.0.0",
    "169.253.255.255",
    "169.255.0.0",
    "223.255.255.255",
    "10.66.76.255",
    "10.66.78.0",
    SERVER,
]


@pytest.mark.parametrize("dst", [d for d, _ in DENIED], ids=[why for _, why in DENIED])
def test_rfc6890_default_deny_list_and_vpn_broadcast_are_denied(dst: str) -> None:
    r, _, _ = make_router()
    assert from_client(r, dst) == (Drop.DENIED, None)
    assert r.counts[Drop.DENIED] == 1


@pytest.mark.parametrize("dst", ALLOWED_NEIGHBOURS)
def test_addresses_just_outside_the_denied_ranges_go_to_the_nat(dst: str) -> None:
    r, _, _ = make_router()
    assert from_client(r, dst) == (Route.NAT, None)


def test_client_to_client_is_delivered_to_the_session_holding_the_address() -> None:
    r, a, b = make_router()
    assert from_client(r, CLIENT_B) == (Route.CLIENT, b)
    assert r.route_from_client(P.build_udp(CB, C, 1, 2, b"y"), CB) == (Route.CLIENT, a)


def test_gateway_vpn_address_is_local() -> None:
    r, _, _ = make_router()
    assert from_client(r, VPN_GW) == (Route.LOCAL, None)
    assert r.route_from_client(P.build_icmp_echo(C, A(VPN_GW), 1, 1), C) == (Route.LOCAL, None)


def test_a_vpn_address_nobody_holds_is_no_route_and_detach_stops_delivery() -> None:
    r, _, _ = make_router()
    assert from_client(r, "10.66.77.99") == (Drop.NO_ROUTE, None)
    r.detach(CB)
    assert from_client(r, CLIENT_B) == (Drop.NO_ROUTE, None)
    assert r.session_for(CB) is None
    r.detach(CB)  # detaching twice is harmless


def test_outside_addresses_go_to_the_nat() -> None:
    r, _, _ = make_router()
    for dst in (SERVER, "8.8.8.8", "192.168.1.1", PUBLIC):
        assert from_client(r, dst) == (Route.NAT, None)


def test_counts_are_kept_per_verdict() -> None:
    r, _, _ = make_router()
    from_client(r, SERVER)
    from_client(r, SERVER)
    from_client(r, CLIENT_B)
    from_client(r, VPN_GW)
    from_client(r, "127.0.0.1")
    from_client(r, SERVER, src=CB)
    from_client(r, "10.66.77.77")
    r.route_from_client(b"\x45", C)
    r.route_to_client(P.build_udp(A(SERVER), C, 53, 40000, b"z"))
    got = {i: n for i, n in enumerate(r.counts) if n}
    assert got == {
        Route.NAT: 2,
        Route.CLIENT: 2,
        Route.LOCAL: 1,
        Drop.DENIED: 1,
        Drop.SPOOFED: 1,
        Drop.NO_ROUTE: 1,
        Drop.TRUNCATED: 1,
    }


def test_packets_from_the_nat_go_to_the_session_holding_their_destination() -> None:
    r, a, b = make_router()
    assert r.route_to_client(P.build_udp(A(SERVER), CB, 53, 40000, b"z")) == (Route.CLIENT, b)
    assert r.route_to_client(P.build_udp(A(SERVER), A("10.66.77.50"), 53, 1, b"z")) == (Drop.NO_ROUTE, None)
    assert r.route_to_client(b"\x45\x00") == (Drop.TRUNCATED, None)


def test_a_configured_deny_list_replaces_the_default() -> None:
    r, _, _ = make_router(deny=["192.168.0.0/16"])
    assert from_client(r, "192.168.3.4") == (Drop.DENIED, None)
    assert from_client(r, "10.66.77.255") == (Drop.DENIED, None)  # the subnet broadcast is always denied


GARBAGE = [
    (b"", Drop.TRUNCATED),
    (b"\x45" * 19, Drop.TRUNCATED),
    (bytes(P.build_udp(C, A(SERVER), 1, 2, b"x"))[:25], Drop.BAD_LENGTH),
    (b"\x60" + bytes(39), Drop.BAD_VERSION),
    (b"\x43" + bytes(39), Drop.BAD_VERSION),
]


@pytest.mark.parametrize(("pkt", "reason"), GARBAGE)
def test_garbage_from_a_client_is_a_counted_drop(pkt: bytes, reason: Drop) -> None:
    r, _, _ = make_router()
    assert r.route_from_client(pkt, C) == (reason, None)
    assert r.counts[reason] == 1


def test_bad_header_checksum_inside_the_vpn_is_dropped_by_the_router() -> None:
    r, _, _ = make_router()
    for dst in (CLIENT_B, VPN_GW):
        pkt = P.build_udp(C, A(dst), 1, 2, b"x")
        pkt[10] ^= 0xFF
        assert r.route_from_client(pkt, C) == (Drop.BAD_CHECKSUM, None)


def test_to_the_internet_the_header_is_read_once_and_the_nat_checks_the_checksum() -> None:
    r, _, _ = make_router()
    nat = make_nat()
    pkt = P.build_udp(C, A(SERVER), 1, 2, b"x")
    pkt[10] ^= 0xFF
    assert r.route_from_client(pkt, C) == (Route.NAT, None)
    assert nat.translate_outbound(pkt, 0) == Drop.BAD_CHECKSUM


def test_random_bytes_never_raise_and_always_give_a_verdict() -> None:
    r, a, b = make_router()
    rng = random.Random(2827)
    verdicts = set(Drop) | set(Route)
    for _ in range(3000):
        buf = bytearray(rng.randbytes(rng.randrange(0, 60)))
        v, s = r.route_from_client(buf, C)
        assert v in verdicts and (s is None) == (v != Route.CLIENT)
        v, s = r.route_to_client(buf)
        assert v in verdicts and s in (None, a, b)
    assert sum(r.counts) == 6000


def test_a_deny_prefix_covering_the_vpn_subnet_still_lets_clients_reach_the_gateway_and_each_other() -> None:
    r, _a, b = make_router(deny=["10.0.0.0/8"])  # an operator keeping clients off private networks
    assert from_client(r, VPN_GW)[0] == Route.LOCAL
    assert from_client(r, CLIENT_B) == (Route.CLIENT, b)
    assert from_client(r, "10.1.2.3")[0] == Drop.DENIED  # the rest of 10/8 stays out of reach


# ---------------------------------------- the router hop: TTL and ICMP Time Exceeded (RFC 1812)


def _b(addr: str) -> bytes:
    """A dotted quad as dpkt shows addresses."""
    return bytes(map(int, addr.split(".")))


def test_rfc1812_5_3_1_between_clients_the_ttl_drops_by_one_with_the_checksum_right() -> None:
    r, _, b = make_router()
    pkt = P.build_udp(C, CB, 40000, 53, b"x", ttl=64)
    assert r.route_from_client(pkt, C) == (Route.CLIENT, b)
    assert verify(pkt).ttl == 63  # dpkt re-parses it: header checksum recomputed from scratch


def test_rfc1812_a_packet_that_would_leave_with_ttl_0_is_not_forwarded_and_left_untouched() -> None:
    r, _, _ = make_router()
    for ttl in (1, 0):
        pkt = P.build_udp(C, CB, 40000, 53, b"x", ttl=ttl)
        before = bytes(pkt)
        assert r.route_from_client(pkt, C) == (Drop.TTL_EXCEEDED, None)
        assert bytes(pkt) == before
    assert r.counts[Drop.TTL_EXCEEDED] == 2
    local = P.build_icmp_echo(C, A(VPN_GW), 1, 1, ttl=1)  # the gateway itself is no hop further
    assert r.route_from_client(local, C) == (Route.LOCAL, None)


def test_time_exceeded_to_a_client_comes_from_the_gateway_vpn_address_and_quotes_its_packet() -> None:
    r, _, _ = make_router()
    probe = P.build_udp(C, CB, 33434, 33434, b"probe" * 10, ttl=1)
    assert r.route_from_client(probe, C)[0] == Drop.TTL_EXCEEDED
    err = r.time_exceeded_to_client(probe, 0)
    ip = verify(err)  # dpkt: IP and ICMP checksums
    assert (ip.src, ip.dst) == (_b(VPN_GW), _b(CLIENT))
    assert (ip.data.type, ip.data.code) == (11, 0)
    assert bytes(err[28:]) == bytes(probe)  # all of it: it fits in 576 bytes (RFC 1812 4.3.2.3)
    assert r.icmp_sent == 1


def test_the_nat_ttl_drop_is_answered_the_same_way_both_directions() -> None:
    r, _, _ = make_router()
    nat = make_nat()
    out = P.build_icmp_echo(C, A(SERVER), 7, 1, b"traceroute", ttl=1)
    assert r.route_from_client(out, C) == (Route.NAT, None)
    assert nat.translate_outbound(out, 0) == Drop.TTL_EXCEEDED
    to_client = verify(r.time_exceeded_to_client(out, 0))
    assert to_client.src == _b(VPN_GW) and to_client.data.type == 11
    assert nat.translate_outbound(P.build_udp(C, A(SERVER), 40000, 53, b"q"), 0) == FORWARD
    port = nat.lookup_internal(P.PROTO_UDP, C, 40000).ext_port
    inbound = P.build_udp(A(SERVER), A(PUBLIC), 53, port, b"x", ttl=1)
    assert nat.translate_inbound(inbound, 0) == Drop.TTL_EXCEEDED
    to_internet = verify(r.time_exceeded_to_internet(inbound, 0))
    assert (to_internet.src, to_internet.dst) == (_b(PUBLIC), _b(SERVER))
    assert bytes(to_internet.data.data.data)[:8] == bytes(inbound[:8])  # the quote is of its own packet


def test_rfc1812_4_3_2_8_time_exceeded_is_rate_limited_per_direction() -> None:
    r = Router(VpnConfig(icmp_errors_per_s=10, icmp_error_burst=3))
    probe = P.build_udp(C, CB, 1, 2, b"x", ttl=1)
    inbound = P.build_udp(A(SERVER), A(PUBLIC), 53, 40000, b"x", ttl=1)
    sent = [r.time_exceeded_to_client(probe, 0) is not None for _ in range(5)]
    assert sent == [True, True, True, False, False]  # the burst, then nothing
    assert r.time_exceeded_to_internet(inbound, 0) is not None  # the other direction has its own bucket
    assert r.time_exceeded_to_client(probe, 50_000_000) is None  # 0.05 s: half a token
    assert r.time_exceeded_to_client(probe, 100_000_000) is not None  # 0.1 s: one token at 10/s
    assert (r.icmp_sent, r.icmp_limited) == (5, 3)
    quiet = Router(VpnConfig(icmp_errors_per_s=0))
    assert quiet.time_exceeded_to_client(probe, 0) is None


def _icmp_error_about(pkt: bytearray) -> bytearray:
    return P.build_icmp_error(C, CB, P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, pkt, ttl=1)


NOT_ANSWERED = [
    ("an ICMP error", lambda: _icmp_error_about(P.build_udp(CB, C, 1, 2, b"x"))),
    ("a non-first fragment", lambda: P.build_ipv4(C, CB, 17, bytes(16), ttl=1, flags_frag=3)),
    ("to a multicast address", lambda: P.build_udp(C, A("224.0.0.251"), 5353, 5353, b"x", ttl=1)),
    ("from a loopback source", lambda: P.build_udp(A("127.0.0.1"), CB, 1, 2, b"x", ttl=1)),
    ("a bad header", lambda: P.build_udp(C, CB, 1, 2, b"x", ttl=1)[:19]),
]


@pytest.mark.parametrize("make", [m for _, m in NOT_ANSWERED], ids=[w for w, _ in NOT_ANSWERED])
def test_rfc1812_4_3_2_7_no_time_exceeded_about_what_must_not_be_answered(make) -> None:
    r, _, _ = make_router()
    assert r.time_exceeded_to_client(make(), 0) is None
    assert r.time_exceeded_to_internet(make(), 0) is None
    assert r.icmp_sent == 0 and r.icmp_not_answered == 2 - (len(make()) < 20)


def test_an_icmp_query_is_answered() -> None:
    r, _, _ = make_router()
    assert r.time_exceeded_to_client(P.build_icmp_echo(C, CB, 1, 1, ttl=1), 0) is not None
