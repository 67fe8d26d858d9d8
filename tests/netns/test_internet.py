"""To the internet through the socket external gateway, in the lab: the real daemon and clients, the
internet host behind an on-path router. What the internet host sees is the oracle: the public endpoint
each datagram came from, which the journal must attribute to the right client."""

from __future__ import annotations

import json
import signal
import sys
import time

import pytest

from gw import inet
from gw.lab.services import http_body_sha256
from gw.lab.world import (
    ECHO_PORT,
    GATEWAY_HOST,
    HTTP_PORT,
    INTERNET_HOST,
    INTERNET_SECOND,
    INTERNET_WWW,
    LabWorld,
)
from gw.status import query
from journal.holders import find_holders
from journal.reader import Journal

pytestmark = pytest.mark.netns


def _seen(world: LabWorld) -> list[str]:
    """The public endpoints the internet host's UDP echo saw, in order."""
    lines = (world.dir / "internet.log").read_text().splitlines()
    return [ln.split()[-1] for ln in lines if ln.startswith("udp echo")]


def _holders(world: LabWorld, endpoint: str) -> list[str]:
    addr, _, port = endpoint.rpartition(":")
    holders = find_holders(Journal(world.journal), inet.aton(addr), int(port), 17, time.time_ns())
    return [h.record.client for h in holders]


def test_udp_ping_and_dns_reach_the_internet_and_the_journal_names_who_held_each_public_port(world):
    vpn = world.start()
    assert world.probe("c1", "udp_echo", INTERNET_HOST, ECHO_PORT, 5, 200)["received"] == 5
    assert world.probe("c2", "udp_echo", INTERNET_HOST, ECHO_PORT, 5, 200)["received"] == 5
    assert world.probe("c1", "ping", INTERNET_HOST, 3)["received"] == 3
    dns = world.probe("c2", "dns", INTERNET_HOST, "www.lab.example", False)  # straight to the internet's server
    assert dns["answers"] == ["203.0.113.80"], dns
    seen = _seen(world)
    alice, bob = seen[0], seen[-1]
    assert alice.startswith(GATEWAY_HOST + ":") and bob.startswith(GATEWAY_HOST + ":") and alice != bob
    assert set(seen) == {alice, bob}  # one public port per client flow, whatever the number of datagrams
    assert _holders(world, alice) == ["alice"] and _holders(world, bob) == ["bob"]
    doc = query(world.status_socket)
    assert doc["external"]["mode"] == "socket" and doc["external"]["sockets"] >= 4  # 2 UDP, ICMP, DNS
    assert {s["client"] for s in doc["sessions"]} == set(vpn)


def test_the_mapping_is_endpoint_independent_one_public_port_toward_two_destinations(world):
    world.start()
    code = ("import socket, json; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
            f"got = []\nfor dst in ({INTERNET_HOST!r}, {INTERNET_SECOND!r}):\n"
            f"    s.sendto(b'x' * 50, (dst, {ECHO_PORT})); got.append(s.recvfrom(100)[1][0])\nprint(json.dumps(got))")
    out = world.run("c1", sys.executable, "-c", code).stdout
    assert INTERNET_HOST in out and INTERNET_SECOND in out
    seen = _seen(world)
    assert len(seen) == 2 and seen[0] == seen[1]  # RFC 4787 REQ-1: the same external endpoint for both


def test_tcp_in_socket_mode_is_ended_at_the_gateway_and_carried_on_through_kernel_sockets(world):
    """A download and an echo through user-space TCP termination (gw.tcp_term) and kernel sockets,
    checked end to end by sha256; the HTTP server sees the host's public address, and the journal
    names the client that held the public port it saw."""
    world.start()
    size = 20_000_000
    got = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{size}", 60, timeout=70)
    assert got.get("status") == 200 and got["bytes"] == size and got["sha256"] == http_body_sha256(size), got
    echo = world.probe("c1", "tcp_echo", INTERNET_HOST, ECHO_PORT, 4 << 20)
    assert echo.get("same") is True and echo.get("bytes") == 4 << 20, echo
    log = (world.dir / "internet.log").read_text()
    seen = [ln.split()[-1] for ln in log.splitlines() if ln.startswith(f"http sent {size} bytes to ")]
    assert len(seen) == 1, log[-2000:]
    addr, _, port = seen[0].rpartition(":")
    holders = find_holders(Journal(world.journal), inet.aton(addr), int(port), 6, time.time_ns())
    assert [h.session.client for h in holders] == ["alice"], holders


def test_tcp_in_socket_mode_a_refused_connect_fails_fast_with_a_reset(world):
    world.start()
    t = time.monotonic()
    code = (f"import socket\ntry:\n    socket.create_connection(({INTERNET_HOST!r}, 9), timeout=5)\n"
            "except ConnectionRefusedError:\n    print('refused')")
    assert world.run("c1", sys.executable, "-c", code).stdout.strip() == "refused"
    assert time.monotonic() - t < 3
    ext = query(world.status_socket)["external"]
    assert ext["tcp_connect_failed"] >= 1, json.dumps(ext)


def test_after_a_gateway_restart_a_flow_goes_on_from_the_same_public_port(world):
    world.start()
    code = ("import socket, time, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"
            "ok = 0\nfor i in range(40):\n"
            f"    s.sendto(b'%d' % i, ({INTERNET_HOST!r}, {ECHO_PORT}))\n"
            "    try:\n        s.recv(100); ok += 1\n    except TimeoutError:\n        pass\n"
            "    time.sleep(0.25)\nprint(ok)")
    flow = world.spawn_command("c1", "flow", sys.executable, "-c", code)
    time.sleep(2)
    world.stop(world.process("gateway"), signal.SIGKILL)
    world.start_gateway()
    deadline = time.monotonic() + 20
    while world.alive(flow) and time.monotonic() < deadline:
        time.sleep(0.2)
    answered = int((world.dir / "flow.log").read_text().strip() or 0)
    seen = _seen(world)
    assert len(set(seen)) == 1, seen  # every datagram, before and after the crash, from one public port
    assert answered >= 20, answered  # the client reconnects within seconds and the flow goes on
    assert _holders(world, seen[0]) == ["alice"]


CLOSED_PORT = 9  # discard: nothing listens there on the internet host
# The client's side of test_icmp_errors...: three connected UDP sockets, one per ICMP error (linux/in.h
# constants: the socket module has them from Python 3.12 on), and a ping with TTL 2 on a raw socket.
_ICMP_ERRORS_CLIENT = f"""
import errno, json, socket, struct
IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_RECVERR, IP_MTU = 10, 2, 11, 14
def udp(port, *options):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    for option, value in options:
        s.setsockopt(socket.IPPROTO_IP, option, value)
    s.connect(({INTERNET_HOST!r}, port))
    return s
def name(e):
    return errno.errorcode.get(e.errno, "timeout")  # a TimeoutError has no errno
def outcome(s, size):
    try:
        s.recv(size)
        return "answered"
    except OSError as e:
        return name(e)
out = {{}}
closed = udp({CLOSED_PORT})
closed.send(b"knock")
out["closed"] = outcome(closed, 100)
big = udp({ECHO_PORT}, (IP_MTU_DISCOVER, IP_PMTUDISC_DO))
big.send(b"x" * 1372)  # 1400 bytes with its headers: the tunnel's MTU, over the router's 1280
out["big"] = outcome(big, 2000)
out["mtu"] = big.getsockopt(socket.IPPROTO_IP, IP_MTU)
try:
    big.send(b"x" * 1372)
    out["again"] = "sent"
except OSError as e:
    out["again"] = name(e)
hop = udp({ECHO_PORT}, (socket.IP_TTL, 2), (IP_RECVERR, 1))  # one hop for the gateway, the second for the router
hop.send(b"trace")
out["hop"] = outcome(hop, 100)
try:
    _, anc, _, _ = hop.recvmsg(100, 512, socket.MSG_ERRQUEUE)
    ee = anc[0][2]
    out["hop_error"] = [ee[5], ee[6], socket.inet_ntoa(ee[20:24])]  # type, code, offender
except OSError as e:
    out["hop_error"] = name(e)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
raw.settimeout(2)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 2)
echo = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"p" * 16
s = sum(struct.unpack("!12H", echo))
s = (s & 0xFFFF) + (s >> 16)
raw.sendto(echo[:2] + struct.pack("!H", ~(s + (s >> 16)) & 0xFFFF) + echo[4:], ({INTERNET_HOST!r}, 0))
out["ping_hop"] = "timeout"
try:
    while True:
        pkt, (src, _) = raw.recvfrom(2000)
        at = (pkt[0] & 15) * 4
        quoted = at + 8 + (pkt[at + 8] & 15) * 4
        if pkt[at] == 11 and pkt[quoted] == 8 and pkt[quoted + 4 : quoted + 6] == b"\x42\x42":
            out["ping_hop"] = [pkt[at], src]  # time exceeded, quoting our echo and its identifier
            break
except TimeoutError:
    pass
print(json.dumps(out))
"""


def test_icmp_errors_about_a_clients_datagrams_come_back_to_it_through_the_socket_gateway(world):
    """Port unreachable, fragmentation needed and time exceeded reach the gateway's sockets (IP_RECVERR)
    and come back to the client as ICMP errors about its own datagrams: its kernel refuses the connected
    socket, learns the path MTU of the router's 1280-byte link, and names the router as the second hop
    (UDP and ping)."""
    import json

    from gw.lab.world import ROUTER

    world.start()
    run = world.run("c1", sys.executable, "-c", _ICMP_ERRORS_CLIENT, timeout=20)  # three 2 s waits at most
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["closed"] == "ECONNREFUSED", out
    assert out["big"] == "EMSGSIZE" and out["mtu"] == 1280 and out["again"] == "EMSGSIZE", out
    assert out["hop"] == "EHOSTUNREACH" and out["hop_error"] == [11, 0, ROUTER], out
    assert out["ping_hop"] == [11, ROUTER], out  # through the gateway's ICMP socket
    assert query(world.status_socket)["external"]["icmp_errors"] >= 4


def test_a_datagram_the_client_sent_without_df_may_be_fragmented_on_the_path(world):
    """1300 bytes without DF cross the 1280-byte link: the socket gateway sends them without DF too."""
    world.start()
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
            "s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT: no DF\n"
            f"s.sendto(b'd' * 1300, ({INTERNET_HOST!r}, {ECHO_PORT})); print(len(s.recv(2000)))")
    assert world.run("c1", sys.executable, "-c", code).stdout.strip() == "1300"
    assert "udp echo 1300 bytes" in (world.dir / "internet.log").read_text()


def test_a_udp_super_packet_from_the_client_leaves_as_the_datagrams_it_was_made_of(world):
    """A client sending with UDP_SEGMENT hands its TUN one super-packet (USO): the socket gateway sends
    it with UDP_SEGMENT too, so the internet host gets 500-byte datagrams, not one of 3000 bytes."""
    world.start()
    code = ("import socket, struct; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
            "s.setsockopt(socket.SOL_UDP, 103, 500)  # UDP_SEGMENT\n"
            f"s.sendto(b'g' * 3000, ({INTERNET_HOST!r}, {ECHO_PORT}))\n"
            "print(sorted(len(s.recv(4000)) for _ in range(6)))")
    assert world.run("c1", sys.executable, "-c", code).stdout.strip() == str([500] * 6)
    assert _seen(world) and all(ln.startswith("udp echo 500 bytes") for ln in
                                (world.dir / "internet.log").read_text().splitlines() if ln.startswith("udp echo"))
    # one super-packet came through the tunnel (the client's TUN did USO) and left with UDP_SEGMENT
    assert query(world.status_socket)["external"]["udp_segmented"] == 1


def test_a_mapping_that_got_an_icmp_error_keeps_receiving(world):
    """One socket: a datagram to a closed port (its mapping's socket gets the port unreachable: a socket
    error), then to the echo: the answer still comes back (the reader survives the error: gw.rearm)."""
    world.start()
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n"
            f"s.sendto(b'to a closed port', ({INTERNET_HOST!r}, 9))\n"
            "import time; time.sleep(0.5)\n"
            f"s.sendto(b'to the echo', ({INTERNET_HOST!r}, {ECHO_PORT})); print(s.recv(100).decode())")
    assert world.run("c1", sys.executable, "-c", code).stdout.strip() == "to the echo"
    assert query(world.status_socket)["external"]["icmp_errors"] >= 1
