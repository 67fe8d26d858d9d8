"""Snapshots read from a file hold their integer columns as ``array.array``; compare them as lists."""

from __future__ import annotations

import msgspec

from journal.events import PACKED_COLUMNS, Snapshot


def as_lists(snapshot: Snapshot) -> Snapshot:
    """The same snapshot with every packed column a list, so it compares equal to one built in memory."""
    return msgspec.structs.replace(
        snapshot, **{name: list(getattr(snapshot, name)) for name in PACKED_COLUMNS}
    )
