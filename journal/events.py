"""The journal's event schema: one tagged union of msgspec Structs, past-tense facts.

Every event carries ``seq`` (a gap-free sequence number, starting at 1 per journal) and ``at_ns``
(wall clock, integer nanoseconds since the Unix epoch). Events are encoded ``array_like`` with small
integer tags: the tag is the first array element, then the fields in declaration order (``seq``,
``at_ns`` first). Field names live here only; the tools print them.

Addresses are IPv4 as ``int`` (host order), ports are ``int``, protocols are IP protocol numbers
(1 ICMP, 6 TCP, 17 UDP). For ICMP echo the "port" is the echo identifier.

Schema evolution (msgspec rules, enforced by ``tests/unit/test_events.py`` against a journal the
first version wrote, committed in ``tests/vectors/journal/``):

1. Fields are only ever appended to the end of a struct, and every appended field has a default.
2. A field is never removed, reordered, renamed in meaning or retyped.
3. Tags are never reused. If an event's meaning changes, add a new event type with a new tag.
"""

from __future__ import annotations

from typing import Union

import msgspec

__all__ = [
    "DECODER",
    "ENCODER",
    "Event",
    "GatewayStarted",
    "GatewayStopped",
    "HEARTBEAT_INTERVAL_S",
    "Heartbeat",
    "PACKED_COLUMNS",
    "JournalEvent",
    "MappingCreated",
    "MappingExpired",
    "QuotaHit",
    "SessionClosed",
    "SessionOpened",
    "SessionRefused",
    "Snapshot",
    "SnapshotTaken",
    "rest_until",
]

# How often a running gateway journals a Heartbeat while it has traffic: recovery then knows the crash
# came at most this long (plus the fsync interval) after the last event, even in a quiet journal.
HEARTBEAT_INTERVAL_S = 5


def rest_until(expired_at_ns: int, reuse_delay_ns: int) -> int:
    """When an external port freed at ``expired_at_ns`` (its MappingExpired) may be handed out again.

    The one port-rest rule (RFC 6056 / RFC 7857): the NAT, ``gw-replay verify`` and the audit tools use it.
    """
    return expired_at_ns + reuse_delay_ns


class Event(msgspec.Struct, frozen=True, array_like=True, tag_field="t", gc=False):
    """Fields common to every journal event."""

    seq: int  # gap-free, +1 per event; recovery checks it
    at_ns: int  # wall clock, ns since the epoch


class GatewayStarted(Event, frozen=True, tag=1):
    """The daemon started; ``recovered`` says whether it folded a previous journal."""

    version: str
    ext_addrs: list[int] = []  # the public address pool
    recovered: bool = False
    unclean: bool = False  # the previous run ended without GatewayStopped


class GatewayStopped(Event, frozen=True, tag=2):
    """The daemon stopped cleanly."""

    reason: str = "shutdown"


class SessionOpened(Event, frozen=True, tag=3):
    """A client authenticated and was given a VPN address."""

    session: int  # gateway-unique session number
    client: str  # the client's configured name
    fingerprint: str  # sha256 of its certificate, hex
    remote_addr: str  # where the tunnel came from, "198.51.100.7"
    remote_port: int
    vpn_addr: int


class SessionRefused(Event, frozen=True, tag=4):
    """A tunnel was refused before a session existed (unknown identity, revoked, pool empty...)."""

    fingerprint: str
    remote_addr: str
    remote_port: int
    reason: str
    client: str = ""


class SessionClosed(Event, frozen=True, tag=5):
    """A session ended; counters are packets and bytes through the tunnel."""

    session: int
    client: str
    reason: str
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0


class MappingCreated(Event, frozen=True, tag=6):
    """The NAT bound internal endpoint (int_addr, int_port) to external (ext_addr, ext_port).

    ``remote_*`` is the first destination, recorded only when the operator asks for destination
    logging (0 otherwise): RFC 6888 leaves that to local policy.
    """

    proto: int
    int_addr: int
    int_port: int
    ext_addr: int
    ext_port: int
    client: str = ""
    session: int = 0
    remote_addr: int = 0
    remote_port: int = 0


class MappingExpired(Event, frozen=True, tag=7):
    """A mapping ended; its external port then rests for the reuse delay before it is handed out again.

    ``reason``: "idle" (timeout), "tcp_closed", "session_closed", "stale_at_recovery", "shutdown".
    Counters are what went through the mapping: outbound = client to internet.
    """

    proto: int
    ext_addr: int
    ext_port: int
    reason: str
    packets_out: int = 0
    bytes_out: int = 0
    packets_in: int = 0
    bytes_in: int = 0


class QuotaHit(Event, frozen=True, tag=8):
    """A client reached its mapping quota (RFC 6888 REQ-4, all protocols together); the new flow was refused.

    Journaled for the first flow refused, and again only after the client dropped below the quota.
    """

    proto: int
    int_addr: int
    int_port: int
    quota: int
    client: str = ""
    session: int = 0


class SnapshotTaken(Event, frozen=True, tag=9):
    """A snapshot file holding the state after event ``upto_seq`` was made durable."""

    upto_seq: int
    file: str
    mappings_count: int = 0


class Heartbeat(Event, frozen=True, tag=10):
    """The gateway was running at ``at_ns`` (journaled every HEARTBEAT_INTERVAL_S while there is traffic).

    No table state: it tells recovery when the gateway really went down (``Recovered.down_since_ns``), so
    ``resume`` does not end a flow that was busy until the crash because the journal was quiet before it.
    ``mappings_count`` is the live table's size then, for readers.
    """

    mappings_count: int = 0


JournalEvent = Union[  # noqa: UP007 - msgspec needs a Union object at runtime
    GatewayStarted,
    GatewayStopped,
    SessionOpened,
    SessionRefused,
    SessionClosed,
    MappingCreated,
    MappingExpired,
    QuotaHit,
    SnapshotTaken,
    Heartbeat,
]

# Reuse one encoder and one typed decoder (msgspec performance tips).
ENCODER = msgspec.msgpack.Encoder()
DECODER = msgspec.msgpack.Decoder(list[JournalEvent])


# A snapshot file stores each integer column packed (journal.segments), with this array typecode: the
# widest value each column can hold.
PACKED_COLUMNS = {
    "proto": "B", "int_addr": "I", "int_port": "H", "ext_addr": "I", "ext_port": "H", "session": "q",
    "created_ns": "q", "last_seen_ns": "q", "tcp_state": "B", "packets_out": "Q", "bytes_out": "Q",
    "packets_in": "Q", "bytes_in": "Q", "remote_addr": "I", "remote_port": "H", "rest_proto": "B",
    "rest_ext_addr": "I", "rest_ext_port": "H", "rest_until_ns": "q", "quota_flagged": "I",
}  # fmt: skip


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """The NAT table and open sessions after event ``upto_seq``, stored column by column.

    Columns compress far better than rows (runs of equal protocols, addresses and nearby times) and
    decode into plain lists without a per-row object. Row i of the mapping columns is one mapping;
    row j of the ``rest_*`` columns is one external port still resting after its mapping ended.
    """

    upto_seq: int
    at_ns: int
    # live mappings
    proto: list[int] = []
    int_addr: list[int] = []
    int_port: list[int] = []
    ext_addr: list[int] = []
    ext_port: list[int] = []
    session: list[int] = []
    created_ns: list[int] = []
    last_seen_ns: list[int] = []
    tcp_state: list[int] = []
    packets_out: list[int] = []
    bytes_out: list[int] = []
    packets_in: list[int] = []
    bytes_in: list[int] = []
    remote_addr: list[int] = []
    remote_port: list[int] = []
    client: list[str] = []  # the holder's name, for readers of the file; restore takes owners from sessions
    # external ports resting after their mapping ended (reuse delay)
    rest_proto: list[int] = []
    rest_ext_addr: list[int] = []
    rest_ext_port: list[int] = []
    rest_until_ns: list[int] = []
    # open sessions (the daemon's, for the audit trail after a crash)
    sessions: list[SessionOpened] = []
    # clients whose QuotaHit is already journaled (no second one until they drop below the quota)
    quota_flagged: list[int] = []
