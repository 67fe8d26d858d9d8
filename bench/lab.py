"""What the benchmarks in the lab's namespaces share: iperf3 runs and their figures, a wireguard-go hub.

``Bench`` runs iperf3 with its client in ``c1`` (or another role the caller has added to the lab, as
``bench.e2e`` does for slirp4netns and pasta) and its server in another namespace of a ``LabWorld``,
each run bounded by its length and killed by its PID if it overruns, and turns ``--runs`` runs into
medians with their spread (``stats``). The JSON readers (``tcp_mbit``, ``udp_received_pps``,
``retransmits``) are pure, so the unit tests check them on iperf3's own output without a network.
``wireguard`` brings up wireguard-go (Debian's package) as a hub in the gateway namespace with one peer
per client, the hub's kernel forwarding, and takes it down again. Used by ``bench.tunnel`` (client to
client) and ``bench.e2e`` (client to the internet host).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gw.lab.world import GATEWAY_SIDE, LabError, LabWorld

IPERF_PORT = 5201
IPERF_GRACE_S = 20  # an iperf3 run may take this much longer than its -t (connect, the final exchange)
WG_PORT = 51820
WG_NET = {"gw": "10.99.0.1", "c1": "10.99.0.2", "c2": "10.99.0.3"}  # the hub and its peers, a /24
WG_MTU = 1420  # wireguard-go's default: 1500 minus its 80 bytes of IPv6 + UDP + WireGuard headers
# the kernel module would be faster still, but the benchmarks' peer is the user-space one
WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
WG_UP_S = 10  # wireguard-go makes its device in well under a second


def cpu_ticks(pids: list[int]) -> int:
    """utime + stime of these processes and their threads, in clock ticks."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def host_cpu() -> tuple[int, int, int]:
    """Since boot, over all CPUs, in clock ticks: time busy (neither idle, waiting on I/O nor stolen by
    the hypervisor), time stolen, and all time (``/proc/stat``)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, iowait, steal = ticks[3], ticks[4], ticks[7]
    return sum(ticks) - idle - iowait - steal, steal, sum(ticks)


def stats(values: list[float]) -> dict:
    """Median, min and max of the runs, and the runs themselves."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def fmt(s: dict, unit: str, digits: int = 0) -> str:
    """A ``stats`` dict as 'median unit (min-max)'."""
    unit = f" {unit}" if unit else ""
    return f"{s['median']:,.{digits}f}{unit} ({s['min']:,.{digits}f}-{s['max']:,.{digits}f})"


def check_iperf(result: dict, what: str) -> dict:
    """iperf3's JSON as it is, or LabError with iperf3's own error (or ``what`` it lacks)."""
    if "error" in result or "end" not in result:
        raise LabError(f"iperf3 {what}: {result.get('error', 'no result')}")
    return result


def tcp_mbit(result: dict) -> float:
    """A TCP run's rate at the receiver, in Mbit/s."""
    return result["end"]["sum_received"]["bits_per_second"] / 1e6


def retransmits(result: dict) -> int:
    """The sender's TCP retransmissions in a run (0 when iperf3 could not read them)."""
    return result["end"]["sum_sent"].get("retransmits", 0)


def udp_received_pps(result: dict) -> float:
    """A UDP run's datagrams per second that reached the server (sent less those the server saw lost)."""
    s = result["end"]["sum"]
    return (s["packets"] - s["lost_packets"]) / s["seconds"] if s["seconds"] else 0.0


class Bench:
    """iperf3 between ``client_role`` and ``server_role`` in one lab: ``runs`` runs of ``seconds`` per figure."""

    def __init__(self, world: LabWorld, seconds: float, runs: int, server_role: str = "c2",
                 client_role: str = "c1") -> None:  # fmt: skip
        self.world, self.seconds, self.runs, self.server_role = world, seconds, runs, server_role
        self.client_role = client_role
        self.tick = os.sysconf("SC_CLK_TCK")

    def iperf(self, server_ip: str, *args: str, daemons: list[int], server_role: str | None = None) -> dict:
        """One iperf3 run, client in ``client_role``, server in ``server_role``; its JSON, plus the daemons' CPU
        seconds."""
        w = self.world
        role = server_role or self.server_role
        server = subprocess.Popen(["ip", "netns", "exec", w.ns[role], "iperf3", "-s", "-1", "-B", server_ip,
                                   "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            time.sleep(0.3)
            before, host_before = cpu_ticks(daemons), host_cpu()
            argv = ["ip", "netns", "exec", w.ns[self.client_role], "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
                    "-J", "-t", str(self.seconds), *args]  # fmt: skip
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=self.seconds + IPERF_GRACE_S
                )
            except subprocess.TimeoutExpired:  # run() has killed the client by its PID
                raise LabError(f"iperf3 {' '.join(args)} to {server_ip}: no result in "
                               f"{self.seconds + IPERF_GRACE_S:g} s") from None  # fmt: skip
            cpu_s = (cpu_ticks(daemons) - before) / self.tick
            busy, steal, total = (b - a for a, b in zip(host_before, host_cpu()))
        finally:
            if server.poll() is None:
                server.kill()  # by its own PID
            server.wait(5)
        try:
            result = json.loads(done.stdout or "{}")
        except ValueError:
            result = {}
        if "end" not in result:
            result.setdefault("error", done.stderr.strip() or "no result")
        check_iperf(result, f"{' '.join(args)} to {server_ip}")
        result["daemon_cpu_s"] = cpu_s
        result["host_cpu_s"] = busy / self.tick
        result["steal_share"] = steal / total if total else 0.0
        return result

    def tcp_both_ways(self, server_ip: str, daemons: list[int], samples: dict[str, list[float]]) -> None:
        """One TCP run up and one down (``-R``): their rates, retransmissions and the daemons' CPU per
        Gbit/s appended to ``samples`` (keys tcp_up, tcp_down, tcp_retransmits, cpu_s_per_gbit), and
        the whole host's CPU per Gbit/s each way (host_s_per_gbit_up, host_s_per_gbit_down: every
        process and the kernel, the iperf3 ends included) and the share of time stolen (steal_share)."""
        for key, args in (("tcp_up", ()), ("tcp_down", ("-R",))):
            r = self.iperf(server_ip, *args, daemons=daemons)
            samples[key].append(tcp_mbit(r))
            samples["tcp_retransmits"].append(retransmits(r))
            gbit = tcp_mbit(r) * self.seconds / 1e3
            samples["cpu_s_per_gbit"].append(r["daemon_cpu_s"] / gbit if gbit else float("nan"))
            samples.setdefault(f"host_s_per_gbit_{key[4:]}", []).append(
                r["host_cpu_s"] / gbit if gbit else float("nan"))
            samples.setdefault("steal_share", []).append(r["steal_share"])

    def measure(self, server_ip: str, daemons: list[int]) -> dict:
        """TCP up and down, UDP 64 B, RTT: medians and spreads over the runs."""
        samples: dict[str, list[float]] = {"tcp_up": [], "tcp_down": [], "udp64_pps": [], "cpu_s_per_gbit": [],
                                           "tcp_retransmits": []}  # fmt: skip
        for _ in range(self.runs):
            self.tcp_both_ways(server_ip, daemons, samples)
            r = self.iperf(server_ip, "-u", "-l", "64", "-b", "0", daemons=daemons)
            samples["udp64_pps"].append(udp_received_pps(r))
        ping = self.world.probe(self.client_role, "ping", server_ip, 20)
        figures = {k: stats(v) for k, v in samples.items()}
        figures["rtt_ms"] = stats(ping.get("rtt_ms") or [float("nan")])
        return figures

    def measure_to_gateway(self, gateway_ip: str, daemons: list[int]) -> dict:
        """TCP up and down between client 1 and the gateway host itself (one tunnel, not two)."""
        samples: dict[str, list[float]] = {"gateway_tcp_up": [], "gateway_tcp_down": []}
        for _ in range(self.runs):
            for key, args in (("gateway_tcp_up", ()), ("gateway_tcp_down", ("-R",))):
                r = self.iperf(gateway_ip, *args, daemons=daemons, server_role="gw")
                samples[key].append(tcp_mbit(r))
        return {k: stats(v) for k, v in samples.items()}


@contextmanager
def wireguard(world: LabWorld, clients: dict[str, list[str]]) -> Iterator[list[dict]]:
    """wireguard-go: a hub ``wg-gw`` in the gateway namespace (its kernel forwarding) and ``wg-<role>`` in
    each client role, each client routing ``clients[role]`` (beyond the hub's 10.99.0.0/24) through
    it. Yields the daemons' process records; stops them by PID and turns forwarding off on the way out.
    """
    w = world
    keys = Path(tempfile.mkdtemp(prefix="wg-", dir=w.dir))
    roles = ("gw", *clients)
    pub = {}
    for role in roles:
        private = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout
        (keys / role).write_text(private)
        (keys / role).chmod(0o600)
        pub[role] = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                                   check=True).stdout.strip()  # fmt: skip
    procs = []
    try:
        for role in roles:
            # each device has its own name: the control sockets in /var/run/wireguard are shared
            procs.append(
                w.spawn_command(role, f"wireguard-{role}", "wireguard-go", "-f", f"wg-{role}", env=WG_ENV)
            )
        deadline = time.monotonic() + WG_UP_S
        for role in roles:
            while subprocess.run(["ip", "-n", w.ns[role], "link", "show", f"wg-{role}"],
                                 capture_output=True).returncode:  # fmt: skip
                if time.monotonic() > deadline:
                    raise LabError(f"wireguard-go made no wg-{role}:\n{w.log_tail(f'wireguard-{role}')}")
                time.sleep(0.05)
        peers = [arg for role in clients for arg in ("peer", pub[role], "allowed-ips", f"{WG_NET[role]}/32")]
        w.run(
            "gw", "wg", "set", "wg-gw", "private-key", str(keys / "gw"), "listen-port", str(WG_PORT), *peers
        )
        for role, routes in clients.items():
            w.run(role, "wg", "set", f"wg-{role}", "private-key", str(keys / role), "peer", pub["gw"],
                  "allowed-ips", ",".join(["10.99.0.0/24", *routes]), "endpoint", f"{GATEWAY_SIDE[role]}:{WG_PORT}",
                  "persistent-keepalive", "25")  # fmt: skip
        for role in roles:
            w.run(role, "ip", "addr", "add", f"{WG_NET[role]}/24", "dev", f"wg-{role}")
            w.run(role, "ip", "link", "set", f"wg-{role}", "mtu", str(WG_MTU), "up")
        w.sysctl("gw", "net.ipv4.ip_forward=1")
        for role, routes in clients.items():  # each client's handshake with the hub, before measuring
            if w.probe(role, "ping", WG_NET["gw"], 3).get("received") != 3:
                raise LabError(f"wireguard-go: {role} cannot ping the hub")
            for prefix in routes:  # they go when the device goes
                w.run(role, "ip", "route", "add", prefix, "dev", f"wg-{role}")
        yield procs
    finally:
        for record in procs:
            w.stop(record)
        w.sysctl("gw", "net.ipv4.ip_forward=0")
        shutil.rmtree(keys, ignore_errors=True)
