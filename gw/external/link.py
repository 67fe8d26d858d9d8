"""The raw external gateway's link layer, sans-I/O: Ethernet framing, ARP, and the kernel filter program.

Theory of operation
-------------------
The raw gateway owns public addresses the host's kernel does not, so it must do on the wire what a
kernel does for its own addresses:

- answer ARP requests for its public addresses (RFC 826) with its own MAC, and announce them when it
  starts (gratuitous ARP, RFC 5227 2.4), so the next hop learns where they are at once;
- resolve its next hop: a who-has, once a second at most while unknown, and again every
  ``REFRESH_S`` while known (the old address is kept until a new one is heard, so a refresh never
  stops traffic). Any ARP from the next hop updates it.

``Link`` holds that state. It takes frames and time and gives frames back; ``gw.external.raw`` moves
them. ``filter_program`` is the classic BPF the kernel runs on every frame of the interface before
it is copied to user space: ARP for a public address, or IPv4 to one. Contiguous addresses become
one range test, so a /24 pool costs two instructions, not 256.
"""

from __future__ import annotations

import struct

from gw import inet

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003
BROADCAST = b"\xff" * 6
ARP_LEN = 28  # Ethernet/IPv4 ARP: htype, ptype, hlen, plen, op, sha, spa, tha, tpa
ARP_REQUEST, ARP_REPLY = 1, 2
REFRESH_S = 30  # re-ask for the next hop's address this often while it is known
RETRY_S = 1  # ask at most this often while it is unknown

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
NS = 1_000_000_000


def ethernet(dst: bytes, src: bytes, ethertype: int) -> bytes:
    """An Ethernet II header."""
    return _ETH.pack(dst, src, ethertype)


def arp(op: int, sha: bytes, spa: int, tha: bytes, tpa: int) -> bytes:
    """An Ethernet/IPv4 ARP message (no Ethernet header)."""
    return _ARP.pack(1, ETH_P_IP, 6, 4, op, sha, spa.to_bytes(4, "big"), tha, tpa.to_bytes(4, "big"))


def parse_mac(text: str) -> bytes:
    """``"02:67:77:33:64:01"`` as 6 bytes. Raises ValueError."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def derived_mac(address: int) -> bytes:
    """The gateway's MAC for its public addresses when none is configured: locally administered,
    unicast (02), "gw" (67:77), then the low three bytes of its first public address."""
    return b"\x02\x67\x77" + (address & 0xFFFFFF).to_bytes(3, "big")


class Link:
    """ARP for the public addresses and the next hop (see the module docstring)."""

    def __init__(self, mac: bytes, addresses: list[int], next_hop: int) -> None:
        self.mac = mac
        self.addresses = frozenset(addresses)
        self.source = addresses[0]  # the sender address of the gateway's own requests
        self.next_hop = next_hop
        self.next_hop_mac: bytes | None = None
        self.header = b""  # the Ethernet header of every IPv4 frame to the next hop, once it is known
        self._asked_at: int | None = None
        self._heard_at = 0
        self.counts = {"arp_answered": 0, "arp_ignored": 0, "next_hop_changed": 0}

    def announcements(self) -> list[bytes]:
        """Gratuitous ARP requests for every public address (sender = target = the address)."""
        return [ethernet(BROADCAST, self.mac, ETH_P_ARP) + arp(ARP_REQUEST, self.mac, a, bytes(6), a)
                for a in sorted(self.addresses)]  # fmt: skip

    def on_arp(self, msg: bytes | memoryview, now: int) -> bytes | None:
        """An ARP message (after the Ethernet header); returns the frame to send back, if any."""
        if len(msg) < ARP_LEN:
            self.counts["arp_ignored"] += 1
            return None
        htype, ptype, hlen, plen, op, sha, spa_b, _tha, tpa_b = _ARP.unpack_from(msg)
        if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or sha[0] & 1:
            self.counts["arp_ignored"] += 1  # not Ethernet/IPv4, or a multicast sender: never learned
            return None
        spa, tpa = int.from_bytes(spa_b, "big"), int.from_bytes(tpa_b, "big")
        if spa == self.next_hop:
            self._learn(sha, now)
        if op == ARP_REQUEST and tpa in self.addresses and spa not in self.addresses:
            self.counts["arp_answered"] += 1
            return ethernet(sha, self.mac, ETH_P_ARP) + arp(ARP_REPLY, self.mac, tpa, sha, spa)
        return None

    def _learn(self, mac: bytes, now: int) -> None:
        if mac != self.next_hop_mac:
            if self.next_hop_mac is not None:
                self.counts["next_hop_changed"] += 1
            self.next_hop_mac = mac
            self.header = ethernet(mac, self.mac, ETH_P_IP)
        self._heard_at = now
        self._asked_at = None

    def poll(self, now: int) -> bytes | None:
        """A who-has for the next hop when it is due (unknown: once a second; known: every
        ``REFRESH_S``), else None. Call it from a timer and before sending."""
        if self.next_hop_mac is not None and now - self._heard_at < REFRESH_S * NS:
            return None
        if self._asked_at is not None and now - self._asked_at < RETRY_S * NS:
            return None
        self._asked_at = now
        return ethernet(BROADCAST, self.mac, ETH_P_ARP) + arp(ARP_REQUEST, self.mac, self.source, bytes(6),
                                                             self.next_hop)  # fmt: skip

    def describe(self) -> dict:
        return {"mac": format_mac(self.mac), "next_hop": inet.ntoa(self.next_hop),
                "next_hop_mac": format_mac(self.next_hop_mac) if self.next_hop_mac else ""}


# --- the kernel's filter: classic BPF (linux/filter.h) ---------------------------------------------
BPF_LD_H_ABS, BPF_LD_W_ABS = 0x28, 0x20  # ldh [k], ld [k]
BPF_JEQ_K, BPF_JGE_K, BPF_JGT_K = 0x15, 0x35, 0x25  # jeq/jge/jgt #k, jt, jf
BPF_RET_K = 0x06
ACCEPT, REJECT = 0x40000, 0  # bytes to keep: all of a 64 KB super-packet, or none
MAX_RUNS = 100  # runs of consecutive addresses one program can test (a jump reaches 255 instructions)
_INSN = struct.Struct("=HBBI")  # struct sock_filter: code u16, jt u8, jf u8, k u32


def ranges(addresses: list[int]) -> list[tuple[int, int]]:
    """Sorted addresses as inclusive (first, last) runs of consecutive ones."""
    out: list[tuple[int, int]] = []
    for a in sorted(set(addresses)):
        if out and a == out[-1][1] + 1:
            out[-1] = (out[-1][0], a)
        else:
            out.append((a, a))
    return out


def filter_program(addresses: list[int]) -> list[tuple[int, int, int, int]]:
    """Accept ARP whose target is a public address and IPv4 whose destination is one; reject the rest.

    Each run of addresses is ``jge first`` then ``jgt last`` over the loaded word; jumps are relative
    and at most 255, so at most ``MAX_RUNS`` runs. Raises ValueError beyond."""
    if len(ranges(addresses)) > MAX_RUNS:
        raise ValueError(f"{len(ranges(addresses))} separate address ranges: at most {MAX_RUNS}")

    def address_test(offset: int) -> list[tuple[int, int, int, int]]:
        body: list[tuple[int, int, int, int]] = [(BPF_LD_W_ABS, 0, 0, offset)]
        runs = ranges(addresses)
        for i, (first, last) in enumerate(runs):
            after = 2 * (len(runs) - i - 1)  # instructions between this run's test and the accept
            # jge first: go on to jgt, else try the next run; jgt last: next run, else accept
            body.append((BPF_JGE_K, 0, 1, first))
            body.append((BPF_JGT_K, 0, after + 1, last))
        body += [(BPF_RET_K, 0, 0, REJECT), (BPF_RET_K, 0, 0, ACCEPT)]
        return body

    arp_part = address_test(ETH_HLEN + 24)  # the ARP target protocol address
    ip_part = address_test(ETH_HLEN + 16)  # the IPv4 destination
    head = [
        (BPF_LD_H_ABS, 0, 0, 12),  # ethertype
        (BPF_JEQ_K, 0, len(arp_part), ETH_P_ARP),  # ARP: the next block; else skip it (every path in it returns)
    ]
    ip_head = [(BPF_JEQ_K, 0, len(ip_part), ETH_P_IP)]  # IPv4: the next block; else reject
    return head + arp_part + ip_head + ip_part + [(BPF_RET_K, 0, 0, REJECT)]


def encode_program(program: list[tuple[int, int, int, int]]) -> bytes:
    """The instructions as the kernel's ``struct sock_filter`` array."""
    return b"".join(_INSN.pack(*insn) for insn in program)


def run_program(program: list[tuple[int, int, int, int]], frame: bytes) -> int:
    """What the kernel's interpreter returns for ``frame`` (the subset ``filter_program`` uses); for tests."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == BPF_RET_K:
            return k
        if code in (BPF_LD_H_ABS, BPF_LD_W_ABS):
            size = 2 if code == BPF_LD_H_ABS else 4
            if k + size > len(frame):
                return 0  # the kernel ends the program on an out-of-bounds load
            acc = int.from_bytes(frame[k : k + size], "big")
        else:
            taken = {BPF_JEQ_K: acc == k, BPF_JGE_K: acc >= k, BPF_JGT_K: acc > k}[code]
            pc += jt if taken else jf
