"""The end-to-end benchmark: a VPN client to an internet host through gw (raw NAT and socket mode),
user-space network stacks like socket mode (slirp4netns, pasta), wireguard-go and the kernel.

``sudo python -m bench.e2e [--seconds 5] [--runs 3] [--no-flows] [--no-anchors]``

The lab's client 1 (``c1``) talks to the internet host 203.0.113.10, behind the on-path router and
its 1280-MTU link, through these systems in turn, in one lab, each alone (the others' processes
stopped):

- gw: the daemon as ``LabWorld.start`` starts it in raw external mode (its own NAT on 198.51.100.1,
  through AF_PACKET on ``ext``), the client with TUN offloads unless ``--no-offloads``;
- gw in socket mode (``[external] mode = "socket"``, the lab's gateway.toml otherwise, a fresh
  journal): the gateway reaches the internet through the gateway namespace's own kernel sockets on
  its own address 198.51.100.2; it ends each of the client's TCP connections in user space
  (``gw.tcp_term``) and relays it through a kernel socket (``gw.external.tcp_relay``). TCP only;
- slirp4netns and pasta, the anchors of that approach (a user-space TCP/IP stack that carries a
  namespace's connections through the host's own sockets): each runs inside the lab's gateway
  namespace, so that its sockets leave through ``ext`` to 203.0.113.10 exactly as socket mode's do,
  attached to a fresh namespace the bench makes for it (``gwlab-<tag>-anchor``, in the lab's state so
  that the lab's teardown removes it too), in which the iperf3 client runs. Both with MTU 65520 on
  their tap device (their default, recommended for speed), IPv4 only, no port forwarding, no DNS, no
  route to the gateway namespace's loopback: slirp4netns ``--configure --mtu=65520
  --disable-host-loopback --disable-dns`` gives ``tap0`` 10.0.2.100/24 and a default route via
  10.0.2.2; pasta ``--config-net -m 65520 -t none -u none -T none -U none --no-map-gw`` copies the
  gateway namespace's address (198.51.100.2/24 on ``ext``) and default route. pasta runs as root
  (``--runas 0``): as ``nobody``, its default for root, it cannot join the target namespace;
- wireguard-go (as in ``bench.tunnel``): a hub in the gateway namespace and a peer in ``c1``, which
  routes 203.0.113.0/24 through it; the gateway namespace's kernel forwards and masquerades (nftables
  table ``ip gwbench``, ``oifname "ext" masquerade``) onto the host's 198.51.100.2;
- the kernel alone, the limit: ``c1`` routes 203.0.113.0/24 via its uplink, and the gateway namespace
  forwards and masquerades exactly as for wireguard-go. Masquerading, not plain routing: the router
  has no route back to the client links, and NAT keeps the path the same shape as the two VPNs'.

For gw (raw), wireguard-go and the kernel: iperf3 TCP from ``c1`` to the internet host ("up") and
back (``-R``, "down"), UDP with 64-byte datagrams (the figure is what the server received), ping
round trips, the CPU the tunnel's own processes used per Gbit/s and the TCP retransmissions
(``bench.lab.Bench``, shared with ``bench.tunnel``). For gw in socket mode, slirp4netns and pasta:
the same TCP up and down runs, the CPU per Gbit/s of gw's two daemons or of the anchor's process, the
retransmissions, the three taken in turns (run r of each before run r+1 of any: a shared host's speed
drifts over minutes), and their ratios the median of the ratios run by run (``paired_ratio``). The
issue's target for socket mode: TCP at least slirp4netns's and at least half pasta's, both ways
(TARGET_SOCKET_RATIOS).

Then new flows through gw's NAT with the journal on, in both audit modes (``[journal] audit``): in
``fast`` a new flow's first packet leaves at once; in ``strict`` it waits until its ``MappingCreated``
is fsynced (``gw.strict``). For each mode and run the gateway restarts on a fresh journal, and a
process in ``c1`` (``--flow-client``, below) first measures first-packet latency one flow at a time:
a new flow (new socket on a port not used before, one datagram to the internet host's UDP echo, the
time until its answer) alternated with a datagram on one existing flow; then it opens new flows as
fast as it can, at most ``--in-flight`` unanswered at once, for ``--seconds``, and counts the flows
whose answer came back in that time. Each flow needs a client port of its own (the NAT's mappings are
endpoint-independent), and one public address has 64,512 ports, so a phase also ends when the client
has used its FLOW_PORTS (61,440): the rate is then over the shorter time. The gateway's per-client
quotas (4,096 mappings, 16,384 remotes) are raised for this part alone: they are policy, and a
benchmark that ran into them would measure refusals. ``--no-flows`` leaves this part out.

Each figure is the median of ``--runs`` runs, the spread in brackets; the ratios are gw over
wireguard-go and over the kernel, gw's socket mode over slirp4netns and over pasta, and strict over
fast. The last line is one JSON object. Bounded: every iperf3 run and flow client is killed by its
PID if it overruns, slirp4netns and pasta are stopped by their PID; the lab (namespaces, processes,
nftables table, sysctls) is removed at the end, also on failure, Ctrl-C or SIGTERM. Needs root,
iperf3, wireguard-go, wg, nft, slirp4netns and pasta (``just bench-deps``; ``--no-anchors`` leaves
the last two out). No packet leaves the lab's namespaces, and nothing is changed outside them.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.harness import emit_json, out
from bench.lab import Bench, cpu_ticks, fmt, stats, wireguard
from gw.lab.world import (
    COMMAND_TIMEOUT_S,
    ECHO_PORT,
    GATEWAY_HOST,
    GATEWAY_SIDE,
    INTERNET_HOST,
    LabError,
    LabWorld,
)
from gw.status import StatusError, query

ROOT = Path(__file__).resolve().parent.parent  # the flow client runs as ``python -m bench.e2e`` from here
INTERNET_NET = "203.0.113.0/24"  # what c1 routes through the system under test
NFT_TABLE = "gwbench"
MASQUERADE = f"""table ip {NFT_TABLE} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "ext" masquerade
    }}
}}
"""
TARGET_TCP_RATIO = 5.0  # the issue: TCP through gw at least 5x the wireguard-go path, both ways
# the issue: socket-mode TCP at least slirp4netns's and at least half pasta's, both ways
TARGET_SOCKET_RATIOS = {"slirp4netns": 1.0, "pasta": 0.5}
TARGET_SOCKET_LINE = "socket-mode TCP ≥ slirp4netns and ≥ 0.5 × pasta, both ways"
ANCHORS = ("slirp4netns", "pasta")
SYSTEMS = ("gw", "flows", "gw-socket", *ANCHORS, "wireguard-go", "kernel")  # in the order they are measured
GW_SYSTEMS = {"gw", "flows", "gw-socket"}  # those that need the lab's servers and gw's daemons started
ANCHOR_ROLE = "anchor"  # the namespace the anchors carry: gwlab-<tag>-anchor, one fresh one per anchor
ANCHOR_MTU = 65520  # both tools' default and recommended MTU for speed (the most a 64 KiB frame carries)
ANCHOR_UP_S = 10  # each configures its namespace in well under a second
# compared between socket mode and the anchors; host_*: the whole host's CPU (every process and the
# kernel), which on a host whose cores are all busy bounds the rate more than any one daemon does
SOCKET_KEYS = ("tcp_up", "tcp_down", "cpu_s_per_gbit", "host_s_per_gbit_up", "host_s_per_gbit_down")
# the tool, by the command that is checked for, and the Debian package that has it (just bench-deps)
PACKAGES = {"iperf3": "iperf3", "wireguard-go": "wireguard-go", "wg": "wireguard-tools", "nft": "nftables",
            "slirp4netns": "slirp4netns", "pasta": "passt"}  # fmt: skip
AUDIT_MODES = ("fast", "strict")
SYSTEM_KEYS = ("tcp_up", "tcp_down", "udp64_pps", "rtt_ms", "cpu_s_per_gbit")  # compared across systems
FLOW_KEYS = ("flows_per_s", "new_median_ms", "new_p99_ms", "existing_median_ms", "existing_p99_ms",
             "loaded_median_ms", "loaded_p99_ms")  # fmt: skip
# CPU time over wall time during the rate phase: the flow client (the load), the gateway daemon, gw's
# client daemon, the internet host's echo (the lab's services process); one near 100% is the limit
CPU_SHARES = ("load_cpu_share", "gateway_cpu_share", "vpn_client_cpu_share", "echo_cpu_share")
# the flow client's ports: never one twice in a measurement, so every flow is a new NAT mapping; the
# gateway restarts (a new NAT) before each measurement, so each may use the whole range again
FLOW_PORTS = (4096, 65535)  # 61,440: below the public address's 64,512 ports, which the NAT also needs
FLOW_QUOTA = 65536  # [nat] max_mappings_per_client / max_remotes_per_client while measuring flows
ANSWER_TIMEOUT_S = 1.0  # a flow unanswered this long is counted lost (strict holds at most 2 s: gw.strict)
FLOW_PAYLOAD = b"gw bench.e2e new flow"  # one small datagram; the echo sends it back
PATH_CHECK_PINGS = 3


# ------------------------------------------------------------------------------------------ pure parts


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0-100) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least the first
    return ordered[int(rank) - 1]


def latency_ms(samples_ns: list[int]) -> dict:
    """Median and p99 of round trips in ns, in ms, with their count."""
    return {"median": percentile(samples_ns, 50) / 1e6, "p99": percentile(samples_ns, 99) / 1e6,
            "count": len(samples_ns)}  # fmt: skip


def ratio(a: dict | None, b: dict | None) -> float | None:
    """The ratio of two ``stats`` medians, None when either is missing or the divisor is 0."""
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def paired_ratio(a: dict | None, b: dict | None) -> float | None:
    """For two systems measured in turns (``run_socket_systems``): the median of the ratios run by run,
    each of a pair taken within the same minute, so a host whose speed drifts between rounds (seen
    here: 4x within one bench) cancels out; the ratio of the medians when the runs do not pair."""
    if not a or not b or len(a["runs"]) != len(b["runs"]) or not all(b["runs"]):
        return ratio(a, b)
    return statistics.median(x / y for x, y in zip(a["runs"], b["runs"], strict=True))


def ratios(results: dict) -> dict[str, float]:
    """gw over wireguard-go and over the kernel, gw's socket mode over each anchor, strict over fast:
    every ratio the results allow."""
    gw, wg, kernel, sock = (results.get(s) for s in ("gw", "wireguard-go", "kernel", "gw-socket"))
    found: dict[str, float] = {}
    for key in SYSTEM_KEYS:
        for name, other in (("wireguard_go", wg), ("kernel", kernel)):
            r = ratio(gw and gw.get(key), other and other.get(key))
            if r is not None:
                found[f"gw_over_{name}_{key}"] = r
    for key in SOCKET_KEYS:
        for name in ANCHORS:
            other = results.get(name)
            r = paired_ratio(sock and sock.get(key), other and other.get(key))
            if r is not None:
                found[f"gw_socket_over_{name}_{key}"] = r
    flows = results.get("flows", {})
    for key in FLOW_KEYS:
        r = ratio(flows.get("strict", {}).get(key), flows.get("fast", {}).get(key))
        if r is not None:
            found[f"strict_over_fast_{key}"] = r
    return found


def gateway_config(text: str, journal: Path, audit: str) -> str:
    """The lab's gateway.toml with its journal in ``journal``, audit mode ``audit`` and the per-client
    quotas raised to FLOW_QUOTA. Raises LabError if the lab's file does not have the expected shape."""
    lines, section, edits = [], "", 0
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[journal]" and line.startswith("directory ="):
            line = f'directory = "{journal}"\naudit = "{audit}"'
            edits += 1
        lines.append(line)
        if line == "[nat]":
            lines.append(f"max_mappings_per_client = {FLOW_QUOTA}\nmax_remotes_per_client = {FLOW_QUOTA}")
            edits += 1
    if edits != 2:
        raise LabError("the lab's gateway.toml has no [journal] directory and [nat] section to edit")
    return "\n".join(lines) + "\n"


def socket_config(text: str, journal: Path) -> str:
    """The lab's raw-mode gateway.toml turned to socket mode: ``[external] mode = "socket"`` without the
    raw mode's interface, the gateway host's own address as the NAT's public one (as ``LabWorld(external=
    "socket")`` writes it), the journal in ``journal`` (a fresh one: the raw runs' mappings were on
    another address). Raises LabError if the lab's file does not have the expected shape."""
    lines, section, edits = [], "", set()
    for line in text.splitlines():
        if line.startswith("["):
            section = line
        elif section == "[external]" and line.startswith("mode ="):
            line = 'mode = "socket"'
            edits.add("mode")
        elif section == "[external]" and line.startswith("interface ="):
            continue  # raw mode's AF_PACKET device; socket mode has none
        elif section == "[nat]" and line.startswith("external_addresses ="):
            line = f'external_addresses = ["{GATEWAY_HOST}"]'
            edits.add("addresses")
        elif section == "[journal]" and line.startswith("directory ="):
            line = f'directory = "{journal}"'
            edits.add("journal")
        lines.append(line)
    if edits != {"mode", "addresses", "journal"}:
        raise LabError("the lab's gateway.toml has no [external] mode, [nat] external_addresses and [journal] "
                       "directory to edit")  # fmt: skip
    return "\n".join(lines) + "\n"


def socket_target(found: dict[str, float]) -> dict | None:
    """The issue's target for socket mode, TARGET_SOCKET_RATIOS both ways: each ratio, its floor and
    whether it holds, and whether all do; None unless socket mode and both anchors were measured."""
    checks = {}
    for name, floor in TARGET_SOCKET_RATIOS.items():
        for key in ("tcp_up", "tcp_down"):
            r = found.get(f"gw_socket_over_{name}_{key}")
            if r is None:
                return None
            checks[f"{name}_{key}"] = {"anchor": name, "figure": key, "ratio": r, "floor": floor,
                                       "met": r >= floor}  # fmt: skip
    return {"target": TARGET_SOCKET_LINE, "met": all(c["met"] for c in checks.values()), "checks": checks}


def status_summary(doc: dict) -> dict:
    """What the report keeps of ``gw status --json``: the external gateway's counters, the daemon's
    nonzero drops and counts, the audit section and the journal's sequence numbers."""
    return {
        "external": doc.get("external", {}),
        "drops": {k: v for k, v in doc.get("drops", {}).items() if v},
        "counts": {k: v for k, v in doc.get("counts", {}).items() if v},
        "audit": doc.get("audit", {}),
        "journal": {
            k: doc.get("journal", {}).get(k) for k in ("last_seq", "durable_seq", "lag_events", "error")
        },
    }


def concerns(gw: dict) -> list[str]:
    """What looks wrong in gw's figures (the brief's warning signs), as sentences; none if nothing."""
    notes = []
    for key, label in (("tcp_up", "TCP up"), ("tcp_down", "TCP down")):
        if key in gw and gw[key]["median"] < 1000:
            notes.append(f"{label} below 1 Gbit/s ({gw[key]['median']:,.0f} Mbit/s)")
    if gw.get("tcp_retransmits", {}).get("max"):
        notes.append(f"TCP retransmissions: {gw['tcp_retransmits']['runs']} per run")
    status = gw.get("status", {})
    for key in ("send_failed", "no_next_hop", "oversized", "receive_errors"):
        if status.get("external", {}).get(key):
            notes.append(f"external.{key} = {status['external'][key]}")
    if status.get("drops"):
        notes.append(f"drops: {status['drops']}")
    return notes


def render(header: list[str], rows: list[list[str]]) -> list[str]:
    """A plain text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def _cell(s: dict | None, unit: str, digits: int = 0) -> str:
    return fmt(s, unit, digits) if s else "-"


def _times(r: float | None) -> str:
    return f"{r:.2f}x" if r is not None else "-"


def report(results: dict, found: dict[str, float]) -> list[str]:
    """The human-readable tables: systems side by side with their ratios, then the flows by audit mode."""
    lines: list[str] = []
    gw, wg, kernel = (results.get(s) for s in ("gw", "wireguard-go", "kernel"))
    if gw or wg or kernel:
        rows = []
        for key, label, unit, digits in (("tcp_up", "TCP c1 -> internet", "Mbit/s", 0),
                                         ("tcp_down", "TCP internet -> c1 (-R)", "Mbit/s", 0),
                                         ("udp64_pps", "UDP 64 B received", "/s", 0),
                                         ("rtt_ms", "ping RTT", "ms", 3),
                                         ("cpu_s_per_gbit", "tunnel CPU per Gbit", "s", 2),
                                         ("tcp_retransmits", "TCP retransmits per run", "", 0)):  # fmt: skip
            cells = [_cell(s and s.get(key), unit, digits) for s in (gw, wg, kernel)]
            rows.append([label, cells[0], cells[1], _times(found.get(f"gw_over_wireguard_go_{key}")), cells[2],
                         _times(found.get(f"gw_over_kernel_{key}"))])  # fmt: skip
        lines += render(["figure", "gw (raw NAT)", "wireguard-go", "gw / wg", "kernel (masquerade)", "gw / kernel"],
                        rows)  # fmt: skip
    lines += _socket_report(results, found, blank_first=bool(lines))
    flows = results.get("flows")
    if flows:
        lines.append("")
        rows = []
        for key, label, unit, digits in (("flows_per_s", "new flows answered", "/s", 0),
                                         ("new_median_ms", "first packet of a new flow, median", "ms", 3),
                                         ("new_p99_ms", "first packet of a new flow, p99", "ms", 3),
                                         ("existing_median_ms", "packet of an existing flow, median", "ms", 3),
                                         ("existing_p99_ms", "packet of an existing flow, p99", "ms", 3),
                                         ("loaded_median_ms", "new flow at full rate, median", "ms", 3),
                                         ("loaded_p99_ms", "new flow at full rate, p99", "ms", 3),
                                         ("lost", "flows unanswered per run", "", 0)):  # fmt: skip
            rows.append([label, *(_cell(flows.get(m, {}).get(key), unit, digits) for m in AUDIT_MODES),
                         _times(found.get(f"strict_over_fast_{key}"))])  # fmt: skip
        lines += render(["gw NAT, journal on", "audit = fast", "audit = strict", "strict / fast"], rows)
    return lines


def _anchor_label(name: str, figures: dict) -> str:
    link = figures.get("interface", {})
    return f"{name} ({link['device']}, MTU {link['mtu']})" if link else name


def _socket_report(results: dict, found: dict[str, float], blank_first: bool) -> list[str]:
    """gw's socket mode and the anchors, a row each, then socket mode over each anchor with its target."""
    systems = [(name, results[name]) for name in ("gw-socket", *ANCHORS) if results.get(name)]
    if not systems:
        return []
    keys = (("tcp_up", "Mbit/s", 0), ("tcp_down", "Mbit/s", 0), ("cpu_s_per_gbit", "s", 2),
            ("host_s_per_gbit_up", "s", 2), ("host_s_per_gbit_down", "s", 2), ("tcp_retransmits", "", 0),
            ("steal_share", "", 2))  # fmt: skip
    rows = [["gw (socket mode)" if name == "gw-socket" else _anchor_label(name, figures),
             *(_cell(figures.get(key), unit, digits) for key, unit, digits in keys)]
            for name, figures in systems]  # fmt: skip
    for name in ANCHORS:
        cells = [_times(found.get(f"gw_socket_over_{name}_{key}")) for key, _, _ in keys[:5]]
        if any(c != "-" for c in cells):
            rows.append([f"gw socket / {name} (target >= {TARGET_SOCKET_RATIOS[name]:g}x)", *cells, "", ""])
    header = ["socket mode and its anchors", "TCP c1 -> internet", "TCP internet -> c1 (-R)",
              "daemons' CPU per Gbit", "host CPU per Gbit up", "host CPU per Gbit down",
              "TCP retransmits per run", "time stolen"]  # fmt: skip
    cores = os.cpu_count() or 1
    ceilings = [f"{name} {cores / figures['host_s_per_gbit_down']['median']:,.1f} Gbit/s"
                for name, figures in systems if figures.get("host_s_per_gbit_down", {}).get("median")]  # fmt: skip
    notes = [f"downloads at their host CPU per Gbit, with all {cores} cores busy, could reach at most: "
             + ", ".join(ceilings)] if ceilings else []  # fmt: skip
    return [""] * blank_first + render(header, rows) + notes


# ------------------------------------------------------------------------------------------ the flow client


def _new_flow(dst: tuple[str, int], ports: Iterator[int]) -> socket.socket | None:
    """A UDP socket connected to ``dst`` from the next free port of ``ports``; None when they run out."""
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:  # in use here: skip it
            s.close()
            continue
        s.connect(dst)
        return s
    return None


def _round_trip(s: socket.socket) -> int | None:
    """One datagram and its echo on a blocking socket: ns from send to answer, None if none came."""
    s.settimeout(ANSWER_TIMEOUT_S)
    t = time.perf_counter_ns()
    try:
        s.send(FLOW_PAYLOAD)
        while s.recv(2048) != FLOW_PAYLOAD:
            pass
    except OSError:  # TimeoutError, or an ICMP error reported on the connected socket
        return None
    return time.perf_counter_ns() - t


def flow_latency(dst: tuple[str, int], seconds: float, samples: int, ports: Iterator[int]) -> dict:
    """New flows one at a time, each followed by a datagram on one existing flow: their round trips."""
    existing = _new_flow(dst, ports)
    if existing is None or _round_trip(existing) is None:  # its mapping is made (and durable) before timing
        return {"error": "the first flow got no answer"}
    new, old, lost = [], [], 0
    deadline = time.monotonic() + seconds
    with existing:
        while len(new) < samples and time.monotonic() < deadline:
            s = _new_flow(dst, ports)
            if s is None:
                break
            with s:
                rtt = _round_trip(s)
            if rtt is None:
                lost += 1
            else:
                new.append(rtt)
            rtt = _round_trip(existing)
            if rtt is not None:
                old.append(rtt)
    return {"new": latency_ms(new), "existing": latency_ms(old), "lost": lost}


def flow_rate(dst: tuple[str, int], seconds: float, in_flight: int, ports: Iterator[int]) -> dict:
    """New flows as fast as they are answered, at most ``in_flight`` waiting, for ``seconds``: the
    flows answered within that time, those that got no answer in ANSWER_TIMEOUT_S, the round trips."""
    ep = select.epoll()
    waiting: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, sent at), oldest first
    answered, lost, send_errors, rtts = 0, 0, 0, []
    exhausted = False
    timeout_ns = int(ANSWER_TIMEOUT_S * 1e9)
    start = time.perf_counter_ns()
    deadline = start + int(seconds * 1e9)
    now = start
    while now < deadline:
        while len(waiting) < in_flight and not exhausted:
            s = _new_flow(dst, ports)
            if s is None:
                exhausted = True
                break
            s.setblocking(False)
            try:
                s.send(FLOW_PAYLOAD)
            except OSError:  # ENOBUFS, or an ICMP error from an earlier flow on this port
                send_errors += 1
                s.close()
                continue
            waiting[s.fileno()] = (s, time.perf_counter_ns())
            ep.register(s.fileno(), select.EPOLLIN)
        if not waiting:
            break
        events = ep.poll(0.05)
        now = time.perf_counter_ns()
        for fd, _ in events:
            s, sent = waiting.pop(fd)
            try:
                ok = s.recv(2048) == FLOW_PAYLOAD
            except OSError:
                ok = False
            ep.unregister(fd)
            s.close()
            if ok and now <= deadline:
                answered += 1
                rtts.append(now - sent)
            elif not ok:
                lost += 1
        while waiting:  # the oldest first: stop at the first that may still be answered
            fd, (s, sent) = next(iter(waiting.items()))
            if now - sent < timeout_ns:
                break
            del waiting[fd]
            ep.unregister(fd)
            s.close()
            lost += 1
    elapsed_s = (min(now, deadline) - start) / 1e9
    for s, _ in waiting.values():  # cut by the deadline: neither answered nor lost
        s.close()
    ep.close()
    return {"answered": answered, "lost": lost, "send_errors": send_errors, "seconds": elapsed_s,
            "flows_per_s": answered / elapsed_s if elapsed_s else 0.0, "ports_ran_out": exhausted,
            "loaded": latency_ms(rtts)}  # fmt: skip


def flow_client(spec: dict) -> dict:
    """``--flow-client``: one phase (``latency`` or ``rate``) as ``spec`` says; its figures and CPU share."""
    dst = (spec["dst"], spec["port"])
    ports = iter(range(spec["first_port"], spec["last_port"] + 1))
    wall, cpu = time.monotonic(), time.process_time()
    if spec["phase"] == "latency":
        result = flow_latency(dst, spec["seconds"], spec["samples"], ports)
    else:
        result = flow_rate(dst, spec["seconds"], spec["in_flight"], ports)
    result["cpu_share"] = (time.process_time() - cpu) / max(time.monotonic() - wall, 1e-9)
    result["next_port"] = next(ports, spec["last_port"] + 1)
    return result


# ------------------------------------------------------------------------------------------ the lab


def _gw_daemons(world: LabWorld) -> list[dict]:
    return [r for name in ("gateway", "alice", "bob") if world.alive(r := world.process(name))]


def _check_path(world: LabWorld, what: str, log: str = "") -> None:
    """Raise LabError unless c1 reaches the internet host (ping) through ``what`` (``log``: its process's log)."""
    ping = world.probe("c1", "ping", INTERNET_HOST, PATH_CHECK_PINGS)
    if not ping.get("received"):
        tail = f":\n{world.log_tail(log)}" if log else ""
        raise LabError(f"{what}: c1 cannot ping {INTERNET_HOST}{tail}")


@contextmanager
def masquerade(world: LabWorld) -> Iterator[None]:
    """The gateway namespace's kernel NAT onto ``ext`` (nftables table ``ip gwbench``), removed on the way out."""
    argv = ["ip", "netns", "exec", world.ns["gw"], "nft", "-f", "-"]
    try:
        done = subprocess.run(
            argv, input=MASQUERADE, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"nft: no result in {COMMAND_TIMEOUT_S:g} s") from None
    if done.returncode:
        raise LabError(f"nft -f - in {world.ns['gw']} failed: {done.stderr.strip()}")
    try:
        yield
    finally:
        world.run("gw", "nft", "delete", "table", "ip", NFT_TABLE)


def run_gw(bench: Bench) -> dict:
    """gw as the lab started it (raw external gateway): the iperf3 figures and the daemon's counters."""
    w = bench.world
    w.stop(w.process("bob"))  # client 2 is not on this path
    _check_path(w, "gw", "gateway")
    daemons = [r["pid"] for r in _gw_daemons(w)]
    figures = bench.measure(INTERNET_HOST, daemons)
    figures["status"] = status_summary(query(w.status_socket))
    return figures


def run_wireguard(bench: Bench) -> dict:
    """wireguard-go hub in the gateway namespace, peer in c1; the hub's kernel forwards and masquerades."""
    with masquerade(bench.world), wireguard(bench.world, {"c1": [INTERNET_NET]}) as procs:
        _check_path(bench.world, "wireguard-go")
        return bench.measure(INTERNET_HOST, [r["pid"] for r in procs])


def run_kernel(bench: Bench) -> dict:
    """c1 routes the internet via its uplink; the gateway namespace forwards and masquerades."""
    w = bench.world
    with masquerade(w):
        w.sysctl("gw", "net.ipv4.ip_forward=1")
        w.run("c1", "ip", "route", "add", INTERNET_NET, "via", GATEWAY_SIDE["c1"])
        try:
            _check_path(w, "kernel forwarding")
            return bench.measure(INTERNET_HOST, [])
        finally:
            w.run("c1", "ip", "route", "del", INTERNET_NET)
            w.sysctl("gw", "net.ipv4.ip_forward=0")


def measure_tcp(bench: Bench, daemons: list[int]) -> dict:
    """TCP up and down to the internet host, ``bench.runs`` of each alternated: medians and spreads of the
    rates, of the CPU ``daemons`` used per Gbit/s and of the retransmissions."""
    keys = ("tcp_up", "tcp_down", "cpu_s_per_gbit", "tcp_retransmits")
    samples: dict[str, list[float]] = {key: [] for key in keys}
    for _ in range(bench.runs):
        bench.tcp_both_ways(INTERNET_HOST, daemons, samples)
    return {k: stats(v) for k, v in samples.items()}


def run_gw_socket(bench: Bench) -> dict:
    """gw restarted in socket mode (the lab's gateway.toml edited by ``socket_config``) with alice alone:
    TCP up and down, the daemons' CPU, their counters."""
    w = bench.world
    for record in _gw_daemons(w):
        w.stop(record)
    config = w.dir / "gateway-socket.toml"
    config.write_text(socket_config(w.gateway_toml.read_text(), w.dir / "journal-socket"))
    gateway = w.start_gateway(config)
    alice = w.start_client("c1", "alice")
    w.vpn_address("c1")
    _check_path(w, "gw (socket mode)", "gateway")
    figures = measure_tcp(bench, [gateway["pid"], alice["pid"]])
    figures["status"] = status_summary(query(w.status_socket))
    return figures


def _command(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a command on the host (bounded); raises LabError if it fails."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # run() has killed it by its PID
        raise LabError(f"{' '.join(argv)}: no result in {COMMAND_TIMEOUT_S:g} s") from None
    if done.returncode:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done


@contextmanager
def anchor_namespace(world: LabWorld) -> Iterator[str]:
    """A fresh namespace ``gwlab-<tag>-anchor`` (role ANCHOR_ROLE, IPv6 off and ``lo`` up as in the lab's),
    yielded by path. It is in the lab's state before it is made, so that the lab's teardown (or ``gw lab
    --down``, after a crash) removes it too; it is removed on the way out."""
    name = f"gwlab-{world.tag}-{ANCHOR_ROLE}"
    if os.path.exists(f"/run/netns/{name}"):
        raise LabError(f"namespace {name} exists already: remove it (ip netns del {name})")
    world.ns[ANCHOR_ROLE] = name
    world.made.append(name)
    world._save()  # the lab's own state file, as LabWorld.build keeps it
    try:
        _command(["ip", "netns", "add", name])
        world.sysctl(ANCHOR_ROLE, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        _command(["ip", "-n", name, "link", "set", "lo", "up"])
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)
        if not os.path.exists(f"/run/netns/{name}"):  # else the lab's teardown tries again
            world.made.remove(name)
            world._save()
        world.ns.pop(ANCHOR_ROLE, None)


def anchor_argv(tool: str, netns: str) -> list[str]:
    """The command that attaches ``tool`` to the namespace at path ``netns``, in the foreground, with
    MTU ANCHOR_MTU, IPv4 only, no port forwarding, no DNS and no way to the namespace's loopback."""
    if tool == "slirp4netns":
        return ["slirp4netns", "--configure", f"--mtu={ANCHOR_MTU}", "--disable-host-loopback", "--disable-dns",
                "--netns-type=path", netns, "tap0"]  # fmt: skip
    # as root pasta drops to nobody unless --runas says otherwise, and nobody cannot join the namespace
    return ["pasta", "--foreground", "--quiet", "--ipv4-only", "--runas", "0", "--config-net", "--mtu",
            str(ANCHOR_MTU), "--tcp-ports", "none", "--udp-ports", "none", "--tcp-ns", "none", "--udp-ns", "none",
            "--no-map-gw", "--netns", netns]  # fmt: skip


def _attached(world: LabWorld, tool: str, record: dict) -> dict:
    """Wait until ``tool`` has given the anchor namespace a default route; its device, address and MTU.
    Raises LabError if it exits or does not in ANCHOR_UP_S."""
    ns = world.ns[ANCHOR_ROLE]
    deadline = time.monotonic() + ANCHOR_UP_S
    while True:
        if not world.alive(record):
            raise LabError(f"{tool} exited at start:\n{world.log_tail(tool)}")
        routes = json.loads(_command(["ip", "-n", ns, "-j", "-4", "route", "show", "default"]).stdout or "[]")
        if routes:
            break
        if time.monotonic() > deadline:
            log = world.log_tail(tool)
            raise LabError(f"{tool} set up no default route in {ns} in {ANCHOR_UP_S} s:\n{log}")
        time.sleep(0.05)
    device = routes[0]["dev"]
    link = json.loads(_command(["ip", "-n", ns, "-j", "-4", "addr", "show", "dev", device]).stdout)[0]
    addresses = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])]
    return {"device": device, "mtu": link["mtu"], "addresses": addresses, "gateway": routes[0].get("gateway")}


def run_anchor(bench: Bench, tool: str) -> dict:
    """``tool`` in the gateway namespace, attached to a fresh anchor namespace whose iperf3 client it
    carries to the internet host: TCP up and down, the tool's CPU; stopped by its PID on the way out."""
    w = bench.world
    with anchor_namespace(w) as netns:
        record = w.spawn_command("gw", tool, *anchor_argv(tool, netns))
        try:
            link = _attached(w, tool, record)
            try:
                figures = measure_tcp(bench, [record["pid"]])
            except LabError as e:
                raise LabError(f"{tool}: {e}\n{w.log_tail(tool)}") from None
        finally:
            w.stop(record)
    figures["interface"] = link
    return figures


def run_socket_systems(world: LabWorld, names: list[str], seconds: float, runs: int) -> dict[str, dict]:
    """gw in socket mode and the anchors, taken in turns: run r of each before run r+1 of any, so a
    machine whose speed drifts over the minutes (a shared host: this one's varied by 2x in an hour)
    moves all of them alike and their ratios hold. Each run's figures pooled into medians per system;
    what is not a figure (counters, the anchor's interface) is the last run's."""
    def one(name: str) -> dict:
        if name == "gw-socket":
            figures = run_gw_socket(Bench(world, seconds, 1, server_role="inet"))
            for record in _gw_daemons(world):  # the anchors run alone
                world.stop(record)
            return figures
        return run_anchor(Bench(world, seconds, 1, server_role="inet", client_role=ANCHOR_ROLE), name)

    pooled: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    last: dict[str, dict] = {name: {} for name in names}
    for _ in range(runs):
        for name in names:
            for key, value in one(name).items():
                if isinstance(value, dict) and "runs" in value:
                    pooled[name].setdefault(key, []).extend(value["runs"])
                else:
                    last[name][key] = value
    return {name: {**{k: stats(v) for k, v in pooled[name].items()}, **last[name]} for name in names}


def _flow_phase(world: LabWorld, spec: dict, timeout_s: float) -> dict:
    """Run the flow client in c1 (bounded, killed by its PID if it overruns); its JSON result."""
    argv = ["ip", "netns", "exec", world.ns["c1"], sys.executable, "-m", "bench.e2e", "--flow-client",
            json.dumps(spec)]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    except subprocess.TimeoutExpired:  # run() has killed it by its PID
        raise LabError(f"the flow client ({spec['phase']}) gave no result in {timeout_s:g} s") from None
    if done.returncode:
        raise LabError(f"the flow client ({spec['phase']}) failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_flows(world: LabWorld, mode: str, run: int, seconds: float, in_flight: int, samples: int) -> dict:
    """One measurement: a fresh gateway in audit ``mode`` with alice, the latency phase, the rate phase."""
    for record in _gw_daemons(world):
        world.stop(record)
    config = world.dir / f"gateway-{mode}-{run}.toml"
    config.write_text(
        gateway_config(world.gateway_toml.read_text(), world.dir / f"journal-{mode}-{run}", mode)
    )
    gateway = world.start_gateway(config)
    alice = world.start_client("c1", "alice")
    world.vpn_address("c1")
    _check_path(world, f"gw, audit = {mode}", "gateway")
    spec = {"dst": INTERNET_HOST, "port": ECHO_PORT, "first_port": FLOW_PORTS[0], "last_port": FLOW_PORTS[1],
            "seconds": seconds, "samples": samples, "in_flight": in_flight}  # fmt: skip
    lat = _flow_phase(world, spec | {"phase": "latency"}, seconds + 30)
    if "error" in lat:
        raise LabError(f"gw, audit = {mode}: {lat['error']}")
    watched = {
        "gateway": [gateway["pid"]],
        "vpn_client": [alice["pid"]],
        "echo": [world.process("internet")["pid"]],
    }
    before, t0 = {k: cpu_ticks(v) for k, v in watched.items()}, time.monotonic()
    rate = _flow_phase(world, spec | {"phase": "rate", "first_port": lat["next_port"]}, seconds + 30)
    wall_ticks = (time.monotonic() - t0) * os.sysconf("SC_CLK_TCK")
    share = {k: (cpu_ticks(v) - before[k]) / wall_ticks for k, v in watched.items()}
    status = status_summary(query(world.status_socket))
    return {"flows_per_s": rate["flows_per_s"], "answered": rate["answered"], "lost": rate["lost"] + lat["lost"],
            "send_errors": rate["send_errors"], "ports_ran_out": rate["ports_ran_out"], "rate_s": rate["seconds"],
            "new_median_ms": lat["new"]["median"], "new_p99_ms": lat["new"]["p99"], "new_count": lat["new"]["count"],
            "existing_median_ms": lat["existing"]["median"], "existing_p99_ms": lat["existing"]["p99"],
            "loaded_median_ms": rate["loaded"]["median"], "loaded_p99_ms": rate["loaded"]["p99"],
            "load_cpu_share": rate["cpu_share"], **{f"{k}_cpu_share": v for k, v in share.items()},
            "status": status}  # fmt: skip


def run_flows(world: LabWorld, seconds: float, runs: int, in_flight: int, samples: int,
              say: Callable[[str], None] = out) -> dict:  # fmt: skip
    """Both audit modes, alternated run by run so that a slow phase of the machine hits both alike."""
    per_mode: dict[str, list[dict]] = {mode: [] for mode in AUDIT_MODES}
    for run in range(runs):
        for mode in AUDIT_MODES:
            m = measure_flows(world, mode, run, seconds, in_flight, samples)
            per_mode[mode].append(m)
            say(f"  audit = {mode}, run {run + 1}: {m['flows_per_s']:,.0f} new flows/s answered ({m['answered']:,} "
                f"in {m['rate_s']:.1f} s{', every port used' if m['ports_ran_out'] else ''}, {m['lost']} lost), "
                f"first packet {m['new_median_ms']:.3f} ms (p99 {m['new_p99_ms']:.3f}), "
                f"existing flow {m['existing_median_ms']:.3f} ms; CPU: load {m['load_cpu_share']:.0%}, "
                f"gateway {m['gateway_cpu_share']:.0%}, gw client {m['vpn_client_cpu_share']:.0%}, "
                f"echo host {m['echo_cpu_share']:.0%}")  # fmt: skip
    for record in _gw_daemons(world):
        world.stop(record)
    summary = {}
    for mode, ms in per_mode.items():
        summary[mode] = {key: stats([m[key] for m in ms]) for key in (*FLOW_KEYS, "lost", *CPU_SHARES)}
        summary[mode]["ports_ran_out"] = any(m["ports_ran_out"] for m in ms)
        summary[mode]["send_errors"] = sum(m["send_errors"] for m in ms)
        summary[mode]["status"] = [m["status"] for m in ms]
    return summary


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the journal's fsync means little on tmpfs)."""
    best, kind, text = "", "?", str(path)
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fs = line.split()[:3]
        if (text == mount or text.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
            best, kind = mount, fs
    return kind


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the same way out as Ctrl-C: the lab comes down


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="each iperf3 run and flow phase (default 5)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per figure; the median is reported (default 3)"
    )
    parser.add_argument("--no-offloads", action="store_true", help="gw's client without TUN offloads")
    parser.add_argument("--only", choices=SYSTEMS, action="append", help="measure only these (repeatable)")
    parser.add_argument("--skip-wg", action="store_true", help="leave wireguard-go out")
    parser.add_argument("--no-flows", action="store_true", help="leave the new-flow measurements out")
    parser.add_argument("--no-anchors", action="store_true", help="leave slirp4netns and pasta out")
    parser.add_argument("--in-flight", type=int, default=64, help="new flows unanswered at once (default 64)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="first-packet latency samples per run, within --seconds (default 1000)")  # fmt: skip
    parser.add_argument("--json-only", action="store_true", help="print the JSON line alone")
    parser.add_argument("--flow-client", metavar="JSON", help=argparse.SUPPRESS)  # run inside c1 by the bench
    args = parser.parse_args(argv)
    if args.flow_client:
        emit_json(flow_client(json.loads(args.flow_client)))
        return 0
    say = (lambda text="": None) if args.json_only else out
    offloads = not args.no_offloads
    left_out = {s for s, out_ in (("wireguard-go", args.skip_wg), ("flows", args.no_flows)) if out_}
    left_out |= set(ANCHORS) if args.no_anchors else set()
    systems = [s for s in args.only or SYSTEMS if s not in left_out]
    needed = ["iperf3", "wireguard-go", "wg", "nft", *(a for a in ANCHORS if a in systems)]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        print(f"bench.e2e needs {', '.join(missing)}: just bench-deps, or apt-get install --no-install-recommends "
              f"{' '.join(PACKAGES[tool] for tool in missing)}"
              + (" (or --no-anchors)" if set(missing) & set(ANCHORS) else ""), file=sys.stderr)  # fmt: skip
        return 2
    world = LabWorld(f"e2e{os.getpid()}", offloads=offloads, external="raw")
    signal.signal(signal.SIGTERM, _terminate)
    results: dict[str, dict] = {}
    started = time.monotonic()
    try:
        say(f"load average before: {os.getloadavg()[0]:.2f}; {args.runs} runs of {args.seconds:g} s per figure; "
            f"lab {world.tag} in {world.dir} ({_filesystem(world.dir)})")  # fmt: skip
        world.build()
        if GW_SYSTEMS & set(systems):
            world.start()
        if "gw" in systems:
            say("measuring gw (raw external gateway) ...")
            results["gw"] = run_gw(Bench(world, args.seconds, args.runs, server_role="inet"))
        if "flows" in systems:
            say("measuring new flows through gw's NAT, audit fast and strict ...")
            results["flows"] = run_flows(world, args.seconds, args.runs, args.in_flight, args.samples, say)
        if GW_SYSTEMS & set(systems):
            for record in _gw_daemons(world):  # alone on the machine from here
                world.stop(record)
        socket_systems = [name for name in ("gw-socket", *ANCHORS) if name in systems]
        if socket_systems:
            say(f"measuring {', '.join(socket_systems)} in turns (anchors with MTU {ANCHOR_MTU}), TCP ...")
            results.update(run_socket_systems(world, socket_systems, args.seconds, args.runs))
        if "wireguard-go" in systems:
            say("measuring wireguard-go + kernel masquerade ...")
            results["wireguard-go"] = run_wireguard(Bench(world, args.seconds, args.runs, server_role="inet"))
        if "kernel" in systems:
            say("measuring kernel forwarding + masquerade ...")
            results["kernel"] = run_kernel(Bench(world, args.seconds, args.runs, server_role="inet"))
    except (LabError, StatusError) as e:
        print(f"bench.e2e: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench.e2e: interrupted; taking the lab down", file=sys.stderr)
        return 130
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # the teardown is bounded: let it finish
            signal.signal(sig, signal.SIG_IGN)
        left = world.down()
        if left:
            print(f"bench.e2e: could not remove {', '.join(left)}", file=sys.stderr)
    found = ratios(results)
    for line in report(results, found):
        say(line)
    ok = True
    for key in ("tcp_up", "tcp_down"):
        r = found.get(f"gw_over_wireguard_go_{key}")
        if r is not None:
            ok &= r >= TARGET_TCP_RATIO
            say(f"gw / wireguard-go, {key}: {r:.2f}x (target {TARGET_TCP_RATIO:g}x): "
                f"{'PASS' if r >= TARGET_TCP_RATIO else 'MISS'}")  # fmt: skip
    target = socket_target(found)
    if target:
        for check in target["checks"].values():
            say(f"gw socket / {check['anchor']}, {check['figure']}: {check['ratio']:.2f}x "
                f"(target {check['floor']:g}x): {'PASS' if check['met'] else 'MISS'}")  # fmt: skip
        ok &= target["met"]
        say(f"target {TARGET_SOCKET_LINE}: {'met' if target['met'] else 'not met'}")
    elif "gw-socket" in systems:
        say(f"target {TARGET_SOCKET_LINE}: not evaluated (needs gw-socket, slirp4netns and pasta)")
    for name, label in (("gw", "gw"), ("gw-socket", "gw socket")):
        for note in concerns(results.get(name, {})):
            say(f"note ({label}): {note}")
    say(f"took {time.monotonic() - started:.0f} s")
    emit_json({"offloads": offloads, "external": "raw", "seconds": args.seconds, "runs": args.runs,
               "in_flight": args.in_flight, "anchor_mtu": ANCHOR_MTU, "results": results,
               "socket_target": target, **found})  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
