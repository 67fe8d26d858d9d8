"""Recovery: the newest whole snapshot and the events after it. Reads files; knows nothing about the NAT.

Theory of operation
-------------------
``load(dir)`` picks the newest snapshot file that reads back whole (a corrupt one is noted and the
previous one is tried), then reads every event with ``seq > snapshot.upto_seq`` through ``SegmentReader``,
which checks that seq increases by exactly one and, by default, cuts a torn tail off the newest segment
(kept aside in ``<segment>.broken`` and noted). The caller folds the result:
``Nat.restore(config, rec.snapshot, rec.events, now)`` in ``gw.nat``; the NAT then continues at
``rec.last_seq + 1``.

Errors, all naming the file: a corrupt frame (``JournalCorruptError``), a gap, missing segments a snapshot
needs (retention or a lost file), or a snapshot ahead of the journal (``JournalGapError``). The daemon
refuses to start on them; the tools read around them with ``SegmentReader(salvage=True)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from journal.errors import JournalCorruptError, JournalGapError
from journal.events import GatewayStopped, JournalEvent, Snapshot
from journal.segments import (
    SNAPSHOT_RE,
    SNAPSHOT_TMP_SUFFIX,
    Note,
    SegmentReader,
    list_snapshots,
    read_snapshot,
)

__all__ = ["Recovered", "load"]


@dataclass
class Recovered:
    """What a journal holds: the newest whole snapshot, the events after it, and what was noticed."""

    snapshot: Snapshot | None = None
    snapshot_path: Path | None = None
    events: list[JournalEvent] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    last_seq: int = 0  # the NAT continues at last_seq + 1
    clean: bool = True  # the last event is GatewayStopped (or the journal is empty)


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
        assert rec.snapshot_path is not None
        raise JournalGapError(
            rec.snapshot_path,
            0,
            upto,
            journal_last,
            f"the snapshot covers up to seq {upto} but the journal ends at seq {journal_last} (events "
            f"{journal_last + 1}..{upto} were lost); move this snapshot aside to recover from an older one",
        )
    rec.last_seq = max(upto, journal_last or 0)
    last_event = rec.events[-1] if rec.events else reader.last_event()
    rec.clean = last_event is None or isinstance(last_event, GatewayStopped)
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
