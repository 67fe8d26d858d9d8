"""gw.tun_windows without Windows: WinTun cannot run here, so a stand-in for the pywintun-pmd3 module
checks what the thin layer itself does (errors, batching, the wake-up thread) and nothing more."""

from __future__ import annotations

import asyncio
import sys
import threading
import types

import pytest

from gw.errors import TunError
from gw.tun_windows import WintunDevice


class _FakeAdapter:
    """pywintun-pmd3's TunTapDevice, as its documentation describes it."""

    def __init__(self, name: str) -> None:
        self.name, self.queue, self.written, self.event = name, [], [], threading.Event()
        self.addr4 = self.mtu4 = self.ring_capacity = None
        self.is_up = self.closed = False

    def read(self) -> bytes | None:
        return self.queue.pop(0) if self.queue else None

    def wait_read_event(self) -> None:
        self.event.wait(1)
        self.event.clear()

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def up(self) -> None:
        self.is_up = True

    def down(self) -> None:
        self.is_up = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_wintun(monkeypatch):
    module = types.ModuleType("pywintun_pmd3")
    module.TunTapDevice = lambda name: _FakeAdapter(name)
    monkeypatch.setitem(sys.modules, "pywintun_pmd3", module)


def test_without_the_package_open_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywintun_pmd3", None)
    with pytest.raises(TunError, match="pip install pywintun-pmd3"):
        WintunDevice.open("gw0")


def test_configure_read_write_and_close_go_to_the_adapter(fake_wintun):
    dev = WintunDevice.open("gw0")
    assert not dev.vnet_hdr and dev.header_len == 0  # WinTun has no offloads
    dev.configure("10.66.77.5", 24, 1400)
    adapter = dev._dev
    assert (adapter.addr4, adapter.mtu4, adapter.is_up) == ("10.66.77.5", 1400, True)
    adapter.queue += [b"a" * 20, b"b" * 20, b"c" * 20]
    assert dev.read_batch(2) == [b"a" * 20, b"b" * 20] and dev.read_batch(64) == [b"c" * 20]
    assert dev.read_batch(64) == []
    dev.write(memoryview(b"x" * 20))
    assert adapter.written == [b"x" * 20]
    dev.close()
    assert adapter.closed and not adapter.is_up


def test_attach_wakes_the_loop_when_the_adapter_has_packets(fake_wintun):
    async def main() -> list[bytes]:
        dev = WintunDevice.open("gw0")
        got: list[bytes] = []
        woken = asyncio.Event()
        dev.attach(asyncio.get_running_loop(), lambda: (got.extend(dev.read_batch()), woken.set()))
        dev._dev.queue.append(b"p" * 20)
        dev._dev.event.set()
        await asyncio.wait_for(woken.wait(), 5)
        dev.detach(asyncio.get_running_loop())
        dev.close()
        return got

    assert asyncio.run(main()) == [b"p" * 20]
