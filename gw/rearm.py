"""Readers that survive an error on their descriptor.

uvloop runs readers on libuv poll handles, and libuv stops polling a descriptor for good once it
reports an error (``POLLERR``), after the reader has run once (libuv ``uv__poll_io``). Sockets report
errors in normal operation: an ICMP port unreachable on a connected UDP socket (a DNS upstream that
restarted), an ICMP error queued on a socket with ``IP_RECVERR`` (every socket-mode mapping), an
interface that went down under an ``AF_PACKET`` socket. Without help the reader would then go quiet
for good while the socket still works. So a reader that met an error calls ``rearm`` before it
returns: its registration is made anew. With the plain asyncio loop this is a harmless no-op.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


def rearm(fd: int, callback: Callable[..., Any], *args: Any) -> None:
    """Register ``callback(*args)`` as ``fd``'s reader again (after the descriptor reported an error)."""
    loop = asyncio.get_running_loop()
    loop.remove_reader(fd)
    loop.add_reader(fd, callback, *args)
