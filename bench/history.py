"""Journals from real NAT traffic, for the audit benchmark and the tools' tests (``tests.helpers.history``
re-exports this module: tests may import bench, bench never imports tests).

``generate(seed, ...)`` drives a seeded ``gw.nat.Nat`` the way the gateway does: clients open sessions
(``open_session``) on addresses from a small VPN pool (a closed session's address goes to the next
client), send UDP, TCP and ICMP echo through ``translate_outbound``, the clock advances and ``expire``
runs, sessions close. It keeps every event, the snapshots taken on the way
(``snapshot_view(now).build()``) and *checkpoints*: the live table at the end of each tick, which is the
table at any T in ``[tick time, next tick time)``.

``write_journal`` writes the events as frames and segments directly (``journal.frames`` +
``journal.segments``: deterministic frame and segment boundaries), ``write_with_writer`` goes through
``journal.writer.JournalWriter``.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from gw import packet as P
from gw.config import NatConfig
from gw.nat import Nat
from journal.events import GatewayStarted, GatewayStopped, JournalEvent, Snapshot, SnapshotTaken
from journal.frames import encode_frame, new_compressor
from journal.segments import segment_name, snapshot_name, write_snapshot
from journal.writer import JournalWriter

NS = 1_000_000_000
T0 = 1_795_000_000 * NS  # 2026-11-18T...Z
VPN_POOL = [0x0A424D00 | h for h in range(2, 10)]  # 10.66.77.2 .. 10.66.77.9
EXT_ADDRS = ["198.51.100.1", "198.51.100.2"]
REMOTES = [0xCB00710A, 0xCB007114, 0xC0000207]  # 203.0.113.10, 203.0.113.20, 192.0.2.7
SPORTS = [53, 123, 1024, 5353, 40000, 40001, 50000, 51820, 60000]
UDP, TCP, ICMP = 17, 6, 1


def fingerprint(client: str) -> str:
    """A stable fake certificate fingerprint per client name."""
    return hashlib.sha256(f"cert of {client}".encode()).hexdigest()


@dataclass
class History:
    """What a generated run produced (see the module doc)."""

    config: NatConfig
    events: list[JournalEvent] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    checkpoints: list[tuple[int, list[tuple]]] = field(default_factory=list)  # (tick time, table)
    start_ns: int = T0
    end_ns: int = T0


def table_of(nat: Nat) -> list[tuple]:
    """The live table, comparable: (proto, int_addr, int_port, ext_addr, ext_port, session, created)."""
    return sorted(
        (m.proto, m.int_addr, m.int_port, m.ext_addr, m.ext_port, m.session, m.created)
        for m in nat.mappings()
    )


def generate(
    seed: int,
    *,
    ticks: int = 60,
    clients: int = 5,
    flows_per_tick: tuple[int, int] = (0, 4),
    port_range: str = "40000-40031",
    snapshot_ticks: tuple[int, ...] = (),
    snapshot_every: int | None = None,
    snapshot_every_s: float | None = None,
    vpn_pool: int = 8,
    checkpoints: bool = True,
    log_destination: bool | None = None,
    advance_s: tuple[float, ...] = (0.5, 2, 5, 30, 61, 130, 250, 330),
    start_ns: int = T0,
) -> History:
    """Random NAT traffic through a real Nat; ``seed`` makes it reproducible."""
    rng = random.Random(seed)
    config = NatConfig(
        external_addresses=list(EXT_ADDRS),
        port_range=port_range,
        max_mappings_per_client=24,
        log_destination=rng.random() < 0.5 if log_destination is None else log_destination,
    )
    nat = Nat(config, random.Random(seed + 1))
    h = History(config=config, start_ns=start_ns)
    now = start_ns
    names = [f"client{i}" for i in range(clients)]
    pool = VPN_POOL if vpn_pool <= len(VPN_POOL) else [0x0A420000 | h for h in range(2, 2 + vpn_pool)]
    online: dict[str, tuple[int, int]] = {}  # name -> (session, vpn addr)
    next_snapshot = start_ns + int(snapshot_every_s * NS) if snapshot_every_s else None
    next_session = 1
    nat.record_event(GatewayStarted, now, version="0.1.0", ext_addrs=config.external_ints())

    def drain() -> None:
        h.events.extend(nat.events)
        nat.events.clear()

    for tick in range(ticks):
        for _ in range(rng.randint(*flows_per_tick)):
            roll = rng.random()
            name = rng.choice(names)
            if name not in online and roll < 0.5:
                taken = {v for _, v in online.values()}
                free = [a for a in pool if a not in taken]
                if free:
                    addr = rng.choice(free)
                    nat.open_session(
                        now,
                        session=next_session,
                        client=name,
                        vpn_addr=addr,
                        fingerprint=fingerprint(name),
                        remote_addr=f"203.0.113.{100 + names.index(name)}",
                        remote_port=51820,
                    )
                    online[name] = (next_session, addr)
                    next_session += 1
            elif name in online and roll < 0.06:
                nat.close_session(
                    now,
                    online.pop(name)[0],
                    rng.choice(["client_closed", "dead_peer"]),
                    packets_in=rng.randrange(100),
                    bytes_in=rng.randrange(10_000),
                )
            elif name in online or roll < 0.55:
                # a flow; rarely from an address without a session (client "", session 0)
                src = online[name][1] if name in online else rng.choice(pool)
                _flow(nat, rng, src, now)
        drain()
        if checkpoints:
            h.checkpoints.append((now, table_of(nat)))
        due = next_snapshot is not None and now >= next_snapshot
        if due or tick in snapshot_ticks or (snapshot_every and tick and tick % snapshot_every == 0):
            if next_snapshot is not None and due:
                next_snapshot += int(snapshot_every_s * NS)
            snap = nat.snapshot_view(now).build()
            h.snapshots.append(snap)
            nat.record_event(
                SnapshotTaken,
                now,
                upto_seq=snap.upto_seq,
                file=snapshot_name(snap.upto_seq),
                mappings_count=len(snap.proto),
            )
            drain()
            if checkpoints:
                h.checkpoints[-1] = (now, table_of(nat))
        now += int(rng.choice(advance_s) * NS) + rng.randrange(NS)
        nat.expire(now)
        drain()
    nat.record_event(GatewayStopped, now)
    drain()
    h.end_ns = now
    return h


def _flow(nat: Nat, rng: random.Random, src: int, now: int) -> None:
    """One outbound packet: a new flow, or more traffic (or an RST) on one of the client's flows."""
    proto = rng.choice((UDP, UDP, TCP, ICMP))
    sport = rng.choice(SPORTS)
    dst, dport = rng.choice(REMOTES), rng.choice((53, 80, 443, 123))
    if proto == UDP:
        pkt = P.build_udp(src, dst, sport, dport, b"x" * rng.randrange(40))
    elif proto == TCP:
        flags = P.TCP_SYN if rng.random() < 0.7 else rng.choice((P.TCP_ACK_FLAG, P.TCP_RST))
        mss = P.mss_option(1460) if flags == P.TCP_SYN else b""
        pkt = P.build_tcp(src, dst, sport, dport, flags=flags, seq=1000, options=mss)
    else:
        pkt = P.build_icmp_echo(src, dst, sport, 1, b"ping")
    nat.translate_outbound(pkt, now)


# ---------------------------------------------------------------------- writing journals


def write_journal(
    directory: str | os.PathLike[str],
    events: list[JournalEvent],
    snapshots: list[Snapshot] = (),  # type: ignore[assignment]
    *,
    frame_events: int = 16,
    segment_events: int | None = 200,
    segment_span_ns: int | None = None,
) -> list[Path]:
    """Write ``events`` as frames of ``frame_events``, rotating segments by count or by time span."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cctx = new_compressor()
    paths: list[Path] = []
    f = None
    seg_count = 0
    seg_start_ns = 0
    try:
        for start in range(0, len(events), frame_events):
            chunk = events[start : start + frame_events]
            rotate = (
                f is None
                or (segment_events is not None and seg_count >= segment_events)
                or (segment_span_ns is not None and chunk[0].at_ns - seg_start_ns >= segment_span_ns)
            )
            if rotate:
                if f is not None:
                    f.close()
                path = directory / segment_name(chunk[0].seq)
                f = open(path, "wb")  # noqa: SIM115
                paths.append(path)
                seg_count, seg_start_ns = 0, chunk[0].at_ns
            f.write(encode_frame(chunk, cctx))
            seg_count += len(chunk)
    finally:
        if f is not None:
            f.close()
    for snap in snapshots:
        write_snapshot(directory, snap, fsync=False)
    return paths


def write_with_writer(
    directory: str | os.PathLike[str],
    events: list[JournalEvent],
    snapshots: list[Snapshot] = (),  # type: ignore[assignment]
    *,
    batch_count: int = 32,
    segment_max_bytes: int = 2048,
) -> None:
    """Write through ``JournalWriter`` (fsync off), each snapshot submitted right after its last event."""
    pending = sorted(snapshots, key=lambda s: s.upto_seq)
    writer = JournalWriter(
        directory,
        fsync="never",
        batch_count=batch_count,
        batch_age_s=0.0,
        segment_max_bytes=segment_max_bytes,
        keep_snapshots=max(2, len(pending)),
    )
    writer.start()
    try:
        i = 0
        for snap in pending:
            upto = next((n for n, e in enumerate(events) if e.seq > snap.upto_seq), len(events))
            if upto > i:
                writer.submit(list(events[i:upto]))
                i = upto
            writer.submit_snapshot(snap)
            writer.flush(timeout=10)
        if i < len(events):
            writer.submit(list(events[i:]))
    finally:
        writer.close(timeout=10)
