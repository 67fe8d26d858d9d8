"""TCP in socket mode, in the lab: each client connection ended in user space (gw.tcp_term) and carried
on through a kernel socket on the gateway's public address (gw.external.tcp_relay). The client's own
kernel TCP is the oracle: transfers complete with the right sha256."""

from __future__ import annotations

import json
import re
import sys
import threading
import time

import pytest

from gw import inet
from gw.external.tcp_relay import RECEIVE_BUFFER
from gw.lab.services import http_body_sha256
from gw.lab.world import ECHO_PORT, HTTP_PORT, INTERNET_HOST, INTERNET_WWW
from gw.status import query
from journal.holders import find_holders
from journal.reader import Journal
from tests.helpers.waiting import until

pytestmark = pytest.mark.netns

BIG = 100_000_000
RTO_INITIAL_S = 1.0  # RFC 6298 2.1: a stall this long means a retransmission timer fired


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


def test_a_fast_download_holds_no_more_than_the_receive_buffer_in_the_gateway_s_kernel(world):
    """The peeked bytes wait in the relay's socket until the client acknowledges them: its fixed receive
    buffer bounds them (the kernel doubles the size set). Under the kernel's autotuning a download
    held 32 MiB there, whatever the window clamp."""
    world.start()
    done: dict = {}
    download = threading.Thread(target=lambda: done.update(world.probe(
        "c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{5 * BIG}", 90, timeout=100)))  # fmt: skip
    download.start()
    held, limit = 0, 0  # the relay's socket to the web server: its Recv-Q (bytes not yet consumed), and
    while download.is_alive():  # the most the kernel lets it hold (skmem rb: its receive buffer)
        out = world.run("gw", "ss", "-tnmH", "dst", f"{INTERNET_WWW}:{HTTP_PORT}").stdout
        held = max([held] + [int(x) for x in re.findall(r"^ESTAB\s+(\d+)", out, re.M)])
        limit = max([limit] + [int(x) for x in re.findall(r"\brb(\d+)", out)])
        time.sleep(0.05)
    download.join()
    assert done.get("status") == 200 and done["sha256"] == http_body_sha256(5 * BIG), done
    assert 0 < held <= 2 * RECEIVE_BUFFER + (1 << 20), f"the relay's socket held {held} bytes"
    assert limit == 2 * RECEIVE_BUFFER, f"the relay's socket may hold {limit} bytes"


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


def test_100_mb_up_arrives_whole(world):
    """An upload: the client's bytes go through the relay's write path (acknowledged only once the kernel
    socket took them) and the server hashes what it received."""
    world.start()
    sent = world.probe("c1", "http_post", INTERNET_WWW, HTTP_PORT, "/upload", BIG, 90, timeout=100)
    assert sent.get("status") == 200 and sent["bytes"] == BIG and sent["sha256"] == http_body_sha256(BIG), sent
    assert until(lambda: _connections(world) == 0, 5)


def _retransmission_timeouts(world, role: str) -> int:
    """How many retransmission timeouts the kernel's TCP fired in namespace ``role`` (TcpExt TCPTimeouts)."""
    lines = world.run(role, "cat", "/proc/net/netstat").stdout.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split(), values.split(), strict=True))["TCPTimeouts"])
    raise AssertionError("no TcpExt counters in /proc/net/netstat")


def test_100_mb_down_and_up_never_stall_past_the_initial_rto(world):
    """A stall longer than RFC 6298's initial RTO (1 s) means a timer had to rescue the transfer (a loss,
    or a window update nobody repaired at once): on this lossless path there must be none. Uploading,
    the client's kernel is the sender, and its own count of retransmission timeouts says so directly
    (a timer-rescued stall can be shorter than 1 s: Linux's RTO floor is 200 ms)."""
    world.start()
    down = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{BIG}", 90, timeout=100)
    assert down.get("status") == 200 and down["sha256"] == http_body_sha256(BIG), down
    timeouts = _retransmission_timeouts(world, "c1")
    up = world.probe("c1", "http_post", INTERNET_WWW, HTTP_PORT, "/upload", BIG, 90, timeout=100)
    timeouts = _retransmission_timeouts(world, "c1") - timeouts
    ext = query(world.status_socket)["external"]
    stats = {k: ext[k] for k in ("tcp_short_writes", "tcp_out_of_order")}
    assert up.get("status") == 200 and up["sha256"] == http_body_sha256(BIG), (up, timeouts, stats)
    print(f"\nlongest gap: down {down['max_gap_s']} s ({down['mbit_s']} Mbit/s), up {up['max_gap_s']} s "
          f"({up['mbit_s']} Mbit/s, {timeouts} retransmission timeouts, relay {stats})")  # fmt: skip
    assert down["max_gap_s"] < RTO_INITIAL_S, f"the download stalled {down['max_gap_s']} s between two reads"
    assert up["max_gap_s"] < RTO_INITIAL_S, f"the upload stalled {up['max_gap_s']} s between two sends ({stats})"
    assert timeouts == 0, f"the client's TCP needed {timeouts} retransmission timeouts to upload ({stats})"


def test_a_remote_that_resets_mid_stream_resets_the_client_after_every_byte_it_sent(world):
    """The remote aborts with a RST once the gateway's socket has acknowledged all its bytes: they are in
    the gateway's kernel, which keeps a reset socket's received bytes readable; so the client must get
    every one of them, then ECONNRESET (not a clean EOF, which would pass a cut stream off as whole)."""
    world.start()
    size = 2_000_000
    got = world.probe("c1", "http_until_closed", INTERNET_WWW, HTTP_PORT, f"/reset/{size}", 20)
    assert got.get("status") == 200 and got["end"] == "ECONNRESET", got
    assert got["bytes"] == size and got["sha256"] == http_body_sha256(size), got
    assert f"http reset after {size} bytes" in (world.dir / "internet.log").read_text()
    assert query(world.status_socket)["external"]["tcp_remote_reset"] >= 1
    assert until(lambda: _connections(world) == 0, 5)


def _half_close_received(world) -> list[str]:
    lines = (world.dir / "internet.log").read_text().splitlines()
    return [ln for ln in lines if ln.startswith("http halfclose received ")]


def test_a_remote_that_closes_first_still_gets_everything_the_client_sends_after(world):
    """The server answers and sends its FIN first; the client, having read to that FIN, sends 1 MB more
    and its own FIN: the relay must keep carrying the client's half (the remote's FIN is no end of the
    connection), and the server logs what it received."""
    world.start()
    size = 1_000_000
    sent = world.probe("c1", "http_after_server_fin", INTERNET_WWW, HTTP_PORT, size, 20)
    assert sent.get("status") == 200 and sent["sent"] == size, sent
    assert until(lambda: _half_close_received(world), 5), world.log_tail("internet")
    (line,) = _half_close_received(world)
    words = line.split()  # http halfclose received N bytes sha256 HEX from ADDR:PORT, no error after it
    assert words[3:8] == [str(size), "bytes", "sha256", http_body_sha256(size), "from"] and len(words) == 9, line
    assert until(lambda: _connections(world) == 0, 5)  # both FINs: the connection ends (after its linger)


def test_a_client_that_half_closes_still_gets_the_whole_answer(world):
    """GET, then the client's FIN before any answer: the relay shuts only the remote socket's write side,
    and the 10 MB answer still arrives whole."""
    world.start()
    size = 10_000_000
    got = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{size}", 20, True)
    assert got.get("status") == 200 and got["bytes"] == size and got["sha256"] == http_body_sha256(size), got
    assert until(lambda: _connections(world) == 0, 5)


@pytest.mark.parametrize("world", [False], indirect=True, ids=["no-offloads"])
def test_a_client_without_offloads_gets_plain_segments_both_ways(world):
    """The endpoint makes 64 KB super-packets; a session whose TUN takes no offloads gets them cut into
    plain, checksummed segments by the daemon (its kernel would drop anything else), and sends plain
    ones itself."""
    world.start()
    size = 20_000_000
    down = world.probe("c1", "http_get", INTERNET_WWW, HTTP_PORT, f"/bytes/{size}", 60, timeout=70)
    assert down.get("status") == 200 and down["sha256"] == http_body_sha256(size), down
    up = world.probe("c1", "http_post", INTERNET_WWW, HTTP_PORT, "/upload", size, 60, timeout=70)
    assert up.get("status") == 200 and up["sha256"] == http_body_sha256(size), up
    status = query(world.status_socket)
    assert status["external"]["tcp_super_packets_out"] > 0 and status["counts"].get("segmented", 0) > 0, status
    assert status["external"]["tcp_super_packets_in"] == 0  # the client's TUN made no TSO packets
