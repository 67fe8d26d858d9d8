"""Shared plumbing for gw-replay and gw-audit: times, endpoints, output, the command line, exit codes.

Theory of operation
-------------------
The tools never write to a journal (``gw-audit reindex`` writes ``.idx`` files and ``gw-replay repair``
cuts damage off the newest segment, keeping what it cuts; nothing else writes). Reading is the journal
package's: ``journal.reader.Journal`` (a read-only view: seek by time, seq or index, salvage) over
``journal.segments.SegmentReader`` (the one frame reader), and ``journal.holders`` for mapping intervals
and "who held it". This module parses what people type (RFC 3339 or epoch times, endpoints, protocols,
bounded numbers), prints what people read (tables and progress bars with ``rich``: colour and bars only on
a terminal; ``--json`` is plain JSON), and maps every error to one line and an exit code.

Exit codes (every tool's --help lists them):
    0  done (who: someone held it)
    1  a problem found (verify) or nothing found (who: nobody held it)
    2  bad usage, or no journal there
    3  the journal is damaged where the answer needs it (corrupt data, a sequence gap, an unknown state):
       nothing was answered; --salvage reads around it and says what it skipped
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from gw import inet
from gw.errors import GwError, UsageError
from journal.errors import JournalCorruptError, JournalError, JournalGapError
from journal.events import JournalEvent
from journal.reader import Journal
from journal.text import NS, PROTO_NAMES, format_endpoint, format_time, proto_name

__all__ = [
    "EXIT_DAMAGED",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "Parser",
    "Progress",
    "add_common_options",
    "emit_json",
    "event_type_name",
    "format_duration",
    "format_endpoint",
    "format_time",
    "parse_endpoint",
    "parse_port",
    "parse_proto",
    "parse_time",
    "port_arg",
    "print_table",
    "proto_name",
    "report_notes",
    "run_tool",
    "seconds_arg",
    "wrap",
]

EXIT_OK = 0
EXIT_PROBLEM = 1  # a problem found (verify), or nothing found (who)
EXIT_USAGE = 2  # bad command line, no journal there
EXIT_DAMAGED = 3  # corrupt data or a gap where the answer needs it: no answer (--salvage reads around it)

PROTO_NUMBERS = {name: number for number, name in PROTO_NAMES.items()}
HELP_WIDTH = 100  # --help paragraphs
PROGRESS_DELAY_S = 0.5  # a scan shorter than this shows no bar at all
PROGRESS_INTERVAL_S = 0.1  # redraw at most ten times a second


# ---------------------------------------------------------------------- times


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
_EPOCH = re.compile(r"(\d{1,12})(?:\.(\d{1,9}))?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}")
TIME_MIN_NS = 0  # 1970-01-01T00:00:00Z
TIME_MAX_NS = 253_402_300_800 * NS - 1  # 9999-12-31T23:59:59.999999999Z
_TIME_HELP = (
    "write RFC 3339 with a UTC offset (2026-11-23T10:02:17Z, 2026-11-23T11:02:17.25+01:00) "
    "or epoch seconds (1795000000.5)"
)


def parse_time(text: str) -> int:
    """RFC 3339 (with an offset, fractional seconds to ns) or epoch seconds -> ns since the epoch.

    Raises: UsageError naming the text and the accepted forms.
    """
    text = text.strip()
    if m := _EPOCH.fullmatch(text):
        return _in_range(text, int(m.group(1)) * NS + int((m.group(2) or "").ljust(9, "0") or 0))
    m = _RFC3339.fullmatch(text)
    if m is None:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?", text, re.ASCII):
            raise UsageError(f"bad time {text!r}: add a UTC offset, e.g. {text}Z")
        raise UsageError(f"bad time {text!r}: {_TIME_HELP}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac, offset = m.group(7) or "", m.group(8)
    try:
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
    except ValueError as exc:
        raise UsageError(f"bad time {text!r}: {exc}") from None
    shift = 0
    if offset not in ("Z", "z"):
        off_h, off_m = int(offset[1:3]), int(offset[4:6])
        if off_h > 23 or off_m > 59:
            raise UsageError(
                f"bad time {text!r}: UTC offset {offset} is not -23:59..+23:59 (write e.g. +01:00 or Z)"
            )
        shift = (1 if offset[0] == "+" else -1) * (off_h * 3600 + off_m * 60)
    seconds = int(when.timestamp()) - shift
    return _in_range(text, seconds * NS + int(frac.ljust(9, "0") or 0))


def _in_range(text: str, at_ns: int) -> int:
    """``at_ns`` if it lies in 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z; else UsageError."""
    if not TIME_MIN_NS <= at_ns <= TIME_MAX_NS:
        raise UsageError(
            f"bad time {text!r}: outside 1970-01-01T00:00:00Z..9999-12-31T23:59:59Z "
            f"(epoch seconds 0..{TIME_MAX_NS // NS})"
        )
    return at_ns


def format_duration(ns: int) -> str:
    """A duration for people: '850ms', '42s', '5m02s', '2h04m', '3d02h'."""
    if ns < NS:
        return f"{ns // 1_000_000}ms"
    s = ns // NS
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# ---------------------------------------------------------------------- endpoints and protocols


def parse_proto(text: str) -> int:
    """'udp' | 'tcp' | 'icmp' (or 17, 6, 1) -> IP protocol number. Raises UsageError."""
    name = text.strip().lower()
    if name in PROTO_NUMBERS:
        return PROTO_NUMBERS[name]
    if name.isascii() and name.isdigit() and int(name) in PROTO_NAMES:
        return int(name)
    raise UsageError(f"unknown protocol {text!r}: use udp, tcp or icmp")


def parse_endpoint(text: str) -> tuple[int, int, int | None]:
    """'198.51.100.2:40001[/udp]' -> (address, port, protocol or None). Raises UsageError."""
    rest, slash, proto_text = text.partition("/")
    addr_text, sep, port_text = rest.rpartition(":")
    hint = "write ADDR:PORT[/udp|tcp|icmp], e.g. 198.51.100.2:40001/udp (for ICMP the port is the echo id)"
    if not sep or not addr_text:
        raise UsageError(f"bad endpoint {text!r}: {hint}")
    try:
        addr = inet.aton(addr_text)
    except ValueError:
        raise UsageError(f"bad endpoint {text!r}: {addr_text!r} is not an IPv4 address; {hint}") from None
    try:
        port = parse_port(port_text)
    except ValueError:
        raise UsageError(f"bad endpoint {text!r}: port {port_text!r} is not 0-65535; {hint}") from None
    if slash and not proto_text:
        raise UsageError(f"bad endpoint {text!r}: nothing after '/'; {hint}")
    proto = parse_proto(proto_text) if slash else None
    return addr, port, proto


def parse_port(text: str) -> int:
    """'40001' -> 40001: ASCII digits, 0-65535. Raises ValueError."""
    if not _PORT.fullmatch(text) or int(text) > 65535:
        raise ValueError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def port_arg(text: str) -> int:
    """argparse ``type=`` for a port: 0-65535, ASCII digits."""
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def event_type_name(event: JournalEvent) -> str:
    """MappingCreated -> 'mapping_created' (the schema's class names, stable across versions)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


# ---------------------------------------------------------------------- output


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: IO[str]) -> None:
    """Rows as aligned columns under a header line (rich; bold headers only on a terminal, never wrapped)."""
    table = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for name in headers:
        table.add_column(str(name), no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*("-" if c is None else str(c) for c in row))
    if _is_terminal(out):
        Console(file=out, highlight=False, soft_wrap=True).print(table)
        return
    buf = io.StringIO()  # plain text for pipes and files: no styles, no width limit, no trailing blanks
    Console(file=buf, width=1 << 16, no_color=True, highlight=False, soft_wrap=True).print(table)
    out.write("".join(line.rstrip() + "\n" for line in buf.getvalue().splitlines()))


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def wrap(text: str) -> str:
    """A --help paragraph wrapped for a terminal (the raw formatter keeps the examples' layout)."""
    return textwrap.fill(text, HELP_WIDTH)


def emit_json(obj: Any, out: IO[str]) -> None:
    """One JSON document on one line."""
    out.write(json.dumps(obj, separators=(",", ":"), sort_keys=False) + "\n")


class Progress:
    """A rich progress bar on stderr for long scans: drawn only when enabled, after PROGRESS_DELAY_S, and
    removed when done (``transient``), so that output piped or redirected stays clean."""

    def __init__(self, label: str, total: int, enabled: bool, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._start = time.monotonic()
        self._last = 0.0
        self._bar: RichProgress | None = None
        self._task: Any = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._start < PROGRESS_DELAY_S or now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        if self._bar is None:
            console = Console(file=self.stream, force_terminal=True, highlight=False)  # --progress on a pipe too
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
                auto_refresh=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total)
        self._bar.update(self._task, completed=min(self.done, self.total))
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


# ---------------------------------------------------------------------- command line


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_common_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """--json, --salvage, --progress; accepted before or after the subcommand."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if sub else {}
    parser.add_argument("--json", action="store_true", help="machine output (see each command)", **default)
    parser.add_argument(
        "--salvage",
        action="store_true",
        help="read past corrupt regions and gaps, reporting each on stderr (never modifies the journal)",
        **default,
    )
    parser.add_argument(
        "--progress",
        action="store_true",
        help="show a progress bar on stderr even when it is not a terminal",
        **default,
    )


def progress_enabled(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "progress", False)) or sys.stderr.isatty()


def seconds_arg(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """argparse ``type=`` for a number of seconds in [low, high] ((low, high] with ``low_open``): finite,
    so nan, inf and 1e400 are refused with one line like any other bad value."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        below = value <= low if low_open else value < low
        if not math.isfinite(value) or below or value > high:
            bound = f"more than {low:g}" if low_open else f"{low:g} or more"
            raise argparse.ArgumentTypeError(f"{text!r}: give a finite number of seconds, {bound}, at most {high:g}")
        return value

    return parse


def report_notes(prog: str, journal: Journal) -> None:
    """Print what reading the journal noticed (torn tails, skipped regions, unknown start states) on stderr."""
    for note in journal.notes:
        sys.stderr.write(f"{prog}: note: {note}\n")


def run_tool(prog: str, parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, run ``args.func(args)`` and map every error to one line on stderr and an exit code."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except BrokenPipeError:  # `gw-replay ... | head`: the reader left; say nothing
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except JournalCorruptError as exc:
        sys.stderr.write(
            f"{prog}: {exc.path}: corrupt journal data at byte {exc.offset}: {exc.detail}; "
            f"{exc.hint.replace('read around it with salvage mode', 'rerun with --salvage to read around it')}\n"
        )
        return EXIT_DAMAGED
    except JournalGapError as exc:
        text = str(exc).replace("read with salvage mode", "rerun with --salvage")
        sys.stderr.write(f"{prog}: {text}\n")
        return EXIT_DAMAGED
    except (GwError, JournalError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"{prog}: {where}{exc.strerror or exc}\n")
        return EXIT_USAGE

