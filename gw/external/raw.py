"""The ``raw`` external gateway: whole IPv4 packets on public addresses the host's kernel does not own.

Theory of operation
-------------------
The NAT's translated packets leave, and the internet's packets arrive, through one ``AF_PACKET``
socket on the external interface (``[external] interface``). The gateway is its own host on that
link, with its own MAC (``gw.external.link.derived_mac`` unless ``[external] mac`` says otherwise):

- It answers ARP for its public addresses, announces them at start (twice), defends them, and
  resolves its next hop (``[external] next_hop``, or the gateway of the interface's default route)
  with ``gw.external.link``, which also decides whether a claim to be the next hop is believed (ARP
  spoofing); what it notes is logged here as warnings, at most ``NOTES_PER_WINDOW`` lines per
  ``LOG_WINDOW_S``. The next hop's MAC is first taken from the host's neighbour table
  (``/proc/net/arp``, read only), so flows resumed after a restart go out before it answers.
- Frames for its MAC are foreign to the host's kernel (``PACKET_OTHERHOST``): the kernel drops them
  before routing, so it never answers these flows (no RST, no port unreachable) and never forwards
  them, whatever ``ip_forward`` says. The MAC is added to the interface's unicast filter
  (``PACKET_MR_UNICAST``, released with the socket) so a real NIC delivers those frames.
- A kernel BPF filter (``link.filter_program``) passes only untagged frames: ARP (broadcast, or to
  the gateway's MAC) for a public address, and IPv4 to the gateway's MAC for one;
  ``PACKET_IGNORE_OUTGOING`` keeps the gateway's own frames out. The socket is opened with
  protocol 0 (it receives nothing), and bound to the interface and ``ETH_P_ALL`` only once the
  filter is attached: no frame of another interface, or unfiltered, is ever queued on it.
- ``PACKET_VNET_HDR``: each frame carries a virtio-net header, as the client TUNs do. A TCP
  super-packet from a client goes out whole and the kernel segments it (GSO); a super-packet the
  interface aggregated (GRO), or that a local sender made, comes in whole. The header's checksum
  offsets count from the Ethernet header on this socket and from the IP header on a TUN: 14 bytes
  are added on the way out and taken off on the way in (``gw.vnet.to_link``/``from_link``; a header
  that cannot take the change is dropped, counted in ``bad_vnet_header``). A raw ``IP_HDRINCL``
  socket could not carry a super-packet (it is limited to the MTU).
- The interface's MTU is read at start (``mtu``): a tunnel MTU above it is refused, since the
  clients' full-sized packets could not leave.

A receive error belongs to one frame, and the batch goes on, unless the interface is down or gone;
after any, the reader is registered anew (``gw.rearm``: uvloop stops polling a descriptor for good
once it reports an error, and an interface that comes back up must be heard again).

It carries TCP, UDP, ICMP and fragments: whatever the NAT translates. The packets it hands to
``on_packet`` start with their virtio-net header (``vnet = True``).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import time

from gw import inet
from gw import vnet as V
from gw.errors import GwError
from gw.external import link as L
from gw.external.base import OnPacket, set_buffers
from gw.nat import Nat
from gw.rearm import rearm

log = logging.getLogger("gw.external")

# --- linux/if_packet.h, asm-generic/socket.h
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_UNICAST = 3
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SIOCGIFMTU = 0x8921  # linux/sockios.h
_IFREQ = struct.Struct("16si20x")  # struct ifreq: name, then ifr_mtu in the 24-byte union
# receive errors after which the batch ends (the interface is down or gone: reading on only spins);
# any other error belongs to one frame, and the next may be fine
_LINK_GONE = frozenset({errno.ENETDOWN, errno.ENXIO, errno.ENODEV})

RECV_BATCH = 64  # frames read per readiness callback
RECV_SIZE = V.VNET_HDR_LEN + L.ETH_HLEN + 65535 + 1  # a whole super-packet, and one byte to see one longer
SOCKET_BUFFER = 8 << 20  # bytes of kernel buffer each way: a burst of super-packets
_HEADS = V.VNET_HDR_LEN + L.ETH_HLEN  # vnet header + Ethernet header, before the IP packet
LOG_WINDOW_S = 10  # the link's warnings (spoofing, conflicts) are logged at most
NOTES_PER_WINDOW = L.NOTES_MAX  # this many lines per window: a spoofer must not be able to flood the log
ARP_TABLE = "/proc/net/arp"
NS = 1_000_000_000


class RawGatewayError(GwError):
    """The raw external gateway cannot start."""


class RawGateway:
    """One AF_PACKET socket on the external interface (see the module docstring)."""

    name = "raw"
    carries_tcp = True
    vnet = True

    def __init__(
        self, nat: Nat, interface: str, next_hop: str = "", mac: str = "", tunnel_mtu: int = 0
    ) -> None:
        self.nat = nat
        self.interface = interface
        self._next_hop_text = next_hop
        self._mac_text = mac
        self.tunnel_mtu = tunnel_mtu  # the clients' packets' largest size; 0: not checked
        self.mtu = 0  # the interface's, read at start
        self.link: L.Link | None = None
        self.sock: socket.socket | None = None
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._on_packet: OnPacket | None = None
        self.counts = {"sent": 0, "received": 0, "send_failed": 0, "no_next_hop": 0, "oversized": 0,
                       "receive_errors": 0, "runts": 0, "bad_vnet_header": 0, "stopped": 0}  # fmt: skip
        self._logged_at: int | None = None  # when the link's notes were last logged
        self._suppressed = 0  # notes not logged since then (over NOTES_PER_WINDOW)

    # ------------------------------------------------------------------ start and stop
    def start(self, on_packet: OnPacket) -> None:
        """Open the socket, announce the public addresses, ask for the next hop. Raises RawGatewayError."""
        addrs = list(self.nat.ext_addrs)
        ifindex = self._ifindex()
        try:
            self.mtu = interface_mtu(self.interface)
        except OSError as e:
            raise RawGatewayError(f"[external] interface = {self.interface!r}: its MTU: "
                                  f"{os.strerror(e.errno or 0)}") from None  # fmt: skip
        if self.tunnel_mtu > self.mtu:
            raise RawGatewayError(f"[tunnel] mtu {self.tunnel_mtu} is larger than {self.interface}'s MTU "
                                  f"{self.mtu}: lower it")  # fmt: skip
        _refuse_local(addrs, self.interface)
        try:
            mac = L.parse_mac(self._mac_text) if self._mac_text else L.derived_mac(addrs[0])
            program = L.encode_program(L.filter_program(addrs))
        except ValueError as e:
            raise RawGatewayError(f"[external]: {e}") from None
        next_hop = self._next_hop()
        self.link = L.Link(mac, addrs, next_hop)
        known = neighbour_mac(self.interface, next_hop)
        if known is not None:
            self.link.seed(known)
        self.counts = self.link.counts | self.counts
        self.link.counts = self.counts
        try:  # protocol 0: the socket receives nothing until bind names the interface and ETH_P_ALL
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise RawGatewayError("[external] mode = \"raw\" needs CAP_NET_RAW (run as root, or give the "
                                  "daemon CAP_NET_RAW; CAP_NET_ADMIN as well lets it size its socket "
                                  "buffers past net.core.rmem_max)") from None  # fmt: skip
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            set_buffers(sock, SOCKET_BUFFER, SOCKET_BUFFER)
            _attach_filter(sock, program)
            sock.bind((self.interface, L.ETH_P_ALL))  # last: from here frames arrive, filtered
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                            struct.pack("iHH8s", ifindex, PACKET_MR_UNICAST, 6, mac))  # fmt: skip
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise RawGatewayError(f"[external] interface = {self.interface!r}: {os.strerror(e.errno or 0)}") from None
        self.sock, self._on_packet = sock, on_packet
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        now = time.monotonic_ns()
        for frame in self.link.announce(now):  # and again from tick, ANNOUNCE_INTERVAL_S later
            self._send_frame(frame)
        self.tick(now)
        log.info("raw gateway on %s (MTU %d): %s at %s, next hop %s%s", self.interface, self.mtu,
                 ", ".join(inet.ntoa(a) for a in addrs), L.format_mac(mac), inet.ntoa(next_hop),
                 f" (at {L.format_mac(known)} in the neighbour table)" if known else "")  # fmt: skip

    def stop(self) -> None:
        """Close the socket, which also takes the gateway's MAC off the interface's unicast filter (the
        membership belongs to the socket). Packets handed over later are counted (``stopped``), not
        sent. Calling it twice is harmless."""
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _ifindex(self) -> int:
        try:
            return socket.if_nametoindex(self.interface)
        except OSError:
            raise RawGatewayError(f"[external] interface = {self.interface!r}: no such interface on this host "
                                  "(ip link shows them)") from None  # fmt: skip

    def _next_hop(self) -> int:
        if self._next_hop_text:
            return inet.aton(self._next_hop_text)
        hop = default_gateway(self.interface)
        if hop is None:
            raise RawGatewayError(f"[external]: no default route through {self.interface!r} to take the next "
                                  'hop from: set [external] next_hop = "ROUTER_ADDRESS"')  # fmt: skip
        return hop

    # ------------------------------------------------------------------ out
    def new_mapping(self, pkt: bytearray | memoryview, now: int) -> int:  # the NAT picks ports itself
        raise AssertionError("the raw gateway's NAT allocates its own ports")

    def send_outbound(self, pkt: bytearray | memoryview, now: int, vnet: bool = False) -> None:
        """Send a translated packet (with its virtio-net header when ``vnet``) to the next hop. Raises
        nothing: a packet that cannot go is counted."""
        sock = self.sock
        if sock is None:  # stopped (or never started): the loop may still hand over a batch
            self.counts["stopped"] += 1
            return
        header = self.link.header
        if not header:
            self.counts["no_next_hop"] += 1
            self.tick(now)
            return
        if vnet:
            vh = V.to_link(pkt)
            if vh is None:  # offsets that cannot take the Ethernet header's 14 bytes
                self.counts["bad_vnet_header"] += 1
                return
            ip = memoryview(pkt)[V.VNET_HDR_LEN :]  # no copy of a 64 KB super-packet
        else:
            vh, ip = V.NO_OFFLOAD, pkt
        try:
            sock.sendmsg([vh, header, ip])
            self.counts["sent"] += 1
        except OSError:  # a full queue (ENOBUFS, EAGAIN), the interface down, a packet over the MTU
            self.counts["send_failed"] += 1

    def mapping_ended(self, proto: int, ext_addr: int, ext_port: int) -> None:
        """Nothing to release: the socket is shared."""

    def tick(self, now: int) -> None:
        """Send what the link has due (``Link.poll``: the second announcement, a check of a claim to be
        the next hop, a who-has) and log what it noted."""
        link = self.link
        if link is not None and self.sock is not None:
            for frame in link.poll(now):
                self._send_frame(frame)
            if link.notes or self._suppressed:
                self._log_notes(now)

    def _log_notes(self, now: int) -> None:
        """The link's notes as warnings: at most ``NOTES_PER_WINDOW`` lines per ``LOG_WINDOW_S``, the rest
        counted and said in one line once the window is over (their counters are in the status)."""
        notes, self.link.notes = self.link.notes, []
        if self._logged_at is not None and now - self._logged_at < LOG_WINDOW_S * NS:
            self._suppressed += len(notes)
            return
        self._logged_at = now
        for note in notes[:NOTES_PER_WINDOW]:
            log.warning("raw gateway on %s: %s", self.interface, note)
        self._suppressed += len(notes[NOTES_PER_WINDOW:])
        if self._suppressed:
            log.warning("raw gateway on %s: %d more such warnings not logged (within %d s of the last)",
                        self.interface, self._suppressed, LOG_WINDOW_S)  # fmt: skip
            self._suppressed = 0

    def _send_frame(self, frame: bytes) -> None:
        sock = self.sock
        if sock is None:
            self.counts["stopped"] += 1
            return
        try:
            sock.sendmsg([V.NO_OFFLOAD, frame])
        except OSError:
            self.counts["send_failed"] += 1

    # ------------------------------------------------------------------ in
    def _readable(self) -> None:
        """Frames from the wire: ARP answered here, IPv4 handed on with its vnet header (one batch)."""
        sock, view, link = self.sock, self._view, self.link
        if sock is None:
            return
        now = time.monotonic_ns()  # once per batch
        batch = []
        arp_seen = failed = False
        for _ in range(RECV_BATCH):
            try:
                n = sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as e:
                self.counts["receive_errors"] += 1
                failed = True
                if e.errno in _LINK_GONE:
                    break
                continue  # EINVAL and the like: this frame's trouble
            if n > RECV_SIZE - 1:
                self.counts["oversized"] += 1
                continue
            if n < _HEADS + 20:  # shorter than any IPv4 packet or ARP message (28)
                self.counts["runts"] += 1
                continue
            ethertype = (view[V.VNET_HDR_LEN + 12] << 8) | view[V.VNET_HDR_LEN + 13]
            if ethertype == L.ETH_P_ARP:
                arp_seen = True
                reply = link.on_arp(view[_HEADS:n], now)
                if reply is not None:
                    self._send_frame(reply)
                continue
            vh = V.from_link(view)
            if vh is None:  # offsets into the Ethernet header: no IP packet could be finished from them
                self.counts["bad_vnet_header"] += 1
                continue
            pkt = bytearray(view[L.ETH_HLEN : n])  # vnet header's room + IP packet: one copy
            pkt[: V.VNET_HDR_LEN] = vh
            batch.append(pkt)
        if failed:  # the interface may come back up: keep listening (gw.rearm)
            rearm(sock.fileno(), self._readable)
        if arp_seen:
            self.tick(now)  # a claim to check, or notes to log, without waiting for the timer
        if batch:
            self.counts["received"] += len(batch)
            self._on_packet(batch)

    def describe(self) -> dict:
        """The gateway for the status socket: its interface and the link (its MAC, the next hop and the
        next hop's MAC; see ``Link.describe``)."""
        return {"interface": self.interface, **(self.link.describe() if self.link else {})}


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    """``SO_ATTACH_FILTER`` with a ``struct sock_fprog`` (length, pointer to the instructions)."""
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program


def default_gateway(interface: str, route_table: str = "/proc/net/route") -> int | None:
    """The gateway of the default route through ``interface`` (read, never changed), or None."""
    try:
        with open(route_table) as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) >= 8 and f[0] == interface and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 2:
            return int.from_bytes(bytes.fromhex(f[2])[::-1], "big")  # little-endian hex in /proc
    return None


def neighbour_mac(interface: str, address: int, arp_table: str = ARP_TABLE) -> bytes | None:
    """The MAC of ``address`` on ``interface`` in the host's neighbour table (read, never changed), when
    its entry is complete (``ATF_COM``), else None."""
    try:
        with open(arp_table) as f:
            lines = f.read().splitlines()[1:]  # IP address, HW type, Flags, HW address, Mask, Device
    except OSError:
        return None
    want = inet.ntoa(address)
    for line in lines:
        f = line.split()
        if len(f) >= 6 and f[0] == want and f[5] == interface:
            try:
                complete, mac = int(f[2], 16) & L.ATF_COM, L.parse_mac(f[3])
            except ValueError:
                return None
            return mac if complete and mac != bytes(6) and not mac[0] & 1 else None
    return None


def interface_mtu(interface: str) -> int:
    """The interface's MTU (``SIOCGIFMTU``: in this process's network namespace, whatever /sys shows).
    Raises OSError."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return _IFREQ.unpack(fcntl.ioctl(s, SIOCGIFMTU, _IFREQ.pack(interface.encode(), 0)))[1]


def _refuse_local(addrs: list[int], interface: str) -> None:
    """The public addresses must not be the kernel's: it would answer their flows itself (RSTs)."""
    try:
        with open("/proc/sys/net/ipv4/ip_nonlocal_bind") as f:
            nonlocal_bind = f.read().strip() == "1"
    except OSError:
        nonlocal_bind = False
    if nonlocal_bind:
        return  # a bind proves nothing then
    for a in addrs:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((inet.ntoa(a), 0))
            except OSError:
                continue
        raise RawGatewayError(f"[nat] external_addresses: {inet.ntoa(a)} is an address of this host; the raw "
                              f"gateway needs addresses the kernel does not own (remove it from {interface}, "
                              'or use [external] mode = "socket")')  # fmt: skip
