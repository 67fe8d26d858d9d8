"""Clients and sessions as the NAT sees them: who holds each VPN address, and what each client holds.

Theory of operation
-------------------
A *client* here is one internal address (a VPN address) with at least one mapping. Its ``Client``
record holds what the per-client limits need: the public address all its mappings share (paired
pooling, RFC 4787 REQ-2), its mapping count (the RFC 6888 quota), whether ``QuotaHit`` was journaled
since it last dropped below the quota, how many remotes it makes the NAT remember (filter memory) and
how many low ports it holds (its share of 1-1023). ``mappings`` lists its mappings so that closing a
session costs that client's mappings, not the whole table: the list is append-only, ended mappings are
skipped (a mapping is live while the table's ``by_ext`` still maps its ``ext_key`` to it) and the list
is rebuilt, as a new object, when more than half of it is dead. A snapshot view keeps a reference to
the list and its length at view time, and reads that prefix later from another thread.

A *session* is a tunnel session: ``SessionOpened`` gives a client name a VPN address, ``SessionClosed``
ends it. ``Sessions`` keeps both directions (address -> current session, session -> its event), with
the rule a restore applies too: the latest open session on an address holds it.
"""

from __future__ import annotations

from journal.events import SessionClosed, SessionOpened

COMPACT_MIN = 16  # a client's mapping list is rebuilt only past this length (and half dead)


class Client:
    """One internal address's per-client state (see the module docstring)."""

    __slots__ = ("ext_addr", "count", "quota_flagged", "remotes", "low_ports", "mappings")

    def __init__(self, ext_addr: int) -> None:
        self.ext_addr = ext_addr  # paired public address (REQ-2)
        self.count = 0  # live mappings
        self.quota_flagged = False  # QuotaHit journaled and the client is still at its quota
        self.remotes = 0  # remotes remembered for filtering, over all its mappings
        self.low_ports = 0  # its mappings with an external port below 1024
        self.mappings: list = []  # append-only; see the module docstring

    def live(self, by_ext: dict) -> list:
        """Its live mappings."""
        return [m for m in self.mappings if by_ext.get(m.ext_key) is m]

    def compact(self, by_ext: dict) -> None:
        """Drop ended mappings from the list when they are more than half of it (a new list object)."""
        if len(self.mappings) > COMPACT_MIN and len(self.mappings) > 2 * self.count:
            self.mappings = self.live(by_ext)


class Sessions:
    """VPN address -> (session, client name), and session -> its ``SessionOpened``; folded from events."""

    def __init__(self) -> None:
        self.holder: dict[int, tuple[int, str]] = {}  # vpn addr -> (session, client name)
        self.opened: dict[int, SessionOpened] = {}  # open session -> its event (for snapshots)

    def open(self, event: SessionOpened) -> None:
        self.holder[event.vpn_addr] = (event.session, event.client)
        self.opened[event.session] = event

    def close(self, event: SessionClosed) -> None:
        opened = self.opened.pop(event.session, None)
        if opened is not None and self.holder.get(opened.vpn_addr, (0,))[0] == event.session:
            del self.holder[opened.vpn_addr]
            # an older session still open on the address (a reconnect before the old one was found dead)
            # holds it again: the rule a snapshot restore applies (latest open session wins)
            for other in reversed(self.opened.values()):
                if other.vpn_addr == opened.vpn_addr:
                    self.holder[other.vpn_addr] = (other.session, other.client)
                    break
