"""journal/writer.py: group commit, durability, rotation, retention, permissions, real write errors."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from journal import recovery
from journal.errors import JournalError, JournalFullError, JournalGapError
from journal.events import MappingCreated, MappingExpired, Snapshot
from journal.index import build_index, index_path, load_or_build_index
from journal.segments import SegmentReader, list_segments, list_snapshots, segment_name
from journal.writer import JournalIndexWarning, JournalWriter
from tests.helpers.snapshots import as_lists

ROOT = Path(__file__).resolve().parents[2]
T = 1_767_225_600_000_000_000
S = 1_000_000_000


def created(seq: int) -> MappingCreated:
    return MappingCreated(
        seq=seq,
        at_ns=T + seq * S,
        proto=17,
        int_addr=0x0A424D02,
        int_port=(50000 + seq) % 65536,
        ext_addr=0xC6336402,
        ext_port=(40000 + seq * 7) % 65536,
        client="alice",
        session=1,
    )


def batch(first: int, count: int) -> list:
    return [created(s) for s in range(first, first + count)]


def seqs_in(directory: Path) -> list[int]:
    reader = SegmentReader(directory)
    out = [e.seq for e in reader.events()]
    assert reader.notes == []
    return out


class FakeClock:
    """Wall clock for rotation age and retention; the test moves it."""

    def __init__(self) -> None:
        self.now = T

    def __call__(self) -> int:
        return self.now


class Collect:
    """on_durable/on_error sink; ``wait_for(seq)`` blocks (bounded) until that seq is reported durable."""

    def __init__(self) -> None:
        self.durable: list[int] = []
        self.errors: list[Exception] = []
        self._cond = threading.Condition()

    def on_durable(self, seq: int) -> None:
        with self._cond:
            self.durable.append(seq)
            self._cond.notify_all()

    def on_error(self, exc: Exception) -> None:
        self.errors.append(exc)

    def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.durable and self.durable[-1] >= seq, timeout)


def make_writer(directory: Path, sink: Collect | None = None, **kw) -> JournalWriter:
    sink = sink or Collect()
    return JournalWriter(directory, on_durable=sink.on_durable, on_error=sink.on_error, **kw)


# -- group commit and durability -------------------------------------------------------------------


def test_group_commit_writes_one_frame_per_batch_count_events(tmp_path):
    with make_writer(tmp_path, batch_count=100, batch_age_s=60, fsync="never") as writer:
        for seq in range(1, 1002):
            writer.submit([created(seq)])  # the loop submits per packet batch; here one event each
    (segment,) = list_segments(tmp_path)
    assert segment.frames_count == 11  # ten full frames, and one for the event left at close
    assert seqs_in(tmp_path) == list(range(1, 1002))


def test_events_older_than_batch_age_are_written_without_waiting_for_a_full_batch(tmp_path):
    sink = Collect()
    writer = make_writer(tmp_path, sink, batch_count=1000, batch_age_s=0.001, fsync="never")
    writer.start()
    writer.submit(batch(1, 3))
    assert sink.wait_for(3)
    writer.close()


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_on_durable_is_called_with_the_last_seq(tmp_path, policy):
    sink = Collect()
    with make_writer(tmp_path, sink, fsync=policy, batch_count=64, fsync_interval_s=0.01) as writer:
        for first in range(1, 1001, 10):
            writer.submit(batch(first, 10))
    assert sink.durable[-1] == writer.durable_seq == 1000
    assert sink.durable == sorted(sink.durable) and not sink.errors


def test_interval_policy_reports_durable_before_close(tmp_path):
    sink = Collect()
    writer = make_writer(tmp_path, sink, fsync="interval", fsync_interval_s=0.005, batch_age_s=0.001)
    writer.start()
    writer.submit(batch(1, 50))
    assert sink.wait_for(50)
    writer.submit(batch(51, 50))
    assert sink.wait_for(100)
    writer.close()


def test_flush_returns_the_durable_seq(tmp_path):
    with make_writer(tmp_path, batch_age_s=60) as writer:
        writer.submit(batch(1, 5))
        assert writer.flush(timeout=10) == 5
        assert seqs_in(tmp_path) == [1, 2, 3, 4, 5]


# -- files -----------------------------------------------------------------------------------------


def test_journal_directory_is_0700_and_its_files_0600(tmp_path):
    journal = tmp_path / "journal"
    with make_writer(journal) as writer:
        writer.submit(batch(1, 5))
        writer.submit_snapshot(Snapshot(upto_seq=5, at_ns=T))
        writer.flush(timeout=10)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    names = sorted(p.name for p in journal.iterdir())
    assert names == ["lock", segment_name(1), segment_name(1) + ".idx", "snap-00000000000000000005.gws"]
    for path in journal.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_appending_to_an_existing_journal_opens_a_new_segment(tmp_path):
    with make_writer(tmp_path) as writer:
        writer.submit(batch(1, 10))
    with make_writer(tmp_path) as writer:
        writer.submit(batch(11, 5))
    assert [s.path.name for s in list_segments(tmp_path)] == [segment_name(1), segment_name(11)]
    assert seqs_in(tmp_path) == list(range(1, 16))


def test_an_empty_segment_left_by_recovery_is_reused(tmp_path):
    with make_writer(tmp_path) as writer:
        writer.submit(batch(1, 10))
    (tmp_path / segment_name(11)).write_bytes(b"")  # a torn first frame, cut to nothing
    with make_writer(tmp_path) as writer:
        writer.submit(batch(11, 5))
    assert seqs_in(tmp_path) == list(range(1, 16))


def test_second_writer_on_the_same_journal_is_refused(tmp_path):
    with make_writer(tmp_path):
        with pytest.raises(JournalError, match="another journal writer"):
            make_writer(tmp_path).start()


def test_writer_refuses_a_torn_tail_until_recovery_cuts_it(tmp_path):
    with make_writer(tmp_path) as writer:
        writer.submit(batch(1, 10))
    segment = tmp_path / segment_name(1)
    segment.write_bytes(segment.read_bytes() + b"GWJ1 torn")
    with pytest.raises(JournalError, match="run journal.recovery.load"):
        make_writer(tmp_path).start()
    assert recovery.load(tmp_path).last_seq == 10
    with make_writer(tmp_path) as writer:
        writer.submit(batch(11, 1))
    assert seqs_in(tmp_path) == list(range(1, 12))


# -- audit indexes ---------------------------------------------------------------------------------


def test_closing_a_segment_writes_its_audit_index(tmp_path):
    sink = Collect()
    expiry = MappingExpired(seq=0, at_ns=0, proto=17, ext_addr=0xC6336402, ext_port=40007, reason="idle")
    with make_writer(tmp_path, sink, batch_count=20, segment_max_bytes=1500, fsync="never") as writer:
        for first in range(1, 301, 20):
            events = batch(first, 20)
            events[5] = MappingExpired(
                **{
                    **{f: getattr(expiry, f) for f in expiry.__struct_fields__},
                    "seq": first + 5,
                    "at_ns": T + (first + 5) * S,
                }
            )
            writer.submit(events)
    segments = list_segments(tmp_path)
    assert len(segments) > 3 and sink.errors == []
    for segment in segments:  # rotation wrote the older ones, close() the newest
        on_disk = index_path(segment.path).read_bytes()
        assert load_or_build_index(segment.path, write=False) == build_index(segment.path, write=False)
        assert index_path(segment.path).read_bytes() == on_disk  # current: not rebuilt
        assert build_index(segment.path, write=False).touches(17, 0xC6336402, 40007)


def test_an_index_that_cannot_be_written_is_a_warning_and_the_journal_goes_on(tmp_path):
    sink = Collect()
    (tmp_path / (segment_name(1) + ".idx.tmp")).mkdir()  # the index write of segment 1 fails: EISDIR
    with make_writer(tmp_path, sink, batch_count=20, segment_max_bytes=1500, fsync="never") as writer:
        for first in range(1, 201, 20):
            writer.submit(batch(first, 20))
    assert seqs_in(tmp_path) == list(range(1, 201))
    assert [type(e) for e in sink.errors] == [JournalIndexWarning]
    assert segment_name(1) in str(sink.errors[0]) and "the journal is fine" in str(sink.errors[0])
    assert sink.durable[-1] == 200
    assert not index_path(tmp_path / segment_name(1)).exists()
    assert all(index_path(s.path).exists() for s in list_segments(tmp_path)[1:])


# -- rotation and retention ------------------------------------------------------------------------


def test_segments_rotate_by_size_and_are_named_by_their_first_seq(tmp_path):
    with make_writer(tmp_path, batch_count=20, segment_max_bytes=1500, fsync="never") as writer:
        for first in range(1, 1001, 20):
            writer.submit(batch(first, 20))
    segments = list_segments(tmp_path)
    assert len(segments) > 5
    for segment in segments:
        assert segment.path.name == segment_name(segment.first_seq)
        assert segment.size_bytes <= 1500 or segment.frames_count == 1
    assert seqs_in(tmp_path) == list(range(1, 1001))


def test_segments_rotate_by_age(tmp_path):
    clock = FakeClock()
    with make_writer(tmp_path, segment_max_age_s=60, batch_age_s=60, clock_ns=clock) as writer:
        writer.submit(batch(1, 5))
        writer.flush(timeout=10)
        clock.now += 30 * S
        writer.submit(batch(6, 5))
        writer.flush(timeout=10)
        clock.now += 31 * S
        writer.submit(batch(11, 5))
        writer.flush(timeout=10)
    assert [s.first_seq for s in list_segments(tmp_path)] == [1, 11]


def snapshot(upto: int) -> Snapshot:
    return Snapshot(upto_seq=upto, at_ns=T + upto * S, proto=[17], ext_port=[upto])


def test_retention_deletes_old_segments_only_behind_the_oldest_kept_snapshot(tmp_path):
    clock = FakeClock()
    writer = make_writer(tmp_path, segment_max_age_s=60, retention_s=3600, keep_snapshots=2, clock_ns=clock)
    writer.start()
    for first in (1, 11, 21, 31):  # four segments, a minute and a half apart
        writer.submit(batch(first, 10))
        writer.flush(timeout=10)
        clock.now += 90 * S
    writer.submit_snapshot(snapshot(20))
    writer.flush(timeout=10)
    clock.now += 2 * 3600 * S  # every segment is now older than the retention
    writer.submit_snapshot(snapshot(30))
    writer.flush(timeout=10)
    # kept snapshots 20 and 30: segments up to seq 20 go; 21.. stay so recovery can fall back to 20
    assert [s.first_seq for s in list_segments(tmp_path)] == [21, 31]
    writer.submit_snapshot(snapshot(40))
    writer.flush(timeout=10)
    writer.close()
    assert [s.upto_seq for s in list_snapshots(tmp_path)] == [30, 40]
    assert [s.first_seq for s in list_segments(tmp_path)] == [31]  # the newest segment is never deleted
    rec = recovery.load(tmp_path)
    assert (rec.snapshot.upto_seq, rec.last_seq, rec.events) == (40, 40, [])


def test_retention_keeps_everything_until_enough_snapshots_exist(tmp_path):
    clock = FakeClock()
    with make_writer(tmp_path, segment_max_age_s=60, retention_s=1, clock_ns=clock) as writer:
        for first in (1, 11, 21):
            writer.submit(batch(first, 10))
            writer.flush(timeout=10)
            clock.now += 90 * S
        writer.submit_snapshot(snapshot(30))  # one snapshot: falling back from it needs seq 1 onward
        writer.flush(timeout=10)
        clock.now += 3600 * S
        writer.submit(batch(31, 1))
    assert [s.first_seq for s in list_segments(tmp_path)] == [1, 11, 21, 31]


def test_retention_keeps_segments_younger_than_the_retention(tmp_path):
    clock = FakeClock()
    with make_writer(
        tmp_path, segment_max_age_s=60, retention_s=10 * 3600, keep_snapshots=1, clock_ns=clock
    ) as w:
        for first in (1, 11, 21):
            w.submit(batch(first, 10))
            w.flush(timeout=10)
            clock.now += 90 * S
        w.submit_snapshot(snapshot(30))
        w.flush(timeout=10)
    assert [s.first_seq for s in list_segments(tmp_path)] == [1, 11, 21]


# -- snapshots -------------------------------------------------------------------------------------


class TableView:
    """What the NAT hands over: ``build()`` is called in a writer-side thread, never the caller's."""

    def __init__(self, upto: int) -> None:
        self.upto = upto
        self.built_in: str | None = None

    def build(self) -> Snapshot:
        self.built_in = threading.current_thread().name
        return snapshot(self.upto)


def test_snapshot_is_built_off_the_caller_thread_after_its_events_are_durable(tmp_path):
    taken: list[tuple[Path, int]] = []
    view = TableView(7)
    sink = Collect()
    with make_writer(tmp_path, sink, on_snapshot=lambda path, upto: taken.append((path, upto))) as writer:
        writer.submit(batch(1, 7))
        writer.submit_snapshot(view)
        writer.submit(batch(8, 3))
        writer.flush(timeout=10)
        assert view.built_in not in (None, threading.current_thread().name)
        assert taken == [(tmp_path / "snap-00000000000000000007.gws", 7)]
        assert not sink.errors
    rec = recovery.load(tmp_path)
    assert as_lists(rec.snapshot) == snapshot(7) and [e.seq for e in rec.events] == [8, 9, 10]


def test_snapshot_ahead_of_the_journal_is_refused_loudly(tmp_path):
    sink = Collect()
    with make_writer(tmp_path, sink) as writer:
        writer.submit(batch(1, 5))
        writer.submit_snapshot(snapshot(9))
        writer.flush(timeout=10)
    assert list_snapshots(tmp_path) == []
    assert "covers up to seq 9" in str(sink.errors[0])


def test_snapshot_whose_build_fails_is_reported(tmp_path):
    class Broken:
        def build(self) -> Snapshot:
            raise RuntimeError("table changed under me")

    sink = Collect()
    with make_writer(tmp_path, sink) as writer:
        writer.submit_snapshot(Broken())
        writer.flush(timeout=10)
    assert "table changed under me" in str(sink.errors[0])


# -- misuse is loud --------------------------------------------------------------------------------


def test_a_submitted_seq_gap_or_overlap_is_refused_at_submit_and_nothing_is_queued(tmp_path):
    """Issue 10: a gap written "as given" made recovery refuse the journal; refuse it where the caller is."""
    sink = Collect()
    with make_writer(tmp_path, sink, batch_age_s=60) as writer:
        writer.submit(batch(1, 5))
        for bad in (batch(7, 3), batch(5, 2), batch(1, 5)):  # a gap, an overlap, a replay
            with pytest.raises(JournalGapError) as info:
                writer.submit(bad)
            assert info.value.expected_seq == 6 and "nothing queued" in str(info.value)
        with pytest.raises(JournalGapError):
            writer.submit(batch(6, 2) + batch(9, 1))  # not consecutive inside the batch
        writer.submit(batch(6, 3))
    assert sink.errors == [] and seqs_in(tmp_path) == list(range(1, 9))


def test_submit_continues_an_existing_journal_and_refuses_what_does_not(tmp_path):
    with make_writer(tmp_path) as writer:
        writer.submit(batch(1, 4))
    with make_writer(tmp_path) as writer:
        with pytest.raises(JournalGapError):
            writer.submit(batch(1, 2))  # a NAT not started at recovery's last_seq + 1
        writer.submit(batch(5, 2))
    assert seqs_in(tmp_path) == list(range(1, 7))


def test_events_that_cannot_be_encoded_are_reported_not_silently_dropped(tmp_path):
    sink = Collect()
    with make_writer(tmp_path, sink) as writer:
        writer.submit([object()])
    assert "cannot encode" in str(sink.errors[0])


def test_close_is_idempotent_and_submit_after_close_raises(tmp_path):
    writer = make_writer(tmp_path)
    writer.start()
    writer.submit(batch(1, 2))
    writer.close()
    writer.close()
    with pytest.raises(JournalError, match="closed"):
        writer.submit(batch(3, 1))
    assert seqs_in(tmp_path) == [1, 2]


def test_close_without_start_still_writes_what_was_submitted(tmp_path):
    writer = make_writer(tmp_path)
    writer.submit(batch(1, 3))
    writer.close()
    assert seqs_in(tmp_path) == [1, 2, 3]


@pytest.mark.parametrize(
    "kwargs",
    [{"fsync": "sometimes"}, {"batch_count": 0}, {"keep_snapshots": 0}],
    ids=["policy", "batch", "keep"],
)
def test_bad_settings_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError):
        JournalWriter(tmp_path, **kwargs)


# -- real write failures (RLIMIT_FSIZE in a child process) -----------------------------------------

FULL_CHILD = """
import os, resource, signal, sys
from journal.events import MappingCreated
from journal.writer import JournalWriter

directory, mode = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (16384, hard))
errors = []
w = JournalWriter(directory, fsync="always", batch_count=50, batch_age_s=0, retry_interval_s=0.01,
                  on_error=errors.append)
w.start()
for first in range(1, 3001, 50):
    w.submit([MappingCreated(seq=s, at_ns=s * 1_000_003, proto=17, int_addr=s * 2654435761 % 2**32,
                             int_port=s * 40503 % 65536, ext_addr=s * 7919 % 2**32, ext_port=s * 31 % 65536)
              for s in range(first, first + 50)])
w.flush(timeout=20)
print("first", type(errors[0]).__name__ if errors else "-", w.durable_seq)
print("message", errors[0] if errors else "-")
if mode == "lift":
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
try:
    w.close(timeout=20)
    print("closed", w.durable_seq)
except Exception as exc:
    print("raised", type(exc).__name__, len(exc.unwritten), exc.unwritten[0].seq, exc.unwritten[-1].seq)
"""


def run_full_child(directory: Path, mode: str) -> dict[str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", FULL_CHILD, str(directory), mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()}


def test_full_disk_is_reported_and_the_events_written_once_space_returns(tmp_path):
    report = run_full_child(tmp_path, "lift")
    kind, durable = report["first"]
    assert kind == "JournalFullError" and int(durable) < 3000
    assert "File too large" in " ".join(report["message"])
    assert report["closed"] == ["3000"]
    assert seqs_in(tmp_path) == list(range(1, 3001))  # nothing lost, nothing torn


def test_full_disk_at_close_raises_and_hands_back_the_unwritten_events(tmp_path):
    report = run_full_child(tmp_path, "keep")
    durable = int(report["first"][1])
    assert report["raised"] == ["JournalFullError", str(3000 - durable), str(durable + 1), "3000"]
    assert seqs_in(tmp_path) == list(range(1, durable + 1))  # a whole prefix: the partial frame was cut
    assert recovery.load(tmp_path).notes == []


# -- durability is an fsync, in order; a dead thread and a full disk are loud (issue 10) --------------


class FsyncRecorder:
    """Wraps os.fsync and on_durable: the order of writes, fsyncs and durability reports, by file."""

    def __init__(self, monkeypatch, fail_first: int = 0) -> None:
        self.log: list[tuple] = []
        self.fail_left = fail_first
        real_fsync, real_write = os.fsync, os.write

        def fsync(fd: int) -> None:
            if self.fail_left and self._is_segment(fd):
                self.fail_left -= 1
                self.log.append(("fsync_failed", fd))
                raise OSError(5, "Input/output error")  # EIO: the kernel may have dropped the pages
            real_fsync(fd)
            if self._is_segment(fd):  # directory and snapshot fsyncs make no frame durable
                self.log.append(("fsync", fd, os.fstat(fd).st_size))

        def write(fd: int, data) -> int:
            n = real_write(fd, data)
            if self._is_segment(fd):
                self.log.append(("write", fd, os.lseek(fd, 0, os.SEEK_CUR)))
            return n

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "write", write)

    @staticmethod
    def _is_segment(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").endswith(".gwj")
        except OSError:
            return False

    def on_durable(self, seq: int) -> None:
        self.log.append(("durable", seq))


def _segment_end_of(directory: Path, seq: int) -> tuple[str, int]:
    """(segment name, byte offset after the frame holding ``seq``)."""
    for info in list_segments(directory):
        if info.first_seq <= seq <= info.last_seq:
            from journal.segments import walk_headers

            headers, _, _ = walk_headers(info.path)
            return info.path.name, next(h.end for h in headers if h.first_seq <= seq <= h.last_seq)
    raise AssertionError(seq)


def _check_every_durable_follows_an_fsync_covering_it(log: list[tuple], directory: Path) -> int:
    """Each ("durable", seq) comes after an fsync of seq's segment taken when it held seq's frame."""
    checked = 0
    synced: dict[int, int] = {}  # fd -> size at its last successful fsync
    for entry in log:
        if entry[0] == "fsync":
            synced[entry[1]] = entry[2]
        elif entry[0] == "durable":
            name, end = _segment_end_of(directory, entry[1])
            assert any(size >= end for size in synced.values()), f"on_durable({entry[1]}) before an fsync of {name}"
            checked += 1
    return checked


@pytest.mark.parametrize("policy", ["always", "interval"])
def test_on_durable_never_fires_before_an_fsync_covering_that_frame(tmp_path, monkeypatch, policy):
    """With os.fsync a no-op every other durability test still passes (a SIGKILL keeps the page cache);
    this one records the calls and fails if a durability report precedes the fsync that makes it true."""
    rec = FsyncRecorder(monkeypatch)
    with JournalWriter(
        tmp_path, fsync=policy, fsync_interval_s=0.0, batch_count=16, batch_age_s=0, on_durable=rec.on_durable
    ) as writer:
        for first in range(1, 200, 13):
            writer.submit(batch(first, 13))
        writer.flush(timeout=10)
    monkeypatch.undo()
    assert _check_every_durable_follows_an_fsync_covering_it(rec.log, tmp_path) > 0
    assert any(e[0] == "fsync" for e in rec.log)


def test_the_durability_check_itself_fails_when_fsync_is_skipped(tmp_path, monkeypatch):
    """Break the guarantee on purpose: a writer whose _sync reports without fsyncing must be caught."""
    rec = FsyncRecorder(monkeypatch)

    def lying_sync(self: JournalWriter) -> None:
        if self._written > self._synced:
            self._synced = self._written
            self._durable(self.written_seq)  # no fsync

    monkeypatch.setattr(JournalWriter, "_sync", lying_sync)
    with JournalWriter(tmp_path, fsync="always", batch_count=16, batch_age_s=0, on_durable=rec.on_durable) as w:
        w.submit(batch(1, 40))
        w.flush(timeout=10)
    monkeypatch.undo()
    durable_seqs = [e[1] for e in rec.log if e[0] == "durable"]
    first_fsync = next((i for i, e in enumerate(rec.log) if e[0] == "fsync"), len(rec.log))
    assert durable_seqs and rec.log.index(("durable", durable_seqs[0])) < first_fsync
    with pytest.raises(AssertionError, match="before an fsync"):
        _check_every_durable_follows_an_fsync_covering_it(rec.log, tmp_path)


def test_a_failed_fsync_rewrites_the_unsynced_frames_and_reports_durable_only_after_a_good_one(tmp_path, monkeypatch):
    sink = Collect()
    rec = FsyncRecorder(monkeypatch, fail_first=2)
    writer = JournalWriter(
        tmp_path,
        fsync="always",
        batch_count=10,
        batch_age_s=0,
        retry_interval_s=0.01,
        on_durable=lambda seq: (rec.on_durable(seq), sink.on_durable(seq)),
        on_error=sink.on_error,
    )
    with writer:
        writer.submit(batch(1, 30))
        assert sink.wait_for(30)
        writer.submit(batch(31, 5))
        writer.flush(timeout=10)
    monkeypatch.undo()
    kinds = [e[0] for e in rec.log]
    assert kinds.count("fsync_failed") == 2
    assert "fsync" in str(sink.errors[0]) and "Input/output error" in str(sink.errors[0])
    first_fail = kinds.index("fsync_failed")
    assert "durable" not in kinds[first_fail : kinds.index("fsync", first_fail)]  # nothing durable meanwhile
    assert kinds[first_fail + 1 : kinds.index("fsync", first_fail)].count("write") >= 1  # the rewrite
    assert _check_every_durable_follows_an_fsync_covering_it(rec.log, tmp_path) > 0
    assert seqs_in(tmp_path) == list(range(1, 36)) and recovery.load(tmp_path).notes == []


def test_a_dead_writer_thread_makes_submit_and_flush_raise_and_alive_false(tmp_path, monkeypatch):
    sink = Collect()
    writer = make_writer(tmp_path, sink, batch_age_s=0)
    writer.start()
    writer.submit(batch(1, 3))
    assert writer.flush(timeout=10) == 3 and writer.alive

    def bug(self: JournalWriter, force: bool) -> None:
        raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(JournalWriter, "_commit", bug)
    writer.submit(batch(4, 3))
    with pytest.raises(JournalError, match="thread died.*a bug in the writer"):
        writer.flush(timeout=10)  # woken, not left waiting, and not the old durable_seq
    assert not writer.alive
    with pytest.raises(JournalError, match="thread died"):
        writer.submit(batch(7, 1))
    with pytest.raises(JournalError, match="thread died"):
        writer.submit_snapshot(Snapshot(upto_seq=3, at_ns=T))
    assert any("journal writer thread failed" in str(e) for e in sink.errors)
    with pytest.raises(RuntimeError):
        writer.close(timeout=10)


def test_backlog_is_bounded_and_past_it_submit_refuses_counts_and_alarms_once(tmp_path):
    sink = Collect()
    writer = make_writer(tmp_path, sink, batch_count=8, max_backlog_events=32)
    # not started: nothing drains, as when every write fails
    writer.submit(batch(1, 30))
    assert writer.backlog_events == 30 and not writer.backlogged
    for first in (31, 31, 31):
        with pytest.raises(JournalFullError) as info:
            writer.submit(batch(first, 5))
    assert "refused" in str(info.value) and writer.refused_events == 15
    assert len(sink.errors) == 1  # one alarm per episode, every refusal counted
    writer.submit(batch(31, 2))
    assert writer.backlogged
    writer.close(timeout=10)
    assert seqs_in(tmp_path) == list(range(1, 33))


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs made for the test and removed after it (root only)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_on_a_full_filesystem_the_backlog_stops_at_its_bound_instead_of_filling_memory(small_fs):
    sink = Collect()
    writer = JournalWriter(
        small_fs / "j",
        fsync="always",
        batch_count=256,
        batch_age_s=0,
        retry_interval_s=0.01,
        max_backlog_events=4096,
        on_durable=sink.on_durable,
        on_error=sink.on_error,
    )
    writer.start()
    filler = small_fs / "filler"
    with open(filler, "wb") as f:  # leave the journal a few KiB
        try:
            while True:
                f.write(os.urandom(64 << 10))
                f.flush()
        except OSError:
            pass
    refused = 0
    seq = 1
    for _ in range(400):  # incompressible events, far more than the disk or the bound holds
        events = [
            MappingCreated(seq=s, at_ns=T + s, proto=17, int_addr=int.from_bytes(os.urandom(4)), int_port=s % 65536,
                           ext_addr=int.from_bytes(os.urandom(4)), ext_port=s % 65536, client=os.urandom(8).hex())
            for s in range(seq, seq + 256)
        ]
        try:
            writer.submit(events)
            seq += 256
        except JournalFullError:
            refused += 1
    assert refused > 0 and writer.backlogged and writer.refused_events == refused * 256
    assert writer.backlog_events <= 4096
    assert any(type(e).__name__ == "JournalFullError" for e in sink.errors)  # the disk: reported
    assert any("refused" in str(e) for e in sink.errors)  # the bound: alarmed
    filler.unlink()  # space returns: the backlog drains and nothing accepted is lost
    assert writer.flush(timeout=20) == seq - 1
    writer.close(timeout=20)
    assert seqs_in(small_fs / "j") == list(range(1, seq))


def test_start_indexes_the_crashed_runs_last_segment_and_removes_leftover_index_tmp(tmp_path):
    with make_writer(tmp_path, batch_count=4, batch_age_s=0) as writer:
        writer.submit(batch(1, 10))
    (seg,) = sorted(tmp_path.glob("seg-*.gwj"))
    index_path(seg).unlink()  # what a crash leaves: the writer never closed that segment
    leftover = tmp_path / (seg.name + ".idx.tmp")
    leftover.write_bytes(b"half an index")
    with make_writer(tmp_path) as writer:
        writer.submit(batch(11, 2))
    assert not leftover.exists()
    assert load_or_build_index(seg, write=False) == build_index(seg, write=False)
    assert index_path(seg).exists()
