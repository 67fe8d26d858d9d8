"""gw-audit's answers equal a brute-force oracle's on journals of random NAT traffic.

The oracle reads every event of the generated history in order and pairs each MappingCreated with the
next MappingExpired of the same external endpoint: intervals [created, expired). It shares no code with
the tools (no index, no snapshot, no segment walk).
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from journal.events import MappingCreated, MappingExpired, SessionOpened
from journal.holders import find_holders
from journal.reader import Journal
from tests.helpers.history import NS, History, generate, table_of, write_journal, write_with_writer
from tools.audit import mappings_in_window
from tools.replay import state_at

# Each example generates and writes a journal (~50 ms): a bounded count keeps CI fast; the thorough profile
# (HYPOTHESIS_PROFILE=thorough) uses its own, much larger, count.
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
EXAMPLES = settings() if THOROUGH else settings(max_examples=40)
HALF = settings() if THOROUGH else settings(max_examples=20)


class Oracle:
    def __init__(self, h: History) -> None:
        # endpoint -> [(start, end, created, expired)]
        self.intervals: dict[tuple, list[tuple]] = defaultdict(list)
        self.sessions = {}
        opened: dict[tuple, MappingCreated] = {}
        for ev in h.events:
            if type(ev) is SessionOpened:
                self.sessions[ev.session] = ev
            elif type(ev) is MappingCreated:
                opened[(ev.proto, ev.ext_addr, ev.ext_port)] = ev
            elif type(ev) is MappingExpired:
                key = (ev.proto, ev.ext_addr, ev.ext_port)
                created = opened.pop(key)
                self.intervals[key].append((created.at_ns, ev.at_ns, created, ev))
        for key, created in opened.items():
            self.intervals[key].append((created.at_ns, None, created, None))

    def who(self, proto: int, addr: int, port: int, at_ns: int) -> list[tuple]:
        return [
            iv
            for iv in self.intervals.get((proto, addr, port), ())
            if iv[0] <= at_ns and (iv[1] is None or at_ns < iv[1])
        ]

    def window(self, since: int, until: int) -> list[tuple]:
        return sorted(
            (iv[0], iv[2].proto, iv[2].ext_addr, iv[2].ext_port, iv[1])
            for ivs in self.intervals.values()
            for iv in ivs
            if iv[0] <= until and (iv[1] is None or iv[1] > since)
        )


def _times(h: History) -> list[int]:
    ats = sorted({e.at_ns for e in h.events})
    return ats


queries = st.tuples(
    st.integers(0, 10_000),
    st.sampled_from([-1, 0, 1, NS // 2]),
    st.integers(0, 10_000),
    st.sampled_from([None, "own", "own", 17]),
)


@EXAMPLES
@given(
    seed=st.integers(0, 2**31),
    ticks=st.integers(5, 70),
    snapshot_every=st.sampled_from([None, 4, 15]),
    segment_events=st.sampled_from([20, 90, None]),
    via_writer=st.booleans(),
    retention=st.booleans(),
    asks=st.lists(queries, min_size=1, max_size=25),
)
def test_who_matches_brute_force_oracle(
    seed, ticks, snapshot_every, segment_events, via_writer, retention, asks
):
    h = generate(seed, ticks=ticks, snapshot_every=snapshot_every)
    oracle = Oracle(h)
    times = _times(h)
    endpoints = sorted(oracle.intervals) + [(17, 0xC6336402, 1), (6, 0xC6336401, 40000)]
    with tempfile.TemporaryDirectory(prefix="gw-audit-oracle-") as d:
        if via_writer:
            write_with_writer(d, h.events, h.snapshots)
        else:
            write_journal(d, h.events, h.snapshots, frame_events=7, segment_events=segment_events)
        floor = _apply_retention(d, h) if retention else None
        for time_pick, delta, ep_pick, proto in asks:
            at = times[time_pick % len(times)] + delta
            if floor is not None and at < floor:
                at = floor + (at - times[0]) % max(1, h.end_ns - floor)
            own, addr, port = endpoints[ep_pick % len(endpoints)]
            proto = own if proto == "own" else proto
            if proto is None:
                want = [iv for q in (17, 6, 1) for iv in oracle.who(q, addr, port, at)]
            else:
                want = oracle.who(proto, addr, port, at)
            got = find_holders(Journal(d), addr, port, proto, at)
            assert [(g.record.proto, g.record.created_ns, g.record.end_ns) for g in got] == [
                (iv[2].proto, iv[0], iv[1]) for iv in want
            ], f"who {addr:#x}:{port}/{proto} at {at}"
            for g, iv in zip(got, want, strict=True):
                created = iv[2]
                r = g.record
                assert (r.int_addr, r.int_port, r.session, r.client) == (
                    created.int_addr,
                    created.int_port,
                    created.session,
                    created.client,
                )
                opened = oracle.sessions.get(created.session)
                assert (g.session.fingerprint if g.session else None) == (
                    opened.fingerprint if opened else None
                )
                if iv[3] is not None:
                    assert r.end_reason == iv[3].reason


def _apply_retention(d: str, h: History) -> int | None:
    """Delete the segments wholly covered by the second snapshot (as the writer's retention would);
    return the time from which answers are complete (the snapshot's), or None if nothing was deleted."""
    snaps = sorted(h.snapshots, key=lambda s: s.upto_seq)
    if len(snaps) < 2:
        return None
    keep = snaps[1]
    segs = sorted((int(n[4:24]), n) for n in os.listdir(d) if n.startswith("seg-") and n.endswith(".gwj"))
    deleted = False
    for (_, name), (next_seq, _) in zip(segs, segs[1:], strict=False):
        if next_seq - 1 <= keep.upto_seq:
            os.unlink(os.path.join(d, name))
            deleted = True
    for s in snaps[:1]:
        os.unlink(os.path.join(d, f"snap-{s.upto_seq:020d}.gws"))
    return keep.at_ns if deleted else None


@HALF
@given(
    seed=st.integers(0, 2**31),
    snapshot_every=st.sampled_from([None, 5]),
    picks=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 10_000)), min_size=1, max_size=6),
)
def test_window_and_state_match_oracle(seed, snapshot_every, picks):
    h = generate(seed, ticks=40, snapshot_every=snapshot_every)
    oracle = Oracle(h)
    times = _times(h)
    with tempfile.TemporaryDirectory(prefix="gw-audit-oracle-") as d:
        write_journal(d, h.events, h.snapshots, frame_events=5, segment_events=60)
        for a, b in picks:
            since, until = sorted((times[a % len(times)], times[b % len(times)] + NS))
            got = sorted(
                (r.created_ns, r.proto, r.ext_addr, r.ext_port, r.end_ns)
                for r in mappings_in_window(Journal(d), since, until)
            )
            assert got == oracle.window(since, until)
        # state at a tick's time equals the live table the NAT had then
        for a, _ in picks:
            i = a % len(h.checkpoints)
            at, table = h.checkpoints[i]
            last = h.checkpoints[i + 1][0] - 1 if i + 1 < len(h.checkpoints) else at
            for t in (at, last):  # the table stands from one tick to just before the next
                assert table_of(state_at(Journal(d), t)[0]) == table, f"state at tick {i} ({t})"
