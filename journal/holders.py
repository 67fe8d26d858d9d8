"""Who held which external endpoint when: mapping intervals followed through events, and the point query
behind ``gw-audit who`` (and ``gw demo``'s audit answer). Pure over a read-only ``journal.reader.Journal``.

Theory of operation
-------------------
A mapping holds its external endpoint over ``[created, expired)``: from its ``MappingCreated`` up to,
not including, the instant of its ``MappingExpired``. ``Tracker`` follows those intervals and the
sessions through events (for window queries); it allocates nothing and decides nothing (the table itself
is ``gw.nat.Nat.apply``'s).

``find_holders(journal, addr, port, proto, at_ns)`` does not scan the journal. It finds the segment
holding T (binary search on first frame headers), then walks back segment by segment and decompresses
only those whose audit index (``journal.index``) names the endpoint. The last event for the endpoint at or
before T decides: a ``MappingCreated`` means that mapping held it (its end is the next event for the
endpoint, searched forward the same way); a ``MappingExpired`` means nobody did. If the walk reaches the
newest snapshot taken at or before T without an event for the endpoint, the snapshot's table answers,
which covers mappings created before the oldest retained segment. Every segment the answer relies on is
checked for seq continuity (``Journal.check_continuity``): a removed segment file is a gap, never a
silent "nobody" or a wrong holder.

The client's identity comes from the ``SessionOpened`` of the mapping's session: in the frame already
read, else in a kept snapshot that lists the session (before the mapping, or after it while the session
was still open), else in the segments before the mapping. When retention removed it and no kept snapshot
lists the session, an ``identity_gone`` note says so (the fingerprint is then null).

Arguments are ints (addresses as host-order ints, IP protocol numbers); ``describe`` renders an answer
for people, the same lines ``gw-audit who`` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from journal.events import (
    JournalEvent,
    MappingCreated,
    MappingExpired,
    SessionClosed,
    SessionOpened,
    Snapshot,
)
from journal.index import endpoint_key
from journal.reader import Journal
from journal.text import format_endpoint, format_time, ntoa

__all__ = [
    "WHO_PROTOS",
    "Holding",
    "MappingRecord",
    "Tracker",
    "describe",
    "destination",
    "find_holders",
    "held_by",
    "record_from_created",
    "records_from_snapshot",
]

WHO_PROTOS = (17, 6, 1)  # without a protocol, answer for UDP, TCP and ICMP echo, in this order



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
            j.check_continuity(i)  # events the answer relies on: a removed segment after i is a gap
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
        j.check_continuity(m)  # a removed segment could hold the end
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
    else in the newest snapshot before it, else in the frames between that snapshot and ``before_seq``,
    else in a later kept snapshot (one taken while the session was still open lists it). Session numbers
    are unique in a journal (events.SessionOpened). Not found: an ``identity_gone`` note."""
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
    for info in j.snapshots:  # retention may have removed the SessionOpened; a later snapshot still lists it
        if info.upto_seq >= before_seq and (snap := j.snapshot(info)) is not None:
            found = next((s for s in snap.sessions if s.session == session), None)
            if found is not None:
                return found
    oldest = j.segments[0].first_seq if j.segments else 1
    why = (
        f"its SessionOpened was removed by retention (the journal starts at seq {oldest})"
        if oldest > 1
        else "the journal holds no SessionOpened for it"
    )
    j.note(
        "identity_gone",
        j.segments[0].path if j.segments else j.directory,
        session,
        0,
        f"session {session}: the client's identity (fingerprint, tunnel address) is gone: {why} and no "
        "kept snapshot lists the session",
    )
    return None


def destination(r: MappingRecord) -> str | None:
    """The logged first destination ('203.0.113.10:53', or just the address for ICMP), None if not logged."""
    if not r.remote_addr:
        return None
    return ntoa(r.remote_addr) if r.proto == 1 else format_endpoint(r.remote_addr, r.remote_port)


def describe(h: Holding, at_ns: int) -> list[str]:
    """An answer for people: who held the endpoint, then one indented line per fact (gw-audit who's text)."""
    r, s = h.record, h.session
    lines = [
        f"{format_endpoint(r.ext_addr, r.ext_port, r.proto)} at {format_time(at_ns)} was held by "
        f"{r.client or '(no session: no client name)'}"
    ]
    rows = [("fingerprint", s.fingerprint if s else "(unknown: no SessionOpened found)")]
    rows.append(("internal", format_endpoint(r.int_addr, r.int_port)))
    if r.session:
        opened = f", opened {format_time(s.at_ns)} from {s.remote_addr}:{s.remote_port}" if s else ""
        rows.append(("session", f"{r.session}{opened}"))
    end = f"{format_time(r.end_ns)} ({r.end_reason})" if r.end_ns is not None else "still held"
    rows.append(("mapping", f"{format_time(r.created_ns)} .. {end}"))
    if r.remote_addr:
        rows.append(("destination", destination(r)))
    if h.source != "journal":
        rows.append(("from", f"snapshot {h.source} ({h.source_note})"))
    lines += [f"  {name:<12} {value}" for name, value in rows]
    return lines
