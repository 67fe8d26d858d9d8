"""Shared plumbing for gw-replay and gw-audit: a read-only journal view, times, endpoints and output.

Theory of operation
-------------------
The tools never write to a journal. ``Journal`` lists segments and snapshots by name, reads frames with
``journal.frames`` (skipping frames outside a time window by their headers, without decompressing
them), checks that seq grows by exactly one across the frames it reads, and turns bad data into either
an error (strict, the default) or a ``Note`` (``--salvage``), as ``journal.segments.SegmentReader`` does.
A torn tail at the end of the newest segment is a note, left in place. An empty segment (a torn first
frame cut to nothing by recovery) is clean and holds no frames. Per-segment audit indexes
(``journal.index``) are read when the writer left a current one next to the segment, else built in
memory and kept for the life of the process; nothing is ever written into the journal directory (only
``gw-audit DIR reindex`` writes, and only ``.idx`` files).

Time and seq: segments are found by time through the ``min_at_ns`` of their first frame header (one
48-byte read each, binary search). That assumes the wall clock grows with seq, as the gateway writes
it; a clock stepped backwards makes window selection approximate, never the events themselves.

"State at T" is the fold stopped at T: the newest snapshot taken at or before T, then every later event
with ``at_ns <= T`` (``Journal.start_point``). ``Tracker`` follows mapping intervals and sessions
through events for the audit commands: a ``MappingCreated`` opens an interval ``[created, expired)`` on
its external endpoint and the ``MappingExpired`` naming that endpoint closes it. It allocates nothing
and decides nothing; the table itself is ``gw.nat.Nat.apply``'s (``gw-replay state``).

Exit codes: 0 done, 1 a problem found or nothing found (``who``), 2 bad usage or no journal there.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import json
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from gw import inet
from gw.errors import GwError, UsageError
from journal.errors import CorruptFrame, JournalCorruptError, JournalError, JournalGapError, TornFrame
from journal.events import (
    JournalEvent,
    MappingCreated,
    MappingExpired,
    SessionClosed,
    SessionOpened,
    Snapshot,
)
from journal.frames import (
    FRAME_HEADER_LEN,
    FrameHeader,
    decode_frame,
    decode_header,
    new_decompressor,
    next_frame_offset,
)
from journal.index import SegmentIndex, load_or_build_index
from journal.segments import SEGMENT_RE, Note, SnapshotInfo, list_snapshots, read_snapshot

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "Journal",
    "MappingRecord",
    "Parser",
    "Progress",
    "Tracker",
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
    "segment_index",
    "wrap",
]

EXIT_OK = 0
EXIT_PROBLEM = 1  # a problem found, or nothing found (who)
EXIT_USAGE = 2  # bad command line, no journal there

NS = 1_000_000_000
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}  # IP protocol numbers (IANA) the NAT maps
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


def format_time(at_ns: int | None) -> str:
    """ns since the epoch -> '2026-11-23T10:02:17.123Z' (UTC, milliseconds); '-' for None.

    Raises nothing: a time a datetime cannot hold (before year 1, after 9999) comes out as '<n>ns'.
    """
    if at_ns is None:
        return "-"
    seconds, rest = divmod(at_ns, NS)
    try:
        when = _EPOCH_DT + dt.timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return f"{at_ns}ns"
    return f"{when:%Y-%m-%dT%H:%M:%S}.{rest // 1_000_000:03d}Z"


_EPOCH_DT = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


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


def proto_name(proto: int) -> str:
    return PROTO_NAMES.get(proto, str(proto))


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


def format_endpoint(addr: int, port: int, proto: int | None = None) -> str:
    """'198.51.100.2:40001' or, with a protocol, '198.51.100.2:40001/udp'."""
    text = inet.format_endpoint(addr, port)
    return text if proto is None else f"{text}/{proto_name(proto)}"


def event_type_name(event: JournalEvent) -> str:
    """MappingCreated -> 'mapping_created' (the schema's class names, stable across versions)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


# ---------------------------------------------------------------------- output


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], out: IO[str]) -> None:
    """Rows as aligned columns under a header line."""
    cells = [[str(c) for c in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for r in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n")


def wrap(text: str) -> str:
    """A --help paragraph wrapped for a terminal (the raw formatter keeps the examples' layout)."""
    return textwrap.fill(text, HELP_WIDTH)


def emit_json(obj: Any, out: IO[str]) -> None:
    """One JSON document on one line."""
    out.write(json.dumps(obj, separators=(",", ":"), sort_keys=False) + "\n")


class Progress:
    """A progress bar on stderr for long scans: drawn only when enabled, after PROGRESS_DELAY_S."""

    def __init__(self, label: str, total: int, enabled: bool, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._start = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._start < PROGRESS_DELAY_S or now - self._last < PROGRESS_INTERVAL_S:
            return
        self._last = now
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {self.done}/{self.total}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * (len(self.label) + 50) + "\r")
            self.stream.flush()
            self._drawn = False


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
            "rerun with --salvage to read around it\n"
        )
        return EXIT_PROBLEM
    except JournalGapError as exc:
        text = str(exc).replace("read with salvage mode", "rerun with --salvage")
        sys.stderr.write(f"{prog}: {text}\n")
        return EXIT_PROBLEM
    except (GwError, JournalError) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"{prog}: {where}{exc.strerror or exc}\n")
        return EXIT_USAGE


# ---------------------------------------------------------------------- the journal, read-only


class Chunk(NamedTuple):
    """A piece of a segment to decode on its own: one frame (``header``), or the whole segment (None)."""

    first_seq: int
    last_seq: int
    min_at_ns: int
    max_at_ns: int
    header: FrameHeader | None


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """A segment file and the seq its name says it starts at."""

    first_seq: int
    path: Path


class Journal:
    """A read-only view of a journal directory (see the module doc).

    Raises (strict mode, from the reading methods): JournalCorruptError, JournalGapError; OSError for
    unreadable files. With ``salvage`` nothing is raised for bad data; ``notes`` says what was skipped.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        salvage: bool = False,
        progress: bool = False,
    ) -> None:
        path = Path(directory)
        if not path.exists():
            raise UsageError(f"{path}: no such journal directory")
        if not path.is_dir():
            raise UsageError(
                f"{path}: not a directory; give the journal directory (gateway.toml [journal] dir)"
            )
        try:
            names = os.listdir(path)
        except PermissionError:
            raise UsageError(f"{path}: cannot read this journal directory (permission denied)") from None
        self.directory = path
        self.salvage = salvage
        self.progress = progress
        self.segments = sorted(
            (SegmentRef(int(m.group(1)), path / n) for n in names if (m := SEGMENT_RE.match(n))),
            key=lambda s: s.first_seq,
        )
        self._seg_seqs = [s.first_seq for s in self.segments]
        self.snapshots: list[SnapshotInfo] = list_snapshots(path)
        if not self.segments and not self.snapshots:
            raise UsageError(f"{path}: holds no journal (no seg-*.gwj or snap-*.gws files)")
        self.notes: list[Note] = []
        self._noted: set[tuple[str, str, int]] = set()
        self._dctx = new_decompressor()
        self._first_at: dict[int, int | None] = {}
        self._headers: dict[int, list[FrameHeader]] = {}
        self._clean: dict[int, bool] = {}  # segment i is whole frames with consecutive seqs, nothing else
        self._chunks: dict[int, list[Chunk]] = {}
        self._frames: dict[tuple[int, int], list[JournalEvent]] = {}
        self._decoded: dict[int, list[JournalEvent]] = {}
        self._indexes: dict[int, SegmentIndex] = {}
        self._snaps: dict[int, Snapshot | None] = {}
        self._expected: int | None = None  # next seq the continuity check wants

    # -- notes ---------------------------------------------------------------------------------------

    def note(self, kind: str, path: Path | str, offset: int, size: int, detail: str) -> None:
        """Record something handled (a torn tail, a skipped region, a gap) once."""
        key = (kind, str(path), offset)
        if key not in self._noted:
            self._noted.add(key)
            self.notes.append(Note(kind, str(path), offset, size, detail))

    def _bad(self, error: JournalError, kind: str, path: Path, offset: int, detail: str) -> None:
        if not self.salvage:
            raise error
        self.note(kind, path, offset, 0, detail)

    # -- finding segments ----------------------------------------------------------------------------

    def first_at(self, i: int) -> int | None:
        """min_at_ns of segment i's first frame (one header read), None if it has no valid first frame."""
        if i not in self._first_at:
            at = None
            try:
                with open(self.segments[i].path, "rb") as f:
                    at = decode_header(f.read(FRAME_HEADER_LEN), 0).min_at_ns
            except (TornFrame, CorruptFrame, OSError):
                pass
            self._first_at[i] = at
        return self._first_at[i]

    def _time_key(self, i: int) -> int:
        """first_at(i), or that of the nearest earlier segment that has one (for the binary search)."""
        while i >= 0:
            at = self.first_at(i)
            if at is not None:
                return at
            i -= 1
        return -(1 << 63)

    def segment_for_time(self, at_ns: int, *, strict: bool = False) -> int:
        """Index of the last segment whose first event is at or before ``at_ns`` (before it if ``strict``);
        -1 if there is none."""
        lo, hi = 0, len(self.segments)
        while lo < hi:
            mid = (lo + hi) // 2
            key = self._time_key(mid)
            if key < at_ns or (key == at_ns and not strict):
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def segment_for_seq(self, seq: int) -> int:
        """Index of the segment that holds ``seq`` by name (-1 if it is before the oldest segment)."""
        return bisect.bisect_right(self._seg_seqs, seq) - 1

    def seq_end(self, i: int) -> int:
        """One past the last seq segment i can hold (the next segment's first seq), or a huge number."""
        return self.segments[i + 1].first_seq if i + 1 < len(self.segments) else 1 << 62

    def frame_headers(self, i: int) -> list[FrameHeader]:
        """Segment i's whole frame headers, read with pread (nothing decompressed); stops at bad data."""
        if i not in self._headers:
            found = []
            seg = self.segments[i]
            fd = os.open(seg.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                size, offset = os.fstat(fd).st_size, 0
                while offset < size:
                    try:
                        h = decode_header(os.pread(fd, FRAME_HEADER_LEN, offset), 0)
                    except (TornFrame, CorruptFrame):
                        break
                    h = h._replace(offset=offset, end=offset + h.end)
                    if h.end > size:
                        break
                    found.append(h)
                    offset = h.end
            finally:
                os.close(fd)
            self._headers[i] = found
            clean, expected = offset == size, seg.first_seq  # an empty segment is clean, with no frames
            for h in found:
                if not clean or h.first_seq != expected:
                    clean = False
                    break
                expected = h.last_seq + 1
            self._clean[i] = clean
        return self._headers[i]

    def chunks(self, i: int) -> list[Chunk]:
        """Segment i in pieces to decode one at a time: its frames when the whole file is whole frames
        with consecutive seqs, else one piece read through ``segment_frames`` (which notes or raises)."""
        if i not in self._chunks:
            headers = self.frame_headers(i)
            if self._clean[i]:
                self._chunks[i] = [
                    Chunk(h.first_seq, h.last_seq, h.min_at_ns, h.max_at_ns, h) for h in headers
                ]
            else:
                evs = self.segment_events(i)
                ats = [e.at_ns for e in evs]
                self._chunks[i] = [Chunk(evs[0].seq, evs[-1].seq, min(ats), max(ats), None)] if evs else []
        return self._chunks[i]

    def chunk_events(self, i: int, n: int) -> list[JournalEvent]:
        """The events of piece n of segment i (decoded once, cached)."""
        piece = self.chunks(i)[n]
        if piece.header is None:
            return self.segment_events(i)
        if (i, n) not in self._frames:
            h = piece.header
            path = self.segments[i].path
            with open(path, "rb") as f:
                f.seek(h.offset)
                buf = f.read(h.end - h.offset)
            try:
                events = decode_frame(buf, 0, self._dctx)[0]
            except (TornFrame, CorruptFrame) as exc:
                if not self.salvage:
                    raise JournalCorruptError(path, h.offset, exc.detail) from None
                self.note(
                    "skipped",
                    path,
                    h.offset,
                    h.end - h.offset,
                    f"skipped {h.end - h.offset} bytes at offset {h.offset}: {exc.detail}",
                )
                events = []
            self._frames[(i, n)] = events
        return self._frames[(i, n)]

    def index(self, i: int) -> SegmentIndex:
        """Segment i's audit index (journal.index): the writer's ``.idx`` if current, else built in memory."""
        if i not in self._indexes:
            self._indexes[i] = segment_index(self.segments[i].path)
        return self._indexes[i]

    # -- reading frames ------------------------------------------------------------------------------

    def segment_frames(
        self,
        i: int,
        *,
        since: int | None = None,
        until: int | None = None,
        start_seq: int | None = None,
    ) -> Iterator[tuple[FrameHeader, list[JournalEvent]]]:
        """Decoded frames of segment i holding events in the window; other frames skipped by header.

        Checks seq continuity against the previous frame read (``self._expected``; set it to None to
        start afresh). Events are filtered to the window.
        """
        seg = self.segments[i]
        buf = seg.path.read_bytes()
        size, offset = len(buf), 0
        newest = i == len(self.segments) - 1
        lo = -(1 << 63) if since is None else since
        hi = (1 << 63) - 1 if until is None else until
        first = True
        while offset < size:
            try:
                h = decode_header(buf, offset)
                if h.end > size:
                    raise TornFrame(
                        offset, f"file ends {size - offset} bytes into a frame of {h.end - offset} bytes"
                    )
                skip = (
                    h.max_at_ns < lo or h.min_at_ns > hi or (start_seq is not None and h.last_seq < start_seq)
                )
                events = None if skip else decode_frame(buf, offset, self._dctx)[0]
            except (TornFrame, CorruptFrame) as exc:
                resume = self._bad_frame(seg.path, buf, offset, exc, newest)
                if resume is None:
                    break
                offset = resume
                continue
            if first and h.first_seq != seg.first_seq:
                self._bad(
                    JournalCorruptError(
                        seg.path,
                        offset,
                        f"segment is named for seq {seg.first_seq} but "
                        f"its first frame holds seq {h.first_seq}",
                    ),
                    "skipped",
                    seg.path,
                    offset,
                    f"segment is named for seq {seg.first_seq} but its first frame holds seq {h.first_seq}",
                )
            first = False
            if self._expected is not None and h.first_seq != self._expected:
                self._bad(
                    JournalGapError(seg.path, offset, self._expected, h.first_seq),
                    "gap",
                    seg.path,
                    offset,
                    f"sequence gap at offset {offset}: expected seq {self._expected}, found {h.first_seq}",
                )
            self._expected = h.last_seq + 1
            offset = h.end
            if events is None:
                continue
            if h.min_at_ns < lo or h.max_at_ns > hi or (start_seq is not None and h.first_seq < start_seq):
                events = [
                    e for e in events if lo <= e.at_ns <= hi and (start_seq is None or e.seq >= start_seq)
                ]
                if not events:
                    continue
            yield h, events

    def _bad_frame(self, path: Path, buf: bytes, offset: int, exc: Exception, newest: bool) -> int | None:
        """A torn or corrupt frame at ``offset``: note or raise; return where to resume (None: stop)."""
        detail = getattr(exc, "detail", str(exc))
        if next_frame_offset(buf, offset + 1) is None and newest:
            cut = len(buf) - offset
            self.note(
                "torn_tail",
                path,
                offset,
                cut,
                f"torn tail of {cut} bytes at offset {offset} left in place ({detail})",
            )
            return None
        if not self.salvage:
            if isinstance(exc, TornFrame):
                detail = f"torn frame in a segment that is not the newest ({detail})"
            raise JournalCorruptError(path, offset, detail)
        resume = next_frame_offset(buf, offset + 1, whole=True, dctx=self._dctx)
        end = len(buf) if resume is None else resume
        self.note(
            "skipped",
            path,
            offset,
            end - offset,
            f"skipped {end - offset} bytes at offset {offset}: {detail}",
        )
        self._expected = None  # the skipped bytes held unknown seqs; the next frame sets the pace again
        return resume

    def segment_events(self, i: int) -> list[JournalEvent]:
        """Every event of segment i, decoded once and cached (the seq check is within the segment)."""
        if i not in self._decoded:
            saved, self._expected = self._expected, None
            try:
                self._decoded[i] = [e for _, evs in self.segment_frames(i) for e in evs]
            finally:
                self._expected = saved
        return self._decoded[i]

    def events(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        start_seq: int | None = None,
        progress: Progress | None = None,
    ) -> Iterator[JournalEvent]:
        """Events with seq >= start_seq and since <= at_ns <= until, in seq order, seq continuity checked.

        Segments wholly outside the window are not opened (their first frame header bounds them).
        """
        if not self.segments:
            return
        i0 = 0
        if start_seq is not None:
            if start_seq < self.segments[0].first_seq:
                first = self.segments[0].first_seq
                self._bad(
                    JournalGapError(
                        self.segments[0].path,
                        0,
                        start_seq,
                        first,
                        f"events from seq {start_seq} are needed but the oldest segment starts at "
                        f"seq {first} (events {start_seq}..{first - 1} are missing)",
                    ),
                    "gap",
                    self.segments[0].path,
                    0,
                    f"events {start_seq}..{first - 1} are missing (older segments removed?)",
                )
            i0 = max(self.segment_for_seq(start_seq), 0)
        if since is not None:
            i0 = max(i0, self.segment_for_time(since, strict=True), 0)
        self._expected = None
        for i in range(i0, len(self.segments)):
            if until is not None and i > i0 and (at := self.first_at(i)) is not None and at > until:
                break
            yield from (
                e
                for _, evs in self.segment_frames(i, since=since, until=until, start_seq=start_seq)
                for e in evs
            )
            if progress is not None:
                progress.advance()

    # -- snapshots -----------------------------------------------------------------------------------

    def snapshot(self, info: SnapshotInfo) -> Snapshot | None:
        """A snapshot file, read and checked once; None (and a note) if it is corrupt."""
        if info.upto_seq not in self._snaps:
            try:
                self._snaps[info.upto_seq] = read_snapshot(info.path)
            except JournalCorruptError as exc:
                self.note(
                    "bad_snapshot", info.path, exc.offset, 0, f"{exc.detail}; ignored, using an older one"
                )
                self._snaps[info.upto_seq] = None
        return self._snaps[info.upto_seq]

    def seq_bound(self, at_ns: int) -> int:
        """A seq such that every event from it on is after ``at_ns`` (frame headers only)."""
        k = self.segment_for_time(at_ns)
        if k < 0:
            return self.segments[0].first_seq if self.segments else 1 << 62
        for h in self.frame_headers(k):
            if h.min_at_ns > at_ns:
                return h.first_seq
        return self.seq_end(k)

    def known_start(self, at_ns: int) -> tuple[Snapshot | None, int] | None:
        """Where a fold that knows the whole state at ``at_ns`` starts: the newest whole snapshot taken at
        or before it (None: the start of the journal) and the first seq to fold after it; None when the
        state there cannot be known (older events removed, or only later snapshots). Notes nothing."""
        bound = self.seq_bound(at_ns)
        oldest = self.segments[0].first_seq if self.segments else 1
        for info in reversed(self.snapshots):
            if info.upto_seq >= bound or info.upto_seq + 1 < oldest:
                continue
            snap = self.snapshot(info)
            if snap is not None and snap.at_ns <= at_ns:
                return snap, snap.upto_seq + 1
        if not self.segments and self.snapshots:  # a journal of snapshots only
            for info in reversed(self.snapshots):
                snap = self.snapshot(info)
                if snap is not None and snap.at_ns <= at_ns:
                    return snap, snap.upto_seq + 1
            return None
        return (None, 1) if oldest == 1 else None

    def start_point(self, at_ns: int, *, partial: bool = False) -> tuple[Snapshot | None, int]:
        """Where the fold for "state at at_ns" starts: the newest whole snapshot taken at or before it
        (None: the start of the journal) and the first seq to fold after it.

        When older segments were removed (retention) and no snapshot is that old, the state cannot be
        known: with ``partial`` (or salvage) the fold starts at the oldest segment and a note says what
        is missing; otherwise JournalGapError. A journal of snapshots only, all taken after ``at_ns``,
        starts empty with a note.
        """
        found = self.known_start(at_ns)
        if found is not None:
            return found
        oldest = self.segments[0].first_seq if self.segments else 1
        if not self.segments:
            first = self.snapshots[0]
            self.note(
                "gap",
                first.path,
                0,
                0,
                f"state before {format_time(self.snapshot_at(first))} is not known: the journal holds only "
                f"snapshots and none was taken at or before {format_time(at_ns)}",
            )
            return None, 1
        if oldest > 1:
            path = self.segments[0].path
            usable = [i for i in self.snapshots if i.upto_seq + 1 >= oldest]
            hint = f"; the oldest snapshot is {usable[0].path.name}" if usable else ""
            if not (partial or self.salvage):
                raise JournalGapError(
                    path,
                    0,
                    1,
                    oldest,
                    f"the state at {format_time(at_ns)} needs events 1..{oldest - 1}, which were removed "
                    f"(retention){hint}; ask about a later time",
                )
            self.note(
                "gap",
                path,
                0,
                0,
                f"events 1..{oldest - 1} were removed (retention): mappings created "
                f"before seq {oldest} are not known here{hint}",
            )
            return None, oldest
        return None, 1  # not reached: known_start answers every journal that starts at seq 1

    def snapshot_at(self, info: SnapshotInfo) -> int | None:
        """When a snapshot was taken (None if it is unreadable)."""
        snap = self.snapshot(info)
        return None if snap is None else snap.at_ns


_INDEXES: dict[tuple[str, int, int], SegmentIndex] = {}  # (path, size, mtime) -> index, for this process


def segment_index(path: Path) -> SegmentIndex:
    """A segment's audit index: its ``.idx`` file when current, else built in memory (never written);
    cached for the process by path, size and mtime."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    index = _INDEXES.get(key)
    if index is None:
        index = _INDEXES[key] = load_or_build_index(path, write=False)
    return index


# ---------------------------------------------------------------------- mapping intervals


@dataclass(slots=True)
class MappingRecord:
    """One mapping's life: who held which external endpoint over [created_ns, end_ns)."""

    proto: int
    int_addr: int
    int_port: int
    ext_addr: int
    ext_port: int
    client: str
    session: int
    created_ns: int
    created_seq: int  # 0 when the mapping came from a snapshot
    remote_addr: int = 0  # first destination, when destination logging is on
    remote_port: int = 0
    end_ns: int | None = None
    end_seq: int | None = None
    end_reason: str | None = None
    packets_out: int | None = None
    bytes_out: int | None = None
    packets_in: int | None = None
    bytes_in: int | None = None

    @property
    def ext_key(self) -> int:
        return self.proto << 48 | self.ext_addr << 16 | self.ext_port

    def overlaps(self, since: int, until: int) -> bool:
        """Whether [created, end) meets the closed window [since, until]."""
        return self.created_ns <= until and (self.end_ns is None or self.end_ns > since)

    def close(self, ev: MappingExpired | MappingCreated, reason: str) -> None:
        self.end_ns, self.end_seq, self.end_reason = ev.at_ns, ev.seq, reason
        if type(ev) is MappingExpired:
            self.packets_out, self.bytes_out = ev.packets_out, ev.bytes_out
            self.packets_in, self.bytes_in = ev.packets_in, ev.bytes_in


def record_from_created(ev: MappingCreated) -> MappingRecord:
    return MappingRecord(
        ev.proto,
        ev.int_addr,
        ev.int_port,
        ev.ext_addr,
        ev.ext_port,
        ev.client,
        ev.session,
        ev.at_ns,
        ev.seq,
        ev.remote_addr,
        ev.remote_port,
    )


def records_from_snapshot(snap: Snapshot) -> list[MappingRecord]:
    """The live mappings of a snapshot as records; client names from its column or its sessions.

    Destinations are left out: a snapshot's remote columns hold the filtering state, which is written
    whether or not the operator asked for destination logging.
    """
    names = {s.session: s.client for s in snap.sessions}
    has_client = len(snap.client) == len(snap.proto)
    out = []
    for i in range(len(snap.proto)):
        client = snap.client[i] if has_client and snap.client[i] else names.get(snap.session[i], "")
        out.append(
            MappingRecord(
                snap.proto[i],
                snap.int_addr[i],
                snap.int_port[i],
                snap.ext_addr[i],
                snap.ext_port[i],
                client,
                snap.session[i],
                snap.created_ns[i],
                0,
            )
        )
    return out


@dataclass
class Tracker:
    """Mapping intervals and sessions followed through events (see the module doc)."""

    live: dict[int, MappingRecord] = field(default_factory=dict)  # ext flow key -> open record
    by_int: dict[int, int] = field(default_factory=dict)  # int flow key -> ext flow key
    sessions: dict[int, SessionOpened] = field(default_factory=dict)  # every session seen
    closed_sessions: dict[int, SessionClosed] = field(default_factory=dict)
    on_open: Callable[[MappingRecord], None] | None = None

    def seed(self, snap: Snapshot | None) -> None:
        """Start from a snapshot's live mappings and open sessions."""
        if snap is None:
            return
        for s in snap.sessions:
            self.sessions[s.session] = s
        for rec in records_from_snapshot(snap):
            self._open(rec)

    def merge(self, snap: Snapshot) -> None:
        """Add what a snapshot knows and this tracker does not (it started where the state was unknown):
        its live mappings on endpoints not held here, and its sessions."""
        for s in snap.sessions:
            self.sessions.setdefault(s.session, s)
        for rec in records_from_snapshot(snap):
            if rec.ext_key not in self.live:
                self._open(rec)

    def _open(self, rec: MappingRecord) -> None:
        self.live[rec.ext_key] = rec
        self.by_int[rec.proto << 48 | rec.int_addr << 16 | rec.int_port] = rec.ext_key
        if self.on_open is not None:
            self.on_open(rec)

    def _end(self, ext_key: int, ev: MappingExpired | MappingCreated, reason: str) -> MappingRecord | None:
        rec = self.live.pop(ext_key, None)
        if rec is None:
            return None
        int_key = rec.proto << 48 | rec.int_addr << 16 | rec.int_port
        if self.by_int.get(int_key) == ext_key:
            del self.by_int[int_key]
        rec.close(ev, reason)
        return rec

    def apply(self, ev: JournalEvent) -> list[MappingRecord]:
        """Follow one event; return the records it closed (usually none or one)."""
        t = type(ev)
        if t is MappingExpired:
            rec = self._end(ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port, ev, ev.reason)
            return [] if rec is None else [rec]
        if t is MappingCreated:
            closed = []
            ext_key = ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port
            old_ext = self.by_int.get(ev.proto << 48 | ev.int_addr << 16 | ev.int_port)
            for key in (ext_key, old_ext):  # neither happens in a valid journal; keep intervals disjoint
                if key is not None and (rec := self._end(key, ev, "replaced")) is not None:
                    closed.append(rec)
            self._open(record_from_created(ev))
            return closed
        if t is SessionOpened:
            self.sessions[ev.session] = ev
        elif t is SessionClosed:
            self.closed_sessions[ev.session] = ev
        return []
