"""One client TCP connection ended in user space: a sans-I/O endpoint that relays through a kernel socket.

Theory of operation
-------------------
The client opens a TCP connection to a remote; the gateway answers as that remote, and carries the bytes
through a kernel TCP socket it connected from its public address (``gw.tcp_term`` in the daemon). This
module is the client-facing half: segments and time in, segments, byte counts and deadlines out. It
never holds the stream's bytes, in either direction; the kernel socket's buffers do (passt/pasta's
design, ``tcp.c``: "avoiding the need for segmentation, explicit queueing, and reassembly"):

- Client to remote. ``on_segment`` returns the in-order payload; the shell writes it to the kernel
  socket and reports with ``delivered(n, space)`` how much the socket took and how much room it has
  left. Only what it took is acknowledged, and the window advertised is that room: back-pressure is
  the kernel's send buffer, and nothing waits in user space. A segment beyond ``rcv_nxt`` (a loss or a
  reordering in the tunnel) is dropped with a duplicate ACK, and the client's own retransmission fills
  the gap: the tunnel runs over TCP, so such losses are rare (a bounded queue overflowing).
- Remote to client. The shell reads the kernel socket with ``MSG_PEEK`` (``SO_PEEK_OFF`` walks the
  peek offset forward), so the bytes stay in the kernel until the client acknowledges them. ``room()``
  says how many bytes the client's window and the congestion window allow now, ``send(data)`` makes
  segments of them (with ``offload``, super-packets of up to ``gso_segments`` MSS and a virtio-net
  header, which the client's TUN takes whole: Python's cost is paid per 64 KB, not per 1.4 KB),
  an event ``("acked", n)`` tells the shell to consume ``n`` bytes for good, ``("resend", n)`` to peek
  the first ``n`` unacknowledged bytes again for ``resend`` (a fast retransmission), and ``("rewind",)``
  to peek again from the first unacknowledged byte on (after a timeout: go-back-N from ``snd_una``).
- Loss recovery toward the client is RFC 6298's timer (Karn's rule for samples, backoff, at most
  ``MAX_RETRIES`` in a row) and NewReno (RFC 5681, RFC 6582): on three duplicate ACKs the first
  missing segment again, one more per partial ACK, and no new fast retransmit until everything sent
  before it is acknowledged (duplicates the client gets do not start a storm); slow start from ten
  segments (RFC 6928), halving on loss, one segment after a timeout. The window grows by the bytes
  an ACK covers (RFC 3465), not per ACK: a client acknowledges a whole 64 KB super-packet at once.
- Closing: a client FIN, once its data is delivered, is ``("fin",)`` (the shell shuts the kernel
  socket's write side); the remote's end of stream is ``remote_eof()``, sent as a FIN after the last
  byte. When both FINs are acknowledged the connection lingers ``LINGER_NS`` to answer a repeated FIN,
  then is ``("closed",)``. A client RST is ``("reset",)``; ``abort()`` sends one to the client.
  RFC 5961: a RST or SYN that is in the window but not exact gets a challenge ACK.

Out: ``self.out`` (packets for the client, drained by the shell) and ``self.events`` (tuples, drained).
``deadline()`` is when ``on_timer`` must run next. Sequence numbers are modulo 2**32 throughout.
"""

from __future__ import annotations

from gw import packet as P
from gw.tcp_term import segment as S
from gw.tcp_term.segment import Segment

M32 = 0xFFFFFFFF
MS = 1_000_000
MSS_DEFAULT = 536  # RFC 9293 3.7.1: what a SYN without the MSS option allows
OUR_WSCALE = 7  # windows up to 8 MiB: a kernel send buffer's worth
INITIAL_WINDOW_SEGMENTS = 10  # RFC 6928
RTO_INITIAL_NS = 1000 * MS  # RFC 6298 2.1
RTO_MIN_NS = 200 * MS  # Linux's floor (RFC 6298 says 1 s; the tunnel is a known, short path)
RTO_MAX_NS = 60_000 * MS
MAX_RETRIES = 8  # timeouts in a row before the client is given up (reset)
SYN_ACK_RETRIES = 4
DUP_ACKS = 3  # RFC 5681 3.2
LINGER_NS = 2_000 * MS  # after both FINs: time to re-acknowledge a repeated FIN

CONNECTING, SYN_RCVD, OPEN, CLOSED = "connecting", "syn_rcvd", "open", "closed"


def seq_lt(a: int, b: int) -> bool:
    """a before b, modulo 2**32 (RFC 9293 3.4)."""
    return (a - b) & M32 > 0x7FFFFFFF


class TcpConn:
    """The endpoint of one client connection (see the module docstring)."""

    def __init__(self, syn: Segment, now: int, iss: int, *, mss_limit: int, gso_segments: int = 1,
                 offload: bool = False) -> None:  # fmt: skip
        """From the client's SYN; answer with ``accept`` once the kernel socket connected, or ``refuse``.
        ``mss_limit``: the largest segment the tunnel carries to the client; ``iss``: a random 32 bits;
        ``offload``: every packet out is for a TUN with offloads (``segment.build`` with ``gso_size``):
        a virtio-net header, the checksum left to the kernel, up to ``gso_segments`` MSS in one."""
        self.client, self.remote = (syn.src, syn.sport), (syn.dst, syn.dport)
        self.state = CONNECTING
        self.out: list[bytearray] = []
        self.events: list[tuple] = []
        # receiving (client to remote)
        self.irs = syn.seq
        self.rcv_nxt = (syn.seq + 1) & M32
        self.rcv_wnd = 0  # the window last advertised, in bytes
        scaled = syn.wscale >= 0
        self.rcv_shift = OUR_WSCALE if scaled else 0
        # sending (remote to client)
        self.iss = iss & M32
        self.snd_una = self.snd_nxt = self.snd_max = self.iss  # snd_max: the highest sent (a rewind
        # moves snd_nxt back, and the client may still acknowledge up to snd_max)
        self.snd_shift = syn.wscale if scaled else 0
        self.snd_wnd = syn.window  # a SYN's window is never scaled (RFC 7323 2.2)
        self.mss = max(64, min(syn.mss or MSS_DEFAULT, mss_limit))
        most = (0xFFFF - P.IP_MIN_HLEN - P.TCP_MIN_HLEN) // self.mss  # segments one IPv4 packet holds
        self.gso_bytes = self.mss * max(1, min(gso_segments, most))
        self.gso_size = self.mss if offload else 0  # segment.build's: 0 = plain packets
        self.cwnd = INITIAL_WINDOW_SEGMENTS * self.mss
        self.ssthresh = 1 << 30
        self.dupacks = 0
        self.recover: int | None = None  # in loss recovery until snd_una passes it (RFC 6582's "recover")
        self.fin_seq: int | None = None  # the remote's end of stream (the FIN's sequence number)
        self.fin_received = False
        self._pending_fin = False  # the payload ``on_segment`` returned ends with a FIN
        self._pending_len = 0  # and is this long
        # timers (monotonic ns; None: not armed)
        self.srtt = 0
        self.rttvar = 0
        self.rto = RTO_INITIAL_NS
        self.rto_at: int | None = None
        self.retries = 0
        self._timing: tuple[int, int] | None = None  # (seq, sent at): one RTT sample in flight (Karn)
        self.linger_at: int | None = None
        self.probe_at: int | None = None

    # ------------------------------------------------------------------ the shell's calls
    def accept(self, now: int, space: int) -> None:
        """The kernel socket connected: answer the SYN with a SYN-ACK advertising ``space`` bytes."""
        if self.state != CONNECTING:
            return
        self.state = SYN_RCVD
        self.rcv_wnd = min(space, 0xFFFF)
        self.snd_nxt = self.snd_max = (self.iss + 1) & M32
        self._send_syn_ack()
        self._timing = (self.iss, now)
        self._arm(now)

    def refuse(self) -> None:
        """The remote refused (or could not be reached): a RST to the client, and the end."""
        self._emit(0, P.TCP_RST | P.TCP_ACK_FLAG, window=0)
        self._close()

    def abort(self) -> None:
        """The remote reset, or the gateway gives up: a RST to the client, and the end."""
        if self.state != CLOSED:
            self._emit(self.snd_nxt, P.TCP_RST | P.TCP_ACK_FLAG, window=0)
            self._close()

    def room(self) -> int:
        """Bytes of the remote's stream that may be sent now (the client's and the congestion window)."""
        if self.state != OPEN:
            return 0
        flight = (self.snd_nxt - self.snd_una) & M32
        room = min(self.snd_wnd, self.cwnd) - flight
        if self.fin_seq is not None:  # after a rewind: the stream's rest, up to its end
            room = min(room, (self.fin_seq - self.snd_nxt) & M32 if seq_lt(self.snd_nxt, self.fin_seq) else 0)
        return max(0, room)

    def send(self, data: bytes | memoryview, now: int) -> None:
        """Segments of the remote's next bytes (at most ``room()``; after a rewind, from ``snd_una``)."""
        view = memoryview(data)
        for at in range(0, len(view), self.gso_bytes):
            chunk = view[at : at + self.gso_bytes]
            self._emit(self.snd_nxt, P.TCP_ACK_FLAG | P.TCP_PSH, chunk)
            if self._timing is None:
                self._timing = (self.snd_nxt, now)
            self.snd_nxt = (self.snd_nxt + len(chunk)) & M32
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt
        if self.fin_seq is not None and self.snd_nxt == self.fin_seq:
            self._send_fin()
        if self.rto_at is None and self.snd_max != self.snd_una:
            self._arm(now)

    def remote_eof(self, now: int) -> None:
        """The remote closed its side, and every byte of its stream has been given to ``send``."""
        if self.state not in (SYN_RCVD, OPEN) or self.fin_seq is not None:
            return
        # the peek reached the end: every byte is sent (snd_max covers a shell that missed a rewind)
        self.fin_seq = self.snd_max if seq_lt(self.snd_nxt, self.snd_max) else self.snd_nxt
        if self.state == OPEN:
            self._send_fin()
            if self.rto_at is None:
                self._arm(now)

    def delivered(self, n: int, space: int, now: int) -> None:
        """The kernel socket took ``n`` bytes of the payload ``on_segment`` returned, and has ``space``
        left: acknowledge them (and a FIN after the whole payload) with that window."""
        self.rcv_nxt = (self.rcv_nxt + n) & M32
        if self._pending_fin and n == self._pending_len:
            self.rcv_nxt = (self.rcv_nxt + 1) & M32
            self.fin_received = True
            self.events.append(("fin",))
            self._maybe_done(now)
        self._pending_fin = False
        self._ack(space)

    def window_update(self, space: int) -> None:
        """The kernel socket has room again: tell the client if the window grew by a segment or more."""
        if self.state == OPEN and not self.fin_received and space - self.rcv_wnd >= self.mss:
            self._ack(space)

    def deadline(self) -> int | None:
        """When ``on_timer`` must run next (None: nothing armed)."""
        times = [t for t in (self.rto_at, self.probe_at, self.linger_at) if t is not None]
        return min(times) if times else None

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    # ------------------------------------------------------------------ segments from the client
    def on_segment(self, seg: Segment, now: int) -> memoryview | None:
        """A client segment: acknowledgements processed, and its in-order payload returned (possibly
        empty, for a FIN) for the shell to write and report with ``delivered``; None: nothing to write."""
        if self.state == CLOSED:
            return None
        flags = seg.flags
        if flags & P.TCP_RST:
            return self._on_rst(seg)
        if flags & P.TCP_SYN:
            if seg.seq == self.irs and self.state in (CONNECTING, SYN_RCVD):
                if self.state == SYN_RCVD:
                    self._send_syn_ack()  # the client did not get ours
            else:
                self._ack(self.rcv_wnd)  # RFC 5961 4.2: a challenge ACK
            return None
        if not flags & P.TCP_ACK_FLAG or self.state == CONNECTING:
            return None
        if self.state == SYN_RCVD:
            if seg.ack != (self.iss + 1) & M32:
                self.out.append(self._rst_at(seg.ack))  # RFC 9293 3.10.7.3: not our SYN-ACK's
                return None
            self.state = OPEN
            self.snd_una = seg.ack
            self.snd_wnd = seg.window << self.snd_shift
            self._sample(seg.ack, now)
            self.rto_at, self.retries = None, 0
            self.events.append(("open",))
            if self.fin_seq is not None:
                self._send_fin()
                self._arm(now)
        else:
            self._on_ack(seg, now)
        if self.state == CLOSED:
            return None
        return self._on_data(seg)

    def _on_rst(self, seg: Segment) -> None:
        if seg.seq == self.rcv_nxt:
            self.events.append(("reset",))
            self._close()
        elif 0 < (seg.seq - self.rcv_nxt) & M32 < max(self.rcv_wnd, 1):
            self._ack(self.rcv_wnd)  # RFC 5961 3.2: in the window, not exact: challenge
        return None

    def _on_ack(self, seg: Segment, now: int) -> None:
        ack, una, nxt = seg.ack, self.snd_una, self.snd_max
        if seq_lt(nxt, ack):
            self._ack(self.rcv_wnd)  # acknowledges what was never sent (RFC 9293 3.10.7.4)
            return
        if seq_lt(ack, una):
            return  # an old acknowledgement
        window = seg.window << self.snd_shift
        if ack == una:
            dup = (nxt != una and not seg.payload and not seg.flags & P.TCP_FIN and window == self.snd_wnd)
            self.snd_wnd = window
            if dup:
                self.dupacks += 1
                if self.dupacks == DUP_ACKS and self.recover is None:
                    self._fast_retransmit(now)
            elif self.snd_wnd and self.probe_at is not None:
                self.probe_at = None
            self._check_zero_window(now)
            return
        acked = (ack - una) & M32
        if self.fin_seq is not None and ack == (self.fin_seq + 1) & M32:
            acked -= 1  # the FIN
        self.snd_una, self.snd_wnd, self.dupacks, self.retries = ack, window, 0, 0
        if seq_lt(self.snd_nxt, ack):
            self.snd_nxt = ack  # after a rewind: the client had these (the kernel's peek offset stops at 0 too)
        if acked:
            self.events.append(("acked", acked))
        self._sample(ack, now)
        if self.recover is not None:
            if seq_lt(ack, self.recover):
                self._resend_first()  # a partial ACK: the next hole (RFC 6582 3.2 step 3)
            else:
                self.recover = None  # every byte sent before the loss is in
                self.cwnd = self.ssthresh
        elif self.cwnd < self.ssthresh:
            self.cwnd += acked  # slow start, counting bytes (RFC 3465): one ACK may cover a 64 KB GSO packet
        else:
            self.cwnd += max(1, self.mss * acked // self.cwnd)  # congestion avoidance, counting bytes
        self.rto_at = None
        if self.snd_max != self.snd_una:
            self._arm(now)
        self._check_zero_window(now)
        self._maybe_done(now)

    def _on_data(self, seg: Segment) -> memoryview | None:
        payload, fin = seg.payload, bool(seg.flags & P.TCP_FIN)
        if not payload and not fin:
            return None
        if self.fin_received:
            self._ack(self.rcv_wnd)  # a repeated FIN (or data after it): our ACK was lost
            return None
        ahead = (seg.seq - self.rcv_nxt) & M32
        if ahead and ahead < 0x80000000:
            self._ack(self.rcv_wnd)  # a gap: dropped, the duplicate ACK asks for what is missing
            return None
        old = (self.rcv_nxt - seg.seq) & M32  # bytes already taken at its start
        if old >= len(payload) and not (fin and old == len(payload)):
            self._ack(self.rcv_wnd)  # all old: acknowledge again
            return None
        payload = payload[old:]
        self._pending_fin, self._pending_len = fin, len(payload)
        return payload

    # ------------------------------------------------------------------ timers
    def on_timer(self, now: int) -> None:
        """Retransmission, zero-window probe and linger deadlines that have come."""
        if self.linger_at is not None and now >= self.linger_at:
            self.linger_at = None
            self._close()
            return
        if self.rto_at is not None and now >= self.rto_at:
            self.retries += 1
            if self.retries > (SYN_ACK_RETRIES if self.state == SYN_RCVD else MAX_RETRIES):
                self.events.append(("timeout",))
                self.abort()
                return
            self.rto = min(self.rto * 2, RTO_MAX_NS)
            if self.snd_max == self.snd_una and self.state == OPEN:
                self.rto_at = None  # nothing in flight
            elif self.state == SYN_RCVD:
                self._send_syn_ack()
                self.rto_at = now + self.rto
            else:
                self._loss(now, timeout=True)
        if self.probe_at is not None and now >= self.probe_at:
            self._emit((self.snd_una - 1) & M32, P.TCP_ACK_FLAG)  # RFC 9293 3.8.6.1: a window probe
            self.probe_at = now + min(max(self.rto, RTO_MIN_NS) * 2, RTO_MAX_NS)

    def _fast_retransmit(self, now: int) -> None:
        """Three duplicate ACKs: the first unacknowledged segment again, the window halved, and no
        second fast retransmit until everything sent so far is acknowledged (RFC 5681 3.2, RFC 6582)."""
        flight = (self.snd_max - self.snd_una) & M32
        self.ssthresh = self.cwnd = max(flight // 2, 2 * self.mss)
        self.recover = self.snd_max
        self._timing = None  # Karn: no sample from retransmitted data
        self._resend_first()
        self.rto_at = now + self.rto

    def _resend_first(self) -> None:
        """The segment at ``snd_una`` again: ``("resend", n)`` asks the shell for its ``n`` bytes (peeked
        at offset 0) and to call ``resend``; a FIN alone is sent from here."""
        if self.fin_seq is not None and self.snd_una == self.fin_seq:
            self._emit(self.fin_seq, P.TCP_FIN | P.TCP_ACK_FLAG)
            return
        end = self.fin_seq if self.fin_seq is not None else self.snd_max
        n = min((end - self.snd_una) & M32, self.gso_bytes)  # a whole super-packet: losses come in 64 KB units
        if n and seq_lt(self.snd_una, self.snd_nxt):
            self.events.append(("resend", n))

    def resend(self, data: bytes | memoryview, now: int) -> None:
        """The bytes at ``snd_una`` the shell peeked for a ``("resend", n)``: sent again, ``snd_nxt`` kept."""
        if data and self.state == OPEN:
            self._emit(self.snd_una, P.TCP_ACK_FLAG | P.TCP_PSH, memoryview(data)[: self.gso_bytes])

    def _loss(self, now: int, timeout: bool) -> None:
        """A retransmission timeout: back to ``snd_una`` with one segment's window; the shell peeks again
        from there (``("rewind",)``). The duplicates it causes start no fast retransmit (``recover``)."""
        flight = (self.snd_max - self.snd_una) & M32
        self.ssthresh = max(flight // 2, 2 * self.mss)
        self.cwnd = self.mss if timeout else self.ssthresh
        self.dupacks = 0
        self.recover = self.snd_max if flight else None
        self._timing = None  # Karn: no sample from retransmitted data
        self.snd_nxt = self.snd_una
        if self.fin_seq is not None and self.snd_una == self.fin_seq:
            self._send_fin()  # only the FIN is missing
        elif flight:
            self.events.append(("rewind",))
        self.rto_at = now + self.rto

    def _check_zero_window(self, now: int) -> None:
        if self.snd_wnd == 0 and self.snd_max == self.snd_una and self.probe_at is None and self.state == OPEN:
            self.probe_at = now + max(self.rto, RTO_MIN_NS)

    def _sample(self, ack: int, now: int) -> None:
        """RFC 6298 2.2-2.3: a round-trip sample when ``ack`` covers the timed byte."""
        timing = self._timing
        if timing is None or not seq_lt(timing[0], ack):
            return
        self._timing = None
        rtt = max(now - timing[1], 1)
        if not self.srtt:
            self.srtt, self.rttvar = rtt, rtt // 2
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - rtt)) // 4
            self.srtt = (7 * self.srtt + rtt) // 8
        self.rto = min(max(self.srtt + max(4 * self.rttvar, MS), RTO_MIN_NS), RTO_MAX_NS)

    def _arm(self, now: int) -> None:
        self.rto_at = now + self.rto

    def _maybe_done(self, now: int) -> None:
        fin_acked = self.fin_seq is not None and self.snd_una == (self.fin_seq + 1) & M32
        if self.fin_received and fin_acked and self.linger_at is None:
            self.rto_at = self.probe_at = None
            self.linger_at = now + LINGER_NS

    def _close(self) -> None:
        self.state = CLOSED
        self.rto_at = self.probe_at = self.linger_at = None
        self.events.append(("closed",))

    # ------------------------------------------------------------------ segments to the client
    def _emit(self, seq: int, flags: int, payload: bytes | memoryview = b"", window: int | None = None) -> None:
        if window is None:
            window = min(self.rcv_wnd >> self.rcv_shift, 0xFFFF)
        self.out.append(S.build(*self.remote, *self.client, seq, self.rcv_nxt, flags, window, payload,
                                gso_size=self.gso_size))  # fmt: skip

    def _rst_at(self, seq: int) -> bytearray:
        return S.build(*self.remote, *self.client, seq, 0, P.TCP_RST, 0, gso_size=self.gso_size)

    def _ack(self, space: int) -> None:
        self.rcv_wnd = max(0, min(space, 0xFFFF << self.rcv_shift))
        self._emit(self.snd_nxt, P.TCP_ACK_FLAG)

    def _send_syn_ack(self) -> None:
        options = S.syn_options(self.mss, OUR_WSCALE if self.rcv_shift else -1)
        self.out.append(S.build(*self.remote, *self.client, self.iss, self.rcv_nxt, P.TCP_SYN | P.TCP_ACK_FLAG,
                                min(self.rcv_wnd, 0xFFFF), options=options, gso_size=self.gso_size))  # fmt: skip

    def _send_fin(self) -> None:
        assert self.fin_seq is not None
        self._emit(self.fin_seq, P.TCP_FIN | P.TCP_ACK_FLAG)
        self.snd_nxt = self.snd_max = (self.fin_seq + 1) & M32
