"""journal/recovery.py: newest whole snapshot + the seq-checked events after it, and what it refuses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from journal import recovery
from journal.errors import JournalCorruptError, JournalGapError
from journal.events import GatewayStarted, GatewayStopped, MappingCreated, Snapshot
from journal.frames import encode_frame
from journal.segments import segment_name, snapshot_name, write_snapshot
from journal.writer import JournalWriter
from tests.helpers.snapshots import as_lists

T = 1_767_225_600_000_000_000


def created(seq: int) -> MappingCreated:
    return MappingCreated(
        seq=seq,
        at_ns=T + seq,
        proto=17,
        int_addr=0x0A424D02,
        int_port=50000 + seq,
        ext_addr=0xC6336402,
        ext_port=40000 + seq,
    )


def write_segment(directory: Path, events: list, frame_size: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / segment_name(events[0].seq)
    path.write_bytes(
        b"".join(encode_frame(events[i : i + frame_size]) for i in range(0, len(events), frame_size))
    )
    return path


def snap(upto: int) -> Snapshot:
    return Snapshot(upto_seq=upto, at_ns=T + upto, proto=[17], ext_port=[upto])


def test_missing_or_empty_journal_recovers_to_nothing(tmp_path):
    for directory in (tmp_path / "missing", tmp_path):
        rec = recovery.load(directory)
        assert (rec.snapshot, rec.events, rec.notes, rec.last_seq, rec.clean) == (None, [], [], 0, True)


def test_without_a_snapshot_every_event_is_recovered(tmp_path):
    write_segment(tmp_path, [created(s) for s in range(1, 11)])
    rec = recovery.load(tmp_path)
    assert rec.snapshot is None and [e.seq for e in rec.events] == list(range(1, 11)) and rec.last_seq == 10


def test_newest_snapshot_then_only_the_events_after_it(tmp_path):
    write_segment(tmp_path, [created(s) for s in range(1, 11)])
    write_segment(tmp_path, [created(s) for s in range(11, 21)])
    write_snapshot(tmp_path, snap(5))
    write_snapshot(tmp_path, snap(13))
    rec = recovery.load(tmp_path)
    assert as_lists(rec.snapshot) == snap(13) and rec.snapshot_path == tmp_path / snapshot_name(13)
    assert [e.seq for e in rec.events] == list(range(14, 21))
    assert rec.last_seq == 20 and rec.notes == []


def test_snapshot_covering_every_event_recovers_no_events(tmp_path):
    write_segment(tmp_path, [created(1), GatewayStopped(seq=2, at_ns=T)])
    write_snapshot(tmp_path, snap(2))
    rec = recovery.load(tmp_path)
    assert (rec.events, rec.last_seq, rec.clean) == ([], 2, True)


def test_corrupt_newest_snapshot_falls_back_to_the_previous_one_and_says_so(tmp_path):
    write_segment(tmp_path, [created(s) for s in range(1, 11)])
    write_snapshot(tmp_path, snap(4))
    newest = write_snapshot(tmp_path, snap(8))
    data = bytearray(newest.read_bytes())
    data[-2] ^= 0xFF
    newest.write_bytes(bytes(data))
    rec = recovery.load(tmp_path)
    assert as_lists(rec.snapshot) == snap(4) and [e.seq for e in rec.events] == list(range(5, 11))
    (note,) = rec.notes
    assert note.kind == "bad_snapshot" and note.path == str(newest) and "older snapshot" in str(note)


def test_gap_in_the_events_is_an_error_naming_where(tmp_path):
    write_segment(tmp_path, [created(s) for s in range(1, 6)])
    later = write_segment(tmp_path, [created(s) for s in range(7, 9)])
    with pytest.raises(JournalGapError) as info:
        recovery.load(tmp_path)
    assert (info.value.path, info.value.expected_seq, info.value.got_seq) == (str(later), 6, 7)


def test_segments_missing_after_the_snapshot_are_an_error_naming_what_is_missing(tmp_path):
    write_segment(tmp_path, [created(s) for s in range(20, 31)])  # 1..19 deleted, but the snapshot is at 9
    write_snapshot(tmp_path, snap(9))
    with pytest.raises(JournalGapError, match=r"events 10\.\.19 are missing"):
        recovery.load(tmp_path)


def test_snapshot_ahead_of_the_journal_is_an_error(tmp_path):
    write_segment(tmp_path, [created(s) for s in range(1, 6)])
    write_snapshot(tmp_path, snap(9))
    with pytest.raises(JournalGapError, match=r"snapshot covers up to seq 9 but the journal ends at seq 5"):
        recovery.load(tmp_path)


def test_torn_tail_is_cut_and_noted_and_read_only_load_leaves_it(tmp_path):
    path = write_segment(tmp_path, [created(s) for s in range(1, 9)])
    size = path.stat().st_size
    os.truncate(path, size - 5)
    rec = recovery.load(tmp_path, truncate_torn_tail=False)
    assert rec.last_seq == 4 and rec.notes[0].kind == "torn_tail" and path.stat().st_size == size - 5
    rec = recovery.load(tmp_path)
    assert rec.last_seq == 4 and [e.seq for e in rec.events] == [1, 2, 3, 4]
    assert "cut" in str(rec.notes[0]) and path.with_name(path.name + ".broken").exists()
    assert recovery.load(tmp_path).notes == []


def test_corrupt_frame_is_an_error(tmp_path):
    path = write_segment(tmp_path, [created(s) for s in range(1, 13)])
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the first frame's payload; whole frames follow
    path.write_bytes(bytes(data))
    with pytest.raises(JournalCorruptError) as info:
        recovery.load(tmp_path)
    assert (info.value.path, info.value.offset) == (str(path), 0)


@pytest.mark.parametrize(
    ("last", "clean"),
    [
        (GatewayStopped(seq=3, at_ns=T), True),
        (created(3), False),
        (GatewayStarted(seq=3, at_ns=T, version="x"), False),
    ],
    ids=["stopped", "mapping", "started"],
)
def test_clean_says_whether_the_last_event_is_gateway_stopped(tmp_path, last, clean):
    write_segment(tmp_path, [created(1), created(2), last])
    assert recovery.load(tmp_path).clean is clean


def test_unfinished_snapshot_temp_files_are_removed_and_noted(tmp_path):
    write_segment(tmp_path, [created(1)])
    tmp = tmp_path / (snapshot_name(1) + ".tmp")
    tmp.write_bytes(b"half a snapshot")
    assert recovery.load(tmp_path, truncate_torn_tail=False).notes == [] and tmp.exists()
    (note,) = recovery.load(tmp_path).notes
    assert note.kind == "stale_tmp" and not tmp.exists()


def test_down_since_is_the_last_event_a_heartbeat_included_so_resume_knows_when_the_gateway_died(tmp_path):
    """Issue 10: a journal quiet for 10 minutes, then a crash: without heartbeats resume saw a 10-minute
    outage and ended flows that were busy until the crash."""
    from journal.events import HEARTBEAT_INTERVAL_S, Heartbeat, MappingCreated

    t0 = 1_795_000_000 * 10**9
    created = MappingCreated(seq=1, at_ns=t0, proto=17, int_addr=1, int_port=2, ext_addr=3, ext_port=4)
    beats = [Heartbeat(seq=2 + n, at_ns=t0 + n * HEARTBEAT_INTERVAL_S * 10**9) for n in range(120)]
    with JournalWriter(tmp_path, fsync="never") as writer:
        writer.submit([created, *beats])
    rec = recovery.load(tmp_path)
    assert rec.down_since_ns == beats[-1].at_ns == t0 + 595 * 10**9
    assert rec.last_seq == 121 and not rec.clean


def test_down_since_of_a_snapshot_only_journal_is_the_snapshot_time_and_none_when_empty(tmp_path):
    from journal.events import Snapshot
    from journal.segments import write_snapshot

    assert recovery.load(tmp_path).down_since_ns is None
    write_snapshot(tmp_path, Snapshot(upto_seq=0, at_ns=123), fsync=False)
    assert recovery.load(tmp_path).down_since_ns == 123
