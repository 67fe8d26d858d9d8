"""IPv4 addresses and prefixes as ints: conversions at the edges (config, logs, tools), masks for the cores."""

from __future__ import annotations

import ipaddress
import socket
import struct

_U32 = struct.Struct("!I")


def aton(text: str) -> int:
    """'10.66.77.2' -> int. Raises ValueError on anything but a dotted quad."""
    try:
        return int(ipaddress.IPv4Address(text))
    except ValueError:
        raise ValueError(f"not an IPv4 address: {text!r}") from None


def ntoa(addr: int) -> str:
    """int -> '10.66.77.2'."""
    return socket.inet_ntoa(_U32.pack(addr))


def parse_prefix(text: str) -> tuple[int, int]:
    """'10.66.77.0/24' -> (network, prefix length). Raises ValueError when host bits are set or it is malformed."""
    addr_text, _, length_text = text.partition("/")
    addr = aton(addr_text)
    if not (length_text.isascii() and length_text.isdigit()) or not 0 <= int(length_text) <= 32:
        raise ValueError(f"not a prefix length: {text!r}")
    length = int(length_text)
    mask = prefix_mask(length)
    if addr & ~mask & 0xFFFFFFFF:
        raise ValueError(f"host bits set in {text!r} (did you mean {ntoa(addr & mask)}/{length}?)")
    return addr, length


def prefix_mask(length: int) -> int:
    """Prefix length -> netmask as int."""
    return (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF


def in_prefix(addr: int, network: int, length: int) -> bool:
    """Whether addr lies in network/length."""
    return addr & prefix_mask(length) == network


def format_endpoint(addr: int, port: int) -> str:
    """(int, port) -> '198.51.100.2:40001'."""
    return f"{ntoa(addr)}:{port}"
