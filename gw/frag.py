"""IPv4 fragment tracking for the NAT: translate every fragment of a datagram, in any order, in bounded memory.

Theory of operation
-------------------
Only the first fragment (offset 0) carries the ports, so only it can find the NAT mapping. The NAT
translates it like any packet and then remembers, per datagram, the mapping it used: later fragments
(same source, destination, protocol and IP identification, RFC 791) get the same address rewrite. A
fragment that arrives *before* its first fragment is held, and is released, translated, as soon as the
first one arrives. Datagrams are never reassembled: each fragment leaves as it came, so the gateway
adds no latency and needs no reassembly buffer for in-order traffic (the common case).

The key is the datagram as it *arrives*: outbound, the client's own address is its source, so two
clients never share an entry; a hairpinned datagram stays in the outbound table, whose entry also
names the mapping it reaches inside (``peer``), so its inbound leg never touches the inbound table
(where, translated, every hairpinned datagram would read public -> public). Each outbound datagram
gets a new IP identification (``new_id``), so datagrams of two clients behind one public address
cannot meet with one ID at the remote's reassembly (RFC 4963, RFC 6864).

A datagram's entry is forgotten as soon as all of its bytes went through (the last fragment tells
the size; duplicates are not expected), so a later datagram reusing the IP identification cannot be
steered by a stale entry.

Limits (named in ``gw.config``): datagrams tracked and bytes held for early fragments, in all and per
source (the client outbound, the remote host inbound; the source is part of the key), and the age of an
entry. A source over its share is refused, so one host cannot take the budget from the rest. A datagram
whose first fragment does not come in time is dropped with its held fragments, counted. When the table
is full the oldest entry is evicted: arrival order is age order, so the dict's insertion order is the
eviction queue and expiry is a scan from the front, within a budget per call.

This table is transient, like a router's reassembly queue: it is not journaled and not restored.
"""

from __future__ import annotations


def datagram_key(src: int, dst: int, proto: int, ident: int) -> int:
    """The RFC 791 datagram identity (source, destination, protocol, identification) as one int."""
    return src << 56 | dst << 24 | proto << 16 | ident


def _source(key: int) -> int:
    return key >> 56


class Datagram:
    """What the table knows of one datagram: its mapping once the first fragment passed, else held fragments."""

    __slots__ = ("born", "mapping", "peer", "new_id", "held", "held_bytes", "passed_bytes", "size")

    def __init__(self, born: int) -> None:
        self.born = born
        self.mapping: object | None = None
        self.peer: object | None = None  # hairpin: the mapping of the client it goes to
        self.new_id = -1  # the IP identification its fragments leave with (outbound), -1 = unchanged
        self.held: list[bytearray] = []
        self.held_bytes = 0
        self.passed_bytes = 0  # payload bytes translated so far
        self.size: int | None = None  # payload size of the whole datagram, once its last fragment is seen


class FragmentTable:
    """Per-direction fragment state: datagram key -> the mapping its first fragment used, or held fragments."""

    def __init__(
        self,
        *,
        timeout_ns: int,
        max_datagrams: int,
        max_bytes: int,
        max_bytes_per_source: int | None = None,
        max_datagrams_per_source: int | None = None,
    ) -> None:
        self.timeout_ns = timeout_ns
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.max_bytes_per_source = max_bytes if max_bytes_per_source is None else max_bytes_per_source
        self.max_datagrams_per_source = (
            max_datagrams if max_datagrams_per_source is None else max_datagrams_per_source
        )
        self.held_bytes = 0
        self.dropped = 0  # fragments dropped for limits or age
        self._datagrams: dict[int, Datagram] = {}
        self._sources: dict[int, list[int]] = {}  # source address -> [datagrams tracked, bytes held]

    def __len__(self) -> int:
        return len(self._datagrams)

    def resolved(self, key: int) -> Datagram | None:
        """The datagram's entry if its first fragment has passed, else None."""
        d = self._datagrams.get(key)
        return None if d is None or d.mapping is None else d

    def mapping_for(self, key: int) -> object | None:
        """The mapping the datagram's first fragment used, or None if it has not passed yet."""
        d = self._datagrams.get(key)
        return None if d is None else d.mapping

    def source_use(self, source: int) -> tuple[int, int]:
        """(datagrams tracked, bytes held) for one source address."""
        use = self._sources.get(source)
        return (0, 0) if use is None else (use[0], use[1])

    def hold(self, key: int, pkt: bytearray | memoryview, now: int) -> bool:
        """Keep an early fragment until its first fragment arrives. False (and counted) if over a limit."""
        n = len(pkt)
        source = _source(key)
        if self._over(source, n):
            self.expire(now)  # what aged out makes room first
            if self._over(source, n):
                self.dropped += 1
                return False
        d = self._entry(key, now)
        if d is None:
            self.dropped += 1
            return False
        d.held.append(bytearray(pkt))  # a copy: the caller may reuse its receive buffer
        d.held_bytes += n
        self.held_bytes += n
        self._sources[source][1] += n
        return True

    def _over(self, source: int, n: int) -> bool:
        """Whether holding ``n`` more bytes from ``source`` would pass its share or the table's budget."""
        use = self._sources.get(source)
        return self.held_bytes + n > self.max_bytes or use is not None and use[1] + n > self.max_bytes_per_source

    def resolve(
        self,
        key: int,
        mapping: object,
        now: int,
        first: bytes | bytearray | memoryview | None = None,
        peer: object | None = None,
        new_id: int = -1,
    ) -> tuple[Datagram | None, list[bytearray]]:
        """Record the mapping the first fragment used; return the entry (None if refused) and the held fragments.

        ``first`` (the first fragment) counts towards the datagram's bytes; without it the entry lives
        until it times out.
        """
        d = self._entry(key, now)
        if d is None:
            return None, []
        d.mapping = mapping
        d.peer = peer
        d.new_id = new_id
        held, d.held = d.held, []
        self.held_bytes -= d.held_bytes
        self._sources[_source(key)][1] -= d.held_bytes
        d.held_bytes = 0
        if first is not None:
            self._count(key, d, first)
        return d, held

    def passed(self, key: int, pkt: bytes | bytearray | memoryview) -> None:
        """Count a translated fragment; forget the datagram once all of it went through."""
        d = self._datagrams.get(key)
        if d is not None:
            self._count(key, d, pkt)

    def next_deadline(self) -> int | None:
        """When the oldest entry times out (ns), or None when the table is empty."""
        for d in self._datagrams.values():
            return d.born + self.timeout_ns
        return None

    def _count(self, key: int, d: Datagram, pkt: bytes | bytearray | memoryview) -> None:
        payload = (pkt[2] << 8 | pkt[3]) - (pkt[0] & 0x0F) * 4  # total length - header length
        frag = pkt[6] << 8 | pkt[7]
        d.passed_bytes += payload
        if not frag & 0x2000:  # no "more fragments": this one ends the datagram
            d.size = (frag & 0x1FFF) * 8 + payload
        if d.size is not None and d.passed_bytes >= d.size and not d.held:
            self._forget(key)

    def expire(self, now: int, budget: int = 1 << 62) -> int:
        """Forget datagrams older than the timeout, at most ``budget``; return how many held fragments that dropped."""
        cutoff = now - self.timeout_ns
        gone = 0
        datagrams = self._datagrams
        while datagrams and budget > 0:
            key = next(iter(datagrams))
            if datagrams[key].born > cutoff:
                break
            gone += self._drop(key)
            budget -= 1
        return gone

    def _entry(self, key: int, now: int) -> Datagram | None:
        d = self._datagrams.get(key)
        if d is None:
            source = _source(key)
            if self.source_use(source)[0] >= self.max_datagrams_per_source:
                return None  # this source holds its share: it waits, the others go on
            if len(self._datagrams) >= self.max_datagrams:
                self._drop(next(iter(self._datagrams)))
            d = self._datagrams[key] = Datagram(now)
            self._sources.setdefault(source, [0, 0])[0] += 1
        return d

    def _forget(self, key: int) -> Datagram:
        d = self._datagrams.pop(key)
        source = _source(key)
        use = self._sources[source]
        use[0] -= 1
        use[1] -= d.held_bytes
        if not use[0]:
            del self._sources[source]
        return d

    def _drop(self, key: int) -> int:
        d = self._forget(key)
        self.held_bytes -= d.held_bytes
        self.dropped += len(d.held)
        return len(d.held)
