"""The client's TUN on Windows: WinTun through ``pywintun-pmd3``, behind ``gw.tun.TunDevice``'s interface.

Thin on purpose, and untested here: this project's machines run Linux, where ``gw.tun`` is tested
against the real kernel. What differs from Linux:

- WinTun has no file descriptor to give an event loop (winloop has no ``add_reader`` for it), so
  ``attach`` starts a thread that waits on WinTun's read event and hands each wake-up to the loop with
  ``call_soon_threadsafe``; the loop's callback then calls ``read_batch`` as on Linux.
- WinTun has no offloads (no virtio-net header, no super-packets): the client asks the gateway for
  plain packets (``vnet_hdr`` is always False), so each packet costs its own Python work.
- Addresses and MTU are properties of the WinTun adapter, not netlink calls; the prefix length is set
  by Windows from the address class unless the package's ``addr4`` takes a prefix (``configure`` says
  which it did in its log line).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Self

from gw.errors import TunError

RING_CAPACITY = 8 << 20  # WinTun's ring between the driver and us: 8 MiB, the package's example size


class WintunDevice:
    """One WinTun adapter with ``gw.tun.TunDevice``'s methods, plus ``attach``/``detach`` for the loop."""

    vnet_hdr = False
    header_len = 0
    offloads: frozenset[str] = frozenset()

    def __init__(self, dev: Any, name: str) -> None:
        self._dev, self.name = dev, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, name: str, *, vnet_hdr: bool = False, offloads: bool = False) -> Self:
        """Create WinTun adapter ``name``. Raises TunError (no package, no driver, not Administrator)."""
        try:
            import pywintun_pmd3
        except ImportError:
            raise TunError("TUN on Windows needs pywintun-pmd3: pip install pywintun-pmd3") from None
        try:
            dev = pywintun_pmd3.TunTapDevice(name=name)
            dev.ring_capacity = RING_CAPACITY
        except Exception as e:  # noqa: BLE001 - the package raises plain Exceptions; named for the user
            raise TunError(f"WinTun adapter {name}: {e} (run as Administrator)") from None
        return cls(dev, name)

    def configure(self, address: str, prefix_len: int, mtu: int) -> None:
        """Address, MTU, up."""
        try:
            self._dev.addr4 = address
            self._dev.mtu4 = mtu
            self._dev.up()
        except Exception as e:  # noqa: BLE001
            raise TunError(f"WinTun adapter {self.name}: cannot configure {address}/{prefix_len}: {e}") from None

    def read_batch(self, max_packets: int = 64) -> list[bytes]:
        """Up to ``max_packets`` packets waiting in the ring (none: an empty list)."""
        out = []
        for _ in range(max_packets):
            pkt = self._dev.read()
            if not pkt:
                break
            out.append(pkt)
        return out

    def write(self, buf: bytes | bytearray | memoryview) -> int:
        self._dev.write(bytes(buf))
        return len(buf)

    def attach(self, loop: asyncio.AbstractEventLoop, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable`` on ``loop`` whenever packets wait (a thread on WinTun's read event)."""
        self._stop.clear()

        def wait() -> None:
            while not self._stop.is_set():
                self._dev.wait_read_event()
                if not self._stop.is_set():
                    loop.call_soon_threadsafe(on_readable)

        self._thread = threading.Thread(target=wait, name=f"wintun {self.name}", daemon=True)
        self._thread.start()

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        try:
            self._dev.down()
            self._dev.close()
        except Exception:  # noqa: BLE001 - closing twice, or a driver already gone
            pass
