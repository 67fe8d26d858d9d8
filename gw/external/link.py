"""The raw external gateway's link layer, sans-I/O: Ethernet framing, ARP, and the kernel filter program.

Theory of operation
-------------------
The raw gateway owns public addresses the host's kernel does not, so it must do on the wire what a
kernel does for its own addresses:

- answer ARP requests for its public addresses (RFC 826) with its own MAC, and announce them when it
  starts, twice ``ANNOUNCE_INTERVAL_S`` apart (gratuitous ARP, RFC 5227 2.3), so the next hop learns
  where they are at once;
- defend them: an ARP from another MAC whose sender address is one of them is a conflict
  (``address_conflicts``); the gateway cannot give a configured address up, so it announces it again
  (RFC 5227 2.4 (c)), at most once per ``DEFEND_S`` per address;
- resolve its next hop: a who-has, once per ``RETRY_S`` at most while unknown or stale, and again
  every ``REFRESH_S`` while known (the old address is kept until a new one is heard, so a refresh
  never stops traffic).

Who may move the next hop. RFC 826 updates an entry from any ARP its sender sends; on a link where
anyone can send one, that lets anyone take the gateway's traffic (ARP poisoning). So a claim is
believed at once only when there is nothing better to go on, and checked otherwise:

    unknown or stale  --claim of M-->            known at M, fresh
    fresh at M        --ARP from M-->            fresh at M (heard again)
    fresh at M        --claim of X-->            checking X: ``poll`` sends a who-has to M alone
    checking X        --ARP from M-->            fresh at M; X dropped (``arp_conflicts``)
    checking X        --RETRY_S without M-->     fresh at X (``next_hop_changed``): M is gone, e.g. a new NIC

"Fresh" means heard within ``REFRESH_S``. A MAC from the host's neighbour table (``seed``) is used
at once but never fresh: nothing here heard it, so the first answer replaces it.

``Link`` holds that state. It takes frames and time and gives frames back (``on_arp``: the answer to
a message; ``poll``: what is due on its own), and lines for the shell to log (``notes``, the last
``NOTES_MAX``); ``gw.external.raw`` moves them. Bad input (short, not Ethernet/IPv4, a multicast or our
own sender MAC) is counted in ``arp_ignored`` and never raises.

``filter_program`` is the classic BPF the kernel runs on every frame of the interface before it is
copied to user space: untagged frames only; ARP broadcast or to the gateway's MAC, for a public
address; IPv4 to the gateway's MAC (``PACKET_OTHERHOST``: a MAC the host's kernel drops), to a
public address. Contiguous addresses become one range test, so a /24 pool costs two instructions,
not 256.
"""

from __future__ import annotations

import struct

from gw import inet

# --- spec: Ethernet, ARP (RFC 826), linux/if_packet.h, linux/if_arp.h --------------------------------
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_ALL = 0x0003
BROADCAST = b"\xff" * 6
ARP_LEN = 28  # Ethernet/IPv4 ARP: htype, ptype, hlen, plen, op, sha, spa, tha, tpa
ARP_REQUEST, ARP_REPLY = 1, 2
PACKET_BROADCAST, PACKET_OTHERHOST = 1, 3  # sk_buff pkt_type: to all; to a MAC not the interface's
ATF_COM = 0x02  # /proc/net/arp flags: a complete entry (its MAC is valid)

# --- implementation: timing and bounds ------------------------------------------------------------------
REFRESH_S = 30  # re-ask for the next hop's address this often while it is known; "fresh" until then
RETRY_S = 1  # ask at most this often while it is unknown; and how long a challenged MAC has to answer
ANNOUNCE_INTERVAL_S = 2  # RFC 5227 1.1 ANNOUNCE_INTERVAL: the second announcement this long after the first
DEFEND_S = 1  # re-announce a claimed address at most this often: fast enough to win back a poisoned cache,
#               bounded so two defenders of one address never flood the link (RFC 5227 2.4 uses 10 s)
NOTES_MAX = 16  # log lines kept between the shell's drains; older ones are dropped (their counters stay)

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
        self.notes: list[str] = []  # for the shell to log (and clear); the last NOTES_MAX
        self.counts = {"arp_answered": 0, "arp_ignored": 0, "next_hop_changed": 0, "arp_conflicts": 0,
                       "address_conflicts": 0}  # fmt: skip
        self._heard_at: int | None = None  # when next_hop_mac last spoke; None: never (unknown or seeded)
        self._asked_at: int | None = None  # when the broadcast who-has went out, while it is unanswered
        self._suspect: bytes | None = None  # another MAC claiming the next hop while the known one is fresh
        self._checked_at: int | None = None  # when the who-has to the known MAC went out for the suspect
        self._defended_at: dict[int, int] = {}  # public address -> when it was last re-announced
        self._announce_again_at: int | None = None

    # ------------------------------------------------------------------ frames out
    def announcements(self) -> list[bytes]:
        """Gratuitous ARP requests for every public address (sender = target = the address)."""
        return [self._announcement(a) for a in sorted(self.addresses)]

    def announce(self, now: int) -> list[bytes]:
        """The announcements to send now; ``poll`` gives them once more ``ANNOUNCE_INTERVAL_S`` later
        (RFC 5227 2.3: ANNOUNCE_NUM = 2, so that one lost frame does not leave the link ignorant)."""
        self._announce_again_at = now + ANNOUNCE_INTERVAL_S * NS
        return self.announcements()

    def _announcement(self, address: int) -> bytes:
        """A gratuitous ARP request for ``address`` (sender = target = it), broadcast."""
        return ethernet(BROADCAST, self.mac, ETH_P_ARP) + arp(ARP_REQUEST, self.mac, address, bytes(6),
                                                             address)  # fmt: skip

    def _who_has(self, dst: bytes) -> bytes:
        """A request for the next hop's MAC, to ``dst`` (broadcast, or the known MAC to check it)."""
        tha = bytes(6) if dst == BROADCAST else dst
        return ethernet(dst, self.mac, ETH_P_ARP) + arp(ARP_REQUEST, self.mac, self.source, tha,
                                                       self.next_hop)  # fmt: skip

    # ------------------------------------------------------------------ frames in
    def on_arp(self, msg: bytes | memoryview, now: int) -> bytes | None:
        """An ARP message (after the Ethernet header); returns the frame to send back, if any: the reply
        to a request for a public address, or the re-announcement of one someone else claims.

        Raises nothing: bad input is counted (``arp_ignored``)."""
        if len(msg) < ARP_LEN:
            self.counts["arp_ignored"] += 1
            return None
        htype, ptype, hlen, plen, op, sha, spa_b, _tha, tpa_b = _ARP.unpack_from(msg)
        if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or sha[0] & 1 or sha == self.mac:
            # not Ethernet/IPv4, a multicast sender, or our own MAC (our frame looped back, or forged):
            # never learned from
            self.counts["arp_ignored"] += 1
            return None
        spa, tpa = int.from_bytes(spa_b, "big"), int.from_bytes(tpa_b, "big")
        if spa in self.addresses:
            return self._defend(spa, sha, now)
        if spa == self.next_hop:
            self._heard(sha, now)
        if op == ARP_REQUEST and tpa in self.addresses:
            self.counts["arp_answered"] += 1
            return ethernet(sha, self.mac, ETH_P_ARP) + arp(ARP_REPLY, self.mac, tpa, sha, spa)
        return None

    def _defend(self, address: int, mac: bytes, now: int) -> bytes | None:
        """Another MAC claims a public address: count it and announce ours again, at most once per
        ``DEFEND_S`` for that address (a configured address is never given up: RFC 5227 2.4 (c))."""
        self.counts["address_conflicts"] += 1
        last = self._defended_at.get(address)
        if last is not None and now - last < DEFEND_S * NS:
            return None
        self._defended_at[address] = now  # keys are public addresses only: bounded by the pool
        self._note(f"{format_mac(mac)} claims {inet.ntoa(address)}, a public address of this gateway "
                   f"(at {format_mac(self.mac)}): announced it again")  # fmt: skip
        return self._announcement(address)

    def _heard(self, mac: bytes, now: int) -> None:
        """An ARP from the next hop's address, sent from ``mac`` (see the table in the module docstring)."""
        if mac == self.next_hop_mac:
            self._learn(mac, now)
            if self._suspect is not None:  # the known MAC is alive: the other claim was false
                self.counts["arp_conflicts"] += 1
                self._note(f"{format_mac(self._suspect)} claimed the next hop {inet.ntoa(self.next_hop)}, "
                           f"but {format_mac(mac)} still answers for it: kept (ARP spoofing?)")  # fmt: skip
                self._suspect = self._checked_at = None
        elif self._heard_at is None or now - self._heard_at >= REFRESH_S * NS:
            self._suspect = self._checked_at = None
            self._learn(mac, now)  # unknown or stale: nothing better to go on
        else:
            self._suspect = mac  # a later claim replaces an earlier one; the check already out stands

    def _learn(self, mac: bytes, now: int) -> None:
        """Take ``mac`` as the next hop's, heard at ``now``.

        ``_asked_at`` is cleared because it means "a who-has is out and unanswered", which is what
        ``poll`` rate-limits to one per ``RETRY_S``: once answered, the next question (when the
        address goes stale) must go out when it is due, not be held back by this one."""
        if mac != self.next_hop_mac:
            if self.next_hop_mac is not None:
                self.counts["next_hop_changed"] += 1
                self._note(f"the next hop {inet.ntoa(self.next_hop)} moved from "
                           f"{format_mac(self.next_hop_mac)} to {format_mac(mac)}")  # fmt: skip
            self.next_hop_mac = mac
            self.header = ethernet(mac, self.mac, ETH_P_IP)
        self._heard_at = now
        self._asked_at = None

    def seed(self, mac: bytes) -> None:
        """Use ``mac`` for the next hop at once, from the host's neighbour table, so that flows resumed
        after a restart are sent before the next hop answers; it stays unverified (``poll`` still asks,
        and the first answer replaces it). A multicast or all-zero MAC is not taken."""
        if len(mac) == 6 and not mac[0] & 1 and mac != bytes(6) and self.next_hop_mac is None:
            self.next_hop_mac = mac
            self.header = ethernet(mac, self.mac, ETH_P_IP)

    def _note(self, text: str) -> None:
        self.notes.append(text)
        if len(self.notes) > NOTES_MAX:
            del self.notes[0]  # the shell drains them every tick: only a flood gets here

    # ------------------------------------------------------------------ time
    def poll(self, now: int) -> list[bytes]:
        """The frames due now: the second announcement; a challenge to the known next-hop MAC when
        another claims it (a who-has to it alone), then, ``RETRY_S`` later without an answer, the
        claim adopted; a broadcast who-has when the next hop is unknown or stale (once per ``RETRY_S``).
        Call it from a timer, after a batch with ARP in it, and before sending."""
        out: list[bytes] = []
        if self._announce_again_at is not None and now >= self._announce_again_at:
            self._announce_again_at = None
            out += self.announcements()
        if self._suspect is not None and self.next_hop_mac is not None:
            if self._checked_at is None:
                self._checked_at = now
                out.append(self._who_has(self.next_hop_mac))
            elif now - self._checked_at >= RETRY_S * NS:  # the known MAC did not answer: it is gone
                suspect, self._suspect, self._checked_at = self._suspect, None, None
                self._learn(suspect, now)
        fresh = self._heard_at is not None and now - self._heard_at < REFRESH_S * NS
        if not fresh and (self._asked_at is None or now - self._asked_at >= RETRY_S * NS):
            self._asked_at = now
            out.append(self._who_has(BROADCAST))
        return out

    def describe(self) -> dict:
        """The link for the status socket: our MAC, the next hop, its MAC ("" while unknown) and a MAC
        that claims it while it is being checked ("" when none)."""
        return {"mac": format_mac(self.mac), "next_hop": inet.ntoa(self.next_hop),
                "next_hop_mac": format_mac(self.next_hop_mac) if self.next_hop_mac else "",
                "next_hop_suspect": format_mac(self._suspect) if self._suspect else ""}  # fmt: skip


# --- the kernel's filter: classic BPF (linux/filter.h) ---------------------------------------------
BPF_LD_H_ABS, BPF_LD_W_ABS = 0x28, 0x20  # ldh [k], ld [k]
BPF_JEQ_K, BPF_JGE_K, BPF_JGT_K = 0x15, 0x35, 0x25  # jeq/jge/jgt #k, jt, jf
BPF_RET_K = 0x06
SKF_AD_OFF = -0x1000  # a load at [SKF_AD_OFF + n] reads the sk_buff's metadata n, not the frame's bytes
SKF_AD_PKTTYPE = 4  # pkt_type: PACKET_HOST, PACKET_BROADCAST, ... PACKET_OTHERHOST
SKF_AD_VLAN_TAG_PRESENT = 48  # 1 when the frame carried an 802.1Q tag (taken off into the sk_buff)
AD_BASE = SKF_AD_OFF & 0xFFFFFFFF  # k is a u32: 0xFFFFF000, above any frame offset
AD_PKTTYPE = AD_BASE + SKF_AD_PKTTYPE
AD_VLAN_TAG_PRESENT = AD_BASE + SKF_AD_VLAN_TAG_PRESENT
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
    """Accept untagged ARP (broadcast or to the gateway's MAC) whose target is a public address, and
    untagged IPv4 to the gateway's MAC whose destination is one; reject the rest.

    The MAC test is the kernel's: ``PACKET_OTHERHOST`` is a frame for a MAC that is not the
    interface's, which the host's kernel drops; frames for the host itself (``PACKET_HOST``), multicast
    and the host's own outgoing frames never reach the gateway. A VLAN tag is taken off before the
    filter runs, so the ethertype alone would let in another VLAN's frames: they are rejected.

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

    # every block below ends in a return, and each rejection is a return next to its test: no jump
    # crosses an address test, so the 255-instruction reach is spent on the runs alone
    head = [
        (BPF_LD_W_ABS, 0, 0, AD_VLAN_TAG_PRESENT),
        (BPF_JEQ_K, 1, 0, 0),  # untagged: go on
        (BPF_RET_K, 0, 0, REJECT),
        (BPF_LD_H_ABS, 0, 0, 12),  # ethertype
    ]
    arp_part = [
        (BPF_LD_W_ABS, 0, 0, AD_PKTTYPE),
        (BPF_JEQ_K, 2, 0, PACKET_OTHERHOST),  # a reply, or a refresh, to the gateway's MAC
        (BPF_JEQ_K, 1, 0, PACKET_BROADCAST),  # a request, or an announcement
        (BPF_RET_K, 0, 0, REJECT),
        *address_test(ETH_HLEN + 24),  # the ARP target protocol address
    ]
    ip_part = [
        (BPF_JEQ_K, 1, 0, ETH_P_IP),  # the accumulator still holds the ethertype
        (BPF_RET_K, 0, 0, REJECT),
        (BPF_LD_W_ABS, 0, 0, AD_PKTTYPE),
        (BPF_JEQ_K, 1, 0, PACKET_OTHERHOST),
        (BPF_RET_K, 0, 0, REJECT),
        *address_test(ETH_HLEN + 16),  # the IPv4 destination
    ]
    arp_test = (BPF_JEQ_K, 0, len(arp_part), ETH_P_ARP)  # ARP: the next block; else skip it
    return [*head, arp_test, *arp_part, *ip_part]


def encode_program(program: list[tuple[int, int, int, int]]) -> bytes:
    """The instructions as the kernel's ``struct sock_filter`` array."""
    return b"".join(_INSN.pack(*insn) for insn in program)


def run_program(
    program: list[tuple[int, int, int, int]], frame: bytes, pkttype: int, vlan: bool = False
) -> int:
    """What the kernel's interpreter returns for ``frame`` received with ``pkttype`` (and a VLAN tag
    when ``vlan``), for the subset ``filter_program`` uses; for tests."""
    ancillary = {AD_PKTTYPE: pkttype, AD_VLAN_TAG_PRESENT: int(vlan)}
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        if code == BPF_RET_K:
            return k
        if code in (BPF_LD_H_ABS, BPF_LD_W_ABS):
            if k >= AD_BASE:  # metadata, not the frame's bytes
                acc = ancillary[k]
                continue
            size = 2 if code == BPF_LD_H_ABS else 4
            if k + size > len(frame):
                return 0  # the kernel ends the program on an out-of-bounds load
            acc = int.from_bytes(frame[k : k + size], "big")
        else:
            taken = {BPF_JEQ_K: acc == k, BPF_JGE_K: acc >= k, BPF_JGT_K: acc > k}[code]
            pc += jt if taken else jf
