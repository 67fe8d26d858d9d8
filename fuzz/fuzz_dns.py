"""Fuzz the DNS proxy core (``gw.dnsproxy.DnsProxy``): client queries, upstream answers, timeouts.

Input: a header byte (bits 0-1: the number of upstreams, 0-3; bit 2: a table of 2 queries per client and 4
in all, so the limits are reached; else the defaults), then records ``[kind][len u16][bytes]``. Kind bits
0-1 pick the event, bits 5-7 advance the clock first (0 .. past two timeouts):

- 0: a UDP query from client ``kind >> 2 & 3`` (a VPN address and a port), the record's bytes as sent;
- 1: a datagram from upstream ``kind >> 2 & 3``, the record's bytes as they arrived;
- 2: the same, but made to look like an answer to a query in flight: the ID and the upstream of one the
  proxy sent (the ``kind >> 2 & 3``-th), then the record's bytes after the ID (the fuzzer still decides
  QR, qdcount, the question and everything after it);
- 3: ``expire`` (bit 2), or ``forget_client`` of client ``kind >> 3 & 3`` (a closed TCP connection).

Each reply is checked against the module's promises: never longer than the query it answers (no
amplification), the client's ID, QR set; a forwarded query differs from the client's only in its ID;
in-flight counts stay within the limits. Contract under test: ``query`` and ``answer`` raise nothing.
"""

from __future__ import annotations

import random
import sys

from fuzz.common import fuzz, instrumented, record, records, require

with instrumented():
    from gw import dnsproxy as D

NS = 1_000_000_000
STEPS = (0, 1_000_000, NS // 2, NS, 2 * NS, 3 * NS, 4 * NS, 10 * NS)
CLIENTS = [(0x0A424D02 + i, 40000 + i) for i in range(4)]  # (VPN address, UDP port)
MAX_RECORDS = 24


def one_input(data: bytes) -> None:
    if not data:
        return
    upstreams = data[0] & 3
    small = bool(data[0] & 4)
    proxy = D.DnsProxy(upstreams, rng=random.Random(5), max_in_flight=4 if small else D.MAX_IN_FLIGHT,
                       max_in_flight_per_client=2 if small else D.MAX_IN_FLIGHT_PER_CLIENT)  # fmt: skip
    now = 0
    sent: list[tuple[int, bytes]] = []  # (upstream, bytes) the proxy sent, newest last
    asked: dict[bytes, bytes] = {}  # a forwarded query after its ID -> the client's query, for reply checks
    for i, (kind, payload) in enumerate(records(data)):
        if i == MAX_RECORDS:
            break
        now += STEPS[kind >> 5]
        event = kind & 3
        if event == 0:
            client = CLIENTS[kind >> 2 & 3]
            decision = proxy.query(client, payload, now)
            check_query(payload, decision)
            if isinstance(decision, tuple):
                upstream, forwarded = decision
                sent.append((upstream, forwarded))
                asked[forwarded[2:]] = payload
                servfail = D.servfail_for(payload)
                require(len(servfail) <= len(payload), "a SERVFAIL longer than its query")
        elif event in (1, 2):
            if event == 2 and sent:
                upstream, forwarded = sent[-1 - (kind >> 2 & 3) % len(sent)]
                datagram = forwarded[:2] + payload[2:]
            else:
                upstream, datagram = kind >> 2 & 3, payload
            answered = proxy.answer(upstream, datagram, now)
            if answered is not None:
                client, reply = answered
                require(client in CLIENTS, "an answer for a client that never asked")
                require(len(reply) == len(datagram) and reply[2:] == datagram[2:], "the answer was changed")
                require(any(D.is_answer_to(q, reply) for q in asked.values()), "an answer to no query asked")
                D.truncated(reply)
        elif kind & 4:
            retries, failures = proxy.expire(now)
            for upstream, again in retries:
                require(0 <= upstream < max(upstreams, 1), "a retry to an upstream that does not exist")
                sent.append((upstream, again))
            for client, reply in failures:
                require(client in CLIENTS and len(reply) >= D.HEADER_LEN, "a bad SERVFAIL")
                require(reply[2] & 0x80 and reply[3] & 0x0F == D.RCODE_SERVFAIL, "a failure that is no SERVFAIL")
        else:
            proxy.forget_client(CLIENTS[kind >> 3 & 3])
        require(proxy.in_flight <= proxy.max_in_flight, "more queries in flight than the table holds")
        deadline = proxy.next_deadline()
        require(deadline is None or proxy.in_flight, "a deadline with nothing in flight")


def check_query(query: bytes, decision: object) -> None:
    """What ``DnsProxy.query`` returned for ``query`` keeps the module's promises."""
    if decision is None:
        return
    if isinstance(decision, bytes):  # an answer made here: FORMERR, NOTIMP, REFUSED, SERVFAIL
        require(len(decision) <= len(query), "a reply longer than its query (amplification)")
        require(decision[:2] == query[:2], "a reply without the client's ID")
        require(decision[2] & 0x80, "a reply without QR")
        return
    require(isinstance(decision, tuple) and len(decision) == 2, f"query returned {decision!r}")
    upstream, forwarded = decision
    require(upstream == 0, "a first attempt not to upstream 0")
    require(len(forwarded) == len(query) and forwarded[2:] == query[2:], "a forwarded query was changed")


# ---------------------------------------------------------------------- seeds


def question(name: str, qtype: int = 1) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p)
    return labels + b"\0" + qtype.to_bytes(2, "big") + b"\x00\x01"


def query(ident: int, name: str, qtype: int = 1, flags: int = 0x0100, extra: bytes = b"") -> bytes:
    """A query for ``name`` (RD set), with an additional record ``extra`` (EDNS OPT) if given."""
    head = ident.to_bytes(2, "big") + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00"
    return head + bytes([0, 1 if extra else 0]) + question(name, qtype) + extra


def answer_to(q: bytes, rr: bytes = b"") -> bytes:
    """``q`` as a response with one answer record (the ID is set by the harness, kind 2)."""
    body = bytearray(q)
    body[2] |= 0x80
    body[7] = 1
    return bytes(body) + rr


def seeds() -> list[bytes]:
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"  # EDNS OPT, 4096
    a_rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x0e\x10\x00\x04\xcb\x00\x71\x0a"
    q1, q2 = query(0x1234, "example.com"), query(0x4321, "www.example.org", 28, extra=opt)
    flows = [
        (1, [(0, q1), (2, answer_to(q1, a_rr))]),
        (2, [(0, q2), (0xE3 | 4, b""), (2, answer_to(q2)), (1, answer_to(q2))]),
        (0, [(0, q1)]),
        (1, [(0, query(1, "x", flags=0x2800)), (0, q1[:10]), (0, query(2, "a" * 64 + ".com")),
             (0, query(3, ".".join(["a"] * 130))), (0, answer_to(q1))]),
        (5, [(0, q1), (4, q1), (8, q1), (0, q2), (0xE3 | 4, b""), (0xE3 | 4, b"")]),
        (3, [(0, q1), (0x0B, b""), (2, answer_to(q1, a_rr))]),
        (1, [(0, q1), (2, answer_to(query(0x1234, "EXAMPLE.com"))), (2, answer_to(q1)[:12])]),
    ]
    return [bytes([h]) + b"".join(record(k, p) for k, p in recs) for h, recs in flows]


if __name__ == "__main__":
    fuzz("dns", one_input, sys.argv)
