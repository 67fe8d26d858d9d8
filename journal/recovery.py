"""Recovery: the newest whole snapshot and the events after it. Reads files; knows nothing about the NAT.

Theory of operation
-------------------
``load(dir)`` picks the newest snapshot file that reads back whole (a corrupt one is noted and the
previous one is tried), then reads every event with ``seq > snapshot.upto_seq`` through ``SegmentReader``,
which checks that seq increases by exactly one and, by default, cuts a torn tail off the newest segment
(kept aside in ``<segment>.broken`` and noted). The caller folds the result and resumes, as
``tests/unit/test_recovery_path.py`` does::

    rec = load(directory)
    nat = Nat.restore(config, rec.snapshot, rec.events, wall_offset=wall_ns - mono_ns)
    nat.resume(mono_ns, rec.down_since_ns if rec.down_since_ns is not None else wall_ns)

The NAT then numbers events from ``rec.last_seq + 1``.

``Recovered.down_since_ns`` is when the gateway was last known to be running: the wall clock of the
last journaled event (a ``Heartbeat`` included: the gateway journals one every HEARTBEAT_INTERVAL_S while
it has traffic), or the snapshot's time when no event follows it. ``Nat.resume(now, down_since_ns)``
ends what idled out before that moment plus the outage, not what was busy until the crash.

Errors, all naming the file: a corrupt frame (``JournalCorruptError``; damage in the newest segment
names ``gw-replay DIR repair``, which is ``repair`` here), a gap, missing segments a snapshot needs
(retention or a lost file), or a snapshot ahead of the journal (``JournalGapError``). The daemon refuses
to start on them; the tools read around them with ``SegmentReader(salvage=True)``.

``repair(dir)`` cuts the newest segment at its first bad byte (everything after it kept in
``<segment>.broken``, fsynced, nothing deleted), under the writer's lock so a running gateway is never cut
under; damage in an older segment is reported, not repaired (cutting there would break the sequence).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from journal.errors import CorruptFrame, JournalCorruptError, JournalError, JournalGapError, TornFrame
from journal.events import GatewayStopped, JournalEvent, Snapshot
from journal.frames import FRAME_MAGIC, decode_frame, decode_header, new_decompressor
from journal.segments import (
    FILE_MODE,
    LOCK_NAME,
    SNAPSHOT_RE,
    SNAPSHOT_TMP_SUFFIX,
    Note,
    SegmentReader,
    cut_tail,
    list_snapshots,
    read_snapshot,
    segment_paths,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["Cut", "Recovered", "Repaired", "load", "repair"]



@dataclass
class Recovered:
    """What a journal holds: the newest whole snapshot, the events after it, and what was noticed."""

    snapshot: Snapshot | None = None
    snapshot_path: Path | None = None
    events: list[JournalEvent] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    last_seq: int = 0  # the NAT continues at last_seq + 1
    clean: bool = True  # the last event is GatewayStopped (or the journal is empty)
    last_at_ns: int | None = None  # wall clock of the last event in the journal (heartbeats included)

    @property
    def down_since_ns(self) -> int | None:
        """When the gateway was last known running: the last event's time (a Heartbeat counts), else the
        snapshot's; None for an empty journal. Pass it to ``Nat.resume(now, down_since)``."""
        if self.last_at_ns is not None:
            return self.last_at_ns
        return self.snapshot.at_ns if self.snapshot is not None else None


def load(directory: str | os.PathLike[str], *, truncate_torn_tail: bool = True) -> Recovered:
    """Read the newest whole snapshot and the seq-checked events after it.

    With ``truncate_torn_tail`` (the daemon, before its writer starts) a torn tail is cut and kept aside,
    and leftover snapshot temp files are removed; without it nothing is modified.
    Raises: JournalCorruptError, JournalGapError (see the module doc); OSError if files cannot be read.
    """
    directory = Path(directory)
    rec = Recovered()
    if not directory.is_dir():
        return rec
    if truncate_torn_tail:
        _remove_stale_tmp(directory, rec.notes)
    for info in reversed(list_snapshots(directory)):
        try:
            rec.snapshot = read_snapshot(info.path)
            rec.snapshot_path = info.path
            break
        except JournalCorruptError as exc:
            rec.notes.append(
                Note(
                    "bad_snapshot",
                    str(info.path),
                    exc.offset,
                    0,
                    f"{exc.detail}; ignored, using an older snapshot",
                )
            )
    upto = rec.snapshot.upto_seq if rec.snapshot is not None else 0
    reader = SegmentReader(directory, truncate_torn_tail=truncate_torn_tail)
    try:
        rec.events = list(reader.events(start_seq=upto + 1))
    finally:
        rec.notes.extend(reader.notes)
    journal_last = reader.last_seq
    if journal_last is not None and journal_last < upto:
        raise JournalGapError(
            rec.snapshot_path or Path(directory),  # no snapshot: a segment's own seqs are impossible (crafted)
            0,
            upto,
            journal_last,
            f"the snapshot covers up to seq {upto} but the journal ends at seq {journal_last} (events "
            f"{journal_last + 1}..{upto} were lost); move this snapshot aside to recover from an older one",
        )
    rec.last_seq = max(upto, journal_last or 0)
    last_event = rec.events[-1] if rec.events else reader.last_event()
    rec.clean = last_event is None or isinstance(last_event, GatewayStopped)
    rec.last_at_ns = last_event.at_ns if last_event is not None else None
    return rec


def _remove_stale_tmp(directory: Path, notes: list[Note]) -> None:
    """Remove snapshot temp files left by a crash during a snapshot write (never renamed, never used)."""
    for name in os.listdir(directory):
        if name.endswith(SNAPSHOT_TMP_SUFFIX) and SNAPSHOT_RE.match(name[: -len(SNAPSHOT_TMP_SUFFIX)]):
            path = directory / name
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            notes.append(
                Note("stale_tmp", str(path), 0, size, f"removed unfinished snapshot file of {size} bytes")
            )


@dataclass(frozen=True)
class Cut:
    """What ``repair`` cut off one segment."""

    path: Path
    offset: int
    size_bytes: int
    kept_in: Path
    events_lost: int  # events in whole frames after the damage (the damaged frame's own are unknown)


@dataclass
class Repaired:
    """What ``repair`` did, and what it could not do."""

    cuts: list[Cut] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        """The journal now reads whole (strictly), whether or not anything had to be cut."""
        return not self.problems


def repair(directory: str | os.PathLike[str]) -> Repaired:
    """Cut the newest segment at its first bad byte, keeping the rest in ``<segment>.broken``; report
    damage elsewhere (see the module doc). A torn tail is cut the same way (as recovery would).

    Raises: JournalError if a writer holds the journal (the gateway is running); OSError on I/O errors.
    """
    directory = Path(directory)
    result = Repaired()
    lock = _lock(directory)
    try:
        paths = segment_paths(directory)
        if paths:
            path = paths[-1][1]
            buf = path.read_bytes()
            offset, dctx = 0, new_decompressor()
            while offset < len(buf):
                try:
                    offset = decode_frame(buf, offset, dctx)[1]
                except (TornFrame, CorruptFrame):
                    break
            if offset < len(buf):
                lost = _events_in_whole_frames(buf, offset + 1)
                kept = cut_tail(path, buf, offset)
                result.cuts.append(Cut(path, offset, len(buf) - offset, kept, lost))
        try:
            for _ in SegmentReader(directory).frames():
                pass
        except (JournalCorruptError, JournalGapError) as exc:
            result.problems.append(
                f"{exc}; repair cuts only the newest segment: restore the damaged one from backup (the "
                "tools read around it with --salvage)"
            )
    finally:
        os.close(lock)
    return result


def _events_in_whole_frames(buf: bytes, start: int) -> int:
    """How many events the whole frames found at or after ``start`` hold (headers only)."""
    count, pos = 0, buf.find(FRAME_MAGIC, start)
    while pos >= 0:
        try:
            h = decode_header(buf, pos)
        except (TornFrame, CorruptFrame):
            pos = buf.find(FRAME_MAGIC, pos + 1)
            continue
        if h.end > len(buf):
            break
        count += h.count
        pos = buf.find(FRAME_MAGIC, h.end) if h.end < len(buf) else -1
    return count


def _lock(directory: Path) -> int:
    """Take the writer's lock on the journal (non-blocking); return its fd. Raises JournalError if held."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(
                f"{directory}: a journal writer holds this journal (the gateway is running); stop it first"
            ) from None
    return fd
