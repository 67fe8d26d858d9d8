"""Journal benchmark: ``python -m bench.journal``. Human-readable lines, then one JSON line.

Measures, on realistic MappingCreated/MappingExpired traffic (random external and internal ports, a few
hundred clients, counters on expiry):

- encode_frame / decode_frame alone at zstd levels 1 and 3 (bytes/event and events/s, in memory);
- durable append through JournalWriter with fsync="interval" (submit in batches of 1000 as the daemon's
  per-batch drain does; timed from the first submit until everything is fsynced);
- bytes per event on disk; replay (read + decode through SegmentReader) events/s;
- snapshot write + read of 1,000,000 mappings; and, if gw.nat has Nat.restore, restoring them;
- restart: in a fresh process, from its start (interpreter, imports, ``recovery.load`` of the snapshot
  and a journal tail, ``Nat.restore(lazy=True)``, ``resume``) to the first forwarded packet of a surviving
  flow, then until the table is whole through ``expire`` calls (and the longest of those calls: the
  pause a packet can see). The same with an eager restore, for comparison. Median of RESTART_RUNS.

Targets (DESIGN.md, issue 10): append >= 1,000,000 events/s on one core, <= 24 B/event, restore 1 M
mappings <= 2 s, and a restart with 1 M mappings forwards its first packet within 1 s.
Everything lives in a temp dir under /tmp that is removed at the end.
"""

from __future__ import annotations

import array
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from journal import frames
from journal.events import MappingCreated, MappingExpired, SessionOpened, Snapshot
from journal.segments import SegmentReader, list_segments, read_snapshot, write_snapshot
from journal.writer import JournalWriter

APPEND_EVENTS = 1_000_000
RESTART_RUNS = 3
RESTART_TAIL = 2_000  # journal events after the snapshot, folded by the restore
SNAPSHOT_MAPPINGS = 1_000_000
SNAPSHOT_CLIENTS = 250  # fits 10.66.77.0/24
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
EXT_BASE = 0xC6336402  # 198.51.100.2
VPN_BASE = 0x0A424D00  # 10.66.77.0


def build_traffic(count: int, seed: int = 1) -> list:
    """A realistic mix: mappings created by ~200 clients and expired later with counters, ~1 event/10 us."""
    rng = random.Random(seed)
    clients = [f"client-{i:03d}" for i in range(200)]
    reasons = ("idle", "idle", "idle", "tcp_closed", "session_closed")
    live: list[tuple[int, int, int]] = []
    events: list = []
    at = T0_NS
    for seq in range(1, count + 1):
        at += rng.randrange(1_000, 20_000)
        if len(live) > 5_000 or (live and rng.random() < 0.45):
            proto, addr, port = live.pop(rng.randrange(len(live)))
            packets_out = rng.randrange(1, 400)
            packets_in = rng.randrange(0, 600)
            events.append(
                MappingExpired(
                    seq=seq,
                    at_ns=at,
                    proto=proto,
                    ext_addr=addr,
                    ext_port=port,
                    reason=rng.choice(reasons),
                    packets_out=packets_out,
                    bytes_out=packets_out * rng.randrange(60, 1400),
                    packets_in=packets_in,
                    bytes_in=packets_in * rng.randrange(60, 1400),
                )
            )
        else:
            proto = rng.choice((6, 6, 17, 17, 17, 1))
            client = rng.randrange(200)
            addr, port = EXT_BASE + rng.randrange(4), rng.randrange(1024, 65536)
            live.append((proto, addr, port))
            events.append(
                MappingCreated(
                    seq=seq,
                    at_ns=at,
                    proto=proto,
                    int_addr=VPN_BASE + 2 + client,
                    int_port=rng.randrange(32768, 61000),
                    ext_addr=addr,
                    ext_port=port,
                    client=clients[client],
                    session=1000 + client,
                )
            )
    return events


def build_snapshot(count: int, seed: int = 2) -> Snapshot:
    """A consistent snapshot of ``count`` live mappings, column by column.

    250 clients with ``count // 250`` mappings each (under the NAT's default quota of 4096); each client is
    paired with one of 16 external addresses, and external ports are unique per address.
    """
    per_client = count // SNAPSHOT_CLIENTS
    rows = range(per_client * SNAPSHOT_CLIENTS)
    owner = [i // per_client for i in rows]
    slot = [i % per_client for i in rows]
    clients = [f"client-{c:03d}" for c in range(SNAPSHOT_CLIENTS)]
    protos = (6, 17, 17, 1)
    rng = random.Random(seed)

    def noise(bits: int) -> list[int]:  # fast seeded random column: incompressible like real counters
        return [v >> (32 - bits) if bits < 32 else v for v in array.array("I", rng.randbytes(4 * len(rows)))]

    return Snapshot(
        upto_seq=10 * count,
        at_ns=T0_NS,
        proto=[protos[i & 3] for i in rows],
        int_addr=[VPN_BASE + 2 + c for c in owner],
        int_port=[20000 + j for j in slot],
        ext_addr=[EXT_BASE + c % 16 for c in owner],
        ext_port=[1024 + (c // 16) * per_client + j for c, j in zip(owner, slot, strict=True)],
        session=[1000 + c for c in owner],
        created_ns=[T0_NS - (r << 14) for r in noise(31)],  # up to ~10 h old
        last_seen_ns=[T0_NS - (r << 8) for r in noise(30)],  # seen in the last ~4.5 min
        tcp_state=[0] * len(rows),
        packets_out=noise(10),
        bytes_out=noise(20),
        packets_in=noise(10),
        bytes_in=noise(20),
        remote_addr=[0] * len(rows),
        remote_port=[0] * len(rows),
        client=[clients[c] for c in owner],
        sessions=[
            SessionOpened(
                seq=c + 1,
                at_ns=T0_NS,
                session=1000 + c,
                client=clients[c],
                fingerprint="ab" * 32,
                remote_addr="203.0.113.7",
                remote_port=40000 + c,
                vpn_addr=VPN_BASE + 2 + c,
            )
            for c in range(SNAPSHOT_CLIENTS)
        ],
    )


def bench_frames(events: list) -> dict:
    """encode_frame/decode_frame in memory at 1024 events per frame, for zstd levels 1 and 3."""
    import zstandard

    out = {}
    dctx = frames.new_decompressor()
    sample = events[:200_000]
    for i in range(0, 20_000, 1024):  # warm up allocator and caches so the first level is not penalized
        frames.decode_frame(frames.encode_frame(sample[i : i + 1024]), 0, dctx)
    for level in (1, 3):
        cctx = zstandard.ZstdCompressor(level=level)
        t = time.perf_counter()
        blobs = [frames.encode_frame(sample[i : i + 1024], cctx) for i in range(0, len(sample), 1024)]
        enc = time.perf_counter() - t
        t = time.perf_counter()
        for blob in blobs:
            frames.decode_frame(blob, 0, dctx)
        dec = time.perf_counter() - t
        size = sum(map(len, blobs)) / len(sample)
        print(
            f"frames, zstd level {level}: {size:.2f} B/event, encode {len(sample) / enc:,.0f} events/s, "
            f"decode {len(sample) / dec:,.0f} events/s"
        )
        out[level] = (size, len(sample) / enc, len(sample) / dec)
    return out


def bench_append(directory: str, events: list) -> tuple[float, float, float]:
    """Durable append through JournalWriter(fsync="interval"): events/s wall, events per CPU second, B/event.

    CPU time (all threads of this process) says what one core can do even when the machine is shared.
    """
    errors: list[Exception] = []
    writer = JournalWriter(directory, fsync="interval", on_error=errors.append)
    writer.start()
    t, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(events), 1000):
        writer.submit(events[i : i + 1000])
    durable = writer.flush(timeout=120)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    writer.close()
    assert durable == events[-1].seq and not errors, (durable, errors)
    size = sum(s.size_bytes for s in list_segments(directory))
    return len(events) / elapsed, len(events) / cpu, size / len(events)


def bench_replay(directory: str, count: int) -> tuple[float, float]:
    """Read and decode the whole journal through SegmentReader: events/s wall and per CPU second."""
    t, cpu = time.perf_counter(), time.process_time()
    seen = sum(len(frame.events) for frame in SegmentReader(directory).frames())
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    assert seen == count, seen
    return count / elapsed, count / cpu


def bench_snapshot(directory: str, snapshot: Snapshot) -> tuple[float, Path, int]:
    """write_snapshot of the given snapshot: seconds, path and file bytes."""
    t = time.perf_counter()
    path = write_snapshot(directory, snapshot)
    return time.perf_counter() - t, path, os.path.getsize(path)


def bench_restore(snapshot: Snapshot) -> float | str:
    """Seconds for gw.nat.Nat.restore over the snapshot, or why it was skipped."""
    try:
        from gw.config import NatConfig
        from gw.nat import Nat
    except ImportError as exc:
        return f"skipped: gw.nat not available yet ({exc})"
    if not hasattr(Nat, "restore"):
        return "skipped: gw.nat.Nat has no restore() yet"
    config = NatConfig(external_addresses=[f"198.51.100.{2 + i}" for i in range(16)])
    t = time.perf_counter()
    nat = Nat.restore(config, snapshot, [])
    elapsed = time.perf_counter() - t
    assert len(nat) == len(snapshot.proto), (len(nat), len(snapshot.proto))
    return elapsed


def write_restart_journal(directory: str, snapshot: Snapshot) -> None:
    """A journal as a crash leaves it: heartbeats, a snapshot of ``snapshot``'s table, a tail after it."""
    from journal.events import Heartbeat

    upto = 100
    beats = [Heartbeat(seq=s, at_ns=T0_NS - 10**9 + s, mappings_count=len(snapshot.proto))
             for s in range(1, upto + RESTART_TAIL + 1)]  # fmt: skip
    writer = JournalWriter(directory, fsync="never")
    writer.start()
    writer.submit(beats)
    writer.close()
    import msgspec

    write_snapshot(directory, msgspec.structs.replace(snapshot, upto_seq=upto), fsync=False)


def restart_child(directory: str, mode: str) -> None:
    """In a fresh process: recover, restore (``mode`` lazy or eager), resume, forward one packet of a
    restored flow; print monotonic times (the parent's clock too, on Linux) as one JSON line."""
    from gw import packet as P
    from gw.config import NatConfig
    from gw.nat import FORWARD, Nat
    from journal import recovery

    rec = recovery.load(directory, truncate_torn_tail=False)
    now = time.monotonic_ns()
    wall_offset = T0_NS + 5 * 10**9 - now  # the restart 5 s after the crash, in the journal's time
    config = NatConfig(external_addresses=[f"198.51.100.{2 + i}" for i in range(16)])
    gc.disable()  # as the daemon does around a restore (a million new objects)
    nat = Nat.restore(config, rec.snapshot, rec.events, lazy=mode == "lazy", wall_offset=wall_offset)
    nat.resume(now, rec.down_since_ns)
    s = rec.snapshot
    row = next(i for i in range(len(s.proto) // 2, len(s.proto)) if s.proto[i] == 17)  # a UDP flow mid-table
    pkt = P.build_udp(s.int_addr[row], 0x08080808, s.int_port[row], 53, b"still there?")
    verdict = nat.translate_outbound(pkt, time.monotonic_ns())
    first = time.monotonic()
    assert verdict == FORWARD and P.get_u16(pkt, 20)[0] == s.ext_port[row], (verdict, row)
    pauses = []
    while nat.restoring:
        t = time.perf_counter()
        nat.expire(time.monotonic_ns())
        pauses.append(time.perf_counter() - t)
    whole = time.monotonic()
    assert len(nat) == len(s.proto)
    pauses.sort()
    print(json.dumps({"first": first, "whole": whole, "calls": len(pauses),
                      "pause_median_ms": pauses[len(pauses) // 2] * 1e3 if pauses else 0,
                      "pause_max_ms": pauses[-1] * 1e3 if pauses else 0}))  # fmt: skip


def bench_restart(directory: str, mode: str) -> dict:
    """Median and spread over RESTART_RUNS fresh processes of ``restart_child``: seconds from spawn."""
    import statistics
    import subprocess

    runs = []
    for _ in range(RESTART_RUNS):
        start = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "bench.journal", "--restart-child", directory, mode],
            check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        child = json.loads(out.stdout.strip().splitlines()[-1])
        runs.append(
            (child["first"] - start, child["whole"] - start, child["pause_median_ms"], child["pause_max_ms"])
        )
    first, whole = sorted(r[0] for r in runs), sorted(r[1] for r in runs)
    return {
        "first_packet_s": round(statistics.median(first), 3),
        "first_packet_range_s": [round(first[0], 3), round(first[-1], 3)],
        "whole_s": round(statistics.median(whole), 3),
        "whole_range_s": [round(whole[0], 3), round(whole[-1], 3)],
        "pause_median_ms": round(statistics.median(r[2] for r in runs), 1),
        "pause_max_ms": round(max(r[3] for r in runs), 1),
    }


def main() -> None:
    started = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    root = tempfile.mkdtemp(prefix="gw-bench-journal-", dir="/tmp" if os.path.isdir("/tmp") else None)
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}, temp dir {root}")
        t = time.perf_counter()
        events = build_traffic(APPEND_EVENTS)
        print(f"built {len(events):,} events in {time.perf_counter() - t:.1f} s (not timed below)")
        levels = bench_frames(events)
        append_rate, append_cpu_rate, bytes_per_event = bench_append(os.path.join(root, "j"), events)
        print(
            f"durable append (JournalWriter, fsync=interval): {append_rate:,.0f} events/s "
            f"({append_cpu_rate:,.0f} per CPU second)"
        )
        print(f"on disk: {bytes_per_event:.2f} B/event (zstd level {frames.ZSTD_LEVEL}, 1024 events/frame)")
        replay_rate, replay_cpu_rate = bench_replay(os.path.join(root, "j"), len(events))
        print(f"replay (read + decode): {replay_rate:,.0f} events/s ({replay_cpu_rate:,.0f} per CPU second)")
        del events
        t = time.perf_counter()
        snapshot = build_snapshot(SNAPSHOT_MAPPINGS)
        print(f"built a snapshot of {SNAPSHOT_MAPPINGS:,} mappings in {time.perf_counter() - t:.1f} s")
        snap_write, snap_path, snap_bytes = bench_snapshot(os.path.join(root, "s"), snapshot)
        del snapshot  # read it back into fresh memory, as a restarting daemon does
        gc.collect()
        t = time.perf_counter()
        snapshot = read_snapshot(snap_path)
        snap_read = time.perf_counter() - t
        print(
            f"snapshot of {SNAPSHOT_MAPPINGS:,} mappings: write {snap_write:.2f} s, read {snap_read:.2f} s, "
            f"{snap_bytes / 1e6:.1f} MB ({snap_bytes / SNAPSHOT_MAPPINGS:.1f} B/mapping)"
        )
        restore = bench_restore(snapshot)
        shown = restore if isinstance(restore, str) else f"{restore:.2f} s"
        print(f"restore {SNAPSHOT_MAPPINGS:,} mappings through gw.nat.Nat.restore: {shown}")
        write_restart_journal(os.path.join(root, "r"), snapshot)
        del snapshot
        gc.collect()
        restart = {mode: bench_restart(os.path.join(root, "r"), mode) for mode in ("lazy", "eager")}
        for mode, r in restart.items():
            print(
                f"restart with {SNAPSHOT_MAPPINGS:,} mappings ({mode}, fresh process, median of {RESTART_RUNS}): "
                f"first forwarded packet {r['first_packet_s']:.2f} s ({r['first_packet_range_s'][0]:.2f}-"
                f"{r['first_packet_range_s'][1]:.2f}), table whole {r['whole_s']:.2f} s"
                + (f", expire() calls meanwhile: median {r['pause_median_ms']} ms, max {r['pause_max_ms']} ms"
                   if mode == "lazy" else "")
            )  # fmt: skip
        from bench.audit import measure_who_latency  # the tools' figure, in the journal's run (issue 3)

        audit = measure_who_latency()
        print(
            f"gw-audit who over a 24 h history: median {audit['who_median_ms']:.1f} ms, "
            f"p95 {audit['who_p95_ms']:.1f} ms (target <= 50 ms)"
        )
        result = {
            "append_events_per_s": round(append_rate),
            "append_events_per_cpu_s": round(append_cpu_rate),
            "bytes_per_event": round(bytes_per_event, 2),
            "replay_events_per_s": round(replay_rate),
            "replay_events_per_cpu_s": round(replay_cpu_rate),
            "snapshot_1m_write_s": round(snap_write, 3),
            "snapshot_1m_read_s": round(snap_read, 3),
            "snapshot_1m_write_read_s": round(snap_write + snap_read, 3),
            "snapshot_1m_bytes": snap_bytes,
            "restore_1m_s": None if isinstance(restore, str) else round(restore, 3),
            "restart_1m": restart,
            "audit_who_median_ms": audit["who_median_ms"],
            "audit_who_p95_ms": audit["who_p95_ms"],
            "zstd_level": frames.ZSTD_LEVEL,
            "frame_levels": {
                str(k): {
                    "bytes_per_event": round(v[0], 2),
                    "encode_per_s": round(v[1]),
                    "decode_per_s": round(v[2]),
                }
                for k, v in levels.items()
            },
            "total_s": round(time.perf_counter() - started, 1),
            "load_average_at_start": load,
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--restart-child"]:
        restart_child(sys.argv[2], sys.argv[3])
    else:
        main()
