"""The ``gw`` command line. The only place that turns a GwError or JournalError into a message and exit code."""

from __future__ import annotations

import argparse
import os
import sys

from gw import __version__
from gw.errors import GwError
from journal.errors import JournalError

EPILOG = """\
commands still to come (see DESIGN.md): serve, connect, lab, keys.
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from gw.demo import run_demo

            return run_demo(journal=args.journal, clients=args.clients, keep=args.keep, quiet=args.quiet)
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
