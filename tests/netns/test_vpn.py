"""The VPN end to end, in namespaces made here: the real daemon and real clients as processes, over real
TLS and real TUN devices. A gateway namespace and two client namespaces, each client on its own veth
link to the gateway (192.0.2.0/30, 192.0.2.4/30); nothing leaves them."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gw import identity
from journal import recovery
from journal.events import GatewayStopped, SessionOpened, SessionRefused

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]


def icmp_echo(dst: str) -> float:
    """Inside a namespace: one ICMP echo to ``dst`` through a raw socket; the RTT in ms (raises on none)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(3)
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"gw-lab-ping"
    body = body[:2] + struct.pack("!H", _fold_csum(body)) + body[4:]
    t = time.monotonic()
    s.sendto(body, (dst, 0))
    while True:
        data, (src, _) = s.recvfrom(2048)
        ihl = (data[0] & 15) * 4
        if src == dst and data[ihl] == 0 and struct.unpack_from("!H", data, ihl + 4)[0] == ident:
            return (time.monotonic() - t) * 1e3


def _fold_csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_send(dst: str, port: int, payload: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(payload.encode(), (dst, port))


def vpn_address(device: str = "gw0") -> str:
    """Inside a namespace: the IPv4 address of ``device``, waiting up to 10 s for the client to set it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show", "dev", device], capture_output=True, text=True
        )
        if out.returncode == 0 and out.stdout.strip():
            for link in json.loads(out.stdout):
                for a in link.get("addr_info", []):
                    return a["local"]
        time.sleep(0.1)
    raise AssertionError(f"{device} got no address in 10 s")


class Lab:
    def __init__(self, netns, tmp: Path) -> None:
        self.netns, self.tmp, self.procs = netns, tmp, []
        self.g, self.c1, self.c2 = netns.create(), netns.create(), netns.create()
        for ns in (self.g, self.c1, self.c2):
            netns.run(ns, "ip", "link", "set", "lo", "up")
        for i, (ns, gw_ip, c_ip) in enumerate(
            [(self.c1, "192.0.2.1", "192.0.2.2"), (self.c2, "192.0.2.5", "192.0.2.6")]
        ):
            netns.run(
                self.g, "ip", "link", "add", f"g{i}", "type", "veth", "peer", "name", f"c{i}", "netns", ns
            )
            netns.run(self.g, "ip", "addr", "add", f"{gw_ip}/30", "dev", f"g{i}")
            netns.run(self.g, "ip", "link", "set", f"g{i}", "up")
            netns.run(ns, "ip", "addr", "add", f"{c_ip}/30", "dev", f"c{i}")
            netns.run(ns, "ip", "link", "set", f"c{i}", "up")
        keys = tmp / "keys"
        self.ids = {
            n: identity.new_identity(n, keys) for n in ("gateway", "alice", "bob", "carol", "mallory")
        }
        self.journal = tmp / "journal"
        (tmp / "gateway.toml").write_text(f"""
[tunnel]
listen = "0.0.0.0:8443"
certificate = "{self.ids["gateway"].cert_path}"
key = "{self.ids["gateway"].key_path}"
keepalive_s = 1
dead_after_s = 5
[journal]
directory = "{self.journal}"
fsync = "always"
[dns]
enabled = false
[status]
socket = "{tmp / "gw.sock"}"
[[clients]]
name = "alice"
fingerprint = "{self.ids["alice"].fingerprint}"
[[clients]]
name = "bob"
fingerprint = "{self.ids["bob"].fingerprint}"
[[clients]]
name = "carol"
fingerprint = "{self.ids["carol"].fingerprint}"
revoked = true
""")

    def client_toml(self, name: str, endpoint: str, offloads: bool = True) -> Path:
        path = self.tmp / f"{name}.toml"
        path.write_text(f"""
offloads = {"true" if offloads else "false"}
[gateway]
endpoint = "{endpoint}"
fingerprint = "{self.ids["gateway"].fingerprint}"
[identity]
certificate = "{self.ids[name].cert_path}"
key = "{self.ids[name].key_path}"
""")
        return path

    def start(self, ns: str, *args: str, log: str) -> subprocess.Popen:
        out = open(self.tmp / log, "w")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "gw", *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> int:
        """End one process by its own PID: SIGTERM, then SIGKILL after 5 s."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.tmp.glob("*.log")))


@pytest.fixture
def lab(netns, tmp_path):
    lab = Lab(netns, tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def test_clients_ping_the_gateway_and_reach_each_other_and_a_stranger_is_refused_and_journaled(lab):
    gateway = lab.start(lab.g, "serve", "-c", str(lab.tmp / "gateway.toml"), log="gateway.log")
    time.sleep(0.5)
    lab.start(lab.c1, "connect", "-c", str(lab.client_toml("alice", "192.0.2.1:8443")), log="alice.log")
    lab.start(lab.c2, "connect", "-c", str(lab.client_toml("bob", "192.0.2.5:8443")), log="bob.log")
    try:
        a = lab.netns.call(lab.c1, vpn_address)
        b = lab.netns.call(lab.c2, vpn_address)
        assert a != b and a.startswith("10.66.77.") and b.startswith("10.66.77.")
        rtt = lab.netns.call(lab.c1, icmp_echo, "10.66.77.1")  # the gateway answers its VPN address
        assert rtt < 3000
        assert lab.netns.call(lab.c2, icmp_echo, a) < 3000  # bob -> alice through the gateway
        # UDP alice -> bob: a receiver in bob's namespace, a sender in alice's
        recv = subprocess.Popen(
            ["ip", "netns", "exec", lab.c2, sys.executable, "-c",
             f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(({b!r}, 9999)); "
             "s.settimeout(5); print(s.recv(100).decode())"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        lab.procs.append(recv)
        time.sleep(0.3)
        lab.netns.call(lab.c1, udp_send, b, 9999, "hello bob")
        assert recv.communicate(timeout=10)[0].strip() == "hello bob"
        # mallory is not in gateway.toml: refused, exit 2, journaled with her fingerprint
        mallory = lab.start(
            lab.c1, "connect", "-c", str(lab.client_toml("mallory", "192.0.2.1:8443")), log="mallory.log"
        )
        assert mallory.wait(10) == 2
    except BaseException:
        print(lab.logs())
        raise
    assert lab.stop(gateway) == 0, lab.logs()
    events = recovery.load(lab.journal, truncate_torn_tail=False).events
    opened = {e.client for e in events if type(e) is SessionOpened}
    refused = [e for e in events if type(e) is SessionRefused]
    assert opened == {"alice", "bob"}
    assert [(r.fingerprint, r.reason) for r in refused] == [(lab.ids["mallory"].fingerprint, "unknown")]
    assert type(events[-1]) is GatewayStopped


def tcp_sink(addr: str, port: int, expect: int) -> dict:
    """Inside a namespace: accept one TCP connection, read ``expect`` bytes, return their sha256 and rate."""
    import hashlib

    with socket.create_server((addr, port)) as srv:
        srv.settimeout(20)
        conn, _ = srv.accept()
        conn.settimeout(20)
        h, got, t = hashlib.sha256(), 0, time.monotonic()
        while got < expect:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        return {"sha256": h.hexdigest(), "bytes": got, "mbit_s": got * 8 / (time.monotonic() - t) / 1e6}


def tcp_source(addr: str, port: int, size: int, seed: int) -> str:
    """Inside a namespace: send ``size`` seeded random bytes over TCP; return their sha256."""
    import hashlib
    import random

    data = random.Random(seed).randbytes(1 << 20)
    h = hashlib.sha256()
    with socket.create_connection((addr, port), timeout=20) as s:
        for _ in range(size >> 20):
            s.sendall(data)
            h.update(data)
    return h.hexdigest()


@pytest.mark.parametrize("alice_offloads, bob_offloads", [(True, True), (False, False), (False, True), (True, False)],
                         ids=["offloads", "no-offloads", "mixed", "segmented"])  # fmt: skip
def test_a_100_mb_tcp_transfer_between_clients_arrives_whole(lab, alice_offloads, bob_offloads):
    """alice sends, bob receives. Mixed: alice's plain packets gain a vnet header at the gateway, and
    bob's (ACK) packets lose theirs, checksum finished. Segmented: alice's super-packets are cut into
    plain packets at the gateway for bob."""
    lab.start(lab.g, "serve", "-c", str(lab.tmp / "gateway.toml"), log="gateway.log")
    time.sleep(0.5)
    alice = lab.client_toml("alice", "192.0.2.1:8443", alice_offloads)
    lab.start(lab.c1, "connect", "-c", str(alice), log="alice.log")
    lab.start(
        lab.c2, "connect", "-c", str(lab.client_toml("bob", "192.0.2.5:8443", bob_offloads)), log="bob.log"
    )
    try:
        lab.netns.call(lab.c1, vpn_address)
        b = lab.netns.call(lab.c2, vpn_address)
        size = 100 << 20
        sink = subprocess.Popen(
            ["ip", "netns", "exec", lab.c2, sys.executable, "-c",
             f"import json, tests.netns.test_vpn as t; print(json.dumps(t.tcp_sink({b!r}, 5001, {size})))"],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        lab.procs.append(sink)
        time.sleep(0.5)
        sent = lab.netns.call(lab.c1, tcp_source, b, 5001, size, 7, timeout=60)
        got = json.loads(sink.communicate(timeout=60)[0])
        print(
            f"client to client through gw, offloads {alice_offloads}/{bob_offloads}: {got['mbit_s']:.0f} Mbit/s"
        )
        assert got["bytes"] == size and got["sha256"] == sent
    except BaseException:
        print(lab.logs())
        raise


def test_a_client_keeps_its_address_across_reconnects_and_gateway_restarts_and_a_revoked_one_is_refused(lab):
    gateway = lab.start(lab.g, "serve", "-c", str(lab.tmp / "gateway.toml"), log="gateway.log")
    time.sleep(0.5)
    alice_toml = str(lab.client_toml("alice", "192.0.2.1:8443"))
    alice = lab.start(lab.c1, "connect", "-c", alice_toml, log="alice.log")
    try:
        first = lab.netns.call(lab.c1, vpn_address)
        assert lab.stop(alice) == 0  # the client stops cleanly and removes its TUN
        lab.start(lab.c1, "connect", "-c", alice_toml, log="alice2.log")
        assert lab.netns.call(lab.c1, vpn_address) == first
        assert lab.stop(gateway) == 0
        gateway = lab.start(lab.g, "serve", "-c", str(lab.tmp / "gateway.toml"), log="gateway2.log")
        deadline = time.monotonic() + 15  # the client reconnects with backoff
        while time.monotonic() < deadline:
            if (lab.tmp / "alice2.log").read_text().count("session ") >= 2:
                break
            time.sleep(0.2)
        assert (lab.tmp / "alice2.log").read_text().count("session ") >= 2, lab.logs()
        assert lab.netns.call(lab.c1, vpn_address) == first
        assert lab.netns.call(lab.c1, icmp_echo, "10.66.77.1") < 3000
        carol = lab.start(
            lab.c2, "connect", "-c", str(lab.client_toml("carol", "192.0.2.5:8443")), log="carol.log"
        )
        assert carol.wait(10) == 2
    except BaseException:
        print(lab.logs())
        raise
    assert lab.stop(gateway) == 0
    events = recovery.load(lab.journal, truncate_torn_tail=False).events
    refused = [(e.client, e.reason) for e in events if type(e) is SessionRefused]
    assert refused == [("carol", "revoked")]
    assert len({e.vpn_addr for e in events if type(e) is SessionOpened}) == 1  # three sessions, one address
