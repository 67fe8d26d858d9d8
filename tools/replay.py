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
- ``repair`` (the one command that writes) cuts damage off the newest segment, keeping what it cuts in
  ``<segment>.broken``, so that recovery can start (``journal.recovery.repair``).
- ``stats`` counts events, follows live mappings per client and per public address for their peaks,
  and summarizes mapping lifetimes; ``--plot`` draws them with matplotlib (``pip install 'gw[plot]'``).

``verify`` and ``stats`` live in ``tools/verify.py`` and ``tools/stats.py``; this module holds the other
two commands and the command line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import msgspec

from gw import inet
from gw.config import PORT_REUSE_DELAY_S, NatConfig
from gw.errors import UsageError
from gw.nat import Nat
from journal.events import (
    GatewayStarted,
    GatewayStopped,
    Heartbeat,
    JournalEvent,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SessionClosed,
    SessionOpened,
    SessionRefused,
    SnapshotTaken,
)
from journal.holders import MappingRecord, Tracker
from journal.reader import Journal
from journal.recovery import repair
from journal.segments import segment_paths
from tools.common import (
    EXIT_DAMAGED,
    EXIT_OK,
    Parser,
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
    proto_name,
    report_notes,
    run_tool,
    seconds_arg,
    wrap,
)
from tools.stats import cmd_stats
from tools.verify import cmd_verify

__all__ = ["main", "state_at"]

PROG = "gw-replay"
FOLLOW_POLL_S = 0.5  # how often --follow looks for new frames
MAX_POLL_S = 3600.0  # --poll above an hour is a typo, not a wish
MAX_REUSE_DELAY_S = 86400.0 * 365  # --reuse-delay: a year; the gateway's own is minutes
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
    if t is Heartbeat:
        return f"{head}heartbeat         {ev.mappings_count} mappings"
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
    report_notes(PROG, j)
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
    reader = j.reader
    path: Path | None = None
    offset = 0
    lo = -(1 << 63) if since is None else since
    noted = len(j.notes)
    while True:
        segs = segment_paths(j.directory)
        if path is None or not path.exists():
            holding = [p for s, p in segs if s <= last_seq + 1]
            path, offset = (holding[-1] if holding else (segs[0][1] if segs else None)), 0
        progressed = False
        if path is not None:
            frames, offset = reader.poll(path, offset)
            if len(j.notes) > noted:
                for note in j.notes[noted:]:
                    sys.stderr.write(f"{PROG}: note: {note}\n")
                noted = len(j.notes)
            for frame in frames:
                if frame.first_seq + frame.count - 1 <= last_seq:
                    continue
                progressed = True
                for ev in frame.events:
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
            if not progressed and newer and offset >= _size(path):
                path, offset = newer[0], 0  # the writer rotated
                continue
        out.flush()
        if not progressed:
            time.sleep(args.poll)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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
    report_notes(PROG, j)
    complete = not any(n.kind == "unknown_state" for n in j.notes)  # only with --salvage
    mappings = sorted(nat.mappings(), key=lambda m: (m.ext_key, m.key))
    open_sessions = [(vpn, s, name) for vpn, (s, name) in nat.table_state()[2]]
    if args.json:
        emit_json(
            {
                "at": format_time(at_ns),
                "at_ns": at_ns,
                "upto_seq": upto,
                "snapshot": snap_name,
                "complete": complete,
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
    out.write(f"NAT table at {format_time(at_ns)} ({source})\n")
    if not complete:
        out.write("INCOMPLETE: the state there is not fully known (see the notes on stderr)\n")
    out.write("\n")
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


# ---------------------------------------------------------------------- command line


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
exit status:
  0  ok (repair: repaired, or nothing to repair)
  1  verify: problems found
  2  bad usage, or no journal there
  3  the journal is damaged where the command needs it (corrupt data, a sequence gap, a state that
     cannot be known): nothing was answered; --salvage reads around it and names what it skipped;
     repair: damage it cannot repair (an older segment: restore it from backup)""",
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
    tl.add_argument(
        "--poll",
        type=seconds_arg(0, MAX_POLL_S, low_open=True),
        default=FOLLOW_POLL_S,
        metavar="S",
        help=f"--follow's poll interval, more than 0 and at most {MAX_POLL_S:g} s (default {FOLLOW_POLL_S:g})",
    )
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
        type=seconds_arg(0, MAX_REUSE_DELAY_S),
        default=PORT_REUSE_DELAY_S,
        metavar="S",
        help=f"seconds a freed external port must rest, 0 to {MAX_REUSE_DELAY_S:g} (gateway.toml [nat] "
        f"port_reuse_delay_s; default {PORT_REUSE_DELAY_S})",
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

    rp = sub.add_parser(
        "repair",
        help="cut damage off the newest segment so the gateway can start (keeps what it cuts)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=wrap(
            "When recovery refuses to start because the newest segment holds damaged data (a frame that "
            "fails its checksum, followed by whole frames or not), cut that segment at its first bad byte: "
            "everything from there on is moved to <segment>.broken (nothing is deleted) and the journal "
            "then ends at the last whole frame before the damage. Events in the cut part are lost to "
            "recovery and audits; the command says how many. Damage in an older segment is not repaired "
            "(cutting it would break the sequence): restore that segment from backup. Run it with the "
            "gateway stopped (it takes the journal's lock). The one gw-replay command that writes."
        ),
        epilog=f"example:\n  {PROG} DIR repair\n"
        "--json: one JSON document {repaired, cut: [{file, offset, bytes, kept_in, events_lost}], notes}",
    )
    add_common_options(rp, sub=True)
    rp.set_defaults(func=cmd_repair)
    return parser


def cmd_repair(args: argparse.Namespace) -> int:
    Journal(args.dir)  # usage errors first (no directory, no journal)
    result = repair(args.dir)
    if args.json:
        emit_json(
            {
                "repaired": result.repaired,
                "cut": [
                    {
                        "file": c.path.name,
                        "offset": c.offset,
                        "bytes": c.size_bytes,
                        "kept_in": c.kept_in.name,
                        "events_lost": c.events_lost,
                    }
                    for c in result.cuts
                ],
                "notes": result.problems,
            },
            sys.stdout,
        )
    else:
        for c in result.cuts:
            sys.stdout.write(
                f"{c.path.name}: cut {c.size_bytes} bytes at offset {c.offset} (kept in {c.kept_in.name}); "
                f"{c.events_lost} events in whole frames after the damage are lost\n"
            )
        if not result.cuts and not result.problems:
            sys.stdout.write(f"{args.dir}: nothing to repair\n")
    for problem in result.problems:
        sys.stderr.write(f"{PROG}: {problem}\n")
    return EXIT_DAMAGED if result.problems else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """gw-replay's entry point; returns the exit status."""
    return run_tool(PROG, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
