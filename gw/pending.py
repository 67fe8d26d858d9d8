"""Snapshot rows not yet loaded into the NAT table: a restart forwards packets before 1 M mappings exist.

Theory of operation
-------------------
Building a million mappings takes about two seconds; a restart should not keep every flow waiting that
long. So ``Nat.restore(..., lazy=True)`` keeps a snapshot's rows in its columns (``array.array``, no
object per row) and loads them into the table in slices from the shell's ``expire`` calls, between
packet batches. A row a packet or a journal event needs first is loaded at once: ``RowIndex`` finds a
row by either flow key (internal or external) in well under a microsecond, with no object per row, so
the index is ready in milliseconds. ``loaded`` marks the rows in the table (or that were, and ended):
each row is loaded exactly once, whichever comes first. While rows are pending, new flows are refused
(``Drop.RESTORING``, the client retries): their ports and quotas must see every restored mapping.

The columns are normalised to the widths of ``journal.segments.PACKED_COLUMNS`` (a snapshot read from
a file already has them; one built in memory has lists), which the compiled loader reads as C arrays.
"""

from __future__ import annotations

import array

from journal.events import PACKED_COLUMNS, Snapshot

try:
    from gw._fastpath import RowIndex, span
except ImportError:  # pure-Python install
    RowIndex = None

    def span(column: array.array) -> tuple[int, int]:
        return (min(column), max(column)) if column else (0, 0)


ROW_COLUMNS = (
    "proto", "int_addr", "int_port", "ext_addr", "ext_port", "session", "created_ns", "last_seen_ns",
    "tcp_state", "packets_out", "bytes_out", "packets_in", "bytes_in", "remote_addr", "remote_port",
)  # fmt: skip

REST_COLUMNS = ("rest_proto", "rest_ext_addr", "rest_ext_port", "rest_until_ns")
TIME_COLUMNS = ("created_ns", "last_seen_ns", "rest_until_ns")  # wall clock in the snapshot, monotonic once loaded
INT64 = (-(1 << 63), (1 << 63) - 1)


def check_times(name: str, times: array.array, wall_offset: int) -> None:
    """Raises ValueError unless every wall time in ``times`` is a 64-bit monotonic time once restored."""
    lo, hi = span(times)
    if lo - wall_offset < INT64[0] or hi - wall_offset > INT64[1]:
        raise ValueError(f"snapshot column {name}: a time out of range: not a snapshot gw wrote")


class DictIndex:
    """``RowIndex`` in plain Python: flow key -> row, a dict (a later duplicate key wins, as in a restore)."""

    def __init__(self, proto: array.array, addr: array.array, port: array.array) -> None:
        self._rows = {p << 48 | a << 16 | q: i for i, (p, a, q) in enumerate(zip(proto, addr, port))}

    def find(self, key: int) -> int:
        return self._rows.get(key, -1)


class PendingRows:
    """A snapshot's mapping rows, found by key and loaded once each (see the module docstring)."""

    def __init__(self, snapshot: Snapshot, wall_offset: int, compiled: bool) -> None:
        """Raises ValueError for columns of unequal length, values wider than their column, or times
        that leave 64 bits on the restoring process's monotonic clock (the compiled loader would wrap them)."""
        columns = {name: _column(snapshot, name) for name in ROW_COLUMNS}
        if len({len(c) for c in columns.values()}) > 1:
            raise ValueError("snapshot columns of unequal length: not a snapshot gw wrote")
        rests = {name: _column(snapshot, name) for name in REST_COLUMNS}
        if len({len(c) for c in rests.values()}) > 1:
            raise ValueError("snapshot rest columns of unequal length: not a snapshot gw wrote")
        for name in TIME_COLUMNS:
            check_times(name, columns[name] if name in columns else rests[name], wall_offset)
        self.columns = columns
        self.rests = rests  # ports resting at the snapshot: proto, address, port, until (wall clock)
        self.n = len(columns["proto"])
        self.offset = wall_offset  # the restoring process's wall minus monotonic clock, fixed at restore
        self.loaded = bytearray(self.n)  # 1: the row is in the table (or was, and ended)
        self.left = self.n  # rows not loaded yet
        self.cursor = 0  # rows before it are all loaded (the background order)
        self.quota_flagged = set(_column(snapshot, "quota_flagged"))  # for clients made as their rows load
        index = RowIndex if compiled and RowIndex is not None else DictIndex
        self.by_int = index(columns["proto"], columns["int_addr"], columns["int_port"])
        self.by_ext = index(columns["proto"], columns["ext_addr"], columns["ext_port"])

    def find_int(self, key: int) -> int:
        """The pending row whose internal endpoint is ``key``, or -1."""
        row = self.by_int.find(key)
        return row if row >= 0 and not self.loaded[row] else -1

    def find_ext(self, key: int) -> int:
        """The pending row whose external endpoint is ``key``, or -1."""
        row = self.by_ext.find(key)
        return row if row >= 0 and not self.loaded[row] else -1


def _column(snapshot: Snapshot, name: str) -> array.array:
    values = getattr(snapshot, name)
    code = PACKED_COLUMNS[name]
    if isinstance(values, array.array) and values.typecode == code:
        return values
    try:
        return array.array(code, values)
    except (OverflowError, TypeError) as exc:
        raise ValueError(f"snapshot column {name}: {exc}") from None
