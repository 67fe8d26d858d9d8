"""gw-replay stats: event counts, peak live mappings per client and per public address, mapping lifetimes.

``--plot`` draws port use over time with matplotlib (``pip install 'gw[plot]'``); the target is checked
before the scan, so a bad path fails at once.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from gw import inet
from gw.errors import UsageError
from journal.events import (
    MappingCreated,
)
from journal.holders import MappingRecord, Tracker
from journal.reader import Journal
from tools.common import (
    EXIT_OK,
    NS,
    Progress,
    emit_json,
    event_type_name,
    format_duration,
    format_time,
    parse_time,
    print_table,
    progress_enabled,
    proto_name,
    report_notes,
)

__all__ = ["cmd_stats", "collect_stats"]

LIFETIME_BUCKETS_S = (1, 10, 60, 300, 900, 3600, 7440, 6 * 3600, 86400)  # histogram edges (UDP 300, TCP 7440)
PLOT_MAX_POINTS = 200_000  # per series: beyond this the plot is sampled evenly (a PNG cannot show more)


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
    for ev in j.events(start_seq=start, progress=progress.advance if progress is not None else None):
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
    report_notes("gw-replay", j)
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
