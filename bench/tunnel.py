"""The tunnel benchmark: gw against wireguard-go and kernel forwarding, in one run, in the lab's namespaces.

``sudo python -m bench.tunnel [--seconds 5] [--runs 3]``

Three systems carry the same traffic between the lab's two clients, through the gateway namespace:

- gw: the real ``gw serve`` and two ``gw connect`` (TLS 1.3 over TCP, TUN offloads on unless
  ``--no-offloads``), client to client through the gateway's router;
- wireguard-go (Debian's package) in the same namespaces: a hub in the gateway namespace with one peer
  per client, the hub's kernel forwarding between them, so the path is client -> gateway -> client, as
  for gw;
- the kernel alone, routing between the two veth links: the limit of this machine.

For each: TCP with iperf3 from client 1 to client 2 ("up") and back (``-R``, "down"), UDP with 64-byte
datagrams (iperf3 ``-u -l 64 -b 0``; the figure is what the receiver got), the round-trip time of
small pings, and the CPU time the tunnel's own processes used per Gbit/s carried; then TCP both ways
between client 1 and the gateway host itself (gw: its host TUN; wireguard-go: the hub's address), one
tunnel instead of two. Each figure is the
median of ``--runs`` runs (the spread in brackets); the ratios are gw over wireguard-go and over the
kernel. The last line is one JSON object.

Bounded: every iperf3 run lasts ``--seconds`` and is killed by its PID if it overruns; the lab is
removed at the end, also on failure or Ctrl-C. Needs root, iperf3 and wireguard-go (``just bench-deps``
installs them). No packet leaves the lab's namespaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import emit_json, out
from gw.lab.world import CLIENT_SIDE, GATEWAY_SIDE, LabError, LabWorld

IPERF_PORT = 5201
WG_PORT = 51820
WG_NET = {"gw": "10.99.0.1", "c1": "10.99.0.2", "c2": "10.99.0.3"}
TARGET_TCP_RATIO = 5.0  # issue 11: TCP through gw at least 5x wireguard-go, both ways
TARGET_UDP_RATIO = 2.0  # issue 11: 64-byte UDP at least 2x wireguard-go


def _cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes and their threads, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


class Bench:
    def __init__(self, world: LabWorld, seconds: float, runs: int) -> None:
        self.world, self.seconds, self.runs = world, seconds, runs
        self.tick = os.sysconf("SC_CLK_TCK")

    def iperf(self, server_ip: str, *args: str, daemons: list[int], server_role: str = "c2") -> dict:
        """One iperf3 run, client in c1 and server in ``server_role``; its JSON, plus the daemons' CPU seconds."""
        w = self.world
        server = subprocess.Popen(["ip", "netns", "exec", w.ns[server_role], "iperf3", "-s", "-1", "-B", server_ip,
                                   "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.3)
            before = _cpu_ticks(daemons)
            argv = ["ip", "netns", "exec", w.ns["c1"], "iperf3", "-c", server_ip, "-p", str(IPERF_PORT), "-J",
                    "-t", str(self.seconds), *args]  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.seconds + 20)
            cpu_s = (_cpu_ticks(daemons) - before) / self.tick
        finally:
            if server.poll() is None:
                server.kill()  # by its own PID
            server.wait(5)
        result = json.loads(done.stdout or "{}")
        if "error" in result or "end" not in result:
            raise LabError(f"iperf3 {' '.join(args)} to {server_ip}: {result.get('error', done.stderr.strip())}")
        result["daemon_cpu_s"] = cpu_s
        return result

    def measure(self, server_ip: str, daemons: list[int]) -> dict:
        """TCP up and down, UDP 64 B, RTT: medians and spreads over the runs."""
        samples: dict[str, list[float]] = {"tcp_up": [], "tcp_down": [], "udp64_pps": [], "cpu_s_per_gbit": [],
                                           "tcp_retransmits": []}  # fmt: skip
        for _ in range(self.runs):
            for key, args in (("tcp_up", ()), ("tcp_down", ("-R",))):
                r = self.iperf(server_ip, *args, daemons=daemons)
                bits = r["end"]["sum_received"]["bits_per_second"]
                samples[key].append(bits / 1e6)
                samples["tcp_retransmits"].append(r["end"]["sum_sent"].get("retransmits", 0))
                gbit = bits * self.seconds / 1e9
                samples["cpu_s_per_gbit"].append(r["daemon_cpu_s"] / gbit if gbit else float("nan"))
            r = self.iperf(server_ip, "-u", "-l", "64", "-b", "0", daemons=daemons)
            s = r["end"]["sum"]
            samples["udp64_pps"].append((s["packets"] - s["lost_packets"]) / s["seconds"])
        ping = self.world.probe("c1", "ping", server_ip, 20)
        figures = {k: _stats(v) for k, v in samples.items()}
        figures["rtt_ms"] = _stats(ping.get("rtt_ms") or [float("nan")])
        return figures

    def measure_to_gateway(self, gateway_ip: str, daemons: list[int]) -> dict:
        """TCP up and down between client 1 and the gateway host itself (one tunnel, not two)."""
        samples: dict[str, list[float]] = {"gateway_tcp_up": [], "gateway_tcp_down": []}
        for _ in range(self.runs):
            for key, args in (("gateway_tcp_up", ()), ("gateway_tcp_down", ("-R",))):
                r = self.iperf(gateway_ip, *args, daemons=daemons, server_role="gw")
                samples[key].append(r["end"]["sum_received"]["bits_per_second"] / 1e6)
        return {k: _stats(v) for k, v in samples.items()}


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


# ------------------------------------------------------------------------------------------ systems


def run_gw(bench: Bench, offloads: bool) -> dict:
    w = bench.world
    w.start_gateway()
    for role in ("c1", "c2"):
        w.start_client(role, {"c1": "alice", "c2": "bob"}[role])
    addrs = {role: w.vpn_address(role) for role in ("c1", "c2")}
    daemons = [w.process(n)["pid"] for n in ("gateway", "alice", "bob")]
    try:
        return bench.measure(addrs["c2"], daemons) | bench.measure_to_gateway("10.66.77.1", daemons)
    finally:
        for name in ("alice", "bob", "gateway"):
            w.stop(w.process(name))


def run_wireguard(bench: Bench) -> dict:
    """wireguard-go hub in the gateway namespace, one peer per client; the hub's kernel forwards."""
    w = bench.world
    keys = Path(tempfile.mkdtemp(prefix="wg-", dir=w.dir))
    pub = {}
    for role in ("gw", "c1", "c2"):
        private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        (keys / role).write_text(private)
        (keys / role).chmod(0o600)
        pub[role] = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                                   check=True).stdout.strip()  # fmt: skip
    procs = []
    try:
        for role in ("gw", "c1", "c2"):
            # the kernel module would be faster still, but the benchmark's peer is the user-space one;
            # each device has its own name: the control sockets in /var/run/wireguard are shared
            procs.append(w.spawn_command(role, f"wireguard-{role}", "wireguard-go", "-f", f"wg-{role}",
                                         env={"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}))
        deadline = time.monotonic() + 10
        for role in ("gw", "c1", "c2"):
            while subprocess.run(["ip", "-n", w.ns[role], "link", "show", f"wg-{role}"],
                                 capture_output=True).returncode:  # fmt: skip
                if time.monotonic() > deadline:
                    raise LabError(f"wireguard-go made no wg-{role}:\n{w.log_tail(f'wireguard-{role}')}")
                time.sleep(0.05)
        w.run("gw", "wg", "set", "wg-gw", "private-key", str(keys / "gw"), "listen-port", str(WG_PORT),
              "peer", pub["c1"], "allowed-ips", f"{WG_NET['c1']}/32",
              "peer", pub["c2"], "allowed-ips", f"{WG_NET['c2']}/32")  # fmt: skip
        for role in ("c1", "c2"):
            w.run(role, "wg", "set", f"wg-{role}", "private-key", str(keys / role), "peer", pub["gw"],
                  "allowed-ips", "10.99.0.0/24", "endpoint", f"{GATEWAY_SIDE[role]}:{WG_PORT}",
                  "persistent-keepalive", "25")  # fmt: skip
        for role in ("gw", "c1", "c2"):
            w.run(role, "ip", "addr", "add", f"{WG_NET[role]}/24", "dev", f"wg-{role}")
            w.run(role, "ip", "link", "set", f"wg-{role}", "mtu", "1420", "up")
        w.sysctl("gw", "net.ipv4.ip_forward=1")
        for role in ("c1", "c2"):  # each client's handshake with the hub, before measuring
            if w.probe(role, "ping", WG_NET["gw"], 3).get("received") != 3:
                raise LabError(f"wireguard-go: {role} cannot ping the hub")
        daemons = [r["pid"] for r in procs]
        return bench.measure(WG_NET["c2"], daemons) | bench.measure_to_gateway(WG_NET["gw"], daemons)
    finally:
        for record in procs:
            w.stop(record)
        w.sysctl("gw", "net.ipv4.ip_forward=0")
        shutil.rmtree(keys, ignore_errors=True)


def run_kernel(bench: Bench) -> dict:
    """Plain IPv4 forwarding in the gateway namespace between the two client links."""
    w = bench.world
    w.sysctl("gw", "net.ipv4.ip_forward=1")
    w.run("c1", "ip", "route", "add", "192.0.2.4/30", "via", GATEWAY_SIDE["c1"])
    w.run("c2", "ip", "route", "add", "192.0.2.0/30", "via", GATEWAY_SIDE["c2"])
    try:
        return bench.measure(CLIENT_SIDE["c2"], []) | bench.measure_to_gateway(GATEWAY_SIDE["c1"], [])
    finally:
        w.run("c1", "ip", "route", "del", "192.0.2.4/30")
        w.run("c2", "ip", "route", "del", "192.0.2.0/30")
        w.sysctl("gw", "net.ipv4.ip_forward=0")


# ------------------------------------------------------------------------------------------ report


def _fmt(s: dict, unit: str, digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} {unit} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tunnel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="each iperf3 run (default 5)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)")
    parser.add_argument("--no-offloads", action="store_true", help="gw's clients without TUN offloads")
    parser.add_argument("--only", choices=("gw", "wireguard-go", "kernel"), action="append",
                        help="measure only these systems (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    missing = [tool for tool in ("iperf3", "wireguard-go", "wg") if shutil.which(tool) is None]
    if missing:
        print(f"bench.tunnel needs {', '.join(missing)}: apt-get install iperf3 wireguard-go wireguard-tools",
              file=sys.stderr)  # fmt: skip
        return 2
    offloads = not args.no_offloads
    world = LabWorld(f"bench{os.getpid()}", offloads=offloads)
    systems = args.only or ["gw", "wireguard-go", "kernel"]
    results: dict[str, dict] = {}
    try:
        out(f"load average before: {os.getloadavg()[0]:.2f}; {args.runs} runs of {args.seconds:g} s per figure")
        world.build()
        for system in systems:
            out(f"measuring {system} ...")
            if system == "gw":
                results[system] = run_gw(Bench(world, args.seconds, args.runs), offloads)
            elif system == "wireguard-go":
                results[system] = run_wireguard(Bench(world, args.seconds, args.runs))
            else:
                results[system] = run_kernel(Bench(world, args.seconds, args.runs))
            r = results[system]
            out(f"  TCP up {_fmt(r['tcp_up'], 'Mbit/s')}, down {_fmt(r['tcp_down'], 'Mbit/s')}, "
                f"UDP 64 B {_fmt(r['udp64_pps'], 'packets/s')}, RTT {_fmt(r['rtt_ms'], 'ms', 3)}, "
                f"daemon CPU {_fmt(r['cpu_s_per_gbit'], 's per Gbit', 2)}, "
                f"TCP retransmits {_fmt(r['tcp_retransmits'], '')}; to the gateway host: TCP up "
                f"{_fmt(r['gateway_tcp_up'], 'Mbit/s')}, down {_fmt(r['gateway_tcp_down'], 'Mbit/s')}")  # fmt: skip
    except LabError as e:
        print(f"bench.tunnel: {e}", file=sys.stderr)
        return 1
    finally:
        world.down()
    figures: dict = {"offloads": offloads, "seconds": args.seconds, "runs": args.runs, "results": results}
    gw, wg, kernel = (results.get(s) for s in ("gw", "wireguard-go", "kernel"))
    ok = True
    if gw and wg:
        for key, target in (("tcp_up", TARGET_TCP_RATIO), ("tcp_down", TARGET_TCP_RATIO),
                            ("udp64_pps", TARGET_UDP_RATIO), ("gateway_tcp_up", TARGET_TCP_RATIO),
                            ("gateway_tcp_down", TARGET_TCP_RATIO)):  # fmt: skip
            ratio = gw[key]["median"] / wg[key]["median"]
            figures[f"gw_over_wireguard_go_{key}"] = ratio
            ok &= ratio >= target
            out(f"gw / wireguard-go, {key}: {ratio:.2f}x (target {target:g}x): {'PASS' if ratio >= target else 'MISS'}")
    if gw and kernel:
        for key in ("tcp_up", "tcp_down"):
            ratio = gw[key]["median"] / kernel[key]["median"]
            figures[f"gw_over_kernel_{key}"] = ratio
            out(f"gw / kernel forwarding, {key}: {ratio:.2%}")
    emit_json(figures)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
