"""A Linux TUN device: layer-3 packets in and out of the kernel, read in batches, with the kernel's offloads.

Why it looks like this:

- ``IFF_VNET_HDR`` + ``TUNSETOFFLOAD``: the kernel hands us TCP (and, from Linux 6.2, UDP) super-packets
  of up to 64 KB with a virtio-net header (``gw.vnet``) instead of MTU-sized packets, and takes them
  back the same way, so Python pays its per-packet cost once per 64 KB. Kernels before 6.2 refuse the
  USO flags with EINVAL; ``open`` then retries without them and ``offloads`` says what is on.
- Reads fill preallocated slots and return memoryviews on them (valid until the next ``read_batch``):
  no allocation per packet beyond the view. A slot holds header + 65,536 bytes + a margin: the kernel
  caps a super-packet at 65,536 bytes (GSO_LEGACY_MAX_SIZE; an IPv6 one can reach it, IPv4 stops at
  65,535), and a read into a shorter buffer truncates silently (it returns the buffer's length).
- No asyncio here: the shell calls ``add_reader(dev.fileno(), ...)`` and ``read_batch`` in the callback.
  The fd is non-blocking; ``read_batch`` stops at EAGAIN.
- The device lives as long as the fd (no ``TUNSETPERSIST``): ``close`` removes it, so a crashed
  gateway leaves nothing behind. It is created in the network namespace of the calling thread.
- Addressing goes through netlink (pyroute2), never through the ``ip`` command.

The interface (``open``, ``configure``, ``read_batch``, ``write``, ``attach``/``detach``, ``close``,
``name``, ``vnet_hdr``, ``offloads``) is small on purpose: ``gw.tun_windows`` is its WinTun twin.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, Self

from gw.errors import TunError
from gw.vnet import VNET_HDR_LEN

# --- spec: include/uapi/linux/if_tun.h; _IOW('T', n, int) = 0x40045400 | n on x86 and arm64 ----------------
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
TUNSETOFFLOAD = 0x400454D0  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = 0x400454D8  # _IOW('T', 216, int)
IFF_TUN = 0x0001  # layer 3, no Ethernet header
IFF_NO_PI = 0x1000  # no 4-byte struct tun_pi before each packet
IFF_VNET_HDR = 0x4000  # a struct virtio_net_hdr before each packet
TUN_F_CSUM = 0x01  # we take packets with a partial checksum (VNET_F_NEEDS_CSUM)
TUN_F_TSO4 = 0x02  # we take IPv4 TCP super-packets
TUN_F_TSO6 = 0x04  # we take IPv6 TCP super-packets
TUN_F_TSO_ECN = 0x08  # we take TCP super-packets with ECN (not asked for: needs CWR handling per segment)
TUN_F_UFO = 0x10  # UDP fragmentation offload, deprecated since Linux 4.14 (not asked for)
TUN_F_USO4 = 0x20  # we take IPv4 UDP super-packets (Linux >= 6.2)
TUN_F_USO6 = 0x40  # we take IPv6 UDP super-packets (Linux >= 6.2)
IFNAMSIZ = 16  # include/uapi/linux/if.h, with the terminating NUL

_IFREQ = struct.Struct("16sH22x")  # struct ifreq: ifr_name, ifr_flags, rest of the 24-byte union
_INT = struct.Struct("i")

# --- implementation ----------------------------------------------------------------------------------------
OFFLOAD_NAMES = {
    TUN_F_CSUM: "csum",
    TUN_F_TSO4: "tso4",
    TUN_F_TSO6: "tso6",
    TUN_F_USO4: "uso4",
    TUN_F_USO6: "uso6",
}
OFFLOADS_WANTED = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_USO4 | TUN_F_USO6
OFFLOADS_USO = TUN_F_USO4 | TUN_F_USO6
TUN_READ_SLOT_LEN = VNET_HDR_LEN + 65536 + 256  # header + the largest GSO packet + a margin (see above)
TUN_MAX_BATCH = 1024  # bound the preallocated read memory: 1024 slots are 67 MB


class TunDevice:
    """One open TUN device; ``TunDevice.open(name)`` creates it, ``close()`` removes it."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool, offloads: frozenset[str]) -> None:
        self._fd = fd
        self.name = name
        self.vnet_hdr = vnet_hdr
        self.header_len = VNET_HDR_LEN if vnet_hdr else 0  # bytes before the IP packet in reads and writes
        self.offloads = offloads  # subset of OFFLOAD_NAMES' values the kernel accepted
        self._slots: list[bytearray] = []
        self._iovs: list[list[bytearray]] = []  # one preallocated readv vector per slot
        self._views: list[memoryview] = []

    @classmethod
    def open(cls, name: str, *, vnet_hdr: bool = True, offloads: bool = True) -> Self:
        """Create TUN device ``name`` in this network namespace; offloads need (and are ignored without) vnet_hdr.

        Raises: TunError naming the device (EPERM without CAP_NET_ADMIN, EBUSY when the name is taken...).
        """
        raw = name.encode()
        if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw or raw.isspace():
            raise TunError(f"TUN device name {name!r}: use 1 to {IFNAMSIZ - 1} bytes, no '/', NUL or spaces")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise TunError(f"TUN device {name}: cannot open /dev/net/tun: {e.strerror}", e.errno) from e
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
            try:
                ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, flags))
            except OSError as e:
                hint = " (the name is in use)" if e.errno == errno.EBUSY else ""
                raise TunError(f"TUN device {name}: TUNSETIFF failed: {e.strerror}{hint}", e.errno) from e
            real_name = _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()
            on = 0
            if vnet_hdr:
                try:
                    fcntl.ioctl(fd, TUNSETVNETHDRSZ, _INT.pack(VNET_HDR_LEN))
                except OSError as e:
                    raise TunError(f"TUN device {name}: TUNSETVNETHDRSZ failed: {e.strerror}", e.errno) from e
                if offloads:
                    on = _set_offload(fd, name)
            names = frozenset(n for bit, n in OFFLOAD_NAMES.items() if on & bit)
            return cls(fd, real_name, vnet_hdr, names)
        except BaseException:
            os.close(fd)
            raise

    def configure(self, address: str, prefix_len: int, mtu: int) -> None:
        """Set the IPv4 address, MTU and bring the link up, through netlink in this network namespace.

        Raises: TunError naming the device and the step that failed.
        """
        netlink(lambda ipr: self._configure(ipr, address, prefix_len, mtu))

    def _configure(self, ipr: Any, address: str, prefix_len: int, mtu: int) -> None:
        from pyroute2.netlink.exceptions import NetlinkError  # not an OSError; .code is the errno

        step = "look up"
        try:
            index = socket.if_nametoindex(self.name)
            step = f"set MTU {mtu}"
            ipr.link("set", index=index, mtu=mtu)
            step = f"set address {address}/{prefix_len}"
            ipr.addr("replace", index=index, address=address, prefixlen=prefix_len)
            step = "bring up"
            ipr.link("set", index=index, state="up")
        except OSError as e:
            raise TunError(f"TUN device {self.name}: cannot {step}: {e.strerror or e}", e.errno) from e
        except NetlinkError as e:
            reason = os.strerror(e.code) if e.code else str(e)
            raise TunError(f"TUN device {self.name}: cannot {step}: {reason}", e.code or None) from e

    def read_batch(self, max_packets: int = 64) -> list[memoryview]:
        """Read up to ``max_packets`` packets, stopping at EAGAIN; views valid until the next call.

        Each view starts with the virtio-net header when ``vnet_hdr`` (``header_len`` bytes).
        Raises: TunError naming the device on a read error other than EAGAIN.
        """
        if not 0 < max_packets <= len(self._slots):
            self._grow(max_packets)  # raises ValueError outside 1..TUN_MAX_BATCH
        out: list[memoryview] = []
        fd, iovs, views = self._fd, self._iovs, self._views
        readv = os.readv
        try:
            for i in range(max_packets):
                n = readv(fd, iovs[i])
                out.append(views[i][:n])
        except BlockingIOError:
            pass
        except OSError as e:
            raise TunError(f"TUN device {self.name}: read failed: {e.strerror}", e.errno) from e
        return out

    def _grow(self, count: int) -> None:
        if not 0 < count <= TUN_MAX_BATCH:
            raise ValueError(f"max_packets must be 1..{TUN_MAX_BATCH}, not {count}")
        while len(self._slots) < count:
            slot = bytearray(TUN_READ_SLOT_LEN)
            self._slots.append(slot)
            self._iovs.append([slot])
            self._views.append(memoryview(slot))

    def write(self, buf: bytes | bytearray | memoryview) -> int:
        """Write one packet (starting with its virtio-net header when ``vnet_hdr``); returns the bytes written.

        Raises: BlockingIOError when the kernel cannot take it now (drop it), TunError naming the device
        otherwise (EINVAL: a malformed packet or header).
        """
        try:
            return os.write(self._fd, buf)
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(
                f"TUN device {self.name}: write of {len(buf)} bytes failed: {e.strerror}", e.errno
            ) from e

    def attach(self, loop: asyncio.AbstractEventLoop, on_readable: Callable[[], None]) -> None:
        """Call ``on_readable`` on ``loop`` whenever packets wait (the loop watches the fd)."""
        loop.add_reader(self._fd, on_readable)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_reader(self._fd)

    def fileno(self) -> int:
        """The non-blocking fd, for ``loop.add_reader``; -1 once closed."""
        return self._fd

    def close(self) -> None:
        """Close the fd, which removes the device; closing twice is harmless."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<TunDevice {self.name} {state} vnet_hdr={self.vnet_hdr} offloads={sorted(self.offloads)}>"


def netlink(work: Callable[[Any], Any]) -> Any:
    """``work(ipr)`` with a pyroute2 ``IPRoute`` of this network namespace; returns its result.

    pyroute2's synchronous API runs its own asyncio loop, which cannot run inside a running one: called
    from a running loop, the work runs in a short-lived thread instead. Raises what ``work`` raised."""
    from pyroute2 import IPRoute  # Linux only; imported here so the module loads everywhere

    def run() -> Any:
        with IPRoute() as ipr:
            return work(ipr)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    result: list[Any] = []
    failure: list[BaseException] = []

    def in_thread() -> None:
        try:
            result.append(run())
        except BaseException as e:  # handed to the caller's thread below
            failure.append(e)

    thread = threading.Thread(target=in_thread, name="netlink")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _set_offload(fd: int, name: str) -> int:
    """Ask for every offload we handle, without USO if the kernel predates it (EINVAL); returns what is on."""
    wanted = OFFLOADS_WANTED
    while True:
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, wanted)
            return wanted
        except OSError as e:
            if e.errno == errno.EINVAL and wanted & OFFLOADS_USO:
                wanted &= ~OFFLOADS_USO  # Linux < 6.2: no TUN_F_USO4/6
                continue
            raise TunError(
                f"TUN device {name}: TUNSETOFFLOAD {wanted:#x} failed: {e.strerror}", e.errno
            ) from e
