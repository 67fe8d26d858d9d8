"""Operator configuration: TOML text -> frozen msgspec Structs, with every check on operator input.

Each section is a Struct with defaults; ``parse`` decodes a whole file and reports the first mistake as
a ``ConfigError`` naming the file, the key, the value and the fix. Times are seconds in the file
(``*_s``) and are converted to integer nanoseconds once, by the cores that use them.
"""

from __future__ import annotations

import re
import tomllib
from typing import Literal, get_args

import msgspec

from gw import inet
from gw.errors import ConfigError
from gw.external.link import parse_mac

Filtering = Literal["endpoint-independent", "address-dependent", "address-and-port-dependent"]

# Defaults, with their reasons
UDP_TIMEOUT_S = 300  # RFC 4787 REQ-5: at least 2 min, 5 min recommended
TCP_ESTABLISHED_TIMEOUT_S = 7440  # RFC 5382 REQ-5: at least 2 h 4 min
TCP_TRANSITORY_TIMEOUT_S = 240  # RFC 5382 REQ-5 / RFC 7857 2.2: at least 4 min
ICMP_TIMEOUT_S = 60  # RFC 5508 REQ-1: at least 60 s for ICMP queries
PORT_REUSE_DELAY_S = 120  # RFC 6056 / 7857: let a freed port rest before handing it to someone else
MAX_MAPPINGS_PER_CLIENT = 4096  # RFC 6888 REQ-4 wants a default limit; 4096 covers a busy browser and P2P
TCP_MSS = 1360  # a 1400-byte tunnel MTU minus 40 bytes of IPv4 + TCP headers
FRAGMENT_TIMEOUT_S = 30  # RFC 791 suggests 15 s for reassembly; Linux uses 30 s
FRAGMENT_MAX_BYTES = 4 << 20  # bound memory held for out-of-order fragments, whole gateway
FRAGMENT_MAX_DATAGRAMS = 4096  # bound the number of datagrams tracked at once
# one source (a client outbound, a remote host inbound) may take a sixteenth of the fragment budget, so a
# single host sending lone fragments cannot starve everyone else's reassembly-free forwarding
FRAGMENT_MAX_BYTES_PER_SOURCE = FRAGMENT_MAX_BYTES // 16
FRAGMENT_MAX_DATAGRAMS_PER_SOURCE = FRAGMENT_MAX_DATAGRAMS // 16
# RFC 4787 REQ-3 keeps ports below 1024 below 1024; a share per client keeps one client from taking all
# 1023 of them (then its low source ports map into port_range, like any other)
LOW_PORTS_PER_CLIENT = 16
# remotes remembered for filtering, per client (RFC 4787 REQ-8 state): about 100 B each, so 16384 bound one
# client's filter memory near 2 MiB; past it new remotes are not admitted inbound (counted)
MAX_REMOTES_PER_CLIENT = 16384


class NatConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[nat]`` section."""

    external_addresses: list[str] = msgspec.field(default_factory=lambda: ["198.51.100.1"])
    port_range: str = "1024-65535"
    # Default address-and-port-dependent: RFC 4787 REQ-8 recommends endpoint-independent filtering for
    # application transparency but allows this, the strictest mode, when security matters more; a gateway
    # for many clients that must not be reachable by strangers starts strict. Operators running P2P-heavy
    # clients switch to "endpoint-independent".
    filtering: Filtering = "address-and-port-dependent"
    udp_timeout_s: int = UDP_TIMEOUT_S
    tcp_established_timeout_s: int = TCP_ESTABLISHED_TIMEOUT_S
    tcp_transitory_timeout_s: int = TCP_TRANSITORY_TIMEOUT_S
    icmp_timeout_s: int = ICMP_TIMEOUT_S
    port_reuse_delay_s: int = PORT_REUSE_DELAY_S
    max_mappings_per_client: int = MAX_MAPPINGS_PER_CLIENT
    tcp_mss: int = TCP_MSS  # 0 turns clamping off
    log_destination: bool = False  # record the first remote endpoint in MappingCreated
    fragment_timeout_s: int = FRAGMENT_TIMEOUT_S
    fragment_max_bytes: int = FRAGMENT_MAX_BYTES
    fragment_max_datagrams: int = FRAGMENT_MAX_DATAGRAMS
    fragment_max_bytes_per_source: int = FRAGMENT_MAX_BYTES_PER_SOURCE
    fragment_max_datagrams_per_source: int = FRAGMENT_MAX_DATAGRAMS_PER_SOURCE
    low_ports_per_client: int = LOW_PORTS_PER_CLIENT
    max_remotes_per_client: int = MAX_REMOTES_PER_CLIENT

    def port_bounds(self) -> tuple[int, int]:
        """(first, last) of ``port_range``; call after ``check``."""
        first, _, last = self.port_range.partition("-")
        return int(first), int(last)

    def external_ints(self) -> list[int]:
        """The pool as ints."""
        return [inet.aton(a) for a in self.external_addresses]


# RFC 6890 special-purpose ranges a VPN client must not reach through the gateway.
DEFAULT_DENY = [
    "0.0.0.0/8",  # "this network"
    "127.0.0.0/8",  # the gateway's own loopback
    "169.254.0.0/16",  # link-local: cloud metadata services live here
    "224.0.0.0/4",  # multicast
    "255.255.255.255/32",  # limited broadcast
]


# ICMP errors the gateway sends as a router hop (Time Exceeded), per direction: a token bucket, so a
# flood of TTL=1 packets cannot turn the gateway into an amplifier (RFC 1812 4.3.2.8). Traceroute and
# mtr send a few probes per hop per second; Linux allows 1000/s with a burst of 50 in all.
ICMP_ERRORS_PER_S = 100
ICMP_ERROR_BURST = 20


class VpnConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[vpn]`` section: the client subnet and the router's policy."""

    subnet: str = "10.66.77.0/24"
    gateway_address: str = "10.66.77.1"
    deny: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_DENY))
    icmp_errors_per_s: int = ICMP_ERRORS_PER_S
    icmp_error_burst: int = ICMP_ERROR_BURST
    # the gateway host's own port on the VPN: a TUN holding gateway_address, so clients reach the host's
    # services (ssh, DNS over TCP to the proxy) through its kernel; "" turns it off
    host_device: str = "gw-host"


class TunnelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[tunnel]`` section: where the gateway listens, its identity (``gw keys new``), the session."""

    listen: str = "0.0.0.0:8443"
    certificate: str = ""
    key: str = ""
    mtu: int = 1400  # the TUN MTU clients get: 1400 leaves room for TLS, TCP and IP over a 1500 path
    keepalive_s: float = 10.0
    dead_after_s: float = 30.0  # three keepalives missed


class ClientEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[[clients]]`` table: a client allowed in, by the fingerprint ``gw keys new`` printed."""

    name: str
    fingerprint: str
    address: str = ""  # a fixed VPN address; empty: one from the pool, the same one each time it is free
    revoked: bool = False


class JournalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[journal]`` section."""

    directory: str = "/var/lib/gw/journal"
    fsync: Literal["always", "interval", "never"] = "interval"
    # "fast": a new flow's first packet leaves at once, its MappingCreated is durable a moment later;
    # "strict": it waits until its MappingCreated is fsynced (fsync is then "always"), and new flows
    #   are refused while the journal cannot write (gw.strict)
    audit: Literal["fast", "strict"] = "fast"
    snapshot_every_s: int = 300  # bounds recovery time: a restart reads one snapshot and what came after
    # fast mode while the journal cannot write (a full disk): events wait in memory (200-400 bytes each)
    # up to this many, then new flows are refused, as strict mode does at once, until it writes again;
    # the journal never has a gap
    max_unwritten_events: int = 1 << 19


# DNS proxy limits: a query waits DNS_TIMEOUT_S for an upstream, DNS_ATTEMPTS upstreams in turn, then the
# client gets SERVFAIL (stub resolvers retry after 5 s: answer before they give up); queries in flight are
# bounded in all and per client, so one client cannot hold the proxy's whole table
DNS_TIMEOUT_S = 2.0
DNS_ATTEMPTS = 2
DNS_MAX_IN_FLIGHT = 1024
DNS_MAX_IN_FLIGHT_PER_CLIENT = 64
DNS_MAX_IN_FLIGHT_CAP = 16384  # gw.dnsproxy.MAX_IN_FLIGHT_CAP: random query IDs must stay hard to guess


class DnsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[dns]`` section: the proxy on the gateway's VPN address (UDP and TCP port 53)."""

    # upstream resolvers, "ADDRESS[:PORT]"; empty: the nameservers of the gateway host's /etc/resolv.conf
    upstreams: list[str] = msgspec.field(default_factory=list)
    enabled: bool = True
    timeout_s: float = DNS_TIMEOUT_S
    attempts: int = DNS_ATTEMPTS
    max_in_flight: int = DNS_MAX_IN_FLIGHT
    max_in_flight_per_client: int = DNS_MAX_IN_FLIGHT_PER_CLIENT


class StatusConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[status]`` section: where ``gw status`` finds the daemon (a Unix socket, mode 0600)."""

    socket: str = "/run/gw/gw.sock"


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[metrics]`` section: a Prometheus endpoint, off unless ``listen`` is set."""

    listen: str = ""  # "127.0.0.1:9108"; a non-loopback address must be asked for with public = true
    public: bool = False


class ExternalConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[external]`` section: how translated packets reach the internet (``gw.external``)."""

    # "raw": whole packets through an AF_PACKET socket on `interface`, for [nat] external_addresses
    #   that the host's kernel does NOT own (the gateway answers ARP for them itself);
    # "socket": kernel sockets per mapping on [nat] external_addresses, which the host must own;
    # "none": packets for the internet are translated and journaled, not sent
    mode: Literal["none", "socket", "raw"] = "none"
    max_sockets: int = 0  # socket mode: open sockets at most; 0: the open-file limit less a reserve
    interface: str = ""  # raw mode: the external interface, e.g. "eth0"
    next_hop: str = ""  # raw mode: the router's address; "": the gateway of the interface's default route
    mac: str = ""  # raw mode: the MAC the public addresses answer with; "": 02:67:77 + their low 3 bytes


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A whole gateway.toml."""

    nat: NatConfig = msgspec.field(default_factory=NatConfig)
    vpn: VpnConfig = msgspec.field(default_factory=VpnConfig)
    tunnel: TunnelConfig = msgspec.field(default_factory=TunnelConfig)
    clients: list[ClientEntry] = msgspec.field(default_factory=list)
    journal: JournalConfig = msgspec.field(default_factory=JournalConfig)
    dns: DnsConfig = msgspec.field(default_factory=DnsConfig)
    status: StatusConfig = msgspec.field(default_factory=StatusConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    external: ExternalConfig = msgspec.field(default_factory=ExternalConfig)


# ------------------------------------------------------------------------------------------ client.toml


class ClientGateway(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """client.toml's ``[gateway]``: where it is and the fingerprint it must show."""

    endpoint: str
    fingerprint: str


class ClientIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    certificate: str
    key: str


class ClientConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A whole client.toml."""

    gateway: ClientGateway
    identity: ClientIdentity
    device: str = "gw0"  # the TUN's name
    offloads: bool = True  # TUN offloads (TCP super-packets of 64 KB); false: one packet per MTU
    # prefixes routed through the tunnel besides the VPN subnet; "0.0.0.0/0" sends everything (as two
    # /1 routes, with a host route keeping the gateway's endpoint on its old path), all removed on exit
    routes: list[str] = msgspec.field(default_factory=list)


def fingerprint_hex(text: str) -> str | None:
    """A fingerprint as gateway.toml and client.toml may write it (any case, colons allowed), as the
    64 lowercase hex digits the handshake compares; None if it is not one."""
    fp = text.lower().replace(":", "")
    return fp if len(fp) == 64 and all(ch in "0123456789abcdef" for ch in fp) else None


def parse_client(text: str, source: str = "client.toml") -> ClientConfig:
    """TOML text -> checked ClientConfig. Raises ConfigError naming ``source``, key, value and fix."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        c = msgspec.convert(raw, ClientConfig)
    except msgspec.ValidationError as e:
        head, _, where = str(e).rpartition(" - at `$")
        where = where.rstrip("`").lstrip(".")
        section, _, key = where.partition(".")
        place = f"[{section}] {key}" if key else (f"[{section}]" if section else "")
        hint = " (client.toml needs [gateway] endpoint and fingerprint, [identity] certificate and key)"
        raise ConfigError(f"{source}: {place}: {head or e}{hint}".replace(": : ", ": ")) from None
    host, sep, port = c.gateway.endpoint.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        _fail(source, "[gateway] endpoint", c.gateway.endpoint, 'write "HOST:PORT", e.g. "198.51.100.1:8443"')
    if fingerprint_hex(c.gateway.fingerprint) is None:
        _fail(
            source, "[gateway] fingerprint", c.gateway.fingerprint, "64 hex digits, as gw keys new printed it"
        )
    if not c.device or len(c.device) > 15:
        _fail(source, "device", c.device, "an interface name of 1-15 characters, e.g. gw0")
    for r in c.routes:
        try:
            inet.parse_prefix(r)
        except ValueError as e:
            _fail(source, "routes", r, f'{e} (write prefixes, e.g. ["0.0.0.0/0"] or ["203.0.113.0/24"])')
    return c


def load_client(path: str) -> ClientConfig:
    """Read and parse a client.toml. Raises ConfigError if it cannot be read."""
    return parse_client(_read(path), path)


def parse(text: str, source: str = "gateway.toml") -> GatewayConfig:
    """TOML text -> checked GatewayConfig. Raises ConfigError naming ``source``, key, value and fix."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    try:
        config = msgspec.convert(raw, GatewayConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e, raw)}") from None
    check(config, source)
    return config


def load(path: str) -> GatewayConfig:
    """Read and parse a config file. Raises ConfigError if it cannot be read."""
    return parse(_read(path), path)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): TOML files are UTF-8") from None


def _toml(value: object) -> str:
    """A default value written the way the operator would write it in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _describe(e: msgspec.ValidationError, raw: dict) -> str:
    """msgspec's '... - at `$.nat.port_range`' -> '[nat] port_range = <value>: ... (<fix>)'."""
    head, sep, where = str(e).rpartition(" - at `$")
    if not sep:
        head = str(e)
    # ['nat', 'port_range'] or ['vpn', 'deny', '[0]']
    path = re.findall(r"[^.\[\]`]+|\[\d+\]", where) if sep else []
    sections = GatewayConfig.__struct_fields__
    unknown = re.fullmatch(r"Object contains unknown field `(.*)`", head)
    if not path:
        if not unknown:
            return head
        listed = ", ".join(f"[{s}]" for s in sections)
        return f"[{unknown[1]}]: unknown section (remove it; the sections are {listed})"
    section = path[0]
    if section == "clients":  # an array of tables: [[clients]]
        return _describe_client(head, path, raw, unknown)
    fields = getattr(GatewayConfig(), section)
    if unknown:
        return (
            f"[{section}] {unknown[1]}: unknown key (check the spelling; the keys are "
            f"{', '.join(type(fields).__struct_fields__)})"
        )
    value: object = raw
    try:
        for step in path:
            value = value[int(step[1:-1])] if step.startswith("[") else value[step]  # type: ignore[index]
    except (KeyError, IndexError, TypeError, ValueError):
        value = "?"
    if len(path) == 1:
        return f"{section} = {_toml(value)}: {head} (write it as a [{section}] table)"
    key = path[1] + "".join(path[2:])
    if path[1] == "filtering":
        fix = "use one of " + ", ".join(f'"{f}"' for f in get_args(Filtering))
    else:
        fix = f"for example {path[1]} = {_toml(getattr(fields, path[1]))}"
    return f"[{section}] {key} = {_toml(value)}: {head} ({fix})"


def _describe_client(head: str, path: list[str], raw: dict, unknown: re.Match | None) -> str:
    """Mistakes in a [[clients]] table, named by the table's position and the client's name."""
    if len(path) == 1:
        return "clients: write each client as a [[clients]] table with name and fingerprint"
    index = int(path[1][1:-1]) if path[1].startswith("[") else 0
    try:
        entry = raw["clients"][index]
        name = entry.get("name", "?") if isinstance(entry, dict) else "?"
    except (KeyError, IndexError, TypeError):
        entry, name = {}, "?"
    where = f"[[clients]] #{index + 1} ({name})"
    if unknown:
        return f"{where} {unknown[1]}: unknown key (the keys are {', '.join(ClientEntry.__struct_fields__)})"
    if "missing required field" in head:
        return f'{where}: {head} (each client needs name = "..." and fingerprint = "..." from gw keys new)'
    key = path[2] if len(path) > 2 else "?"
    value = entry.get(key, "?") if isinstance(entry, dict) else "?"
    return f"{where} {key} = {_toml(value)}: {head}"


def _fail(source: str, key: str, value: object, why: str) -> None:
    raise ConfigError(f"{source}: {key} = {_toml(value)}: {why}")  # as written in the file (STYLE 6)


def check(config: GatewayConfig, source: str = "gateway.toml") -> None:
    """Semantic checks msgspec's types can't express. Raises ConfigError."""
    nat, vpn = config.nat, config.vpn
    check_nat(nat, source)

    def fail(key: str, value: object, why: str) -> None:
        _fail(source, key, value, why)

    try:
        net, length = inet.parse_prefix(vpn.subnet)
    except ValueError as e:
        fail("[vpn] subnet", vpn.subnet, f'{e} (write a prefix, e.g. "10.66.77.0/24")')
    if length > 30:
        fail("[vpn] subnet", vpn.subnet, "too small for a gateway and a client: use /30 or larger")
    try:
        gw_addr = inet.aton(vpn.gateway_address)
    except ValueError as e:
        fail("[vpn] gateway_address", vpn.gateway_address, f'{e} (write a dotted quad, e.g. "10.66.77.1")')
    if not inet.in_prefix(gw_addr, net, length):
        fail("[vpn] gateway_address", vpn.gateway_address, f"must lie inside [vpn] subnet {vpn.subnet}")
    if gw_addr in (net, net | (~inet.prefix_mask(length) & 0xFFFFFFFF)):
        fail(
            "[vpn] gateway_address",
            vpn.gateway_address,
            f"is the network or broadcast address of {vpn.subnet}; use a host address such as {inet.ntoa(net + 1)}",
        )
    if vpn.icmp_errors_per_s < 0:
        fail("[vpn] icmp_errors_per_s", vpn.icmp_errors_per_s, "must be 0 (send none) or more")
    if vpn.icmp_error_burst < 1:
        fail("[vpn] icmp_error_burst", vpn.icmp_error_burst, "must be at least 1")
    for d in vpn.deny:
        try:
            inet.parse_prefix(d)
        except ValueError as e:
            fail("[vpn] deny", d, f'{e} (write a prefix, e.g. "169.254.0.0/16")')
    check_tunnel(config, net, length, gw_addr, source)
    check_services(config, source)
    for a in nat.external_addresses:
        if inet.in_prefix(inet.aton(a), net, length):
            fail(
                "[nat] external_addresses",
                a,
                f"a public address cannot lie inside the VPN subnet {vpn.subnet}",
            )


def check_tunnel(config: GatewayConfig, net: int, length: int, gw_addr: int, source: str) -> None:
    """The ``[tunnel]`` section and the ``[[clients]]`` tables. Raises ConfigError."""
    t = config.tunnel

    def fail(key: str, value: object, why: str) -> None:
        _fail(source, key, value, why)

    host, sep, port = t.listen.rpartition(":")
    try:
        inet.aton(host)
    except ValueError:
        sep = ""
    if not sep or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        fail("[tunnel] listen", t.listen, 'write "ADDRESS:PORT", e.g. "0.0.0.0:8443"')
    if not 576 <= t.mtu <= 65535:
        fail("[tunnel] mtu", t.mtu, "use 576-65535 (1400 suits a 1500-byte path)")
    if not 0 < t.keepalive_s < t.dead_after_s:
        fail(
            "[tunnel] keepalive_s",
            t.keepalive_s,
            f"must be above 0 and below dead_after_s ({t.dead_after_s:g})",
        )
    names, prints, fixed = set(), set(), set()
    broadcast = net | (~inet.prefix_mask(length) & 0xFFFFFFFF)
    for i, c in enumerate(config.clients):
        where = f"[[clients]] #{i + 1} ({c.name})"
        if not c.name or not all(ch.isalnum() or ch in "-_." for ch in c.name):
            fail(f"{where} name", c.name, "use letters, digits, '-', '_' and '.'")
        if c.name in names:
            fail(f"{where} name", c.name, "another client has this name (names appear in the journal)")
        fp = fingerprint_hex(c.fingerprint)
        if fp is None:
            fail(f"{where} fingerprint", c.fingerprint, "64 hex digits, as gw keys new printed it")
        if fp in prints:
            fail(f"{where} fingerprint", c.fingerprint, "another client has this fingerprint")
        if c.address:
            try:
                a = inet.aton(c.address)
            except ValueError:
                fail(
                    f"{where} address", c.address, 'write a dotted quad, e.g. "10.66.77.10", or leave it out'
                )
            if not inet.in_prefix(a, net, length) or a in (net, broadcast, gw_addr):
                fail(
                    f"{where} address",
                    c.address,
                    f"must be a host address in [vpn] subnet {config.vpn.subnet} other than the gateway's",
                )
            if a in fixed:
                fail(f"{where} address", c.address, "another client has this fixed address")
            fixed.add(a)
        names.add(c.name)
        prints.add(fp)


def parse_endpoint(text: str, default_port: int) -> tuple[str, int]:
    """"ADDRESS[:PORT]" -> (address, port). Raises ValueError."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(default_port)
    inet.aton(host)
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port {port!r} is not 1-65535")
    return host, int(port)


def check_services(config: GatewayConfig, source: str = "gateway.toml") -> None:
    """``[dns]``, ``[status]``, ``[metrics]`` and the host device. Raises ConfigError."""
    dns, metrics, vpn = config.dns, config.metrics, config.vpn

    def fail(key: str, value: object, why: str) -> None:
        _fail(source, key, value, why)

    if vpn.host_device and (len(vpn.host_device) > 15 or not all(c.isalnum() or c in "-_." for c in vpn.host_device)):
        fail("[vpn] host_device", vpn.host_device, 'an interface name of 1-15 characters, or "" for none')
    for u in dns.upstreams:
        try:
            parse_endpoint(u, 53)
        except ValueError:
            fail("[dns] upstreams", u, 'write "ADDRESS" or "ADDRESS:PORT", e.g. "192.0.2.53" or "192.0.2.53:5353"')
    if not 0 < dns.timeout_s <= 30:
        fail("[dns] timeout_s", dns.timeout_s, "use more than 0 and at most 30 s (stub resolvers give up at 5)")
    if not 1 <= dns.attempts <= 5:
        fail("[dns] attempts", dns.attempts, "use 1-5 (each waits timeout_s)")
    if not 1 <= dns.max_in_flight <= DNS_MAX_IN_FLIGHT_CAP:
        fail("[dns] max_in_flight", dns.max_in_flight, f"use 1-{DNS_MAX_IN_FLIGHT_CAP}")
    if not 1 <= dns.max_in_flight_per_client <= dns.max_in_flight:
        fail("[dns] max_in_flight_per_client", dns.max_in_flight_per_client,
             f"must be 1 to max_in_flight ({dns.max_in_flight})")  # fmt: skip
    if config.journal.max_unwritten_events < 1024:
        fail("[journal] max_unwritten_events", config.journal.max_unwritten_events, "must be at least 1024")
    if config.journal.audit == "strict" and config.journal.fsync == "never":
        fail("[journal] fsync", "never", 'audit = "strict" waits for fsync: use "always" (or "interval", which '
             'strict mode turns into "always")')  # fmt: skip
    ext = config.external
    if ext.max_sockets < 0:
        fail("[external] max_sockets", ext.max_sockets, "must be 0 (the open-file limit) or more")
    if ext.mode == "raw" and not ext.interface:
        fail("[external] interface", ext.interface, 'raw mode sends through an interface: name it, e.g. "eth0"')
    if ext.next_hop:
        try:
            inet.aton(ext.next_hop)
        except (OSError, ValueError):
            fail("[external] next_hop", ext.next_hop, 'not an IPv4 address (write e.g. "198.51.100.254")')
    if ext.mac:
        try:
            mac = parse_mac(ext.mac)
        except ValueError:
            fail("[external] mac", ext.mac, 'write six hex pairs, e.g. "02:67:77:33:64:01"')
        if mac[0] & 1:
            fail("[external] mac", ext.mac, "a multicast address: the first byte must be even")
    if not config.status.socket.startswith("/"):
        fail("[status] socket", config.status.socket, 'an absolute path, e.g. "/run/gw/gw.sock"')
    if metrics.listen:
        try:
            host, _ = parse_endpoint(metrics.listen, 0)
            if not metrics.listen.rpartition(":")[1]:
                raise ValueError("no port")
        except ValueError:
            fail("[metrics] listen", metrics.listen, 'write "ADDRESS:PORT", e.g. "127.0.0.1:9108"')
        if not host.startswith("127.") and not metrics.public:
            fail("[metrics] listen", metrics.listen,
                 "the metrics reveal clients and traffic: bind a loopback address, or set public = true")  # fmt: skip


def check_nat(nat: NatConfig, source: str = "gateway.toml") -> None:
    """The ``[nat]`` checks alone (``Nat`` runs them too: it refuses a config nobody checked). Raises ConfigError."""

    def fail(key: str, value: object, why: str) -> None:
        _fail(source, key, value, why)

    first, sep, last = nat.port_range.partition("-")
    # isascii: str.isdigit() accepts "²", which int() refuses
    if not (sep and first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        fail("[nat] port_range", nat.port_range, 'write it as "FIRST-LAST", e.g. "1024-65535"')
    if not 1024 <= int(first) <= 65535 or not 1024 <= int(last) <= 65535:
        fail(
            "[nat] port_range",
            nat.port_range,
            "ports must lie in 1024-65535 (ports below 1024 map below 1024)",
        )
    if int(first) > int(last):
        fail("[nat] port_range", nat.port_range, f'start is above end (write "{last}-{first}")')
    if not nat.external_addresses:
        fail("[nat] external_addresses", nat.external_addresses, "give at least one public IPv4 address")
    for a in nat.external_addresses:
        try:
            inet.aton(a)
        except ValueError:
            fail("[nat] external_addresses", a, 'not an IPv4 address (write e.g. "198.51.100.1")')
    for a in nat.external_addresses:
        addr = inet.aton(a)
        if addr >> 24 in (0, 127) or addr >> 28 >= 0xE:  # 0/8, loopback, multicast, reserved, broadcast
            fail("[nat] external_addresses", a, "not a unicast address a NAT can use (give a public one)")
    if len(set(nat.external_addresses)) != len(nat.external_addresses):
        fail("[nat] external_addresses", nat.external_addresses, "an address is listed twice (drop one)")
    minimums = {
        "udp_timeout_s": 120,  # RFC 4787 REQ-5
        "tcp_established_timeout_s": 7440,  # RFC 5382 REQ-5
        "tcp_transitory_timeout_s": 240,  # RFC 5382 REQ-5
        "icmp_timeout_s": 60,  # RFC 5508 REQ-1
    }
    for key, least in minimums.items():
        if getattr(nat, key) < least:
            fail(f"[nat] {key}", getattr(nat, key), f"the RFCs ask for at least {least} s")
    if nat.port_reuse_delay_s < 0:
        fail("[nat] port_reuse_delay_s", nat.port_reuse_delay_s, "must be 0 or more")
    if nat.max_mappings_per_client < 1:
        fail("[nat] max_mappings_per_client", nat.max_mappings_per_client, "must be at least 1")
    if nat.tcp_mss and not 536 <= nat.tcp_mss <= 65495:
        fail("[nat] tcp_mss", nat.tcp_mss, "use 0 (off) or 536-65495 (tunnel MTU minus 40)")
    if nat.fragment_timeout_s < 1:
        fail("[nat] fragment_timeout_s", nat.fragment_timeout_s, "must be at least 1 s")
    if nat.fragment_max_bytes < 65535:
        fail("[nat] fragment_max_bytes", nat.fragment_max_bytes, "must be at least 65535 (one datagram)")
    if nat.fragment_max_datagrams < 1:
        fail("[nat] fragment_max_datagrams", nat.fragment_max_datagrams, "must be at least 1")
    if nat.fragment_max_bytes_per_source < 65535:
        fail(
            "[nat] fragment_max_bytes_per_source",
            nat.fragment_max_bytes_per_source,
            "must be at least 65535 (one datagram)",
        )
    if nat.fragment_max_datagrams_per_source < 1:
        fail(
            "[nat] fragment_max_datagrams_per_source",
            nat.fragment_max_datagrams_per_source,
            "must be at least 1",
        )
    if nat.low_ports_per_client < 0:
        fail("[nat] low_ports_per_client", nat.low_ports_per_client, "must be 0 or more (0: none below 1024)")
    if nat.max_remotes_per_client < 1:
        fail("[nat] max_remotes_per_client", nat.max_remotes_per_client, "must be at least 1")
