"""TCP connection tracking for the NAT: a transition table, and which timeout each state uses.

Theory of operation
-------------------
The NAT does not follow sequence numbers; it only needs to know whether a connection is being set up,
established or being torn down, to pick the idle timeout (RFC 5382 REQ-5, RFC 7857 2.2):

- *transitory* (240 s by default, never less than 4 min): a connection being opened (SYN seen one way)
  or closed (FIN one way, FIN both ways, or RST);
- *established* (7440 s by default, never less than 2 h 4 min): SYN seen both ways.

Segments are classified into seven kinds by direction and flags (``classify``); the table maps
(state, kind) to the next state. A SYN seen both ways, in either order, is an established connection,
which is also how TCP simultaneous open (RFC 9293 3.5, RFC 5382 REQ-2) comes out established. A plain
segment from the remote while only our SYN is known (``ack_in`` in SYN_OUT) is a connection that was
set up before the table knew it — after a restart restored the mapping from the journal — and is
picked up as established, as Linux conntrack does. Other plain segments (ACK, data) never change the
state; they only refresh the mapping. A new outbound SYN on a closing or reset connection starts over,
because clients reuse source ports. Every state change restarts the mapping's idle timer.

State is kept per mapping, not per connection: with endpoint-independent mapping, two connections from
one source port (TCP hole punching, SO_REUSEADDR) share it, and the first to close moves the mapping to
the transitory timeout. The other one then lives as long as it sends at least every 240 s.

The table, as text (a test checks that this list and ``TRANSITIONS`` agree)::

    SYN_OUT      syn_in  -> ESTABLISHED
    SYN_OUT      ack_in  -> ESTABLISHED
    SYN_OUT      rst     -> CLOSED
    ESTABLISHED  fin_out -> FIN_OUT
    ESTABLISHED  fin_in  -> FIN_IN
    ESTABLISHED  rst     -> CLOSED
    FIN_OUT      fin_in  -> TIME_WAIT
    FIN_OUT      rst     -> CLOSED
    FIN_OUT      syn_out -> SYN_OUT
    FIN_IN       fin_out -> TIME_WAIT
    FIN_IN       rst     -> CLOSED
    FIN_IN       syn_out -> SYN_OUT
    TIME_WAIT    syn_out -> SYN_OUT
    TIME_WAIT    rst     -> CLOSED
    CLOSED       syn_out -> SYN_OUT

Anything not listed keeps its state (NONE, the state of a UDP or ICMP mapping, never changes). No RST
or FIN ends a mapping at once: the transitory timeout lets late segments and retransmissions through
(RFC 7857 section 2.2 asks for a 4-minute wait after RST).
"""

from __future__ import annotations

from enum import IntEnum

from gw.packet import TCP_FIN, TCP_RST, TCP_SYN


class TcpState(IntEnum):
    """Connection state of a TCP mapping (NONE for UDP and ICMP mappings)."""

    NONE = 0  # not TCP
    SYN_OUT = 1  # outbound SYN seen: opening
    ESTABLISHED = 2  # SYN seen both ways
    FIN_OUT = 3  # client sent FIN: half closed
    FIN_IN = 4  # remote sent FIN: half closed
    TIME_WAIT = 5  # FIN both ways
    CLOSED = 6  # RST seen


class Seg(IntEnum):
    """What a segment means to the tracker."""

    OTHER = 0  # a plain outbound segment
    SYN_OUT = 1
    SYN_IN = 2
    FIN_OUT = 3
    FIN_IN = 4
    RST = 5
    ACK_IN = 6  # a plain inbound segment


S, K = TcpState, Seg
TRANSITIONS: dict[tuple[TcpState, Seg], TcpState] = {
    (S.SYN_OUT, K.SYN_IN): S.ESTABLISHED,
    (S.SYN_OUT, K.ACK_IN): S.ESTABLISHED,
    (S.SYN_OUT, K.RST): S.CLOSED,
    (S.ESTABLISHED, K.FIN_OUT): S.FIN_OUT,
    (S.ESTABLISHED, K.FIN_IN): S.FIN_IN,
    (S.ESTABLISHED, K.RST): S.CLOSED,
    (S.FIN_OUT, K.FIN_IN): S.TIME_WAIT,
    (S.FIN_OUT, K.RST): S.CLOSED,
    (S.FIN_OUT, K.SYN_OUT): S.SYN_OUT,
    (S.FIN_IN, K.FIN_OUT): S.TIME_WAIT,
    (S.FIN_IN, K.RST): S.CLOSED,
    (S.FIN_IN, K.SYN_OUT): S.SYN_OUT,
    (S.TIME_WAIT, K.SYN_OUT): S.SYN_OUT,
    (S.TIME_WAIT, K.RST): S.CLOSED,
    (S.CLOSED, K.SYN_OUT): S.SYN_OUT,
}
del S, K

ESTABLISHED_STATES = frozenset({TcpState.ESTABLISHED})


def _flatten() -> tuple[int, ...]:
    """TRANSITIONS as a flat tuple indexed by state * len(Seg) + kind: one index on the data path."""
    return tuple(int(TRANSITIONS.get((s, k), s)) for s in TcpState for k in Seg)


NEXT_STATE = _flatten()
SEG_KINDS = len(Seg)


def classify(flags: int, outbound: bool) -> int:
    """The ``Seg`` kind of a segment with these TCP flags, travelling outbound or inbound."""
    if flags & TCP_RST:
        return Seg.RST
    if flags & TCP_SYN:
        return Seg.SYN_OUT if outbound else Seg.SYN_IN
    if flags & TCP_FIN:
        return Seg.FIN_OUT if outbound else Seg.FIN_IN
    return Seg.OTHER if outbound else Seg.ACK_IN


def next_state(state: int, flags: int, outbound: bool) -> int:
    """The state after a segment with ``flags`` in the given direction."""
    return NEXT_STATE[state * SEG_KINDS + classify(flags, outbound)]
