"""gw.router: RFC 2827 anti-spoofing, the RFC 6890 deny list, delivery, counters; garbage is a Drop."""

from __future__ import annotations

import random

import pytest

from gw import packet as P
from gw.config import VpnConfig
from gw.packet import Drop
from gw.router import Route, Router
from tests.helpers.packets import CLIENT, CLIENT_B, PUBLIC, SERVER, VPN_GW, A

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


def test_route_values_do_not_collide_with_drop_reasons() -> None:
    assert not {int(r) for r in Route} & {int(d) for d in Drop}


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


def test_bad_header_checksum_from_a_client_is_dropped() -> None:
    r, _, _ = make_router()
    pkt = P.build_udp(C, A(SERVER), 1, 2, b"x")
    pkt[10] ^= 0xFF
    assert r.route_from_client(pkt, C) == (Drop.BAD_CHECKSUM, None)


def test_random_bytes_never_raise_and_always_give_a_verdict() -> None:
    r, a, b = make_router()
    rng = random.Random(2827)
    verdicts = set(Drop) | set(Route)
    for _ in range(3000):
        buf = rng.randbytes(rng.randrange(0, 60))
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
