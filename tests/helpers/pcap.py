"""Read IPv4 packets out of a pcap file with dpkt: one bounded reader for the captured vectors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import dpkt

ETH_HLEN = 14  # IEEE 802.3 header without a VLAN tag


class Captured(NamedTuple):
    """One captured IPv4 packet: its index among the file's frames, capture time in ns, the IP bytes."""

    index: int
    at_ns: int
    ip: bytes


def _to_ns(ts: float | Decimal) -> int:
    """dpkt's timestamp -> integer ns: exact for nanosecond files (Decimal); microsecond files are rounded to µs."""
    if isinstance(ts, Decimal):
        return int(ts * 1_000_000_000)
    return round(ts * 1_000_000) * 1000


def read_ipv4(path: str | Path) -> list[Captured]:
    """Every IPv4 frame of an Ethernet (DLT_EN10MB) pcap, link padding cut at the IP total length.

    Frames of other types (ARP, IPv6) are skipped. Raises ValueError for another link type, because the
    offsets below would then be wrong.
    """
    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        if reader.datalink() != dpkt.pcap.DLT_EN10MB:
            raise ValueError(f"{path}: link type {reader.datalink()}, expected Ethernet ({dpkt.pcap.DLT_EN10MB})")
        out = []
        for index, (ts, frame) in enumerate(reader):
            eth = dpkt.ethernet.Ethernet(frame)
            if eth.type != dpkt.ethernet.ETH_TYPE_IP:
                continue
            ip = bytes(frame[ETH_HLEN:])
            total = int.from_bytes(ip[2:4], "big")
            out.append(Captured(index, _to_ns(ts), ip[:total]))
    return out
