"""To the internet through the socket external gateway, in the lab: the real daemon and clients, the
internet host behind an on-path router. What the internet host sees is the oracle: the public endpoint
each datagram came from, which the journal must attribute to the right client."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from gw import inet
from gw.lab.world import ECHO_PORT, GATEWAY_HOST, INTERNET_HOST, INTERNET_SECOND, LabWorld
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


def test_tcp_in_socket_mode_fails_fast_with_a_reset(world):
    world.start()
    t = time.monotonic()
    code = (f"import socket\ntry:\n    socket.create_connection(({INTERNET_HOST!r}, {ECHO_PORT}), timeout=5)\n"
            "except ConnectionRefusedError:\n    print('refused')")
    assert world.run("c1", sys.executable, "-c", code).stdout.strip() == "refused"
    assert time.monotonic() - t < 3
    assert query(world.status_socket)["counts"]["tcp_refused"] >= 1


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
