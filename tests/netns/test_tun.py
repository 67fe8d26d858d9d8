"""gw.tun against the real kernel, in namespaces of our own: reads, writes, offloads, batches, errors.

Each ``_in_ns_*`` function runs in a fresh interpreter inside a throwaway namespace (``netns.call``); it
opens the TUN there, makes the traffic there, and returns what it saw as JSON (packets as hex). The test
then checks it here with dpkt as the oracle. Every wait inside is bounded (``WAIT_S``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dpkt
import pytest

from gw import tun as tun_mod
from gw import vnet
from gw.errors import GwError
from gw.inet import aton
from gw.packet import build_udp, checksum, l4_checksum, pseudo_header_sum
from gw.tun import TunDevice, TunError
from tests.netns.conftest import ROOT, Netns, NetnsCallError, netns_list, require_netns

pytestmark = pytest.mark.netns

TUN_NAME = "gwt0"
TUN_ADDR = "10.66.77.1"  # the TUN's own address, /24
PEER_ADDR = "10.66.77.2"  # on the TUN's subnet: the kernel routes packets for it out of the TUN
DISCARD_PORT = 9
REPLY_PORT = 5000
SOL_UDP = 17
UDP_SEGMENT = 103  # include/uapi/linux/udp.h: the socket's GSO size (Linux >= 4.18)
WAIT_S = 2.0  # bound on every wait for a packet inside a namespace
LINGER_S = 0.15  # after the expected packets, wait this long for unexpected extra ones
GSO_PAYLOAD = bytes(i % 251 for i in range(8000))  # 8 segments of 1000; the period 251 catches reordering


# --- inside the namespace --------------------------------------------------------------------------


def _tun_up(vnet_hdr: bool = True, offloads: bool = True) -> TunDevice:
    dev = TunDevice.open(TUN_NAME, vnet_hdr=vnet_hdr, offloads=offloads)
    dev.configure(TUN_ADDR, 24, 1500)
    return dev


def _collect(dev: TunDevice, want: int) -> list[str]:
    """Copies (hex) of the IPv4 packets read until ``want`` arrived (or WAIT_S), then LINGER_S for extras."""
    got: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while (now := time.monotonic()) < deadline:
        if len(got) >= want:
            deadline = min(deadline, now + LINGER_S)
        readable, _, _ = select.select([dev.fileno()], [], [], max(0.0, deadline - now))
        if readable:
            got += [bytes(v).hex() for v in dev.read_batch() if v[dev.header_len] >> 4 == 4]
    return got


def _in_ns_send_udp(vnet_hdr: bool, payload_len: int, gso_size: int, want: int, refuse_uso: bool) -> dict:
    if refuse_uso:  # play a kernel older than 6.2, which answers TUNSETOFFLOAD with USO bits with EINVAL
        real_ioctl = fcntl.ioctl

        def old_kernel_ioctl(fd: int, request: int, arg: int | bytes = 0, *rest: bool) -> int | bytes:
            if request == tun_mod.TUNSETOFFLOAD and isinstance(arg, int) and arg & tun_mod.OFFLOADS_USO:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real_ioctl(fd, request, arg, *rest)

        fcntl.ioctl = old_kernel_ioctl
    with _tun_up(vnet_hdr=vnet_hdr) as dev, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if gso_size:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, gso_size)
        sock.sendto(
            GSO_PAYLOAD[:payload_len] if payload_len <= 8000 else bytes(payload_len),
            (PEER_ADDR, DISCARD_PORT),
        )
        return {"offloads": sorted(dev.offloads), "packets": _collect(dev, want)}


def _in_ns_write(vnet_hdr: bool, header: list[int] | None, payload_hex: str) -> dict:
    payload = bytes.fromhex(payload_hex)
    with _tun_up(vnet_hdr=vnet_hdr) as dev, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((TUN_ADDR, REPLY_PORT))
        sock.settimeout(WAIT_S)
        pkt = build_udp(aton(PEER_ADDR), aton(TUN_ADDR), DISCARD_PORT, REPLY_PORT, payload)
        if header is not None:  # a super-packet: the UDP checksum field holds the pseudo-header sum
            s = pseudo_header_sum(aton(PEER_ADDR), aton(TUN_ADDR), 17, len(pkt) - 20)
            s = (s & 0xFFFF) + (s >> 16)
            pkt[26:28] = ((s & 0xFFFF) + (s >> 16)).to_bytes(2, "big")
        head = b"" if not vnet_hdr else vnet.NO_OFFLOAD if header is None else bytearray(vnet.VNET_HDR_LEN)
        if header is not None:
            vnet.write_header(head, 0, *header)
        written = dev.write(head + pkt)
        datagrams, sources = [], set()
        try:
            while True:
                data, src = sock.recvfrom(65536)
                datagrams.append(data.hex())
                sources.add(f"{src[0]}:{src[1]}")
                sock.settimeout(LINGER_S)
        except TimeoutError:
            pass
        return {"written": written, "datagrams": datagrams, "sources": sorted(sources)}


def _in_ns_read_batch_bounds() -> dict:
    with _tun_up() as dev, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        empty = dev.read_batch()
        for i in range(8):
            sock.sendto(bytes([i]) * 100, (PEER_ADDR, DISCARD_PORT))
        select.select([dev.fileno()], [], [], WAIT_S)
        time.sleep(0.1)  # the kernel queues all 8 within the sendto calls; this is slack, not a handshake
        first = dev.read_batch(3)
        first_byte = first[0][dev.header_len + 28]
        sizes = [len(first), len(dev.read_batch(3)), len(dev.read_batch(64)), len(dev.read_batch(64))]
        bad = []
        for n in (0, tun_mod.TUN_MAX_BATCH + 1):
            try:
                dev.read_batch(n)
            except ValueError:
                bad.append(n)
        return {"empty": len(empty), "sizes": sizes, "first_byte": first_byte, "refused": bad}


def _in_ns_configure_in_running_loop() -> dict:
    import asyncio

    dev = TunDevice.open(TUN_NAME)

    async def main() -> None:  # the shell's situation: pyroute2's own loop cannot run inside this one
        dev.configure(TUN_ADDR, 24, 1400)

    asyncio.run(main())
    shown = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", TUN_NAME],
        capture_output=True,
        text=True,
        check=True,
        timeout=5,
    ).stdout
    try:
        dev.configure(TUN_ADDR, 33, 1400)
        bad = ""
    except TunError as e:
        bad = str(e)
    dev.close()
    return {"link": json.loads(shown)[0], "bad_prefix": bad}


def _in_ns_errors_and_close() -> dict:
    out: dict = {}
    dev = _tun_up()
    try:
        TunDevice.open(TUN_NAME)
    except TunError as e:
        out["busy"] = {
            "msg": str(e),
            "errno": e.errno,
            "oserror": isinstance(e, OSError),
            "gwerror": isinstance(e, GwError),
        }
    try:
        TunDevice.open("x" * 16)
    except TunError as e:
        out["long_name"] = str(e)
    out["fileno_open"] = dev.fileno()
    dev.close()
    dev.close()  # idempotent
    out["fileno_closed"] = dev.fileno()
    try:
        socket.if_nametoindex(TUN_NAME)
        out["gone"] = False
    except OSError:
        out["gone"] = True
    return out


def _in_ns_fail(msg: str) -> None:
    raise RuntimeError(msg)


# --- checks, here ----------------------------------------------------------------------------------


def _parse(hexpkt: str, header_len: int = vnet.VNET_HDR_LEN) -> tuple[tuple, dpkt.ip.IP, bytes]:
    raw = bytes.fromhex(hexpkt)
    hdr = vnet.read_header(raw) if header_len else ()
    return hdr, dpkt.ip.IP(raw[header_len:]), raw


def _kernel_version() -> tuple[int, int]:
    major, minor = os.uname().release.split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _assert_udp_to_peer(ip: dpkt.ip.IP) -> None:
    assert ip.p == dpkt.ip.IP_PROTO_UDP
    assert socket.inet_ntoa(ip.src) == TUN_ADDR
    assert socket.inet_ntoa(ip.dst) == PEER_ADDR
    assert ip.data.dport == DISCARD_PORT


def test_udp_sent_in_namespace_is_read_from_tun(netns: Netns) -> None:
    ns = netns.create()
    seen = netns.call(ns, _in_ns_send_udp, True, 5, 0, 1, False)
    assert len(seen["packets"]) == 1
    hdr, ip, raw = _parse(seen["packets"][0])
    _assert_udp_to_peer(ip)
    assert ip.data.data == GSO_PAYLOAD[:5]
    assert len(raw) == vnet.VNET_HDR_LEN + 20 + 8 + 5
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = hdr
    assert (gso_type, gso_size) == (vnet.VNET_GSO_NONE, 0)
    # TUN_F_CSUM is on, so the kernel leaves the UDP checksum to us: the field holds the pseudo-header sum,
    # and the ones'-complement sum from csum_start finishes it into the real checksum
    assert (flags, csum_start, csum_offset) == (vnet.VNET_F_NEEDS_CSUM, 20, 6)
    ip_bytes = bytearray(raw[vnet.VNET_HDR_LEN :])
    assert checksum(ip_bytes, csum_start) == l4_checksum(ip_bytes)


@pytest.mark.parametrize("vnet_hdr", [True, False], ids=["vnet_hdr", "plain"])
def test_reply_written_to_tun_reaches_socket(netns: Netns, vnet_hdr: bool) -> None:
    ns = netns.create()
    got = netns.call(ns, _in_ns_write, vnet_hdr, None, b"pong".hex())
    assert got["written"] == (vnet.VNET_HDR_LEN if vnet_hdr else 0) + 20 + 8 + 4
    assert got["datagrams"] == [b"pong".hex()]
    assert got["sources"] == [f"{PEER_ADDR}:{DISCARD_PORT}"]


def test_udp_gso_send_comes_out_as_one_super_packet(netns: Netns) -> None:
    ns = netns.create()
    seen = netns.call(ns, _in_ns_send_udp, True, 8000, 1000, 8, False)
    if _kernel_version() < (6, 2):  # no USO on a TUN: the kernel segments before the TUN
        assert seen["offloads"] == ["csum", "tso4", "tso6"]
        assert len(seen["packets"]) == 8
        return
    assert seen["offloads"] == ["csum", "tso4", "tso6", "uso4", "uso6"]
    assert len(seen["packets"]) == 1
    hdr, ip, raw = _parse(seen["packets"][0])
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = hdr
    assert (gso_type, gso_size, hdr_len) == (vnet.VNET_GSO_UDP_L4, 1000, 20 + 8)
    assert (flags, csum_start, csum_offset) == (vnet.VNET_F_NEEDS_CSUM, 20, 6)
    _assert_udp_to_peer(ip)
    assert ip.len == 20 + 8 + 8000 == len(raw) - vnet.VNET_HDR_LEN
    assert ip.data.ulen == 8 + 8000  # the super-packet's UDP length covers all the segments
    assert ip.data.data == GSO_PAYLOAD


def _assert_segmented(packets: list[str], header_len: int) -> None:
    assert len(packets) == 8
    payload = b""
    for p in packets:
        hdr, ip, raw = _parse(p, header_len)
        _assert_udp_to_peer(ip)
        assert len(raw) - header_len == 20 + 8 + 1000
        if header_len:
            assert hdr[1] == vnet.VNET_GSO_NONE
        payload += ip.data.data
    assert payload == GSO_PAYLOAD


def test_udp_gso_send_without_vnet_hdr_comes_out_segmented(netns: Netns) -> None:
    ns = netns.create()
    seen = netns.call(ns, _in_ns_send_udp, False, 8000, 1000, 8, False)
    assert seen["offloads"] == []
    _assert_segmented(seen["packets"], 0)


def test_kernel_refusing_uso_falls_back_to_tso(netns: Netns) -> None:
    ns = netns.create()
    seen = netns.call(ns, _in_ns_send_udp, True, 8000, 1000, 8, True)
    assert seen["offloads"] == ["csum", "tso4", "tso6"]
    _assert_segmented(seen["packets"], vnet.VNET_HDR_LEN)


def test_largest_super_packet_is_read_whole(netns: Netns) -> None:
    ns = netns.create()
    # 65,507 bytes of UDP payload (the IPv4 maximum) in segments of 1400 (at most 64 segments per send)
    seen = netns.call(ns, _in_ns_send_udp, True, 65507, 1400, 1, False)
    if _kernel_version() < (6, 2):
        pytest.skip("this kernel does not hand UDP super-packets to a TUN (Linux < 6.2)")
    assert len(seen["packets"]) == 1
    hdr, ip, raw = _parse(seen["packets"][0])
    assert len(raw) == vnet.VNET_HDR_LEN + 65535
    assert ip.len == 65535
    assert (hdr[1], hdr[3]) == (vnet.VNET_GSO_UDP_L4, 1400)


def test_super_packet_written_to_tun_is_delivered_as_segments(netns: Netns) -> None:
    ns = netns.create()
    header = [vnet.VNET_F_NEEDS_CSUM, vnet.VNET_GSO_UDP_L4, 20 + 8, 1000, 20, 6]
    got = netns.call(ns, _in_ns_write, True, header, GSO_PAYLOAD.hex())
    assert got["written"] == vnet.VNET_HDR_LEN + 20 + 8 + 8000
    datagrams = [bytes.fromhex(d) for d in got["datagrams"]]
    assert [len(d) for d in datagrams] == [1000] * 8  # segmented by the kernel (no UDP_GRO on the socket)
    assert b"".join(datagrams) == GSO_PAYLOAD


def test_read_batch_is_bounded_and_empty_on_eagain(netns: Netns) -> None:
    ns = netns.create()
    got = netns.call(ns, _in_ns_read_batch_bounds)
    assert got["empty"] == 0
    assert got["sizes"] == [3, 3, 2, 0]
    assert got["first_byte"] == 0  # the first datagram sent is the first read
    assert got["refused"] == [0, tun_mod.TUN_MAX_BATCH + 1]


def test_configure_from_a_running_event_loop(netns: Netns) -> None:
    ns = netns.create()
    got = netns.call(ns, _in_ns_configure_in_running_loop)
    link = got["link"]
    assert link["ifname"] == TUN_NAME and link["mtu"] == 1400 and "UP" in link["flags"]
    assert [(a["local"], a["prefixlen"]) for a in link["addr_info"]] == [(TUN_ADDR, 24)]
    assert TUN_NAME in got["bad_prefix"] and "set address 10.66.77.1/33" in got["bad_prefix"]


def test_errors_name_the_device_and_close_removes_it(netns: Netns) -> None:
    ns = netns.create()
    got = netns.call(ns, _in_ns_errors_and_close)
    busy = got["busy"]
    assert busy["errno"] == errno.EBUSY and busy["oserror"] and busy["gwerror"]
    assert TUN_NAME in busy["msg"] and "in use" in busy["msg"]
    assert "x" * 16 in got["long_name"] and "1 to 15 bytes" in got["long_name"]
    assert got["fileno_open"] >= 0 and got["fileno_closed"] == -1
    assert got["gone"]


def test_namespace_removed_when_the_body_raises() -> None:
    require_netns()
    with pytest.raises(NetnsCallError, match="deliberate failure"), Netns() as helper:
        name = helper.create()
        assert name in netns_list()
        helper.call(name, _in_ns_fail, "deliberate failure")
    assert name not in netns_list()


def test_fixture_removes_namespace_of_a_failing_test(tmp_path: Path) -> None:
    require_netns()
    record = tmp_path / "name"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(f"""
        from tests.netns.conftest import netns  # noqa: F401
        from tests.netns.test_tun import _in_ns_fail

        def test_inner(netns):
            name = netns.create()
            open({str(record)!r}, "w").write(name)
            netns.call(name, _in_ns_fail, "deliberate failure")
    """)
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deliberate failure" in proc.stdout
    name = record.read_text()
    assert name.startswith("gwt-")
    assert name not in netns_list()
