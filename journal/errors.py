"""The journal's error tree. Every message is one line for an operator: where, what, what to do.

As in dnspython, a class docstring is its default message. ``exit_code`` mirrors ``gw.errors.GwError``
(journal imports nothing from gw, so the CLI maps both trees).

- ``JournalError``: base; anything the journal reports to a person.
- ``JournalCorruptError(path, offset, detail)``: bytes that are not a valid frame or snapshot where one
  must be (not a torn tail). Reading stops; salvage mode reads around it.
- ``JournalGapError(path, offset, expected_seq, got_seq)``: sequence numbers do not increase by exactly one,
  or events a snapshot needs are missing.
- ``JournalWriteError(path, offset, detail)``: the writer could not write or fsync; ``JournalFullError`` when
  the cause is a full disk, quota or file-size limit.
- ``FrameError`` with ``TornFrame`` and ``CorruptFrame``: the two outcomes of ``frames.decode_frame``'s
  contract. ``SegmentReader`` catches them and reports a torn tail or raises ``JournalCorruptError``.
"""

from __future__ import annotations

import errno

__all__ = [
    "CorruptFrame",
    "FrameError",
    "JournalCorruptError",
    "JournalError",
    "JournalFullError",
    "JournalGapError",
    "JournalMissingError",
    "JournalWriteError",
    "TornFrame",
]

# errno values that mean "no room", with what the operator can do about each.
_FULL_FIXES = {
    errno.ENOSPC: "free space on the journal's filesystem",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or lower segment_max_bytes",
}
if hasattr(errno, "EDQUOT"):
    _FULL_FIXES[errno.EDQUOT] = "raise the disk quota of the gateway's user"


class JournalError(Exception):
    """The event journal could not be read or written."""

    exit_code = 1

    def __init__(self, msg: str | None = None) -> None:
        super().__init__(msg or self.__doc__)


class JournalCorruptError(JournalError):
    """A journal file holds bytes that are neither a whole frame nor a torn tail."""

    def __init__(self, path: object, offset: int, detail: str, hint: str | None = None) -> None:
        self.path = str(path)
        self.offset = offset
        self.detail = detail
        self.hint = hint or "read around it with salvage mode (SegmentReader(salvage=True)) or move the file aside"
        super().__init__(f"{self.path}: corrupt journal data at byte {offset}: {detail}; {self.hint}")


class JournalGapError(JournalError):
    """Journal sequence numbers do not increase by exactly one."""

    def __init__(
        self, path: object, offset: int, expected_seq: int, got_seq: int, detail: str | None = None
    ) -> None:
        self.path = str(path)
        self.offset = offset
        self.expected_seq = expected_seq
        self.got_seq = got_seq
        what = detail or (
            f"expected seq {expected_seq}, found seq {got_seq}"
            + (f" (events {expected_seq}..{got_seq - 1} are missing)" if got_seq > expected_seq else "")
        )
        super().__init__(
            f"{self.path}: sequence gap at byte {offset}: {what}; "
            "restore the missing segment from backup or read with salvage mode"
        )


class JournalMissingError(JournalError):
    """There is no journal at the path given."""

    exit_code = 2  # an operator mistake, like a usage error


class JournalWriteError(JournalError):
    """The journal writer could not write or fsync; events are kept and retried."""

    def __init__(self, path: object, offset: int, detail: str) -> None:
        self.path = str(path)
        self.offset = offset
        self.detail = detail
        super().__init__(f"{self.path}: journal write failed at byte {offset}: {detail}")

    @staticmethod
    def from_oserror(
        path: object, offset: int, exc: OSError, doing: str, after: str = " (events kept; retrying)"
    ) -> JournalWriteError:
        """Wrap an OSError, choosing JournalFullError for a full disk, quota or file-size limit."""
        reason = exc.strerror or str(exc)
        fix = _FULL_FIXES.get(exc.errno)  # type: ignore[call-overload]
        if fix is not None:
            return JournalFullError(path, offset, f"{doing}: {reason}; {fix}{after}")
        return JournalWriteError(path, offset, f"{doing}: {reason}; check the journal disk{after}")


class JournalFullError(JournalWriteError):
    """The journal's filesystem is full (or a quota or file-size limit was hit); events are kept."""


class FrameError(JournalError):
    """A frame could not be decoded."""

    def __init__(self, offset: int, detail: str) -> None:
        self.offset = offset
        self.detail = detail
        super().__init__(f"frame at byte {offset}: {detail}")


class TornFrame(FrameError):
    """The bytes end inside a frame: the normal tail after a crash."""


class CorruptFrame(FrameError):
    """A whole frame fails its magic, checksum, decode or header/content agreement: not normal."""
