"""JournalWriter: the thread that turns submitted events into durable frames on disk.

Theory of operation
-------------------
The event loop hands batches of events to ``submit`` (a ``queue.SimpleQueue.put``: it never blocks and
never does I/O). The writer thread gathers them and commits a group: when ``batch_count`` events are
pending, or ``batch_age_s`` after the first pending one arrived, it encodes one frame
(``frames.encode_frame``) and appends it to the current segment. The fsync policy then decides when the
frames are durable and ``on_durable(last_seq)`` is called (from the writer thread; the daemon wraps it in
``loop.call_soon_threadsafe``):

- ``always``: after every commit round (each round's frames share one fsync: group commit);
- ``interval``: at most every ``fsync_interval_s`` (the first write after a quiet spell syncs at once);
- ``never``: no fsync for frames; ``on_durable`` right after the write. A segment is still fsynced when it
  is closed (rotation, ``flush``, ``close``), so only the newest segment can end torn.

Segments rotate before a frame that would take them past ``segment_max_bytes``, or once they are
``segment_max_age_s`` old; a new segment is opened lazily and named by the seq of its first frame.
Retention (``retention_s``) deletes the oldest segments whose events are all older than that and all
covered by the oldest kept snapshot (``keep_snapshots``, default 2, so recovery can fall back one
snapshot). It never deletes the newest segment. Snapshots beyond ``keep_snapshots`` are deleted.

When it closes a segment (rotation, ``close``) the writer also writes the segment's audit index
``<segment>.idx`` (``journal.index``), read back in a helper thread, so audits can skip segments without
the tools ever writing into the journal. The index is derived data: it is not fsynced, and a failure to
write it is reported through ``on_error`` as a ``JournalIndexWarning`` and never fails the journal
(``gw-audit DIR reindex`` rebuilds missing ones).

``submit_snapshot(obj)``: ``obj`` is a ``Snapshot`` or has ``.build() -> Snapshot``. When the writer
reaches it in the queue, every event submitted earlier is written and fsynced (a snapshot is never ahead of
the journal); then a helper thread calls ``build()`` and writes the file (temp, fsync, rename), so a large
snapshot does not hold up frame writes. ``build`` runs off the loop thread: it must only read data the
loop no longer mutates. ``on_snapshot(path, upto_seq)`` is called when the file is durable (the daemon
may journal a ``SnapshotTaken`` for it). One snapshot is written at a time; an overlapping request is
reported and skipped.

Back-pressure: events submitted but not yet written (the queue and the pending batch) are bounded by
``max_backlog_events``. Past it ``submit`` refuses the batch with ``JournalBackpressureError`` (nothing
queued, so nothing is half taken), counts it in ``refused_events`` and raises one alarm through
``on_error`` per episode; ``backlogged`` says so for polling. A full disk therefore fills this bound, not
the process's memory. The caller decides what a refusal means: in strict audit mode the daemon refuses
new flows while ``backlogged`` (a mapping that cannot be journaled is not made) and resubmits the
events it holds; in fast mode it keeps established flows going and counts the loss it reports. Either
way the loss is counted and alarmed, never silent.

Misuse is refused at ``submit``, where the caller can still act on it: a batch that does not continue
the journal's seqs by exactly one (a gap or an overlap) raises ``JournalGapError`` and is not queued.

Liveness: if the writer thread dies (a bug), ``submit``, ``submit_snapshot`` and ``flush`` raise
``JournalError`` naming the cause from then on, a ``flush`` waiting on it is woken with that error, and
``alive`` is False; the daemon polls ``alive`` (or sees the exception) and stops accepting traffic.

Failures: any OSError (full disk, quota, RLIMIT_FSIZE, EIO) is reported through ``on_error`` with a
``JournalWriteError``/``JournalFullError``, the partial frame is truncated away, and the events stay
queued; the write is retried every ``retry_interval_s``. After a failed fsync the unsynced frames of the
segment are rewritten from memory before syncing again (the kernel may have dropped those pages). At
``close`` whatever could still not be written raises ``JournalWriteError`` naming the seqs: events are
never dropped silently. Events that cannot be encoded at all (a caller bug) are reported and dropped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from journal.errors import (
    JournalCorruptError,
    JournalError,
    JournalFullError,
    JournalGapError,
    JournalWriteError,
)
from journal.events import JournalEvent, Snapshot
from journal.frames import MAX_FRAME_EVENTS, decode_frame, encode_frame, new_compressor
from journal.index import build_index, is_current, read_index, remove_stale_index_tmp, write_index
from journal.segments import (
    FILE_MODE,
    LOCK_NAME,
    first_header,
    fsync_dir,
    list_snapshots,
    make_journal_dir,
    segment_info,
    segment_name,
    segment_paths,
    write_snapshot,
)

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one daemon per journal is the operator's job there
    fcntl = None  # type: ignore[assignment]

__all__ = ["FsyncPolicy", "JournalBackpressureError", "JournalIndexWarning", "JournalWriter"]

FsyncPolicy = Literal["always", "interval", "never"]
_POLICIES = ("always", "interval", "never")
_O_BINARY = getattr(os, "O_BINARY", 0)
_LIVENESS_POLL_S = 0.1  # a flush waiting on a dead writer thread notices within this
_log = logging.getLogger("journal")


class JournalIndexWarning(JournalError, UserWarning):
    """A segment's audit index could not be written; the journal itself is fine."""


class JournalBackpressureError(JournalFullError):
    """Too many events wait to be written (the disk is full or too slow): this batch was refused."""

    def __init__(self, msg: str) -> None:
        JournalError.__init__(self, msg)
        self.path, self.offset, self.detail = "", 0, msg


class _Close:
    pass


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


class _Retention:
    pass


class _SnapshotRequest:
    def __init__(self, obj: Any) -> None:
        self.obj = obj


_CLOSE = _Close()
_RETENTION = _Retention()


class JournalWriter:
    """Group-commits submitted events into segment files from its own thread (see the module doc)."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "interval",
        fsync_interval_s: float = 1.0,
        batch_count: int = 1024,
        batch_age_s: float = 0.002,
        segment_max_bytes: int = 64 << 20,
        segment_max_age_s: float = 3600.0,
        retention_s: float | None = None,
        keep_snapshots: int = 2,
        retry_interval_s: float = 1.0,
        max_backlog_events: int = 1 << 20,
        on_durable: Callable[[int], None] | None = None,
        on_error: Callable[[Exception], None] | None = None,
        on_snapshot: Callable[[Path, int], None] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(_POLICIES)}, not {fsync!r}")
        if not 1 <= batch_count <= MAX_FRAME_EVENTS:
            raise ValueError(f"batch_count must be 1..{MAX_FRAME_EVENTS}, not {batch_count}")
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        if max_backlog_events < batch_count:
            raise ValueError(f"max_backlog_events must be at least batch_count ({batch_count})")
        self.directory = Path(directory)
        self.fsync = fsync
        self.fsync_interval_s = fsync_interval_s
        self.batch_count = batch_count
        self.batch_age_s = batch_age_s
        self.segment_max_bytes = segment_max_bytes
        self.segment_max_age_ns = int(segment_max_age_s * 1e9)
        self.retention_ns = None if retention_s is None else int(retention_s * 1e9)
        self.keep_snapshots = keep_snapshots
        self.retry_interval_s = retry_interval_s
        # 1 M events is ~150 MB of Structs: seconds of a busy gateway, hours of a quiet one
        self.max_backlog_events = max_backlog_events
        self._on_durable = on_durable
        self._on_error = on_error
        self._on_snapshot = on_snapshot
        self._clock_ns = clock_ns

        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._closed = False  # no more submits
        self._close_error: BaseException | None = None
        self.durable_seq = 0  # events up to here are durable per the policy (read from any thread)
        self.submitted_seq: int | None = None  # last seq accepted by submit (caller's thread only)
        self.refused_events = 0  # events refused by back-pressure (caller's thread only)
        self._backlogged = False
        self._dead: BaseException | None = None  # why the writer thread died, once it has

        # writer-thread state
        self._cctx = new_compressor()
        self._pending: list[JournalEvent] = []
        self._pending_since = 0.0
        self._fd: int | None = None
        self._seg_path: Path | None = None
        self._seg_opened_ns = 0
        self._written = 0  # bytes of whole frames in the current segment
        self._synced = 0  # bytes of the current segment known durable
        self._unsynced: list[bytes] = []  # frames written since the last fsync, to rewrite after a failed one
        self._needs_repair = False  # file content past _synced is unknown: rewrite _unsynced before going on
        self.written_seq = 0  # seq of the last event written (any segment)
        self._last_sync = float("-inf")
        self._failure: JournalWriteError | None = None
        self._retry_at = 0.0
        self._reported: str | None = None
        self._snap_thread: threading.Thread | None = None
        self._index_threads: list[threading.Thread] = []  # indexing closed segments, off the write path

    # -- caller side (any thread) --------------------------------------------------------------------

    def start(self) -> None:
        """Open the journal (create it 0700, take its lock, check its newest segment) and start the thread.

        Raises: JournalError if another writer holds the journal or its newest segment has a torn tail
        (run ``journal.recovery.load`` first); OSError if the directory cannot be created.
        """
        if self._thread is not None:
            return
        make_journal_dir(self.directory)
        self._take_lock()
        try:
            self._inspect_journal()
        except BaseException:
            self._release_lock()
            raise
        if self.submitted_seq is None:
            self.submitted_seq = self.written_seq
        self._index_unindexed()
        self._thread = threading.Thread(
            target=self._run, name=f"journal-writer {self.directory}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread is running and has not failed (the daemon polls this)."""
        return self._dead is None and self._thread is not None and self._thread.is_alive()

    @property
    def backlogged(self) -> bool:
        """Whether events wait past ``max_backlog_events`` (a strict-mode daemon refuses new flows)."""
        return self.backlog_events >= self.max_backlog_events

    @property
    def failing(self) -> bool:
        """Whether the last write or fsync failed and is waiting for its retry (a full disk, EIO)."""
        return self._failure is not None or self._needs_repair

    @property
    def backlog_events(self) -> int:
        """Events submitted but not yet written (approximate while the writer runs)."""
        return max(0, (self.submitted_seq or 0) - self.written_seq)

    def submit(self, events: list[JournalEvent]) -> None:
        """Queue events (consecutive seqs, continuing the journal); the writer owns the list now.

        Raises (nothing queued): JournalGapError if the batch does not continue the journal by exactly one
        seq; JournalBackpressureError past ``max_backlog_events``; JournalError if the writer is closed or
        its thread died.
        """
        if not events:
            return
        first, last = getattr(events[0], "seq", None), getattr(events[-1], "seq", None)
        self._check_usable(f"events from seq {first} refused")
        if type(first) is not int or type(last) is not int:
            self._queue.put(events)  # not events: a caller bug the writer reports when it encodes them
            return
        expected = first if self.submitted_seq is None else self.submitted_seq + 1
        if first != expected or last - first != len(events) - 1:
            raise JournalGapError(
                self.directory,
                0,
                expected,
                first,
                f"submitted events seq {first}..{last} ({len(events)} events) do not continue the journal at "
                f"seq {expected} by exactly one (a caller bug); refused, nothing queued",
            )
        if self.backlog_events + len(events) > self.max_backlog_events:
            self.refused_events += len(events)
            error = JournalBackpressureError(
                f"{self.directory}: {self.backlog_events} events wait to be written (limit "
                f"{self.max_backlog_events}); events {first}..{last} refused ({self.refused_events} refused "
                "so far): the journal disk is full or too slow"
            )
            if not self._backlogged:
                self._backlogged = True
                self._report(error)
            raise error
        self._backlogged = False
        self.submitted_seq = last
        self._queue.put(events)

    def _check_usable(self, what: str) -> None:
        if self._dead is not None:
            raise JournalError(f"{self.directory}: journal writer thread died ({self._dead!r}); {what}")
        if self._closed:
            raise JournalError(f"{self.directory}: journal writer is closed; {what}")

    def submit_snapshot(self, obj: Snapshot | Any) -> None:
        """Queue a snapshot: a Snapshot, or an object whose ``build()`` returns one (called off the loop)."""
        self._check_usable("snapshot refused")
        self._queue.put(_SnapshotRequest(obj))

    def flush(self, timeout: float | None = None) -> int:
        """Write and fsync everything submitted so far (snapshots included); return ``durable_seq``.

        Raises: JournalError if the writer does not answer within ``timeout`` seconds, or its thread died.
        """
        if self._dead is not None:
            self._check_usable("flush failed")
        if self._thread is None or not self._thread.is_alive():
            return self.durable_seq
        request = _Flush()
        self._queue.put(request)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not request.done.wait(_LIVENESS_POLL_S):  # a thread that dies never answers: notice it
            if not self._thread.is_alive():
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JournalError(f"{self.directory}: journal writer did not flush within {timeout} s")
        if self._dead is not None:
            self._check_usable(f"flush failed; events after seq {self.durable_seq} are not durable")
        return self.durable_seq

    def close(self, timeout: float | None = 30.0) -> None:
        """Write and fsync everything, stop the thread, release the journal. Idempotent.

        Raises: JournalWriteError if events could not be written (they are named; ``.unwritten`` holds
        them); JournalError if the thread does not finish within ``timeout``.
        """
        if self._closed and (self._thread is None or not self._thread.is_alive()):
            self._release_lock()
            return
        if self._thread is None:
            self.start()
        self._closed = True
        self._queue.put(_CLOSE)
        assert self._thread is not None
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise JournalError(f"{self.directory}: journal writer did not finish within {timeout} s")
        for thread in self._index_threads:
            thread.join(timeout)  # derived data: a slow one is left to finish (or be rebuilt) on its own
        self._release_lock()
        if self._close_error is not None:
            error, self._close_error = self._close_error, None
            raise error

    def __enter__(self) -> JournalWriter:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._apply_retention()
            closing = False
            while not closing:
                item = self._wait_item()
                while item is not None:
                    if type(item) is list:
                        if not self._pending:
                            self._pending_since = time.monotonic()
                        self._pending.extend(item)
                        if len(self._pending) >= self.batch_count:
                            break  # write what we have before draining more: memory stays bounded
                    elif item is _CLOSE:
                        closing = True
                        break
                    elif isinstance(item, _Flush):
                        self._commit(force=True)
                        self._sync()
                        if self._join_snapshot():
                            self._apply_retention()
                        item.done.set()
                    elif isinstance(item, _SnapshotRequest):
                        self._snapshot(item.obj)
                    elif item is _RETENTION:
                        self._apply_retention()
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                self._commit(force=closing)
            self._finish()
        except BaseException as exc:  # a bug: say so loudly, make close() raise, refuse what comes next
            self._dead = exc
            self._close_error = exc
            self._report(JournalError(f"{self.directory}: journal writer thread failed: {exc!r}"))
            self._close_fd()
            while True:  # wake whoever waits for a flush: it raises with the cause
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Flush):
                    item.done.set()

    def _wait_item(self) -> Any:
        """Block for the next queue item until the next batch, fsync or retry deadline (None on timeout)."""
        deadlines = []
        if self._pending:
            deadlines.append(self._retry_at if self._failure else self._pending_since + self.batch_age_s)
        if self._written > self._synced and self.fsync == "interval" and not self._failure:
            deadlines.append(self._last_sync + self.fsync_interval_s)
        if self._needs_repair:
            deadlines.append(self._retry_at)
        if not deadlines:
            return self._queue.get()
        try:
            return self._queue.get(timeout=max(0.0, min(deadlines) - time.monotonic()))
        except queue.Empty:
            return None

    def _commit(self, force: bool) -> None:
        """Write full frames, and the rest if it is old enough (or ``force``); then fsync per the policy."""
        now = time.monotonic()
        if self._failure is not None and now < self._retry_at and not force:
            return
        if self._needs_repair and not self._repair():
            return
        pending = self._pending
        done = 0
        while len(pending) - done >= self.batch_count or (
            done < len(pending) and (force or now - self._pending_since >= self.batch_age_s)
        ):
            taken = self._write_frame(pending, done)
            if taken == 0:
                break
            done += taken
        if done:
            del pending[:done]
            self._pending_since = now
        if self._written > self._synced and self._failure is None:
            if self.fsync == "always" or (
                self.fsync == "interval" and now - self._last_sync >= self.fsync_interval_s
            ):
                self._sync()

    def _write_frame(self, pending: list[JournalEvent], start: int) -> int:
        """Encode and append one frame from ``pending[start:]``; return the events it took (0: failed)."""
        chunk = pending[start : start + self.batch_count]
        try:
            if chunk[-1].seq - chunk[0].seq != len(chunk) - 1:  # a seq break: end the frame before it
                first = chunk[0].seq
                chunk = chunk[: next(i for i, e in enumerate(chunk) if e.seq != first + i)]
            if chunk[0].seq != self.written_seq + 1:
                self._report(
                    JournalGapError(
                        self._seg_path or self.directory,
                        self._written,
                        self.written_seq + 1,
                        chunk[0].seq,
                        f"submitted events jump from seq {self.written_seq} to {chunk[0].seq} (a caller bug);"
                        " written as given",
                    )
                )
            frame = encode_frame(chunk, self._cctx)
        except Exception as exc:  # not events, or out of range: a caller bug; drop them loudly
            self._report(
                JournalError(
                    f"{self.directory}: cannot encode {len(chunk)} submitted events ({exc!r}); dropped"
                )
            )
            return len(chunk)
        try:
            if (
                self._fd is not None
                and self._written > 0
                and (
                    self._written + len(frame) > self.segment_max_bytes
                    or self._clock_ns() - self._seg_opened_ns >= self.segment_max_age_ns
                )
            ):
                self._rotate()
                if self._failure is not None:
                    return 0
            if self._fd is None:
                self._open_segment(chunk[0].seq)
            assert self._fd is not None
            _write_all(self._fd, frame)
        except OSError as exc:
            self._fail(exc, "write")
            self._cut_partial()
            return 0
        self._written += len(frame)
        self._unsynced.append(frame)
        self.written_seq = chunk[-1].seq
        self._recovered()
        if self.fsync == "never":
            self._durable(self.written_seq)
        return len(chunk)

    def _sync(self) -> None:
        """fsync the current segment if it has unsynced frames; report durability."""
        if self._fd is None or self._written == self._synced or self._needs_repair:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc, "fsync")
            self._needs_repair = True  # the kernel may have dropped the pages: rewrite them before retrying
            return
        self._synced = self._written
        self._unsynced.clear()
        self._last_sync = time.monotonic()
        if self.fsync != "never":
            self._durable(self.written_seq)

    def _repair(self) -> bool:
        """After a failed fsync: rewrite the unsynced frames from memory and fsync; True on success."""
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._synced)
            os.lseek(self._fd, self._synced, os.SEEK_SET)
            for frame in self._unsynced:
                _write_all(self._fd, frame)
            os.fsync(self._fd)
        except OSError as exc:
            self._fail(exc, "rewrite after a failed fsync")
            return False
        self._needs_repair = False
        self._written = self._synced = self._synced + sum(map(len, self._unsynced))
        self._unsynced.clear()
        self._last_sync = time.monotonic()
        self._recovered()
        if self.fsync != "never":
            self._durable(self.written_seq)
        return True

    def _cut_partial(self) -> None:
        """Remove a partly written frame so the segment ends at its last whole frame."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._written)
            os.lseek(self._fd, self._written, os.SEEK_SET)
        except OSError:
            self._needs_repair = True  # could not cut: rewrite from the last fsync on retry

    def _open_segment(self, first_seq: int) -> None:
        path = self.directory / segment_name(first_seq)
        flags = os.O_WRONLY | os.O_CREAT | _O_BINARY
        try:
            fd = os.open(path, flags | os.O_EXCL, FILE_MODE)
        except FileExistsError:
            if path.stat().st_size:  # reported and retried like any write failure: the events are kept
                raise FileExistsError(
                    errno.EEXIST,
                    "segment already exists and is not empty: the submitted seqs do not continue the journal"
                    " (start the NAT at journal.recovery.load(...).last_seq + 1)",
                    str(path),
                ) from None
            fd = os.open(path, flags, FILE_MODE)  # an empty leftover (a tail cut to nothing): reuse it
        self._fd, self._seg_path = fd, path
        self._written = self._synced = 0
        self._unsynced.clear()
        self._seg_opened_ns = self._clock_ns()
        if self.fsync != "never":
            fsync_dir(self.directory)

    def _rotate(self) -> None:
        """Close the current segment, fsynced whatever the policy, so only the newest segment can be torn."""
        self._sync()
        if self._failure is not None:
            return
        self._close_fd()
        self._write_index()
        self._apply_retention()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _write_index(self) -> None:
        """Index the segment just closed, in a helper thread: reading it back costs a decode per event,
        which would otherwise halve the append rate (measured). Skipped when the file's content is unknown
        (a failed write or fsync); readers then build the index themselves.
        """
        path = self._seg_path
        if path is None or self._needs_repair:
            return
        self._index_threads = [t for t in self._index_threads if t.is_alive()]
        thread = threading.Thread(target=self._index_segment, args=(path,), name=f"journal-index {path.name}")
        thread.daemon = True
        thread.start()
        self._index_threads.append(thread)

    def _index_unindexed(self) -> None:
        """At start: remove ``*.idx.tmp`` left by a crash, and index (in a helper thread) the closed
        segments without a current, whole index, such as the last segment of a run that crashed."""
        remove_stale_index_tmp(self.directory)
        missing = []
        for _, path in segment_paths(self.directory):
            try:
                index = read_index(path)
                if index is not None and is_current(index, path.stat()):
                    continue
            except (JournalCorruptError, OSError):
                pass
            missing.append(path)
        if missing:
            thread = threading.Thread(
                target=lambda: [self._index_segment(p) for p in missing], name="journal-index", daemon=True
            )
            thread.start()
            self._index_threads.append(thread)

    def _index_segment(self, path: Path) -> None:
        """Build and write ``<segment>.idx``; a failure is a warning, never a journal error."""
        try:
            index = build_index(path, write=False)
            if not index.complete:
                return  # not a whole segment: the readers build what they can, reindex reports it
            write_index(path, index)
        except FileNotFoundError:
            return  # removed by retention meanwhile
        except OSError as exc:
            self._warn(
                JournalIndexWarning(
                    f"{path}: could not write its audit index ({exc.strerror or exc}); the journal is "
                    "fine, audits of it are slower (gw-audit DIR reindex writes the missing indexes)"
                )
            )

    def _snapshot(self, obj: Any) -> None:
        """Make every earlier event durable, then build and write the snapshot in a helper thread.

        The helper keeps a large snapshot (~1 s for 1 M mappings) from stalling frame writes; one runs at
        a time. It asks this thread to apply retention when it is done.
        """
        self._commit(force=True)
        self._sync()
        if self._failure is not None or self._pending or self._needs_repair:
            self._report(JournalError(f"{self.directory}: snapshot skipped: journal writes are failing"))
            return
        if self._snap_thread is not None and self._snap_thread.is_alive():
            self._report(
                JournalError(f"{self.directory}: snapshot skipped: the previous one is still being written")
            )
            return
        self._snap_thread = threading.Thread(
            target=self._snapshot_job, args=(obj, self.written_seq), name="journal-snapshot", daemon=True
        )
        self._snap_thread.start()

    def _join_snapshot(self) -> bool:
        """Wait for a snapshot being written, if any; True if there was one."""
        thread, self._snap_thread = self._snap_thread, None
        if thread is None:
            return False
        thread.join()
        return True

    def _snapshot_job(self, obj: Any, durable_seq: int) -> None:
        """Snapshot thread: build, check it is not ahead of the durable journal, write it atomically."""
        try:
            snapshot = obj if isinstance(obj, Snapshot) else obj.build()
        except Exception as exc:
            self._report(JournalError(f"{self.directory}: snapshot skipped: building it failed: {exc!r}"))
            return
        if snapshot.upto_seq > durable_seq:
            self._report(
                JournalError(
                    f"{self.directory}: snapshot skipped: it covers up to seq {snapshot.upto_seq} but the "
                    f"journal holds only up to seq {durable_seq} (submit events before the snapshot of them)"
                )
            )
            return
        try:
            path = write_snapshot(self.directory, snapshot, fsync=True)
        except OSError as exc:
            self._report(
                JournalWriteError.from_oserror(
                    self.directory, 0, exc, f"snapshot {snapshot.upto_seq} skipped", after=""
                )
            )
            return
        if self._on_snapshot is not None:
            try:
                self._on_snapshot(path, snapshot.upto_seq)
            except Exception as exc:
                self._report(JournalError(f"on_snapshot callback failed: {exc!r}"))
        self._queue.put(_RETENTION)

    def _apply_retention(self) -> None:
        """Delete snapshots beyond ``keep_snapshots``, then old segments that the kept snapshots cover."""
        try:
            snaps = list_snapshots(self.directory)
            for old in snaps[: -self.keep_snapshots]:
                old.path.unlink(missing_ok=True)
            snaps = snaps[-self.keep_snapshots :]
            if self.retention_ns is None or len(snaps) < self.keep_snapshots:
                return  # recovery (and its fallback) needs every event after the oldest kept snapshot
            covered = snaps[0].upto_seq
            cutoff_ns = self._clock_ns() - self.retention_ns
            segs = segment_paths(self.directory)
            for (_, path), (next_seq, next_path) in zip(segs, segs[1:], strict=False):  # never the newest
                if next_seq - 1 > covered or path == self._seg_path:
                    break
                head = first_header(next_path)  # the next segment's first event bounds this one's age
                if head is None or head.min_at_ns > cutoff_ns:
                    break
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".idx").unlink(missing_ok=True)
        except OSError as exc:
            self._report(JournalWriteError.from_oserror(self.directory, 0, exc, "retention", after=""))

    def _finish(self) -> None:
        """At close: one last attempt to write everything, fsync, and record what could not be written."""
        self._join_snapshot()  # its retention request is not needed: the next start applies retention
        self._failure = None  # retry now, whatever the back-off says
        self._commit(force=True)
        self._sync()
        if self._needs_repair and self._repair():
            self._commit(force=True)
            self._sync()
        self._close_fd()
        self._write_index()
        if self._pending or self._needs_repair:
            lost: list[JournalEvent] = []
            if self._needs_repair:  # written but never durably: recover them from the frames kept in memory
                for frame in self._unsynced:
                    lost.extend(decode_frame(frame)[0])
            lost.extend(self._pending)
            failure = self._failure
            error = (type(failure) if failure is not None else JournalWriteError)(
                self._seg_path or self.directory,
                self._written,
                f"closed with events seq {lost[0].seq}..{lost[-1].seq} not durable "
                f"({failure.detail if failure else 'unknown failure'}); see the exception's .unwritten",
            )
            error.unwritten = lost  # type: ignore[attr-defined]
            self._close_error = error
            self._report(error)

    # -- bookkeeping ---------------------------------------------------------------------------------

    def _durable(self, seq: int) -> None:
        self.durable_seq = seq
        if self._on_durable is not None:
            try:
                self._on_durable(seq)
            except Exception as exc:
                self._report(JournalError(f"on_durable callback failed: {exc!r}"))

    def _fail(self, exc: OSError, doing: str) -> None:
        """Record a failed write/fsync: report it (once per distinct failure) and schedule a retry."""
        self._failure = JournalWriteError.from_oserror(
            self._seg_path or self.directory, self._written, exc, doing
        )
        self._retry_at = time.monotonic() + self.retry_interval_s
        if str(self._failure) != self._reported:
            self._reported = str(self._failure)
            self._report(self._failure)

    def _recovered(self) -> None:
        if self._failure is not None:
            _log.warning("%s: journal writes resumed after: %s", self.directory, self._failure)
            self._failure = None
            self._reported = None

    def _warn(self, exc: Exception) -> None:
        """Report something that does not affect the journal's events (``on_error``, or a log warning)."""
        if self._on_error is None:
            _log.warning("%s", exc)
            return
        self._report(exc)

    def _report(self, exc: Exception) -> None:
        if self._on_error is None:
            _log.error("%s", exc)
            return
        try:
            self._on_error(exc)
        except Exception:
            _log.exception("on_error callback failed while reporting: %s", exc)

    # -- start-up helpers (caller thread) ------------------------------------------------------------

    def _take_lock(self) -> None:
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise JournalError(
                    f"{self.directory}: another journal writer holds this journal (lock file {LOCK_NAME}); "
                    "stop it or use another journal directory"
                ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def _inspect_journal(self) -> None:
        """Learn the journal's last seq; refuse a newest segment with a torn tail (recovery cuts it)."""
        segs = segment_paths(self.directory)
        if segs:
            info = segment_info(segs[-1][1])
            if info.tail_bytes:
                raise JournalError(
                    f"{info.path}: newest segment ends with {info.tail_bytes} bytes that are not a whole "
                    "frame; run journal.recovery.load() on this journal before writing to it"
                )
            self.written_seq = info.last_seq
        elif snaps := list_snapshots(self.directory):
            self.written_seq = snaps[-1].upto_seq
        self.durable_seq = self.written_seq


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a regular file may take a short write near a limit)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
