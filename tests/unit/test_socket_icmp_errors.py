"""gw.external.icmp_errors and the socket gateway's error queue: an ICMP error the kernel queued for a
mapping's socket is rebuilt as the packet its offender sent, and the NAT turns it into an ICMP error to
the client about the client's own packet. dpkt and ``verify`` (checksums recomputed from scratch) are the
oracles; the last tests run the shell against the kernel on the loopback only."""

from __future__ import annotations

import asyncio
import random
import socket
import struct

import dpkt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gw import packet as P
from gw.config import NatConfig
from gw.external import icmp_errors as E
from gw.external.socket import SocketGateway
from gw.nat import COMPILED, FORWARD, Nat
from gw.verdict import Drop
from tests.helpers.packets import CLIENT, NS, PUBLIC, ROUTER, SERVER, SERVER_2, A, verify
from tests.unit.test_core_purity import _closure, _io_calls, _violations

C, PUB, SRV, SRV2, RTR = A(CLIENT), A(PUBLIC), A(SERVER), A(SERVER_2), A(ROUTER)
T0 = 1_700_000_000 * NS
UDP, ICMP = P.PROTO_UDP, P.PROTO_ICMP
EXT_PORT, INT_PORT, REMOTE_PORT = 45678, 4000, 9
BOTH = [pytest.param(True, id="compiled"), pytest.param(False, id="python")]


def ee(
    icmp_type: int, code: int, info: int = 0, offender: int = SRV, origin: int = E.SO_EE_ORIGIN_ICMP
) -> E.ExtendedErr:
    return E.ExtendedErr(111, origin, icmp_type, code, info, offender)


PORT_UNREACH = ee(P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH)
FRAG_NEEDED = ee(P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, info=1280, offender=RTR)
TIME_EXCEEDED = ee(P.ICMP_TIME_EXCEEDED, 0, offender=RTR)


def rebuild(err: E.ExtendedErr = PORT_UNREACH, quoted: bytes = b"hello", remote: int = SRV) -> bytearray:
    pkt = E.build_offender_error(UDP, PUB, EXT_PORT, remote, REMOTE_PORT, quoted, err)
    assert pkt is not None
    return pkt


def quote_of(pkt: bytes | bytearray) -> tuple[dpkt.icmp.ICMP, bytes]:
    """The ICMP message and the raw bytes it quotes."""
    ip = dpkt.ip.IP(bytes(pkt))
    return ip.data, bytes(pkt)[ip.hl * 4 + P.ICMP_HLEN :]


def socket_nat(compiled: bool = False, **overrides: object) -> Nat:
    """A socket-mode NAT holding the mapping CLIENT:4000 -> PUBLIC:45678, which has sent to SERVER:9."""
    if compiled and not COMPILED:
        pytest.skip("gw._fastpath not built")
    nat = Nat(NatConfig(**overrides), random.Random(1), compiled, caller_ports=True)
    m = nat.create_mapping(UDP, C, INT_PORT, EXT_PORT, T0, remote=(SRV, REMOTE_PORT))
    assert not isinstance(m, int)
    return nat


# ---------------------------------------------------------------------- the rebuilt error, by dpkt


def test_a_port_unreachable_is_rebuilt_from_the_offender_to_the_public_endpoint_quoting_our_datagram() -> (
    None
):
    pkt = rebuild()
    ip = verify(pkt)  # outer and quoted header checksums, the ICMP checksum, lengths
    assert (ip.src, ip.dst, ip.p, ip.ttl) == (
        SRV.to_bytes(4, "big"),
        PUB.to_bytes(4, "big"),
        ICMP,
        E.ERROR_TTL,
    )
    icmp, quote = quote_of(pkt)
    assert (icmp.type, icmp.code) == (P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH)
    assert bytes(pkt)[24:28] == b"\0\0\0\0"  # the unused word
    q = dpkt.ip.IP(quote)
    assert (q.src, q.dst, q.p) == (PUB.to_bytes(4, "big"), SRV.to_bytes(4, "big"), UDP)
    assert q.len == 20 + 8 + 5 and q.df and not q.mf and q.offset == 0 and q.ttl == E.QUOTE_TTL
    u = q.data
    assert (u.sport, u.dport, u.ulen, u.sum, u.data) == (EXT_PORT, REMOTE_PORT, 13, 0, b"hello")
    assert len(pkt) == 20 + 8 + 20 + 8 + 5


def test_fragmentation_needed_carries_the_next_hop_mtu_and_time_exceeded_quotes_ttl_1() -> None:
    pkt = rebuild(FRAG_NEEDED)
    verify(pkt)
    icmp, _ = quote_of(pkt)
    assert (icmp.type, icmp.code, icmp.data.mtu) == (P.ICMP_DEST_UNREACH, P.ICMP_FRAG_NEEDED, 1280)
    pkt = rebuild(TIME_EXCEEDED)
    ip = verify(pkt)
    icmp, quote = quote_of(pkt)
    assert ip.src == RTR.to_bytes(4, "big") and (icmp.type, icmp.code) == (P.ICMP_TIME_EXCEEDED, 0)
    assert dpkt.ip.IP(quote).ttl == 1  # it expired in transit
    pkt = rebuild(ee(P.ICMP_PARAM_PROBLEM, 0, info=9))
    verify(pkt)
    assert pkt[20 + 4] == 9  # the pointer (dpkt does not decode type 12)


def test_a_long_datagram_is_quoted_up_to_576_bytes_with_the_lengths_of_what_the_offender_quoted() -> None:
    quoted = bytes(range(256)) * 2 + b"x" * 8  # 520 bytes: what Linux keeps of a 576-byte quote
    pkt = rebuild(FRAG_NEEDED, quoted)
    verify(pkt)
    assert len(pkt) == 576
    q = dpkt.ip.IP(quote_of(pkt)[1])
    assert q.len == 20 + 8 + 520 and q.data.ulen == 8 + 520 and q.data.data == quoted
    longer = rebuild(FRAG_NEEDED, b"y" * 1372)  # an offender that quoted it all
    verify(longer)
    assert len(longer) == 576
    _, quote = quote_of(longer)
    assert struct.unpack_from("!H", quote, 2)[0] == 20 + 8 + 1372  # the quoted header keeps its length
    assert struct.unpack_from("!H", quote, 24)[0] == 8 + 1372


def test_an_icmp_socket_error_quotes_the_echo_request_the_kernel_sent_with_the_socket_identifier() -> None:
    echo = P.build_icmp_echo(PUB, SRV, EXT_PORT, 1, b"z" * 40)[20:]  # what the kernel hands back
    pkt = E.build_offender_error(ICMP, PUB, EXT_PORT, SRV, 0, echo, ee(P.ICMP_DEST_UNREACH, 1))
    assert pkt is not None
    verify(pkt)  # includes the quoted echo's checksum: the whole request is quoted
    q = dpkt.ip.IP(quote_of(pkt)[1])
    assert q.p == ICMP and bytes(q.data) == bytes(echo) and q.data.data.id == EXT_PORT


@pytest.mark.parametrize(
    ("proto", "quoted", "err"),
    [
        pytest.param(UDP, b"x", ee(3, 3, origin=E.SO_EE_ORIGIN_LOCAL, offender=0), id="local error"),
        pytest.param(UDP, b"x", ee(3, 3, origin=3), id="ICMPv6 origin"),
        pytest.param(UDP, b"x", ee(3, 3, offender=0), id="no offender"),
        pytest.param(UDP, b"x", ee(5, 1), id="redirect: no error"),
        pytest.param(UDP, b"x", ee(0, 0), id="echo reply: no error"),
        pytest.param(ICMP, b"\x08\0\0\0\0\0\0", ee(3, 1), id="ICMP quote under 8 bytes"),
        pytest.param(P.PROTO_TCP, b"x" * 20, ee(3, 3), id="no TCP sockets"),
    ],
)
def test_what_is_no_ipv4_icmp_error_about_our_datagram_is_not_rebuilt(
    proto: int, quoted: bytes, err: E.ExtendedErr
) -> None:
    assert E.build_offender_error(proto, PUB, EXT_PORT, SRV, REMOTE_PORT, quoted, err) is None


# ---------------------------------------------------------------------- the control message reader

# struct sock_extended_err (host byte order) + sockaddr_in of the offender: a port unreachable from
# 203.0.113.10, as the kernel writes it (ee_errno ECONNREFUSED = 111)
CMSG_PORT_UNREACH = (
    struct.pack("=IBBBBII", 111, 2, 3, 3, 0, 0, 0)
    + struct.pack("=H", 2)
    + bytes([0, 0, 203, 0, 113, 10])
    + bytes(8)
)


def test_the_extended_err_control_message_is_read_with_its_offender() -> None:
    assert len(CMSG_PORT_UNREACH) == E.EXTENDED_ERR_LEN
    assert E.decode_extended_err(CMSG_PORT_UNREACH) == E.ExtendedErr(111, 2, 3, 3, 0, SRV)
    frag = (
        struct.pack("=IBBBBII", 90, 2, 3, 4, 0, 1280, 0)
        + struct.pack("=H", 2)
        + bytes([0, 0, 198, 51, 100, 254])
    )
    assert E.decode_extended_err(frag + bytes(8)) == E.ExtendedErr(90, 2, 3, 4, 1280, RTR)
    local = struct.pack("=IBBBBII", 90, 1, 0, 0, 0, 1400, 0) + bytes(16)  # AF_UNSPEC: no offender
    assert E.decode_extended_err(local) == E.ExtendedErr(90, 1, 0, 0, 1400, 0)
    assert E.decode_extended_err(CMSG_PORT_UNREACH[:23]) is None
    assert E.decode_extended_err(b"") is None


@given(st.binary(max_size=64))
def test_any_control_message_is_read_or_refused_never_raises(data: bytes) -> None:
    got = E.decode_extended_err(data)
    assert got is None or len(data) >= 24


@given(
    proto=st.sampled_from([UDP, ICMP]),
    quoted=st.binary(max_size=1500),
    icmp_type=st.integers(0, 255),
    code=st.integers(0, 255),
    info=st.integers(0, 2**32 - 1),
    offender=st.integers(0, 2**32 - 1),
)
def test_any_error_entry_is_rebuilt_into_a_sound_packet_of_at_most_576_bytes_or_refused(
    proto: int, quoted: bytes, icmp_type: int, code: int, info: int, offender: int
) -> None:
    err = E.ExtendedErr(0, E.SO_EE_ORIGIN_ICMP, icmp_type, code, info, offender)
    pkt = E.build_offender_error(proto, PUB, EXT_PORT, SRV, REMOTE_PORT, quoted, err)
    if pkt is None:
        return
    assert len(pkt) <= 576 and icmp_type in P.ICMP_ERROR_TYPES
    ip = dpkt.ip.IP(bytes(pkt))
    assert ip.len == len(pkt) and P.checksum(pkt, 0, 20) == 0 and P.checksum(pkt, 20) == 0
    assert P.check_ipv4(pkt[28:]) in (0, Drop.BAD_LENGTH)  # the quoted header; its datagram may be cut


# ---------------------------------------------------------------------- through the NAT, to the client


@pytest.mark.parametrize("compiled", BOTH)
@pytest.mark.parametrize("err", [PORT_UNREACH, FRAG_NEEDED, TIME_EXCEEDED], ids=["port", "frag", "ttl"])
def test_the_nat_turns_the_rebuilt_error_into_one_to_the_client_about_its_own_datagram(
    compiled: bool, err: E.ExtendedErr
) -> None:
    nat = socket_nat(compiled)
    pkt = rebuild(err, b"x" * 600)
    assert nat.translate_inbound(pkt, T0) == FORWARD
    ip = verify(pkt)
    assert (ip.src, ip.dst) == (err.offender.to_bytes(4, "big"), C.to_bytes(4, "big"))
    assert ip.ttl == E.ERROR_TTL - 1  # one hop
    icmp, quote = quote_of(pkt)
    assert (icmp.type, icmp.code) == (err.icmp_type, err.icmp_code)
    if err is FRAG_NEEDED:
        assert icmp.data.mtu == 1280
    q = dpkt.ip.IP(quote)
    assert (q.src, q.dst) == (C.to_bytes(4, "big"), SRV.to_bytes(4, "big"))
    assert struct.unpack_from("!HH", quote, 20) == (INT_PORT, REMOTE_PORT)  # the client's own source port
    assert P.checksum(quote, 0, 20) == 0


def test_the_icmp_echo_error_reaches_the_client_with_its_own_identifier() -> None:
    nat = Nat(NatConfig(), random.Random(1), False, caller_ports=True)
    assert not isinstance(nat.create_mapping(ICMP, C, 777, EXT_PORT, T0, remote=(SRV, 0)), int)
    echo = P.build_icmp_echo(PUB, SRV, EXT_PORT, 1, b"z" * 40)[20:]
    pkt = E.build_offender_error(ICMP, PUB, EXT_PORT, SRV, 0, echo, ee(P.ICMP_DEST_UNREACH, 1))
    assert pkt is not None and nat.translate_inbound(pkt, T0) == FORWARD
    verify(pkt)
    q = dpkt.ip.IP(quote_of(pkt)[1])
    assert q.src == C.to_bytes(4, "big") and q.data.data.id == 777


def test_the_rebuilt_error_is_filtered_like_its_flow_and_needs_the_mapping() -> None:
    nat = socket_nat()
    assert nat.translate_inbound(rebuild(remote=SRV2), T0) == Drop.FILTERED  # the client never sent there
    other = E.build_offender_error(UDP, PUB, EXT_PORT + 1, SRV, REMOTE_PORT, b"x", PORT_UNREACH)
    assert other is not None and nat.translate_inbound(other, T0) == Drop.ICMP_ERROR_MISMATCH


def test_the_module_is_a_core_importing_nothing_that_does_io() -> None:
    rel = "gw/external/icmp_errors.py"
    assert [p for m in sorted(_closure(rel)) for p in _violations(m)] == [] and _io_calls(rel) == []


# ---------------------------------------------------------------------- the shell, on the loopback


def _closed_port() -> int:
    """A loopback UDP port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_socket_gateway_hands_on_the_kernels_port_unreachable_and_still_sends_after_it() -> None:
    """A mapping's socket sends to a closed loopback port: the port unreachable comes out of on_packet as
    the kernel's ICMP error (127.0.0.1 -> public endpoint), and the next datagram is still sent."""
    got: list[bytearray] = []
    ports: list[int] = []

    async def run() -> SocketGateway:
        loop = asyncio.get_running_loop()
        gw = SocketGateway(Nat(NatConfig(), random.Random(1)), max_sockets=8)
        woken = asyncio.Event()
        gw.start(lambda batch: (got.extend(batch), woken.set()))
        lo = A("127.0.0.1")
        sock = gw._bind(UDP, lo, 0)
        assert sock is not None
        port = sock.getsockname()[1]
        gw._register(UDP, lo, port, sock)
        closed = _closed_port()
        ports.extend([port, closed])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
            listener.bind(("127.0.0.1", 0))
            listener.setblocking(False)
            gw.send_outbound(P.build_udp(lo, lo, port, closed, b"knock"), T0)
            await asyncio.wait_for(woken.wait(), 5)
            gw.send_outbound(P.build_udp(lo, lo, port, closed, b"again"), T0)  # takes the error's errno
            gw.send_outbound(P.build_udp(lo, lo, port, listener.getsockname()[1], b"after"), T0)
            data = await asyncio.wait_for(loop.sock_recv(listener, 100), 5)
            assert data == b"after"
            await asyncio.sleep(0.1)
        gw.stop()
        return gw

    gw = asyncio.run(run())
    assert gw.counts["send_failed"] == 0 and gw.counts["icmp_errors"] >= 1 and gw.counts["received"] == 0
    first = got[0]
    ip = verify(first)
    assert ip.src == ip.dst == bytes([127, 0, 0, 1])
    icmp, quote = quote_of(first)
    assert (icmp.type, icmp.code) == (P.ICMP_DEST_UNREACH, P.ICMP_PORT_UNREACH)
    q = dpkt.ip.IP(quote)
    assert (q.data.sport, q.data.dport, q.data.data) == (*ports, b"knock")
