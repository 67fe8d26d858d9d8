"""gw-replay verify: checksums, sequence and the NAT's invariants over a whole journal (read-only).

Every frame is read with ``journal.segments.SegmentReader`` in salvage mode, so every bad region, gap and
torn tail is reported instead of stopping at the first; then the events are checked for what the NAT
promises: no external endpoint held twice at once, every expiry matches a live mapping, no endpoint
handed out again within the reuse delay (``journal.events.rest_until``, the rule the NAT uses), and
every snapshot agrees with the events before it. Audit indexes are checked too: a ``.idx`` that fails
its checksum, or that disagrees with the segment it indexes, is a problem (``who`` then reads the
segment instead, but it would have trusted a wrong one before).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from gw.config import PORT_REUSE_DELAY_S
from journal.errors import JournalCorruptError
from journal.events import MappingCreated, MappingExpired, rest_until
from journal.index import build_index, is_current, read_index
from journal.reader import Journal
from journal.segments import SegmentReader, read_snapshot
from tools.common import (
    EXIT_OK,
    EXIT_PROBLEM,
    NS,
    Progress,
    emit_json,
    format_duration,
    format_endpoint,
    format_time,
    progress_enabled,
)

__all__ = ["Finding", "cmd_verify", "verify_journal"]


class Finding(msgspec.Struct, frozen=True):
    """One thing verify reports: a problem (exit 1) or a warning."""

    severity: str  # "problem" | "warning"
    kind: str  # corrupt | gap | torn_tail | bad_snapshot | double_held | double_internal | orphan_expiry |
    #            early_reuse | snapshot_mismatch | time_backwards | start | bad_index | stale_index
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
                    resting[key] = (rest_until(ev.at_ns, reuse_ns), ev.seq)
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
    _check_indexes(j, add)
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


def _check_indexes(j: Journal, add: Callable[[str, str, str, str], None]) -> None:
    """Every ``.idx`` present: checksum, and agreement with its segment when it claims to be current."""
    for seg in j.segments:
        try:
            stored = read_index(seg.path)
        except JournalCorruptError as exc:
            add("problem", "bad_index", f"{Path(exc.path).name} offset {exc.offset}", f"{exc.detail}; who reads "
                "the segment instead (gw-audit DIR reindex rewrites it)")
            continue
        except OSError as exc:
            add("problem", "bad_index", seg.path.name + ".idx", f"cannot read: {exc.strerror}")
            continue
        if stored is None:
            continue
        if not is_current(stored, seg.path.stat()):
            add("warning", "stale_index", seg.path.name + ".idx", "made for an older state of the segment; "
                "who rebuilds it in memory (gw-audit DIR reindex rewrites it)")
            continue
        if stored != build_index(seg.path, write=False):
            add("problem", "bad_index", seg.path.name + ".idx", "checks out but disagrees with its segment "
                "(endpoints, seqs or times); gw-audit DIR reindex rewrites it")


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
