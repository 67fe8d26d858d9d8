"""Every outcome of the data path in one integer space: drop reasons, NAT verdicts and routes.

The NAT and the router return plain ints from these enums, and counters are lists indexed by them
(``drops[Drop.NO_MAPPING] += 1``), so the three ranges must never overlap: drops from 1, NAT verdicts
from 32, routes from 40 (``tests/unit/test_verdict.py`` checks it). ``FORWARD`` is 0, so ``if verdict:``
reads "not forwarded as it is".
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Drop", "Route", "Verdict", "VERDICT_COUNT", "DROP_COUNT", "name"]


class Drop(IntEnum):
    """Why a packet was not forwarded."""

    TRUNCATED = 1  # shorter than the headers it claims
    BAD_VERSION = 2  # not IPv4, or IHL < 5
    BAD_LENGTH = 3  # total length disagrees with the buffer
    BAD_CHECKSUM = 4  # IPv4 header checksum
    UNSUPPORTED = 5  # protocol or ICMP type the NAT does not translate
    NO_MAPPING = 6  # inbound with no mapping, or TCP non-SYN with no mapping
    FILTERED = 7  # a mapping exists, but filtering refuses this remote (RFC 4787 REQ-8)
    QUOTA = 8  # the client holds its quota of mappings (RFC 6888 REQ-4)
    PORTS_EXHAUSTED = 9  # no free external port
    FRAGMENT = 10  # fragment dropped: over the table's limits, or its first fragment never came
    HELD = 11  # not a drop: a fragment held until its first fragment arrives
    SPOOFED = 12  # router: source is not the session's address
    DENIED = 13  # router: destination on the deny list
    NO_ROUTE = 14  # router: VPN address nobody holds
    ICMP_ERROR_MISMATCH = 15  # ICMP error quoting a packet of no known flow
    TTL_EXCEEDED = 16  # forwarding would take the TTL to 0 (RFC 1812 5.3.1): packet left untouched
    MARTIAN = 17  # inbound source the internet cannot have (RFC 1812 5.3.7, RFC 2827/3704)
    RESTORING = 18  # a new flow while a lazy restore still loads the table (the client retries)


DROP_COUNT = max(Drop) + 1


class Verdict(IntEnum):
    """What the NAT decided for a packet it translated (anything else it returns is a ``Drop``)."""

    FORWARD = 0  # outbound: send to the internet; inbound: deliver to the client at the new destination
    HAIRPIN = 32  # outbound packet now addressed to another client: deliver it inside
    NEEDS_MAPPING = 33  # caller-chosen ports: create the mapping (Nat.create_mapping), then translate again


class Route(IntEnum):
    """Where the router sends a packet."""

    NAT = 40  # to the internet through the NAT
    CLIENT = 41  # to another client's session
    LOCAL = 42  # to the gateway itself (its VPN address)


VERDICT_COUNT = max(Route) + 1  # the length of a counter list that holds every outcome


def name(verdict: int) -> str:
    """A readable name for any outcome: 'forward', 'no_mapping', 'client'..."""
    for kind in (Verdict, Drop, Route):
        if verdict in kind._value2member_map_:
            return kind(verdict).name.lower()
    return str(verdict)
