"""Snapshots of the NAT table: an O(clients) view on the loop thread, the copying in ``build`` elsewhere.

Theory of operation
-------------------
``Nat.snapshot_view(now)`` must not stall the packet path, so it copies nothing per mapping. It keeps:
the sequence number the snapshot stands for (``upto_seq``), each client's mapping list with its length
then (lists are append-only, see ``gw.clients``), the prefix of the port pool's rest log, the open
sessions, and an empty ``removed_after`` set that the NAT fills with every mapping it removes while the
view is pending. ``build()``, run later in the journal writer's thread, reads those prefixes: a mapping
in them was live at view time if it still is (``by_ext`` maps its key to it) or if it was removed
after (``removed_after``); mappings made after the view lie past the prefixes. The per-packet fields
(last seen, counters, TCP state) are read as they are at build time, which is at least as new.

Times in a snapshot are wall-clock ns (the journal's clock): the view converts with the NAT's
``wall_offset`` at view time, and ``Nat`` converts back to its monotonic clock when it loads one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gw.mapping import BYTES_MASK, COUNT_SHIFT
from journal.events import Snapshot

if TYPE_CHECKING:
    from gw.nat import Nat


class TableView:
    """The table at one instant, to be turned into a ``Snapshot`` later, off the packet path."""

    def __init__(self, nat: Nat, now: int) -> None:
        self.upto_seq = nat.next_seq - 1
        self.offset = nat.wall_offset
        self.at = now
        self.at_ns = now + nat.wall_offset
        self._by_ext = nat.by_ext
        self._lists = [(c.mappings, len(c.mappings)) for c in nat.clients.values()]
        ports = nat.ports
        self._rest_log, self._rest_from, self._rest_to = ports.rest_log, ports.rest_head, len(ports.rest_log)
        self.sessions = list(nat.sessions.opened.values())
        self.quota_flagged = [addr for addr, c in nat.clients.items() if c.quota_flagged]
        self.log_destination = nat.config.log_destination
        self.removed_after: set = set()  # filled by the NAT until ``done``
        self.done = False

    def build(self) -> Snapshot:
        """Column-wise snapshot (any thread). The first remote is kept only under ``log_destination``.

        Without it the operator chose not to record destinations, and a restored mapping re-learns its
        remote from the client's next packet.
        """
        by_ext, removed = self._by_ext, self.removed_after
        ms = []
        for mappings, n in self._lists:
            for i in range(n):
                m = mappings[i]
                if by_ext.get(m.ext_key) is m or m in removed:
                    ms.append(m)
        rests: dict[int, int] = {}
        log = self._rest_log
        for i in range(self._rest_from, self._rest_to):
            until, key = log[i]
            if until > self.at:
                rests[key] = until
        self.done = True
        off = self.offset
        names = {opened.session: opened.client for opened in self.sessions}
        remotes = [max(m.remote, 0) for m in ms] if self.log_destination else [0] * len(ms)
        return Snapshot(
            upto_seq=self.upto_seq,
            at_ns=self.at_ns,
            proto=[m.key >> 48 for m in ms],
            int_addr=[m.key >> 16 & 0xFFFFFFFF for m in ms],
            int_port=[m.key & 0xFFFF for m in ms],
            ext_addr=[m.ext_key >> 16 & 0xFFFFFFFF for m in ms],
            ext_port=[m.ext_key & 0xFFFF for m in ms],
            session=[m.session for m in ms],
            created_ns=[m.created + off for m in ms],
            last_seen_ns=[m.last_seen + off for m in ms],
            tcp_state=[m.state for m in ms],
            packets_out=[m.out >> COUNT_SHIFT for m in ms],
            bytes_out=[m.out & BYTES_MASK for m in ms],
            packets_in=[m.inb >> COUNT_SHIFT for m in ms],
            bytes_in=[m.inb & BYTES_MASK for m in ms],
            remote_addr=[r >> 16 for r in remotes],
            remote_port=[r & 0xFFFF for r in remotes],
            client=[names.get(m.session, "") for m in ms],
            rest_proto=[k >> 48 for k in rests],
            rest_ext_addr=[k >> 16 & 0xFFFFFFFF for k in rests],
            rest_ext_port=[k & 0xFFFF for k in rests],
            rest_until_ns=[u + off for u in rests.values()],
            sessions=self.sessions,
            quota_flagged=self.quota_flagged,
        )
