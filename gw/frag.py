"""IPv4 fragment tracking for the NAT: translate every fragment of a datagram, in any order, in bounded memory.

Theory of operation
-------------------
Only the first fragment (offset 0) carries the ports, so only it can find the NAT mapping. The NAT
translates it like any packet and then remembers, per datagram, the mapping it used: later fragments
(same source, destination, protocol and IP identification, RFC 791) get the same address rewrite. A
fragment that arrives *before* its first fragment is held, and is released, translated, as soon as the
first one arrives. Datagrams are never reassembled: each fragment leaves as it came, so the gateway
adds no latency and needs no reassembly buffer for in-order traffic (the common case).

A datagram's entry is forgotten as soon as all of its bytes went through (the last fragment tells
the size; duplicates are not expected), so a later datagram reusing the IP identification cannot be
steered by a stale entry.

Limits (named in ``gw.config``): datagrams tracked at once, bytes held for early fragments (whole
gateway), and the age of an entry. A datagram whose first fragment does not come in time is dropped
with its held fragments, counted. When the table is full the oldest entry is evicted: arrival order
is age order, so the dict's insertion order is the eviction queue and expiry is a scan from the front.

This table is transient, like a router's reassembly queue: it is not journaled and not restored.
"""

from __future__ import annotations


def datagram_key(src: int, dst: int, proto: int, ident: int) -> int:
    """The RFC 791 datagram identity (source, destination, protocol, identification) as one int."""
    return src << 56 | dst << 24 | proto << 16 | ident


class _Datagram:
    """What the table knows of one datagram: its mapping once the first fragment passed, else held fragments."""

    __slots__ = ("born", "mapping", "held", "held_bytes", "passed_bytes", "size")

    def __init__(self, born: int) -> None:
        self.born = born
        self.mapping: object | None = None
        self.held: list[bytearray] = []
        self.held_bytes = 0
        self.passed_bytes = 0  # payload bytes translated so far
        self.size: int | None = None  # payload size of the whole datagram, once its last fragment is seen


class FragmentTable:
    """Per-direction fragment state: datagram key -> the mapping its first fragment used, or held fragments."""

    def __init__(self, *, timeout_ns: int, max_datagrams: int, max_bytes: int) -> None:
        self.timeout_ns = timeout_ns
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.dropped = 0  # fragments dropped for limits or age
        self._datagrams: dict[int, _Datagram] = {}

    def __len__(self) -> int:
        return len(self._datagrams)

    def mapping_for(self, key: int) -> object | None:
        """The mapping the datagram's first fragment used, or None if it has not passed yet."""
        d = self._datagrams.get(key)
        return None if d is None else d.mapping

    def hold(self, key: int, pkt: bytearray, now: int) -> bool:
        """Keep an early fragment until its first fragment arrives. False (and counted) if over a limit."""
        n = len(pkt)
        if self.held_bytes + n > self.max_bytes:
            self.expire(now)
            if self.held_bytes + n > self.max_bytes:
                self.dropped += 1
                return False
        d = self._entry(key, now)
        d.held.append(bytearray(pkt))  # a copy: the caller may reuse its receive buffer
        d.held_bytes += n
        self.held_bytes += n
        return True

    def resolve(
        self, key: int, mapping: object, now: int, first: bytes | bytearray | None = None
    ) -> list[bytearray]:
        """Record the mapping the first fragment used; return the fragments held for this datagram.

        ``first`` (the first fragment) counts towards the datagram's bytes; without it the entry lives
        until it times out.
        """
        d = self._entry(key, now)
        d.mapping = mapping
        held, d.held = d.held, []
        self.held_bytes -= d.held_bytes
        d.held_bytes = 0
        if first is not None:
            self._count(key, d, first)
        return held

    def passed(self, key: int, pkt: bytes | bytearray) -> None:
        """Count a translated fragment; forget the datagram once all of it went through."""
        d = self._datagrams.get(key)
        if d is not None:
            self._count(key, d, pkt)

    def next_deadline(self) -> int | None:
        """When the oldest entry times out (ns), or None when the table is empty."""
        for d in self._datagrams.values():
            return d.born + self.timeout_ns
        return None

    def _count(self, key: int, d: _Datagram, pkt: bytes | bytearray) -> None:
        payload = (pkt[2] << 8 | pkt[3]) - (pkt[0] & 0x0F) * 4  # total length - header length
        frag = pkt[6] << 8 | pkt[7]
        d.passed_bytes += payload
        if not frag & 0x2000:  # no "more fragments": this one ends the datagram
            d.size = (frag & 0x1FFF) * 8 + payload
        if d.size is not None and d.passed_bytes >= d.size and not d.held:
            del self._datagrams[key]

    def expire(self, now: int) -> int:
        """Forget datagrams older than the timeout; return how many held fragments that dropped."""
        cutoff = now - self.timeout_ns
        gone = 0
        datagrams = self._datagrams
        while datagrams:
            key = next(iter(datagrams))
            d = datagrams[key]
            if d.born > cutoff:
                break
            gone += self._drop(key)
        return gone

    def _entry(self, key: int, now: int) -> _Datagram:
        d = self._datagrams.get(key)
        if d is None:
            if len(self._datagrams) >= self.max_datagrams:
                self._drop(next(iter(self._datagrams)))
            d = self._datagrams[key] = _Datagram(now)
        return d

    def _drop(self, key: int) -> int:
        d = self._datagrams.pop(key)
        self.held_bytes -= d.held_bytes
        self.dropped += len(d.held)
        return len(d.held)
