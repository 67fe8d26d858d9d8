"""Crashes the fuzzers found that are reported and not fixed yet: they pass as verdicts (see fuzz/common.py).

Each entry names the target, the exception type and the innermost gw/journal function it came from, so
only that bug is let through: the same exception from anywhere else is still a crash. Its reproducer is in
``fuzz/crashes/<target>/``; ``tests/fuzz/test_fuzz_short.py`` replays it with ``FUZZ_STRICT=1`` and expects
the crash. When a fix lands that test says so: remove the entry here and move the reproducer into the
corpus (``fuzz/corpus/<target>/``), where it then guards against the bug coming back.
"""

from __future__ import annotations

import os
import traceback
from typing import NamedTuple

INSTRUMENTED = ("gw", "journal")  # the packages under test: coverage feedback, and where a bug is located


class Known(NamedTuple):
    exc_type: str  # the exception's class name
    where: str  # "gw/config.py:_read": the innermost gw/journal frame of the traceback
    note: str  # the bug in one line, as reported


KNOWN: dict[str, list[Known]] = {
}


def innermost_project_frame(exc: BaseException) -> str:
    """``package/path.py:function`` of the innermost traceback frame in gw/ or journal/ ("" if none)."""
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        path = frame.filename.replace(os.sep, "/")
        for package in INSTRUMENTED:
            marker = f"/{package}/"
            if marker in path:
                where = f"{package}/{path.rsplit(marker, 1)[1]}:{frame.name}"
    return where


def match(target: str, exc: BaseException) -> str | None:
    """The note of the known bug ``exc`` is, or None. A broken invariant the harness checks
    (``HarnessError``) is located by its message: ``where`` is ``"harness: <message>"``."""
    entries = KNOWN.get(target)
    if not entries:
        return None
    name = type(exc).__name__
    where = f"harness: {exc}" if name == "HarnessError" else innermost_project_frame(exc)
    for entry in entries:
        if entry.exc_type == name and entry.where == where:
            return entry.note
    return None
