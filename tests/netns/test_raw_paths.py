"""Paths through the raw external gateway, in the lab: the gateway's own NAT on 198.51.100.1 (an address
its host's kernel does not own), the on-path router 198.51.100.254, and the router's 1280-byte link to
the internet host. Each test looks at what the internet host or a client really saw: the internet host's
log (the public endpoint and size of every datagram its UDP echo got), the ICMP errors a client's kernel
queued (IP_RECVERR), the datagrams a client received and from whom, and the gateway's journal.

Covered: traceroute (the gateway is a hop, the router's error is translated back), path MTU discovery
across the small link (UDP and TCP), fragments both ways, endpoint-independent mapping, both filtering
modes, hairpinning between two clients (RFC 4787 REQ-9), and a journaled mapping quota (RFC 6888).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from gw import inet
from gw.config import VpnConfig
from gw.lab.world import (
    ECHO_PORT,
    INTERNET_HOST,
    INTERNET_SECOND,
    RAW_PUBLIC,
    ROUTER,
    ROUTER_FAR,
    SMALL_MTU,
    LabWorld,
)
from journal.events import QuotaHit
from journal.reader import Journal

pytestmark = pytest.mark.netns

GATEWAY_VPN = VpnConfig().gateway_address  # the gateway's address on the VPN: its Time Exceeded comes from it
TUNNEL_MTU = 1400  # the clients' TUN MTU (the gateway's welcome)
ICMP_TIME_EXCEEDED, ICMP_UNREACHABLE = 11, 3
CODE_PORT_UNREACHABLE, CODE_FRAG_NEEDED = 3, 4
LISTEN_PORT, OTHER_PORT = 5555, 5556  # the internet host's filtering listener and its second port
ALICE_PORT, BOB_PORT = 40001, 40002  # fixed client ports where a test needs its mapping twice
WAIT_S = 5.0  # the longest a test waits for a log line, a socket or a journal event
PROBE_S = 15  # one probe, start to end: its own waits are a few seconds
UPLOAD_S = 30  # the 8 MiB TCP upload: about a second here, its probe gives up after 10 s without progress


def _seen(world: LabWorld) -> list[tuple[int, str]]:
    """(size, public endpoint) of each datagram the internet host's UDP echo got, in order."""
    lines = (world.dir / "internet.log").read_text().splitlines()
    return [(int(ln.split()[2]), ln.split()[-1]) for ln in lines if ln.startswith("udp echo")]


def _wait_seen(world: LabWorld, n: int) -> list[tuple[int, str]]:
    """The internet host's log once it shows at least ``n`` echoed datagrams (or after WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while len(seen := _seen(world)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return seen


def _set_nat(world: LabWorld, **settings: object) -> None:
    """Add ``key = value`` lines to the [nat] section of the gateway's configuration (before ``start``)."""
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())  # a JSON str or int is TOML
    text = world.gateway_toml.read_text()
    assert text.count("[nat]\n") == 1, text
    world.gateway_toml.write_text(text.replace("[nat]\n", "[nat]\n" + lines))


def _spawn_probe(world: LabWorld, role: str, name: str, probe: str, *args: object) -> dict:
    """Start a probe in the background (its JSON result is the last line of ``<name>.log``)."""
    return world.spawn_command(role, name, sys.executable, "-m", "gw.lab.probes", probe, json.dumps(args))


def _result(world: LabWorld, record: dict, timeout_s: float) -> dict:
    """A background probe's result, once it has ended (it bounds its own time; this waits ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while world.alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not world.alive(record), f"{record['name']} still running after {timeout_s} s"
    return json.loads(world.log_tail(record["name"], 1))


def _wait_bound(world: LabWorld, role: str, port: int) -> None:
    """Wait until a UDP socket is bound to ``port`` in ``role`` (a background listener is ready)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if world.run(role, "ss", "-Hlun", f"sport = :{port}").stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on UDP port {port} in {role} after {WAIT_S} s")


def _port(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def test_traceroute_shows_the_gateway_then_the_router_then_the_destination(raw_world):
    """TTL 1 expires in the gateway (Time Exceeded from its VPN address); TTL 2 at the router, whose error
    about 198.51.100.1's datagram is translated back to the client; TTL 3 reaches the internet host,
    which answers port unreachable."""
    raw_world.start()
    hops = raw_world.probe("c1", "traceroute", INTERNET_HOST, 3, timeout=PROBE_S)["hops"]
    assert [(h["from"], h["type"], h["code"]) for h in hops] == [
        (GATEWAY_VPN, ICMP_TIME_EXCEEDED, 0),
        (ROUTER, ICMP_TIME_EXCEEDED, 0),
        (INTERNET_HOST, ICMP_UNREACHABLE, CODE_PORT_UNREACHABLE),
    ], hops


def test_fragmentation_needed_reaches_the_client_and_a_tcp_upload_crosses_the_small_mtu_link(raw_world):
    """A 1400-byte datagram with DF fits the tunnel but not the router's 1280-byte link: the router's
    "fragmentation needed" (MTU 1280) comes back through the NAT, and the client's kernel learns the path
    MTU. Then 8 MiB of TCP from the other client (whose kernel has not learned it yet) to the internet
    echo: its 1400-byte segments meet the same link, and the upload completes only if PMTU discovery
    works through the gateway for TCP too. The internet host advertises the MSS of a 1400-byte path, as a
    server on an ordinary link behind the small one would (with its own 1280-byte link it would offer
    1240, and the client's segments would never be too big)."""
    advmss = str(TUNNEL_MTU - 40)  # 20 bytes of IPv4 header, 20 of TCP
    raw_world.run("inet", "ip", "route", "change", "default", "via", ROUTER_FAR, "advmss", advmss)
    raw_world.start()
    out = raw_world.probe("c1", "pmtu", INTERNET_HOST, ECHO_PORT, TUNNEL_MTU, timeout=PROBE_S)
    assert out["mtu_before"] == TUNNEL_MTU, out  # it left the client whole, with DF
    assert out["icmp"] == {"type": ICMP_UNREACHABLE, "code": CODE_FRAG_NEEDED, "info": SMALL_MTU,
                           "from": ROUTER}, out  # fmt: skip
    assert out["mtu"] == SMALL_MTU and not out["answered"], out
    assert not any(size == TUNNEL_MTU - 28 for size, _ in _seen(raw_world))  # it never reached the host
    upload = raw_world.probe("c2", "tcp_echo", INTERNET_HOST, ECHO_PORT, 8 << 20, timeout=UPLOAD_S)
    assert upload.get("same") is True and upload["bytes"] == 8 << 20, upload
    route = raw_world.run("c2", "ip", "route", "get", INTERNET_HOST).stdout
    assert f"mtu {SMALL_MTU}" in route, route  # bob's TCP learned it from the router, through the NAT


def test_fragmented_udp_is_translated_both_ways(raw_world):
    """3000-byte datagrams: fragmented by the client (TUN MTU 1400), translated fragment by fragment,
    fragmented again by the router (1280); the echo comes back in fragments through the NAT."""
    raw_world.start()
    out = raw_world.probe("c1", "udp_echo", INTERNET_HOST, ECHO_PORT, 5, 3000, timeout=PROBE_S)
    assert out["received"] == 5, out
    seen = _seen(raw_world)
    assert len(seen) == 5 and {size for size, _ in seen} == {3000}, seen  # reassembled whole at the host
    assert len({ep for _, ep in seen}) == 1 and seen[0][1].startswith(RAW_PUBLIC + ":"), seen


def test_the_mapping_is_endpoint_independent(raw_world):
    """One client socket to two internet addresses: the internet host sees one public endpoint for both
    (RFC 4787 REQ-1)."""
    raw_world.start()
    targets = [[INTERNET_HOST, ECHO_PORT, "eim"], [INTERNET_SECOND, ECHO_PORT, "eim"]]
    out = raw_world.probe("c1", "udp_talk", targets, 3.0, 0, 2, timeout=PROBE_S)
    assert sorted(r["from"] for r in out["received"]) == [f"{INTERNET_HOST}:{ECHO_PORT}",
                                                          f"{INTERNET_SECOND}:{ECHO_PORT}"], out  # fmt: skip
    seen = [ep for _, ep in _seen(raw_world)]
    assert len(seen) == 2 and seen[0] == seen[1] and seen[0].startswith(RAW_PUBLIC + ":"), seen


def _knock_and_answer(world: LabWorld) -> tuple[dict, dict]:
    """c1 knocks on the internet host's listener, which answers from three source endpoints: its own
    (allowed), another port of its address, and its other address. Returns (what c1 got, the listener's)."""
    sources = [[INTERNET_HOST, OTHER_PORT, "other-port"], [INTERNET_SECOND, LISTEN_PORT, "other-address"],
               [INTERNET_HOST, LISTEN_PORT, "allowed"]]  # allowed last: the others had their chance first
    listener = _spawn_probe(world, "inet", "listener", "udp_answer", INTERNET_HOST, LISTEN_PORT, sources, 8.0)
    _wait_bound(world, "inet", LISTEN_PORT)
    knock = [[INTERNET_HOST, LISTEN_PORT, "knock"]]
    got = world.probe("c1", "udp_talk", knock, 2.0, ALICE_PORT, 3, timeout=PROBE_S)
    answer = _result(world, listener, 10.0)
    assert answer["peer"] is not None and answer["peer"].startswith(RAW_PUBLIC + ":"), answer
    assert len(answer["sent"]) == 3, answer
    return got, answer


def test_default_filtering_admits_only_the_remote_endpoint_the_client_sent_to(raw_world):
    """Address-and-port-dependent filtering (the default, RFC 4787 REQ-8): after the client sent to
    203.0.113.10:5555, only that endpoint gets in; 203.0.113.10:5556 and 203.0.113.11:5555 do not."""
    raw_world.start()
    got, _ = _knock_and_answer(raw_world)
    assert [(r["from"], r["data"]) for r in got["received"]] == [
        (f"{INTERNET_HOST}:{LISTEN_PORT}", "allowed")
    ], got


def test_endpoint_independent_filtering_admits_any_remote(raw_world):
    """With ``filtering = "endpoint-independent"`` all three answers reach the client."""
    _set_nat(raw_world, filtering="endpoint-independent")
    raw_world.start()
    got, _ = _knock_and_answer(raw_world)
    assert sorted((r["from"], r["data"]) for r in got["received"]) == [
        (f"{INTERNET_HOST}:{LISTEN_PORT}", "allowed"),
        (f"{INTERNET_HOST}:{OTHER_PORT}", "other-port"),
        (f"{INTERNET_SECOND}:{LISTEN_PORT}", "other-address"),
    ], got


def test_hairpinning_between_two_clients_shows_public_endpoints(raw_world):
    """Two clients behind the gateway reach each other through their public endpoints, as two peers that
    learned them from a rendezvous server would (RFC 4787 REQ-9). Default filtering stays on, so this is
    the hole punching such peers do: alice opens E1 (to the internet echo, whose log shows it), bob opens
    E2 and sends once to E1 (refused by alice's filter, but it lets E1 into bob's), then alice sends to
    E2. Bob must see alice's PUBLIC endpoint E1 as the source, never her VPN address, and his answer to
    E1 must reach her."""
    raw_world.start()
    opens = [[INTERNET_HOST, ECHO_PORT, "alice opens"]]
    raw_world.probe("c1", "udp_talk", opens, 3.0, ALICE_PORT, 1, timeout=PROBE_S)
    (_, e1), = _wait_seen(raw_world, 1)  # fmt: skip
    assert e1.startswith(RAW_PUBLIC + ":"), e1
    opens = [[INTERNET_HOST, ECHO_PORT, "bob opens"], [RAW_PUBLIC, _port(e1), "bob punches"]]
    bob = _spawn_probe(raw_world, "c2", "bob-peer", "udp_talk", opens, 8.0, BOB_PORT, 2, True)
    seen = _wait_seen(raw_world, 2)
    assert len(seen) == 2, seen
    e2 = seen[1][1]
    assert e2.startswith(RAW_PUBLIC + ":") and e2 != e1, seen
    ping = [[RAW_PUBLIC, _port(e2), "ping from alice"]]
    alice = raw_world.probe("c1", "udp_talk", ping, 3.0, ALICE_PORT, 1, timeout=PROBE_S)
    bob_got = _result(raw_world, bob, 10.0)
    assert (e1, "ping from alice") in [(r["from"], r["data"]) for r in bob_got["received"]], bob_got
    assert [(r["from"], r["data"]) for r in alice["received"]] == [(e2, "pong from alice")], alice


def test_a_client_over_its_mapping_quota_is_refused_and_journaled(raw_world):
    """``max_mappings_per_client = 3``: alice's first three UDP flows reach the internet echo, the next
    two do not (the internet host never sees them), and the journal holds a QuotaHit naming alice and
    the first flow refused (RFC 6888 REQ-4)."""
    _set_nat(raw_world, max_mappings_per_client=3)
    vpn = raw_world.start()
    sizes = [101, 102, 103, 104, 105]  # one size per flow: the internet host's log tells them apart
    out = raw_world.probe("c1", "udp_flows", INTERNET_HOST, ECHO_PORT, sizes, 2.0, timeout=PROBE_S)
    assert out["answered"] == [True, True, True, False, False], out
    assert sorted(size for size, _ in _seen(raw_world)) == [101, 102, 103]
    deadline = time.monotonic() + WAIT_S
    while not (hits := _quota_hits(raw_world)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [(h.client, h.quota, h.proto, h.int_addr, h.int_port) for h in hits] == [
        ("alice", 3, 17, inet.aton(vpn["alice"]), out["ports"][3])
    ], hits


def _quota_hits(world: LabWorld) -> list[QuotaHit]:
    """The QuotaHit events in the gateway's journal so far (the writer may still hold the newest)."""
    return [e for e in Journal(world.journal).events() if isinstance(e, QuotaHit)]


def test_a_udp_super_packet_from_the_client_leaves_as_the_datagrams_it_was_made_of(raw_world):
    """UDP_SEGMENT on the client: one super-packet through the tunnel and the NAT, cut by the kernel
    behind the AF_PACKET socket (GSO) into the 500-byte datagrams the internet host sees."""
    raw_world.start()
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
            "s.setsockopt(socket.SOL_UDP, 103, 500)  # UDP_SEGMENT\n"
            f"s.sendto(b'g' * 3000, ({INTERNET_HOST!r}, {ECHO_PORT}))\n"
            "print(sorted(len(s.recv(4000)) for _ in range(6)))")
    assert raw_world.run("c1", sys.executable, "-c", code).stdout.strip() == str([500] * 6)
    assert [size for size, _ in _seen(raw_world)] == [500] * 6
