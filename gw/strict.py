"""Strict audit (``[journal] audit = "strict"``): no packet shows a public port the journal cannot name.

Theory of operation
-------------------
In fast mode a new flow's first packet leaves at once and its ``MappingCreated`` becomes durable a
moment later (the next group commit), so a crash in between can leave a public port the internet saw
and the journal never recorded. Strict mode closes that window: every packet of a flow whose mapping
is not durable yet waits here, keyed by its public endpoint, until the journal writer reports the
mapping's seq durable (fsynced); then the packets leave in the order they came. A flow's packets stay
in order because they all wait for the same seq.

Sans-I/O: the daemon tells ``Hold`` which mappings it made (``created``), asks whether a packet must
wait (``seq_for``), hands it over (``hold``), and gets the packets back from ``release(durable_seq)``.
What waits is bounded in bytes (each packet charged ``ENTRY_COST`` more for what holds it); a packet
over the bound, or older than ``max_age_ns`` (the journal is stuck), is dropped and counted. The bound
is the gateway's, not per client: a client making new flows as fast as it can fills it at the expense
of the others' first packets (a per-client share is left for later). While the journal cannot write,
the daemon refuses new flows before they get a mapping (``gw.server``), so nothing waits forever, and
``pending`` (one entry per mapping made and not yet durable) stops growing. A later fragment has no
ports and never waits; it reaches the internet on its own only as a fragment the remote cannot
reassemble without its first one, which shows no port.
"""

from __future__ import annotations

from typing import Any

from gw import packet as P

MAX_HELD_BYTES = 16 << 20  # what may wait at once: ~10 ms of a 10 Gbit/s link
MAX_AGE_NS = 2_000_000_000  # a packet waiting longer than this is dropped: the journal is stuck
ENTRY_COST = 128  # bytes charged per waiting packet besides its own: the tuple and objects that hold it


def public_key(ip: bytes | bytearray | memoryview) -> int | None:
    """The translated packet's public endpoint as one int (protocol, source address, source port or
    echo identifier), or None for a later fragment (no ports: it cannot show a port on its own)."""
    if P.get_u16(ip, P.IP_FRAG)[0] & P.IP_OFFSET_MASK:
        return None
    proto, l4 = ip[P.IP_PROTO], (ip[0] & 15) * 4
    port = P.get_u16(ip, l4 + 4 if proto == P.PROTO_ICMP else l4)[0]
    return proto << 48 | P.get_u32(ip, P.IP_SRC)[0] << 16 | port


class Hold:
    """Packets waiting for their mapping to be durable (see the module docstring)."""

    def __init__(self, max_bytes: int = MAX_HELD_BYTES, max_age_ns: int = MAX_AGE_NS) -> None:
        self.max_bytes = max_bytes
        self.max_age_ns = max_age_ns
        self.pending: dict[int, int] = {}  # public endpoint -> seq of its MappingCreated, until durable
        self._held: list[tuple[int, int, Any, int]] = []  # (seq, since, item, size), in arrival order
        self._bytes = 0
        self.durable_seq = 0
        self.counts = {"held": 0, "released": 0, "held_dropped": 0, "held_expired": 0}

    def created(self, key: int, seq: int) -> None:
        """A mapping was made on public endpoint ``key``; its event is ``seq``."""
        if seq > self.durable_seq:
            self.pending[key] = seq

    def seq_for(self, key: int | None) -> int | None:
        """The seq a packet from public endpoint ``key`` must wait for, or None to send it now."""
        return self.pending.get(key) if key is not None else None

    def hold(self, seq: int, now: int, item: Any, size: int) -> bool:
        """Keep ``item`` until ``seq`` is durable; False (dropped, counted) when over the bound."""
        size += ENTRY_COST
        if self._bytes + size > self.max_bytes:
            self.counts["held_dropped"] += 1
            return False
        self._held.append((seq, now, item, size))
        self._bytes += size
        self.counts["held"] += 1
        return True

    def release(self, durable_seq: int) -> list[Any]:
        """Events up to ``durable_seq`` are durable: the items that waited for them, in arrival order."""
        if durable_seq <= self.durable_seq:
            return []
        self.durable_seq = durable_seq
        self.pending = {k: s for k, s in self.pending.items() if s > durable_seq}
        out, kept = [], []
        for entry in self._held:
            if entry[0] <= durable_seq:
                out.append(entry[2])
                self._bytes -= entry[3]
            else:
                kept.append(entry)
        self._held = kept
        self.counts["released"] += len(out)
        return out

    def expire(self, now: int) -> int:
        """Drop what waited longer than ``max_age_ns``; returns how many."""
        if not self._held or now - self._held[0][1] < self.max_age_ns:
            return 0
        kept = [e for e in self._held if now - e[1] < self.max_age_ns]
        dropped = len(self._held) - len(kept)
        self._bytes = sum(e[3] for e in kept)
        self._held = kept
        self.counts["held_expired"] += dropped
        return dropped

    def __len__(self) -> int:
        return len(self._held)
