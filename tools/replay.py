"""gw-replay: look inside a gw journal (read-only): timeline, state at a time, integrity, statistics.

Theory of operation
-------------------
- ``timeline`` prints events in seq order, filtered. Frames outside ``--from``/``--to`` are skipped by
  their headers without being decompressed; with ``--from``, mappings already held at that time are
  known from the state there (snapshot + fold), so an expiry still names its client and internal
  endpoint. ``--follow`` then polls the newest segment for new whole frames and moves on when the
  writer rotates.
- ``state --at T`` is ``gw.nat.Nat.restore`` over the newest snapshot taken at or before T and the
  events after it, stopped at the first event after T: the same ``apply`` the gateway uses.
- ``verify`` reads every frame with ``journal.segments.SegmentReader`` in salvage mode (so it reports
  every bad region, gap and torn tail instead of stopping at the first), then checks the invariants the
  NAT promises over the events: no external endpoint held twice at once, every expiry matches a live
  mapping, no endpoint handed out again within the reuse delay, and every snapshot agrees with the
  events before it.
- ``stats`` counts events, follows live mappings per client and per public address for their peaks,
  and summarizes mapping lifetimes; ``--plot`` draws them with matplotlib (``pip install 'gw[plot]'``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from gw import inet
from gw.config import PORT_REUSE_DELAY_S, NatConfig
from gw.errors import UsageError
from gw.nat import Nat
from journal.errors import CorruptFrame, JournalCorruptError, TornFrame
from journal.events import (
    GatewayStarted,
    GatewayStopped,
    JournalEvent,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    SessionRefused,
    SnapshotTaken,
)
from journal.frames import decode_frame, decode_header, new_decompressor, next_frame_offset
from journal.segments import SEGMENT_RE, SegmentReader, read_snapshot
from tools.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    NS,
    Journal,
    MappingRecord,
    Parser,
    Progress,
    Tracker,
    add_common_options,
    emit_json,
    event_type_name,
    format_duration,
    format_endpoint,
    format_time,
    parse_proto,
    parse_time,
    port_arg,
    print_table,
    progress_enabled,
    proto_name,
    run_tool,
    wrap,
)

__all__ = ["main", "state_at", "verify_journal"]

PROG = "gw-replay"
FOLLOW_POLL_S = 0.5  # how often --follow looks for new frames
LIFETIME_BUCKETS_S = (1, 10, 60, 300, 900, 3600, 7440, 6 * 3600, 86400)  # histogram edges (UDP 300, TCP 7440)
PLOT_MAX_POINTS = 200_000  # per series: beyond this the plot is sampled evenly (a PNG cannot show more)
_ADDR_FIELDS = ("int_addr", "ext_addr", "vpn_addr")


# ---------------------------------------------------------------------- timeline


def _event_json(ev: JournalEvent, rec: MappingRecord | None) -> dict[str, Any]:
    """An event as JSON: its schema fields, addresses dotted, protocol named, plus what the fold knows."""
    d: dict[str, Any] = {"type": event_type_name(ev), "at": format_time(ev.at_ns)}
    for name, value in msgspec.structs.asdict(ev).items():
        if name in _ADDR_FIELDS or (name == "remote_addr" and isinstance(value, int)):
            value = inet.ntoa(value) if value else None
        elif name == "ext_addrs":
            value = [inet.ntoa(a) for a in value]
        elif name == "proto":
            value = proto_name(value)
        d[name] = value
    if type(ev) is MappingExpired and rec is not None:
        d.update(
            int_addr=inet.ntoa(rec.int_addr),
            int_port=rec.int_port,
            client=rec.client or None,
            session=rec.session or None,
            created_at=format_time(rec.created_ns),
        )
    return d


def _counters(p_out: int, b_out: int, p_in: int, b_in: int) -> str:
    return f"out {p_out}p/{b_out}B in {p_in}p/{b_in}B"


def format_event(ev: JournalEvent, rec: MappingRecord | None, sessions: dict[int, SessionOpened]) -> str:
    """One human line: time, seq, what happened."""
    head = f"{format_time(ev.at_ns)}  #{ev.seq:<7} "
    t = type(ev)
    if t is MappingCreated:
        dst = ""
        if ev.remote_addr:
            icmp = ev.proto == 1  # an echo has no destination port
            dst = inet.ntoa(ev.remote_addr) if icmp else format_endpoint(ev.remote_addr, ev.remote_port)
            dst = f"  dst {dst}"
        who = f"  {ev.client} session {ev.session}" if ev.session else "  (no session)"
        return (
            f"{head}mapping created   {proto_name(ev.proto):<4} "
            f"{format_endpoint(ev.int_addr, ev.int_port)} -> "
            f"{format_endpoint(ev.ext_addr, ev.ext_port)}{who}{dst}"
        )
    if t is MappingExpired:
        owner = ""
        if rec is not None:
            owner = (
                f" (was {format_endpoint(rec.int_addr, rec.int_port)} {rec.client or '-'}, "
                f"held {format_duration(ev.at_ns - rec.created_ns)})"
            )
        return (
            f"{head}mapping expired   {proto_name(ev.proto):<4} {format_endpoint(ev.ext_addr, ev.ext_port)}"
            f"{owner} {ev.reason}  {_counters(ev.packets_out, ev.bytes_out, ev.packets_in, ev.bytes_in)}"
        )
    if t is SessionOpened:
        return (
            f"{head}session opened    {ev.client} session {ev.session} vpn {inet.ntoa(ev.vpn_addr)} from "
            f"{ev.remote_addr}:{ev.remote_port} fingerprint {ev.fingerprint}"
        )
    if t is SessionClosed:
        return (
            f"{head}session closed    {ev.client} session {ev.session} ({ev.reason})  "
            f"{_counters(ev.packets_out, ev.bytes_out, ev.packets_in, ev.bytes_in)}"
        )
    if t is SessionRefused:
        return (
            f"{head}session refused   {ev.client or '(unknown)'} from {ev.remote_addr}:{ev.remote_port} "
            f"fingerprint {ev.fingerprint}: {ev.reason}"
        )
    if t is QuotaHit:
        return (
            f"{head}quota hit         {proto_name(ev.proto):<4} {format_endpoint(ev.int_addr, ev.int_port)} "
            f"{ev.client or '-'} session {ev.session}: {ev.quota} mappings"
        )
    if t is GatewayStarted:
        flags = (" recovered" if ev.recovered else "") + (
            " (previous run ended uncleanly)" if ev.unclean else ""
        )
        pool = ", ".join(inet.ntoa(a) for a in ev.ext_addrs)
        return f"{head}gateway started   version {ev.version} pool [{pool}]{flags}"
    if t is GatewayStopped:
        return f"{head}gateway stopped   ({ev.reason})"
    if t is SnapshotTaken:
        return f"{head}snapshot taken    after seq {ev.upto_seq}, {ev.mappings_count} mappings, {ev.file}"
    return f"{head}{event_type_name(ev)}"  # a type newer than this tool


class EventFilter:
    """The timeline's --client/--addr/--port/--proto; mapping expiries match through their owner."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.client: str | None = args.client
        self.addr = _parse_addr(args.addr) if args.addr else None
        self.port: int | None = args.port
        self.proto = parse_proto(args.proto) if args.proto else None
        self.active = any(x is not None for x in (self.client, self.addr, self.port, self.proto))

    def __call__(
        self, ev: JournalEvent, rec: MappingRecord | None, sessions: dict[int, SessionOpened]
    ) -> bool:
        if not self.active:
            return True
        t = type(ev)
        client = addrs = ports = proto = None
        if t is MappingCreated:
            client, addrs, ports, proto = (
                ev.client,
                (ev.int_addr, ev.ext_addr),
                (ev.int_port, ev.ext_port),
                ev.proto,
            )
        elif t is MappingExpired:
            proto, addrs, ports = ev.proto, (ev.ext_addr,), (ev.ext_port,)
            if rec is not None:
                client, addrs, ports = rec.client, (ev.ext_addr, rec.int_addr), (ev.ext_port, rec.int_port)
        elif t is QuotaHit:
            client, addrs, ports, proto = ev.client, (ev.int_addr,), (ev.int_port,), ev.proto
        elif t is SessionOpened:
            client, addrs = ev.client, (ev.vpn_addr, _maybe_addr(ev.remote_addr))
        elif t is SessionClosed:
            opened = sessions.get(ev.session)
            client = ev.client
            addrs = (opened.vpn_addr, _maybe_addr(opened.remote_addr)) if opened else ()
        elif t is SessionRefused:
            client, addrs = ev.client, (_maybe_addr(ev.remote_addr),)
        if self.client is not None and client != self.client:
            return False
        if self.addr is not None and self.addr not in (addrs or ()):
            return False
        if self.port is not None and self.port not in (ports or ()):
            return False
        return self.proto is None or proto == self.proto


def _parse_addr(text: str) -> int:
    try:
        return inet.aton(text)
    except ValueError:
        raise UsageError(f"--addr {text!r} is not an IPv4 address (e.g. 198.51.100.2)") from None


def _maybe_addr(text: str) -> int | None:
    try:
        return inet.aton(text)
    except ValueError:
        return None


def _emit(
    ev: JournalEvent, tracker: Tracker, keep: EventFilter, args: argparse.Namespace, out: IO[str]
) -> None:
    """Follow one event and print it if it passes the filter."""
    rec = None
    if type(ev) is MappingExpired:
        rec = tracker.live.get(ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port)
    tracker.apply(ev)
    if keep(ev, rec, tracker.sessions):
        if args.json:
            emit_json(_event_json(ev, rec), out)
        else:
            out.write(format_event(ev, rec, tracker.sessions) + "\n")


def cmd_timeline(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if since is not None and until is not None and since > until:
        raise UsageError(f"--from {args.since} is after --to {args.until}")
    keep = EventFilter(args)
    j = Journal(args.dir, salvage=args.salvage)
    tracker = Tracker()
    out = sys.stdout
    last_seq = 0
    if since is not None:  # know who held what when the window opens
        snap, start = j.start_point(since, partial=True)
        tracker.seed(snap)
        last_seq = start - 1
        for ev in j.events(start_seq=start, until=since - 1):
            tracker.apply(ev)
            last_seq = ev.seq
    for ev in j.events(since=since, until=until, start_seq=last_seq + 1 if last_seq else None):
        _emit(ev, tracker, keep, args, out)
        last_seq = ev.seq
    _report_notes(j)
    if args.follow:
        try:
            out.flush()
            _follow(j, last_seq, since, until, tracker, keep, args, out)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how --follow ends
    return EXIT_OK


def _follow(
    j: Journal,
    last_seq: int,
    since: int | None,
    until: int | None,
    tracker: Tracker,
    keep: EventFilter,
    args: argparse.Namespace,
    out: IO[str],
) -> None:
    """Poll for frames after ``last_seq`` as the writer appends and rotates; return past ``until``."""
    dctx = new_decompressor()
    directory = j.directory
    path: Path | None = None
    offset = 0
    lo = -(1 << 63) if since is None else since
    while True:
        segs = sorted(
            (int(m.group(1)), directory / n) for n in _listdir(directory) if (m := SEGMENT_RE.match(n))
        )
        if path is None or (not path.exists()):
            holding = [p for s, p in segs if s <= last_seq + 1]
            path, offset = (holding[-1] if holding else (segs[0][1] if segs else None)), 0
        progressed = False
        if path is not None:
            try:
                buf = path.read_bytes()
            except FileNotFoundError:
                buf = b""
            while offset < len(buf):
                try:
                    h = decode_header(buf, offset)
                    if h.end > len(buf):
                        break  # being written: wait for the rest
                    if h.last_seq <= last_seq:
                        offset = h.end
                        continue
                    events = decode_frame(buf, offset, dctx)[0]
                except TornFrame:
                    break
                except CorruptFrame as exc:
                    if next_frame_offset(buf, offset + 1) is None:
                        break  # maybe a frame still being written
                    if not args.salvage:
                        raise JournalCorruptError(path, offset, exc.detail) from None
                    resume = next_frame_offset(buf, offset + 1, whole=True, dctx=dctx)
                    j.note("skipped", path, offset, 0, f"skipped bad data at offset {offset}: {exc.detail}")
                    _report_notes(j)
                    if resume is None:
                        break
                    offset = resume
                    continue
                offset = h.end
                progressed = True
                for ev in events:
                    if ev.seq <= last_seq:
                        continue
                    if until is not None and ev.at_ns > until:
                        return
                    last_seq = ev.seq
                    if ev.at_ns >= lo:
                        _emit(ev, tracker, keep, args, out)
                    else:
                        tracker.apply(ev)
            newer = [p for s, p in segs if s > last_seq and p != path]
            if not progressed and newer and offset >= len(buf):
                path, offset = newer[0], 0  # the writer rotated
                continue
        out.flush()
        if not progressed:
            time.sleep(args.poll)


def _listdir(directory: Path) -> list[str]:
    try:
        return [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------- state


def state_at(
    j: Journal, at_ns: int, config: NatConfig | None = None
) -> tuple[Nat, dict[int, SessionOpened], int, str | None]:
    """The NAT as it stood at ``at_ns``: (nat, sessions seen, last seq folded, snapshot file used)."""
    snap, start = j.start_point(at_ns)
    sessions = {s.session: s for s in snap.sessions} if snap is not None else {}
    folded = [snap.upto_seq if snap is not None else 0]

    def until_t() -> Iterator[JournalEvent]:
        for ev in j.events(start_seq=start):
            if ev.at_ns > at_ns:
                return
            if type(ev) is SessionOpened:
                sessions[ev.session] = ev
            folded[0] = ev.seq
            yield ev

    nat = Nat.restore(config or NatConfig(), snap, until_t())
    name = next((i.path.name for i in j.snapshots if snap is not None and i.upto_seq == snap.upto_seq), None)
    return nat, sessions, folded[0], name


def cmd_state(args: argparse.Namespace) -> int:
    at_ns = parse_time(args.at)
    j = Journal(args.dir, salvage=args.salvage)
    nat, sessions, upto, snap_name = state_at(j, at_ns)
    _report_notes(j)
    mappings = sorted(nat.mappings(), key=lambda m: (m.ext_key, m.key))
    open_sessions = [(vpn, s, name) for vpn, (s, name) in nat.table_state()[2]]
    if args.json:
        emit_json(
            {
                "at": format_time(at_ns),
                "at_ns": at_ns,
                "upto_seq": upto,
                "snapshot": snap_name,
                "mappings": [
                    {
                        "proto": proto_name(m.proto),
                        "internal": format_endpoint(m.int_addr, m.int_port),
                        "external": format_endpoint(m.ext_addr, m.ext_port),
                        "client": sessions[m.session].client if m.session in sessions else None,
                        "session": m.session or None,
                        "created": format_time(m.created),
                        "created_ns": m.created,
                    }
                    for m in mappings
                ],
                "sessions": [
                    {
                        "session": s,
                        "client": name,
                        "vpn_addr": inet.ntoa(vpn),
                        "fingerprint": sessions[s].fingerprint if s in sessions else None,
                        "opened": format_time(sessions[s].at_ns) if s in sessions else None,
                    }
                    for vpn, s, name in open_sessions
                ],
                "notes": [str(n) for n in j.notes],
            },
            sys.stdout,
        )
        return EXIT_OK
    out = sys.stdout
    source = f"snapshot {snap_name} + events to seq {upto}" if snap_name else f"events 1..{upto}"
    out.write(f"NAT table at {format_time(at_ns)} ({source})\n\n")
    out.write(f"mappings ({len(mappings)})\n")
    if mappings:
        print_table(
            ("proto", "internal", "external", "client", "session", "created"),
            [
                (
                    proto_name(m.proto),
                    format_endpoint(m.int_addr, m.int_port),
                    format_endpoint(m.ext_addr, m.ext_port),
                    sessions[m.session].client if m.session in sessions else "-",
                    m.session or "-",
                    format_time(m.created),
                )
                for m in mappings
            ],
            out,
        )
    out.write(f"\nopen sessions ({len(open_sessions)})\n")
    if open_sessions:
        print_table(
            ("session", "client", "vpn address", "opened", "fingerprint"),
            [
                (
                    s,
                    name,
                    inet.ntoa(vpn),
                    format_time(sessions[s].at_ns) if s in sessions else "-",
                    sessions[s].fingerprint if s in sessions else "-",
                )
                for vpn, s, name in open_sessions
            ],
            out,
        )
    return EXIT_OK


# ---------------------------------------------------------------------- verify


class Finding(msgspec.Struct, frozen=True):
    """One thing verify reports: a problem (exit 1) or a warning."""

    severity: str  # "problem" | "warning"
    kind: str  # corrupt | gap | torn_tail | bad_snapshot | double_held | double_internal | orphan_expiry |
    #            early_reuse | snapshot_mismatch | time_backwards | start
    where: str  # file, or seq
    detail: str


def verify_journal(
    directory: str | Path, reuse_delay_s: float = PORT_REUSE_DELAY_S, progress: Progress | None = None
) -> tuple[list[Finding], dict[str, Any]]:
    """Check every frame and the NAT's invariants over every event; return (findings, summary)."""
    j = Journal(directory, salvage=True)
    findings: list[Finding] = []

    def add(severity: str, kind: str, where: str, detail: str) -> None:
        findings.append(Finding(severity, kind, where, detail))

    reuse_ns = int(reuse_delay_s * NS)
    first_seq = j.segments[0].first_seq if j.segments else None
    snaps = {}
    for info in j.snapshots:
        try:
            snaps[info.upto_seq] = (info.path.name, read_snapshot(info.path))
        except JournalCorruptError as exc:
            add("problem", "bad_snapshot", info.path.name, f"{exc.detail} (byte {exc.offset})")
        except OSError as exc:
            add("problem", "bad_snapshot", info.path.name, f"cannot read: {exc.strerror}")
    # A journal that does not start at seq 1 (retention) starts from the oldest snapshot covering its start.
    seed_upto = None
    if first_seq is not None and first_seq > 1:
        covering = [u for u in sorted(snaps) if u >= first_seq - 1]
        if covering:
            seed_upto = covering[0]
            add(
                "warning",
                "start",
                j.segments[0].path.name,
                f"journal starts at seq {first_seq} (older segments removed); mappings created before it are "
                f"taken from {snaps[seed_upto][0]}",
            )
        else:
            add(
                "problem",
                "gap",
                j.segments[0].path.name,
                f"journal starts at seq {first_seq} and no snapshot covers events 1..{first_seq - 1}",
            )

    live: dict[int, tuple[int, int]] = {}  # ext key -> (seq created, int key)
    by_int: dict[int, int] = {}  # int key -> ext key
    resting: dict[int, tuple[int, int]] = {}  # ext key -> (until ns, seq of the expiry)
    counts = 0
    last_seq = None
    last_at = None
    backwards = 0
    reader = SegmentReader(directory, salvage=True)
    current = None

    def check_snapshot(upto: int) -> None:
        name, snap = snaps[upto]
        theirs = {
            p << 48 | a << 16 | o for p, a, o in zip(snap.proto, snap.ext_addr, snap.ext_port, strict=False)
        }
        if upto == seed_upto:
            for p, ia, ip, key in zip(snap.proto, snap.int_addr, snap.int_port, theirs, strict=False):
                if key not in live:
                    live[key] = (0, p << 48 | ia << 16 | ip)
                    by_int[p << 48 | ia << 16 | ip] = key
            for p, a, o, until in zip(
                snap.rest_proto, snap.rest_ext_addr, snap.rest_ext_port, snap.rest_until_ns, strict=False
            ):
                resting.setdefault(p << 48 | a << 16 | o, (until, 0))
            return
        ours = set(live)
        if ours != theirs:
            only_snap, only_events = sorted(theirs - ours), sorted(ours - theirs)
            sample = ", ".join(_key_text(k) for k in (only_snap + only_events)[:3])
            add(
                "problem",
                "snapshot_mismatch",
                name,
                f"disagrees with the events up to seq {upto}: {len(only_snap)} mappings only in the "
                f"snapshot, "
                f"{len(only_events)} only in the events (e.g. {sample})",
            )

    if seed_upto is not None and first_seq is not None and seed_upto == first_seq - 1:
        check_snapshot(seed_upto)
    for frame in reader.frames():
        if progress is not None and frame.path != current:
            current = frame.path
            progress.advance()
        for ev in frame.events:
            counts += 1
            t = type(ev)
            if last_at is not None and ev.at_ns < last_at:
                backwards += 1
                if backwards <= 10:
                    add(
                        "warning",
                        "time_backwards",
                        f"seq {ev.seq}",
                        f"at {format_time(ev.at_ns)} is before the previous event ({format_time(last_at)})",
                    )
            last_at, last_seq = ev.at_ns, ev.seq
            trusted = seed_upto is None or ev.seq > seed_upto
            if t is MappingCreated:
                key = ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port
                int_key = ev.proto << 48 | ev.int_addr << 16 | ev.int_port
                what = f"{format_endpoint(ev.ext_addr, ev.ext_port, ev.proto)}"
                if key in live:
                    add(
                        "problem",
                        "double_held",
                        f"seq {ev.seq}",
                        f"{what} given to {format_endpoint(ev.int_addr, ev.int_port)} "
                        f"({ev.client or '-'}) at "
                        f"{format_time(ev.at_ns)} while still held since seq {live[key][0]}",
                    )
                if int_key in by_int:
                    add(
                        "problem",
                        "double_internal",
                        f"seq {ev.seq}",
                        f"{format_endpoint(ev.int_addr, ev.int_port, ev.proto)} mapped again to {what} while "
                        f"mapped to {_key_text(by_int[int_key])}",
                    )
                rest = resting.get(key)
                if rest is not None and ev.at_ns < rest[0] and key not in live:
                    add(
                        "problem",
                        "early_reuse",
                        f"seq {ev.seq}",
                        f"{what} handed out again at {format_time(ev.at_ns)}, "
                        f"{format_duration(ev.at_ns - (rest[0] - reuse_ns))} after it was freed "
                        f"(seq {rest[1]}); "
                        f"the reuse delay is {reuse_delay_s:g} s",
                    )
                live[key] = (ev.seq, int_key)
                by_int[int_key] = key
            elif t is MappingExpired:
                key = ev.proto << 48 | ev.ext_addr << 16 | ev.ext_port
                held = live.pop(key, None)
                if held is None:
                    if trusted:
                        add(
                            "problem",
                            "orphan_expiry",
                            f"seq {ev.seq}",
                            f"{format_endpoint(ev.ext_addr, ev.ext_port, ev.proto)} expires ({ev.reason}) at "
                            f"{format_time(ev.at_ns)} but no live mapping holds it",
                        )
                else:
                    if by_int.get(held[1]) == key:
                        del by_int[held[1]]
                    resting[key] = (ev.at_ns + reuse_ns, ev.seq)
            if ev.seq in snaps:
                check_snapshot(ev.seq)
    if backwards > 10:
        add("warning", "time_backwards", "", f"{backwards - 10} more events go back in time")
    for upto, (name, _) in snaps.items():
        if last_seq is not None and upto > last_seq:
            add(
                "problem",
                "bad_snapshot",
                name,
                f"covers up to seq {upto} but the journal ends at seq {last_seq}",
            )
    for n in reader.notes:
        kind = {"skipped": "corrupt"}.get(n.kind, n.kind)
        severity = "warning" if n.kind == "torn_tail" else "problem"
        add(severity, kind, f"{Path(n.path).name} offset {n.offset}", n.detail)
    summary = {
        "directory": str(directory),
        "segments": len(j.segments),
        "snapshots": len(j.snapshots),
        "events": counts,
        "first_seq": first_seq,
        "last_seq": last_seq,
        "live_mappings_at_end": len(live),
        "reuse_delay_s": reuse_delay_s,
        "problems": sum(f.severity == "problem" for f in findings),
        "warnings": sum(f.severity == "warning" for f in findings),
    }
    order = {"problem": 0, "warning": 1}
    findings.sort(key=lambda f: order[f.severity])
    return findings, summary


def _key_text(key: int) -> str:
    return format_endpoint(key >> 16 & 0xFFFFFFFF, key & 0xFFFF, key >> 48)


def cmd_verify(args: argparse.Namespace) -> int:
    Journal(args.dir)  # usage errors (no directory, no journal) before the long read
    total = len(list(Path(args.dir).glob("seg-*.gwj")))
    progress = Progress("verifying", total, progress_enabled(args))
    try:
        findings, summary = verify_journal(args.dir, args.reuse_delay, progress)
    finally:
        progress.close()
    if args.json:
        emit_json(
            {
                "ok": summary["problems"] == 0,
                "summary": summary,
                "findings": [msgspec.structs.asdict(f) for f in findings],
            },
            sys.stdout,
        )
    else:
        out = sys.stdout
        seqs = (
            f"seq {summary['first_seq']}..{summary['last_seq']}"
            if summary["last_seq"] is not None
            else "no events"
        )
        out.write(
            f"{summary['directory']}: {summary['segments']} segments, {summary['events']} events ({seqs}), "
            f"{summary['snapshots']} snapshots\n"
        )
        for f in findings:
            where = f"{f.where}: " if f.where else ""
            out.write(f"{f.severity.upper():<8} {f.kind:<17} {where}{f.detail}\n")
        verdict = "ok" if not summary["problems"] else f"{summary['problems']} problems"
        out.write(f"{verdict}, {summary['warnings']} warnings\n")
    return EXIT_OK if summary["problems"] == 0 else EXIT_PROBLEM


# ---------------------------------------------------------------------- stats


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of a sorted list."""
    if not sorted_values:
        return 0
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


def collect_stats(
    j: Journal, since: int | None, until: int | None, progress: Progress | None = None, plot: bool = False
) -> dict[str, Any]:
    """Counts, peaks and lifetimes over the window (the whole journal without one)."""
    lo = -(1 << 63) if since is None else since
    hi = (1 << 63) - 1 if until is None else until
    counts: Counter[str] = Counter()
    live_client: Counter[str] = Counter()
    live_addr: Counter[int] = Counter()
    peak_client: dict[str, tuple[int, int]] = {}
    peak_addr: dict[int, tuple[int, int]] = {}
    lifetimes: list[int] = []
    series: dict[int, list[tuple[int, int]]] = defaultdict(list)  # ext addr -> (at, live) at each change
    scatter: list[tuple[int, int, int]] = []  # (created, ext port, proto)
    inside = [since is None]
    now = [lo]

    def bump(rec: MappingRecord, d: int) -> None:
        client = rec.client or "(no session)"
        live_client[client] += d
        live_addr[rec.ext_addr] += d
        if inside[0] and d > 0:
            if live_client[client] > peak_client.get(client, (0, 0))[0]:
                peak_client[client] = (live_client[client], now[0])
            if live_addr[rec.ext_addr] > peak_addr.get(rec.ext_addr, (0, 0))[0]:
                peak_addr[rec.ext_addr] = (live_addr[rec.ext_addr], now[0])
        if inside[0] and plot:
            series[rec.ext_addr].append((now[0], live_addr[rec.ext_addr]))

    tracker = Tracker(on_open=lambda r: bump(r, 1))
    start = j.segments[0].first_seq if j.segments else None  # after retention: from the oldest segment
    if since is not None:
        snap, start = j.start_point(since, partial=True)
        now[0] = snap.at_ns if snap is not None else lo
        tracker.seed(snap)
    first_at = last_at = None
    for ev in j.events(start_seq=start, progress=progress):
        if ev.at_ns > hi:
            break
        if not inside[0] and ev.at_ns >= lo:
            inside[0] = True
            now[0] = lo
            for client, n in live_client.items():
                if n:
                    peak_client[client] = (n, lo)
            for addr, n in live_addr.items():
                if n:
                    peak_addr[addr] = (n, lo)
                    if plot:
                        series[addr].append((lo, n))
        now[0] = ev.at_ns
        closed = tracker.apply(ev)
        for rec in closed:
            bump(rec, -1)
        if not inside[0]:
            continue
        counts[event_type_name(ev)] += 1
        first_at = ev.at_ns if first_at is None else first_at
        last_at = ev.at_ns
        for rec in closed:
            if rec.end_ns is not None:
                lifetimes.append(rec.end_ns - rec.created_ns)
        if plot and type(ev) is MappingCreated:
            scatter.append((ev.at_ns, ev.ext_port, ev.proto))
    lifetimes.sort()
    return {
        "from": format_time(since) if since is not None else format_time(first_at),
        "to": format_time(until) if until is not None else format_time(last_at),
        "events": sum(counts.values()),
        "counts": dict(sorted(counts.items())),
        "peak_per_client": {
            c: {"live": n, "at": format_time(at)} for c, (n, at) in sorted(peak_client.items())
        },
        "peak_per_address": {
            inet.ntoa(a): {"live": n, "at": format_time(at)} for a, (n, at) in sorted(peak_addr.items())
        },
        "live_at_end": len(tracker.live),
        "lifetimes": {
            "count": len(lifetimes),
            **{f"p{q}_s": _percentile(lifetimes, q) / NS for q in (50, 90, 99)},
            "max_s": (lifetimes[-1] / NS) if lifetimes else 0,
            "histogram": _histogram(lifetimes),
        },
        "_series": series,
        "_scatter": scatter,
    }


def _histogram(lifetimes: list[int]) -> list[dict[str, Any]]:
    edges = [e * NS for e in LIFETIME_BUCKETS_S]
    counts = [0] * (len(edges) + 1)
    i = 0
    for v in lifetimes:  # sorted
        while i < len(edges) and v >= edges[i]:
            i += 1
        counts[i] += 1
    labels = [f"< {format_duration(e)}" for e in edges] + [f">= {format_duration(edges[-1])}"]
    return [{"bucket": lab, "count": n} for lab, n in zip(labels, counts, strict=True)]


def _plot(stats: dict[str, Any], path: str) -> None:
    """Live mappings per public address over time, and external port against creation time."""
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--plot needs matplotlib: install gw[plot] (pip install 'gw[plot]')") from None
    matplotlib.use("Agg")
    import datetime as dt

    import matplotlib.pyplot as plt

    def when(ns: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(ns / NS, dt.UTC)

    def thin(points: list, limit: int = PLOT_MAX_POINTS) -> list:
        step = max(1, len(points) // limit)
        return points[::step]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    for addr, points in sorted(stats["_series"].items()):
        pts = thin(points)
        top.step([when(t) for t, _ in pts], [n for _, n in pts], where="post", label=inet.ntoa(addr))
    top.set_ylabel("live mappings")
    top.set_title(f"external port use {stats['from']} .. {stats['to']}")
    if stats["_series"]:
        top.legend(loc="upper left", fontsize="small")
    colors = {17: "tab:blue", 6: "tab:orange", 1: "tab:green"}
    for proto in (17, 6, 1):
        pts = thin([(t, p) for t, p, pr in stats["_scatter"] if pr == proto])
        if pts:
            bottom.scatter(
                [when(t) for t, _ in pts],
                [p for _, p in pts],
                s=2,
                c=colors[proto],
                label=proto_name(proto),
                alpha=0.6,
                linewidths=0,
            )
    bottom.set_ylabel("external port (new mappings)")
    bottom.set_xlabel("time (UTC)")
    if stats["_scatter"]:
        bottom.legend(loc="upper left", fontsize="small", markerscale=4)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _check_plot_target(text: str, journal_dir: Path) -> None:
    """Before the long scan: matplotlib is there, can write this format, the directory exists and is not
    the journal's. Raises UsageError."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise UsageError("--plot needs matplotlib: install gw[plot] (pip install 'gw[plot]')") from None
    target = Path(text).resolve()
    if target == journal_dir.resolve() or journal_dir.resolve() in target.parents:
        raise UsageError(f"--plot {text}: write the plot outside the journal directory (it is read-only)")
    if target.is_dir():
        raise UsageError(f"--plot {text}: is a directory; give a file name (e.g. ports.png)")
    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    ext = target.suffix[1:].lower()
    if ext not in formats:
        why = f"format {ext!r} is not one matplotlib writes" if ext else "no file extension"
        raise UsageError(f"--plot {text}: {why}; end the name with .{' .'.join(formats)} (e.g. ports.png)")
    if not target.parent.is_dir():
        raise UsageError(f"--plot {text}: directory {target.parent} does not exist")


def cmd_stats(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    if since is not None and until is not None and since > until:
        raise UsageError(f"--from {args.since} is after --to {args.until}")
    j = Journal(args.dir, salvage=args.salvage)
    if args.plot:
        _check_plot_target(args.plot, j.directory)  # fail before the long scan, not after
    progress = Progress("reading", len(j.segments), progress_enabled(args))
    try:
        stats = collect_stats(j, since, until, progress, plot=bool(args.plot))
    finally:
        progress.close()
    _report_notes(j)
    if args.plot:
        _plot(stats, args.plot)
    public = {k: v for k, v in stats.items() if not k.startswith("_")}
    if args.plot:
        public["plot"] = args.plot
    if args.json:
        emit_json(public, sys.stdout)
        return EXIT_OK
    out = sys.stdout
    out.write(f"journal {args.dir}: {stats['events']} events from {stats['from']} to {stats['to']}\n\n")
    print_table(("event", "count"), list(stats["counts"].items()), out)
    out.write("\npeak live mappings per client\n")
    print_table(
        ("client", "peak", "at"), [(c, p["live"], p["at"]) for c, p in stats["peak_per_client"].items()], out
    )
    out.write("\npeak live mappings per public address\n")
    print_table(
        ("address", "peak", "at"),
        [(a, p["live"], p["at"]) for a, p in stats["peak_per_address"].items()],
        out,
    )
    life = stats["lifetimes"]
    out.write(
        f"\nmapping lifetimes ({life['count']} ended): p50 {life['p50_s']:.1f} s, p90 {life['p90_s']:.1f} s, "
        f"p99 {life['p99_s']:.1f} s, max {life['max_s']:.1f} s\n"
    )
    top = max((b["count"] for b in life["histogram"]), default=0) or 1
    for b in life["histogram"]:
        out.write(f"  {b['bucket']:>9}  {b['count']:>8}  {'#' * round(40 * b['count'] / top)}\n")
    if args.plot:
        out.write(f"\nplot written to {args.plot}\n")
    return EXIT_OK


# ---------------------------------------------------------------------- command line


def _report_notes(j: Journal) -> None:
    for n in j.notes:
        sys.stderr.write(f"{PROG}: note: {n}\n")


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Look inside a gw journal: timeline, NAT state at a time, integrity check, statistics. "
            "Read-only: never modifies the journal (a torn tail is reported, not cut)."
        ),
        epilog=f"""examples:
  {PROG} /var/lib/gw/journal timeline --from 2026-11-23T10:00:00Z --to 2026-11-23T10:05:00Z --client alice
  {PROG} /var/lib/gw/journal timeline --follow --proto udp
  {PROG} /var/lib/gw/journal state --at 2026-11-23T10:02:17Z
  {PROG} /var/lib/gw/journal verify --reuse-delay 120
  {PROG} /var/lib/gw/journal stats --plot ports.png

times: RFC 3339 with a UTC offset (2026-11-23T10:02:17Z, 2026-11-23T11:02:17.250+01:00) or epoch
seconds (1795000000.5). --json: timeline prints JSON lines (one event per line); state, verify and
stats print one JSON document.
exit status: 0 ok, 1 problems found (verify) or a corrupt journal, 2 bad usage or no journal there.""",
    )
    parser.add_argument("dir", metavar="DIR", help="the journal directory")
    add_common_options(parser, sub=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tl = sub.add_parser(
        "timeline",
        help="events in order, one line each, filtered",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Events in seq order, one line each (times RFC 3339 UTC). Filters combine (AND). "
            "--addr matches a mapping's internal or external address, a session's VPN or tunnel address; --port "
            "a mapping's internal or external port. An expiry matches through the mapping it ends."
        ),
        epilog=f"examples:\n  {PROG} DIR timeline --client alice --from 2026-11-23T10:00:00Z\n"
        f"  {PROG} DIR timeline --addr 198.51.100.2 --port 40001 --proto udp\n"
        f"  {PROG} DIR timeline --follow          (Ctrl-C to stop)\n"
        '--json: JSON lines, one event per line with its schema fields, "type" and "at".',
    )
    tl.add_argument("--client", metavar="NAME")
    tl.add_argument("--addr", metavar="A", help="IPv4 address: internal or external")
    tl.add_argument("--port", metavar="P", type=port_arg, help="0-65535")
    tl.add_argument("--proto", metavar="udp|tcp|icmp")
    tl.add_argument("--from", dest="since", metavar="T")
    tl.add_argument("--to", dest="until", metavar="T")
    tl.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new events as the journal grows"
    )
    tl.add_argument("--poll", type=float, default=FOLLOW_POLL_S, metavar="S", help="--follow's poll interval")
    add_common_options(tl, sub=True)
    tl.set_defaults(func=cmd_timeline)

    st = sub.add_parser(
        "state",
        help="the NAT table as it stood at a time",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "The NAT table (mappings: protocol, internal, external, client, session, created) and "
            "open "
            "sessions at T: the newest snapshot at or before T, then the events after it up to T, folded through "
            "the gateway's own Nat.apply."
        ),
        epilog=f"example:\n  {PROG} DIR state --at 2026-11-23T10:02:17Z\n"
        "--json: one JSON document {at, upto_seq, snapshot, mappings: [...], sessions: [...]}",
    )
    st.add_argument("--at", required=True, metavar="T")
    add_common_options(st, sub=True)
    st.set_defaults(func=cmd_state)

    vf = sub.add_parser(
        "verify",
        help="check checksums, sequence and NAT invariants",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Read every frame of every segment (reporting every corrupt region, torn tail and "
            "seq gap) and check: no external endpoint held twice at once, every expiry matches a live mapping, "
            "no endpoint handed out again within the reuse delay, every snapshot agrees with the events before "
            "it. A torn tail of the newest segment (a crash mid-write) is a warning. Exit 0 clean, 1 problems."
        ),
        epilog=f"example:\n  {PROG} DIR verify --reuse-delay 120\n"
        "--json: one JSON document {ok, summary, findings: [{severity, kind, where, detail}]}",
    )
    vf.add_argument(
        "--reuse-delay",
        type=float,
        default=PORT_REUSE_DELAY_S,
        metavar="S",
        help=f"seconds a freed external port must rest (gateway.toml [nat] port_reuse_delay_s; "
        f"default {PORT_REUSE_DELAY_S})",
    )
    add_common_options(vf, sub=True)
    vf.set_defaults(func=cmd_verify)

    ss = sub.add_parser(
        "stats",
        help="event counts, peaks, mapping lifetimes, port-use plot",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "Event counts by type, peak live mappings per client and per public address, mapping "
            "lifetimes (percentiles and a histogram), over the window or the whole journal. --plot draws live "
            "mappings per public address over time and external port against time (needs gw[plot])."
        ),
        epilog=f"example:\n  {PROG} DIR stats --from 2026-11-23T00:00:00Z --to 2026-11-24T00:00:00Z "
        "--plot day.png\n"
        "--json: one JSON document {from, to, events, counts, peak_per_client, peak_per_address, lifetimes}",
    )
    ss.add_argument("--from", dest="since", metavar="T")
    ss.add_argument("--to", dest="until", metavar="T")
    ss.add_argument("--plot", metavar="FILE.png")
    add_common_options(ss, sub=True)
    ss.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """gw-replay's entry point; returns the exit status."""
    return run_tool(PROG, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
