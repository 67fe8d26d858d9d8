"""The DNS proxy core: client queries in, upstream queries and replies out; no sockets, no clock.

Theory of operation
-------------------
The gateway answers DNS for its clients on its VPN address (UDP and TCP port 53) by forwarding each
query to one of ``upstream_count`` resolvers. The shell owns their addresses and sockets; the core names
them by index. The shell hands each client query to ``query``, each datagram from an upstream to
``answer``, calls ``expire`` when ``next_deadline`` comes, and sends what they return. ``now`` is
monotonic integer ns from the shell; a ``now`` below one already seen counts as the latest seen, so
deadlines stay in order. Upstream IDs come from the injected ``random.Random`` (``SystemRandom()`` live).

A query (RFC 1035 4.1) is decided in this order:

1. Shorter than a header, or a response (QR=1): dropped, ``None``. Never answering a response means a
   forged source cannot make the gateway a reflector.
2. Opcode other than QUERY: NOTIMP. Longer than ``MAX_QUERY_BYTES``, qdcount other than 1, or a question
   that does not read (label over 63 bytes, name over 255, more than 128 labels, a compression pointer,
   cut short): FORMERR.
3. No upstream: REFUSED. The table full (``max_in_flight``) or the client's share of it full
   (``max_in_flight_per_client``): SERVFAIL at once, counted ``OVER_LIMIT``.
4. Otherwise: ``(upstream, bytes)``, a copy with only its two ID bytes changed to a random ID not in use
   for that upstream (RFC 5452 9.2); all after the question (EDNS OPT, cookies) passes as is (RFC 5625).

Pending queries are keyed by ``(upstream, upstream ID)`` in an ``OrderedDict`` that is also the deadline
queue: every attempt lasts ``timeout_ns`` and time never goes back, so insertion order is deadline order;
``expire`` pops from the front, O(1) per query and no dead entries. A query goes first to upstream 0 (the
operator's order is the preference, as in resolv.conf). When an attempt times out it goes to the next
upstream under a fresh ID until ``attempts`` sends are spent; then the client gets SERVFAIL
(``TIMEOUTS``). A late answer to an abandoned attempt is ``UNSOLICITED``.

An upstream datagram answers a pending query only if it came from the upstream the attempt went to, with
its ID, QR=1, qdcount=1 and the same question: qname compared case-insensitively (RFC 4343), qtype and
qclass (RFC 5452 9.1). Its ID is set back to the client's and everything else passes as is: rcode, the TC
bit (the client retries over TCP itself), all sections. Any other datagram is counted (``UNSOLICITED``,
``MISMATCHED``, ``BAD_ANSWER``) and ignored; the pending query waits for its deadline.

Replies made here carry the client's ID, QR=1, the query's opcode and RD, RA=1, the rcode, and the
question as the client sent it when it read (qdcount 1, else 0), nothing else: never longer than the
query, so no amplification.

Invariants: ``in_flight <= max_in_flight``; no client key holds more than ``max_in_flight_per_client``;
each forwarded query gets exactly one reply (its answer or a SERVFAIL) unless ``forget_client`` drops it.

The shell's part: ``client`` is an opaque hashable used to route the reply back, and must be a tuple
whose first element is the client's VPN address: ``(vpn_addr, port)`` for UDP, ``(vpn_addr, "tcp",
conn_id)`` for TCP. The per-client limit counts by ``client_key(client) = client[0]``. Data is ``bytes``
or a byte-format ``memoryview``. ``query`` and ``answer`` raise nothing for any bytes.
"""

from __future__ import annotations

import random
import struct
from collections import OrderedDict
from collections.abc import Hashable
from enum import IntEnum

__all__ = ["Count", "DnsProxy", "client_key", "is_answer_to", "servfail_for", "truncated"]

# --- RFC 1035 4.1 (spec) -------------------------------------------------------------------------------
HEADER_LEN = 12
QR = 0x8000  # a response
OPCODE_MASK = 0x7800
RD = 0x0100  # recursion desired
RA = 0x0080  # recursion available
TC = 0x0200  # truncated: the answer did not fit the datagram
OPCODE_QUERY = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NOTIMP = 4
RCODE_REFUSED = 5
LABEL_MAX_BYTES = 63  # RFC 1035 2.3.4; 0x40-0xFF in the length byte are pointers or extended types
NAME_MAX_BYTES = 255  # RFC 1035 2.3.4, length bytes and the root label included
QTYPE_QCLASS_LEN = 4

# --- implementation limits -----------------------------------------------------------------------------
MAX_QUERY_BYTES = 4096  # one limit for UDP and TCP: a question is <= 271 bytes and EDNS, cookies and TSIG
#   add a few hundred; 4096 is the common EDNS size (RFC 6891 6.2.5) and the forwarded query must fit the
#   upstream's UDP datagram; it also bounds the copy kept for retries. Longer: FORMERR, not a drop, so a
#   TCP client is not left to time out; the reply is shorter than the query.
MAX_LABELS = 128  # as zeroconf's MAX_DNS_LABELS: a second fence (255 bytes already allow only 127)
MAX_IN_FLIGHT = 1024  # bounds the proxy's memory: 1024 pending copies of at most 4 KiB = 4 MiB
MAX_IN_FLIGHT_PER_CLIENT = 64  # so one client cannot take the whole table and starve the others
MAX_IN_FLIGHT_CAP = 16384  # a full table still leaves 3/4 of an upstream's 65536 IDs free: random IDs
#   stay hard to guess (RFC 5452 9.2) and a pick takes < 4/3 draws on average
ID_PICK_DRAWS = 16  # draws before giving up on a free ID (p < 4**-16 at the cap): SERVFAIL, never a hang
TIMEOUT_NS = 2_000_000_000  # per attempt: two end, SERVFAIL included, inside glibc's 5 s per try
ATTEMPTS = 2  # sends per query, each to the next upstream

# the header: ID, flags, qdcount, ancount, nscount, arcount
_HEADER = struct.Struct("!6H")
# ID, flags, qdcount: all a decision needs
_read_id_flags_qd = struct.Struct("!HHH").unpack_from
_put_id = struct.Struct("!H").pack_into


class Count(IntEnum):
    """Counters, as indexes into ``DnsProxy.counts``."""

    QUERIES = 0  # messages from clients (every call of query)
    FORWARDED = 1  # queries sent upstream (first attempt)
    ANSWERS = 2  # upstream answers relayed to a client
    RETRIES = 3  # attempts timed out and sent again to the next upstream
    TIMEOUTS = 4  # queries whose attempts all timed out: SERVFAIL sent
    OVER_LIMIT = 5  # SERVFAIL at once: the table or the client's share full (or no free ID)
    MALFORMED = 6  # queries answered FORMERR
    NOT_IMPLEMENTED = 7  # queries answered NOTIMP (opcode other than QUERY)
    REFUSED = 8  # queries answered REFUSED (no upstream)
    DROPPED = 9  # queries not answered at all: shorter than a header, or QR=1 (never reflect)
    UNSOLICITED = 10  # upstream datagrams with no pending (upstream, ID)
    MISMATCHED = 11  # upstream datagrams with a pending ID but not QR=1, qdcount 1 and the same question
    BAD_ANSWER = 12  # upstream datagrams shorter than a header
    FORGOTTEN = 13  # pending queries dropped by forget_client


def client_key(client: Hashable) -> Hashable:
    """The key the per-client limit counts by: the client's VPN address, first in the shell's tuple."""
    return client[0]  # type: ignore[index]


def _question_end(buf: bytes | memoryview, n: int) -> int:
    """Offset just past the question at HEADER_LEN (RFC 1035 4.1.2), or -1 when it does not read."""
    pos, labels = HEADER_LEN, 0
    name_end = HEADER_LEN + NAME_MAX_BYTES  # the root label's byte must sit before this
    while True:
        if pos >= n or pos >= name_end:
            return -1
        length = buf[pos]
        if length == 0:
            break
        if length > LABEL_MAX_BYTES:  # a pointer (no compression in a query's question) or 0x40/0x80
            return -1
        labels += 1
        if labels > MAX_LABELS:
            return -1
        pos += 1 + length
    end = pos + 1 + QTYPE_QCLASS_LEN
    return end if end <= n else -1


def _question_key(buf: bytes | memoryview, end: int) -> bytes:
    """The question folded for comparison: qname lowered (RFC 4343; ASCII only, length bytes are < 64)."""
    split = end - QTYPE_QCLASS_LEN
    return bytes(buf[HEADER_LEN:split]).lower() + bytes(buf[split:end])


def _error_reply(buf: bytes | memoryview, client_id: int, flags: int, qend: int, rcode: int) -> bytes:
    """An error reply with the client's ID, opcode and RD, RA=1, and the question if it read (qend > 0)."""
    flags = QR | flags & (OPCODE_MASK | RD) | RA | rcode
    if qend <= 0:
        return _HEADER.pack(client_id, flags, 0, 0, 0, 0)
    return _HEADER.pack(client_id, flags, 1, 0, 0, 0) + bytes(buf[HEADER_LEN:qend])


def is_answer_to(query: bytes | memoryview, reply: bytes | memoryview) -> bool:
    """Whether ``reply`` answers ``query``: QR=1, the same ID, qdcount 1 and the same question (qname
    compared case-insensitively). For answers fetched outside the table (the shell's TCP retry)."""
    if len(query) < HEADER_LEN or len(reply) < HEADER_LEN:
        return False
    qid, _, qd = _read_id_flags_qd(query)
    rid, rflags, rd = _read_id_flags_qd(reply)
    if qid != rid or not rflags & QR or qd != 1 or rd != 1:
        return False
    qend, rend = _question_end(query, len(query)), _question_end(reply, len(reply))
    return qend > 0 and rend > 0 and _question_key(query, qend) == _question_key(reply, rend)


def truncated(reply: bytes | memoryview) -> bool:
    """Whether a reply has the TC bit: the whole answer needs TCP (RFC 7766)."""
    return len(reply) >= HEADER_LEN and bool(_read_id_flags_qd(reply)[1] & TC)


def servfail_for(query: bytes | memoryview) -> bytes:
    """The SERVFAIL reply to a query that passed ``DnsProxy.query`` (its ID, opcode, RD and question)."""
    client_id, flags, _ = _read_id_flags_qd(query)
    return _error_reply(query, client_id, flags, _question_end(query, len(query)), RCODE_SERVFAIL)


class _Pending:
    """One forwarded query: who asked, the copy sent upstream, the question to match, the attempt."""

    __slots__ = ("client", "client_id", "msg", "qend", "question", "upstream", "deadline", "tries_left")

    def __init__(self, client: Hashable, client_id: int, msg: bytearray, qend: int, tries_left: int) -> None:
        self.client, self.client_id, self.msg, self.qend = client, client_id, msg, qend
        self.question = _question_key(msg, qend)
        self.upstream = self.deadline = 0
        self.tries_left = tries_left  # attempts after the current one


class DnsProxy:
    """Forwarding decisions for the gateway's DNS service; see the module docstring."""

    def __init__(
        self,
        upstream_count: int,
        *,
        rng: random.Random,
        timeout_ns: int = TIMEOUT_NS,
        attempts: int = ATTEMPTS,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_in_flight_per_client: int = MAX_IN_FLIGHT_PER_CLIENT,
    ) -> None:
        assert upstream_count >= 0 and timeout_ns > 0 and attempts >= 1
        assert 0 < max_in_flight <= MAX_IN_FLIGHT_CAP and max_in_flight_per_client > 0
        self.upstream_count, self.rng = upstream_count, rng
        self.timeout_ns, self.attempts = timeout_ns, attempts
        self.max_in_flight, self.max_in_flight_per_client = max_in_flight, max_in_flight_per_client
        self.counts = [0] * len(Count)
        self._pending: OrderedDict[tuple[int, int], _Pending] = OrderedDict()  # in deadline order
        self._per_client: dict[Hashable, int] = {}  # client_key -> pending queries
        self._now = 0

    @property
    def in_flight(self) -> int:
        """Queries waiting for an upstream answer."""
        return len(self._pending)

    def next_deadline(self) -> int | None:
        """When ``expire`` next has work (ns), or None when nothing is pending."""
        entry = next(iter(self._pending.values()), None)
        return None if entry is None else entry.deadline

    def query(self, client: Hashable, data: bytes | memoryview, now: int) -> tuple[int, bytes] | bytes | None:
        """A client's query: (upstream index, bytes to send it), bytes to answer the client now, or None to
        drop. Raises nothing; anything else is a bug."""
        counts = self.counts
        counts[Count.QUERIES] += 1
        n = len(data)
        if n < HEADER_LEN:
            counts[Count.DROPPED] += 1
            return None
        client_id, flags, qdcount = _read_id_flags_qd(data)
        if flags & QR:  # a response sent to us: answering it would reflect
            counts[Count.DROPPED] += 1
            return None
        qend = _question_end(data, n) if qdcount == 1 else -1
        if flags & OPCODE_MASK != OPCODE_QUERY:
            counts[Count.NOT_IMPLEMENTED] += 1
            return _error_reply(data, client_id, flags, qend, RCODE_NOTIMP)
        if qend < 0 or n > MAX_QUERY_BYTES:
            counts[Count.MALFORMED] += 1
            return _error_reply(data, client_id, flags, qend, RCODE_FORMERR)
        if not self.upstream_count:
            counts[Count.REFUSED] += 1
            return _error_reply(data, client_id, flags, qend, RCODE_REFUSED)
        key = client_key(client)
        held = self._per_client.get(key, 0)
        if len(self._pending) >= self.max_in_flight or held >= self.max_in_flight_per_client:
            counts[Count.OVER_LIMIT] += 1
            return _error_reply(data, client_id, flags, qend, RCODE_SERVFAIL)
        entry = _Pending(client, client_id, bytearray(data), qend, self.attempts - 1)
        if not self._send(entry, 0, now):  # the operator's order is the preference, as in resolv.conf
            counts[Count.OVER_LIMIT] += 1
            return _error_reply(data, client_id, flags, qend, RCODE_SERVFAIL)
        self._per_client[key] = held + 1
        counts[Count.FORWARDED] += 1
        return 0, bytes(entry.msg)

    def answer(self, upstream: int, data: bytes | memoryview, now: int) -> tuple[Hashable, bytes] | None:
        """A datagram from upstream ``upstream``: (client, reply with the client's ID) when it answers a
        pending query, else None (counted). Raises nothing; anything else is a bug."""
        n = len(data)
        if n < HEADER_LEN:
            self.counts[Count.BAD_ANSWER] += 1
            return None
        upstream_id, flags, qdcount = _read_id_flags_qd(data)
        entry = self._pending.get((upstream, upstream_id))
        if entry is None:
            self.counts[Count.UNSOLICITED] += 1
            return None
        qend = _question_end(data, n) if flags & QR and qdcount == 1 else -1
        if qend < 0 or _question_key(data, qend) != entry.question:
            self.counts[Count.MISMATCHED] += 1
            return None
        self._finish(entry)
        reply = bytearray(data)
        _put_id(reply, 0, entry.client_id)
        self.counts[Count.ANSWERS] += 1
        return entry.client, bytes(reply)

    def expire(self, now: int) -> tuple[list[tuple[int, bytes]], list[tuple[Hashable, bytes]]]:
        """Attempts due by ``now``: (retries as (upstream index, bytes to send it), replies as (client,
        SERVFAIL bytes)) for queries that have used up their attempts. O(expired)."""
        now = self._clock(now)
        retries: list[tuple[int, bytes]] = []
        failures: list[tuple[Hashable, bytes]] = []
        pending = self._pending
        while pending:
            slot, entry = next(iter(pending.items()))
            if entry.deadline > now:
                break
            del pending[slot]
            if entry.tries_left:
                entry.tries_left -= 1
                if self._send(entry, (entry.upstream + 1) % self.upstream_count, now):
                    self.counts[Count.RETRIES] += 1
                    retries.append((entry.upstream, bytes(entry.msg)))
                    continue
            self._release(entry)
            self.counts[Count.TIMEOUTS] += 1
            flags = _read_id_flags_qd(entry.msg)[1]
            failures.append(
                (entry.client, _error_reply(entry.msg, entry.client_id, flags, entry.qend, RCODE_SERVFAIL))
            )
        return retries, failures

    def forget_client(self, client: Hashable) -> None:
        """Drop the pending queries of ``client`` (a closed TCP connection); no reply will come. O(in_flight)."""
        for entry in [e for e in self._pending.values() if e.client == client]:
            self._finish(entry)
            self.counts[Count.FORGOTTEN] += 1

    # ------------------------------------------------------------------ table

    def _clock(self, now: int) -> int:
        if now > self._now:
            self._now = now
        return self._now

    def _send(self, entry: _Pending, upstream: int, now: int) -> bool:
        """Give ``entry`` a free random ID on ``upstream`` and a fresh deadline; False if no ID was found."""
        pending, getrandbits = self._pending, self.rng.getrandbits
        for _ in range(ID_PICK_DRAWS):
            upstream_id = getrandbits(16)
            if (upstream, upstream_id) not in pending:
                break
        else:
            return False
        _put_id(entry.msg, 0, upstream_id)
        entry.upstream, entry.deadline = upstream, self._clock(now) + self.timeout_ns
        pending[(upstream, upstream_id)] = entry
        return True

    def _finish(self, entry: _Pending) -> None:
        del self._pending[(entry.upstream, _read_id_flags_qd(entry.msg)[0])]
        self._release(entry)

    def _release(self, entry: _Pending) -> None:
        key = client_key(entry.client)
        held = self._per_client[key] - 1
        if held:
            self._per_client[key] = held
        else:
            del self._per_client[key]
