"""Fuzz the raw gateway's link layer as ``RawGateway._readable`` and its timer run it: the kernel filter
(``filter_program``, run by ``run_program`` as the kernel would), ``Link.on_arp`` for ARP, ``vnet.from_link``
for IPv4 (the frame's virtio-net header, its offsets moved from the link header to the IP header), and
``Link.poll``.

Input: a header byte (bit 0: the next hop's MAC comes from the neighbour table, ``Link.seed``), then
records ``[kind][len u16][bytes]``: each a frame as the AF_PACKET socket gives it (10-byte vnet header,
Ethernet header, payload). Kind bits 1-2 give the sk_buff's pkt_type (broadcast, other host, host, an
unknown value), bit 3 a VLAN tag; bits 5-7 advance the clock (0 .. past REFRESH_S). With kind bit 0 the
frame is first made an ARP frame for a public address (ethertype and target address set), so mutations
reach ``on_arp``'s decisions.
Contract under test: ``on_arp``, ``poll`` and ``from_link`` raise nothing; an answer is an ARP frame from
our MAC (a reply to the asker, or an announcement of a public address); a learned next hop is a unicast
MAC; the notes for the log stay bounded.
"""

from __future__ import annotations

import sys

from fuzz.common import fuzz, instrumented, record, records, require

with instrumented():
    from gw import inet
    from gw import vnet as V
    from gw.external import link as L

NS = 1_000_000_000
STEPS = (0, NS // 10, NS, 2 * NS, 10 * NS, 31 * NS, 60 * NS, 3600 * NS)
ADDRS = [inet.aton("198.51.100.1"), inet.aton("198.51.100.2"), inet.aton("198.51.100.10")]
NEXT_HOP = inet.aton("198.51.100.254")
MAC = L.derived_mac(ADDRS[0])
HOP_MAC = b"\x02\x00\x00\x00\x00\xfe"
PROGRAM = L.filter_program(ADDRS)
PKTTYPES = (L.PACKET_BROADCAST, L.PACKET_OTHERHOST, 0, 7)
HEADS = V.VNET_HDR_LEN + L.ETH_HLEN  # what precedes the ARP message or IP packet in a received frame
MAX_RECORDS = 16


def check_sent(frame: bytes) -> None:
    """A frame the link layer sends: an Ethernet ARP frame from our MAC."""
    require(len(frame) == L.ETH_HLEN + L.ARP_LEN, "an ARP frame of the wrong size")
    require(frame[6:12] == MAC and frame[12:14] == L.ETH_P_ARP.to_bytes(2, "big"), "an ARP frame not from us")
    require(frame[L.ETH_HLEN + 8 : L.ETH_HLEN + 14] == MAC, "an ARP message with another sender MAC")


def one_input(data: bytes) -> None:
    if not data:
        return
    link = L.Link(MAC, ADDRS, NEXT_HOP)
    now = 10 * NS
    if data[0] & 1:
        link.seed(HOP_MAC)
    for frame in link.announce(now):
        check_sent(frame)
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS:
            break
        now += STEPS[kind >> 5]
        frame = bytearray(payload)
        if kind & 1 and len(frame) >= HEADS + L.ARP_LEN:
            frame[V.VNET_HDR_LEN + 12 : HEADS] = L.ETH_P_ARP.to_bytes(2, "big")
            frame[HEADS + 24 : HEADS + 28] = ADDRS[kind >> 4 & 1].to_bytes(4, "big")
        view = memoryview(bytes(frame))
        n = len(view)
        if n < HEADS + 20:  # RawGateway drops frames shorter than any IPv4 packet or ARP message
            continue
        if not L.run_program(PROGRAM, bytes(view[V.VNET_HDR_LEN :]), PKTTYPES[kind >> 1 & 3], bool(kind & 8)):
            continue  # the kernel's filter would not have let it in
        ethertype = view[V.VNET_HDR_LEN + 12] << 8 | view[V.VNET_HDR_LEN + 13]
        if ethertype == L.ETH_P_ARP:
            reply = link.on_arp(view[HEADS:n], now)
            if reply is not None:
                check_sent(reply)
        else:
            vh = V.from_link(view)
            require(vh is None or len(vh) == V.VNET_HDR_LEN, "from_link returned a header of another size")
        if link.next_hop_mac is not None:
            require(len(link.next_hop_mac) == 6 and not link.next_hop_mac[0] & 1, "a multicast next hop")
            require(link.header[:6] == link.next_hop_mac, "the IPv4 header is not to the next hop")
        for frame in link.poll(now):
            check_sent(frame)
        require(len(link.notes) <= L.NOTES_MAX, "the link's notes grew past NOTES_MAX")
        link.describe()


def seeds() -> list[bytes]:
    peer = b"\x02\x00\x00\x00\x00\x07"
    vh = bytes(V.VNET_HDR_LEN)

    def eth(msg: bytes, dst: bytes = L.BROADCAST, src: bytes = peer) -> bytes:
        return vh + L.ethernet(dst, src, L.ETH_P_ARP) + msg

    who_has = eth(L.arp(L.ARP_REQUEST, peer, inet.aton("198.51.100.7"), bytes(6), ADDRS[0]))
    hop_reply = eth(L.arp(L.ARP_REPLY, HOP_MAC, NEXT_HOP, MAC, ADDRS[0]), MAC, HOP_MAC)
    hop_moved = eth(L.arp(L.ARP_REPLY, peer, NEXT_HOP, MAC, ADDRS[0]), MAC, peer)
    gratuitous = eth(L.arp(L.ARP_REQUEST, HOP_MAC, NEXT_HOP, bytes(6), NEXT_HOP))
    ours = eth(L.arp(L.ARP_REQUEST, peer, ADDRS[1], bytes(6), ADDRS[1]))  # someone claims our address
    ip = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0]) + (1).to_bytes(4, "big") + ADDRS[0].to_bytes(4, "big")
    ipv4 = bytes([1, 4, 34, 0, 0, 5, 34, 0, 6, 0]) + L.ethernet(MAC, HOP_MAC, L.ETH_P_IP) + ip
    # kind: bits 1-2 pkttype (0 broadcast, 2 other host), bits 5-7 the clock
    flows = [[(0x40, who_has)], [(0x42, hop_reply), (0x40, who_has)], [(0x40, gratuitous)], [(0x40, ours)],
             [(0x42, hop_reply), (0x42, hop_moved), (0x80, gratuitous), (0xE0, who_has)],
             [(0x42, ipv4), (0x40, who_has)], [(0x40, who_has[:40])],
             [(0x40, eth(L.arp(L.ARP_REQUEST, b"\x01" + peer[1:], 1, bytes(6), ADDRS[2])))]]  # fmt: skip
    out = [bytes([0]) + b"".join(record(k, f) for k, f in flow) for flow in flows]
    out.append(b"\x01" + record(0xE0, b"") + record(0xE0, b"") + record(0x42, hop_moved) + record(0x60, b""))
    return out


if __name__ == "__main__":
    fuzz("link", one_input, sys.argv)
