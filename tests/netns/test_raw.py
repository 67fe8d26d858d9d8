"""To the internet through the raw external gateway, in the lab: the gateway's own NAT on public address
198.51.100.1, which the gateway namespace's kernel does not own, through an AF_PACKET socket on ``ext``.
The internet host (behind an on-path router and a 1280-byte link) and the journal are the oracles."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from gw import inet
from gw.lab.services import http_body_sha256
from gw.lab.world import ECHO_PORT, HTTP_PORT, INTERNET_HOST, INTERNET_WWW, RAW_PUBLIC, ROUTER, LabWorld
from gw.status import query
from journal.holders import find_holders
from journal.reader import Journal

pytestmark = pytest.mark.netns
DOWNLOAD_BYTES = 100_000_000


def _seen(world: LabWorld) -> list[str]:
    """The public endpoints the internet host's UDP echo saw, in order."""
    lines = (world.dir / "internet.log").read_text().splitlines()
    return [ln.split()[-1] for ln in lines if ln.startswith("udp echo")]


def _unattributed(world: LabWorld, endpoints: set[str]) -> list[str]:
    """The public UDP endpoints no mapping in the journal held (now: a crash ends no mapping)."""
    journal, at = Journal(world.journal), time.time_ns()
    return [e for e in sorted(endpoints)
            if not find_holders(journal, inet.aton(e.rpartition(":")[0]), int(e.rpartition(":")[2]), 17, at)]


def _set(world: LabWorld, section: str, line: str) -> None:
    """Add ``line`` to ``[section]`` of the lab's gateway.toml (before the gateway starts)."""
    text = world.gateway_toml.read_text()
    assert f"[{section}]\n" in text
    world.gateway_toml.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))


@pytest.mark.parametrize("raw_world", [True, False], ids=["offloads", "no-offloads"], indirect=True)
def test_a_100_mb_http_download_through_the_raw_gateway_arrives_whole(raw_world):
    """TCP across the NAT, the router and the 1280-byte link; with offloads the super-packets cross the
    gateway whole both ways (GSO out, GRO in), without them the gateway cuts them for the client."""
    raw_world.start()
    got = raw_world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{DOWNLOAD_BYTES}", 60, timeout=70)
    assert got.get("status") == 200 and got["bytes"] == DOWNLOAD_BYTES, got
    assert got["sha256"] == http_body_sha256(DOWNLOAD_BYTES)
    log = (raw_world.dir / "internet.log").read_text()
    assert f"http sent {DOWNLOAD_BYTES} bytes to {RAW_PUBLIC}:" in log  # the server saw the public address
    ext = query(raw_world.status_socket)["external"]
    assert ext["mode"] == "raw" and ext["send_failed"] == 0 and ext["oversized"] == 0
    if raw_world.offloads:
        # ~1,500 super-packets in, not ~80,000 segments: the download came in aggregated
        assert ext["received"] < DOWNLOAD_BYTES // 20_000, ext


def test_udp_ping_and_dns_reach_the_internet_and_gw_audit_names_the_client(raw_world):
    raw_world.start()
    assert raw_world.probe("c1", "udp_echo", INTERNET_HOST, ECHO_PORT, 5, 200)["received"] == 5
    assert raw_world.probe("c2", "udp_echo", INTERNET_HOST, ECHO_PORT, 5, 200)["received"] == 5
    assert raw_world.probe("c1", "ping", INTERNET_HOST, 3)["received"] == 3
    dns = raw_world.probe("c2", "dns", INTERNET_HOST, "www.lab.example", False)
    assert dns["answers"] == ["203.0.113.80"], dns
    seen = _seen(raw_world)
    alice, bob = seen[0], seen[-1]
    assert alice.rpartition(":")[0] == bob.rpartition(":")[0] == RAW_PUBLIC and alice != bob
    for endpoint, client in ((alice, "alice"), (bob, "bob")):
        out = subprocess.run([sys.executable, "-m", "tools.audit", "--json", str(raw_world.journal), "who",
                              f"{endpoint}/udp", "--at", str(time.time())],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert [h["client"] for h in json.loads(out.stdout)["holders"]] == [client]


def test_the_hosts_kernel_never_answers_for_the_public_address(raw_world):
    """No RST, no port unreachable: frames for the gateway's MAC are foreign to the kernel, and the NAT
    drops what it has no mapping for, counted."""
    raw_world.start()
    code = (
        "import socket, json\n"
        f"t = socket.socket(); t.settimeout(1.5)\n"
        f"try:\n    t.connect(({RAW_PUBLIC!r}, 4444)); tcp = 'connected'\n"
        "except socket.timeout:\n    tcp = 'timeout'\n"
        "except ConnectionRefusedError:\n    tcp = 'refused'\n"
        f"u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.connect(({RAW_PUBLIC!r}, 4444)); u.settimeout(1.5)\n"
        "u.send(b'x')\n"
        "try:\n    u.send(b'y'); u.recv(10); udp = 'answer'\n"
        "except socket.timeout:\n    udp = 'timeout'\n"
        "except ConnectionRefusedError:\n    udp = 'refused'\n"
        "print(json.dumps([tcp, udp]))"
    )
    before = query(raw_world.status_socket)["drops"]
    got = json.loads(raw_world.run("inet", sys.executable, "-c", code).stdout)
    assert got == ["timeout", "timeout"]
    after = query(raw_world.status_socket)["drops"]
    assert sum(after.values()) >= sum(before.values()) + 3  # SYN (and its retry), two datagrams: no mapping


def test_the_gateway_answers_arp_for_its_public_address(raw_world):
    raw_world.start()
    assert raw_world.probe("c1", "ping", INTERNET_HOST, 1)["received"] == 1
    before = query(raw_world.status_socket)["external"]["arp_answered"]
    raw_world.run("rtr", "ip", "neigh", "flush", "dev", "gw")  # the router forgets where 198.51.100.1 is
    assert raw_world.probe("c1", "ping", INTERNET_HOST, 3)["received"] == 3
    ext = query(raw_world.status_socket)["external"]
    assert ext["arp_answered"] > before, ext  # the router asked again, and was answered
    neigh = raw_world.run("rtr", "ip", "neigh", "show", RAW_PUBLIC).stdout
    assert ext["mac"] in neigh


# a client that opens a new UDP flow to the internet echo every 2 ms for SECONDS, without waiting
_NEW_FLOWS = """
import socket, sys, time
end = time.monotonic() + float(sys.argv[1])
socks = []
while time.monotonic() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"flow", ({host!r}, {port}))
    socks.append(s)
    time.sleep(0.002)
print(len(socks), "flows")
"""


@pytest.mark.parametrize("audit", ["strict"])
def test_strict_mode_every_public_port_the_internet_saw_is_in_the_journal_across_kill_9(raw_world, audit):
    """New flows as fast as a client makes them; the gateway is SIGKILLed in the middle, twice. Every public
    endpoint the internet host saw must be attributed by the journal: in strict mode no packet leaves
    before its MappingCreated is fsynced. (In fast mode the last ~50 ms of new mappings can be missing.)"""
    _set(raw_world, "journal", f'audit = "{audit}"')
    raw_world.start()
    code = _NEW_FLOWS.format(host=INTERNET_HOST, port=ECHO_PORT)
    for _ in range(2):
        gateway = raw_world.process("gateway")
        flows = raw_world.spawn_command("c1", "flows", sys.executable, "-c", code, "1.5")
        time.sleep(0.8)
        raw_world.stop(gateway, signal.SIGKILL)
        raw_world.stop(flows)
        raw_world.start_gateway()
        raw_world.vpn_address("c1")
    seen = set(_seen(raw_world))
    assert len(seen) > 50, f"only {len(seen)} flows reached the internet host"  # ~300 on a quiet machine
    missing = _unattributed(raw_world, seen)
    assert not missing, f"{len(missing)} of {len(seen)} public endpoints the internet saw are not in the journal"
    doc = query(raw_world.status_socket)
    assert doc["audit"]["mode"] == "strict"


# the gateway with a file-size limit: its journal's writes fail (EFBIG) once the segment reaches it
_LIMITED = "import resource, sys, runpy; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); " \
           "sys.argv = ['gw', 'serve', '-c', {config!r}]; runpy.run_module('gw', run_name='__main__')"
# one old flow: a datagram every 50 ms for SECONDS on one socket; prints how many came back
_OLD_FLOW = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
sent = got = 0
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    s.sendto(b"old", ({host!r}, {port})); sent += 1
    try:
        s.recv(100); got += 1
    except socket.timeout:
        pass
    time.sleep(0.05)
print(sent, got)
"""


def test_strict_mode_refuses_new_flows_while_the_journal_cannot_write_and_keeps_old_ones(raw_world):
    _set(raw_world, "journal", 'audit = "strict"')
    raw_world.start_servers()
    raw_world.start_gateway(None, 15.0, "-c", _LIMITED.format(limit=24_000, config=str(raw_world.gateway_toml)))
    raw_world.start_clients()
    old = raw_world.spawn_command("c1", "old-flow", sys.executable, "-c",
                                  _OLD_FLOW.format(host=INTERNET_HOST, port=ECHO_PORT), "4")  # fmt: skip
    time.sleep(0.5)
    flows = raw_world.spawn_command("c1", "flows", sys.executable, "-c",
                                    _NEW_FLOWS.format(host=INTERNET_HOST, port=ECHO_PORT), "2.5")  # fmt: skip
    deadline = time.monotonic() + 10
    while (raw_world.alive(old) or raw_world.alive(flows)) and time.monotonic() < deadline:
        time.sleep(0.1)
    doc = query(raw_world.status_socket)
    assert doc["audit"]["refusing_new_flows"] and doc["counts"]["refused_no_journal"] > 0, doc["audit"]
    sent, got = map(int, (raw_world.dir / "old-flow.log").read_text().split())
    assert got >= sent * 0.9, f"the old flow lost {sent - got} of {sent} while new flows were refused"
    seen = set(_seen(raw_world))
    missing = _unattributed(raw_world, seen)
    assert not missing, f"{len(missing)} of {len(seen)} public endpoints the internet saw are not in the journal"


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        (('interface = "ext"', 'interface = "nosuch0"'), "[external] interface = 'nosuch0': no such interface"),
        (('["198.51.100.1"]', '["198.51.100.2"]'), "198.51.100.2 is an address of this host"),
        (('interface = "ext"', 'interface = "ext"\nnext_hop = ""'), None),  # the default route's gateway
    ],
    ids=["no-interface", "kernel-owns-the-address", "next-hop-from-the-route"],
)
def test_raw_mode_start_mistakes_are_one_line_errors(raw_world, change, expect):
    text = raw_world.gateway_toml.read_text()
    assert change[0] in text
    raw_world.gateway_toml.write_text(text.replace(change[0], change[1], 1))
    if expect is None:
        raw_world.start_gateway()
        assert query(raw_world.status_socket)["external"]["next_hop"] == "198.51.100.254"
        return
    done = subprocess.run(["ip", "netns", "exec", raw_world.ns["gw"], sys.executable, "-m", "gw", "serve", "-c",
                           str(raw_world.gateway_toml)], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 1 and expect in done.stderr and "Traceback" not in done.stderr, done.stderr


# a forged ARP reply from the router's namespace, to the gateway's MAC: "198.51.100.254 is at 02:..:66"
_SPOOF = """
import socket, struct, sys
gw_mac, public, router = bytes.fromhex(sys.argv[1]), socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3])
liar = bytes.fromhex("020000000066")
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, liar, router, gw_mac, public)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("gw", 0))
for _ in range(int(sys.argv[4])):
    s.send(gw_mac + liar + struct.pack("!H", 0x0806) + arp)
"""


def test_a_forged_arp_reply_for_the_next_hop_does_not_move_it(raw_world):
    """ARP spoofing: the next hop's MAC is fresh, so a claim of another MAC is checked with a who-has to
    the known one, which the router answers: the claim is dropped, counted, and traffic goes on."""
    raw_world.start()
    assert raw_world.probe("c1", "ping", INTERNET_HOST, 1)["received"] == 1
    ext = query(raw_world.status_socket)["external"]
    router_mac = ext["next_hop_mac"]
    assert router_mac and ext["arp_conflicts"] == 0, ext
    raw_world.run("rtr", sys.executable, "-c", _SPOOF, ext["mac"].replace(":", ""), RAW_PUBLIC, ROUTER, "3")
    deadline = time.monotonic() + 5
    while (ext := query(raw_world.status_socket)["external"])["arp_conflicts"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ext["arp_conflicts"] >= 1 and ext["next_hop_mac"] == router_mac, ext
    time.sleep(1.5)  # past RETRY_S: a claim the router had not answered would be adopted by now
    assert raw_world.probe("c1", "ping", INTERNET_HOST, 3)["received"] == 3
    ext = query(raw_world.status_socket)["external"]
    assert ext["next_hop_mac"] == router_mac and ext["next_hop_changed"] == 0, ext
    assert "02:00:00:00:00:66 claimed the next hop" in raw_world.log_tail("gateway", 200)


# frames from the router's namespace onto the link, each given as hex: sent in order on device ``gw``
_FRAMES = """
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("gw", 0))
for frame in sys.argv[1:]:
    s.send(bytes.fromhex(frame))
"""


def test_the_kernel_filter_passes_only_untagged_ipv4_to_the_gateways_mac(raw_world):
    """The kernel, not the test's interpreter, runs the filter: a datagram for the public address reaches
    the gateway only in an untagged frame to its MAC (PACKET_OTHERHOST); to the host's own MAC, broadcast
    or with a VLAN tag it never leaves the kernel (``received`` does not move)."""
    from gw import packet as P

    raw_world.start_gateway()
    ext = query(raw_world.status_socket)["external"]
    gw_mac = bytes.fromhex(ext["mac"].replace(":", ""))
    host_mac = bytes.fromhex(json.loads(raw_world.run("gw", "ip", "-j", "link", "show", "ext").stdout)[0]
                             ["address"].replace(":", ""))  # fmt: skip
    src = bytes.fromhex("020000000077")
    udp = bytes(P.build_udp(inet.aton("203.0.113.10"), inet.aton(RAW_PUBLIC), 5000, 4444, b"x"))
    ipv4, vlan_5 = b"\x08\x00", b"\x81\x00\x00\x05"

    def send(*frames: bytes) -> None:
        raw_world.run("rtr", sys.executable, "-c", _FRAMES, *(f.hex() for f in frames))

    def received_after(want: int) -> int:
        deadline = time.monotonic() + 5
        while (got := query(raw_world.status_socket)["external"]["received"]) < want and time.monotonic() < deadline:
            time.sleep(0.05)
        return got

    before = query(raw_world.status_socket)["external"]["received"]
    send(gw_mac + src + ipv4 + udp)  # the control: to the gateway's MAC
    assert received_after(before + 1) == before + 1
    send(host_mac + src + ipv4 + udp,  # PACKET_HOST: the host's own
         b"\xff" * 6 + src + ipv4 + udp,  # PACKET_BROADCAST
         gw_mac + src + vlan_5 + ipv4 + udp,  # tagged: another VLAN's
         gw_mac + src + ipv4 + udp)  # fmt: skip
    assert received_after(before + 2) == before + 2
    time.sleep(0.3)
    assert query(raw_world.status_socket)["external"]["received"] == before + 2
