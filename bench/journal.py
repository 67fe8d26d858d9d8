"""Journal benchmark: ``python -m bench.journal``. Human-readable lines, then one JSON line.

Measures, on realistic MappingCreated/MappingExpired traffic (random external and internal ports, a few
hundred clients, counters on expiry):

- encode_frame / decode_frame alone at zstd levels 1 and 3 (bytes/event and events/s, in memory);
- durable append through JournalWriter with fsync="interval" (submit in batches of 1000 as the daemon's
  per-batch drain does; timed from the first submit until everything is fsynced);
- bytes per event on disk; replay (read + decode through SegmentReader) events/s;
- snapshot write + read of 1,000,000 mappings; and, if gw.nat has Nat.restore, restoring them.

Targets (DESIGN.md): append >= 1,000,000 events/s on one core, <= 24 B/event, restore 1 M mappings <= 2 s.
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
        del snapshot
        gc.collect()
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
    main()
