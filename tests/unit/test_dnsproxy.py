"""gw.dnsproxy: forwarding, answer matching, retries and timeouts, limits, error replies; dpkt is the oracle."""

from __future__ import annotations

import random

import pytest
from dpkt import dns

from gw.dnsproxy import MAX_QUERY_BYTES, Count, DnsProxy, is_answer_to, servfail_for, truncated

S = 1_000_000_000
T = 2 * S  # the default timeout per attempt
ALICE = (0x0A424D02, 40000)  # (VPN address, UDP port)
ALICE_2 = (0x0A424D02, 40001)  # the same client from another port
ALICE_TCP = (0x0A424D02, "tcp", 7)  # ... and over TCP
BOB = (0x0A424D03, 40000)


def build_query(
    name: str = "example.com", qid: int = 0x1234, qtype: int = dns.DNS_A, **fields: object
) -> bytes:
    """A query built by dpkt (RD set, as dpkt does by default)."""
    return bytes(dns.DNS(id=qid, qd=[dns.DNS.Q(name=name, type=qtype)], **fields))


def build_answer(sent: bytes, name: str | None = None, qtype: int | None = None, rcode: int = 0) -> bytes:
    """An upstream's answer to the query bytes it was sent (its ID), optionally with another question."""
    q = dns.DNS(sent)
    question = q.qd[0]
    name = question.name if name is None else name
    rr = dns.DNS.RR(name=name, type=dns.DNS_A, ip=bytes([192, 0, 2, 1]), ttl=60)
    return bytes(
        dns.DNS(
            id=q.id,
            op=q.op | 0x8000 | 0x0080,
            rcode=rcode,
            qd=[dns.DNS.Q(name=name, type=question.type if qtype is None else qtype, cls=question.cls)],
            an=[rr],
        )
    )


def make_proxy(upstreams: int = 2, seed: int = 7, **kw: object) -> DnsProxy:
    return DnsProxy(upstreams, rng=random.Random(seed), **kw)


def forward(p: DnsProxy, client: object = ALICE, now: int = 0, **q: object) -> tuple[int, bytes]:
    out = p.query(client, build_query(**q), now)
    assert isinstance(out, tuple), out
    return out


def parsed(reply: bytes) -> dns.DNS:
    return dns.DNS(reply)


# ---------------------------------------------------------------- forward and answer


def test_roundtrip_restores_the_client_id_and_keeps_every_other_byte() -> None:
    p = make_proxy()
    query = build_query(qid=0x1234)
    upstream, sent = p.query(ALICE, query, 0)
    assert upstream == 0 and len(sent) == len(query)
    assert sent[2:] == query[2:] and sent[:2] != query[:2]  # only the ID changed
    answer = build_answer(sent)
    client, reply = p.answer(0, answer, 10)
    assert client == ALICE
    assert reply[:2] == query[:2] and reply[2:] == answer[2:]
    r = parsed(reply)
    assert (r.id, r.qr, r.rcode, r.qd[0].name, r.an[0].ip) == (
        0x1234,
        1,
        0,
        "example.com",
        bytes([192, 0, 2, 1]),
    )
    assert p.in_flight == 0
    assert (p.counts[Count.QUERIES], p.counts[Count.FORWARDED], p.counts[Count.ANSWERS]) == (1, 1, 1)


def test_upstream_ids_are_random_and_not_the_clients() -> None:
    p = make_proxy()
    ids = {dns.DNS(forward(p, qid=0x1234, name=f"n{i}.example")[1]).id for i in range(50)}
    assert 0x1234 not in ids and len(ids) == 50


def test_memoryview_input_is_read_like_bytes() -> None:
    p = make_proxy()
    buf = bytearray(build_query())
    upstream, sent = p.query(ALICE, memoryview(buf), 0)
    client, reply = p.answer(upstream, memoryview(bytearray(build_answer(sent))), 0)
    assert client == ALICE and parsed(reply).id == 0x1234


def test_upstream_rcode_and_tc_bit_pass_through() -> None:
    p = make_proxy()
    _, sent = forward(p)
    answer = bytearray(build_answer(sent, rcode=dns.DNS_RCODE_SERVFAIL))
    answer[2] |= 0x02  # TC
    _, reply = p.answer(0, bytes(answer), 0)
    assert reply[2:] == bytes(answer[2:]) and parsed(reply).rcode == dns.DNS_RCODE_SERVFAIL


def test_edns_opt_and_everything_after_the_question_is_forwarded_as_is() -> None:
    p = make_proxy()
    opt = dns.DNS.RR(type=dns.DNS_OPT, cls=1232, name="", rdata=b"\x00\x0a\x00\x08cookie!!")
    query = build_query(ar=[opt])
    _, sent = p.query(ALICE, query, 0)
    assert sent[2:] == query[2:]
    ar = dns.DNS(sent).ar[0]
    assert (ar.type, ar.cls, ar.rdata) == (dns.DNS_OPT, 1232, b"\x00\x0a\x00\x08cookie!!")


# ---------------------------------------------------------------- what is not an answer


def test_wrong_id_wrong_upstream_and_unsolicited_are_ignored_and_the_query_stays() -> None:
    p = make_proxy()
    _, sent = forward(p)
    answer = bytearray(build_answer(sent))
    answer[1] ^= 1  # another ID
    assert p.answer(0, bytes(answer), 0) is None
    assert p.answer(1, build_answer(sent), 0) is None  # the right ID from the wrong upstream
    assert p.answer(5, build_answer(sent), 0) is None  # an upstream that does not exist
    assert p.counts[Count.UNSOLICITED] == 3 and p.in_flight == 1
    assert p.answer(0, build_answer(sent), 0) is not None
    assert p.answer(0, build_answer(sent), 0) is None  # a duplicate, after the query is done
    assert p.counts[Count.UNSOLICITED] == 4


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: build_answer(s, name="example.net"), id="other-name"),
        pytest.param(lambda s: build_answer(s, qtype=dns.DNS_AAAA), id="other-qtype"),
        pytest.param(
            lambda s: build_answer(s)[:2] + b"\x81\x80\x00\x02" + build_answer(s)[6:], id="qdcount-2"
        ),
        pytest.param(lambda s: build_answer(s)[:2] + b"\x01\x00" + build_answer(s)[4:], id="qr-0"),
        pytest.param(lambda s: build_answer(s)[:20], id="question-cut"),
        pytest.param(lambda s: build_answer(s)[:10], id="shorter-than-a-header"),
    ],
)
def test_answers_with_the_wrong_question_or_shape_are_mismatches(change) -> None:
    p = make_proxy()
    _, sent = forward(p)
    bad = change(sent)
    assert p.answer(0, bad, 0) is None
    assert p.counts[Count.MISMATCHED] + p.counts[Count.BAD_ANSWER] == 1 and p.in_flight == 1
    assert p.answer(0, build_answer(sent), 0)[0] == ALICE


def test_other_qclass_is_a_mismatch() -> None:
    p = make_proxy()
    _, sent = forward(p)
    answer = bytearray(build_answer(sent))
    answer[12 + len(b"\x07example\x03com\x00") + 3] = 3  # qclass CH
    assert p.answer(0, bytes(answer), 0) is None and p.counts[Count.MISMATCHED] == 1


def test_a_case_changed_qname_is_the_same_question_rfc4343() -> None:
    p = make_proxy()
    _, sent = forward(p, name="ExAmple.com")
    client, reply = p.answer(0, build_answer(sent, name="eXAMPLE.COM"), 0)
    assert client == ALICE and parsed(reply).qd[0].name == "eXAMPLE.COM"


def test_two_clients_with_the_same_id_get_distinct_upstream_ids_and_their_own_answers() -> None:
    p = make_proxy()
    _, sent_a = forward(p, ALICE, qid=99, name="a.example")
    _, sent_b = forward(p, BOB, qid=99, name="b.example")
    assert sent_a[:2] != sent_b[:2]
    client_b, reply_b = p.answer(0, build_answer(sent_b), 0)
    client_a, reply_a = p.answer(0, build_answer(sent_a), 0)
    assert (client_a, parsed(reply_a).id, parsed(reply_a).qd[0].name) == (ALICE, 99, "a.example")
    assert (client_b, parsed(reply_b).id, parsed(reply_b).qd[0].name) == (BOB, 99, "b.example")


class FixedRandom(random.Random):
    """getrandbits answers from a list, to force ID collisions."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = values

    def getrandbits(self, k: int) -> int:
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]


def test_an_id_in_use_on_that_upstream_is_drawn_again_and_a_hopeless_draw_is_servfail() -> None:
    p = DnsProxy(1, rng=FixedRandom([5, 5, 9, 5]))
    assert dns.DNS(forward(p, name="a.example")[1]).id == 5
    assert dns.DNS(forward(p, name="b.example")[1]).id == 9  # 5 is taken: drawn again
    reply = p.query(ALICE, build_query(name="c.example"), 0)  # every draw is 5 now
    assert isinstance(reply, bytes) and parsed(reply).rcode == dns.DNS_RCODE_SERVFAIL
    assert p.counts[Count.OVER_LIMIT] == 1 and p.in_flight == 2


# ---------------------------------------------------------------- retries and timeouts


def test_timeout_retries_on_the_next_upstream_then_servfail_with_the_clients_id_and_question() -> None:
    p = make_proxy(upstreams=2, attempts=2)
    query = build_query(qid=0xBEEF, name="Slow.example")
    _, first = p.query(ALICE, query, 0)
    assert p.expire(T - 1) == ([], [])
    retries, failures = p.expire(T)
    assert failures == [] and len(retries) == 1
    upstream, second = retries[0]
    assert upstream == 1 and second[2:] == query[2:] and second[:2] != first[:2]
    assert p.answer(0, build_answer(first), T) is None  # late answer to the abandoned attempt
    assert p.counts[Count.UNSOLICITED] == 1
    retries, failures = p.expire(2 * T)
    assert retries == [] and len(failures) == 1
    client, servfail = failures[0]
    r = parsed(servfail)
    assert client == ALICE
    assert (r.id, r.qr, r.opcode, r.rd, r.ra, r.rcode) == (0xBEEF, 1, 0, 1, 1, dns.DNS_RCODE_SERVFAIL)
    assert [q.name for q in r.qd] == ["Slow.example"] and (r.an, r.ns, r.ar) == ([], [], [])
    assert p.in_flight == 0 and p.counts[Count.RETRIES] == 1 and p.counts[Count.TIMEOUTS] == 1


def test_retries_rotate_through_the_upstreams_and_an_answer_to_the_retry_is_taken() -> None:
    p = make_proxy(upstreams=2, attempts=3)
    forward(p)
    assert p.expire(T)[0][0][0] == 1
    upstream, sent = p.expire(2 * T)[0][0]
    assert upstream == 0  # round robin
    assert p.answer(0, build_answer(sent), 2 * T)[0] == ALICE
    assert p.expire(10 * T) == ([], [])


def test_a_single_upstream_is_retried_under_a_new_id() -> None:
    p = make_proxy(upstreams=1)
    _, first = forward(p)
    ((upstream, second),) = p.expire(T)[0]
    assert upstream == 0 and first[:2] != second[:2]


def test_next_deadline_follows_the_oldest_attempt() -> None:
    p = make_proxy()
    assert p.next_deadline() is None
    _, sent = forward(p, now=100)
    forward(p, now=500, name="b.example")
    assert p.next_deadline() == 100 + T
    p.answer(0, build_answer(sent), 200)
    assert p.next_deadline() == 500 + T
    p.expire(500 + T)  # retried
    assert p.next_deadline() == 500 + 2 * T


def test_time_going_back_counts_as_the_latest_time_seen() -> None:
    p = make_proxy()
    forward(p, now=10 * S)
    forward(p, now=5 * S, name="b.example")  # taken as 10 s: deadlines stay in order
    assert p.next_deadline() == 10 * S + T
    assert len(p.expire(10 * S + T)[0]) == 2


# ---------------------------------------------------------------- limits


def test_per_client_limit_counts_by_address_across_ports_and_tcp() -> None:
    p = make_proxy(max_in_flight_per_client=2)
    forward(p, ALICE)
    forward(p, ALICE_2, name="b.example")
    reply = p.query(ALICE_TCP, build_query(qid=77), 0)
    r = parsed(reply)
    assert (r.id, r.rcode, r.qd[0].name) == (77, dns.DNS_RCODE_SERVFAIL, "example.com")
    assert p.counts[Count.OVER_LIMIT] == 1
    forward(p, BOB)  # another client is not held back
    assert p.in_flight == 3


def test_an_answer_frees_the_clients_share() -> None:
    p = make_proxy(max_in_flight_per_client=1)
    _, sent = forward(p)
    assert isinstance(p.query(ALICE, build_query(name="b.example"), 0), bytes)
    p.answer(0, build_answer(sent), 0)
    forward(p, name="b.example")


def test_total_limit_is_servfail_at_once() -> None:
    p = make_proxy(max_in_flight=3)
    for i in range(3):
        forward(p, (i, 53))
    reply = p.query((9, 53), build_query(), 0)
    assert parsed(reply).rcode == dns.DNS_RCODE_SERVFAIL and p.counts[Count.OVER_LIMIT] == 1
    assert p.in_flight == 3


def test_forget_client_drops_its_queries_only() -> None:
    p = make_proxy(max_in_flight_per_client=1)
    _, sent_tcp = forward(p, ALICE_TCP)
    _, sent_bob = forward(p, BOB)
    p.forget_client(ALICE_TCP)
    assert p.in_flight == 1 and p.counts[Count.FORGOTTEN] == 1
    assert p.answer(0, build_answer(sent_tcp), 0) is None
    forward(p, ALICE)  # its share is free again
    assert p.answer(0, build_answer(sent_bob), 0)[0] == BOB
    p.expire(T)  # ALICE's query is retried
    assert [client for client, _ in p.expire(2 * T)[1]] == [ALICE]  # nothing comes for the forgotten one


# ---------------------------------------------------------------- bad queries

Q1 = "1234 0100 0001 0000 0000 0000"  # ID 0x1234, RD, qdcount 1
QUESTION = "076578616d706c6503636f6d00 0001 0001"  # example.com A IN
FORMERR, NOTIMP = dns.DNS_RCODE_FORMERR, dns.DNS_RCODE_NOTIMP
LONG_NAME = ("3f" + "61" * 63) * 3 + "3e" + "61" * 62 + "00"  # 256 bytes with the root label
BAD_QUERIES = [
    # (what, hex, rcode or None for "dropped", question echoed)
    ("11 bytes, not even a header", "1234 0100 0001 0000 0000 00", None, False),
    ("a response (QR=1): never answered, never reflected", "1234 8100" + Q1[9:] + QUESTION, None, False),
    ("opcode IQUERY", "1234 0900 0001 0000 0000 0000" + QUESTION, NOTIMP, True),
    ("opcode STATUS, no question", "1234 1000 0000 0000 0000 0000", NOTIMP, False),
    ("opcode UPDATE", "1234 2800 0001 0000 0000 0000" + QUESTION, NOTIMP, True),
    ("qdcount 0", "1234 0100 0000 0000 0000 0000", FORMERR, False),
    ("qdcount 2", "1234 0100 0002 0000 0000 0000" + QUESTION + QUESTION, FORMERR, False),
    ("compression pointer in the question", Q1 + "03777777 c00c 0001 0001", FORMERR, False),
    ("label of 64 bytes", Q1 + "40" + "61" * 64 + "00 0001 0001", FORMERR, False),
    ("name of 256 bytes", Q1 + LONG_NAME + "0001 0001", FORMERR, False),
    ("question cut inside qtype", Q1 + "076578616d706c6503636f6d00 00", FORMERR, False),
    ("name with no root label", Q1 + "076578616d706c65", FORMERR, False),
    (
        "RD clear, over MAX_QUERY_BYTES",
        "1234 0000" + Q1[9:] + QUESTION + "00" * MAX_QUERY_BYTES,
        FORMERR,
        True,
    ),
]


@pytest.mark.parametrize("what, wire, rcode, echoed", BAD_QUERIES, ids=[v[0] for v in BAD_QUERIES])
def test_bad_queries_are_dropped_or_answered_with_the_right_error(what, wire, rcode, echoed) -> None:
    p = make_proxy()
    data = bytes.fromhex(wire)
    reply = p.query(ALICE, data, 0)
    assert p.in_flight == 0
    if rcode is None:
        assert reply is None and p.counts[Count.DROPPED] == 1
        return
    assert isinstance(reply, bytes) and len(reply) <= len(data)  # never an amplifier
    r = parsed(reply)
    opcode, rd = data[2] >> 3 & 0xF, data[2] & 1
    assert (r.id, r.qr, r.opcode, r.rd, r.ra, r.rcode) == (0x1234, 1, opcode, rd, 1, rcode)
    assert [q.name for q in r.qd] == (["example.com"] if echoed else [])
    assert (r.an, r.ns, r.ar) == ([], [], [])


def test_a_name_of_exactly_255_bytes_and_labels_of_63_are_fine() -> None:
    name = ".".join(["a" * 63] * 3 + ["a" * 61])  # 4 * 64 - 2 + root = 255 bytes on the wire
    upstream, _ = forward(make_proxy(), name=name)
    assert upstream == 0


def test_no_upstream_is_refused() -> None:
    p = make_proxy(upstreams=0)
    r = parsed(p.query(ALICE, build_query(qid=3), 0))
    assert (r.id, r.rcode, r.qd[0].name) == (3, dns.DNS_RCODE_REFUSED, "example.com")
    assert p.counts[Count.REFUSED] == 1


def test_the_checks_for_an_answer_fetched_over_tcp_are_those_of_the_table():
    """The shell asks again over TCP when a TCP client got a truncated answer: the same rules apply."""
    q = build_query("Example.COM", qid=77)
    assert is_answer_to(q, build_answer(q))
    assert is_answer_to(q, build_answer(q, name="example.com"))  # RFC 4343: case does not matter
    assert not is_answer_to(q, build_answer(q, name="other.com"))
    assert not is_answer_to(q, build_answer(build_query("Example.COM", qid=78)))  # another ID
    assert not is_answer_to(q, q)  # QR=0: a query is no answer
    assert not is_answer_to(q, b"\0" * 5)
    tc = bytearray(build_answer(q))
    tc[2] |= 0x02  # the TC bit
    assert truncated(tc) and not truncated(build_answer(q)) and not truncated(b"")
    r = parsed(servfail_for(q))
    assert (r.id, r.rcode, r.qr, r.qd[0].name) == (77, dns.DNS_RCODE_SERVFAIL, 1, "Example.COM")
