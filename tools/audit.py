"""gw-audit: answer abuse-desk questions from the journal, read-only.

Theory of operation
-------------------
A mapping holds its external endpoint over ``[created, expired)``: from its ``MappingCreated`` up to,
not including, the instant of its ``MappingExpired``.

``who ADDR:PORT[/proto] --at T`` is ``journal.holders.find_holders`` (see there: it does not scan the
journal, it walks back by segment index and checks the continuity of every segment it relies on), printed.

``client`` and ``export`` start from the state at the window's start (snapshot + fold, see
``tools.common``), follow mapping intervals through the window, and then read on only until the
mappings still held at the window's end have ended, so every record has its real end. When the state
at the window's start cannot be known (older segments removed, or only later snapshots), they read from
the oldest segment, merge in the first snapshot taken inside the window once the read passes it, and
say so in a note ("state before T is not known: ...").

Every command is read-only except ``reindex``, which writes the per-segment ``.idx`` audit indexes
(and nothing else) for journals written before the gateway's writer did so itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from gw import inet
from gw.errors import UsageError
from journal.errors import JournalCorruptError
from journal.events import SessionClosed, SessionOpened, Snapshot
from journal.holders import Holding, MappingRecord, Tracker, describe, destination, find_holders
from journal.index import build_index, index_path, is_current, read_index, remove_stale_index_tmp, write_index
from journal.reader import Journal
from journal.segments import SegmentReader
from tools.common import (
    EXIT_DAMAGED,
    EXIT_OK,
    EXIT_PROBLEM,
    Parser,
    Progress,
    add_common_options,
    emit_json,
    format_endpoint,
    format_time,
    parse_endpoint,
    parse_time,
    print_table,
    progress_enabled,
    proto_name,
    report_notes,
    run_tool,
    wrap,
)

__all__ = ["EXPORT_FIELDS", "main", "mappings_in_window"]

PROG = "gw-audit"

# RFC 8158 / IANA IPFIX natEvent values for one mapping (a NAT44 BIB entry: endpoint-independent mapping)
NAT_EVENT_BIB_CREATE = 8  # NAT44 BIB create: the mapping is still held when the export ends
NAT_EVENT_BIB_DELETE = 9  # NAT44 BIB delete: the record carries the whole life, start to end

# Export columns: IANA IPFIX information element names where one exists (element id in the comment),
# then gw's own names.
EXPORT_FIELDS = (
    "flowStartMilliseconds",  # 152: mapping created, ms since the epoch
    "flowEndMilliseconds",  # 153: mapping ended (empty: still held)
    "natEvent",  # 230: 8 NAT44 BIB create (still held) / 9 NAT44 BIB delete (ended), RFC 8158
    "protocolIdentifier",  # 4: 17 UDP, 6 TCP, 1 ICMP
    "sourceIPv4Address",  # 8: the client's VPN address
    "sourceTransportPort",  # 7: its source port (ICMP: echo identifier)
    "postNATSourceIPv4Address",  # 225: the public address
    "postNAPTSourceTransportPort",  # 227: the public port (ICMP: identifier)
    "destinationIPv4Address",  # 12: first destination, only when destination logging is on
    "destinationTransportPort",  # 11
    "initiatorPackets",  # 298: client to internet
    "initiatorOctets",  # 231
    "responderPackets",  # 299: internet to client
    "responderOctets",  # 232
    "client",  # gw: the client's configured name
    "session",  # gw: the gateway's session number
    "fingerprint",  # gw: sha256 of the client's certificate (from its SessionOpened)
    "end_reason",  # gw: idle | tcp_closed | session_closed | stale_at_recovery | shutdown | still_held
)
IPFIX_FIELDS = EXPORT_FIELDS[:14]


# ---------------------------------------------------------------------- who


def _holding_json(h: Holding) -> dict[str, Any]:
    r, s = h.record, h.session
    return {
        "proto": proto_name(r.proto),
        "external": format_endpoint(r.ext_addr, r.ext_port),
        "client": r.client or None,
        "fingerprint": s.fingerprint if s else None,
        "internal": format_endpoint(r.int_addr, r.int_port),
        "session": r.session or None,
        "session_opened": format_time(s.at_ns) if s else None,
        "session_from": f"{s.remote_addr}:{s.remote_port}" if s else None,
        "start": format_time(r.created_ns),
        "start_ns": r.created_ns,
        "end": format_time(r.end_ns) if r.end_ns is not None else None,
        "end_ns": r.end_ns,
        "end_reason": r.end_reason,
        "still_held": r.end_ns is None,
        "destination": destination(r),
        "source": h.source,
        "source_note": h.source_note,
    }


def cmd_who(args: argparse.Namespace) -> int:
    addr, port, proto = parse_endpoint(args.endpoint)
    at_ns = parse_time(args.at)
    j = _open(args)
    holders = find_holders(j, addr, port, proto, at_ns)
    report_notes(PROG, j)
    what = (
        format_endpoint(addr, port, proto)
        if proto is not None
        else (f"{format_endpoint(addr, port)} (udp, tcp or icmp)")
    )
    if args.json:
        emit_json(
            {
                "query": {
                    "endpoint": format_endpoint(addr, port),
                    "proto": proto_name(proto) if proto else None,
                    "at": format_time(at_ns),
                    "at_ns": at_ns,
                },
                "held": bool(holders),
                "holders": [_holding_json(h) for h in holders],
                "notes": [str(n) for n in j.notes],
            },
            sys.stdout,
        )
    elif not holders:
        sys.stdout.write(f"nobody held {what} at {format_time(at_ns)}\n")
    else:
        for n, h in enumerate(holders):
            if n:
                sys.stdout.write("\n")
            sys.stdout.write("".join(line + "\n" for line in describe(h, at_ns)))
    return EXIT_OK if holders else EXIT_PROBLEM


# ---------------------------------------------------------------------- windows: client, export


class WindowScan:
    """Mapping records overlapping [since, until], each with its real end (see the module doc)."""

    def __init__(
        self,
        journal: Journal,
        since: int,
        until: int,
        match: Callable[[MappingRecord], bool] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.journal = journal
        self.since = since
        self.until = until
        self.match = match or (lambda r: True)
        self.progress = progress
        self.tracker = Tracker()
        self.last_at_ns: int | None = None  # the last event read
        self.wait_sessions: Callable[[SessionOpened], bool] | None = None  # also read on until these close

    def _start(self) -> tuple[int, Snapshot | None]:
        """Seed the tracker with the state at ``since`` when it can be known; return the first seq to read
        and, when it cannot, the snapshot inside the window to merge in once the read reaches it (the
        state is known from then on). Either way an unknown start state gets a note."""
        j = self.journal
        found = j.known_start(self.since)
        if found is not None:
            self.tracker.seed(found[0])
            return found[1], None
        oldest = j.segments[0].first_seq if j.segments else None
        later = None  # the first readable snapshot inside the window with every event after it retained
        for info in j.snapshots:
            if oldest is not None and info.upto_seq + 1 < oldest:
                continue
            at = j.snapshot_at(info)
            if at is not None and self.since < at <= self.until:
                later = info
                break
        since_text = format_time(self.since)
        if oldest is not None:
            why = (
                f"events 1..{oldest - 1} were removed (retention) and no snapshot taken at or before "
                f"{since_text} covers them"
            )
        else:
            why = f"the journal holds only snapshots and none was taken at or before {since_text}"
        if later is not None:
            when = format_time(j.snapshot_at(later))
            what = f"mappings are known from {later.path.name} on"
        elif oldest is not None:
            when = format_time(self.until)
            what = f"mappings created before seq {oldest} and still held in the window are missing"
        else:
            when = format_time(self.until)
            what = "no mapping in the window can be known"
        where = later.path if later is not None else (j.segments[0].path if j.segments else j.directory)
        j.note("unknown_state", where, 0, 0, f"state before {when} is not known: {why}; {what}")
        merge = j.snapshot(later) if later is not None else None
        return (oldest if oldest is not None else 1), merge

    def records(self) -> Iterator[MappingRecord]:
        """Records as their mappings end, then those still held at the end of the journal (by creation)."""
        j, tracker, match = self.journal, self.tracker, self.match
        since, until = self.since, self.until
        start, merge = self._start()
        pending: set[int] | None = None  # after `until`: the endpoints whose end we still wait for
        sessions: set[int] = set()  # and the sessions
        for ev in j.events(start_seq=start, progress=self.progress.advance if self.progress else None):
            if merge is not None and ev.seq > merge.upto_seq:
                tracker.merge(merge)
                merge = None
            self.last_at_ns = ev.at_ns
            if pending is None and ev.at_ns > until:
                pending = {k for k, r in tracker.live.items() if r.created_ns <= until and match(r)}
                if self.wait_sessions is not None:
                    sessions = {
                        n
                        for n, s in tracker.sessions.items()
                        if n not in tracker.closed_sessions and self.wait_sessions(s)
                    }
            if pending is not None:
                if not pending and not sessions:
                    break
                if type(ev) is SessionClosed:
                    sessions.discard(ev.session)
                for rec in tracker.apply(ev):
                    if rec.ext_key in pending:
                        pending.discard(rec.ext_key)
                        yield rec
                continue
            for rec in tracker.apply(ev):
                if rec.overlaps(since, until) and match(rec):
                    yield rec
        if merge is not None:  # the read ended before the snapshot's last event (or there are no events)
            tracker.merge(merge)
        if pending is None:
            pending = {k for k, r in tracker.live.items() if r.created_ns <= until and match(r)}
        yield from sorted((tracker.live[k] for k in pending), key=lambda r: (r.created_ns, r.ext_key))


def mappings_in_window(
    journal: Journal, since: int, until: int, match: Callable[[MappingRecord], bool] | None = None
) -> list[MappingRecord]:
    """Every mapping overlapping [since, until], sorted by creation (for tests and small windows)."""
    return sorted(WindowScan(journal, since, until, match).records(), key=lambda r: (r.created_ns, r.ext_key))


def _window(args: argparse.Namespace) -> tuple[int, int]:
    since, until = parse_time(args.since), parse_time(args.until)
    if since > until:
        raise UsageError(f"--from {args.since} is after --to {args.until}")
    return since, until


def _record_json(r: MappingRecord, fingerprint: str | None) -> dict[str, Any]:
    return {
        "proto": proto_name(r.proto),
        "internal": format_endpoint(r.int_addr, r.int_port),
        "external": format_endpoint(r.ext_addr, r.ext_port),
        "client": r.client or None,
        "session": r.session or None,
        "fingerprint": fingerprint,
        "start": format_time(r.created_ns),
        "start_ns": r.created_ns,
        "end": format_time(r.end_ns) if r.end_ns is not None else None,
        "end_ns": r.end_ns,
        "end_reason": r.end_reason,
        "destination": destination(r),
        "packets_out": r.packets_out,
        "bytes_out": r.bytes_out,
        "packets_in": r.packets_in,
        "bytes_in": r.bytes_in,
    }


def cmd_client(args: argparse.Namespace) -> int:
    since, until = _window(args)
    j = _open(args)
    progress = Progress("scanning", len(j.segments), progress_enabled(args))
    scan = WindowScan(j, since, until, lambda r: r.client == args.name, progress)
    scan.wait_sessions = lambda s: s.client == args.name and s.at_ns <= until
    try:
        records = sorted(scan.records(), key=lambda r: (r.created_ns, r.ext_key))
    finally:
        progress.close()
    report_notes(PROG, j)
    tracker = scan.tracker
    sessions = []
    for s in sorted(tracker.sessions.values(), key=lambda s: s.seq):
        closed = tracker.closed_sessions.get(s.session)
        if s.client == args.name and s.at_ns <= until and (closed is None or closed.at_ns > since):
            sessions.append((s, closed))
    fingerprints = {s.session: s.fingerprint for s, _ in sessions}
    if args.json:
        emit_json(
            {
                "client": args.name,
                "from": format_time(since),
                "to": format_time(until),
                "mappings": [_record_json(r, fingerprints.get(r.session)) for r in records],
                "sessions": [
                    {
                        "session": s.session,
                        "fingerprint": s.fingerprint,
                        "vpn_addr": inet.ntoa(s.vpn_addr),
                        "from": f"{s.remote_addr}:{s.remote_port}",
                        "opened": format_time(s.at_ns),
                        "opened_ns": s.at_ns,
                        "closed": format_time(c.at_ns) if c else None,
                        "closed_ns": c.at_ns if c else None,
                        "close_reason": c.reason if c else None,
                    }
                    for s, c in sessions
                ],
                "notes": [str(n) for n in j.notes],
            },
            sys.stdout,
        )
        return EXIT_OK
    out = sys.stdout
    out.write(f"client {args.name} from {format_time(since)} to {format_time(until)}\n\n")
    out.write(f"sessions ({len(sessions)})\n")
    if sessions:
        print_table(
            ("session", "vpn address", "opened", "closed", "from", "fingerprint"),
            [
                (
                    s.session,
                    inet.ntoa(s.vpn_addr),
                    format_time(s.at_ns),
                    f"{format_time(c.at_ns)} ({c.reason})" if c else "open",
                    f"{s.remote_addr}:{s.remote_port}",
                    s.fingerprint,
                )
                for s, c in sessions
            ],
            out,
        )
    out.write(f"\nmappings ({len(records)})\n")
    if records:
        print_table(
            ("proto", "internal", "external", "session", "start", "end", "reason"),
            [
                (
                    proto_name(r.proto),
                    format_endpoint(r.int_addr, r.int_port),
                    format_endpoint(r.ext_addr, r.ext_port),
                    r.session,
                    format_time(r.created_ns),
                    format_time(r.end_ns) if r.end_ns is not None else "still held",
                    r.end_reason or "",
                )
                for r in records
            ],
            out,
        )
    return EXIT_OK


def export_row(r: MappingRecord, fingerprint: str | None) -> dict[str, Any]:
    """One export record: IPFIX names first (see EXPORT_FIELDS), then gw's."""
    ended = r.end_ns is not None
    return {
        "flowStartMilliseconds": r.created_ns // 1_000_000,
        "flowEndMilliseconds": r.end_ns // 1_000_000 if ended else None,
        "natEvent": NAT_EVENT_BIB_DELETE if ended else NAT_EVENT_BIB_CREATE,
        "protocolIdentifier": r.proto,
        "sourceIPv4Address": inet.ntoa(r.int_addr),
        "sourceTransportPort": r.int_port,
        "postNATSourceIPv4Address": inet.ntoa(r.ext_addr),
        "postNAPTSourceTransportPort": r.ext_port,
        "destinationIPv4Address": inet.ntoa(r.remote_addr) if r.remote_addr else None,
        "destinationTransportPort": r.remote_port if r.remote_addr and r.proto != 1 else None,
        "initiatorPackets": r.packets_out,
        "initiatorOctets": r.bytes_out,
        "responderPackets": r.packets_in,
        "responderOctets": r.bytes_in,
        "client": r.client or None,
        "session": r.session or None,
        "fingerprint": fingerprint,
        "end_reason": r.end_reason if ended else "still_held",
    }


def cmd_export(args: argparse.Namespace) -> int:
    since, until = _window(args)
    j = _open(args)
    tmp: Path | None = None  # the output goes here first, renamed to -o FILE once the scan succeeded
    if args.output and args.output != "-":
        target = Path(args.output).resolve()
        if target == j.directory.resolve() or j.directory.resolve() in target.parents:
            raise UsageError(
                f"{args.output}: write the export outside the journal directory (it is read-only)"
            )
        if target.is_dir():
            raise UsageError(f"{args.output}: is a directory; give a file name (-o day.csv)")
        if not target.parent.is_dir():
            raise UsageError(f"{args.output}: directory {target.parent} does not exist")
        tmp = target.with_name(target.name + ".tmp")
        out: IO[str] = open(tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
    else:
        out = sys.stdout
    progress = Progress("exporting", len(j.segments), progress_enabled(args))
    scan = WindowScan(j, since, until, progress=progress)
    count = 0
    done = False
    try:
        writer = (
            csv.DictWriter(out, fieldnames=EXPORT_FIELDS, lineterminator="\n")
            if args.format == "csv"
            else None
        )
        if writer is not None:
            writer.writeheader()
        for r in scan.records():
            s = scan.tracker.sessions.get(r.session)
            row = export_row(r, s.fingerprint if s else None)
            if writer is not None:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
            else:
                out.write(json.dumps(row, separators=(",", ":")) + "\n")
            count += 1
        done = True
    finally:
        progress.close()
        if tmp is not None:
            try:
                out.close()
                if done:
                    tmp.replace(Path(args.output))
                    tmp = None
            finally:
                if tmp is not None:
                    tmp.unlink(missing_ok=True)  # a failed export leaves -o FILE as it was
    report_notes(PROG, j)
    if out is not sys.stdout:
        sys.stderr.write(f"{PROG}: wrote {count} records to {args.output}\n")
    return EXIT_OK


# ---------------------------------------------------------------------- reindex


def cmd_reindex(args: argparse.Namespace) -> int:
    """Write the missing, stale or bad ``.idx`` files (besides repair, the one command that writes)."""
    j = _open(args)
    written = current = 0
    refused: list[str] = []  # segments not indexed because they do not read whole: damage or garbage
    torn: list[str] = []  # the newest segment's torn tail (recovery cuts it): not indexed yet, not damage
    removed = remove_stale_index_tmp(j.directory)
    for i, seg in enumerate(j.segments):
        try:
            st = seg.path.stat()
            try:
                on_disk = read_index(seg.path)
            except JournalCorruptError:
                on_disk = None  # bad: rewritten below
            if on_disk is not None and is_current(on_disk, st):
                current += 1
                continue
            index = build_index(seg.path, write=False)
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        if not index.complete:
            reader = SegmentReader(j.directory, salvage=True)
            list(reader.segment_frames(seg.first_seq, seg.path, i == len(j.segments) - 1))
            if {n.kind for n in reader.notes} == {"torn_tail"}:
                torn.append(f"{seg.path.name}: not indexed: it ends in a torn tail (recovery cuts it)")
            else:
                why = "; ".join(n.detail for n in reader.notes) or "its frames do not read whole"
                refused.append(f"{seg.path.name}: not indexed: not a whole journal segment ({why})")
            continue
        try:
            write_index(seg.path, index)
        except PermissionError:
            raise UsageError(
                f"{index_path(seg.path)}: cannot write (permission denied); run reindex as the journal's "
                "owner (the gateway's user)"
            ) from None
        written += 1
    for line in torn + refused:
        sys.stderr.write(f"{PROG}: {line}\n")
    if args.json:
        emit_json(
            {
                "segments": len(j.segments),
                "written": written,
                "current": current,
                "refused": refused,
                "torn": torn,
                "removed_tmp": [p.name for p in removed],
            },
            sys.stdout,
        )
    else:
        sys.stdout.write(
            f"{args.dir}: {len(j.segments)} segments: wrote {written} indexes, {current} already current"
            + (f", {len(refused)} refused (damaged)" if refused else "")
            + (f", removed {len(removed)} leftover .idx.tmp files" if removed else "")
            + "\n"
        )
    return EXIT_DAMAGED if refused else EXIT_OK


# ---------------------------------------------------------------------- command line


def _open(args: argparse.Namespace) -> Journal:
    return Journal(args.dir, salvage=args.salvage)


def build_parser() -> Parser:
    ipfix = ", ".join(IPFIX_FIELDS)
    parser = Parser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Answer abuse-desk questions from a gw journal. Read-only: who, client and export never write "
            "into the journal directory; only reindex writes, and only the .idx audit index files."
        ),
        epilog=f"""examples:
  {PROG} /var/lib/gw/journal who 198.51.100.2:40001/udp --at 2026-11-23T10:02:17Z
  {PROG} /var/lib/gw/journal who 198.51.100.2:40001 --at 1795000000.5 --json
  {PROG} /var/lib/gw/journal client alice --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z
  {PROG} /var/lib/gw/journal export --from 2026-11-23T00:00:00Z --to 2026-11-23T12:00:00Z -o nov23.csv
  {PROG} /var/lib/gw/journal reindex      (the only command that writes: .idx files)

times: RFC 3339 with a UTC offset (2026-11-23T10:02:17Z, 2026-11-23T11:02:17.250+01:00) or epoch
seconds (1795000000.5). A mapping holds its public endpoint over [created, expired).
exit status:
  0  answered (who: someone held it)
  1  who: nobody held it
  2  bad usage, or no journal there
  3  the journal is damaged where the answer needs it (corrupt data, a sequence gap such as a removed
     segment file, an unknown state; reindex: a segment that is not whole): no answer was given;
     --salvage reads around the damage and names it in notes""",
    )
    parser.add_argument("dir", metavar="DIR", help="the journal directory")
    add_common_options(parser, sub=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    who = sub.add_parser(
        "who",
        help="which client held a public ADDR:PORT at a time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Which client held public ADDR:PORT[/udp|tcp|icmp] at time T: name, certificate "
            "fingerprint, internal endpoint, session, and the mapping's start and end. Without /proto, every "
            "protocol that matches is answered. Exit 1 and 'nobody held ...' when no mapping held it; exit 3 "
            "when the journal is damaged where the answer needs it (a gap, corrupt data), so that 'nobody' "
            "is never a guess."
        ),
        epilog=f"example:\n  {PROG} DIR who 198.51.100.2:40001/udp --at 2026-11-23T10:02:17Z\n"
        "--json: one JSON document {query, held, holders: [...], notes}",
    )
    who.add_argument("endpoint", metavar="ADDR:PORT[/proto]")
    who.add_argument("--at", required=True, metavar="T", help="RFC 3339 time or epoch seconds")
    add_common_options(who, sub=True)
    who.set_defaults(func=cmd_who)

    client = sub.add_parser(
        "client",
        help="a client's mappings and sessions in a window",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Every mapping of client NAME that overlaps [--from, --to] (with its real end, even "
            "after "
            "--to), and its sessions in the window."
        ),
        epilog=f"example:\n  {PROG} DIR client alice --from 2026-11-23T10:00:00Z --to 2026-11-23T11:00:00Z\n"
        "--json: one JSON document {client, from, to, mappings: [...], sessions: [...], notes}",
    )
    client.add_argument("name", metavar="NAME")
    client.add_argument("--from", dest="since", required=True, metavar="T1")
    client.add_argument("--to", dest="until", required=True, metavar="T2")
    add_common_options(client, sub=True)
    client.set_defaults(func=cmd_client)

    export = sub.add_parser(
        "export",
        help="one record per mapping overlapping a window, CSV or JSON lines",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "One record per mapping overlapping [--from, --to]. Columns named after IANA IPFIX "
            f"information elements (RFC 7012, RFC 8158): {ipfix}. natEvent is 9 (NAT44 BIB delete) for a mapping "
            "that ended, with its whole life, or 8 (NAT44 BIB create) for one still held at the end of the "
            "journal. Times are ms since the epoch; for ICMP the ports are the echo identifier; destination "
            "columns are filled only when the gateway logs destinations. gw's own columns: client, session, "
            "fingerprint, end_reason. Records come in the order their mappings ended, then those still held."
        ),
        epilog=f"example:\n  {PROG} DIR export --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z "
        "--format jsonl -o day.jsonl",
    )
    export.add_argument("--from", dest="since", required=True, metavar="T1")
    export.add_argument("--to", dest="until", required=True, metavar="T2")
    export.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    export.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    add_common_options(export, sub=True)
    export.set_defaults(func=cmd_export)

    reindex = sub.add_parser(
        "reindex",
        help="write missing audit indexes (.idx); the only command that writes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Write the per-segment audit index (<segment>.idx) of every segment that has none or a stale "
            "one, so that who skips segments without decompressing them. The gateway writes these itself "
            "when it closes a segment; run this once for journals written before it did, as the journal's "
            "owner. This is the only gw-audit or gw-replay command that writes into the journal directory, "
            "and it writes nothing but .idx files (the other commands build missing indexes in memory)."
        ),
        epilog=f"example:\n  {PROG} DIR reindex\n--json: one JSON document {{segments, written, current}}",
    )
    add_common_options(reindex, sub=True)
    reindex.set_defaults(func=cmd_reindex)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """gw-audit's entry point; returns the exit status."""
    return run_tool(PROG, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
