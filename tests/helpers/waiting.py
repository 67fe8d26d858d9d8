"""Waiting in end-to-end tests: a condition polled until a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(check: Callable[[], bool], seconds: float, every: float = 0.1) -> bool:
    """Whether ``check()`` came true within ``seconds`` (asked every ``every`` seconds, and once at the end)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()
