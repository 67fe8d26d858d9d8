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
import os
import shutil
import sys

from bench.harness import emit_json, out
from bench.lab import WG_NET, Bench, fmt, wireguard
from gw.lab.world import CLIENT_SIDE, GATEWAY_SIDE, LabError, LabWorld

TARGET_TCP_RATIO = 5.0  # issue 11: TCP through gw at least 5x wireguard-go, both ways
TARGET_UDP_RATIO = 2.0  # issue 11: 64-byte UDP at least 2x wireguard-go


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
    with wireguard(bench.world, {"c1": [], "c2": []}) as procs:
        daemons = [r["pid"] for r in procs]
        return bench.measure(WG_NET["c2"], daemons) | bench.measure_to_gateway(WG_NET["gw"], daemons)


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
            out(f"  TCP up {fmt(r['tcp_up'], 'Mbit/s')}, down {fmt(r['tcp_down'], 'Mbit/s')}, "
                f"UDP 64 B {fmt(r['udp64_pps'], 'packets/s')}, RTT {fmt(r['rtt_ms'], 'ms', 3)}, "
                f"daemon CPU {fmt(r['cpu_s_per_gbit'], 's per Gbit', 2)}, "
                f"TCP retransmits {fmt(r['tcp_retransmits'], '')}; to the gateway host: TCP up "
                f"{fmt(r['gateway_tcp_up'], 'Mbit/s')}, down {fmt(r['gateway_tcp_down'], 'Mbit/s')}")  # fmt: skip
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
