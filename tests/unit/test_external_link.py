"""The raw gateway's link layer without a wire: ARP answers, announcements and their defence, next-hop
resolution and its checks against spoofing, the kernel filter program run by an interpreter of the
kernel's semantics, the default route and the neighbour table read from /proc; and the raw gateway's
shell against a recording socket: the order of its start, its fallbacks, its counted drops."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import socket
import struct
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw import inet
from gw import packet as P
from gw import vnet as V
from gw.external import base as B
from gw.external import link as L
from gw.external import raw as R
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
        _request(b"\x01\x00\x5e\x00\x00\x01", "198.51.100.9", "198.51.100.1"),  # multicast sender
        _request(ROUTER_MAC, "198.51.100.254", "198.51.100.1")[:27],  # short
    ],
)
def test_anything_else_gets_no_answer(msg):
    assert _link().on_arp(msg, 0) is None


def test_the_next_hop_is_asked_for_once_a_second_until_it_answers_then_refreshed():
    link = _link()
    [ask] = link.poll(0)
    arp = dpkt.ethernet.Ethernet(ask).data
    assert dpkt.ethernet.Ethernet(ask).dst == L.BROADCAST and arp.op == dpkt.arp.ARP_OP_REQUEST
    assert arp.tpa == bytes([198, 51, 100, 254]) and arp.spa == bytes([198, 51, 100, 1]) and arp.sha == MAC
    assert link.poll(S // 2) == [] and len(link.poll(S + 1)) == 1
    assert link.header == b""
    link.on_arp(_reply(ROUTER_MAC), 2 * S)
    assert link.header == L.ethernet(ROUTER_MAC, MAC, L.ETH_P_IP)
    assert link.poll(3 * S) == [] and len(link.poll((2 + L.REFRESH_S) * S)) == 1
    assert link.header, "a refresh keeps the known address until a new one is heard"
    link.on_arp(_request(NEW_MAC, "198.51.100.254", "198.51.100.1"), 40 * S)  # stale: the router's new NIC
    assert link.next_hop_mac == NEW_MAC and link.counts["next_hop_changed"] == 1


# --- ARP spoofing: who may move the next hop --------------------------------------------------------
NEW_MAC = bytes.fromhex("020000000066")


def _reply(sha: bytes, spa: str = "198.51.100.254") -> bytes:
    """An ARP reply from ``spa`` at ``sha`` to the gateway."""
    return L.arp(L.ARP_REPLY, sha, inet.aton(spa), MAC, PUBLIC[0])


def _known_link(at: int = 0) -> L.Link:
    """A link that heard the router at ``at`` (and asked before)."""
    link = _link()
    link.poll(at)
    link.on_arp(_reply(ROUTER_MAC), at)
    assert link.next_hop_mac == ROUTER_MAC
    return link


@pytest.mark.parametrize("claim", [_reply(NEW_MAC), _request(NEW_MAC, "198.51.100.254", "198.51.100.1"),
                                   _request(NEW_MAC, "198.51.100.254", "198.51.100.254")],
                         ids=["reply", "request", "gratuitous"])  # fmt: skip
def test_a_claim_to_be_the_fresh_next_hop_is_checked_with_the_known_mac_and_dropped_when_it_answers(claim):
    link = _known_link()
    link.on_arp(claim, 5 * S)
    assert link.next_hop_mac == ROUTER_MAC and link.header == L.ethernet(ROUTER_MAC, MAC, L.ETH_P_IP)
    assert link.describe()["next_hop_suspect"] == "02:00:00:00:00:66"
    [check] = link.poll(5 * S)  # a who-has to the known MAC alone
    eth = dpkt.ethernet.Ethernet(check)
    assert eth.dst == ROUTER_MAC and eth.src == MAC and eth.data.op == dpkt.arp.ARP_OP_REQUEST
    assert eth.data.tpa == bytes([198, 51, 100, 254]) and eth.data.tha == ROUTER_MAC
    assert link.poll(5 * S + S // 2) == [], "one check per claim"
    link.on_arp(_reply(ROUTER_MAC), 5 * S + S // 10)  # the router answers
    assert link.poll(8 * S) == [] and link.next_hop_mac == ROUTER_MAC
    assert link.counts["arp_conflicts"] == 1 and link.counts["next_hop_changed"] == 0
    assert link.describe()["next_hop_suspect"] == ""
    assert len(link.notes) == 1 and "02:00:00:00:00:66 claimed the next hop 198.51.100.254" in link.notes[0]


def test_a_claim_is_adopted_when_the_known_mac_stays_silent_for_retry_s():
    """The router really changed its NIC: its old MAC cannot answer."""
    link = _known_link()
    link.on_arp(_request(NEW_MAC, "198.51.100.254", "198.51.100.1"), 5 * S)
    assert len(link.poll(5 * S)) == 1
    link.on_arp(_reply(NEW_MAC), 5 * S + 1)  # the claim again: it replaces, the check stands
    assert link.poll(5 * S + L.RETRY_S * S - 1) == [] and link.next_hop_mac == ROUTER_MAC
    assert link.poll(6 * S) == []  # no broadcast: the adopted MAC is fresh
    assert link.next_hop_mac == NEW_MAC and link.header == L.ethernet(NEW_MAC, MAC, L.ETH_P_IP)
    assert link.counts["next_hop_changed"] == 1 and link.counts["arp_conflicts"] == 0
    assert "moved from fa:3b:ef:9d:04:91 to 02:00:00:00:00:66" in link.notes[-1]


def test_a_stale_or_unknown_next_hop_is_learned_at_once():
    link = _link()
    link.on_arp(_reply(NEW_MAC), 0)  # unknown
    assert link.next_hop_mac == NEW_MAC
    link = _known_link()
    link.on_arp(_reply(NEW_MAC), L.REFRESH_S * S)  # not heard for REFRESH_S
    assert link.next_hop_mac == NEW_MAC and link.counts["next_hop_changed"] == 1


def test_a_seeded_mac_is_used_at_once_but_still_asked_for_and_replaced_by_the_first_answer():
    link = _link()
    link.seed(NEW_MAC)
    assert link.header == L.ethernet(NEW_MAC, MAC, L.ETH_P_IP)
    [ask] = link.poll(0)
    assert dpkt.ethernet.Ethernet(ask).dst == L.BROADCAST
    link.on_arp(_reply(ROUTER_MAC), S // 10)
    assert link.next_hop_mac == ROUTER_MAC
    for bad in (bytes(6), b"\x01" + bytes(5)):
        other = _link()
        other.seed(bad)
        assert other.header == b""


def test_our_own_mac_as_a_sender_is_never_learned():
    link = _known_link()
    assert link.on_arp(_reply(MAC), L.REFRESH_S * S) is None
    assert link.next_hop_mac == ROUTER_MAC and link.counts["arp_ignored"] == 1


# --- our public addresses: announced twice, defended --------------------------------------------------
@pytest.mark.parametrize("claim", [_request(ROUTER_MAC, "198.51.100.1", "198.51.100.1"),
                                   L.arp(L.ARP_REPLY, NEW_MAC, PUBLIC[0], ROUTER_MAC, ROUTER)],
                         ids=["gratuitous", "reply"])  # fmt: skip
def test_another_mac_claiming_a_public_address_is_counted_and_answered_by_an_announcement(claim):
    link = _link()
    frame = link.on_arp(claim, 10 * S)
    eth = dpkt.ethernet.Ethernet(frame)
    assert eth.dst == L.BROADCAST and eth.data.sha == MAC
    assert eth.data.spa == eth.data.tpa == PUBLIC[0].to_bytes(4, "big")
    assert link.on_arp(claim, 10 * S + S - 1) is None, "at most once per DEFEND_S per address"
    assert link.on_arp(claim, 11 * S) is not None
    assert link.counts["address_conflicts"] == 3 and link.counts["arp_answered"] == 0
    assert len(link.notes) == 2 and "claims 198.51.100.1" in link.notes[0]


def test_the_public_addresses_are_announced_twice_interval_apart():
    link = _known_link()
    first = link.announce(10 * S)
    assert first == link.announcements() and len(first) == 2
    assert link.poll(10 * S + L.ANNOUNCE_INTERVAL_S * S - 1) == []
    assert link.poll((10 + L.ANNOUNCE_INTERVAL_S) * S) == first
    assert link.poll(20 * S) == []


def test_notes_are_bounded():
    link = _link()
    for i in range(3 * L.NOTES_MAX):
        link.on_arp(_request(NEW_MAC, "198.51.100.1", "198.51.100.1"), i * L.DEFEND_S * S)
    assert len(link.notes) == L.NOTES_MAX and link.counts["address_conflicts"] == 3 * L.NOTES_MAX


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
# linux/if_packet.h: HOST, BROADCAST, MULTICAST, OTHERHOST, OUTGOING, LOOPBACK, USER, KERNEL
pkttypes = st.integers(0, 7)


@given(addresses, st.integers(0x0A000000 - 2, 0x0A000101), pkttypes, st.booleans())
def test_the_filter_passes_exactly_arp_for_and_ipv4_to_the_public_addresses(addrs, probe, pkttype, vlan):
    """IPv4 only to the gateway's MAC (PACKET_OTHERHOST), ARP broadcast or to it; never a tagged frame."""
    program = L.filter_program(addrs)
    wanted = probe in set(addrs) and not vlan
    ip_ok = wanted and pkttype == L.PACKET_OTHERHOST
    arp_ok = wanted and pkttype in (L.PACKET_OTHERHOST, L.PACKET_BROADCAST)
    assert bool(L.run_program(program, _ip_frame(probe), pkttype, vlan)) == ip_ok
    assert bool(L.run_program(program, _arp_frame(probe), pkttype, vlan)) == arp_ok
    ipv6 = L.ethernet(MAC, ROUTER_MAC, 0x86DD) + bytes(40)
    assert L.run_program(program, ipv6, pkttype, vlan) == 0
    assert L.run_program(program, _ip_frame(probe)[:20], pkttype, vlan) == 0  # a runt: the load is out of bounds


@pytest.mark.parametrize(
    ("frame", "pkttype", "vlan", "accepted"),
    [
        pytest.param(_ip_frame(PUBLIC[0]), L.PACKET_OTHERHOST, False, True, id="ip-to-the-gateways-mac"),
        pytest.param(_ip_frame(PUBLIC[0]), 0, False, False, id="ip-to-the-hosts-mac"),  # PACKET_HOST
        pytest.param(_ip_frame(PUBLIC[0]), L.PACKET_BROADCAST, False, False, id="ip-broadcast"),
        pytest.param(_ip_frame(PUBLIC[0]), 2, False, False, id="ip-multicast"),  # PACKET_MULTICAST
        pytest.param(_ip_frame(PUBLIC[0]), L.PACKET_OTHERHOST, True, False, id="ip-tagged"),  # another VLAN's
        pytest.param(_arp_frame(PUBLIC[0]), L.PACKET_BROADCAST, False, True, id="arp-request"),
        pytest.param(_arp_frame(PUBLIC[0]), L.PACKET_OTHERHOST, False, True, id="arp-to-the-gateways-mac"),
        pytest.param(_arp_frame(PUBLIC[0]), 0, False, False, id="arp-to-the-hosts-mac"),
        pytest.param(_arp_frame(PUBLIC[0]), L.PACKET_BROADCAST, True, False, id="arp-tagged"),
    ],
)
def test_the_filters_mac_and_vlan_vectors(frame, pkttype, vlan, accepted):
    assert bool(L.run_program(L.filter_program(PUBLIC), frame, pkttype, vlan)) == accepted


def test_the_filter_reads_the_kernels_ancillary_fields():
    """linux/filter.h: SKF_AD_OFF (-0x1000) + SKF_AD_PKTTYPE (4) and + SKF_AD_VLAN_TAG_PRESENT (48), as u32."""
    assert (L.AD_PKTTYPE, L.AD_VLAN_TAG_PRESENT) == (0xFFFFF004, 0xFFFFF030)
    loads = [k for code, _, _, k in L.filter_program(PUBLIC) if code == L.BPF_LD_W_ABS and k >= L.AD_BASE]
    assert loads == [L.AD_VLAN_TAG_PRESENT, L.AD_PKTTYPE, L.AD_PKTTYPE]


def test_a_pool_of_256_addresses_is_one_range_test():
    pool = [inet.aton("198.51.100.0") + i for i in range(256)]
    assert L.ranges(pool) == [(pool[0], pool[-1])]
    # 4 (VLAN, ethertype) + 1 (ARP?) + 4 (packet type) + 5 (ARP target) + 5 (IPv4, packet type) + 5 (IPv4 destination)
    assert len(L.filter_program(pool)) == 24
    assert len(L.encode_program(L.filter_program(pool))) == 24 * 8
    with pytest.raises(ValueError):
        L.filter_program(list(range(0, 2 * (L.MAX_RUNS + 1), 2)))
    widest = L.filter_program(list(range(0, 2 * L.MAX_RUNS, 2)))
    assert all(jt <= 255 and jf <= 255 for _, jt, jf, _ in widest), "a jump beyond 255 instructions"


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


def test_a_complete_neighbour_entry_on_the_interface_gives_the_next_hops_mac(tmp_path):
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "198.51.100.9     0x1         0x0         00:00:00:00:00:00     *        ext\n"  # incomplete
        "198.51.100.254   0x1         0x2         fa:3b:ef:9d:04:91     *        ext\n"
        "198.51.100.7     0x1         0x6         02:00:00:00:00:07     *        ext\n"  # permanent too
        "198.51.100.8     0x1         0x0         02:00:00:00:00:08     *        ext\n"  # not complete
        "198.51.100.254   0x1         0x2         02:00:00:00:00:99     *        eth1\n"  # another link
    )
    assert R.neighbour_mac("ext", ROUTER, str(table)) == ROUTER_MAC
    assert R.neighbour_mac("ext", inet.aton("198.51.100.7"), str(table)) == bytes.fromhex("020000000007")
    for address in ("198.51.100.9", "198.51.100.8", "198.51.100.1"):
        assert R.neighbour_mac("ext", inet.aton(address), str(table)) is None
    assert R.neighbour_mac("eth1", ROUTER, str(table)) == bytes.fromhex("020000000099")
    assert R.neighbour_mac("ext", ROUTER, str(tmp_path / "missing")) is None


def test_the_proc_readers_close_their_files(tmp_path):
    table = tmp_path / "table"
    table.write_text("header\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        default_gateway("ext", str(table))
        R.neighbour_mac("ext", ROUTER, str(table))
        R._refuse_local([inet.aton("198.51.100.1")], "ext")  # reads ip_nonlocal_bind
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_the_mtu_of_an_interface_is_the_kernels():
    assert R.interface_mtu("lo") == int(Path("/sys/class/net/lo/mtu").read_text())
    with pytest.raises(OSError):
        R.interface_mtu("nosuch0")


# --- the shell, against a recording socket ---------------------------------------------------------------
class FakePacketSocket:
    """An AF_PACKET socket that records what is done to it: frames to receive (bytes, or an OSError to
    raise) are given in ``frames``; ``refuse`` lists the options that fail with EPERM (no CAP_NET_ADMIN)."""

    def __init__(self, calls: list, refuse: tuple = ()) -> None:
        self.calls, self.refuse = calls, refuse
        self.frames: list = []
        self.sent: list[bytes] = []
        self._r, self._w = os.pipe()  # a file descriptor for the loop's add_reader
        _OPEN.append(self)

    def setsockopt(self, level: int, opt: int, value: object) -> None:
        self.calls.append(("setsockopt", level, opt))
        if opt in self.refuse:
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    def bind(self, address: tuple) -> None:
        self.calls.append(("bind", address))

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return self._r

    def sendmsg(self, buffers: list) -> int:
        self.sent.append(b"".join(bytes(b) for b in buffers))
        return len(self.sent[-1])

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if not self.frames:
            raise BlockingIOError(errno.EAGAIN, "no frame")
        frame = self.frames.pop(0)
        if isinstance(frame, OSError):
            raise frame
        buf[: len(frame)] = frame
        return len(frame)

    def close(self) -> None:
        if self._r >= 0:
            os.close(self._r)
            os.close(self._w)
            self._r = self._w = -1


_OPEN: list[FakePacketSocket] = []


@pytest.fixture(autouse=True)
def _close_fake_sockets() -> Iterator[None]:
    """The pipes of this test's FakePacketSockets are closed after it, whether the gateway stopped or not."""
    yield
    while _OPEN:
        _OPEN.pop().close()


class SocketModule:
    """``socket`` as gw.external.raw sees it: AF_PACKET sockets are FakePacketSockets, the rest real."""

    def __init__(self, calls: list, refuse: tuple = ()) -> None:
        self.calls, self.refuse, self.made = calls, refuse, []

    def socket(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None):
        if family != socket.AF_PACKET:
            return socket.socket(family, type, proto, fileno)
        self.calls.append(("socket", family, type, proto))
        self.made.append(FakePacketSocket(self.calls, self.refuse))
        return self.made[-1]

    def __getattr__(self, name: str) -> object:
        return getattr(socket, name)


def _gateway(monkeypatch, refuse: tuple = (), known: bytes | None = None, **kw) -> tuple[R.RawGateway, SocketModule]:
    """A raw gateway on ``lo`` (not started) whose AF_PACKET socket will be a FakePacketSocket, and whose
    neighbour table says ``known`` for the next hop."""
    fake = SocketModule([], refuse)
    monkeypatch.setattr(R, "socket", fake)
    monkeypatch.setattr(R, "neighbour_mac", lambda interface, address: known)
    gw = R.RawGateway(SimpleNamespace(ext_addrs=PUBLIC), "lo", "198.51.100.254", L.format_mac(MAC), **kw)
    return gw, fake


def _run(func) -> None:
    """Run ``func()`` inside a running loop (start and stop need one)."""

    async def inside() -> None:
        func()

    asyncio.run(inside())


def test_the_socket_receives_nothing_until_its_filter_is_attached_then_it_is_bound(monkeypatch):
    gw, fake = _gateway(monkeypatch)
    _run(lambda: (gw.start(lambda batch: None), gw.stop()))
    calls = fake.calls
    assert calls[0] == ("socket", socket.AF_PACKET, socket.SOCK_RAW, 0), "protocol 0: no frame before bind"
    attach = calls.index(("setsockopt", socket.SOL_SOCKET, R.SO_ATTACH_FILTER))
    bind = calls.index(("bind", ("lo", L.ETH_P_ALL)))
    options = [i for i, c in enumerate(calls) if c[0] == "setsockopt" and c[2] != R.PACKET_ADD_MEMBERSHIP]
    assert attach < bind and max(options) < bind, calls


def test_without_cap_net_admin_the_buffers_fall_back_to_the_capped_options(monkeypatch):
    gw, fake = _gateway(monkeypatch, refuse=(B.SO_RCVBUFFORCE, B.SO_SNDBUFFORCE))
    _run(lambda: (gw.start(lambda batch: None), gw.stop()))
    options = [c[2] for c in fake.calls if c[0] == "setsockopt" and c[1] == socket.SOL_SOCKET]
    assert socket.SO_RCVBUF in options and socket.SO_SNDBUF in options
    assert gw.sock is None and gw.mtu > 0


def test_a_tunnel_mtu_above_the_interfaces_is_refused(monkeypatch):
    monkeypatch.setattr(R, "interface_mtu", lambda interface: 1500)
    gw, fake = _gateway(monkeypatch, tunnel_mtu=1501)
    with pytest.raises(R.RawGatewayError, match=r"\[tunnel\] mtu 1501 is larger than lo's MTU 1500: lower it"):
        _run(lambda: gw.start(lambda batch: None))
    assert fake.made == [] and gw.sock is None
    ok, _ = _gateway(monkeypatch, tunnel_mtu=1500)
    _run(lambda: (ok.start(lambda batch: None), ok.stop()))
    assert ok.mtu == 1500


def test_the_next_hops_mac_is_seeded_from_the_neighbour_table_and_still_asked_for(monkeypatch):
    gw, fake = _gateway(monkeypatch, known=ROUTER_MAC)
    _run(lambda: gw.start(lambda batch: None))
    assert gw.link.header == L.ethernet(ROUTER_MAC, MAC, L.ETH_P_IP)
    frames = [dpkt.ethernet.Ethernet(f[V.VNET_HDR_LEN :]) for f in fake.made[0].sent]
    asks = [f for f in frames if f.data.tpa == ROUTER.to_bytes(4, "big")]
    assert len(asks) == 1 and asks[0].dst == L.BROADCAST


def test_the_public_addresses_are_announced_at_start_and_again_from_tick(monkeypatch):
    gw, fake = _gateway(monkeypatch)
    _run(lambda: gw.start(lambda batch: None))
    sent = fake.made[0].sent

    def announcements() -> int:
        frames = [dpkt.ethernet.Ethernet(f[V.VNET_HDR_LEN :]) for f in sent]
        return sum(f.data.spa == f.data.tpa for f in frames)

    assert announcements() == len(PUBLIC)
    start = time.monotonic_ns()
    gw.tick(start + S // 2)
    assert announcements() == len(PUBLIC)
    gw.tick(start + L.ANNOUNCE_INTERVAL_S * S)
    assert announcements() == 2 * len(PUBLIC)
    gw.tick(start + 10 * S)
    assert announcements() == 2 * len(PUBLIC)


def _started(monkeypatch) -> tuple[R.RawGateway, FakePacketSocket, list]:
    gw, fake = _gateway(monkeypatch)
    got: list = []
    _run(lambda: gw.start(got.extend))
    gw.link.on_arp(_reply(ROUTER_MAC), time.monotonic_ns())
    return gw, fake.made[0], got


def _wire(vnet_hdr: bytes, pkt: bytes, ethertype: int = L.ETH_P_IP) -> bytes:
    """A frame as the socket reads it: virtio-net header, Ethernet header, packet."""
    return vnet_hdr + L.ethernet(MAC, ROUTER_MAC, ethertype) + pkt


def test_receive_errors_of_one_frame_skip_it_and_a_lost_link_ends_the_batch(monkeypatch):
    gw, sock, got = _started(monkeypatch)
    udp = bytes(P.build_udp(inet.aton("203.0.113.10"), PUBLIC[0], 53, 4000, b"x"))
    sock.frames = [OSError(errno.EINVAL, "bad"), _wire(V.NO_OFFLOAD, udp), _wire(V.NO_OFFLOAD, udp)[:40],
                   OSError(errno.ENETDOWN, "down"), _wire(V.NO_OFFLOAD, udp)]  # fmt: skip
    _run(gw._readable)  # in a loop: after an error the reader is registered anew (gw.rearm)
    assert [bytes(p) for p in got] == [V.NO_OFFLOAD + udp]
    assert gw.counts["receive_errors"] == 2 and gw.counts["runts"] == 1 and len(sock.frames) == 1


def test_a_received_vnet_header_pointing_into_the_ethernet_header_is_dropped(monkeypatch):
    gw, sock, got = _started(monkeypatch)
    udp = bytes(P.build_udp(inet.aton("203.0.113.10"), PUBLIC[0], 53, 4000, b"x"))
    partial = bytearray(10)
    V.write_header(partial, 0, V.VNET_F_NEEDS_CSUM, 0, 0, 0, 13, 6)
    hinted = bytearray(10)
    V.write_header(hinted, 0, 0, V.VNET_GSO_UDP_L4, 13, 100, 0, 0)
    good = bytearray(10)
    V.write_header(good, 0, V.VNET_F_NEEDS_CSUM, V.VNET_GSO_UDP_L4, 14 + 28, 100, 14 + 20, 6)
    sock.frames = [_wire(bytes(partial), udp), _wire(bytes(hinted), udp), _wire(bytes(good), udp)]
    gw._readable()
    assert gw.counts["bad_vnet_header"] == 2 and len(got) == 1
    assert V.read_header(got[0]) == (V.VNET_F_NEEDS_CSUM, V.VNET_GSO_UDP_L4, 28, 100, 20, 6)


def test_the_clock_is_read_once_per_batch(monkeypatch):
    gw, sock, got = _started(monkeypatch)
    reads: list[int] = []

    def clock() -> int:
        reads.append(1)
        return time.monotonic_ns()

    monkeypatch.setattr(R, "time", SimpleNamespace(monotonic_ns=clock))
    request = L.ethernet(L.BROADCAST, ROUTER_MAC, L.ETH_P_ARP) + _request(ROUTER_MAC, "198.51.100.254", "198.51.100.1")
    sock.frames = [V.NO_OFFLOAD + request] * 5
    gw._readable()
    assert len(reads) == 1 and gw.counts["arp_answered"] == 5


def test_a_claim_to_be_the_next_hop_is_checked_at_once_and_the_notes_logged_rate_limited(monkeypatch, caplog):
    gw, sock, got = _started(monkeypatch)
    sock.sent.clear()
    claim = L.ethernet(MAC, NEW_MAC, L.ETH_P_ARP) + _reply(NEW_MAC)
    sock.frames = [V.NO_OFFLOAD + claim]
    gw._readable()
    [check] = [dpkt.ethernet.Ethernet(f[V.VNET_HDR_LEN :]) for f in sock.sent]
    assert check.dst == ROUTER_MAC and check.data.tpa == ROUTER.to_bytes(4, "big")
    answer = L.ethernet(MAC, ROUTER_MAC, L.ETH_P_ARP) + _reply(ROUTER_MAC)
    with caplog.at_level(logging.WARNING, logger="gw.external"):
        for frames in ([answer, claim], [answer, claim], [answer]):  # a spoofer keeps trying
            sock.frames = [V.NO_OFFLOAD + f for f in frames]
            gw._readable()
        assert gw.counts["arp_conflicts"] == 3 and gw.link.next_hop_mac == ROUTER_MAC
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "02:00:00:00:00:66 claimed the next hop" in warnings[0], warnings
        gw.tick(time.monotonic_ns() + R.LOG_WINDOW_S * S)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "2 more such warnings" in warnings[1], warnings
    assert gw.link.next_hop_mac == ROUTER_MAC


def test_nothing_is_sent_after_stop(monkeypatch):
    gw, sock, got = _started(monkeypatch)
    _run(gw.stop)
    sent = len(sock.sent)
    gw.send_outbound(bytearray(V.NO_OFFLOAD + bytes(20)), 0, True)
    gw.send_outbound(bytearray(20), 0)
    gw.tick(time.monotonic_ns() + 100 * S)
    gw._send_frame(b"x")
    assert gw.counts["stopped"] == 3 and len(sock.sent) == sent


def _vnet(fields: tuple[int, ...]) -> bytes:
    buf = bytearray(V.VNET_HDR_LEN)
    V.write_header(buf, 0, *fields)
    return bytes(buf)


u16 = st.integers(0, 0xFFFF)  # hypothesis favours the edges, where +14 overflows


@given(st.one_of(st.tuples(st.integers(0, 255), st.integers(0, 255), u16, u16, u16, u16).map(_vnet),
                 st.binary(min_size=V.VNET_HDR_LEN, max_size=V.VNET_HDR_LEN)), st.binary(max_size=40))  # fmt: skip
def test_the_send_path_never_raises_for_any_vnet_header(header, payload):
    gw = R.RawGateway(SimpleNamespace(ext_addrs=PUBLIC), "lo")
    gw.link = _known_link()
    gw.sock = FakePacketSocket([])
    gw.send_outbound(bytearray(header + payload), 0, True)
    gw.send_outbound(bytearray(header[:5]), 0, True)  # shorter than a header
    gw.sock.close()  # hypothesis runs many examples in one test
    sent = gw.sock.sent
    vh = V.to_link(header)
    assert gw.counts["bad_vnet_header"] == (2 if vh is None else 1)
    assert sent == ([] if vh is None else [vh + gw.link.header + payload])
