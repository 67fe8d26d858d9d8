"""External port allocation: which (protocol, public address, port) is free, held or resting.

Theory of operation
-------------------
Each (protocol, public address) has a state array of one byte per port: ``FREE``, ``HELD`` (a mapping
has it) or ``RESTING`` (its mapping ended; nobody gets it until the rest ends, RFC 6056 / RFC 7857, so
an audit question "who held this port at T" never has two answers). Free ports are counted per array
and per range, so a full pool refuses a new flow in O(1) instead of scanning 64 K ports per packet.

Two ranges per array: the low range 1-1023, for source ports below 1024 (RFC 4787 REQ-3: port range
preservation), and the configured ``port_range`` for the rest. A port is drawn uniformly at random in
its range (RFC 6056 algorithm 1) from a block of injected randomness; after ``PICK_TRIES`` held draws
the array is scanned from a random start with ``bytearray.find`` (C speed), which always succeeds
because the free count said a port is there.

A rest always lasts ``port_reuse_delay``, so rests end in the order they began: they are kept in an
append-only log with a moving head (``sweep`` advances it within a budget). The log is a list, not a
deque, so that a snapshot view can read a prefix of it from another thread while the loop appends.

Times are the NAT's monotonic nanoseconds. Nothing here does I/O.
"""

from __future__ import annotations

import random
import struct

from gw.packet import PROTO_ICMP

FREE, HELD, RESTING = 0, 1, 2
PORT_SPACE = 65536
LOW_FIRST, LOW_LAST = 1, 1023  # RFC 4787 REQ-3 / RFC 6056: below 1024 stays below 1024
PICK_TRIES = 16  # random draws before the scan; with 1/2 of a range free, 16 misses happen once in 65536
RANDOM_WORDS = 1024  # 32-bit words per block: one getrandom() per 1024 draws (a syscall costs 1.8 us here)
_RANDOM_BLOCK = struct.Struct(f"!{RANDOM_WORDS}I")
COMPACT_AT = 4096  # the rest log drops its swept head once it is this long and half swept
_FREE_BYTE = b"\0"
_HELD_BYTE = b"\1"


def rest_until(freed_at_ns: int, reuse_delay_ns: int) -> int:
    """When a port freed at ``freed_at_ns`` may be handed out again: the one port-rest rule."""
    return freed_at_ns + reuse_delay_ns


class PortPool:
    """Port state for every (protocol, public address); see the module docstring."""

    def __init__(
        self, ext_addrs: list[int], port_lo: int, port_hi: int, reuse_ns: int, rng: random.Random
    ) -> None:
        self._lo, self._hi = port_lo, port_hi
        self.lo, self.span = port_lo, port_hi - port_lo + 1  # for the NAT's inline first draw
        self.reuse_ns = reuse_ns
        self._rng = rng
        self.words: list[int] = []
        # (proto << 32 | addr) -> port states; allocated up front so a mapping's cost is its own
        self.state: dict[int, bytearray] = {}
        self.free: dict[int, list[int]] = {}  # same key -> [free low ports, free ports in port_range]
        for addr in ext_addrs:
            for proto in (1, 6, 17):
                self._new_array(proto << 32 | addr)
        self._refill()
        self.resting: dict[int, int] = {}  # flow_key(proto, addr, port) -> rest end (ns)
        self.rest_log: list[tuple[int, int]] = []  # (rest end, flow key), in order; swept up to rest_head
        self.rest_head = 0

    def _new_array(self, k: int) -> bytearray:
        state = self.state[k] = bytearray(PORT_SPACE)
        state[0] = HELD  # port 0 is never handed out
        self.free[k] = [LOW_LAST - LOW_FIRST + 1, self._hi - self._lo + 1]
        return state

    def _refill(self) -> None:
        """The next block of random words (kept non-empty, so a draw needs no check)."""
        self.words.extend(_RANDOM_BLOCK.unpack(self._rng.randbytes(_RANDOM_BLOCK.size)))

    def _array(self, proto: int, addr: int) -> tuple[bytearray, list[int]]:
        k = proto << 32 | addr
        state = self.state.get(k)
        if state is None:  # an address not in the pool (a journal written under another config)
            state = self._new_array(k)
        return state, self.free[k]

    def _range_of(self, port: int) -> int:
        """0 for the low range, 1 for port_range, -1 for a port in neither (never counted)."""
        if LOW_FIRST <= port <= LOW_LAST:
            return 0
        return 1 if self._lo <= port <= self._hi else -1

    def free_count(self, proto: int, addr: int, low: bool = False) -> int:
        """Free ports left in one range of one (protocol, public address)."""
        return self._array(proto, addr)[1][0 if low else 1]

    def usage(self) -> list[tuple[int, int, int, int]]:
        """(protocol, public address, ports held, ports of port_range not free) for each state array.

        For ``gw status``, not the packet path. Every mapping holds exactly one port, so the held count
        is the number of mappings on that protocol and address, in any range (port 0 is held but never
        handed out, so it is not counted). It comes from ``bytearray.count`` over the 64 KiB array:
        25 us for an empty array and 50-130 us for a half-full one here. The cost therefore depends on
        the number of addresses, not on the number of mappings.
        "Not free" means held or resting, the ports a new flow cannot get, and is a count the pool
        already keeps.
        """
        span = self._hi - self._lo + 1
        return [
            (k >> 32, k & 0xFFFFFFFF, state.count(_HELD_BYTE) - 1, span - self.free[k][1])
            for k, state in self.state.items()
        ]

    def pick(self, proto: int, addr: int, low: bool) -> int:
        """Hold a random free port of the range (low: 1-1023) and return it; -1 when the range is full."""
        state, free = self._array(proto, addr)
        r = 0 if low else 1
        if not free[r]:
            return -1
        lo, span = (LOW_FIRST, LOW_LAST - LOW_FIRST + 1) if low else (self._lo, self._hi - self._lo + 1)
        words = self.words
        for _ in range(PICK_TRIES):
            if not words:
                self._refill()
            # modulo bias: span / 2**32, below 2e-5 for any range
            port = lo + words.pop() % span
            if not state[port]:
                break
        else:
            start = lo + self._rng.randrange(span)
            port = state.find(_FREE_BYTE, start, lo + span)
            if port < 0:
                port = state.find(_FREE_BYTE, lo, start)
        state[port] = HELD
        free[r] -= 1
        return port

    def hold(self, proto: int, addr: int, port: int, force: bool = False) -> bool:
        """Hold a given port (a port the kernel chose). False if it is not free.

        ``force`` (folding a journal) also takes a resting port: the journal says it was handed out.
        """
        state, free = self._array(proto, addr)
        if state[port] == HELD or state[port] == RESTING and not force:
            return False
        if state[port] == RESTING:
            del self.resting[proto << 48 | addr << 16 | port]
        r = self._range_of(port)
        if r >= 0 and state[port] != RESTING:
            free[r] -= 1
        state[port] = HELD
        return True

    def state_array(self, proto: int, addr: int) -> bytearray:
        """The port states of one (protocol, public address), made if new: a restore writes HELD into it
        directly, then calls ``recount``."""
        return self._array(proto, addr)[0]

    def recount(self, keys: set[int]) -> None:
        """Recount the free ports of the arrays ``proto << 32 | addr`` in ``keys`` at C speed, after a
        restore wrote their states directly (one byte store per row instead of a call)."""
        for k in keys:
            state, free = self.state[k], self.free[k]
            free[0] = state.count(_FREE_BYTE, LOW_FIRST, LOW_LAST + 1)
            free[1] = state.count(_FREE_BYTE, self._lo, self._hi + 1)

    def release(self, key: int, until: int) -> None:
        """A held port's mapping ended: it rests until ``until``."""
        proto, addr, port = key >> 48, key >> 16 & 0xFFFFFFFF, key & 0xFFFF
        state, free = self._array(proto, addr)
        if self.reuse_ns <= 0:
            state[port] = FREE
            r = self._range_of(port)
            if r >= 0:
                free[r] += 1
            return
        state[port] = RESTING
        self.resting[key] = until
        self.rest_log.append((until, key))

    def rest(self, key: int, until: int) -> None:
        """Mark a free port resting until ``until`` (a snapshot's resting ports)."""
        proto, addr, port = key >> 48, key >> 16 & 0xFFFFFFFF, key & 0xFFFF
        state, free = self._array(proto, addr)
        if state[port] == FREE:
            r = self._range_of(port)
            if r >= 0:
                free[r] -= 1
        state[port] = RESTING
        self.resting[key] = until
        self.rest_log.append((until, key))

    def is_resting(self, key: int, now: int) -> bool:
        return self.resting.get(key, 0) > now

    def next_rest_end(self) -> int | None:
        log, head = self.rest_log, self.rest_head
        return log[head][0] if head < len(log) else None

    def sweep(self, now: int, budget: int) -> int:
        """Free ports whose rest ended by ``now``, at most ``budget`` of them; returns how many were looked at."""
        log, resting = self.rest_log, self.resting
        head, end = self.rest_head, len(self.rest_log)
        done = 0
        while head < end and done < budget and log[head][0] <= now:
            until, key = log[head]
            head += 1
            done += 1
            if resting.get(key) == until:  # not rested again since
                del resting[key]
                state, free = self._array(key >> 48, key >> 16 & 0xFFFFFFFF)
                port = key & 0xFFFF
                if state[port] == RESTING:
                    state[port] = FREE
                    r = self._range_of(port)
                    if r >= 0:
                        free[r] += 1
        self.rest_head = head
        if head >= COMPACT_AT and head * 2 >= end:
            # a new list object: a snapshot view reading the old one keeps a valid prefix
            self.rest_log = log[head:]
            self.rest_head = 0
        return done


def is_low(proto: int, int_port: int) -> bool:
    """Whether a new mapping for this internal port belongs in the low range (not for ICMP identifiers)."""
    return int_port < 1024 and proto != PROTO_ICMP
