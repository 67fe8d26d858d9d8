"""The lab's world: network namespaces, veth links, identities, configurations and real processes.

Theory of operation
-------------------
A lab is five network namespaces named ``gwlab-<tag>-<role>``: the gateway (``gw``), two clients
(``c1``, ``c2``), an on-path router (``rtr``) and an "internet" host (``inet``). Each client has its own
veth link to the gateway; the gateway reaches the internet through the router, whose link to the
internet host has a small MTU (1280), as the kernel-NAT vectors' world does::

    c1 uplink 192.0.2.2/30 ─ c1 192.0.2.1/30 ┐
                                              gw ext 198.51.100.2/24 ─ gw 198.51.100.254/24 rtr
    c2 uplink 192.0.2.6/30 ─ c2 192.0.2.5/30 ┘                                             │ inet 203.0.113.1/24
                                                                                             │ MTU 1280
                                              inet uplink 203.0.113.10/24 (+ .11, .80): DNS server for lab.example,
                                                            UDP/TCP echo, HTTP on www (.80)

The gateway host's default route goes through the router, as on any host. The gateway's public
address depends on its external mode (``external``): ``raw`` uses 198.51.100.1, which the gateway
namespace's kernel does not own (the gateway answers ARP for it itself); ``socket`` uses the host's
own 198.51.100.2.

Every link is made from inside the lab's namespaces (``ip -n``), so the host's own network is never
touched, and every packet the lab makes stays in them. The processes are the real ones: ``gw serve``
in ``gw``, ``gw connect`` in each client, ``gw.lab.services`` in ``inet`` (DNS) and in each client
(UDP and TCP echo on port 7). They are started in their own session (Ctrl-C in the terminal reaches
the lab, which stops them itself) and ended by their own PID, checked against the start time the
kernel recorded for it so that a reused PID is never signalled.

The lab's state (namespaces, processes, addresses) is written to ``<dir>/lab.json`` before anything
is made, and updated as things are made, so that ``down`` can remove a lab that was kept
(``gw lab --keep``), or that a crash left half made.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gw.errors import GwError

LAB_ROOT = Path("/run/gw-lab")  # where kept labs are found again by tag
ROLES = ("gw", "c1", "c2", "rtr", "inet")
CLIENTS = {"c1": "alice", "c2": "bob"}
GATEWAY_SIDE = {"c1": "192.0.2.1", "c2": "192.0.2.5"}  # the gateway's end of each client link, /30
CLIENT_SIDE = {"c1": "192.0.2.2", "c2": "192.0.2.6"}
GATEWAY_HOST = "198.51.100.2"  # the gateway host's own address on the internet link (its DNS proxy's source)
RAW_PUBLIC = "198.51.100.1"  # the raw external gateway's public address: the host's kernel does not own it
ROUTER = "198.51.100.254"  # the gateway's next hop: the on-path router
ROUTER_FAR = "203.0.113.1"  # the router's side of the small-MTU link
SMALL_MTU = 1280  # the router-to-internet link: PMTU discovery must work through the gateway
INTERNET_HOST = "203.0.113.10"  # the internet host: DNS server, echo servers
INTERNET_SECOND = "203.0.113.11"  # its second address (endpoint-independence checks)
INTERNET_WWW = "203.0.113.80"  # www.lab.example
TUNNEL_PORT = 8443
ECHO_PORT = 7
HTTP_PORT = 80  # www.lab.example: GET /bytes/N (gw.lab.services)
COMMAND_TIMEOUT_S = 10  # one ip command
PROBE_TIMEOUT_S = 30  # one probe: its own waits are shorter
STOP_WAIT_S = 5.0  # SIGTERM, then SIGKILL after this long


class LabError(GwError):
    """The lab could not be built or run."""


def check_host() -> None:
    """Raise LabError unless this host can run a lab: root, /dev/net/tun, the ip command."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and TUN devices)")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    if shutil.which("ip") is None:
        missing.append("the ip command (apt-get install iproute2)")
    if missing:
        raise LabError(f"gw lab needs {', '.join(missing)}")


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])


class LabWorld:
    """One lab: ``build()``, ``start()``, then probes; ``down()`` removes everything it made."""

    def __init__(self, tag: str = "lab", directory: Path | None = None, *, offloads: bool = True,
                 external: str = "socket") -> None:  # fmt: skip
        if not tag or len(tag) > 20 or not all(c.isalnum() or c == "-" for c in tag):
            raise LabError(f"lab tag {tag!r}: use 1-20 letters, digits or '-'")
        self.tag = tag
        self.dir = Path(directory) if directory else LAB_ROOT / tag
        self.offloads = offloads
        if external not in ("raw", "socket"):
            raise LabError(f"external mode {external!r}: use raw or socket")
        self.external = external  # the gateway's [external] mode
        # the NAT's public address: its own on the link (raw), or the host's (socket)
        self.public = RAW_PUBLIC if external == "raw" else GATEWAY_HOST
        self.ns = {role: f"gwlab-{tag}-{role}" for role in ROLES}
        self.made: list[str] = []  # namespaces made, in order
        self.procs: list[dict] = []  # role, name, pid, start, log, argv
        self._popen: dict[int, subprocess.Popen] = {}
        self.identities: dict[str, object] = {}

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.dir / "lab.json"

    def _save(self) -> None:
        state = {"tag": self.tag, "dir": str(self.dir), "namespaces": self.made, "processes": self.procs}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_path)

    @classmethod
    def load(cls, tag: str, directory: Path | None = None) -> LabWorld:
        """The kept lab ``tag`` as its state file describes it. Raises LabError if there is none."""
        world = cls(tag, directory)
        try:
            state = json.loads(world.state_path.read_text())
        except (OSError, ValueError) as e:
            raise LabError(f"no lab {tag!r} to take down ({world.state_path}: {e})") from None
        world.made, world.procs = state["namespaces"], state["processes"]
        return world

    # ------------------------------------------------------------------ building
    def build(self) -> None:
        """Namespaces, links, addresses, identities and configuration files. Raises LabError."""
        check_host()
        if self.state_path.exists():
            raise LabError(f"a lab {self.tag!r} is up already: take it down with gw lab --down --tag {self.tag}")
        taken = set(self._netns_names()) & set(self.ns.values())
        if taken:
            raise LabError(f"namespaces {sorted(taken)} exist already: remove them (ip netns del NAME)")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._save()
        for role in ROLES:
            name = self.ns[role]
            self.made.append(name)
            self._save()
            self._ip("netns", "add", name)
            self.sysctl(role, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
            self._ip("-n", name, "link", "set", "lo", "up")
        for client in ("c1", "c2"):
            self._link("gw", client, GATEWAY_SIDE[client], client, "uplink", CLIENT_SIDE[client], 30)
        self._link("gw", "ext", GATEWAY_HOST, "rtr", "gw", ROUTER, 24)
        self._link("rtr", "inet", ROUTER_FAR, "inet", "uplink", INTERNET_HOST, 24, mtu=SMALL_MTU)
        for extra in (INTERNET_SECOND, INTERNET_WWW):
            self._ip("-n", self.ns["inet"], "addr", "add", f"{extra}/24", "dev", "uplink")
        self.sysctl("rtr", "net.ipv4.ip_forward=1")
        # ICMP datagram sockets for the socket external gateway's ping (this namespace only)
        self.sysctl("gw", "net.ipv4.ping_group_range=0 2147483647")
        self._ip("-n", self.ns["gw"], "route", "add", "default", "via", ROUTER)
        self._ip("-n", self.ns["inet"], "route", "add", "default", "via", ROUTER_FAR)
        self._write_configs()

    def _link(self, a: str, a_dev: str, a_addr: str, b: str, b_dev: str, b_addr: str, prefix: int,
              mtu: int = 1500) -> None:  # fmt: skip
        self._ip("-n", self.ns[a], "link", "add", a_dev, "type", "veth", "peer", "name", b_dev,
                 "netns", self.ns[b])  # fmt: skip
        for role, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
            self._ip("-n", self.ns[role], "addr", "add", f"{addr}/{prefix}", "dev", dev)
            self._ip("-n", self.ns[role], "link", "set", dev, "mtu", str(mtu), "up")

    def _write_configs(self) -> None:
        from gw.identity import new_identity

        keys = self.dir / "keys"
        for name in ("gateway", *CLIENTS.values()):
            self.identities[name] = new_identity(name, keys)
        gw_id = self.identities["gateway"]
        clients = "".join(
            f'[[clients]]\nname = "{n}"\nfingerprint = "{self.identities[n].fingerprint}"\n'
            for n in CLIENTS.values()
        )
        self.gateway_toml.write_text(
            f"# gw lab {self.tag}: the gateway\n"
            f'[tunnel]\nlisten = "0.0.0.0:{TUNNEL_PORT}"\n'
            f'certificate = "{gw_id.cert_path}"\nkey = "{gw_id.key_path}"\n'
            f"keepalive_s = 2\ndead_after_s = 8\n"
            f'[journal]\ndirectory = "{self.journal}"\n'
            f'[dns]\nupstreams = ["{INTERNET_HOST}:53"]\n'
            f'[external]\nmode = "{self.external}"\n'
            + ('interface = "ext"\n' if self.external == "raw" else "")
            + f'[nat]\nexternal_addresses = ["{self.public}"]\n'
            f'[status]\nsocket = "{self.status_socket}"\n' + clients
        )
        for role, name in CLIENTS.items():
            me = self.identities[name]
            self.client_toml(name).write_text(
                f"# gw lab {self.tag}: {name}\n"
                f"offloads = {'true' if self.offloads else 'false'}\n"
                'routes = ["0.0.0.0/0"]\n'  # the internet through the VPN
                f'[gateway]\nendpoint = "{GATEWAY_SIDE[role]}:{TUNNEL_PORT}"\n'
                f'fingerprint = "{gw_id.fingerprint}"\n'
                f'[identity]\ncertificate = "{me.cert_path}"\nkey = "{me.key_path}"\n'
            )

    @property
    def gateway_toml(self) -> Path:
        return self.dir / "gateway.toml"

    @property
    def journal(self) -> Path:
        return self.dir / "journal"

    @property
    def status_socket(self) -> Path:
        return self.dir / "gw.sock"

    def client_toml(self, name: str) -> Path:
        return self.dir / f"{name}.toml"

    # ------------------------------------------------------------------ processes
    def start(self, timeout_s: float = 15.0) -> dict[str, str]:
        """Servers, the gateway and both clients; returns each client's VPN address once it has one."""
        self.start_servers()
        self.start_gateway()
        return self.start_clients(timeout_s)

    def start_servers(self) -> None:
        """The internet host's DNS, echo and HTTP servers, and each client's echo servers."""
        self.spawn("inet", "dns", "-m", "gw.lab.services", "--dns", f"{INTERNET_HOST}:53")
        echoes = [f"--{kind}-echo={addr}:{ECHO_PORT}" for kind in ("udp", "tcp")
                  for addr in (INTERNET_HOST, INTERNET_SECOND)]  # fmt: skip
        self.spawn("inet", "internet", "-m", "gw.lab.services", *echoes, "--http", f"{INTERNET_WWW}:{HTTP_PORT}")
        for role in CLIENTS:
            self.spawn(role, f"echo-{role}", "-m", "gw.lab.services",
                       "--udp-echo", f"0.0.0.0:{ECHO_PORT}", "--tcp-echo", f"0.0.0.0:{ECHO_PORT}")  # fmt: skip

    def start_clients(self, timeout_s: float = 15.0) -> dict[str, str]:
        """Both clients; returns each one's VPN address once it has one."""
        for role, name in CLIENTS.items():
            self.start_client(role, name)
        return {name: self.vpn_address(role, timeout_s) for role, name in CLIENTS.items()}

    def start_gateway(self, config: Path | None = None, timeout_s: float = 15.0, *python_args: str) -> dict:
        """``gw serve`` in the gateway namespace (or ``python PYTHON_ARGS``), waited for until its status
        socket answers."""
        self.status_socket.unlink(missing_ok=True)
        argv = python_args or ("-m", "gw", "serve", "-c", str(config or self.gateway_toml))
        proc = self.spawn("gw", "gateway", *argv)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive(proc):
                raise LabError(f"the gateway exited at start:\n{self.log_tail('gateway')}")
            if self.status_socket.exists():
                return proc
            time.sleep(0.05)
        raise LabError(f"the gateway did not come up in {timeout_s:g} s:\n{self.log_tail('gateway')}")

    def start_client(self, role: str, name: str, config: Path | None = None) -> dict:
        """``gw connect`` in a client namespace (not waited for: see ``vpn_address``)."""
        return self.spawn(role, name, "-m", "gw", "connect", "-c", str(config or self.client_toml(name)))

    def spawn(self, role: str, name: str, *python_args: str) -> dict:
        """Start ``python ARGS`` in namespace ``role``, its output in ``<dir>/<name>.log``; returns its record."""
        return self.spawn_command(role, name, sys.executable, *python_args)

    def spawn_command(self, role: str, name: str, *command: str, env: dict[str, str] | None = None) -> dict:
        """Start ``command`` in namespace ``role`` (see ``spawn``), with ``env`` added to the environment."""
        log = self.dir / f"{name}.log"
        argv = ["ip", "netns", "exec", self.ns[role], *command]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)  # fmt: skip
        record = {"role": role, "name": name, "pid": proc.pid, "start": _start_time(proc.pid),
                  "log": str(log), "argv": argv}  # fmt: skip
        self._popen[proc.pid] = proc
        self.procs.append(record)
        self._save()
        return record

    def alive(self, record: dict) -> bool:
        """Whether the process is still the one we started (same PID, same start time) and running."""
        proc = self._popen.get(record["pid"])
        if proc is not None:
            return proc.poll() is None
        return record["start"] is not None and _start_time(record["pid"]) == record["start"]

    def stop(self, record: dict, sig: int = signal.SIGTERM) -> int | None:
        """End one process by its own PID: ``sig``, then SIGKILL after STOP_WAIT_S; its exit status if ours."""
        if self.alive(record):
            os.kill(record["pid"], sig)
            deadline = time.monotonic() + STOP_WAIT_S
            while self.alive(record) and time.monotonic() < deadline:
                time.sleep(0.02)
            if self.alive(record):
                os.kill(record["pid"], signal.SIGKILL)
                deadline = time.monotonic() + STOP_WAIT_S
                while self.alive(record) and time.monotonic() < deadline:
                    time.sleep(0.02)
        proc = self._popen.get(record["pid"])
        return proc.poll() if proc is not None else None

    def process(self, name: str) -> dict:
        """The newest process record named ``name``."""
        for record in reversed(self.procs):
            if record["name"] == name:
                return record
        raise KeyError(name)

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ inside the namespaces
    def run(self, role: str, *argv: str, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a command in namespace ``role``; raises LabError if it fails."""
        return self._run(["ip", "netns", "exec", self.ns[role], *argv], timeout)

    def sysctl(self, role: str, *settings: str) -> None:
        self.run(role, "sysctl", "-q", "-w", *settings)

    def probe(self, role: str, name: str, *args: object, timeout: float = PROBE_TIMEOUT_S) -> dict:
        """Run ``gw.lab.probes.<name>(*args)`` in namespace ``role``; its JSON result."""
        out = self.run(role, sys.executable, "-m", "gw.lab.probes", name, json.dumps(args), timeout=timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def vpn_address(self, role: str, timeout_s: float = 15.0) -> str:
        """The VPN address of the client in ``role``, waiting until its TUN has one."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(["ip", "-n", self.ns[role], "-j", "-4", "addr", "show", "dev", "gw0"],
                                 capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)  # fmt: skip
            if out.returncode == 0 and out.stdout.strip():
                for link in json.loads(out.stdout):
                    for a in link.get("addr_info", []):
                        return a["local"]
            time.sleep(0.1)
        name = CLIENTS.get(role, role)
        raise LabError(f"{name} got no VPN address in {timeout_s:g} s:\n{self.log_tail(name)}")

    def _ip(self, *argv: str) -> None:
        self._run(["ip", *argv], COMMAND_TIMEOUT_S)

    @staticmethod
    def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:  # run() has killed the child by its PID
            raise LabError(f"{' '.join(argv)}: no result in {timeout:g} s") from None
        if out.returncode:
            raise LabError(f"{' '.join(argv)} failed ({out.returncode}): {(out.stderr or out.stdout).strip()}")
        return out

    @staticmethod
    def _netns_names() -> list[str]:
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    # ------------------------------------------------------------------ description and teardown
    def describe(self) -> dict:
        """Everything an operator needs to look around a kept lab, as JSON-ready data."""
        links = {
            "c1": [{"device": "uplink", "address": f"{CLIENT_SIDE['c1']}/30"}, {"device": "gw0", "vpn": True}],
            "c2": [{"device": "uplink", "address": f"{CLIENT_SIDE['c2']}/30"}, {"device": "gw0", "vpn": True}],
            "gw": [{"device": "c1", "address": f"{GATEWAY_SIDE['c1']}/30"},
                   {"device": "c2", "address": f"{GATEWAY_SIDE['c2']}/30"},
                   {"device": "ext", "address": f"{GATEWAY_HOST}/24"},
                   {"device": "gw-host", "address": "10.66.77.1/24"}],
            "rtr": [{"device": "gw", "address": f"{ROUTER}/24"}, {"device": "inet", "address": f"{ROUTER_FAR}/24"}],
            "inet": [{"device": "uplink", "address": f"{INTERNET_HOST}/24"}],
        }  # fmt: skip
        return {
            "tag": self.tag,
            "directory": str(self.dir),
            "namespaces": {
                role: {
                    "name": self.ns[role],
                    "devices": self._devices(role) or links[role],
                    "enter": f"ip netns exec {self.ns[role]} bash",
                }
                for role in ROLES
            },
            "processes": [{k: r[k] for k in ("role", "name", "pid", "log")} for r in self.procs if self.alive(r)],
            "gateway": {"config": str(self.gateway_toml), "journal": str(self.journal),
                        "status": f"gw status --socket {self.status_socket}",
                        "tunnel": [f"{GATEWAY_SIDE[r]}:{TUNNEL_PORT}" for r in CLIENTS]},  # fmt: skip
            "external": {"namespace": self.ns["gw"], "interface": "ext", "mode": self.external,
                         "public_addresses": [self.public], "host_address": GATEWAY_HOST,
                         "next_hop": ROUTER},  # fmt: skip
            "router": {"namespace": self.ns["rtr"], "addresses": [ROUTER, ROUTER_FAR],
                       "small_mtu_link": {"device": "inet", "mtu": SMALL_MTU}},  # fmt: skip
            "internet": {"namespace": self.ns["inet"], "interface": "uplink", "address": INTERNET_HOST,
                         "addresses": [INTERNET_HOST, INTERNET_SECOND, INTERNET_WWW],
                         "dns": f"{INTERNET_HOST}:53", "zone": "lab.example",
                         "http": f"http://{INTERNET_WWW}:{HTTP_PORT}/bytes/N"},  # fmt: skip
            "clients": {name: {"namespace": self.ns[role], "config": str(self.client_toml(name))}
                        for role, name in CLIENTS.items()},  # fmt: skip
            "down": f"gw lab --down --tag {self.tag}",
        }

    def _devices(self, role: str) -> list[dict]:
        out = subprocess.run(["ip", "-n", self.ns[role], "-j", "-4", "addr", "show"], capture_output=True,
                             text=True, timeout=COMMAND_TIMEOUT_S)  # fmt: skip
        if out.returncode:
            return []
        return [
            {"device": link["ifname"], "addresses": [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]}
            for link in json.loads(out.stdout)
            if link["ifname"] != "lo"
        ]

    def down(self, remove_dir: bool = True) -> list[str]:
        """Stop every process by its PID, delete every namespace made; returns what could not be removed."""
        left = []
        for record in reversed(self.procs):
            try:
                self.stop(record)
            except OSError as e:
                left.append(f"process {record['name']} ({record['pid']}): {e}")
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=COMMAND_TIMEOUT_S)
            if os.path.exists(f"/run/netns/{name}"):
                left.append(f"namespace {name}")
        self.made, self.procs = [], []
        if remove_dir and not left:
            shutil.rmtree(self.dir, ignore_errors=True)
        elif self.dir.exists():
            self._save()
        return left
