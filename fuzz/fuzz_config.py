"""Fuzz the TOML configuration: ``gw.config.parse`` (gateway.toml), ``parse_client`` (client.toml), ``load``.

Input: a mode byte, then the file's bytes. Mode bit 0: client.toml, else gateway.toml; bit 1: read the
bytes from a file with ``load``/``load_client`` (as ``gw serve -c`` and ``gw connect -c`` do), else
decode them as UTF-8 (undecodable bytes replaced) and call ``parse``/``parse_client``. tomllib is pure
Python and instrumented too, so the fuzzer learns TOML's grammar; ``fuzz/dicts/toml.dict`` gives it the
keys.

A gateway config that parses is then turned into what the daemon builds from it without I/O: the router,
the NAT (socket mode's too), the DNS proxy core, the session directory (for subnets up to /16: larger
ones are refused here, see the note in ``one_input``), the raw gateway's MAC and kernel filter. A client
config: its endpoint and routes. Contract under test: nothing but ``ConfigError`` (which ``gw.cli``
turns into one line and exit code 2) for any file; a checked config builds every core without an error.
"""

from __future__ import annotations

import random
import sys

from fuzz.common import fuzz, instrumented, scratch_dir

with instrumented("tomllib"):
    from gw import config as C
    from gw import inet
    from gw.dnsproxy import DnsProxy
    from gw.errors import ConfigError
    from gw.external import link as L
    from gw.nat import Nat
    from gw.router import Router
    from gw.sessions import SessionDirectory

WORK = scratch_dir("config")
MAX_POOL_PREFIX = 16  # SessionDirectory lists every address of the subnet: /16 is 65534 ints


def one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    client = bool(mode & 1)
    try:
        if mode & 2:
            path = WORK / ("client.toml" if client else "gateway.toml")
            path.write_bytes(body)
            config = C.load_client(str(path)) if client else C.load(str(path))
        else:
            text = body.decode("utf-8", "replace")
            config = C.parse_client(text) if client else C.parse(text)
    except ConfigError:
        return
    if client:
        build_client(config)
    else:
        build_gateway(config)


def build_gateway(config: C.GatewayConfig) -> None:
    """What ``gw.server.Gateway`` makes from a checked config before it touches the system."""
    Router(config.vpn)
    nat = Nat(config.nat, random.Random(1), vpn=config.vpn, caller_ports=config.external.mode == "socket")
    d = config.dns
    DnsProxy(len(d.upstreams), rng=random.Random(2), timeout_ns=int(d.timeout_s * 1e9), attempts=d.attempts,
             max_in_flight=d.max_in_flight, max_in_flight_per_client=d.max_in_flight_per_client)  # fmt: skip
    for u in d.upstreams:
        C.parse_endpoint(u, 53)
    # A subnet of /8 makes a list of 16 M addresses, /1 of 2**31 (the checks allow any prefix up to /30):
    # reported, and kept out of the fuzzer's way so that it does not stop every run on memory.
    if inet.parse_prefix(config.vpn.subnet)[1] >= MAX_POOL_PREFIX:
        SessionDirectory(config, nat)
    ext = config.external
    if ext.mac:
        L.parse_mac(ext.mac)
    try:
        L.filter_program(nat.ext_addrs)
    except ValueError:
        pass  # documented: over MAX_RUNS ranges; the raw gateway turns it into RawGatewayError


def build_client(config: C.ClientConfig) -> None:
    """What ``gw connect`` reads from a checked client.toml before connecting."""
    host, _, port = config.gateway.endpoint.rpartition(":")
    int(port)
    for r in config.routes:
        inet.parse_prefix(r)


# ---------------------------------------------------------------------- seeds


def seeds() -> list[bytes]:
    """The example configs, every section alone, and files with one classic mistake each."""
    examples = C.__file__.rsplit("/gw/", 1)[0] + "/examples/"
    gateway = open(examples + "gateway.toml", "rb").read()
    client = open(examples + "client.toml", "rb").read()
    fp = "ab" * 32
    ok_client = client.replace(b"<the gateway's, from gw keys new gateway>", fp.encode())
    ok_gateway = gateway.replace(b"<from gw keys new alice-laptop>", fp.encode())
    out = [b"\x00" + gateway, b"\x00" + ok_gateway, b"\x02" + ok_gateway, b"\x01" + client, b"\x01" + ok_client,
           b"\x03" + ok_client]  # fmt: skip
    mistakes = [
        b'[nat]\nport_range = "40000-3000"\n', b'[nat]\nexternal_addresses = []\n',
        b'[nat]\nfiltering = "full-cone"\n', b'[vpn]\nsubnet = "10.66.77.0/31"\n',
        b'[vpn]\nsubnet = "10.66.0.0/16"\ngateway_address = "10.66.0.1"\n',
        b'[tunnel]\nmtu = 100\n', b'[tunnel]\nkeepalive_s = nan\n', b'[dns]\nupstreams = ["192.0.2.53:99999"]\n',
        b'[external]\nmode = "raw"\ninterface = "eth0"\nmac = "03:00:00:00:00:01"\n',
        b'[metrics]\nlisten = "0.0.0.0:9108"\n', b'[journal]\naudit = "strict"\nfsync = "never"\n',
        b'[[clients]]\nname = "a"\nfingerprint = "' + fp.encode() + b'"\naddress = "10.66.77.1"\n',
        b'[[clients]]\nname = "a"\nfingerprint = "xyz"\n', b'[unknown]\nkey = 1\n', b'nat = 5\n',
        b'[nat]\nudp_timeout_s = 99999999999999999999999\n', b'[nat]\nexternal_addresses = ["198.51.100.1", '
        b'"198.51.100.3", "198.51.100.5"]\n[external]\nmode = "raw"\ninterface = "eth0"\n',
    ]  # fmt: skip
    out += [b"\x00" + m for m in mistakes]
    out += [b"\x01" + b'[gateway]\nendpoint = "host"\nfingerprint = "' + fp.encode() + b'"\n',
            b"\x01" + ok_client + b'routes = ["0.0.0.0/0", "10.0.0.0/33"]\n']  # fmt: skip
    out.append(b"\x02" + b'name = "\xff\xfe"\n')
    return out


if __name__ == "__main__":
    fuzz("config", one_input, sys.argv)
