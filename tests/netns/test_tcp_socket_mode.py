"""TCP in socket mode, in the lab: each client connection ended in user space (gw.tcp_term) and carried
on through a kernel socket on the gateway's public address (gw.external.tcp_relay). The client's own
kernel TCP is the oracle: transfers complete with the right sha256."""

from __future__ import annotations

import json
import sys
import time

import pytest

from gw import inet
from gw.lab.services import http_body_sha256
from gw.lab.world import ECHO_PORT, HTTP_PORT, INTERNET_HOST, INTERNET_WWW
from gw.status import query
from journal.holders import find_holders
from journal.reader import Journal
from tests.helpers.waiting import until

pytestmark = pytest.mark.netns

BIG = 100_000_000


def _connections(world) -> int:
    return query(world.status_socket)["external"].get("tcp_connections", 0)


def test_100_mb_down_and_100_mb_through_an_echo_arrive_whole(world):
    world.start()
    got = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{BIG}", 90, timeout=100)
    assert got.get("status") == 200 and got["bytes"] == BIG and got["sha256"] == http_body_sha256(BIG), got
    echo = world.probe("c1", "tcp_echo", INTERNET_HOST, ECHO_PORT, BIG, timeout=100)
    assert echo.get("same") is True and echo.get("bytes") == BIG, echo  # 100 MB up, and back
    assert until(lambda: _connections(world) == 0, 5)  # both closed, nothing left behind


_CONCURRENT = """
import hashlib, json, socket, sys, threading
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks, results = [], []
for _ in range(n):  # all open at once before any reads
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(f"GET /bytes/{size} HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n".encode())
    socks.append(s)
def read(s):
    data = bytearray()
    try:
        while chunk := s.recv(1 << 16):
            data += chunk
    except OSError as e:
        results.append(f"{type(e).__name__} after {len(data)} bytes")
        return
    finally:
        s.close()
    results.append(hashlib.sha256(bytes(data).split(b"\\r\\n\\r\\n", 1)[1]).hexdigest())
threads = [threading.Thread(target=read, args=(s,)) for s in socks]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(results))
"""


def test_200_concurrent_connections_each_get_their_bytes(world):
    world.start()
    size = 200_000
    run = world.run("c1", sys.executable, "-c", _CONCURRENT, INTERNET_WWW, str(HTTP_PORT), "200", str(size),
                    timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout)
    wrong = [r for r in results if r != http_body_sha256(size)]
    assert len(results) == 200 and not wrong, (wrong, query(world.status_socket)["external"])
    assert until(lambda: _connections(world) == 0, 5)


_ABORT = """
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"GET /bytes/100000000 HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
s.recv(1 << 16)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()  # a RST in the middle of the download
print("aborted")
"""


def test_a_client_that_aborts_mid_download_ends_its_connection_and_the_remote_s(world):
    world.start()
    run = world.run("c1", sys.executable, "-c", _ABORT, INTERNET_WWW, str(HTTP_PORT))
    assert run.stdout.strip() == "aborted", run.stderr
    assert until(lambda: _connections(world) == 0, 5)
    assert query(world.status_socket)["external"]["tcp_reset_sent"] >= 1
    log_ok = until(lambda: "http sent" in (world.dir / "internet.log").read_text()
                    and "of 100000000 bytes" in (world.dir / "internet.log").read_text(), 5)  # fmt: skip
    assert log_ok  # the server saw the download cut short (the remote got the RST too)


_SLOW = """
import hashlib, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
s.sendall(b"GET /bytes/20000000 HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
data = bytearray()
end = time.monotonic() + 4
while time.monotonic() < end:  # a slow reader: 64 KiB every 50 ms
    chunk = s.recv(1 << 16)
    data += chunk
    time.sleep(0.05)
while chunk := s.recv(1 << 20):
    data += chunk
print(hashlib.sha256(bytes(data).split(b"\\r\\n\\r\\n", 1)[1]).hexdigest())
"""


def test_a_slow_reader_holds_the_gateway_s_memory_flat(world):
    """The remote's bytes wait in the kernel socket (peeked, not copied out) while the client reads
    slowly: the gateway's RSS does not grow by the download."""
    world.start()
    gateway = world.process("gateway")["pid"]

    def rss() -> int:
        with open(f"/proc/{gateway}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024

    before = rss()
    slow = world.spawn_command("c1", "slow", sys.executable, "-c", _SLOW, INTERNET_WWW, str(HTTP_PORT))
    peak = before
    while world.alive(slow):
        peak = max(peak, rss())
        time.sleep(0.1)
    digest = (world.dir / "slow.log").read_text().split()[-1]
    assert digest == http_body_sha256(20_000_000)
    assert peak - before < 16 << 20, f"RSS grew by {(peak - before) >> 20} MiB"


def test_strict_audit_a_connection_goes_through_and_its_public_port_is_journaled(world):
    """Strict audit holds the SYN until its mapping is fsynced, so the SYN-ACK comes after it; the
    connection works and the journal names its client for the port the server saw."""
    text = world.gateway_toml.read_text()
    world.gateway_toml.write_text(text.replace("[journal]\n", '[journal]\naudit = "strict"\n', 1))
    world.start()
    size = 1_000_000
    got = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{size}", 30)
    assert got.get("status") == 200 and got["sha256"] == http_body_sha256(size), got
    assert query(world.status_socket)["audit"]["mode"] == "strict"
    log = (world.dir / "internet.log").read_text()
    seen = [ln.split()[-1] for ln in log.splitlines() if ln.startswith(f"http sent {size} bytes to ")]
    addr, _, port = seen[0].rpartition(":")
    holders = find_holders(Journal(world.journal), inet.aton(addr), int(port), 6, time.time_ns())
    assert [h.session.client for h in holders] == ["alice"]
