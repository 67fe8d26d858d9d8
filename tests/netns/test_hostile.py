"""A hostile client leaves the gateway serving the others, end to end in a ``LabWorld``: the real daemon
and the real clients alice (c1) and bob (c2) as processes, and a hostile script beside alice in c1.

- garbage on the tunnel, before and after a welcome, is answered with a CLOSE frame of the right code
  and the end of that connection, within seconds; the other sessions do not notice;
- a flood of connections that never say hello holds at most ``MAX_HANDSHAKES`` handshake slots, the rest
  are closed at accept, the sessions keep working, and once the flood ends its descriptors are gone and a
  new client gets in;
- a client that stops reading costs the gateway at most its send cap: its packets are dropped and
  counted, the gateway's memory stays bounded and the other sessions keep working.

Every load is bounded in count and time; every packet goes to an address inside the lab (the gateway's
tunnel ends 192.0.2.1 / 192.0.2.5, or a VPN address 10.66.77.x). The hostile scripts are functions of
this module run in a fresh interpreter inside a namespace (``_CHILD``), by ``world.run`` (bounded by a
timeout) or ``world.spawn`` (ended by PID in ``world.down``).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from gw import identity
from gw.lab.world import GATEWAY_SIDE, TUNNEL_PORT, LabWorld
from gw.status import query
from gw.transport import wire
from gw.transport.endpoint import MAX_BUFFERED, MAX_HANDSHAKES
from gw.transport.wire import Close
from tests.netns.conftest import require_netns

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]
C1_TUNNEL = GATEWAY_SIDE["c1"]  # the gateway's tunnel endpoint as c1 sees it
WAIT_S = 5.0  # the longest a hostile script waits for one answer from the gateway
CLOSED_WITHIN_S = 3.0  # a hostile connection must be answered and ended within this
PROTOCOL_ERRORS = {Close.PROTOCOL.name, Close.TOO_LARGE.name, Close.UNEXPECTED.name}

# run tests.netns.test_hostile.<name>(*json args) in a fresh interpreter; its result is the last line
_CHILD = (
    f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); import tests.netns.test_hostile as t; "
    "print(json.dumps(getattr(t, sys.argv[1])(*json.loads(sys.argv[2]))), flush=True)"
)


# ---------------------------------------------------------------------------------------- the lab


def add_client(world: LabWorld, name: str) -> identity.Identity:
    """A new identity, allowed in by a ``[[clients]]`` table appended to gateway.toml (before start)."""
    me = identity.new_identity(name, world.dir / "keys")
    world.identities[name] = me
    with world.gateway_toml.open("a") as f:
        f.write(f'[[clients]]\nname = "{name}"\nfingerprint = "{me.fingerprint}"\n')
    return me


def call(world: LabWorld, role: str, func, *args: object, timeout: float = 30.0) -> dict:
    """``func(*args)`` (a function of this module) inside namespace ``role``; its JSON result."""
    out = world.run(role, sys.executable, "-c", _CHILD, func.__name__, json.dumps(args), timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def spawn(world: LabWorld, role: str, name: str, func, *args: object) -> dict:
    """``func(*args)`` inside ``role`` in the background (ended by PID in ``world.down``); its record."""
    return world.spawn(role, name, "-c", _CHILD, func.__name__, json.dumps(args))


def log_lines(world: LabWorld, name: str) -> list[dict]:
    """The JSON lines a spawned function has printed so far."""
    try:
        text = (world.dir / f"{name}.log").read_text(errors="replace")
    except OSError:
        return []
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    return lines


def wait_for_line(world: LabWorld, name: str, key: str, timeout_s: float) -> dict:
    """The first JSON line holding ``key`` that process ``name`` prints, waited for up to ``timeout_s``."""
    record = world.process(name)
    deadline = time.monotonic() + timeout_s
    while True:
        for line in log_lines(world, name):
            if key in line:
                return line
        if not world.alive(record) or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"{name} printed no {key!r} in {timeout_s:g} s:\n{world.log_tail(name)}")


def wait_exit(world: LabWorld, name: str, timeout_s: float) -> None:
    record = world.process(name)
    deadline = time.monotonic() + timeout_s
    while world.alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not world.alive(record), f"{name} still runs after {timeout_s:g} s"


def status(world: LabWorld) -> dict:
    return query(world.status_socket)


def sessions(doc: dict) -> dict[str, dict]:
    return {s["client"]: s for s in doc["sessions"]}


def gateway_pid(world: LabWorld) -> int:
    return world.process("gateway")["pid"]  # ip netns exec execs the interpreter: the same PID


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def assert_serving(world: LabWorld, vpn: dict[str, str]) -> None:
    """The gateway runs, and alice -> bob UDP echo comes back whole, 10 of 10."""
    assert world.alive(world.process("gateway")), world.log_tail("gateway")
    echo = world.probe("c1", "udp_echo", vpn["bob"], 7, 10, 512)
    assert echo["received"] == 10, echo


# ------------------------------------------------------------------- hostile scripts (in a namespace)


def _tls_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _read_to_end(s: socket.socket, data: bytes = b"") -> tuple[bytes, str]:
    """Everything the gateway sends until it ends the connection: the bytes and how it ended."""
    s.settimeout(WAIT_S)
    try:
        while chunk := s.recv(65536):
            data += chunk
        return data, "eof"
    except (ConnectionResetError, BrokenPipeError):
        return data, "reset"
    except TimeoutError:
        return data, "timeout"
    except ssl.SSLError as e:
        return data, f"ssl error {e.reason}"


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    """The whole frames at the start of ``data`` (the gateway's side of a connection)."""
    frames, at = [], 0
    while len(data) - at >= wire.HEADER_LEN:
        ftype, _, _, length = wire.HEADER.unpack_from(data, at)
        if len(data) - at - wire.HEADER_LEN < length:
            break
        frames.append((ftype, data[at + wire.HEADER_LEN : at + wire.HEADER_LEN + length]))
        at += wire.HEADER_LEN + length
    return frames


def _after_challenge(host: str, port: int, hostile: bytes) -> dict:
    """TLS to the gateway, its challenge read, then ``hostile`` sent: what the gateway answers, how the
    connection ends and how long that took."""
    with socket.create_connection((host, port), timeout=WAIT_S) as raw, _tls_context().wrap_socket(raw) as s:
        s.settimeout(WAIT_S)
        data = b""
        while not _frames(data):
            chunk = s.recv(65536)
            if not chunk:
                return {"error": "closed before the challenge"}
            data += chunk
        (ftype, payload), *_ = _frames(data)
        challenge = ftype == wire.CHALLENGE and isinstance(
            wire.decode_message(ftype, payload), wire.Challenge
        )
        data = data[wire.HEADER_LEN + len(payload) :]
        t = time.monotonic()
        s.sendall(hostile)
        data, end = _read_to_end(s, data)
        seconds = time.monotonic() - t
    closes = [wire.decode_message(f, p) for f, p in _frames(data) if f == wire.CLOSE]
    return {
        "challenge": challenge,
        "close": Close.of(closes[0].code).name if closes else None,
        "reason": closes[0].reason if closes else None,
        "end": end,
        "seconds": round(seconds, 3),
    }


def _plaintext(host: str, port: int, hostile: bytes) -> dict:
    """No TLS at all: ``hostile`` on the bare TCP connection; how it ends."""
    with socket.create_connection((host, port), timeout=WAIT_S) as s:
        t = time.monotonic()
        s.sendall(hostile)
        data, end = _read_to_end(s)
        return {"end": end, "bytes": len(data), "seconds": round(time.monotonic() - t, 3)}


async def _huge_after_welcome(host: str, port: int, cert: str, key: str, gateway_fp: str) -> dict:
    """A known client gets its session, then announces a 100 MB frame: the gateway's close code."""
    from gw.transport.endpoint import connect

    me = identity.load_identity(cert, key)
    conn, welcome = await connect(host, port, me, gateway_fp, timeout=WAIT_S)
    t = time.monotonic()
    conn.transport.write(wire.HEADER.pack(wire.PACKETS, 0, 1, 100 << 20))
    code, reason = await asyncio.wait_for(conn.closed, WAIT_S)
    return {"vpn_addr": welcome.vpn_addr, "close": code.name, "reason": reason,
            "seconds": round(time.monotonic() - t, 3)}  # fmt: skip


def hostile_frames(host: str, port: int, cert: str, key: str, gateway_fp: str) -> dict:
    """Each kind of garbage on its own connection to the gateway, one after another."""
    junk = random.Random(20240611).randbytes(1024)  # seeded: the same garbage every run
    one_packet = wire.HEADER.pack(wire.PACKETS, 0, 1, 4 + 20) + (20).to_bytes(4, "big") + bytes(20)
    return {
        "random": _after_challenge(host, port, junk),
        "huge_hello": _after_challenge(host, port, wire.HEADER.pack(wire.HELLO, 0, 0, 100 << 20)),
        "huge_packets": _after_challenge(host, port, wire.HEADER.pack(wire.PACKETS, 0, 1, 100 << 20)),
        "unknown_type": _after_challenge(host, port, wire.HEADER.pack(99, 0, 0, 0)),
        "bad_hello": _after_challenge(host, port, wire.HEADER.pack(wire.HELLO, 0, 0, 16) + b"\xc1" * 16),
        "packets_first": _after_challenge(host, port, one_packet),
        "plaintext": _plaintext(host, port, b"GET / HTTP/1.0\r\n\r\n" + junk),
        "huge_after_welcome": asyncio.run(_huge_after_welcome(host, port, cert, key, gateway_fp)),
    }


def flood(host: str, port: int, total: int, tcp_only_every: int, hold_s: float) -> dict:
    """``total`` connections to the gateway, every ``tcp_only_every``-th left in its TLS handshake and the
    others through it; none sends a hello. Prints ``ready`` once all are open, holds them ``hold_s``, and
    closes them."""
    ctx = _tls_context()
    held, counts = [], {"tcp": 0, "tls": 0, "tcp_failed": 0, "tls_failed": 0}
    t = time.monotonic()
    for i in range(total):
        try:
            s = socket.create_connection((host, port), timeout=3)
        except OSError:
            counts["tcp_failed"] += 1
            continue
        if i % tcp_only_every:
            try:
                s = ctx.wrap_socket(s)  # the TLS handshake, then silence
                counts["tls"] += 1
            except OSError:  # ssl.SSLError is one
                counts["tls_failed"] += 1
        else:
            counts["tcp"] += 1
        held.append(s)
    print(json.dumps({"ready": counts, "open_s": round(time.monotonic() - t, 3)}), flush=True)
    time.sleep(hold_s)
    for s in held:
        s.close()
    return {"closed": len(held)}


def slow_reader(host: str, port: int, cert: str, key: str, gateway_fp: str, hold_s: float) -> dict:
    """A known client that gets its session and then never reads (but keeps it alive with keepalives).
    Prints its VPN address once it has it. Needs no TUN: it only holds the tunnel."""
    from gw.transport.endpoint import connect

    async def main() -> dict:
        me = identity.load_identity(cert, key)
        conn, welcome = await connect(host, port, me, gateway_fp, timeout=WAIT_S, offloads=False)
        conn.transport.pause_reading()
        conn._dead_after_s = 3600.0  # a hostile client: it never reads, so must not declare the gateway dead
        print(json.dumps({"vpn_addr": welcome.vpn_addr}), flush=True)
        await asyncio.sleep(hold_s)
        return {"closed": conn.closed.result()[0].name if conn.closed.done() else None}

    return asyncio.run(main())


def blast(dst: str, port: int, count: int, size: int, seconds: float, rate_pps: int) -> dict:
    """At most ``count`` UDP datagrams of ``size`` bytes to ``dst:port`` for at most ``seconds``, paced at
    ``rate_pps``. Prints ``started`` first."""
    payload = os.urandom(size)
    sent = refused = 0
    print(json.dumps({"started": True}), flush=True)
    t = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        while sent + refused < count and (now := time.monotonic()) - t < seconds:
            due = int((now - t) * rate_pps) - sent - refused
            if due <= 0:
                time.sleep(0.001)
                continue
            for _ in range(min(due, count - sent - refused)):
                try:
                    s.sendto(payload, (dst, port))
                    sent += 1
                except OSError:  # the TUN's queue is full (ENOBUFS, EAGAIN): dropped before the tunnel
                    refused += 1
    return {"sent": sent, "refused": refused, "seconds": round(time.monotonic() - t, 3)}


# ---------------------------------------------------------------------------------------- the tests


def test_garbage_frames_close_that_connection_with_its_code_and_the_others_carry_on(world):
    require_netns()
    eve = add_client(world, "eve")
    vpn = world.start()
    before = sessions(status(world))
    assert set(before) == {"alice", "bob"}

    got = call(world, "c1", hostile_frames, C1_TUNNEL, TUNNEL_PORT, str(eve.cert_path), str(eve.key_path),
               world.identities["gateway"].fingerprint)  # fmt: skip
    print(json.dumps(got, indent=1))

    expected = {"random": PROTOCOL_ERRORS, "huge_hello": {"TOO_LARGE"}, "huge_packets": {"TOO_LARGE"},
                "unknown_type": {"PROTOCOL"}, "bad_hello": {"PROTOCOL"}, "packets_first": {"UNEXPECTED"}}  # fmt: skip
    for case, codes in expected.items():
        r = got[case]
        assert r["challenge"], (case, r)
        assert r["close"] in codes, (case, r)  # the CLOSE frame came first, with the right code
        assert r["end"] in ("eof", "reset") and r["seconds"] < CLOSED_WITHIN_S, (case, r)
    assert got["plaintext"]["end"] in ("eof", "reset"), got["plaintext"]
    assert got["plaintext"]["seconds"] < CLOSED_WITHIN_S, got["plaintext"]
    late = got["huge_after_welcome"]  # a known client, past its handshake: the session's full-size reader
    assert late["vpn_addr"] not in vpn.values(), late
    assert late["close"] == "TOO_LARGE" and late["seconds"] < CLOSED_WITHIN_S, late

    assert_serving(world, vpn)
    after = status(world)
    assert after["tunnel"]["handshaking"] == 0, after["tunnel"]
    now = sessions(after)
    assert set(now) == {"alice", "bob"}  # eve's session is gone, alice's and bob's are the same ones
    assert {n: s["session"] for n, s in now.items()} == {n: s["session"] for n, s in before.items()}


def test_a_handshake_flood_is_capped_and_leaves_nothing_behind(world):
    require_netns()
    vpn = world.start()
    pid = gateway_pid(world)
    time.sleep(0.5)  # the clients' sessions settle
    baseline_fds = open_fds(pid)
    total, tcp_only_every, hold_s = 400, 5, 5.0  # 320 through TLS (> MAX_HANDSHAKES), 80 TCP only
    flooder = spawn(world, "c1", "flood", flood, C1_TUNNEL, TUNNEL_PORT, total, tcp_only_every, hold_s)

    most_handshaking = most_fds = 0
    held_doc = ping = None
    deadline = time.monotonic() + hold_s + 20
    while world.alive(flooder) and time.monotonic() < deadline:
        doc = status(world)
        most_handshaking = max(most_handshaking, doc["tunnel"]["handshaking"])
        most_fds = max(most_fds, open_fds(pid))
        if ping is None and any("ready" in line for line in log_lines(world, "flood")):
            ping = world.probe("c2", "ping", vpn["alice"], 3)  # bob -> alice while the flood is held
            held_doc = status(world)
        time.sleep(0.05)
    wait_exit(world, "flood", 5)
    ready = wait_for_line(world, "flood", "ready", 0)
    print(json.dumps({"flood": ready, "most_handshaking": most_handshaking, "baseline_fds": baseline_fds,
                      "most_fds": most_fds, "held": held_doc["tunnel"] if held_doc else None}))  # fmt: skip

    assert ready["ready"]["tls"] + ready["ready"]["tls_failed"] > MAX_HANDSHAKES, ready
    assert held_doc is not None and ping is not None, "the flood ended before it was held"
    assert 0 < most_handshaking <= MAX_HANDSHAKES
    assert held_doc["tunnel"]["handshaking"] <= MAX_HANDSHAKES, held_doc["tunnel"]
    assert held_doc["tunnel"]["refused_at_accept"] > 0, held_doc["tunnel"]
    assert ping["received"] == 3, ping
    assert set(sessions(held_doc)) == {"alice", "bob"}

    deadline = time.monotonic() + 10  # closing the flood's sockets frees its slots and descriptors
    while time.monotonic() < deadline:
        doc, fds = status(world), open_fds(pid)
        if doc["tunnel"]["handshaking"] == 0 and fds <= baseline_fds + 2:
            break
        time.sleep(0.1)
    assert doc["tunnel"]["handshaking"] == 0, doc["tunnel"]
    assert fds <= baseline_fds + 2, f"the gateway holds {fds} descriptors, {baseline_fds} before the flood"

    world.stop(world.process("alice"))  # a new session for alice, after the flood
    world.start_client("c1", "alice")
    alice = world.vpn_address("c1")
    assert alice == vpn["alice"]
    vpn["alice"] = alice
    assert_serving(world, vpn)
    assert world.probe("c2", "ping", alice, 3)["received"] == 3


def test_a_client_that_does_not_read_costs_its_send_cap_and_the_others_carry_on(world):
    require_netns()
    slow = add_client(world, "slow")
    vpn = world.start()
    pid = gateway_pid(world)
    hold_s, blast_s = 15.0, 5.0
    spawn(world, "c1", "slow", slow_reader, C1_TUNNEL, TUNNEL_PORT, str(slow.cert_path), str(slow.key_path),
          world.identities["gateway"].fingerprint, hold_s)  # fmt: skip
    slow_addr = wait_for_line(world, "slow", "vpn_addr", 10)["vpn_addr"]
    assert slow_addr not in vpn.values()
    assert_serving(world, vpn)  # warmed up: the baseline includes what alice and bob use
    baseline_rss = rss_bytes(pid)

    # from bob's namespace, to the slow client's VPN address: through bob's tunnel, the gateway, its tunnel
    blaster = spawn(world, "c2", "blast", blast, slow_addr, 9, 200_000, 1200, blast_s, 20_000)
    most_rss, echo, dropping = baseline_rss, None, None
    deadline = time.monotonic() + blast_s + 15
    while world.alive(blaster) and time.monotonic() < deadline:
        most_rss = max(most_rss, rss_bytes(pid))
        doc = status(world)
        if echo is None and sessions(doc).get("slow", {}).get("dropped", 0) > 0:
            dropping = doc
            echo = world.probe("c1", "udp_echo", vpn["bob"], 7, 10, 512)  # alice -> bob, while slow drops
            most_rss = max(most_rss, rss_bytes(pid))
        time.sleep(0.05)
    wait_exit(world, "blast", 5)
    blasted = log_lines(world, "blast")[-1]
    doc = status(world)
    most_rss = max(most_rss, rss_bytes(pid))
    print(json.dumps({"blast": blasted, "baseline_rss_mib": baseline_rss / 2**20, "most_rss_mib": most_rss / 2**20,
                      "sessions": doc["sessions"], "drops": doc["drops"]}))  # fmt: skip

    assert blasted["sent"] * 1200 > 8 * MAX_BUFFERED, blasted  # far more than the slow session may queue
    assert dropping is not None, "the slow session's packets were never dropped"
    assert echo is not None and echo["received"] == 10, echo
    now = sessions(doc)
    assert now["slow"]["dropped"] > 0, now["slow"]
    assert now["alice"]["dropped"] == 0 and now["bob"]["dropped"] == 0, now
    assert most_rss - baseline_rss < 64 << 20, f"RSS grew {(most_rss - baseline_rss) / 2**20:.1f} MiB"
    assert_serving(world, vpn)


def test_connections_that_never_start_tls_count_against_the_handshake_cap(world):
    """The endpoint's contract (gw/transport/endpoint.py): "at most ``max_handshakes`` connections may be
    in either [the TLS or the tunnel handshake] at once (more are closed at accept)". A bare TCP
    connection that never sends a ClientHello is in the TLS handshake: past the cap it must be closed
    at accept, not hold a descriptor (and a TLS object) until the TLS handshake timeout."""
    require_netns()
    vpn = world.start()
    pid = gateway_pid(world)
    time.sleep(0.5)  # the clients' sessions settle
    baseline_fds = open_fds(pid)
    total, hold_s = 400, 5.0
    spawn(world, "c1", "flood", flood, C1_TUNNEL, TUNNEL_PORT, total, 1, hold_s)  # every one TCP only
    ready = wait_for_line(world, "flood", "ready", 15)
    time.sleep(0.5)  # the gateway has taken (or refused) every connection the kernel accepted
    held_fds, held = open_fds(pid), status(world)
    ping = world.probe("c2", "ping", vpn["alice"], 3)  # bob -> alice while the flood is held
    wait_exit(world, "flood", hold_s + 10)
    deadline = time.monotonic() + 10
    while (fds := open_fds(pid)) > baseline_fds + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    print(json.dumps({"flood": ready, "baseline_fds": baseline_fds, "held_fds": held_fds, "after_fds": fds,
                      "held": held["tunnel"]}))  # fmt: skip

    assert ready["ready"]["tcp"] + ready["ready"]["tcp_failed"] == total, ready
    assert ping["received"] == 3, ping
    assert set(sessions(held)) == {"alice", "bob"}
    assert fds <= baseline_fds + 2, f"the gateway holds {fds} descriptors, {baseline_fds} before the flood"
    assert_serving(world, vpn)
    assert held["tunnel"]["handshaking"] <= MAX_HANDSHAKES, held["tunnel"]
    assert held_fds <= baseline_fds + MAX_HANDSHAKES + 8, (
        f"{total} bare TCP connections held {held_fds - baseline_fds} descriptors in the gateway "
        f"(cap {MAX_HANDSHAKES}); tunnel status {held['tunnel']}"
    )
    assert held["tunnel"]["refused_at_accept"] > 0, held["tunnel"]
