"""gw.packet: a vector table of real packets run both ways, the bounded reader, RFC 1071/1624 checksums."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass

import dpkt
import pytest

from gw import packet as P
from gw.packet import Drop
from tests.helpers.packets import CLIENT, PUBLIC, ROUTER, SERVER, A, fresh_l4_checksum, inet_sum, verify

# ---------------------------------------- the vector table
#
# Every vector is a real packet: captured with offloads off on both sides of a Linux NAT
# (shared/vectors/kernel-nat, inside.pcap / outside.pcap), client 10.66.77.2, public 198.51.100.1,
# router 198.51.100.254, server 203.0.113.10. Each one is checked both ways: the builder given the
# fields produces exactly these bytes, and the readers given these bytes return exactly the fields.


def ping_payload(n: int, stamp: str) -> bytes:
    """Linux ping's payload: a 16-byte timestamp, then bytes counting up from 0x10."""
    return bytes.fromhex(stamp) + bytes((0x10 + i) & 0xFF for i in range(n - 16))


@dataclass(frozen=True)
class Vector:
    name: str
    hex: str
    build: Callable[[], bytearray]
    fields: tuple  # what the gw.packet reader for this protocol returns

    @property
    def wire(self) -> bytes:
        return bytes.fromhex(self.hex.replace(" ", "").replace("\n", ""))


TCP_SYN_OPTS = bytes.fromhex("020404c40402080a8cb1e771000000000103030a")  # MSS 1220, SACK-ok, TS, NOP, WS 10
TCP_SYNACK_OPTS = bytes.fromhex("020404d80402080ace3202f88cb1e7710103030a")  # MSS 1240, ...
FRAG_NEEDED_QUOTE_HEAD = (
    "45000594 00004000 3f01d029 c6336401 cb00710a"  # the ping as the router got it: 1428 B, DF, ttl 63
    "08008294 110e0001"  # echo request id 0x110e seq 1
)

VECTORS = [
    Vector(
        "udp: client 10.66.77.2:36670 -> 203.0.113.10:9, one byte 'x', DF (inside.pcap #480)",
        "4500001d c0a74000 4011e6d9 0a424d02 cb00710a"  # IPv4: len 29, id 0xc0a7, DF, ttl 64, udp, csum e6d9
        "8f3e0009 00096545"  # UDP: 36670 -> 9, len 9, csum 0x6545
        "78",  # 'x'
        lambda: P.build_udp(A(CLIENT), A(SERVER), 36670, 9, b"x", ident=0xC0A7, flags_frag=P.IP_DF),
        (0x45, 29, P.IP_DF, P.PROTO_UDP, 0xE6D9, A(CLIENT), A(SERVER), 36670, 9, 0x6545),
    ),
    Vector(
        "tcp SYN with MSS 1220, SACK-permitted, timestamps, window scale 10 (inside.pcap #16)",
        "4500003c bc124000 4006eb5a 0a424d02 cb00710a"  # IPv4: len 60, id 0xbc12, DF, ttl 64, tcp
        "9a5b0035 49946ab6 00000000 a002fc94 f60a0000"  # TCP: 39515 -> 53, seq, doff 10, SYN, win 64660
        "020404c4 0402080a 8cb1e771 00000000 0103030a",  # options
        lambda: P.build_tcp(
            A(CLIENT),
            A(SERVER),
            39515,
            53,
            flags=P.TCP_SYN,
            seq=0x49946AB6,
            window=0xFC94,
            options=TCP_SYN_OPTS,
            ident=0xBC12,
            flags_frag=P.IP_DF,
        ),
        (0x45, 60, P.IP_DF, P.PROTO_TCP, 0xEB5A, A(CLIENT), A(SERVER), 39515, 53, P.TCP_SYN, 0xF60A),
    ),
    Vector(
        "tcp SYN-ACK from the server to the public address, MSS 1240 (outside.pcap #15)",
        "4500003c 00004000 3f06d57c cb00710a c6336401"  # IPv4: id 0, DF, ttl 63
        "00359a5b dd4ec5a6 49946ab7 a012fe3c ad2c0000"  # TCP: 53 -> 39515, SYN|ACK, win 65084, csum ad2c
        "020404d8 0402080a ce3202f8 8cb1e771 0103030a",
        lambda: P.build_tcp(
            A(SERVER),
            A(PUBLIC),
            53,
            39515,
            flags=P.TCP_SYN | P.TCP_ACK_FLAG,
            seq=0xDD4EC5A6,
            ack=0x49946AB7,
            window=0xFE3C,
            options=TCP_SYNACK_OPTS,
            ttl=63,
            flags_frag=P.IP_DF,
        ),
        (0x45, 60, P.IP_DF, P.PROTO_TCP, 0xD57C, A(SERVER), A(PUBLIC), 53, 39515, 0x12, 0xAD2C),
    ),
    Vector(
        "tcp RST|ACK from a closed port, window 0, no options (inside.pcap #483)",
        "45000028 00004000 3e06a981 cb00710a 0a424d02"  # IPv4: len 40, ttl 62
        "0051ab1e 00000000 3b653b10 50140000 fa9c0000",  # TCP: 81 -> 43806, ack, RST|ACK, win 0
        lambda: P.build_tcp(
            A(SERVER),
            A(CLIENT),
            81,
            43806,
            flags=P.TCP_RST | P.TCP_ACK_FLAG,
            ack=0x3B653B10,
            window=0,
            ttl=62,
            flags_frag=P.IP_DF,
        ),
        (0x45, 40, P.IP_DF, P.PROTO_TCP, 0xA981, A(SERVER), A(CLIENT), 81, 43806, 0x14, 0xFA9C),
    ),
    Vector(
        "icmp echo request id 0x110a seq 1, 56 bytes of ping payload (inside.pcap #2)",
        "45000054 f5e24000 4001b177 0a424d02 cb00710a"  # IPv4: len 84, id 0xf5e2, DF, icmp
        "08002b17 110a0001"  # type 8 code 0 csum 2b17, id 0x110a, seq 1
        "f098036b 00000000 03070600 00000000"  # ping's timestamp
        "10111213 14151617 18191a1b 1c1d1e1f 20212223 24252627 28292a2b 2c2d2e2f 30313233 34353637",
        # build_icmp_echo's ``ident`` is the echo identifier, so it cannot set the IP ID: use build_icmp
        lambda: P.build_icmp(
            A(CLIENT),
            A(SERVER),
            P.ICMP_ECHO_REQUEST,
            0,
            struct.pack("!HH", 0x110A, 1),
            ping_payload(56, "f098036b000000000307060000000000"),
            ident=0xF5E2,
            flags_frag=P.IP_DF,
        ),
        (0x45, 84, P.IP_DF, P.PROTO_ICMP, 0xB177, A(CLIENT), A(SERVER), 8, 0, 0x2B17, 0x110A),
    ),
    Vector(
        "icmp port unreachable (3/3), tos 0xc0, quoting the whole udp datagram above (inside.pcap #481)",
        "45c00039 2a1f0000 3e01be96 cb00710a 0a424d02"  # IPv4: tos c0, len 57, ttl 62
        "03039066 00000000"  # type 3 code 3, csum 9066, unused
        "4500001d c0a74000 3e11e8d9 0a424d02 cb00710a 8f3e0009 00096545 78",  # quote (ttl 62 at the server)
        lambda: P.build_icmp_error(
            A(SERVER),
            A(CLIENT),
            P.ICMP_DEST_UNREACH,
            P.ICMP_PORT_UNREACH,
            bytes.fromhex("4500001dc0a740003e11e8d90a424d02cb00710a8f3e00090009654578"),
            tos=0xC0,
            ident=0x2A1F,
            ttl=62,
        ),
        (0x45, 57, 0, P.PROTO_ICMP, 0xBE96, A(SERVER), A(CLIENT), 3, 3, 0x9066, 0),
    ),
    Vector(
        "icmp fragmentation needed (3/4), next-hop MTU 1280, from the router, quote cut at 548 bytes "
        "(RFC 1812 4.3.2.3: the message fits in 576) (outside.pcap #11)",
        "45c00240 110f0000 40011188 c63364fe c6336401"  # IPv4: tos c0, len 576, ttl 64, router -> public
        "03040ec9 00000500"  # type 3 code 4, csum 0ec9, unused 0, next-hop MTU 0x0500
        + FRAG_NEEDED_QUOTE_HEAD
        + "f198036b 00000000 fe3b0600 00000000"  # timestamp, then the ping pattern 10 11 12 ... to 548 bytes
        + ping_payload(548 - 28, "f198036b00000000fe3b060000000000")[16:].hex(),
        lambda: P.build_icmp_error(
            A(ROUTER),
            A(PUBLIC),
            P.ICMP_DEST_UNREACH,
            P.ICMP_FRAG_NEEDED,
            # the whole 1428-byte ping; the builder quotes the first 548 bytes of it
            bytes.fromhex(FRAG_NEEDED_QUOTE_HEAD.replace(" ", ""))
            + ping_payload(1400, "f198036b00000000fe3b060000000000"),
            mtu=1280,
            tos=0xC0,
            ident=0x110F,
        ),
        (0x45, 576, 0, P.PROTO_ICMP, 0x1188, A(ROUTER), A(PUBLIC), 3, 4, 0x0EC9, 0),
    ),
]

FRAGMENT_VECTOR = (
    # the last fragment of a 3008-byte ping: offset 0x172 * 8 = 2960, MF clear, 48 bytes (inside.pcap #8)
    "45000044 f6020172 4001eff5 0a424d02 cb00710a"
    "88898a8b 8c8d8e8f 90919293 94959697 98999a9b 9c9d9e9f"
    "a0a1a2a3 a4a5a6a7 a8a9aaab acadaeaf b0b1b2b3 b4b5b6b7"
)


def _read(pkt: bytes | bytearray) -> tuple:
    proto = pkt[P.IP_PROTO]
    if proto == P.PROTO_UDP:
        return P.read_v4_udp(pkt)
    if proto == P.PROTO_TCP:
        return P.read_v4_tcp(pkt)
    return P.read_v4_icmp(pkt)


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name.split(" (")[0])
def test_vector_builder_bytes_equal_captured_packet(v: Vector) -> None:
    assert bytes(v.build()) == v.wire


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: v.name.split(" (")[0])
def test_vector_readers_return_the_annotated_fields(v: Vector) -> None:
    pkt = bytearray(v.wire)
    assert P.check_ipv4(pkt) == 0
    assert P.ip_header_len(pkt) == 20
    assert _read(pkt) == v.fields
    verify(pkt)  # dpkt re-parse + independent checksum recomputation agree with the capture


@pytest.mark.parametrize(
    "v", [v for v in VECTORS if v.wire[9] != P.PROTO_ICMP], ids=lambda v: v.name.split(" (")[0]
)
def test_vector_l4_checksum_matches_the_captured_tcp_udp_checksum(v: Vector) -> None:
    pkt = v.wire
    at = 20 + (P.TCP_CSUM if pkt[9] == P.PROTO_TCP else P.UDP_CSUM)
    assert P.l4_checksum(pkt) == struct.unpack_from("!H", pkt, at)[0]


def test_vector_non_first_fragment_builds_and_reads_back() -> None:
    wire = bytes.fromhex(FRAGMENT_VECTOR.replace(" ", ""))
    built = P.build_ipv4(A(CLIENT), A(SERVER), P.PROTO_ICMP, wire[20:], ident=0xF602, flags_frag=0x172)
    assert bytes(built) == wire
    assert P.check_ipv4(wire) == 0
    vihl, total, frag, proto, _csum, src, dst = P.read_v4(wire)
    assert (vihl, total, frag & P.IP_OFFSET_MASK, frag & P.IP_MF, proto) == (0x45, 68, 0x172, 0, P.PROTO_ICMP)
    assert (src, dst) == (A(CLIENT), A(SERVER))
    assert bytes(P.fix_checksums(bytearray(wire))) == wire  # a fragment's payload is not touched


# ---------------------------------------- the bounded reader


def _good() -> bytearray:
    return P.build_udp(A(CLIENT), A(SERVER), 40000, 53, b"hello")


def _with(pkt: bytearray, at: int, fmt: str, value: int, fix: bool = True) -> bytearray:
    pkt = bytearray(pkt)
    struct.pack_into(fmt, pkt, at, value)
    if fix:
        struct.pack_into("!H", pkt, P.IP_CSUM, 0)
        struct.pack_into("!H", pkt, P.IP_CSUM, P.checksum(pkt, 0, (pkt[0] & 15) * 4))
    return pkt


BAD_HEADERS = [
    ("empty", bytearray(), Drop.TRUNCATED),
    ("19 bytes", _good()[:19], Drop.TRUNCATED),
    ("IPv6 version nibble", _with(_good(), 0, "!B", 0x65), Drop.BAD_VERSION),
    ("IHL 4 (16-byte header)", _with(_good(), 0, "!B", 0x44), Drop.BAD_VERSION),
    ("IHL 15 past a 33-byte buffer", _with(_good(), 0, "!B", 0x4F, fix=False), Drop.TRUNCATED),
    ("total length 19 < header", _with(_good(), 2, "!H", 19), Drop.BAD_LENGTH),
    ("total length past the buffer", _with(_good(), 2, "!H", 34), Drop.BAD_LENGTH),
    (
        "header checksum off by one",
        _with(_good(), P.IP_CSUM, "!H", P.get_u16(_good(), 10)[0] ^ 1, fix=False),
        Drop.BAD_CHECKSUM,
    ),
    ("ttl changed, checksum not", _with(_good(), P.IP_TTL, "!B", 1, fix=False), Drop.BAD_CHECKSUM),
]


@pytest.mark.parametrize(
    ("pkt", "reason"), [(p, r) for _, p, r in BAD_HEADERS], ids=[n for n, _, _ in BAD_HEADERS]
)
def test_check_ipv4_names_the_drop_reason_for_each_malformed_header(pkt: bytearray, reason: Drop) -> None:
    assert P.check_ipv4(pkt) == reason


def test_check_ipv4_accepts_link_padding_past_total_length_and_options() -> None:
    assert P.check_ipv4(_good() + b"\0" * 6) == 0
    with_opts = P.build_ipv4(A(CLIENT), A(SERVER), P.PROTO_UDP, b"\0" * 8, options=b"\x01\x01\x01\x00")
    assert P.check_ipv4(with_opts) == 0 and P.ip_header_len(with_opts) == 24
    assert dpkt.ip.IP(bytes(with_opts)).hl == 6


def test_check_ipv4_never_raises_on_random_bytes() -> None:
    rng = random.Random(1071)
    for n in range(0, 64):
        for _ in range(20):
            buf = bytes(rng.randrange(256) for _ in range(n))
            assert P.check_ipv4(buf) in {0, *Drop}


# ---------------------------------------- checksums


def test_rfc1071_section3_numerical_example() -> None:
    # RFC 1071 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2; the checksum is its complement
    assert P.checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_rfc1071_odd_length_is_padded_with_a_zero_byte() -> None:
    assert (
        P.checksum(b"\x12\x34\x56") == P.checksum(b"\x12\x34\x56\x00") == ~inet_sum(b"\x12\x34\x56") & 0xFFFF
    )


def test_checksum_matches_a_plain_loop_for_random_buffers() -> None:
    rng = random.Random(5)
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))
        init = rng.randrange(0, 0x3FFFF)
        assert P.checksum(data, initial=init) == ~inet_sum(data, init) & 0xFFFF, (data.hex(), init)


def test_checksum_of_a_buffer_that_sums_to_negative_zero_is_zero() -> None:
    # ffff is ones'-complement -0: the sum is 0xffff, the checksum 0x0000 (not 0xffff)
    assert P.checksum(b"\xff\xff") == 0
    assert P.checksum(b"\x12\x34\xed\xcb") == 0


def test_rfc1624_section4_eqn3_gives_0000_where_eqn2_gave_ffff() -> None:
    # RFC 1624 4: HC = 0xDD2F, m = 0x5555 -> m' = 0x3285; recomputation gives 0x0000, so must eqn. 3
    assert P.csum_adjust(0xDD2F, (~0x5555 & 0xFFFF) + 0x3285) == 0x0000


def test_rfc1624_incremental_address_and_port_rewrite_equals_full_recomputation() -> None:
    rng = random.Random(1624)
    for _ in range(300):
        old_a, new_a = rng.getrandbits(32), rng.getrandbits(32)
        old_p, new_p = rng.randrange(65536), rng.randrange(65536)
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        pkt = (
            P.build_udp(old_a, A(SERVER), old_p, 53, payload)
            if rng.random() < 0.5
            else P.build_tcp(old_a, A(SERVER), old_p, 80, payload=payload)
        )
        proto = pkt[9]
        at = 20 + (P.TCP_CSUM if proto == P.PROTO_TCP else P.UDP_CSUM)
        c = P.get_u16(pkt, at)[0]
        new_c = P.csum_adjust(c, P.addr_delta(old_a, new_a) + (~old_p & 0xFFFF) + new_p)
        struct.pack_into("!I", pkt, 12, new_a)
        struct.pack_into("!H", pkt, 20, new_p)
        expect = fresh_l4_checksum(pkt[12:16], pkt[16:20], proto, bytes(pkt[20:]))
        if proto == P.PROTO_UDP and new_c == 0:
            new_c = 0xFFFF  # the UDP rule for a computed 0 (RFC 768)
        # eqn. 3 and recomputation agree except that recomputation never yields -0 (0xffff) for TCP
        assert new_c == expect or {new_c, expect} == {0, 0xFFFF}, (new_c, expect)


def test_rfc768_udp_checksum_that_computes_to_zero_is_sent_as_ffff() -> None:
    base = P.build_udp(A(CLIENT), A(SERVER), 1000, 2000, b"\0\0")
    s = ~P.get_u16(base, 26)[0] & 0xFFFF  # ones'-complement sum of everything with payload word 0
    word = (0xFFFF - s) % 0xFFFF or 0xFFFF  # make the sum -0, so the checksum computes to 0
    pkt = P.build_udp(A(CLIENT), A(SERVER), 1000, 2000, struct.pack("!H", word))
    assert P.get_u16(pkt, 26)[0] == 0xFFFF
    assert P.l4_checksum(pkt) == 0xFFFF
    verify(pkt)


def test_build_udp_zero_checksum_sends_0000_meaning_no_checksum() -> None:
    pkt = P.build_udp(A(CLIENT), A(SERVER), 1, 2, b"abc", zero_checksum=True)
    assert P.get_u16(pkt, 26)[0] == 0
    assert dpkt.ip.IP(bytes(pkt)).data.sum == 0


def test_fix_checksums_restores_every_checksum_after_a_raw_rewrite() -> None:
    for pkt in (
        P.build_udp(A(CLIENT), A(SERVER), 40000, 53, b"q"),
        P.build_tcp(A(CLIENT), A(SERVER), 40000, 80, payload=b"GET /"),
        P.build_icmp_echo(A(CLIENT), A(SERVER), 7, 1, b"ping"),
    ):
        good = bytes(pkt)
        l4_csum = 20 + {P.PROTO_UDP: P.UDP_CSUM, P.PROTO_TCP: P.TCP_CSUM, P.PROTO_ICMP: P.ICMP_CSUM}[pkt[9]]
        struct.pack_into("!H", pkt, P.IP_CSUM, 0xBEEF)
        struct.pack_into("!H", pkt, l4_csum, 0xBEEF)
        P.fix_checksums(pkt)
        assert bytes(pkt) == good
        verify(pkt)


def test_pseudo_header_sum_is_rfc768_src_dst_zero_proto_length() -> None:
    src, dst = A(CLIENT), A(SERVER)
    want = inet_sum(struct.pack("!IIBBH", src, dst, 0, 17, 30))
    got = P.pseudo_header_sum(src, dst, 17, 30)
    assert (got % 0xFFFF or 0xFFFF) == (want % 0xFFFF or 0xFFFF)


# ---------------------------------------- builders' small contracts


def test_icmp_error_quote_is_capped_at_548_bytes_rfc1812_4_3_2_3() -> None:
    big = P.build_udp(A(PUBLIC), A(SERVER), 40000, 9, b"\x55" * 2000)
    err = P.build_icmp_error(A(ROUTER), A(PUBLIC), P.ICMP_TIME_EXCEEDED, 0, big)
    assert len(err) == 576 == P.IP_MIN_HLEN + P.ICMP_HLEN + P.ICMP_QUOTE_MAX
    assert bytes(err[28:]) == bytes(big[:548])
    verify(err)


def test_icmp_error_carries_next_hop_mtu_only_for_fragmentation_needed_rfc1191() -> None:
    orig = P.build_udp(A(PUBLIC), A(SERVER), 40000, 9, b"x")
    fn = P.build_icmp_error(A(ROUTER), A(PUBLIC), P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, orig, mtu=1280)
    pu = P.build_icmp_error(A(ROUTER), A(PUBLIC), P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH, orig, mtu=1280)
    assert struct.unpack_from("!HH", fn, 24) == (0, 1280)
    assert struct.unpack_from("!HH", pu, 24) == (0, 0)


def test_build_icmp_echo_sets_identifier_and_sequence_and_reply_type() -> None:
    req = P.build_icmp_echo(A(CLIENT), A(SERVER), 0x110A, 1, b"abc")
    rep = P.build_icmp_echo(A(SERVER), A(CLIENT), 0x110A, 1, b"abc", reply=True)
    for pkt, kind in ((req, dpkt.icmp.ICMP_ECHO), (rep, dpkt.icmp.ICMP_ECHOREPLY)):
        icmp = verify(pkt).data
        assert (icmp.type, icmp.data.id, icmp.data.seq, icmp.data.data) == (kind, 0x110A, 1, b"abc")


def test_mss_option_is_kind_2_length_4() -> None:
    assert P.mss_option(1360) == b"\x02\x04\x05\x50"
    opts = dpkt.tcp.parse_opts(P.mss_option(1460))
    assert opts == [(dpkt.tcp.TCP_OPT_MSS, b"\x05\xb4")]


def test_drop_reasons_index_a_counter_list_and_held_is_distinct() -> None:
    assert P.DROP_COUNT == max(Drop) + 1
    assert len({int(d) for d in Drop}) == len(Drop) and 0 not in set(Drop)  # 0 means "sound"/FORWARD
