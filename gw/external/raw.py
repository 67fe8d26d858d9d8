"""The ``raw`` external gateway: whole IPv4 packets on public addresses the host's kernel does not own.

Theory of operation
-------------------
The NAT's translated packets leave, and the internet's packets arrive, through one ``AF_PACKET``
socket on the external interface (``[external] interface``). The gateway is its own host on that
link, with its own MAC (``gw.external.link.derived_mac`` unless ``[external] mac`` says otherwise):

- It answers ARP for its public addresses, announces them at start, and resolves its next hop
  (``[external] next_hop``, or the gateway of the interface's default route) with ``gw.external.link``.
- Frames for its MAC are foreign to the host's kernel (``PACKET_OTHERHOST``): the kernel drops them
  before routing, so it never answers these flows (no RST, no port unreachable) and never forwards
  them, whatever ``ip_forward`` says. The MAC is added to the interface's unicast filter
  (``PACKET_MR_UNICAST``, released with the socket) so a real NIC delivers those frames.
- A kernel BPF filter (``link.filter_program``) passes only ARP for, and IPv4 to, the public
  addresses; ``PACKET_IGNORE_OUTGOING`` keeps the gateway's own frames out.
- ``PACKET_VNET_HDR``: each frame carries a virtio-net header, as the client TUNs do. A TCP
  super-packet from a client goes out whole and the kernel segments it (GSO); a super-packet the
  interface aggregated (GRO), or that a local sender made, comes in whole. The header's checksum
  offsets count from the Ethernet header on this socket and from the IP header on a TUN: 14 bytes
  are added on the way out and taken off on the way in. A raw ``IP_HDRINCL`` socket could not carry
  a super-packet (it is limited to the MTU).

It carries TCP, UDP, ICMP and fragments: whatever the NAT translates. The packets it hands to
``on_packet`` start with their virtio-net header (``vnet = True``).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import struct
import time

from gw import inet
from gw import vnet as V
from gw.errors import GwError
from gw.external import link as L
from gw.external.base import OnPacket
from gw.nat import Nat

log = logging.getLogger("gw.external")

# --- linux/if_packet.h, asm-generic/socket.h
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_UNICAST = 3
PACKET_VNET_HDR = 15
PACKET_IGNORE_OUTGOING = 23
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

RECV_BATCH = 64  # frames read per readiness callback
RECV_SIZE = V.VNET_HDR_LEN + L.ETH_HLEN + 65535 + 1  # a whole super-packet, and one byte to see one longer
SOCKET_BUFFER = 8 << 20  # bytes of kernel buffer each way: a burst of super-packets
_HEADS = V.VNET_HDR_LEN + L.ETH_HLEN  # vnet header + Ethernet header, before the IP packet


class RawGatewayError(GwError):
    """The raw external gateway cannot start."""


class RawGateway:
    """One AF_PACKET socket on the external interface (see the module docstring)."""

    name = "raw"
    carries_tcp = True
    vnet = True

    def __init__(self, nat: Nat, interface: str, next_hop: str = "", mac: str = "") -> None:
        self.nat = nat
        self.interface = interface
        self._next_hop_text = next_hop
        self._mac_text = mac
        self.link: L.Link | None = None
        self.sock: socket.socket | None = None
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self._on_packet: OnPacket | None = None
        self.counts = {"sent": 0, "received": 0, "send_failed": 0, "no_next_hop": 0, "oversized": 0,
                       "receive_errors": 0}  # fmt: skip

    # ------------------------------------------------------------------ start and stop
    def start(self, on_packet: OnPacket) -> None:
        """Open the socket, announce the public addresses, ask for the next hop. Raises RawGatewayError."""
        addrs = list(self.nat.ext_addrs)
        ifindex = self._ifindex()
        _refuse_local(addrs, self.interface)
        try:
            mac = L.parse_mac(self._mac_text) if self._mac_text else L.derived_mac(addrs[0])
            program = L.encode_program(L.filter_program(addrs))
        except ValueError as e:
            raise RawGatewayError(f"[external]: {e}") from None
        next_hop = self._next_hop()
        self.link = L.Link(mac, addrs, next_hop)
        self.counts = self.link.counts | self.counts
        self.link.counts = self.counts
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(L.ETH_P_ALL))
        except PermissionError:
            raise RawGatewayError("[external] mode = \"raw\" needs CAP_NET_RAW (run as root, or give the "
                                  "daemon the capability)") from None  # fmt: skip
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            _attach_filter(sock, program)
            sock.bind((self.interface, L.ETH_P_ALL))
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                            struct.pack("iHH8s", ifindex, PACKET_MR_UNICAST, 6, mac))  # fmt: skip
            for opt in (SO_RCVBUFFORCE, SO_SNDBUFFORCE):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise RawGatewayError(f"[external] interface = {self.interface!r}: {os.strerror(e.errno or 0)}") from None
        self.sock, self._on_packet = sock, on_packet
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)
        for frame in self.link.announcements():
            self._send_frame(frame)
        self.tick(time.monotonic_ns())
        log.info("raw gateway on %s: %s at %s, next hop %s", self.interface,
                 ", ".join(inet.ntoa(a) for a in addrs), L.format_mac(mac), inet.ntoa(next_hop))  # fmt: skip

    def stop(self) -> None:
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
        """Send a translated packet (with its virtio-net header when ``vnet``) to the next hop."""
        header = self.link.header
        if not header:
            self.counts["no_next_hop"] += 1
            self.tick(now)
            return
        if vnet:
            flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = V.read_header(pkt)
            if flags & V.VNET_F_NEEDS_CSUM:
                csum_start += L.ETH_HLEN
            vh = struct.pack("<BBHHHH", flags, gso_type, hdr_len + L.ETH_HLEN if hdr_len else 0, gso_size,
                             csum_start, csum_offset)  # fmt: skip
            ip = pkt[V.VNET_HDR_LEN :]
        else:
            vh, ip = V.NO_OFFLOAD, pkt
        try:
            self.sock.sendmsg([vh, header, ip])
            self.counts["sent"] += 1
        except OSError:  # a full queue (ENOBUFS, EAGAIN), the interface down, a packet over the MTU
            self.counts["send_failed"] += 1

    def mapping_ended(self, proto: int, ext_addr: int, ext_port: int) -> None:
        """Nothing to release: the socket is shared."""

    def tick(self, now: int) -> None:
        """Ask for the next hop when due (``Link.poll``)."""
        if self.link is not None and self.sock is not None:
            frame = self.link.poll(now)
            if frame is not None:
                self._send_frame(frame)

    def _send_frame(self, frame: bytes) -> None:
        try:
            self.sock.sendmsg([V.NO_OFFLOAD, frame])
        except OSError:
            self.counts["send_failed"] += 1

    # ------------------------------------------------------------------ in
    def _readable(self) -> None:
        """Frames from the wire: ARP answered here, IPv4 handed on with its vnet header (one batch)."""
        sock, view, link = self.sock, self._view, self.link
        batch = []
        for _ in range(RECV_BATCH):
            try:
                n = sock.recv_into(self._buf, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as e:  # the interface went down (ENETDOWN), and the like
                self.counts["receive_errors"] += 1
                if e.errno != errno.EINTR:
                    break
                continue
            if n > RECV_SIZE - 1:
                self.counts["oversized"] += 1
                continue
            if n < _HEADS + 20:  # shorter than any IPv4 packet or ARP message (28)
                continue
            ethertype = (view[V.VNET_HDR_LEN + 12] << 8) | view[V.VNET_HDR_LEN + 13]
            if ethertype == L.ETH_P_ARP:
                reply = link.on_arp(bytes(view[_HEADS:n]), time.monotonic_ns())
                if reply is not None:
                    self._send_frame(reply)
                continue
            pkt = bytearray(view[L.ETH_HLEN : n])  # vnet header's room + IP packet: one copy
            pkt[: V.VNET_HDR_LEN] = view[: V.VNET_HDR_LEN]
            flags, _, hdr_len, _, csum_start, _ = V.read_header(pkt)
            if flags & V.VNET_F_NEEDS_CSUM:
                struct.pack_into("<H", pkt, 6, csum_start - L.ETH_HLEN)
            if hdr_len >= L.ETH_HLEN:
                struct.pack_into("<H", pkt, 2, hdr_len - L.ETH_HLEN)
            batch.append(pkt)
        if batch:
            self.counts["received"] += len(batch)
            self._on_packet(batch)

    def describe(self) -> dict:
        return {"interface": self.interface, **(self.link.describe() if self.link else {})}


def _attach_filter(sock: socket.socket, program: bytes) -> None:
    """``SO_ATTACH_FILTER`` with a ``struct sock_fprog`` (length, pointer to the instructions)."""
    insns = ctypes.create_string_buffer(program, len(program))
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)  # the kernel copies the program


def default_gateway(interface: str, route_table: str = "/proc/net/route") -> int | None:
    """The gateway of the default route through ``interface`` (read, never changed), or None."""
    try:
        lines = open(route_table).read().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) >= 8 and f[0] == interface and f[1] == "00000000" and f[7] == "00000000" and int(f[3], 16) & 2:
            return int.from_bytes(bytes.fromhex(f[2])[::-1], "big")  # little-endian hex in /proc
    return None


def _refuse_local(addrs: list[int], interface: str) -> None:
    """The public addresses must not be the kernel's: it would answer their flows itself (RSTs)."""
    try:
        nonlocal_bind = open("/proc/sys/net/ipv4/ip_nonlocal_bind").read().strip() == "1"
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
