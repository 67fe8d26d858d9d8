"""Faults, in the lab: the gateway frozen longer than the clients' dead-peer timeout, an upstream DNS
server that answers garbage, the external interface down and up again, and traffic to cloud metadata
addresses. Each ends with the system working again by itself (or the traffic refused and counted)."""

from __future__ import annotations

import signal
import sys
import time

import pytest

from gw.lab.world import ECHO_PORT, INTERNET_HOST, INTERNET_SECOND, LabWorld
from gw.status import query
from tests.helpers.waiting import until
from tests.netns.test_raw import _OLD_FLOW

pytestmark = pytest.mark.netns
RECOVER_S = 20  # the clients' backoff after a long outage reaches a few seconds


def _echo_works(world: LabWorld, role: str = "c1") -> bool:
    return world.probe(role, "udp_echo", INTERNET_HOST, ECHO_PORT, 2, 100).get("received", 0) >= 1


def test_a_gateway_frozen_past_the_dead_peer_timeout_gets_its_clients_back_by_itself(raw_world):
    """SIGSTOP for longer than dead_after_s (8 s in the lab): the clients give the gateway up and retry;
    after SIGCONT everything comes back without anyone's help, and the journal stays whole."""
    raw_world.start()
    assert _echo_works(raw_world)
    gateway = raw_world.process("gateway")
    import os

    os.kill(gateway["pid"], signal.SIGSTOP)
    try:
        time.sleep(10)
        assert not _echo_works(raw_world)  # frozen: nothing gets through
    finally:
        os.kill(gateway["pid"], signal.SIGCONT)
    assert until(lambda: _echo_works(raw_world, "c1") and _echo_works(raw_world, "c2"), RECOVER_S)
    assert {s["client"] for s in query(raw_world.status_socket)["sessions"]} == {"alice", "bob"}
    verify = raw_world.run("gw", sys.executable, "-m", "tools.replay", str(raw_world.journal), "verify")
    assert verify.returncode == 0


# an upstream DNS server that answers every query with garbage: a wrong ID, then bytes that are no message
_GARBAGE_DNS = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(4096)
    s.sendto(bytes([data[0] ^ 0xFF, data[1]]) + data[2:], peer)  # the answer to another query
    s.sendto(b"\\x00" * 3, peer)  # not a DNS message
"""


def test_an_upstream_that_answers_garbage_gets_the_client_servfail_and_is_counted(raw_world):
    text = raw_world.gateway_toml.read_text().replace(f'upstreams = ["{INTERNET_HOST}:53"]',
                                                      f'upstreams = ["{INTERNET_SECOND}:53"]')  # fmt: skip
    raw_world.gateway_toml.write_text(text.replace("[dns]\n", "[dns]\ntimeout_s = 0.5\nattempts = 1\n", 1))
    raw_world.spawn_command("inet", "garbage-dns", sys.executable, "-c", _GARBAGE_DNS, INTERNET_SECOND)
    raw_world.start()
    answer = raw_world.probe("c1", "dns", "10.66.77.1", "www.lab.example", False)
    assert answer.get("rcode") == 2 and answer["answers"] == [], answer  # SERVFAIL, after the timeout
    dns = query(raw_world.status_socket)["dns"]
    assert dns["timeouts"] >= 1 and dns["mismatched"] + dns["malformed"] >= 2, dns


def test_the_external_interface_down_and_up_again_and_traffic_goes_on(raw_world):
    raw_world.start()
    assert _echo_works(raw_world)
    raw_world.run("gw", "ip", "link", "set", "ext", "down")
    time.sleep(2)
    assert not _echo_works(raw_world)
    raw_world.run("gw", "ip", "link", "set", "ext", "up")
    assert until(lambda: _echo_works(raw_world), RECOVER_S)
    ext = query(raw_world.status_socket)["external"]
    assert ext["next_hop_mac"], ext


def test_cloud_metadata_addresses_are_refused_and_counted(raw_world):
    raw_world.start()
    before = query(raw_world.status_socket)["drops"].get("denied", 0)
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            "for _ in range(3): s.sendto(b'GET /latest/meta-data/', ('169.254.169.254', 80))\n"
            "t = socket.socket(); t.settimeout(1)\n"
            "try:\n    t.connect(('169.254.169.254', 80)); print('connected')\n"
            "except OSError as e:\n    print(type(e).__name__)")
    out = raw_world.run("c1", sys.executable, "-c", code).stdout.strip()
    assert out in ("TimeoutError", "timeout", "ConnectionRefusedError", "OSError"), out
    after = query(raw_world.status_socket)["drops"].get("denied", 0)
    assert after >= before + 4  # three datagrams and the SYN (its retries too)


def test_a_dns_upstream_that_goes_away_and_comes_back_is_heard_again(raw_world):
    """The upstream's server stops (its port unreachables are errors on the proxy's socket), then starts
    again: the proxy answers from it again (its reader survived the errors: gw.rearm)."""
    text = raw_world.gateway_toml.read_text()
    raw_world.gateway_toml.write_text(text.replace("[dns]\n", "[dns]\ntimeout_s = 0.5\nattempts = 1\n", 1))
    raw_world.start()
    assert raw_world.probe("c1", "dns", "10.66.77.1", "www.lab.example", False)["answers"] == ["203.0.113.80"]
    raw_world.stop(raw_world.process("dns"))
    for _ in range(2):
        assert raw_world.probe("c1", "dns", "10.66.77.1", "www.lab.example", False).get("rcode") == 2  # SERVFAIL
    raw_world.spawn("inet", "dns", "-m", "gw.lab.services", "--dns", f"{INTERNET_HOST}:53")
    assert until(lambda: raw_world.probe("c1", "dns", "10.66.77.1", "www.lab.example", False).get("answers")
                  == ["203.0.113.80"], 10)  # fmt: skip




# new UDP flows (a new socket each, one datagram, its answer awaited 0.2 s) for SECONDS; prints how many
# were answered
_NEW_FLOWS = """
import socket, sys, time
end, answered, unanswered = time.monotonic() + float(sys.argv[1]), 0, 0
until_refused = len(sys.argv) > 2  # then stop at three unanswered in a row: refused, not just slow
while time.monotonic() < end and not (until_refused and unanswered >= 3):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(b"new", ({host!r}, {port}))
        try:
            s.recv(100); answered += 1; unanswered = 0
        except socket.timeout:
            unanswered += 1
print(answered)
"""


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs made for the test (and unmounted after, however the test ends)."""
    import subprocess

    where = tmp_path / "small-disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "gwtest-journal", str(where)], check=True,
                   timeout=10)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], timeout=10)


def _seen_endpoints(world: LabWorld) -> set[str]:
    lines = (world.dir / "internet.log").read_text().splitlines()
    return {ln.split()[-1] for ln in lines if ln.startswith("udp echo")}


def _held(journal, endpoint: str) -> bool:
    from gw import inet
    from journal.holders import find_holders
    from journal.reader import Journal

    addr, _, port = endpoint.rpartition(":")
    return bool(find_holders(Journal(journal), inet.aton(addr), int(port), 17, time.time_ns()))


def _fill(disk) -> None:
    """Fill the disk to the last block (the journal's next write fails with ENOSPC)."""
    import os

    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("audit", ["strict", "fast", "fast-bounded"])
def test_a_full_disk_under_the_journal(raw_world, small_disk, audit):
    """Strict refuses new flows and keeps the old ones; fast keeps going and raises the alarm (status,
    metric, log) with what it could not write yet, until ``max_unwritten_events`` are waiting in memory
    and then refuses new flows too (fast-bounded: a bound of 1024 the test fills); when space returns all
    recover by themselves, and the journal then holds every public endpoint the internet saw."""
    bound = 1024
    text = raw_world.gateway_toml.read_text().replace(f'directory = "{raw_world.journal}"',
                                                      f'directory = "{small_disk / "journal"}"')  # fmt: skip
    mode = audit.split("-")[0]
    extra = f"max_unwritten_events = {bound}\n" if audit == "fast-bounded" else ""
    raw_world.gateway_toml.write_text(text.replace("[journal]\n", f'[journal]\naudit = "{mode}"\n{extra}', 1))
    raw_world.start()
    assert _echo_works(raw_world)
    old = raw_world.spawn_command("c1", "old-flow", sys.executable, "-c",
                                  _OLD_FLOW.format(host=INTERNET_HOST, port=ECHO_PORT), "8")  # fmt: skip
    time.sleep(0.5)
    _fill(small_disk)
    # new flows until the journal's segment needs a page the disk no longer has (its last one had room);
    # fast-bounded: until they are refused (three unanswered in a row), past ``bound`` mappings the
    # journal cannot take (a fixed 3 s made fewer than that on a slow host), at most 20 s
    how_long = ("20", "until-refused") if audit == "fast-bounded" else ("1.5",)
    flows = raw_world.run("c2", sys.executable, "-c", _NEW_FLOWS.format(host=INTERNET_HOST, port=ECHO_PORT), *how_long,
                          timeout=30)  # fmt: skip
    answered = int(flows.stdout.split()[0])
    time.sleep(1)  # the writer has met the full disk and retries
    doc = query(raw_world.status_socket)
    assert doc["journal"]["error"] and doc["journal"]["lag_events"] > 0, doc["journal"]  # the alarm
    if audit == "fast":
        assert _echo_works(raw_world, "c2")  # fast: new flows go on, unjournaled for now
        assert not doc["audit"]["refusing_new_flows"]
    elif audit == "strict":
        assert doc["audit"]["refusing_new_flows"]
        assert not _echo_works(raw_world, "c2")  # a new flow: refused
        assert doc["counts"]["refused_no_journal"] > 0
    else:  # at the bound, new flows are refused (one may pass when a retried write freed a few events)
        assert doc["counts"]["refused_no_journal"] > 0
    if audit == "fast-bounded":  # memory bounded: new flows make no more events once the bound is hit
        doc = query(raw_world.status_socket)
        assert bound <= doc["journal"]["lag_events"] <= 2 * bound  # over by one batch of flows, sessions' events
        more = raw_world.run("c2", sys.executable, "-c", _NEW_FLOWS.format(host=INTERNET_HOST, port=ECHO_PORT), "1")
        after = query(raw_world.status_socket)
        # refused (a retried write that found a free block may let one in); what waits stays bounded
        assert int(more.stdout.split()[0]) <= 2
        assert after["counts"]["refused_no_journal"] > doc["counts"]["refused_no_journal"]
        assert after["journal"]["lag_events"] <= 2 * bound
    (small_disk / "filler").unlink()  # space returns
    assert until(lambda: query(raw_world.status_socket)["journal"]["lag_events"] == 0, 10)
    assert until(lambda: _echo_works(raw_world, "c2"), 10)
    doc = query(raw_world.status_socket)
    assert not doc["journal"]["error"] and not doc["audit"]["refusing_new_flows"], doc
    while raw_world.alive(old):
        time.sleep(0.2)
    sent, got = map(int, (raw_world.dir / "old-flow.log").read_text().split())
    assert got >= sent * 0.9, f"the old flow lost {sent - got} of {sent}"
    assert answered >= 1  # new flows went through until the writer met the full disk
    journal = small_disk / "journal"
    missing = [e for e in _seen_endpoints(raw_world) if not _held(journal, e)]
    assert not missing, f"{len(missing)} public endpoints the internet saw are not in the journal"
    verify = raw_world.run("gw", sys.executable, "-m", "tools.replay", str(small_disk / "journal"), "verify")
    assert verify.returncode == 0, verify.stdout


# new TCP connections to HOST:PORT one after another, each closed at once, until one does not connect
# within WAIT_S (at most 60 s in all); prints how many connected and how the first failure ended
_CONNECTS = """
import socket, sys, time
host, port, wait_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
made, end, how = 0, time.monotonic() + 60, "never failed"
while time.monotonic() < end:
    with socket.socket() as s:
        s.settimeout(wait_s)
        try:
            s.connect((host, port))
        except OSError as e:
            how = type(e).__name__
            break
    made += 1
print(made, how)
"""


def _http_peers(world: LabWorld) -> list[str]:
    """The public endpoints the internet host's HTTP server accepted a connection from, in order."""
    lines = (world.dir / "internet.log").read_text().splitlines()
    return [ln.split()[-1] for ln in lines if ln.startswith("http connection from ")]


def test_strict_audit_no_syn_ack_until_the_tcp_mapping_is_durable(world, small_disk):
    """Socket mode, strict audit, the journal's disk full: the relay connects to the remote (and so answers
    the client's SYN) only once the connection's mapping is durable. New connections go through while the
    journal's last page has room; the first whose mapping cannot be written must not connect, and the
    internet must not see it while the disk is full; once space returns, a new connection goes through,
    and every public endpoint the internet saw is in the journal."""
    from gw.lab.world import HTTP_PORT, INTERNET_WWW

    text = world.gateway_toml.read_text().replace(f'directory = "{world.journal}"',
                                                  f'directory = "{small_disk / "journal"}"')  # fmt: skip
    world.gateway_toml.write_text(text.replace("[journal]\n", '[journal]\naudit = "strict"\n', 1))
    world.start()
    assert world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, "/bytes/1000", 10).get("status") == 200
    _fill(small_disk)
    run = world.run("c1", sys.executable, "-c", _CONNECTS, INTERNET_WWW, str(HTTP_PORT), "3", timeout=70)
    made, how = run.stdout.split()
    doc = query(world.status_socket)
    audit = {k: doc["audit"][k] for k in ("held", "held_expired", "waiting")}, doc["counts"]["refused_no_journal"]
    assert how == "TimeoutError", (run.stdout, audit)  # no SYN-ACK (nor a RST): the SYN waited, or was refused
    assert doc["journal"]["error"], doc["journal"]  # the journal could not write: that was the reason
    assert doc["audit"]["held"] >= 1 + int(made), audit  # each SYN that went through waited for its fsync
    peers = _http_peers(world)
    assert len(peers) == 1 + int(made), (made, peers, audit)  # the internet saw no more than connected
    journal = small_disk / "journal"
    early = [p for p in peers if not _held_tcp(journal, p)]  # the disk still full: what is in the journal now
    assert not early, f"the internet saw {early} before the journal held them ({made} connected)"
    (small_disk / "filler").unlink()  # space returns
    assert until(lambda: not query(world.status_socket)["audit"]["refusing_new_flows"], 10)
    got = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, "/bytes/1000", 10)
    assert got.get("status") == 200, got
    log = (world.dir / "internet.log").read_text().splitlines()
    last = [ln.split()[-1] for ln in log if ln.startswith("http sent 1000 bytes to ")][-1]
    assert until(lambda: query(world.status_socket)["journal"]["lag_events"] == 0, 10)
    assert _held_tcp(journal, last)  # the connection that went through is journaled
    # the refused one's SYN may have been held and let go once its mapping became durable: the internet
    # then saw it, after the disk had room again (counted above), and it must be journaled like the rest
    missing = [p for p in _http_peers(world) if not _held_tcp(journal, p)]
    assert not missing, f"public endpoints the internet saw that the journal does not hold: {missing}"
    print(f"\n{made} connected before the disk was full; held/expired/waiting, refused: {audit}")


def _held_tcp(journal, endpoint: str) -> bool:
    from gw import inet
    from journal.holders import find_holders
    from journal.reader import Journal

    addr, _, port = endpoint.rpartition(":")
    return [h.session.client for h in find_holders(Journal(journal), inet.aton(addr), int(port), 6,
                                                   time.time_ns())] == ["alice"]  # fmt: skip
