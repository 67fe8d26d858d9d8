"""Journal values as text for people: times, protocols, endpoints. Pure functions over the ints events hold.

journal imports nothing from gw, so the few conversions the readers need live here; the tools print with
these too, so a time or an endpoint reads the same in every answer.
"""

from __future__ import annotations

import datetime as dt
import ipaddress

__all__ = ["NS", "PROTO_NAMES", "format_endpoint", "format_time", "ntoa", "proto_name"]

NS = 1_000_000_000
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}  # IP protocol numbers (IANA) the NAT maps
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def format_time(at_ns: int | None) -> str:
    """ns since the epoch -> '2026-11-23T10:02:17.123Z' (UTC, milliseconds); '-' for None.

    Raises nothing: a time a datetime cannot hold (before year 1, after 9999) comes out as '<n>ns'.
    """
    if at_ns is None:
        return "-"
    seconds, rest = divmod(at_ns, NS)
    try:
        when = _EPOCH + dt.timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        return f"{at_ns}ns"
    return f"{when:%Y-%m-%dT%H:%M:%S}.{rest // 1_000_000:03d}Z"


def proto_name(proto: int) -> str:
    """17 -> 'udp'; an unknown number as itself."""
    return PROTO_NAMES.get(proto, str(proto))


def ntoa(addr: int) -> str:
    """An IPv4 address held as an int -> '198.51.100.2'."""
    return str(ipaddress.IPv4Address(addr))


def format_endpoint(addr: int, port: int, proto: int | None = None) -> str:
    """'198.51.100.2:40001' or, with a protocol, '198.51.100.2:40001/udp'."""
    text = f"{ntoa(addr)}:{port}"
    return text if proto is None else f"{text}/{proto_name(proto)}"
