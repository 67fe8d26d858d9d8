"""What the hostile-client tests (``test_hostile``, ``test_floods``) and ``bench.flood`` share: helpers over
a ``LabWorld`` (run a function of this module inside a namespace, read what it printed, the gateway's
status, descriptors and memory), and the hostile scripts themselves: garbage on the tunnel, a flood of
connections that never say hello, a client that stops reading, a paced UDP blast.

The hostile scripts are functions of this module run in a fresh interpreter inside a namespace
(``_CHILD``), by ``call`` (bounded by a timeout) or ``spawn`` (ended by PID in ``world.stop`` or
``world.down``). Every load is bounded in count and time; every packet goes to an address inside the
lab. Moved here from ``test_hostile`` unchanged, so that the flood tests and the benchmark run the same
code.
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

from gw import identity, inet
from gw.lab.world import GATEWAY_SIDE, LabWorld
from gw.status import query
from gw.transport import wire
from gw.transport.wire import Close

ROOT = Path(__file__).resolve().parents[2]
C1_TUNNEL = GATEWAY_SIDE["c1"]  # the gateway's tunnel endpoint as c1 sees it
WAIT_S = 5.0  # the longest a hostile script waits for one answer from the gateway

# run gw.lab.hostile.<name>(*json args) in a fresh interpreter; its result is the last line
_CHILD = (
    f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); import gw.lab.hostile as t; "
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


# ------------------------------------------------------------- floods (tests.netns.test_floods, bench.flood)


def spawn_probe(world: LabWorld, role: str, name: str, probe: str, *args: object) -> dict:
    """``gw.lab.probes.<probe>(*args)`` inside ``role`` in the background (its log ``<name>.log``; ended by
    PID in ``world.stop`` or ``world.down``); its record. The floods print ``started`` first."""
    return world.spawn(role, name, "-m", "gw.lab.probes", probe, json.dumps(args))


def probe_result(world: LabWorld, name: str, timeout_s: float) -> dict:
    """The result a background probe prints last, once it has ended (waited for up to ``timeout_s``)."""
    wait_exit(world, name, timeout_s)
    lines = log_lines(world, name)
    assert lines, f"{name} printed nothing:\n{world.log_tail(name)}"
    return lines[-1]


def journal_events(world: LabWorld, timeout_s: float = 5.0) -> list:
    """Every event the gateway has journaled so far, once all of them are durable (read from the files)."""
    from journal import recovery

    deadline = time.monotonic() + timeout_s
    while (j := status(world)["journal"])["durable_seq"] < j["last_seq"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(recovery.load(world.journal, truncate_torn_tail=False).events)


def public_port(world: LabWorld, role: str, port: int, remote: tuple[str, int], timeout_s: float = 5.0) -> int:
    """The public port of the mapping that the client in ``role`` gets for its UDP ``port``: it sends one
    datagram from there to ``remote`` (an echo: the answer proves the mapping works) and the journal's
    ``MappingCreated`` names the port."""
    from journal.events import MappingCreated

    vpn = inet.aton(world.vpn_address(role))
    got = world.probe(role, "udp_talk", [[*remote, "gw lab: which public port?"]], 2.0, port, 1)
    assert got.get("received"), f"{role}: no answer from {remote} through the gateway: {got}"
    deadline = time.monotonic() + timeout_s
    while True:
        for ev in reversed(journal_events(world)):  # the newest, should it have been made again
            if type(ev) is MappingCreated and (ev.proto, ev.int_addr, ev.int_port) == (17, vpn, port):
                return ev.ext_port
        assert time.monotonic() < deadline, f"no MappingCreated for {role}'s UDP port {port} in the journal"
        time.sleep(0.1)


def garbage_for(seconds: float, max_rounds: int, host: str, port: int, cert: str, key: str, gateway_fp: str) -> dict:
    """``hostile_frames`` again and again, for at most ``seconds`` and ``max_rounds`` rounds (each eight
    connections, one of them a known client's session): how the connections ended (close code, or how
    the gateway ended one that got no CLOSE frame), and rounds that failed. Prints ``started`` first."""
    print(json.dumps({"started": True}), flush=True)
    ends: dict[str, int] = {}
    rounds, failed, first_failure = 0, 0, ""
    t = time.monotonic()
    while rounds + failed < max_rounds and time.monotonic() - t < seconds:
        try:
            got = hostile_frames(host, port, cert, key, gateway_fp)
        except Exception as e:  # a hostile script: whatever the gateway did to it is a result, not a crash
            failed += 1
            first_failure = first_failure or f"{type(e).__name__}: {e}"
            continue
        rounds += 1
        for r in got.values():
            end = r.get("close") or r.get("end") or "error"
            ends[end] = ends.get(end, 0) + 1
    return {"rounds": rounds, "failed": failed, "first_failure": first_failure, "connections": sum(ends.values()),
            "ends": ends, "seconds": round(time.monotonic() - t, 3)}  # fmt: skip


def flood_waves(host: str, port: int, seconds: float, per_wave: int, tcp_only_every: int, hold_s: float,
                max_waves: int) -> dict:  # fmt: skip
    """``flood`` in waves for at most ``seconds`` and ``max_waves`` waves: each opens ``per_wave``
    connections (as ``flood``), holds them ``hold_s`` and closes them, so that the gateway meets new
    handshakes all along. Prints ``started`` first; returns the waves and the connections' fates summed
    over them (``flood``'s ``ready`` counts)."""
    import contextlib
    import io

    print(json.dumps({"started": True}), flush=True)
    totals = {"tcp": 0, "tls": 0, "tcp_failed": 0, "tls_failed": 0}
    waves = 0
    t = time.monotonic()
    while waves < max_waves and time.monotonic() - t < seconds:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # flood prints its wave's counts: kept, summed
            flood(host, port, per_wave, tcp_only_every, min(hold_s, max(0.0, seconds - (time.monotonic() - t))))
        for line in printed.getvalue().splitlines():
            for key, n in json.loads(line).get("ready", {}).items():
                totals[key] += n
        waves += 1
    return {"waves": waves, "ready": totals, "connections": sum(totals.values()),
            "seconds": round(time.monotonic() - t, 3)}  # fmt: skip
