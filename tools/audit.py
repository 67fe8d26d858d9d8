"""gw-audit: answer abuse-desk questions from the journal, read-only.

Theory of operation
-------------------
A mapping holds its external endpoint over ``[created, expired)``: from its ``MappingCreated`` up to,
not including, the instant of its ``MappingExpired``.

``who ADDR:PORT[/proto] --at T`` does not scan the journal. It finds the segment holding T (binary
search on first frame headers), then walks back segment by segment and decompresses only those whose
audit index (``journal.index``) names the endpoint. The last event for the endpoint at or before T
decides: a ``MappingCreated`` means that mapping held it (its end is the next event for the endpoint,
searched forward the same way); a ``MappingExpired`` means nobody did. If the walk reaches the newest
snapshot taken at or before T without an event for the endpoint, the snapshot's table answers, which
covers mappings created before the oldest retained segment. The client's identity comes from the
``SessionOpened`` of the mapping's session: in the segment already read, else in the snapshot before
the mapping, else in the segments between that snapshot and the mapping.

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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from gw import inet
from gw.errors import UsageError
from journal.events import MappingCreated, MappingExpired, SessionClosed, SessionOpened, Snapshot
from journal.index import INDEX_VERSION, SegmentIndex, endpoint_key, index_path
from journal.writer import write_segment_index
from tools.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    Journal,
    MappingRecord,
    Parser,
    Progress,
    Tracker,
    add_common_options,
    emit_json,
    format_endpoint,
    format_time,
    parse_endpoint,
    parse_time,
    print_table,
    progress_enabled,
    proto_name,
    record_from_created,
    report_notes,
    run_tool,
    segment_index,
    wrap,
)

__all__ = ["EXPORT_FIELDS", "Holding", "find_holders", "main", "mappings_in_window"]

PROG = "gw-audit"
WHO_PROTOS = (17, 6, 1)  # without /proto, answer for UDP, TCP and ICMP echo, in this order

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


@dataclass
class Holding:
    """Who held an external endpoint: the mapping and the session it belonged to."""

    record: MappingRecord
    session: SessionOpened | None
    source: str  # "journal" or the snapshot file that held the mapping
    before_retained: bool = False  # from a snapshot whose events are all gone: created before the segments

    @property
    def source_note(self) -> str | None:
        """Why a snapshot answered: the mapping predates the retained segments, or just the state there."""
        if self.source == "journal":
            return None
        if self.before_retained:
            return "created before the retained segments"
        return f"state from snapshot {self.source}"


def find_holders(journal: Journal, addr: int, port: int, proto: int | None, at_ns: int) -> list[Holding]:
    """Every mapping that held ADDR:PORT (for one protocol, or each of UDP/TCP/ICMP) at ``at_ns``."""
    found = []
    for p in (proto,) if proto is not None else WHO_PROTOS:
        holding = held_by(journal, p, addr, port, at_ns)
        if holding is not None:
            found.append(holding)
    return found


def _touches(ev: object, key: int) -> bool:
    t = type(ev)
    return (t is MappingCreated or t is MappingExpired) and (
        ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port  # type: ignore[attr-defined]
    ) == key


Position = tuple[int, int, int]  # (segment, chunk, event) in a Journal


def held_by(j: Journal, proto: int, addr: int, port: int, at_ns: int) -> Holding | None:
    """The mapping that held (proto, addr, port) at ``at_ns``, or None (see the module doc)."""
    key = endpoint_key(proto, addr, port)
    k = j.segment_for_time(at_ns)
    limit = j.seq_end(k) if k >= 0 else (j.segments[0].first_seq if j.segments else 1 << 62)
    candidates = [s for s in reversed(j.snapshots) if s.upto_seq < limit]
    i = k
    for c in range(len(candidates) + 1):
        cand = candidates[c] if c < len(candidates) else None
        lo = cand.upto_seq + 1 if cand is not None else 0
        while i >= 0:
            if j.seq_end(i) <= lo:
                break  # wholly covered by the snapshot
            index = j.index(i)
            if not index.complete or index.touches(proto, addr, port):
                hit = _last_touch(j, i, key, lo, at_ns)
                if hit is not None:
                    return _decide(j, hit, key, at_ns)
            if j.segments[i].first_seq < lo:
                break  # the snapshot's boundary lies inside this segment
            i -= 1
        if cand is None:
            if j.segments and j.segments[0].first_seq > 1:
                j.note(
                    "gap",
                    j.segments[0].path,
                    0,
                    0,
                    f"the journal starts at seq {j.segments[0].first_seq} and no snapshot at or before the "
                    "asked time covers the events before it; a mapping created before the oldest segment "
                    "cannot be seen",
                )
            return None
        snap = j.snapshot(cand)
        if snap is not None and snap.at_ns <= at_ns:
            if i < 0 and j.segments and cand.upto_seq + 1 < j.segments[0].first_seq:
                j.note(
                    "gap",
                    cand.path,
                    0,
                    0,
                    f"events {cand.upto_seq + 1}..{j.segments[0].first_seq - 1} after this snapshot are "
                    "missing; answers may miss mappings they held",
                )
            return _from_snapshot(j, snap, cand.path.name, key, at_ns)
    return None


def _last_touch(j: Journal, i: int, key: int, lo: int, at_ns: int) -> Position | None:
    """The last event of segment i naming the endpoint, with seq >= lo and at or before ``at_ns``.

    Frames are decoded newest first, and only those that begin at or before ``at_ns``.
    """
    chunks = j.chunks(i)
    for n in range(len(chunks) - 1, -1, -1):
        if chunks[n].last_seq < lo:
            return None
        if chunks[n].min_at_ns > at_ns:
            continue
        events = j.chunk_events(i, n)
        for pos in range(len(events) - 1, -1, -1):
            ev = events[pos]
            if ev.seq < lo:
                return None
            if ev.at_ns <= at_ns and _touches(ev, key):
                return i, n, pos
    return None


def _decide(j: Journal, hit: Position, key: int, at_ns: int) -> Holding | None:
    i, n, pos = hit
    ev = j.chunk_events(i, n)[pos]
    if type(ev) is MappingExpired:
        return None
    rec = record_from_created(ev)
    _find_end(j, rec, key, (i, n, pos + 1))
    if rec.end_ns is not None and rec.end_ns <= at_ns:
        return None  # only with a clock that stepped backwards
    return Holding(rec, _find_session(j, rec.session, rec.created_seq, (i, n)), "journal")


def _from_snapshot(j: Journal, snap: Snapshot, name: str, key: int, at_ns: int) -> Holding | None:
    proto, addr, port = key >> 48, key >> 16 & 0xFFFFFFFF, key & 0xFFFF
    rows = zip(snap.proto, snap.ext_addr, snap.ext_port, strict=False)
    row = next((r for r, (p, a, o) in enumerate(rows) if p == proto and a == addr and o == port), None)
    if row is None:
        return None
    rec = _snapshot_row(snap, row)
    start = max(j.segment_for_seq(snap.upto_seq + 1), 0)
    _find_end(j, rec, key, (start, 0, 0), after_seq=snap.upto_seq)
    if rec.end_ns is not None and rec.end_ns <= at_ns:
        return None
    session = next((s for s in snap.sessions if s.session == rec.session), None)
    if session is None and rec.session:
        session = _find_session(j, rec.session, snap.upto_seq + 1, None)
    # Every event up to the snapshot's is gone only when the oldest segment starts after it.
    before = not j.segments or snap.upto_seq < j.segments[0].first_seq
    return Holding(rec, session, name, before)


def _snapshot_row(snap: Snapshot, row: int) -> MappingRecord:
    """One snapshot row as a record (client from the column or the sessions)."""
    names = {s.session: s.client for s in snap.sessions}
    client = snap.client[row] if len(snap.client) == len(snap.proto) and snap.client[row] else ""
    return MappingRecord(
        snap.proto[row],
        snap.int_addr[row],
        snap.int_port[row],
        snap.ext_addr[row],
        snap.ext_port[row],
        client or names.get(snap.session[row], ""),
        snap.session[row],
        snap.created_ns[row],
        0,
    )


def _find_end(j: Journal, rec: MappingRecord, key: int, start: Position, after_seq: int = 0) -> None:
    """Close ``rec`` at the next event for its endpoint from ``start`` on (segments skipped by index)."""
    i, n0, pos0 = start
    for m in range(i, len(j.segments)):
        if m > i or (n0 == 0 and pos0 == 0):
            index = j.index(m)
            if index.complete and not index.touches(rec.proto, rec.ext_addr, rec.ext_port):
                continue
        chunks = j.chunks(m)
        for n in range(n0 if m == i else 0, len(chunks)):
            if chunks[n].last_seq <= after_seq:
                continue
            events = j.chunk_events(m, n)
            for ev in events[pos0 if (m, n) == (i, n0) else 0 :]:
                if ev.seq > after_seq and _touches(ev, key):
                    rec.close(ev, ev.reason if type(ev) is MappingExpired else "replaced")
                    return


def _find_session(
    j: Journal, session: int, before_seq: int, hint: tuple[int, int] | None
) -> SessionOpened | None:
    """The SessionOpened of ``session`` before ``before_seq``: in the frame at ``hint`` (already decoded),
    else in the newest snapshot before it, else in the frames between that snapshot and ``before_seq``.
    Session numbers are unique in a journal (events.SessionOpened)."""
    if not session:
        return None

    def scan(m: int, n: int) -> SessionOpened | None:
        for ev in reversed(j.chunk_events(m, n)):
            if type(ev) is SessionOpened and ev.session == session and ev.seq < before_seq:
                return ev
        return None

    if hint is not None and (found := scan(*hint)) is not None:
        return found
    lo = 0
    for info in reversed(j.snapshots):
        if info.upto_seq < before_seq and (snap := j.snapshot(info)) is not None:
            found = next((s for s in snap.sessions if s.session == session), None)
            if found is not None:
                return found
            lo = snap.upto_seq + 1
            break
    for m in range(j.segment_for_seq(before_seq - 1), -1, -1):
        if j.seq_end(m) <= lo:
            break
        chunks = j.chunks(m)
        for n in range(len(chunks) - 1, -1, -1):
            if chunks[n].last_seq < lo:
                break
            if chunks[n].first_seq < before_seq and (m, n) != hint and (found := scan(m, n)) is not None:
                return found
    return None


def _destination(r: MappingRecord) -> str | None:
    """The logged first destination ('203.0.113.10:53', or just the address for ICMP), None if not logged."""
    if not r.remote_addr:
        return None
    return inet.ntoa(r.remote_addr) if r.proto == 1 else format_endpoint(r.remote_addr, r.remote_port)


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
        "destination": _destination(r),
        "source": h.source,
        "source_note": h.source_note,
    }


def _print_holding(h: Holding, at_ns: int, out: IO[str]) -> None:
    r, s = h.record, h.session
    out.write(
        f"{format_endpoint(r.ext_addr, r.ext_port, r.proto)} at {format_time(at_ns)} was held by "
        f"{r.client or '(no session: no client name)'}\n"
    )
    rows = [("fingerprint", s.fingerprint if s else "(unknown: no SessionOpened found)")]
    rows.append(("internal", format_endpoint(r.int_addr, r.int_port)))
    if r.session:
        opened = f", opened {format_time(s.at_ns)} from {s.remote_addr}:{s.remote_port}" if s else ""
        rows.append(("session", f"{r.session}{opened}"))
    end = f"{format_time(r.end_ns)} ({r.end_reason})" if r.end_ns is not None else "still held"
    rows.append(("mapping", f"{format_time(r.created_ns)} .. {end}"))
    if r.remote_addr:
        rows.append(("destination", _destination(r)))
    if h.source != "journal":
        rows.append(("from", f"snapshot {h.source} ({h.source_note})"))
    for name, value in rows:
        out.write(f"  {name:<12} {value}\n")


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
            _print_holding(h, at_ns, sys.stdout)
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
        for ev in j.events(start_seq=start, progress=self.progress):
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
        "destination": _destination(r),
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
    """Write the missing or stale ``.idx`` files (the one command that writes into the journal)."""
    j = _open(args)
    written = current = 0
    for seg in j.segments:
        try:
            index = segment_index(seg.path)
        except FileNotFoundError:
            continue  # removed by retention meanwhile
        on_disk = _index_on_disk(seg.path)
        if on_disk is not None and on_disk == index and index.version == INDEX_VERSION:
            current += 1
            continue
        try:
            write_segment_index(seg.path, index)
        except PermissionError:
            raise UsageError(
                f"{index_path(seg.path)}: cannot write (permission denied); run reindex as the journal's "
                "owner (the gateway's user)"
            ) from None
        written += 1
    if args.json:
        emit_json({"segments": len(j.segments), "written": written, "current": current}, sys.stdout)
    else:
        sys.stdout.write(
            f"{args.dir}: {len(j.segments)} segments: wrote {written} indexes, {current} already current\n"
        )
    return EXIT_OK


def _index_on_disk(path: Path) -> SegmentIndex | None:
    """The segment's ``.idx`` as stored, or None if absent or unreadable."""
    try:
        return msgspec.msgpack.decode(index_path(path).read_bytes(), type=SegmentIndex)
    except (OSError, msgspec.DecodeError):
        return None


# ---------------------------------------------------------------------- command line


def _open(args: argparse.Namespace) -> Journal:
    return Journal(args.dir, salvage=args.salvage, progress=progress_enabled(args))


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
exit status: 0 answered, 1 nobody held it / corrupt journal, 2 bad usage or no journal there.""",
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
            "protocol that matches is answered. Exit 1 and 'nobody held ...' when no mapping held it."
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
