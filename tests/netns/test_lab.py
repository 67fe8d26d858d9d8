"""The VPN end to end on the lab's world (``gw.lab.world``): the real daemon, clients and servers as
processes in namespaces made here; DNS through the proxy, the host's TUN, spoofing, routes, status,
shutdown, and ``gw lab`` itself as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gw.lab.world import GATEWAY_HOST, INTERNET_HOST, LabWorld
from gw.status import query
from journal import recovery
from journal.events import GatewayStopped
from tests.netns.conftest import ROOT, lab_tag, netns_list, require_netns

pytestmark = pytest.mark.netns


def _logs(w: LabWorld) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(w.dir.glob("*.log")))


def _set(path, section: str, line: str) -> None:
    """Add ``line`` to ``[section]`` of a lab TOML file (the section exists and is not the last table)."""
    text = path.read_text()
    assert f"[{section}]\n" in text
    path.write_text(text.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1))


def test_dns_through_the_proxy_over_udp_and_tcp_reaches_the_internet_server_from_the_gateway_only(world):
    vpn = world.start()
    try:
        udp = world.probe("c1", "dns", "10.66.77.1", "www.lab.example", False)
        tcp = world.probe("c2", "dns", "10.66.77.1", "www.lab.example", True)
        missing = world.probe("c1", "dns", "10.66.77.1", "nothing.lab.example", False)
        # too big for a datagram: over UDP the client gets the TC answer as it came; over TCP the proxy
        # asks again over TCP and the client gets all 100 records
        big_udp = world.probe("c1", "dns", "10.66.77.1", "big.lab.example", False)
        big_tcp = world.probe("c1", "dns", "10.66.77.1", "big.lab.example", True)
        assert big_udp["truncated"] and big_udp["answers"] == [], big_udp
        assert not big_tcp["truncated"] and len(big_tcp["answers"]) == 100, big_tcp
        assert udp["answers"] == ["203.0.113.80"] and udp["rcode"] == 0, udp
        assert tcp["answers"] == ["203.0.113.80"] and tcp["rcode"] == 0, tcp
        assert missing["rcode"] == 3 and missing["answers"] == [], missing  # NXDOMAIN passes through
        seen = [ln.split()[3] for ln in (world.dir / "dns.log").read_text().splitlines() if ln.startswith("dns ")]
        assert len(seen) == 6 and {s.rpartition(":")[0] for s in seen} == {GATEWAY_HOST}
        assert sum(" tcp " in f" {s} " for s in (ln for ln in (world.dir / "dns.log").read_text().splitlines())) == 1
        doc = query(world.status_socket)
        assert doc["dns"]["queries"] == 5 and doc["dns"]["answers"] == 5
        assert sorted(s["client"] for s in doc["sessions"]) == ["alice", "bob"]
        assert {s["vpn_addr"] for s in doc["sessions"]} == set(vpn.values())
    except BaseException:
        print(_logs(world))
        raise


def test_the_proxy_is_no_open_resolver_and_an_upstream_that_never_answers_gets_the_client_servfail(world):
    _set(world.gateway_toml, "dns", f'upstreams = ["{INTERNET_HOST}:5353"]\ntimeout_s = 0.3\nattempts = 2')
    world.gateway_toml.write_text(world.gateway_toml.read_text().replace(
        f'upstreams = ["{INTERNET_HOST}:53"]\n', "", 1))  # fmt: skip
    world.start()
    try:
        t = time.monotonic()
        r = world.probe("c1", "dns", "10.66.77.1", "www.lab.example", False)
        assert r["rcode"] == 2 and r["answers"] == [], r  # SERVFAIL, after two attempts of 0.3 s
        assert time.monotonic() - t >= 0.6
        # from the internet side and from the client link, outside the tunnel: nothing answers port 53
        for role, server in (("inet", GATEWAY_HOST), ("c1", "192.0.2.1")):
            r = world.probe(role, "dns", server, "www.lab.example", False)
            assert "error" in r, f"{role} got a DNS answer from {server}: {r}"
        doc = query(world.status_socket)
        assert doc["dns"]["timeouts"] == 1 and doc["dns"]["answers"] == 0
    except BaseException:
        print(_logs(world))
        raise


def test_a_spoofed_source_is_dropped_at_the_gateway_and_counted(world):
    vpn = world.start()
    try:
        listener = subprocess.Popen(
            ["ip", "netns", "exec", world.ns["c2"], sys.executable, "-m", "gw.lab.probes", "udp_listen",
             json.dumps([vpn["bob"], 9999, 3.0])], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        time.sleep(0.5)
        world.probe("c1", "spoofed_udp", "10.66.77.77", vpn["bob"], 9999, "forged")  # not alice's address
        world.probe("c1", "spoofed_udp", vpn["alice"], vpn["bob"], 9999, "genuine")  # the control
        got = json.loads(listener.communicate(timeout=10)[0])["received"]
        assert [g["data"] for g in got] == ["genuine"], got
        assert query(world.status_socket)["drops"].get("spoofed") == 1
    except BaseException:
        print(_logs(world))
        raise


def test_routes_everything_through_the_tunnel_keeps_the_endpoint_reachable_and_restores_the_table(world):
    before = world.run("c1", "ip", "-j", "route", "show").stdout
    assert 'routes = ["0.0.0.0/0"]' in world.client_toml("alice").read_text()  # the lab's clients' setting
    vpn = world.start()
    try:
        got = world.run("c1", "ip", "-j", "route", "get", INTERNET_HOST).stdout
        assert json.loads(got)[0]["dev"] == "gw0"  # the internet goes into the tunnel
        got = world.run("c1", "ip", "-j", "route", "get", "192.0.2.1").stdout
        assert json.loads(got)[0]["dev"] == "uplink"  # the tunnel itself does not
        assert world.probe("c1", "ping", vpn["bob"], 3)["received"] == 3
        assert world.probe("c1", "ping", "10.66.77.1", 3)["received"] == 3
        world.probe("c1", "spoofed_udp", vpn["alice"], INTERNET_HOST, 9, "to the internet")
        assert query(world.status_socket)["routes"]["nat"] >= 1  # it reached the gateway's NAT
        assert world.stop(world.process("alice")) == 0
        assert world.run("c1", "ip", "-j", "route", "show").stdout == before
    except BaseException:
        print(_logs(world))
        raise


def test_sigterm_journals_the_stop_removes_the_host_tun_and_the_status_socket(world):
    world.start()
    try:
        assert "gw-host" in world.run("gw", "ip", "link", "show").stdout
        assert world.stop(world.process("gateway"), signal.SIGTERM) == 0
        assert "gw-host" not in world.run("gw", "ip", "link", "show").stdout
        assert not world.status_socket.exists()
        events = recovery.load(world.journal, truncate_torn_tail=False).events
        assert type(events[-1]) is GatewayStopped
    except BaseException:
        print(_logs(world))
        raise


def test_gw_status_prints_tables_and_json(world):
    world.start()
    cmd = [sys.executable, "-m", "gw", "status", "--socket", str(world.status_socket)]
    table = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=ROOT)
    doc = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=10, cwd=ROOT).stdout)
    assert table.returncode == 0 and "alice" in table.stdout and "bob" in table.stdout, table
    assert {"gateway", "sessions", "nat", "drops", "journal", "dns", "tunnel"} <= set(doc)
    missing = subprocess.run([*cmd[:-1], str(world.dir / "nothing.sock")], capture_output=True, text=True,
                             timeout=10, cwd=ROOT)  # fmt: skip
    assert missing.returncode == 1 and "is gw serve running" in missing.stderr and "Traceback" not in missing.stderr


def _gw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gw", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)  # fmt: skip


def test_gw_lab_runs_every_check_and_leaves_nothing_behind():
    require_netns()
    tag = lab_tag()
    done = _gw("lab", "--tag", tag, "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], done.stdout + done.stderr
    assert len(report["checks"]) >= 12 and all(c["ok"] for c in report["checks"])
    assert any("HTTP" in c["check"] for c in report["checks"])  # raw mode by default: TCP to the internet
    assert not [n for n in netns_list() if n.startswith(f"gwlab-{tag}-")]  # (other tests may run labs)


def test_gw_lab_keep_json_describes_the_lab_and_down_removes_it():
    require_netns()
    tag = lab_tag()
    kept = _gw("lab", "--tag", tag, "--keep", "--json")
    try:
        report = json.loads(kept.stdout)
        lab = report["lab"]
        names = {ns["name"] for ns in lab["namespaces"].values()}
        assert names == {f"gwlab-{tag}-{r}" for r in ("gw", "c1", "c2", "rtr", "inet")} and names <= netns_list()
        assert lab["namespaces"]["c1"]["enter"] == f"ip netns exec gwlab-{tag}-c1 bash"
        devices = {d["device"] for d in lab["namespaces"]["gw"]["devices"]}
        assert {"c1", "c2", "ext", "gw-host"} <= devices
        pids = {p["name"]: p["pid"] for p in lab["processes"]}
        assert {"gateway", "alice", "bob", "dns"} <= set(pids)
        assert all(os.path.exists(f"/proc/{pid}") for pid in pids.values())
        assert lab["internet"]["address"] == INTERNET_HOST and "http" in lab["internet"]
        assert lab["external"]["interface"] == "ext" and lab["external"]["public_addresses"] == ["198.51.100.1"]
        assert lab["internet"]["namespace"] == f"gwlab-{tag}-inet" and lab["router"]["addresses"]
    finally:
        down = _gw("lab", "--down", "--tag", tag)
    assert down.returncode == 0, down.stderr
    assert not names & netns_list()
    time.sleep(0.2)
    assert not any(os.path.exists(f"/proc/{pid}") and b"gw" in open(f"/proc/{pid}/cmdline", "rb").read()
                   for pid in pids.values())  # fmt: skip
    again = _gw("lab", "--down", "--tag", tag)
    assert again.returncode == 1 and "no lab" in again.stderr and "Traceback" not in again.stderr


def test_the_prometheus_endpoint_serves_the_daemons_figures_on_loopback(world):
    world.gateway_toml.write_text(world.gateway_toml.read_text().replace(
        "[status]\n", '[metrics]\nlisten = "127.0.0.1:9108"\n[status]\n', 1))  # fmt: skip
    vpn = world.start()
    assert world.probe("c1", "ping", vpn["bob"], 3)["received"] == 3
    time.sleep(1.2)  # the loop publishes the document every second
    fetch = ("import urllib.request; "
             "print(urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=5).read().decode())")
    text = world.run("gw", sys.executable, "-c", fetch).stdout
    assert "gw_sessions 2.0" in text, text
    assert 'gw_session_bytes_in_total{client="alice"}' in text and "gw_nat_mappings" in text
    assert "gw_journal_ok 1.0" in text


def test_the_host_tun_is_no_way_into_the_vpn_even_when_the_host_forwards(world):
    """The host TUN carries the host's own traffic only: with ip_forward on in the gateway namespace and
    a route to the VPN on the internet host, what the kernel forwards into the TUN is dropped, counted."""
    vpn = world.start()
    try:
        world.sysctl("gw", "net.ipv4.ip_forward=1")
        world.run("rtr", "ip", "route", "add", "10.66.77.0/24", "via", GATEWAY_HOST)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", world.ns["c1"], sys.executable, "-m", "gw.lab.probes", "udp_listen",
             json.dumps([vpn["alice"], 9999, 3.0])], stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        time.sleep(0.5)
        world.probe("inet", "spoofed_udp", INTERNET_HOST, vpn["alice"], 9999, "from outside")
        world.probe("gw", "spoofed_udp", "10.66.77.1", vpn["alice"], 9999, "from the host")  # the control
        got = json.loads(listener.communicate(timeout=10)[0])["received"]
        assert [g["data"] for g in got] == ["from the host"], got
        assert query(world.status_socket)["counts"]["from_host_not_local"] >= 1
    except BaseException:
        print(_logs(world))
        raise
