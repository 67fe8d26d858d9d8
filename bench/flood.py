"""Floods against the gateway, and what another client notices: ``sudo python -m bench.flood [--seconds 5]``

One lab (``gw.lab.world.LabWorld``) in raw external mode: the gateway on its own public address
198.51.100.1, alice (c1), bob (c2), the router (rtr) and the internet host 203.0.113.10 behind it.
bob is the client who must not notice: first with no flood (the baseline), then during each flood,
bob's UDP echo round trips to the internet host (``gw.lab.probes.udp_echo``, 20 datagrams) and
iperf3 TCP from c2 to the internet host for ``--seconds``. Each flood is bounded in count, rate and
time (it lasts ``--seconds`` plus the echoes and iperf3's start, and is ended by its PID if it
overruns):

1. ``handshakes``: from the router namespace to the gateway host's 198.51.100.2:8443 (the tunnel
   listens on 0.0.0.0), in waves: ``--connections`` connections as fast as they open, every fifth left
   at TCP and the rest through TLS, none ever saying hello, held for a second, closed, and the next
   wave (``gw.lab.hostile.flood``, by ``flood_waves``);
2. ``new-flows``: alice opens new UDP flows to the internet host, one datagram from each new source
   port at ``--rate`` (``gw.lab.probes.new_flows``): her quota of mappings, then every one refused;
3. ``garbage``: a known client (eve) and strangers send garbage frames on the tunnel from c1, one
   connection after another (``gw.lab.hostile.hostile_frames``, over and over);
4. ``fragments``: the internet host sends IPv4 fragments to the public address at ``--rate``, each
   datagram with a random IP identification and never completed: first fragments to alice's mapping,
   middle fragments whose first never comes, first fragments to no mapping
   (``gw.lab.probes.fragment_flood``);
5. ``spoofed``: alice sends datagrams with sources other than her VPN address through her TUN at
   ``--rate`` (``gw.lab.probes.spoofed_flood``), and ``martians``: the internet host sends to the
   public address from the VPN subnet and from the public address itself.

For each: bob's TCP rate and UDP echoes against the baseline, the gateway's RSS (VmRSS) before, at
its peak and after, the CPU the gateway and the flooder used (share of one core over the flood's
window), and the counters that show the flood was refused (``gw status``; the journal's ``QuotaHit``).
The baseline is measured again at the end, to show what the floods left behind. The machine's other
load counts: the flooder, the gateway, bob's client, iperf3 and the echo servers share its cores, so
a lower rate for bob during a flood is partly the flooder's own CPU (its share is in the table). The
last line is one JSON object. The lab is removed at the end, also on failure, Ctrl-C or SIGTERM. Needs
root and iperf3; every packet stays inside the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from bench.e2e import render
from bench.harness import emit_json, out
from bench.lab import IPERF_GRACE_S, IPERF_PORT, cpu_ticks, retransmits, tcp_mbit
from gw import inet
from gw.lab import hostile
from gw.lab.world import (
    ECHO_PORT,
    GATEWAY_HOST,
    INTERNET_HOST,
    RAW_PUBLIC,
    TUNNEL_PORT,
    LabError,
    LabWorld,
)
from gw.status import StatusError, query
from journal.events import QuotaHit, SessionClosed

DISCARD_PORT = 9  # nothing listens there on the internet host: new flows and forged datagrams go there
ALICE_PORT = 40000  # alice's UDP port whose public mapping the first fragments go to
STRAY_PORT = 33333  # a public port no mapping holds
VPN_GATEWAY = "10.66.77.1"  # the gateway's VPN address (the lab's default [vpn] subnet)
ECHOES = 20  # bob's UDP echo datagrams per measurement (64 bytes each)
ECHO_TIMEOUT_S = 70  # 20 datagrams, each waited for at most 3 s by the probe
FLOOD_EXTRA_S = 3.0  # a flood lasts --seconds plus this: bob's echoes and iperf3's start and end
FLOOD_STARTED_S = 15.0  # a flood's interpreter is up and sending within this
FLOOD_END_GRACE_S = 20.0  # a flood still running this long after its time is ended by its PID
SETTLE_S = 1.0  # after a flood, before the "after" figures: the gateway drains its queues
SAMPLE_S = 0.1  # how often RSS and the handshake count are sampled during a flood
GARBAGE_MAX_ROUNDS = 2000  # bound the garbage flood's rounds (eight connections each) whatever its speed
MAX_CONNECTIONS = 900  # the handshake flood's sockets live in one process: below its 1024 descriptors
HANDSHAKE_HOLD_S = 1.0  # each wave of the handshake flood holds its connections this long, then the next
MAX_WAVES = 200  # bound the handshake flood's waves whatever their speed
FLOODS = ("handshakes", "new-flows", "garbage", "fragments", "spoofed", "martians")


# ------------------------------------------------------------------------------------------ pure parts


def relative(value: float | None, baseline: float | None) -> float | None:
    """``value`` over ``baseline``; None when either is missing or the baseline is 0."""
    if value is None or not baseline:
        return None
    return value / baseline


def deltas(before: dict, after: dict) -> dict:
    """The drop counters and the daemon's counts that changed between two status documents."""
    found = {}
    for section in ("drops", "counts"):
        keys = set(before.get(section, {})) | set(after.get(section, {}))
        for key in sorted(keys):
            d = after.get(section, {}).get(key, 0) - before.get(section, {}).get(key, 0)
            if d:
                found[f"{section}.{key}"] = d
    for key in ("refused_at_accept", "accept_errors"):
        d = after.get("tunnel", {}).get(key, 0) - before.get("tunnel", {}).get(key, 0)
        if d:
            found[f"tunnel.{key}"] = d
    return found


def refused_summary(name: str, m: dict) -> str:
    """The counters that show flood ``name`` was refused, in a few words."""
    d, f = m.get("deltas", {}), m.get("flood", {})
    if name == "handshakes":
        ready = f.get("ready", {})
        return (f"{d.get('tunnel.refused_at_accept', 0):,} refused at accept, at most {m.get('most_handshaking', 0)} "
                f"handshaking; flooder: {ready.get('tls', 0):,} TLS, {ready.get('tcp', 0):,} TCP, "
                f"{ready.get('tls_failed', 0) + ready.get('tcp_failed', 0):,} failed")  # fmt: skip
    if name == "new-flows":
        return (f"quota {d.get('drops.quota', 0):,}, QuotaHit x{len(m.get('quota_hits', []))}, "
                f"{m.get('mappings', 0):,} mappings")  # fmt: skip
    if name == "garbage":
        ends = ", ".join(f"{k} {v:,}" for k, v in sorted(f.get("ends", {}).items()))
        closed = ", ".join(f"{k} {v:,}" for k, v in sorted(m.get("eve_sessions_closed", {}).items()))
        return (f"{f.get('rounds', 0):,} rounds: {ends}" + (f"; {f['failed']} rounds failed" if f.get("failed") else "")
                + f"; journal: eve's sessions closed {closed or 'none'}")  # fmt: skip
    if name == "fragments":
        return f"fragment {d.get('drops.fragment', 0):,}, no_mapping {d.get('drops.no_mapping', 0):,}"
    if name == "spoofed":
        return f"spoofed {d.get('drops.spoofed', 0):,}"
    if name == "martians":
        return f"martian {d.get('drops.martian', 0):,}"
    return ""


def report(results: dict) -> list[str]:
    """The table: bob's figures during each flood against the baseline, the gateway's cost, the refusals."""
    base = results["baseline"]
    rows = []
    for name, m in [("baseline", base), *results["floods"].items(), ("baseline, after", results.get("after"))]:
        if not m:
            continue
        f = m.get("flood", {})
        rate = f"{f['sent'] / f['seconds']:,.0f}/s" if f.get("sent") and f.get("seconds") else "-"
        if f.get("connections") and f.get("seconds"):  # handshakes, garbage
            rate = f"{f['connections'] / f['seconds']:,.0f} conns/s"
        tcp = m.get("tcp_mbit")
        rel = relative(tcp, base.get("tcp_mbit"))
        echo = m.get("echo", {})
        rows.append([
            name, rate,
            f"{tcp:,.0f}" if tcp is not None else "-",
            f"{rel:.2f}x" if rel is not None else "-",
            f"{echo.get('received', 0)}/{echo.get('sent', 0)}, {echo.get('median_ms') or float('nan'):.2f} ms",
            f"{m['gateway_cpu']:.0%}", f"{m['flooder_cpu']:.0%}" if m.get("flooder_cpu") is not None else "-",
            f"{m['rss_before'] / 2**20:.1f}/{m['rss_peak'] / 2**20:.1f}/{m['rss_after'] / 2**20:.1f}",
            refused_summary(name, m) or "-",
        ])  # fmt: skip
    return render(["flood", "flood rate", "bob TCP Mbit/s", "vs base", "bob UDP echo", "gw CPU", "flooder CPU",
                   "gw RSS MiB before/peak/after", "refused and counted"], rows)  # fmt: skip


# ------------------------------------------------------------------------------------------ the lab


def iperf_bob(world: LabWorld, seconds: float) -> dict:
    """One iperf3 TCP run from bob's namespace (c2) to the internet host: its JSON. The server runs once
    (-1) in the internet namespace and is killed by its PID if it outlives the run."""
    server = subprocess.Popen(["ip", "netns", "exec", world.ns["inet"], "iperf3", "-s", "-1", "-B", INTERNET_HOST,
                               "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.3)
        argv = ["ip", "netns", "exec", world.ns["c2"], "iperf3", "-c", INTERNET_HOST, "-p", str(IPERF_PORT), "-J",
                "-t", f"{seconds:g}"]  # fmt: skip
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + IPERF_GRACE_S)
        except subprocess.TimeoutExpired:  # run() has killed the client by its PID
            return {"error": f"iperf3: no result in {seconds + IPERF_GRACE_S:g} s"}
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(5)
    try:
        result = json.loads(done.stdout or "{}")
    except ValueError:
        result = {}
    if "end" not in result:
        result.setdefault("error", done.stderr.strip() or "no result")
    return result


class Sampler:
    """A thread that samples the gateway's RSS and handshakes in progress every SAMPLE_S until stopped."""

    def __init__(self, world: LabWorld, pid: int) -> None:
        self.world, self.pid = world, pid
        self.rss_peak = hostile.rss_bytes(pid)
        self.most_handshaking = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.rss_peak = max(self.rss_peak, hostile.rss_bytes(self.pid))
                doc = query(self.world.status_socket, timeout=1.0)
                self.most_handshaking = max(self.most_handshaking, doc["tunnel"]["handshaking"])
            except (OSError, AssertionError, StatusError):
                pass  # a slow answer under the flood: the next sample


def snapshot(world: LabWorld) -> dict:
    """The gateway's status document and RSS now: what a measurement compares with."""
    return {"status": query(world.status_socket), "rss": hostile.rss_bytes(hostile.gateway_pid(world))}


def measure(world: LabWorld, seconds: float, before: dict, flood: dict | None = None, flood_name: str = "") -> dict:
    """bob's echoes and TCP rate, the gateway's RSS and CPU, and its counters against ``before``
    (``snapshot``), while ``flood`` (a process record, started since) runs; with None, the baseline."""
    pid = hostile.gateway_pid(world)
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid] + ([flood["pid"]] if flood else [])
    with Sampler(world, pid) as sampler:
        t0, cpu0 = time.monotonic(), [cpu_ticks([p]) for p in pids]
        echo = world.probe("c2", "udp_echo", INTERNET_HOST, ECHO_PORT, ECHOES, 64, timeout=ECHO_TIMEOUT_S)
        tcp = iperf_bob(world, seconds)
        wall = time.monotonic() - t0
        cpu = [(cpu_ticks([p]) - c) / tick / wall for p, c in zip(pids, cpu0)]
        covered = flood is None or world.alive(flood)
    m: dict = {"echo": echo, "gateway_cpu": cpu[0], "flooder_cpu": cpu[1] if flood else None,
               "covered": covered, "window_s": round(wall, 3)}  # fmt: skip
    if "end" in tcp:
        m["tcp_mbit"] = tcp_mbit(tcp)
        m["tcp_retransmits"] = retransmits(tcp)
    else:
        m["tcp_error"] = tcp.get("error")
    if flood is not None:
        deadline = time.monotonic() + seconds + FLOOD_EXTRA_S + FLOOD_END_GRACE_S
        while world.alive(flood) and time.monotonic() < deadline:
            time.sleep(0.05)
        if world.alive(flood):
            world.stop(flood)  # by its PID
            m["flood_overran"] = True
        lines = hostile.log_lines(world, flood_name)
        m["flood"] = lines[-1] if lines else {"error": world.log_tail(flood_name)}
    time.sleep(SETTLE_S)
    after = query(world.status_socket)
    m.update(rss_before=before["rss"], rss_peak=max(sampler.rss_peak, hostile.rss_bytes(pid)),
             rss_after=hostile.rss_bytes(pid), most_handshaking=sampler.most_handshaking,
             deltas=deltas(before["status"], after), mappings=after["nat"]["mappings"])  # fmt: skip
    return m


def start_flood(world: LabWorld, name: str, seconds: float, rate: int, connections: int, targets: dict) -> dict:
    """Flood ``name`` started in the background (bounded by its own count and time); its process record."""
    flood_s = seconds + FLOOD_EXTRA_S
    count = int(rate * flood_s)
    if name == "handshakes":
        record = hostile.spawn(world, "rtr", name, hostile.flood_waves, GATEWAY_HOST, TUNNEL_PORT, flood_s, connections,
                               5, HANDSHAKE_HOLD_S, MAX_WAVES)  # fmt: skip
    elif name == "new-flows":
        record = hostile.spawn_probe(world, "c1", name, "new_flows", targets["alice"], INTERNET_HOST, DISCARD_PORT,
                                     1024, count, rate, flood_s)  # fmt: skip
    elif name == "garbage":
        eve = world.identities["eve"]
        record = hostile.spawn(world, "c1", name, hostile.garbage_for, flood_s, GARBAGE_MAX_ROUNDS, hostile.C1_TUNNEL,
                               TUNNEL_PORT, str(eve.cert_path), str(eve.key_path),
                               world.identities["gateway"].fingerprint)  # fmt: skip
    elif name == "fragments":
        record = hostile.spawn_probe(world, "inet", name, "fragment_flood", INTERNET_HOST, RAW_PUBLIC, ECHO_PORT,
                                     targets["alice_public_port"], STRAY_PORT, ["first", "later", "stray"], count,
                                     rate, flood_s)  # fmt: skip
    elif name == "spoofed":
        forged = [targets["bob"], "10.66.77.250", VPN_GATEWAY, "192.0.2.2", INTERNET_HOST, RAW_PUBLIC]
        record = hostile.spawn_probe(world, "c1", name, "spoofed_flood", forged, INTERNET_HOST, DISCARD_PORT, count,
                                     rate, flood_s)  # fmt: skip
    elif name == "martians":
        martians = [targets["alice"], VPN_GATEWAY, RAW_PUBLIC]
        record = hostile.spawn_probe(world, "inet", name, "spoofed_flood", martians, RAW_PUBLIC, STRAY_PORT, count,
                                     rate, flood_s)  # fmt: skip
    else:
        raise ValueError(name)
    hostile.wait_for_line(world, name, "started", FLOOD_STARTED_S)
    return record


def run(world: LabWorld, seconds: float, rate: int, connections: int, floods: list[str], say) -> dict:
    """The baseline, each flood, the baseline again."""
    hostile.add_client(world, "eve")  # the garbage flood's known client
    vpn = world.start()
    doc = query(world.status_socket)
    if not doc["gateway"]["listen"].startswith("0.0.0.0:"):
        raise LabError(f"the tunnel listens on {doc['gateway']['listen']}, not on every address: "
                       f"the router could not reach it at {GATEWAY_HOST}")  # fmt: skip
    targets = {"alice": vpn["alice"], "bob": vpn["bob"],  # alice's mapping, made before her quota fills
               "alice_public_port": hostile.public_port(world, "c1", ALICE_PORT, (INTERNET_HOST, ECHO_PORT))}
    say("baseline ...")
    results: dict = {"baseline": measure(world, seconds, snapshot(world)), "floods": {}}
    for name in floods:
        say(f"flood: {name} ...")
        before = snapshot(world)
        record = start_flood(world, name, seconds, rate, connections, targets)
        m = measure(world, seconds, before, record, name)
        if name == "garbage":  # the known client's sessions, each ended by its garbage: journaled
            closed: dict[str, int] = {}
            for e in hostile.journal_events(world):
                if type(e) is SessionClosed and e.client == "eve":
                    closed[e.reason] = closed.get(e.reason, 0) + 1
            m["eve_sessions_closed"] = closed
        if name == "new-flows":
            alice = inet.aton(vpn["alice"])
            m["quota_hits"] = [{"client": e.client, "int_port": e.int_port, "quota": e.quota}
                               for e in hostile.journal_events(world) if type(e) is QuotaHit
                               and e.int_addr == alice]  # fmt: skip
        results["floods"][name] = m
    say("baseline again ...")
    results["after"] = measure(world, seconds, snapshot(world))
    return results


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same way out as Ctrl-C: the lab comes down


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="bob's iperf3 run during each flood (default 5)")
    parser.add_argument("--rate", type=int, default=20_000,
                        help="packets per second of the packet floods (default 20000)")  # fmt: skip
    parser.add_argument("--connections", type=int, default=800,
                        help=f"the handshake flood's connections (default 800, at most {MAX_CONNECTIONS})")  # fmt: skip
    parser.add_argument("--only", choices=FLOODS, action="append", help="these floods alone (repeatable)")
    parser.add_argument("--json-only", action="store_true", help="print the JSON line alone")
    args = parser.parse_args(argv)
    if shutil.which("iperf3") is None:
        print("bench.flood needs iperf3: apt-get install iperf3", file=sys.stderr)
        return 2
    if not 0 < args.seconds <= 60 or not 0 < args.rate <= 100_000 or not 0 < args.connections <= MAX_CONNECTIONS:
        print(f"bench.flood: --seconds 0-60, --rate 1-100000, --connections 1-{MAX_CONNECTIONS}", file=sys.stderr)
        return 2
    say = (lambda text="": None) if args.json_only else out
    floods = [f for f in FLOODS if not args.only or f in args.only]
    world = LabWorld(f"flood{os.getpid()}", external="raw")
    signal.signal(signal.SIGTERM, _terminate)
    started = time.monotonic()
    load = os.getloadavg()
    results: dict = {}
    try:
        say(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs; floods of "
            f"{args.seconds + FLOOD_EXTRA_S:g} s at {args.rate:,}/s; lab {world.tag} in {world.dir}")  # fmt: skip
        world.build()
        results = run(world, args.seconds, args.rate, args.connections, floods, say)
    except (LabError, StatusError) as e:
        print(f"bench.flood: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.flood: interrupted; taking the lab down", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # the teardown is bounded: let it finish
            signal.signal(sig, signal.SIG_IGN)
        left = world.down()
        if left:
            print(f"bench.flood: could not remove {', '.join(left)}", file=sys.stderr)
    for line in report(results):
        say(line)
    notes = [f"{name}: the flood ended before bob's measurement did" for name, m in results["floods"].items()
             if not m["covered"]]  # fmt: skip
    notes += [f"{name}: iperf3 failed: {m['tcp_error']}" for name, m in results["floods"].items() if m.get("tcp_error")]
    for note in notes:
        say(f"note: {note}")
    say(f"took {time.monotonic() - started:.0f} s")
    base = results["baseline"].get("tcp_mbit")
    emit_json({"seconds": args.seconds, "rate": args.rate, "connections": args.connections, "external": "raw",
               "load_before": load, "cpus": os.cpu_count(), "results": results,
               "relative_tcp": {n: relative(m.get("tcp_mbit"), base) for n, m in results["floods"].items()},
               "notes": notes})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
