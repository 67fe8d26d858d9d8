"""One NAT mapping as a slotted object, and the int keys the tables use.

Two implementations of one class: ``PyMapping`` here (the specification) and, when it was built, the
extension type in ``gw/_mapping.pyx``, which the cyclic garbage collector does not track (a mapping holds
no object that could close a cycle). ``Mapping`` is whichever is in use.

A mapping's identity is two ``flow_key`` ints: ``key`` (protocol, internal address, internal port) and
``ext_key`` (protocol, external address, external port). Everything that changes per packet (last seen,
counters, TCP state, remembered remotes) is an attribute updated in place; nothing here is journaled
(see ``gw.nat``). TCP mappings carry two more fields for RST validation (RFC 5961 3.2), so UDP and ICMP
mappings do not pay for them.
"""

from __future__ import annotations

# Counters pack packets and bytes in one int (packets << 48 | bytes): one add per packet, one object per
# direction. Bytes carry into packets after 256 TiB through one mapping, far beyond any real flow.
COUNT_SHIFT = 48
ONE_PACKET = 1 << COUNT_SHIFT
BYTES_MASK = ONE_PACKET - 1
NO_REMOTE = -1  # matches no remote: a mapping restored without its remotes waits for the next outbound packet
NO_ACK = -1  # a TCP mapping that has not seen the client's acknowledgement yet (restored): no RST is trusted


def flow_key(proto: int, addr: int, port: int) -> int:
    """A (protocol, address, port) endpoint as one int, the key of both mapping tables."""
    return proto << 48 | addr << 16 | port


class PyMapping:
    """One NAT mapping. ``key`` and ``ext_key`` are ``flow_key`` ints; counters are packed (see ONE_PACKET)."""

    __slots__ = ("key", "ext_key", "session", "remote", "remotes", "created", "last_seen", "state", "out", "inb")

    def __init__(
        self,
        key: int,
        ext_key: int,
        session: int,
        remote: int,
        created: int,
        last_seen: int,
        state: int,
        out: int = 0,
        inb: int = 0,
    ) -> None:
        self.key = key
        self.ext_key = ext_key
        self.session = session
        self.remote = remote  # first remote (masked), NO_REMOTE, or 0 under endpoint-independent filtering
        self.remotes: set[int] | None = None  # further remotes, when there are any
        self.created = created  # monotonic ns (gw.nat: the NAT's clock)
        self.last_seen = last_seen
        self.state = state  # TcpState; NONE for UDP and ICMP
        self.out = out  # outbound packets << 48 | bytes
        self.inb = inb  # inbound

    @property
    def proto(self) -> int:
        return self.key >> 48

    @property
    def int_addr(self) -> int:
        return self.key >> 16 & 0xFFFFFFFF

    @property
    def int_port(self) -> int:
        return self.key & 0xFFFF

    @property
    def ext_addr(self) -> int:
        return self.ext_key >> 16 & 0xFFFFFFFF

    @property
    def ext_port(self) -> int:
        return self.ext_key & 0xFFFF

    def remote_count(self) -> int:
        """How many remotes this mapping remembers for filtering."""
        return (self.remote > 0) + (0 if self.remotes is None else len(self.remotes))

    def __repr__(self) -> str:
        from gw.inet import ntoa

        return (
            f"<{type(self).__name__} {self.proto} {ntoa(self.int_addr)}:{self.int_port} -> "
            f"{ntoa(self.ext_addr)}:{self.ext_port} session={self.session}>"
        )


class PyTcpMapping(PyMapping):
    """A TCP mapping: also what an inbound RST must match to change its state (RFC 5961 3.2, as conntrack).

    ``ack`` is, in SYN_OUT, the client's initial sequence number + 1 (what a RST answering the SYN must
    acknowledge, RFC 9293 3.10.7.3); afterwards the client's latest acknowledgement, i.e. the left edge
    of its receive window. ``max_window`` is the largest window the client can advertise (65535 shifted
    by the window scale of its SYN, RFC 7323).
    """

    __slots__ = ("ack", "max_window")

    def __init__(self, *args: int) -> None:
        super().__init__(*args)
        self.ack = NO_ACK
        self.max_window = 0xFFFF


# The compiled twins (gw/_mapping.pyx) when built: untracked by the cyclic GC, 16 B smaller each.
try:
    from gw._mapping import Mapping, TcpMapping
except ImportError:  # not built: the Python classes serve
    Mapping, TcpMapping = PyMapping, PyTcpMapping
COMPILED = Mapping is not PyMapping
