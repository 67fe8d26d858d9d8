"""Properties of gw.dnsproxy: garbage never raises and never amplifies; the limits hold over random
traffic; every forwarded query gets exactly one reply (its answer or SERVFAIL) unless its client is forgotten."""

from __future__ import annotations

import random
import struct

from dpkt import dns
from hypothesis import given
from hypothesis import strategies as st

from gw.dnsproxy import DnsProxy, client_key

S = 1_000_000_000
CLIENTS = [(1, 1000), (1, 1001), (1, "tcp", 1), (2, 1000), (3, "tcp", 2)]  # addresses 1, 2, 3


def build_query(seq: int) -> bytes:
    """Query number ``seq``: its ID and its name both say which it is."""
    return bytes(dns.DNS(id=seq & 0xFFFF, qd=[dns.DNS.Q(name=f"q{seq}.example", type=dns.DNS_A)]))


def build_answer(sent: bytes, upper: bool) -> bytes:
    """An upstream's answer to ``sent``, its qname in upper case if ``upper`` (the same question)."""
    q = dns.DNS(sent)
    name = q.qd[0].name.upper() if upper else q.qd[0].name
    return bytes(dns.DNS(id=q.id, op=q.op | 0x8000, qd=[dns.DNS.Q(name=name, type=dns.DNS_A)]))


def proxy() -> DnsProxy:
    return DnsProxy(2, rng=random.Random(1), max_in_flight=4, max_in_flight_per_client=2)


def check_error_reply(data: bytes, reply: bytes) -> None:
    """A reply made by the proxy: the client's ID, QR=1, no longer than the query (no amplification)."""
    assert len(reply) <= len(data)
    rid, flags = struct.unpack_from("!HH", reply)
    assert rid == struct.unpack_from("!H", data)[0] and flags & 0x8000


@given(data=st.binary(max_size=600))
def test_query_of_any_bytes_returns_only_the_documented_types(data: bytes) -> None:
    p = proxy()
    out = p.query((1, 1000), data, 0)
    if out is None:
        assert len(data) < 12 or data[2] & 0x80
    elif isinstance(out, bytes):
        check_error_reply(data, out)
    else:
        upstream, sent = out
        assert upstream == 0 and isinstance(sent, bytes) and sent[2:] == data[2:]
        assert p.in_flight == 1


@given(prefix=st.sampled_from([b"", build_query(7)]), data=st.binary(max_size=600))
def test_query_of_a_valid_query_followed_or_replaced_by_garbage_never_raises(
    prefix: bytes, data: bytes
) -> None:
    out = proxy().query((1, 1000), prefix + data, 0)
    assert out is None or isinstance(out, bytes) or isinstance(out, tuple)


@given(data=st.binary(max_size=600), upstream=st.integers(-1, 3), keep_id=st.booleans())
def test_answer_of_any_bytes_is_none_or_a_reply_and_never_raises(
    data: bytes, upstream: int, keep_id: bool
) -> None:
    p = proxy()
    _, sent = p.query((1, 1000), build_query(1), 0)
    if keep_id:  # the pending query's ID, to reach the question check
        data = sent[:2] + data
    out = p.answer(upstream, data, 0)
    if out is not None:
        client, reply = out
        assert client == (1, 1000) and reply[:2] == b"\x00\x01" and reply[2:] == data[2:]
        assert p.in_flight == 0


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("query"), st.integers(0, len(CLIENTS) - 1)),
        st.tuples(st.just("answer"), st.integers(0, 50), st.booleans(), st.booleans()),
        st.tuples(st.just("expire"), st.sampled_from([0, S // 2, S, 2 * S, 3 * S])),
        st.tuples(st.just("forget"), st.integers(0, len(CLIENTS) - 1)),
    ),
    max_size=60,
)


@given(ops=OPS, upstreams=st.integers(1, 3), attempts=st.integers(1, 3))
def test_limits_hold_and_every_query_gets_exactly_one_reply(ops: list, upstreams: int, attempts: int) -> None:
    p = DnsProxy(
        upstreams, rng=random.Random(2), attempts=attempts, max_in_flight=4, max_in_flight_per_client=2
    )
    now = 0
    waiting: dict[int, tuple] = {}  # query seq -> client, for queries forwarded and not yet replied to
    replied: set[int] = set()
    sent: list[tuple[int, bytes]] = []  # every (upstream, bytes) sent, stale attempts included
    current: dict[int, tuple[int, bytes]] = {}  # query seq -> its live attempt: (upstream, ID bytes)

    def seq_of(msg: bytes) -> int:
        return int(dns.DNS(msg).qd[0].name.lower()[1:].split(".")[0])

    def send(upstream: int, msg: bytes) -> None:
        sent.append((upstream, msg))
        current[seq_of(msg)] = (upstream, msg[:2])

    def deliver(client: tuple, reply: bytes, servfail: bool) -> None:
        seq = seq_of(reply)
        assert waiting.pop(seq) == client and seq not in replied, "a reply for a query not waiting"
        replied.add(seq)
        r = dns.DNS(reply)
        assert r.id == seq & 0xFFFF and r.qr == 1 and (r.rcode == dns.DNS_RCODE_SERVFAIL) == servfail

    for seq, op in enumerate(ops):
        if op[0] == "query":
            client = CLIENTS[op[1]]
            held = sum(client_key(c) == client_key(client) for c in waiting.values())
            full = len(waiting) >= 4 or held >= 2
            out = p.query(client, build_query(seq), now)
            if full:
                assert isinstance(out, bytes) and dns.DNS(out).rcode == dns.DNS_RCODE_SERVFAIL
            else:
                assert isinstance(out, tuple)
                waiting[seq] = client
                send(*out)
        elif op[0] == "answer" and sent:
            upstream, msg = sent[op[1] % len(sent)]
            upstream = upstream if op[2] else upstream + 1  # the right upstream, or the wrong one
            seq_asked = seq_of(msg)
            live = seq_asked in waiting and current[seq_asked] == (upstream, msg[:2])
            out = p.answer(upstream, build_answer(msg, op[3]), now)
            assert (out is not None) == live, "an answer to the live attempt is taken, and nothing else"
            if out is not None:
                deliver(*out, servfail=False)
        elif op[0] == "expire":
            now += op[1]
            retries, failures = p.expire(now)
            for upstream, msg in retries:
                send(upstream, msg)
            for client, reply in failures:
                deliver(client, reply, servfail=True)
        elif op[0] == "forget":
            client = CLIENTS[op[1]]
            p.forget_client(client)
            waiting = {s: c for s, c in waiting.items() if c != client}
        assert p.in_flight == len(waiting) <= 4
        for c in CLIENTS:
            assert sum(client_key(w) == client_key(c) for w in waiting.values()) <= 2

    for _ in range(attempts):  # enough expire calls: every attempt times out
        now += 2 * S
        retries, failures = p.expire(now)
        for client, reply in failures:
            deliver(client, reply, servfail=True)
    assert waiting == {} and p.in_flight == 0 and p.next_deadline() is None
    assert p._per_client == {}  # no entry left for a client with nothing pending: bounded memory
