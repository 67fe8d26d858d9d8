"""The raw gateway's link layer without a wire: ARP answers and next-hop resolution, the kernel filter
program run by an interpreter of the kernel's semantics, the default route read from /proc."""

from __future__ import annotations

import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw import inet
from gw import packet as P
from gw.external import link as L
from gw.external.raw import default_gateway

MAC = bytes.fromhex("026777336401")
ROUTER_MAC = bytes.fromhex("fa3bef9d0491")
PUBLIC = [inet.aton("198.51.100.1"), inet.aton("198.51.100.3")]
ROUTER = inet.aton("198.51.100.254")
S = 1_000_000_000


def _link() -> L.Link:
    return L.Link(MAC, PUBLIC, ROUTER)


def _request(sha: bytes, spa: str, tpa: str) -> bytes:
    return L.arp(L.ARP_REQUEST, sha, inet.aton(spa), bytes(6), inet.aton(tpa))


def test_a_request_for_a_public_address_gets_a_reply_with_the_gateways_mac():
    link = _link()
    frame = link.on_arp(_request(ROUTER_MAC, "198.51.100.254", "198.51.100.3"), 0)
    eth = dpkt.ethernet.Ethernet(frame)
    assert eth.dst == ROUTER_MAC and eth.src == MAC and eth.type == L.ETH_P_ARP
    arp = eth.data
    assert arp.op == dpkt.arp.ARP_OP_REPLY and arp.sha == MAC and int.from_bytes(arp.spa, "big") == PUBLIC[1]
    assert arp.tha == ROUTER_MAC and arp.tpa == bytes([198, 51, 100, 254])
    assert link.counts["arp_answered"] == 1


@pytest.mark.parametrize(
    "msg",
    [
        _request(ROUTER_MAC, "198.51.100.254", "198.51.100.2"),  # someone else's address
        L.arp(L.ARP_REPLY, ROUTER_MAC, inet.aton("198.51.100.254"), MAC, PUBLIC[0]),  # a reply
        _request(ROUTER_MAC, "198.51.100.1", "198.51.100.1"),  # another host's gratuitous ARP for ours
        _request(b"\x01\x00\x5e\x00\x00\x01", "198.51.100.9", "198.51.100.1"),  # multicast sender
        _request(ROUTER_MAC, "198.51.100.254", "198.51.100.1")[:27],  # short
    ],
)
def test_anything_else_gets_no_answer(msg):
    assert _link().on_arp(msg, 0) is None


def test_the_next_hop_is_asked_for_once_a_second_until_it_answers_then_refreshed():
    link = _link()
    ask = link.poll(0)
    arp = dpkt.ethernet.Ethernet(ask).data
    assert dpkt.ethernet.Ethernet(ask).dst == L.BROADCAST and arp.op == dpkt.arp.ARP_OP_REQUEST
    assert arp.tpa == bytes([198, 51, 100, 254]) and arp.spa == bytes([198, 51, 100, 1]) and arp.sha == MAC
    assert link.poll(S // 2) is None and link.poll(S + 1) is not None
    assert link.header == b""
    link.on_arp(L.arp(L.ARP_REPLY, ROUTER_MAC, ROUTER, MAC, PUBLIC[0]), 2 * S)
    assert link.header == L.ethernet(ROUTER_MAC, MAC, L.ETH_P_IP)
    assert link.poll(3 * S) is None and link.poll((2 + L.REFRESH_S) * S) is not None
    assert link.header, "a refresh keeps the known address until a new one is heard"
    link.on_arp(_request(b"\x02" * 6, "198.51.100.254", "198.51.100.1"), 40 * S)  # the router's new NIC
    assert link.next_hop_mac == b"\x02" * 6 and link.counts["next_hop_changed"] == 1


def test_announcements_are_gratuitous_requests_for_every_public_address():
    frames = [dpkt.ethernet.Ethernet(f) for f in _link().announcements()]
    assert [f.data.tpa for f in frames] == [f.data.spa for f in frames] == [a.to_bytes(4, "big") for a in PUBLIC]
    assert all(f.dst == L.BROADCAST and f.data.sha == MAC for f in frames)


def test_the_derived_mac_is_local_unicast_and_names_the_address():
    mac = L.derived_mac(inet.aton("198.51.100.1"))
    assert L.format_mac(mac) == "02:67:77:33:64:01" and mac[0] & 2 and not mac[0] & 1
    assert L.parse_mac("02:67:77:33:64:01") == mac
    for bad in ("02:67:77:33:64", "0267.7733.6401", "02:67:77:33:64:zz"):
        with pytest.raises(ValueError):
            L.parse_mac(bad)


# --- the kernel filter -------------------------------------------------------------------------------
def _ip_frame(dst: int, proto: int = P.PROTO_UDP) -> bytes:
    pkt = P.build_udp(inet.aton("203.0.113.10"), dst, 53, 4000, b"x") if proto == P.PROTO_UDP else b""
    return L.ethernet(MAC, ROUTER_MAC, L.ETH_P_IP) + bytes(pkt)


def _arp_frame(tpa: int) -> bytes:
    return L.ethernet(L.BROADCAST, ROUTER_MAC, L.ETH_P_ARP) + L.arp(L.ARP_REQUEST, ROUTER_MAC, ROUTER, bytes(6), tpa)


addresses = st.lists(st.integers(0x0A000000, 0x0A0000FF), min_size=1, max_size=40)


@given(addresses, st.integers(0x0A000000 - 2, 0x0A000101))
def test_the_filter_passes_exactly_arp_for_and_ipv4_to_the_public_addresses(addrs, probe):
    program = L.filter_program(addrs)
    wanted = probe in set(addrs)
    assert bool(L.run_program(program, _ip_frame(probe))) == wanted
    assert bool(L.run_program(program, _arp_frame(probe))) == wanted
    ipv6 = L.ethernet(MAC, ROUTER_MAC, 0x86DD) + bytes(40)
    assert L.run_program(program, ipv6) == 0
    assert L.run_program(program, _ip_frame(probe)[:20]) == 0  # a runt: the load is out of bounds


def test_a_pool_of_256_addresses_is_one_range_test():
    pool = [inet.aton("198.51.100.0") + i for i in range(256)]
    assert L.ranges(pool) == [(pool[0], pool[-1])]
    assert len(L.filter_program(pool)) == 14  # 2 + 5 (ARP) + 1 + 5 (IPv4) + 1
    assert len(L.encode_program(L.filter_program(pool))) == 14 * 8
    with pytest.raises(ValueError):
        L.filter_program(list(range(0, 2 * (L.MAX_RUNS + 1), 2)))


def test_the_default_gateway_of_an_interface_is_read_from_the_route_table(tmp_path):
    table = tmp_path / "route"
    table.write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "ext\t0064330A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
        "ext\t00000000\tFE6433C6\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    assert default_gateway("ext", str(table)) == inet.aton("198.51.100.254")
    assert default_gateway("eth1", str(table)) is None
    assert default_gateway("ext", str(tmp_path / "missing")) is None


def test_struct_sizes_match_the_kernel():
    assert struct.calcsize("HL") == 16  # struct sock_fprog on 64-bit Linux: u16, padding, pointer
    assert L.ARP_LEN == len(L.arp(1, MAC, 1, MAC, 2))
