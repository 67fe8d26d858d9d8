"""The ``gw`` command line. The only place that turns a GwError or JournalError into a message and exit code."""

from __future__ import annotations

import argparse
import os
import sys

from gw import __version__
from gw.errors import GwError, UsageError
from journal.errors import JournalError

EPILOG = """\
start here: gw lab (root) builds the whole VPN in throwaway network namespaces and shows it working.
serve reaches the internet with [external] mode = "raw" (its own public addresses: TCP, UDP, ICMP) or
"socket" (the host's address: UDP and ping).
The journal tools are separate commands: gw-replay --help, gw-audit --help.
"""


def _version() -> str:
    from gw.nat import fast_path

    return f"gw {__version__}, NAT fast path: {fast_path()}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gw",
        description="gw: a user-space VPN gateway (NAT, router and audit journal in Python).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run simulated clients through the real NAT and journal, crash, recover, audit",
        description=(
            "Simulated VPN clients send DNS, HTTP, ping, fragmented UDP and hairpin traffic through the\n"
            "router and the NAT; every mapping is journaled. The demo then 'crashes' (no clean stop),\n"
            "rebuilds the NAT table from the journal, checks it is the same table with the same\n"
            "external ports, and asks gw-audit who held one public endpoint. No packet leaves the process."
        ),
        epilog="example: gw demo --journal /tmp/gw-journal --clients 20 --keep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--journal", metavar="DIR", help="journal directory (default: a new temporary one)")
    demo.add_argument(
        "--clients", type=int, default=3, metavar="N", help="simulated clients (1-200, default 3)"
    )
    demo.add_argument("--keep", action="store_true", help="keep the journal directory afterwards")
    demo.add_argument("--quiet", action="store_true", help="print only the summary")
    serve = sub.add_parser(
        "serve",
        help="run the gateway daemon",
        description=(
            "The gateway: accepts tunnels from the clients gateway.toml lists, routes between them,\n"
            "answers ping and DNS (a proxy to [dns] upstreams) on its VPN address, gives the host its own\n"
            "port on the VPN (a TUN, [vpn] host_device), and journals every session and NAT event.\n"
            "Stops on SIGTERM or Ctrl-C (GatewayStopped journaled, the TUN removed). Needs root (a TUN\n"
            "device) unless host_device = \"\". The internet: [external] mode = \"raw\" (TCP, UDP, ICMP on public\n"
            "addresses the kernel does not own) or \"socket\" (UDP, ping on the host's own address)."
        ),
        epilog="example: gw serve -c /etc/gw/gateway.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("-c", "--config", required=True, metavar="FILE", help="gateway.toml")
    conn = sub.add_parser(
        "connect",
        help="run the VPN client",
        description=(
            "The client: opens a tunnel to the pinned gateway, makes its TUN device from the welcome\n"
            "and routes the VPN subnet through it; reconnects with backoff. Needs root (a TUN device)."
        ),
        epilog="example: gw connect -c ~/.config/gw/client.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    conn.add_argument("-c", "--config", required=True, metavar="FILE", help="client.toml")
    status = sub.add_parser(
        "status",
        help="what the running daemon is doing: sessions, bytes, drops, NAT, journal lag",
        description=(
            "Asks the running gw serve through its status socket ([status] socket in gateway.toml,\n"
            "mode 0600: run as the daemon's user) and prints tables, or the document as JSON."
        ),
        epilog="examples:\n  gw status -c /etc/gw/gateway.toml\n  gw status --socket /run/gw/gw.sock --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", metavar="FILE", help="gateway.toml (its [status] socket)")
    where.add_argument("--socket", metavar="PATH", help="the status socket itself")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    lab = sub.add_parser(
        "lab",
        help="the whole VPN in throwaway network namespaces: build, exercise, report, remove",
        description=(
            "Builds five network namespaces (the gateway, clients alice and bob, an on-path router with a\n"
            "1280-byte link, an 'internet' host with DNS, echo and HTTP servers), runs the real gw serve\n"
            "and gw connect there as processes, and checks: ping to the gateway and between clients, DNS\n"
            "through the gateway's proxy over UDP and TCP, UDP and TCP between the clients, UDP, ping and\n"
            "(raw mode) an HTTP download from the internet host through the NAT, who held the public port\n"
            "the internet host saw (from the journal), gw status. Prints what went through, then removes\n"
            "everything it made (also on failure and Ctrl-C). No packet leaves the namespaces.\n"
            "--external picks the gateway's external mode: raw (its own public address 198.51.100.1,\n"
            "which the gateway namespace's kernel does not own) or socket (the host's 198.51.100.2).\n"
            "Needs root and /dev/net/tun. Exit status 0 when every check passed, 1 otherwise."
        ),
        epilog=(
            "examples:\n"
            "  sudo gw lab                      # build, check, report, remove\n"
            "  sudo gw lab --keep --json        # leave it up; JSON names every namespace, device, pid\n"
            "  sudo gw lab --external socket    # the socket external gateway instead of raw\n"
            "  sudo ip netns exec gwlab-lab-c1 ping 10.66.77.1   # look around a kept lab\n"
            "  sudo gw lab --down               # remove the kept lab"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lab.add_argument("--keep", action="store_true", help="leave the lab up afterwards (remove with --down)")
    lab.add_argument("--json", action="store_true", help="print the report as JSON (progress stays on stderr)")
    lab.add_argument("--down", action="store_true", help="remove a kept lab: its processes and namespaces")
    lab.add_argument("--tag", default="lab", help="the lab's name, in its namespaces' names (default: lab)")
    lab.add_argument("--no-offloads", action="store_true", help="run the clients without TUN offloads")
    lab.add_argument("--external", choices=("raw", "socket"), default="raw",
                     help="the gateway's [external] mode (default: raw)")  # fmt: skip
    keys = sub.add_parser(
        "keys",
        help="make and show identities (an Ed25519 key and a self-signed certificate)",
        description=(
            "Identities have no certificate authority: the gateway lists each client's fingerprint\n"
            "(sha256 of its certificate) in gateway.toml, and each client pins the gateway's in\n"
            "client.toml, as WireGuard peers list public keys. Revoke a client by its fingerprint."
        ),
        epilog=(
            "examples:\n"
            "  gw keys new gateway --dir /etc/gw        # on the gateway\n"
            "  gw keys new alice-laptop                 # on the client: alice-laptop.key (0600) and .crt\n"
            "  gw keys show alice-laptop.crt            # its fingerprint again"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    new = keys_sub.add_parser("new", help="write NAME.key (0600) and NAME.crt; print the config lines")
    new.add_argument("name", help="the identity's name: letters, digits, '-', '_', '.'")
    new.add_argument("--dir", default=".", help="where to write the files (default: here)")
    show = keys_sub.add_parser("show", help="print a certificate's name, fingerprint and expiry")
    show.add_argument("certificate", help="a NAME.crt written by gw keys new")
    return parser


def _keys(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    from gw import identity

    if args.keys_command == "new":
        me = identity.new_identity(args.name, args.dir)
        cert, key = me.cert_path.resolve(), me.key_path.resolve()
        print(f"wrote {key} (private: keep it on this machine) and {cert}")
        print(f"fingerprint: {me.fingerprint}\n")
        print("If this is a client, add it to the gateway's gateway.toml:")
        print(f'  [[clients]]\n  name = "{me.name}"\n  fingerprint = "{me.fingerprint}"\n')
        print("and point its client.toml at the files:")
        print(f'  [identity]\n  certificate = "{cert}"\n  key = "{key}"\n')
        print("If this is the gateway, its gateway.toml takes the same [identity] lines, and each")
        print("client.toml pins it:")
        print(f'  [gateway]\n  fingerprint = "{me.fingerprint}"')
        return 0
    cert = identity.load_certificate(args.certificate)
    name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    print(f"name: {name[0].value if name else '(none)'}")
    print(f"fingerprint: {identity.fingerprint(cert.public_bytes(serialization.Encoding.DER))}")
    print(f"valid until: {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    return 0


def _status(args: argparse.Namespace) -> int:
    import json

    from gw import config, status

    path = args.socket or config.load(args.config).status.socket
    doc = status.query(path)
    print(json.dumps(doc, indent=1) if args.json else status.render(doc), end="\n" if args.json else "")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from gw.demo import run_demo

            return run_demo(journal=args.journal, clients=args.clients, keep=args.keep, quiet=args.quiet)
        if args.command == "keys":
            return _keys(args)
        if args.command == "serve":
            from gw import config
            from gw.server import serve

            return serve(config.load(args.config))
        if args.command == "status":
            return _status(args)
        if args.command == "lab":
            from gw.lab import run_lab

            if args.down and args.keep:
                raise UsageError("--down removes a kept lab; it does not go with --keep")
            return run_lab(keep=args.keep, as_json=args.json, down=args.down, tag=args.tag,
                           offloads=not args.no_offloads, external=args.external)  # fmt: skip
        if args.command == "connect":
            from gw import config
            from gw.client import connect_main

            return connect_main(config.load_client(args.config))
        parser.print_help()
        return 2
    except GwError as e:
        print(f"gw: {e}", file=sys.stderr)
        return e.exit_code
    except JournalError as e:
        print(f"gw: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gw demo | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
