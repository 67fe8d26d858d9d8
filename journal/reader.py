"""A read-only view of a journal directory for the tools and the audit queries: seek by time, seq or index.

Theory of operation
-------------------
``Journal`` lists segments and snapshots by name and reads frames through ``journal.segments``'s one
reader (``SegmentReader.segment_frames``), so seq continuity, torn tails and salvage mean the same here as
in recovery: an error (strict, the default) or a ``Note`` (``salvage``). A torn tail at the end of the
newest segment is a note, left in place: nothing is ever written into the directory. An empty segment (a
torn first frame cut to nothing by recovery) is clean and holds no frames.

What it adds for point queries: segments found by time through the ``min_at_ns`` of their first frame
header (one 48-byte read each, binary search), a segment split into its frames so that one frame can be
decoded alone (``chunks``, ``chunk_events``), the per-segment audit index (``journal.index``: the
writer's ``.idx`` when current and whole, else built in memory and kept for the process; a bad one is
noted and the segment read instead), and ``check_continuity(i)``, which a query that skips segments by
index calls on every segment it relies on, so that a missing segment file is a gap and never a silent
wrong answer.

Time and seq: window selection by first frame headers assumes the wall clock grows with seq, as the
gateway writes it; a clock stepped backwards makes window selection approximate, never the events.

"State at T" is the fold stopped at T: the newest snapshot taken at or before T, then every later event
with ``at_ns <= T`` (``start_point``). When that state cannot be known (the events before the oldest
segment removed and no snapshot covers them, or the only snapshots are unreadable) strict mode raises.
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from journal.errors import (
    CorruptFrame,
    JournalCorruptError,
    JournalGapError,
    JournalMissingError,
    TornFrame,
)
from journal.events import JournalEvent, Snapshot
from journal.frames import FRAME_HEADER_LEN, FrameHeader, decode_frame, decode_header, new_decompressor
from journal.index import SegmentIndex, load_or_build_index
from journal.segments import (
    SEGMENT_RE,
    Frame,
    Note,
    SegmentReader,
    SnapshotInfo,
    list_snapshots,
    read_snapshot,
    walk_headers,
)
from journal.text import format_time

__all__ = ["Chunk", "Journal", "SegmentRef", "segment_index"]


class Chunk(NamedTuple):
    """A piece of a segment to decode on its own: one frame (``header``), or the whole segment (None)."""

    first_seq: int
    last_seq: int
    min_at_ns: int
    max_at_ns: int
    header: FrameHeader | None


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """A segment file and the seq its name says it starts at."""

    first_seq: int
    path: Path


class Journal:
    """A read-only view of a journal directory (see the module doc).

    Raises (strict mode, from the reading methods): JournalCorruptError, JournalGapError; OSError for
    unreadable files. With ``salvage`` nothing is raised for bad data; ``notes`` says what was skipped.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        salvage: bool = False,
    ) -> None:
        path = Path(directory)
        if not path.exists():
            raise JournalMissingError(f"{path}: no such journal directory")
        if not path.is_dir():
            raise JournalMissingError(
                f"{path}: not a directory; give the journal directory (gateway.toml [journal] dir)"
            )
        try:
            names = os.listdir(path)
        except PermissionError:
            raise JournalMissingError(f"{path}: cannot read this journal directory (permission denied)") from None
        self.directory = path
        self.salvage = salvage
        self.segments = sorted(
            (SegmentRef(int(m.group(1)), path / n) for n in names if (m := SEGMENT_RE.match(n))),
            key=lambda s: s.first_seq,
        )
        self._seg_seqs = [s.first_seq for s in self.segments]
        self.snapshots: list[SnapshotInfo] = list_snapshots(path)
        if not self.segments and not self.snapshots:
            raise JournalMissingError(f"{path}: holds no journal (no seg-*.gwj or snap-*.gws files)")
        self.reader = SegmentReader(path, salvage=salvage)  # the one frame reader; it keeps the notes
        self.notes: list[Note] = self.reader.notes
        self._dctx = new_decompressor()  # for single frames (chunk_events)
        self._first_at: dict[int, int | None] = {}
        self._headers: dict[int, list[FrameHeader]] = {}
        self._clean: dict[int, bool] = {}  # segment i is whole frames with consecutive seqs, nothing else
        self._chunks: dict[int, list[Chunk]] = {}
        self._frames: dict[tuple[int, int], list[JournalEvent]] = {}
        self._decoded: dict[int, list[JournalEvent]] = {}
        self._indexes: dict[int, SegmentIndex] = {}
        self._snaps: dict[int, Snapshot | None] = {}
        self._checked: set[int] = set()  # segments whose seq continuity check_continuity confirmed

    # -- notes ---------------------------------------------------------------------------------------

    def note(self, kind: str, path: Path | str, offset: int, size: int, detail: str) -> None:
        """Record something handled (a torn tail, a skipped region, a gap, an unknown state) once."""
        self.reader.note(kind, path, offset, size, detail)

    # -- finding segments ----------------------------------------------------------------------------

    def first_at(self, i: int) -> int | None:
        """min_at_ns of segment i's first frame (one header read), None if it has no valid first frame."""
        if i not in self._first_at:
            at = None
            try:
                with open(self.segments[i].path, "rb") as f:
                    at = decode_header(f.read(FRAME_HEADER_LEN), 0).min_at_ns
            except (TornFrame, CorruptFrame, OSError):
                pass
            self._first_at[i] = at
        return self._first_at[i]

    def _time_key(self, i: int) -> int:
        """first_at(i), or that of the nearest earlier segment that has one (for the binary search)."""
        while i >= 0:
            at = self.first_at(i)
            if at is not None:
                return at
            i -= 1
        return -(1 << 63)

    def segment_for_time(self, at_ns: int, *, strict: bool = False) -> int:
        """Index of the last segment whose first event is at or before ``at_ns`` (before it if ``strict``);
        -1 if there is none."""
        lo, hi = 0, len(self.segments)
        while lo < hi:
            mid = (lo + hi) // 2
            key = self._time_key(mid)
            if key < at_ns or (key == at_ns and not strict):
                lo = mid + 1
            else:
                hi = mid
        return lo - 1

    def segment_for_seq(self, seq: int) -> int:
        """Index of the segment that holds ``seq`` by name (-1 if it is before the oldest segment)."""
        return bisect.bisect_right(self._seg_seqs, seq) - 1

    def seq_end(self, i: int) -> int:
        """One past the last seq segment i can hold (the next segment's first seq), or a huge number."""
        return self.segments[i + 1].first_seq if i + 1 < len(self.segments) else 1 << 62

    def frame_headers(self, i: int) -> list[FrameHeader]:
        """Segment i's whole frame headers, read with pread (nothing decompressed); stops at bad data."""
        if i not in self._headers:
            seg = self.segments[i]
            found, offset, size = walk_headers(seg.path)
            self._headers[i] = found
            clean, expected = offset == size, seg.first_seq  # an empty segment is clean, with no frames
            for h in found:
                if not clean or h.first_seq != expected:
                    clean = False
                    break
                expected = h.last_seq + 1
            self._clean[i] = clean
        return self._headers[i]

    def chunks(self, i: int) -> list[Chunk]:
        """Segment i in pieces to decode one at a time: its frames when the whole file is whole frames
        with consecutive seqs, else one piece read through ``segment_frames`` (which notes or raises)."""
        if i not in self._chunks:
            headers = self.frame_headers(i)
            if self._clean[i]:
                self._chunks[i] = [
                    Chunk(h.first_seq, h.last_seq, h.min_at_ns, h.max_at_ns, h) for h in headers
                ]
            else:
                evs = self.segment_events(i)
                ats = [e.at_ns for e in evs]
                self._chunks[i] = [Chunk(evs[0].seq, evs[-1].seq, min(ats), max(ats), None)] if evs else []
        return self._chunks[i]

    def chunk_events(self, i: int, n: int) -> list[JournalEvent]:
        """The events of piece n of segment i (decoded once, cached)."""
        piece = self.chunks(i)[n]
        if piece.header is None:
            return self.segment_events(i)
        if (i, n) not in self._frames:
            h = piece.header
            path = self.segments[i].path
            with open(path, "rb") as f:
                f.seek(h.offset)
                buf = f.read(h.end - h.offset)
            try:
                events = decode_frame(buf, 0, self._dctx)[0]
            except (TornFrame, CorruptFrame) as exc:
                if not self.salvage:
                    raise JournalCorruptError(path, h.offset, exc.detail) from None
                self.note(
                    "skipped",
                    path,
                    h.offset,
                    h.end - h.offset,
                    f"skipped {h.end - h.offset} bytes at offset {h.offset}: {exc.detail}",
                )
                events = []
            self._frames[(i, n)] = events
        return self._frames[(i, n)]

    def index(self, i: int) -> SegmentIndex:
        """Segment i's audit index (journal.index): the writer's ``.idx`` if current, else built in memory."""
        if i not in self._indexes:
            path = self.segments[i].path
            index, bad = segment_index(path)
            if bad is not None:
                self.note(
                    "bad_index", bad.path, bad.offset, 0, f"{bad.detail}; ignored, the segment itself was read"
                )
            self._indexes[i] = index
        return self._indexes[i]

    # -- reading frames ------------------------------------------------------------------------------

    def segment_frames(
        self,
        i: int,
        *,
        since: int | None = None,
        until: int | None = None,
        start_seq: int | None = None,
    ) -> Iterator[Frame]:
        """Decoded frames of segment i holding events in the window; other frames skipped by header.

        Checks seq continuity against the previous frame read (``self.reader.expected``; None starts
        afresh). Events are filtered to the window.
        """
        seg = self.segments[i]
        return self.reader.segment_frames(
            seg.first_seq,
            seg.path,
            i == len(self.segments) - 1,
            since_ns=since,
            until_ns=until,
            start_seq=start_seq,
        )

    def segment_events(self, i: int) -> list[JournalEvent]:
        """Every event of segment i, decoded once and cached (the seq check is within the segment)."""
        if i not in self._decoded:
            saved, self.reader.expected = self.reader.expected, None
            try:
                self._decoded[i] = [e for f in self.segment_frames(i) for e in f.events]
            finally:
                self.reader.expected = saved
        return self._decoded[i]

    def check_continuity(self, i: int) -> None:
        """Check that segment i's frames run on from its name's seq and end where segment i + 1 begins.

        A query that skips segments by their index calls this on each segment it relies on, so that a
        removed segment file is a gap (JournalGapError; a note in salvage mode), never a wrong answer.
        Frame headers only, unless the segment is not clean (then it is read, which notes or raises).
        """
        if i in self._checked:
            return
        self._checked.add(i)
        headers = self.frame_headers(i)
        seg = self.segments[i]
        if self._clean[i]:
            last = headers[-1].last_seq if headers else seg.first_seq - 1
        else:
            evs = self.segment_events(i)
            last = evs[-1].seq if evs else seg.first_seq - 1
        if i + 1 < len(self.segments):
            following = self.segments[i + 1]
            if last + 1 != following.first_seq and (headers or self._clean[i]):
                self.reader.gap(
                    following.path,
                    0,
                    last + 1,
                    following.first_seq,
                    f"{seg.path.name} ends at seq {last} but the next segment starts at seq "
                    f"{following.first_seq}"
                    + (
                        f" (events {last + 1}..{following.first_seq - 1} are missing: a segment file was "
                        "removed?)"
                        if following.first_seq > last + 1
                        else ""
                    ),
                )

    def events(
        self,
        *,
        since: int | None = None,
        until: int | None = None,
        start_seq: int | None = None,
        progress: Callable[[], None] | None = None,
    ) -> Iterator[JournalEvent]:
        """Events with seq >= start_seq and since <= at_ns <= until, in seq order, seq continuity checked.

        Segments wholly outside the window are not opened (their first frame header bounds them).
        """
        if not self.segments:
            return
        i0 = 0
        if start_seq is not None:
            if start_seq < self.segments[0].first_seq:
                first = self.segments[0].first_seq
                self.reader.gap(
                    self.segments[0].path,
                    0,
                    start_seq,
                    first,
                    f"events from seq {start_seq} are needed but the oldest segment starts at "
                    f"seq {first} (events {start_seq}..{first - 1} are missing: older segments removed?)",
                )
            i0 = max(self.segment_for_seq(start_seq), 0)
        if since is not None:
            i0 = max(i0, self.segment_for_time(since, strict=True), 0)
        self.reader.expected = None
        for i in range(i0, len(self.segments)):
            if until is not None and i > i0 and (at := self.first_at(i)) is not None and at > until:
                break
            yield from (
                e for f in self.segment_frames(i, since=since, until=until, start_seq=start_seq) for e in f.events
            )
            if progress is not None:
                progress()

    # -- snapshots -----------------------------------------------------------------------------------

    def snapshot(self, info: SnapshotInfo) -> Snapshot | None:
        """A snapshot file, read and checked once; None (and a note) if it is corrupt."""
        if info.upto_seq not in self._snaps:
            try:
                self._snaps[info.upto_seq] = read_snapshot(info.path)
            except JournalCorruptError as exc:
                self.note(
                    "bad_snapshot", info.path, exc.offset, 0, f"{exc.detail}; ignored, using an older one"
                )
                self._snaps[info.upto_seq] = None
        return self._snaps[info.upto_seq]

    def seq_bound(self, at_ns: int) -> int:
        """A seq such that every event from it on is after ``at_ns`` (frame headers only)."""
        k = self.segment_for_time(at_ns)
        if k < 0:
            return self.segments[0].first_seq if self.segments else 1 << 62
        for h in self.frame_headers(k):
            if h.min_at_ns > at_ns:
                return h.first_seq
        return self.seq_end(k)

    def known_start(self, at_ns: int) -> tuple[Snapshot | None, int] | None:
        """Where a fold that knows the whole state at ``at_ns`` starts: the newest whole snapshot taken at
        or before it (None: the start of the journal) and the first seq to fold after it; None when the
        state there cannot be known (older events removed, or only later snapshots). Notes nothing."""
        bound = self.seq_bound(at_ns)
        oldest = self.segments[0].first_seq if self.segments else 1
        for info in reversed(self.snapshots):
            if info.upto_seq >= bound or info.upto_seq + 1 < oldest:
                continue
            snap = self.snapshot(info)
            if snap is not None and snap.at_ns <= at_ns:
                return snap, snap.upto_seq + 1
        if not self.segments and self.snapshots:  # a journal of snapshots only
            for info in reversed(self.snapshots):
                snap = self.snapshot(info)
                if snap is not None and snap.at_ns <= at_ns:
                    return snap, snap.upto_seq + 1
            return None
        return (None, 1) if oldest == 1 else None

    def start_point(self, at_ns: int, *, partial: bool = False) -> tuple[Snapshot | None, int]:
        """Where the fold for "state at at_ns" starts: the newest whole snapshot taken at or before it
        (None: the start of the journal) and the first seq to fold after it.

        When older segments were removed (retention) and no snapshot is that old, the state cannot be
        known: with ``partial`` (or salvage) the fold starts at the oldest segment and an ``unknown_state``
        note says what is missing; otherwise JournalGapError. The same for a journal of snapshots only
        with none readable taken at or before ``at_ns`` (JournalCorruptError when one is unreadable): an
        unknown state is an error or a note, never an empty answer.
        """
        found = self.known_start(at_ns)
        if found is not None:
            return found
        oldest = self.segments[0].first_seq if self.segments else 1
        lenient = partial or self.salvage
        bad = [n for n in self.notes if n.kind == "bad_snapshot"]
        why_bad = f"; {Path(bad[-1].path).name} is unreadable ({bad[-1].detail})" if bad else ""
        if not self.segments:
            first = self.snapshots[0]
            what = (
                f"the state at {format_time(at_ns)} is not known: the journal holds only snapshots and none "
                f"readable was taken at or before it{why_bad}"
            )
            if not lenient:
                if bad:
                    raise JournalCorruptError(bad[-1].path, bad[-1].offset, what, hint="ask about a later time")
                raise JournalGapError(first.path, 0, 1, first.upto_seq + 1, f"{what}; ask about a later time")
            self.note("unknown_state", first.path, 0, 0, what)
            return None, 1
        if oldest > 1:
            path = self.segments[0].path
            usable = [i for i in self.snapshots if i.upto_seq + 1 >= oldest]
            hint = f"; the oldest snapshot is {usable[0].path.name}" if usable else ""
            if not lenient:
                raise JournalGapError(
                    path,
                    0,
                    1,
                    oldest,
                    f"the state at {format_time(at_ns)} needs events 1..{oldest - 1}, which were removed "
                    f"(retention){hint}{why_bad}; ask about a later time",
                )
            self.note(
                "unknown_state",
                path,
                0,
                0,
                f"events 1..{oldest - 1} were removed (retention): mappings created "
                f"before seq {oldest} are not known here{hint}{why_bad}",
            )
            return None, oldest
        return None, 1  # not reached: known_start answers every journal that starts at seq 1

    def snapshot_at(self, info: SnapshotInfo) -> int | None:
        """When a snapshot was taken (None if it is unreadable)."""
        snap = self.snapshot(info)
        return None if snap is None else snap.at_ns


_INDEX_CACHE_SIZE = 64  # segments whose index this process keeps (a long-running reader meets many)
_INDEXES: OrderedDict[str, tuple[tuple[int, int], tuple[SegmentIndex, JournalCorruptError | None]]] = OrderedDict()


def segment_index(path: Path) -> tuple[SegmentIndex, JournalCorruptError | None]:
    """A segment's audit index: its ``.idx`` file when current and whole, else built in memory (never
    written), and what was wrong with the file if it was bad; the last few are kept for the process by
    path, and used again while the segment's size and mtime are unchanged."""
    st = path.stat()
    key, stamp = str(path), (st.st_size, st.st_mtime_ns)
    found = _INDEXES.get(key)
    if found is not None and found[0] == stamp:
        _INDEXES.move_to_end(key)
        return found[1]
    bad: list[JournalCorruptError] = []
    index = load_or_build_index(path, write=False, on_bad=bad.append)
    result = index, bad[0] if bad else None
    _INDEXES[key] = (stamp, result)
    _INDEXES.move_to_end(key)
    while len(_INDEXES) > _INDEX_CACHE_SIZE:
        _INDEXES.popitem(last=False)
    return result
