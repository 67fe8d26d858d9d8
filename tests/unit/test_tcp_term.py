"""gw.tcp_term: the terminating endpoint, without sockets. dpkt re-reads (and checksums) what it sends;
the client's segments are built by dpkt too, so the codec is not its own oracle."""

from __future__ import annotations

import random

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gw import inet, offload
from gw import packet as P
from gw import vnet as V
from gw.tcp_term import conn as C
from gw.tcp_term import segment as S
from gw.tcp_term import table as T

CLIENT, REMOTE = inet.aton("10.66.77.2"), inet.aton("203.0.113.9")
CPORT, RPORT = 40000, 443
ISN, ISS = 1000, 5_000_000
MS = 1_000_000
T0 = 10**12
SPACE = 1 << 20


def client_segment(seq: int, ack: int = 0, flags: int = dpkt.tcp.TH_ACK, data: bytes = b"", window: int = 8192,
                   opts: bytes = b"") -> S.Segment:  # fmt: skip
    """A client's segment, made by dpkt and read back through ``S.parse`` (checksum checked)."""
    tcp = dpkt.tcp.TCP(sport=CPORT, dport=RPORT, seq=seq & C.M32, ack=ack & C.M32, flags=flags, win=window,
                       opts=opts, data=data)  # fmt: skip
    tcp.off = (20 + len(opts)) // 4
    ip = dpkt.ip.IP(src=CLIENT.to_bytes(4, "big"), dst=REMOTE.to_bytes(4, "big"), p=6, data=tcp)
    ip.len = 20 + len(bytes(tcp))
    seg = S.parse(bytes(ip))
    assert seg is not None
    return seg


SYN_OPTS = bytes([2, 4, 0x05, 0x50, 1, 3, 3, 7])  # MSS 1360, NOP, window scale 7


def sent(conn: C.TcpConn) -> list[dpkt.tcp.TCP]:
    """The segments the endpoint sent since the last call, re-read by dpkt with checksums verified."""
    out = []
    for pkt in conn.out:
        ip = dpkt.ip.IP(bytes(pkt))
        assert ip.src == REMOTE.to_bytes(4, "big") and ip.dst == CLIENT.to_bytes(4, "big")
        assert ip.df and P.check_ipv4(pkt) == 0
        tcp, checksum = ip.data, ip.data.sum
        tcp.sum, ip.sum = 0, 0
        bytes(ip)  # dpkt computes both checksums again
        assert tcp.sum == checksum, "bad TCP checksum"
        out.append(tcp)
    conn.out.clear()
    return out


def events(conn: C.TcpConn) -> list[tuple]:
    got, conn.events = conn.events, []
    return got


def opened(window_scale: bool = True, gso_segments: int = 1, window: int = 8192) -> C.TcpConn:
    syn = client_segment(ISN, flags=dpkt.tcp.TH_SYN, opts=SYN_OPTS if window_scale else b"", window=65535)
    conn = C.TcpConn(syn, T0, ISS, mss_limit=1380, gso_segments=gso_segments)
    conn.accept(T0, SPACE)
    sent(conn)
    assert conn.on_segment(client_segment(ISN + 1, ISS + 1, window=window), T0 + MS) is None
    assert events(conn) == [("open",)]
    return conn


def test_the_syn_ack_carries_mss_and_window_scale_and_acknowledges_the_syn():
    syn = client_segment(ISN, flags=dpkt.tcp.TH_SYN, opts=SYN_OPTS, window=65535)
    conn = C.TcpConn(syn, T0, ISS, mss_limit=1380)
    assert conn.out == [] and conn.state == C.CONNECTING  # nothing until the kernel socket connected
    conn.accept(T0, SPACE)
    (synack,) = sent(conn)
    assert synack.flags == dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK and synack.seq == ISS and synack.ack == ISN + 1
    opts = dict(dpkt.tcp.parse_opts(synack.opts))
    assert int.from_bytes(opts[dpkt.tcp.TCP_OPT_MSS], "big") == 1360 and opts[dpkt.tcp.TCP_OPT_WSCALE] == b"\x07"
    assert synack.win == 65535  # never scaled in a SYN
    conn.on_segment(client_segment(ISN + 1, ISS + 1, window=100), T0 + 5 * MS)
    assert conn.state == C.OPEN and conn.snd_wnd == 100 << 7 and conn.srtt == 5 * MS


def test_a_syn_without_options_gets_the_default_mss_and_no_scaling():
    conn = C.TcpConn(client_segment(ISN, flags=dpkt.tcp.TH_SYN), T0, ISS, mss_limit=1380)
    conn.accept(T0, SPACE)
    (synack,) = sent(conn)
    opts = dict(dpkt.tcp.parse_opts(synack.opts))
    assert int.from_bytes(opts[dpkt.tcp.TCP_OPT_MSS], "big") == 536 and dpkt.tcp.TCP_OPT_WSCALE not in opts
    assert conn.mss == 536 and conn.rcv_shift == 0 and conn.snd_shift == 0


def test_a_refused_connect_is_a_reset_that_acknowledges_the_syn():
    conn = C.TcpConn(client_segment(ISN, flags=dpkt.tcp.TH_SYN), T0, ISS, mss_limit=1380)
    conn.refuse()
    (rst,) = sent(conn)
    assert rst.flags == dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK and rst.ack == ISN + 1
    assert conn.closed and events(conn) == [("closed",)]


def test_the_syn_ack_is_repeated_then_given_up():
    conn = C.TcpConn(client_segment(ISN, flags=dpkt.tcp.TH_SYN), T0, ISS, mss_limit=1380)
    conn.accept(T0, SPACE)
    sent(conn)
    now = T0
    for _ in range(C.SYN_ACK_RETRIES):
        now = conn.deadline()
        conn.on_timer(now)
        assert [s.flags for s in sent(conn)] == [dpkt.tcp.TH_SYN | dpkt.tcp.TH_ACK]
    conn.on_timer(conn.deadline())
    assert [s.flags & dpkt.tcp.TH_RST for s in sent(conn)] == [dpkt.tcp.TH_RST]
    assert events(conn) == [("timeout",), ("closed",)] and conn.deadline() is None


def test_client_data_is_acknowledged_only_as_far_as_the_kernel_socket_took_it():
    conn = opened()
    data = conn.on_segment(client_segment(ISN + 1, ISS + 1, data=b"hello world"), T0)
    assert bytes(data) == b"hello world"
    conn.delivered(5, 4096, T0)  # the kernel socket took "hello"
    (ack,) = sent(conn)
    assert ack.ack == ISN + 1 + 5 and ack.win == 4096 >> 7
    again = conn.on_segment(client_segment(ISN + 1, ISS + 1, data=b"hello world"), T0)  # retransmitted
    assert bytes(again) == b" world"  # only what is new
    conn.delivered(6, SPACE, T0)
    assert sent(conn)[0].ack == ISN + 12


def test_a_gap_is_dropped_with_a_duplicate_ack_and_old_data_is_acknowledged_again():
    conn = opened()
    assert conn.on_segment(client_segment(ISN + 11, ISS + 1, data=b"later"), T0) is None
    (dup,) = sent(conn)
    assert dup.ack == ISN + 1
    conn.delivered(len(conn.on_segment(client_segment(ISN + 1, ISS + 1, data=b"x" * 10), T0)), SPACE, T0)
    sent(conn)
    assert conn.on_segment(client_segment(ISN + 1, ISS + 1, data=b"x" * 10), T0) is None
    assert sent(conn)[0].ack == ISN + 11


def test_remote_data_goes_out_in_segments_within_the_window_and_acks_release_it():
    conn = opened(window=2000 >> 7 << 7 >> 7)  # a client window of 1920 bytes (15 << 7)
    assert conn.room() == 15 << 7
    conn.send(b"a" * conn.room(), T0)
    segs = sent(conn)
    assert [len(s.data) for s in segs] == [1360, 560] and segs[1].seq == ISS + 1 + 1360
    assert conn.room() == 0
    conn.on_segment(client_segment(ISN + 1, ISS + 1 + 1360, window=15), T0 + 2 * MS)
    assert events(conn) == [("acked", 1360)] and conn.room() == 1360


def test_gso_super_packets_carry_several_segments_each():
    conn = opened(gso_segments=44, window=65535)
    conn.send(b"b" * 100_000, T0)
    assert [len(s.data) for s in sent(conn)] == [1360 * 44, 100_000 - 1360 * 44]
    wide = opened(gso_segments=1000, window=65535)  # more than one IPv4 packet holds: capped, never raised
    wide.send(b"b" * 200_000, T0)
    assert max(len(s.data) for s in sent(wide)) == 1360 * 48


def test_offloaded_super_packets_are_what_a_tun_takes_and_cut_into_the_same_stream():
    """With ``offload`` every packet carries a virtio-net header and a checksum for the kernel to finish;
    ``offload.segment`` (the kernel's software GSO, for a client without offloads) cuts them into the
    plain segments dpkt checks: MSS-sized, consecutive, the stream byte for byte."""
    syn = client_segment(ISN, flags=dpkt.tcp.TH_SYN, opts=SYN_OPTS, window=65535)
    conn = C.TcpConn(syn, T0, ISS, mss_limit=1380, gso_segments=64, offload=True)
    conn.accept(T0, SPACE)
    conn.on_segment(client_segment(ISN + 1, ISS + 1, window=65535), T0 + MS)
    data = random.Random(7).randbytes(100_000)
    conn.send(data, T0 + MS)
    packets = list(conn.out)
    headers = [V.read_header(pkt) for pkt in packets]
    assert all(offload.header_fits(pkt) for pkt in packets)  # what the gateway would take from a client
    assert [h[1] for h in headers] == [V.VNET_GSO_NONE] + [V.VNET_GSO_TCPV4] * 2  # the SYN-ACK, 48 + 26 MSS
    assert all(h[0] == V.VNET_F_NEEDS_CSUM and h[3] in (0, 1360) for h in headers)
    conn.out = [seg for pkt in packets for seg in offload.segment(pkt)]
    tcps = sent(conn)  # checksums finished by segment(), verified by dpkt
    assert tcps[0].flags & dpkt.tcp.TH_SYN
    assert all(len(t.data) <= 1360 for t in tcps) and len(tcps) == 1 + -(-100_000 // 1360)
    assert [t.seq for t in tcps[1:]] == list(range(ISS + 1, ISS + 1 + 100_000, 1360))
    assert b"".join(t.data for t in tcps) == data


def test_the_window_grows_by_the_bytes_an_ack_covers_not_per_ack():
    """A client acknowledges a 64 KB super-packet with one ACK: slow start must count its bytes
    (RFC 3465), or the window would grow by one MSS per 64 KB and the stream crawl."""
    conn = opened(gso_segments=64, window=65535)
    conn.snd_wnd = 1 << 24  # the client's window is not the limit here
    start = conn.cwnd
    conn.send(b"d" * start, T0)
    conn.on_segment(client_segment(ISN + 1, ISS + 1 + start, window=65535), T0 + MS)
    assert conn.cwnd == 2 * start  # slow start: doubled in one round trip, whatever the ACK count
    conn.ssthresh = conn.cwnd  # congestion avoidance from here: about one MSS per window acknowledged
    before = conn.cwnd
    conn.send(b"d" * before, T0)
    conn.on_segment(client_segment(ISN + 1, ISS + 1 + start + before, window=65535), T0 + 2 * MS)
    assert conn.cwnd - before in (conn.mss - 1, conn.mss)


def test_three_duplicate_acks_resend_the_first_missing_segment_once_and_halve_the_window():
    conn = opened(window=65535)
    conn.send(b"c" * (4 * 1360), T0)
    sent(conn)
    before = conn.cwnd
    for _ in range(1 + C.DUP_ACKS):  # one new acknowledgement, then three duplicates of it
        conn.on_segment(client_segment(ISN + 1, ISS + 1 + 1360, window=65535), T0)
    assert events(conn) == [("acked", 1360), ("resend", 1360)]
    assert conn.snd_nxt == conn.snd_max == ISS + 1 + 4 * 1360 and conn.cwnd < before  # nothing else again
    conn.resend(b"c" * 1360, T0)  # the shell peeked them at offset 0
    (again,) = sent(conn)
    assert again.seq == ISS + 1 + 1360 and len(again.data) == 1360
    for _ in range(5):  # more duplicates (the client got the resent segment's followers): no new storm
        conn.on_segment(client_segment(ISN + 1, ISS + 1 + 1360, window=65535), T0)
    assert events(conn) == []
    conn.on_segment(client_segment(ISN + 1, ISS + 1 + 2 * 1360, window=65535), T0)  # a partial ACK
    assert events(conn) == [("acked", 1360), ("resend", 1360)]  # the next hole
    conn.on_segment(client_segment(ISN + 1, ISS + 1 + 4 * 1360, window=65535), T0)
    assert events(conn) == [("acked", 2 * 1360)] and conn.recover is None and conn.cwnd == conn.ssthresh


def test_with_super_packets_a_fast_retransmission_resends_a_whole_one():
    """Losses toward a client with offloads come in super-packets (a full tunnel queue drops whole
    ones): resending one MSS per round trip would leave the rest to the retransmission timer."""
    conn = opened(gso_segments=64, window=65535)
    conn.send(b"e" * (4 * conn.gso_bytes), T0)
    sent(conn)
    for _ in range(1 + C.DUP_ACKS):
        conn.on_segment(client_segment(ISN + 1, ISS + 1 + conn.gso_bytes, window=65535), T0)
    assert events(conn) == [("acked", conn.gso_bytes), ("resend", conn.gso_bytes)]
    conn.resend(b"e" * conn.gso_bytes, T0)
    (again,) = sent(conn)
    assert again.seq == ISS + 1 + conn.gso_bytes and len(again.data) == conn.gso_bytes


def test_a_timeout_rewinds_to_one_segment_and_backs_off_then_gives_up():
    conn = opened(window=65535)
    conn.send(b"d" * 5000, T0)
    sent(conn)
    first, rto = conn.deadline(), conn.rto
    conn.on_timer(first)
    assert events(conn) == [("rewind",)] and conn.cwnd == conn.mss and conn.room() == conn.mss
    assert conn.deadline() - first == 2 * rto  # backed off
    for _ in range(C.MAX_RETRIES):
        conn.on_timer(conn.deadline())
    assert events(conn)[-2:] == [("timeout",), ("closed",)]
    assert sent(conn)[-1].flags & dpkt.tcp.TH_RST


def test_both_fins_close_after_the_linger_and_half_close_lets_the_remote_go_on():
    conn = opened(window=65535)
    payload = conn.on_segment(client_segment(ISN + 1, ISS + 1, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN, data=b"q"),
                              T0)  # fmt: skip
    conn.delivered(len(payload), SPACE, T0)
    assert events(conn) == [("fin",)] and sent(conn)[0].ack == ISN + 3  # the byte and the FIN
    conn.send(b"answer", T0)  # half-closed: the remote still talks
    conn.remote_eof(T0)
    segs = sent(conn)
    assert bytes(segs[0].data) == b"answer" and segs[-1].flags & dpkt.tcp.TH_FIN and segs[-1].seq == ISS + 7
    conn.on_segment(client_segment(ISN + 3, ISS + 8), T0 + MS)
    assert events(conn) == [("acked", 6)] and not conn.closed
    conn.on_timer(conn.deadline())
    assert conn.closed and events(conn) == [("closed",)]


def test_a_lost_fin_is_sent_again():
    conn = opened(window=65535)
    conn.remote_eof(T0)
    (fin,) = sent(conn)
    conn.on_timer(conn.deadline())
    (again,) = sent(conn)
    assert fin.flags & dpkt.tcp.TH_FIN and again.flags & dpkt.tcp.TH_FIN and again.seq == fin.seq


def test_resets_and_syns_follow_rfc_5961():
    conn = opened()
    conn.on_segment(client_segment(ISN + 100, flags=dpkt.tcp.TH_RST), T0)  # in window, not exact
    assert not conn.closed and sent(conn)[0].ack == ISN + 1  # a challenge ACK
    conn.on_segment(client_segment(ISN + 50, flags=dpkt.tcp.TH_SYN), T0)
    assert not conn.closed and sent(conn)[0].flags == dpkt.tcp.TH_ACK
    conn.on_segment(client_segment(ISN + 1, flags=dpkt.tcp.TH_RST), T0)
    assert conn.closed and events(conn) == [("reset",), ("closed",)]


def test_a_zero_window_is_probed():
    conn = opened(window=0)
    assert conn.room() == 0
    conn.on_segment(client_segment(ISN + 1, ISS + 1, window=0), T0)
    conn.on_timer(conn.deadline())
    (probe,) = sent(conn)
    assert probe.seq == ISS and not probe.data  # one below snd_una: the client answers with its window
    conn.on_segment(client_segment(ISN + 1, ISS + 1, window=10), T0)
    assert conn.room() == 10 << 7 and conn.probe_at is None


def test_a_segment_for_no_connection_gets_the_rfc_reset():
    rst = dpkt.ip.IP(bytes(S.reset_for(client_segment(ISN, 777, data=b"zz")))).data
    assert rst.flags == dpkt.tcp.TH_RST and rst.seq == 777
    rst = dpkt.ip.IP(bytes(S.reset_for(client_segment(ISN, flags=dpkt.tcp.TH_SYN)))).data
    assert rst.flags == dpkt.tcp.TH_RST | dpkt.tcp.TH_ACK and rst.ack == ISN + 1


# ---------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=6000), st.integers(1, 1500), st.integers(0, 2**32))
def test_lost_reordered_and_duplicated_client_segments_still_give_the_same_byte_stream(data, size, seed):
    """A client that sends every unacknowledged segment again each round, in a shuffled order with
    duplicates and drops, and a kernel socket that takes a random part: the remote gets the stream."""
    rnd = random.Random(seed)  # a seeded fate (hypothesis's own randoms shrink to "always drop")
    conn = opened()
    taken = bytearray()
    segments = [(ISN + 1 + at, data[at : at + size]) for at in range(0, len(data), size)]
    for _ in range(200):
        if len(taken) == len(data):
            break
        acked = conn.rcv_nxt
        pending = [s for s in segments if C.seq_lt(acked, (s[0] + len(s[1])) & C.M32)]
        batch = [s for s in pending + rnd.sample(pending, min(2, len(pending))) if rnd.random() > 0.3]
        rnd.shuffle(batch)
        for seq, chunk in batch:
            payload = conn.on_segment(client_segment(seq, ISS + 1, data=chunk), T0)
            if payload is not None:
                n = rnd.randint(0, len(payload))
                taken += payload[:n]
                conn.delivered(n, SPACE, T0)
        conn.out.clear()
    assert bytes(taken) == data


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200_000), st.integers(1, 44), st.integers(0, 2**32))
def test_the_remote_stream_reaches_a_lossy_client_whole_and_the_kernel_buffer_is_consumed_exactly(n, gso, seed):
    """The shell peeks from a kernel buffer; the client drops segments at random and takes in-order
    bytes only; timers and duplicate ACKs recover, and ``acked`` consumes exactly the stream."""
    rnd = random.Random(seed)
    stream = rnd.randbytes(n)
    conn = opened(gso_segments=gso, window=65535)
    fin = client_segment(ISN + 1, ISS + 1, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_FIN, window=65535)
    conn.delivered(len(conn.on_segment(fin, T0)), SPACE, T0)  # the client is done sending: a download
    events(conn)
    kernel, peek = bytearray(stream), 0  # the socket's receive queue, and SO_PEEK_OFF
    got, now = bytearray(), T0
    eof = fin_got = False

    def shell() -> None:  # what the daemon does with the events, after every call
        nonlocal peek
        for event in events(conn):
            if event[0] == "acked":
                del kernel[: event[1]]
                peek = max(0, peek - event[1])  # as the kernel moves SO_PEEK_OFF
            elif event[0] == "rewind":
                peek = 0
            elif event[0] == "resend":
                conn.resend(kernel[: event[1]], now)

    for _ in range(5000):
        room = conn.room()
        if room and peek < len(kernel):
            chunk = kernel[peek : peek + room]
            peek += len(chunk)
            conn.send(chunk, now)
        elif not eof and peek == len(kernel) and room:
            conn.remote_eof(now)  # the shell's peek at the end found the remote's FIN
            eof = True
        for seg in sent(conn):
            if rnd.random() < 0.2:
                continue  # lost in the tunnel
            if seg.seq == (ISS + 1 + len(got)) & C.M32 and seg.data and not fin_got:
                got += seg.data
            if seg.flags & dpkt.tcp.TH_FIN and seg.seq == (ISS + 1 + len(got)) & C.M32:
                fin_got = True
            conn.on_segment(client_segment(ISN + 2, ISS + 1 + len(got) + fin_got, window=65535), now)
            shell()
        if conn.closed:
            break
        if conn.room() == 0 or rnd.random() < 0.05:
            deadline = conn.deadline()
            if deadline is not None:
                now = max(now, deadline)
                conn.on_timer(now)
                shell()
    assert bytes(got) == stream and not kernel and conn.closed


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_is_dropped_by_the_reader_never_raised(blob):
    S.parse(blob)
    S.parse(blob, checked=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, C.M32), st.integers(0, C.M32), st.integers(0, 0x3F),
                          st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=30))  # fmt: skip
def test_any_segment_in_any_state_gets_a_segment_or_a_drop_never_an_exception(segments):
    conn = opened()
    now = T0
    for seq, ack, flags, window, data in segments:
        payload = conn.on_segment(client_segment(seq, ack, flags, data, window), now)
        if payload is not None:
            conn.delivered(len(payload), SPACE, now)
        now += 50 * MS
        if conn.deadline() is not None and conn.deadline() <= now:
            conn.on_timer(now)
        for pkt in conn.out:
            assert S.parse(pkt) is not None  # every answer is a sound segment
        conn.out.clear()


@pytest.mark.parametrize("bad", [b"", b"\x45" + b"\0" * 39, bytes(P.build_udp(CLIENT, REMOTE, 1, 2, b"x"))])
def test_not_tcp_or_cut_short_is_no_segment(bad):
    assert S.parse(bad) is None


# ---------------------------------------------------------------------- the table of connections


def _syn(src: int, sport: int) -> S.Segment:
    tcp = dpkt.tcp.TCP(sport=sport, dport=RPORT, seq=ISN, flags=dpkt.tcp.TH_SYN, win=65535)
    ip = dpkt.ip.IP(src=src.to_bytes(4, "big"), dst=REMOTE.to_bytes(4, "big"), p=6, data=tcp)
    ip.len = 40
    return S.parse(bytes(ip))


def test_connections_are_bounded_per_client_and_in_total_and_counted():
    table = T.Terminations(mss_limit=1380, max_total=5, max_per_client=3, rng=random.Random(1))
    alice, bob, carol = CLIENT, CLIENT + 1, CLIENT + 2
    assert all(isinstance(table.open(_syn(alice, p), T0), C.TcpConn) for p in (1, 2, 3))
    assert table.open(_syn(alice, 4), T0) == "limit_client"
    assert isinstance(table.open(_syn(bob, 1), T0), C.TcpConn) and isinstance(table.open(_syn(bob, 2), T0), C.TcpConn)
    assert table.open(_syn(carol, 1), T0) == "limit_total"
    assert table.counts == {"opened": 5, "refused_total": 1, "refused_client": 1, "closed": 0}
    table.remove(table.find(_syn(alice, 1)))
    assert table.find(_syn(alice, 1)) is None and isinstance(table.open(_syn(carol, 1), T0), C.TcpConn)
    assert table.per_client == {alice: 2, bob: 2, carol: 1}


def test_timers_run_in_deadline_order_and_a_re_armed_one_runs_once():
    table = T.Terminations(mss_limit=1380, rng=random.Random(1))
    first, second = table.open(_syn(CLIENT, 1), T0), table.open(_syn(CLIENT, 2), T0)
    second.accept(T0, SPACE)
    first.accept(T0 + MS, SPACE)
    for conn in (first, second):
        table.touch(conn)
        table.touch(conn)  # no second entry for the same deadline
    assert table.due(T0) == []
    assert table.due(T0 + 2 * C.RTO_INITIAL_NS) == [second, first]  # each once, earliest first
    assert table.next_deadline() == second.deadline()
    table.remove(second)
    assert table.due(second.deadline()) == [first]  # a removed connection's entry is stale
