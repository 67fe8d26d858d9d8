"""The tunnel over real TLS on loopback: sessions, refusals, and what a hostile peer cannot do."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from gw import identity
from gw.transport import wire
from gw.transport.endpoint import Limits, TunnelServer, client_context, connect
from gw.transport.handshake import PinMismatch, Refused
from gw.transport.wire import Close

WELCOME = dict(vpn_addr="10.66.77.2", prefix_len=24, gateway_addr="10.66.77.1", dns=["10.66.77.1"], mtu=1400,
               offloads=True, keepalive_s=0.1, dead_after_s=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    return {n: identity.new_identity(n, d) for n in ("gateway", "alice", "mallory", "other-gateway")}


class Gateway:
    """A TunnelServer whose policy knows alice only, recording refusals as the daemon journals them."""

    def __init__(self, ids, limits: Limits | None = None) -> None:
        self.refused, self.sessions, self.received = [], [], []
        self.server = TunnelServer(ids["gateway"], self.authorize, self.on_session, limits=limits or Limits())
        self.alice = ids["alice"].fingerprint

    def authorize(self, proof, peer):
        if proof.fingerprint != self.alice:
            self.refused.append((proof.fingerprint, peer[0]))
            return wire.Refusal("unknown", "no client with this fingerprint")
        return wire.Welcome(session=len(self.sessions) + 1, **WELCOME)

    def on_session(self, conn) -> None:
        self.sessions.append(conn)
        conn.on_packets = lambda pkts, vnet: self.received.append([bytes(p) for p in pkts])


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def _pkt(n: int) -> bytes:
    return bytes([0x45]) + bytes([n % 256]) * 99


def test_a_known_client_gets_its_welcome_and_packets_cross_both_ways_and_keepalives_keep_it(ids):
    async def main():
        gw = Gateway(ids)
        port = await gw.server.start("127.0.0.1", 0)
        conn, welcome = await connect("127.0.0.1", port, ids["alice"], ids["gateway"].fingerprint)
        assert welcome.vpn_addr == "10.66.77.2" and welcome.session == 1
        got = []
        conn.on_packets = lambda pkts, vnet: got.append([bytes(p) for p in pkts])
        assert conn.send_packets([_pkt(i) for i in range(50)])
        await asyncio.sleep(0.8)  # past dead_after_s: keepalives keep both sides up
        [server_side] = gw.sessions
        assert server_side.send_packets([_pkt(7), _pkt(8)])
        await asyncio.sleep(0.1)
        assert gw.received == [[_pkt(i) for i in range(50)]] and got == [[_pkt(7), _pkt(8)]]
        assert not conn.closed.done() and not server_side.closed.done() and server_side.vnet
        conn.close(Close.SHUTDOWN, "bye")
        assert (await asyncio.wait_for(server_side.closed, 2))[0] == Close.SHUTDOWN
        await asyncio.sleep(0.05)
        # no cycle through uvloop's SSL protocol keeps a dead connection's TLS buffers (a handshake flood)
        assert server_side.transport is None
        await gw.server.stop()

    run(main())


def test_an_unknown_identity_is_refused_with_its_fingerprint_recorded(ids):
    async def main():
        gw = Gateway(ids)
        port = await gw.server.start("127.0.0.1", 0)
        with pytest.raises(Refused) as e:
            await connect("127.0.0.1", port, ids["mallory"], ids["gateway"].fingerprint)
        assert e.value.code == "unknown"
        assert gw.refused == [(ids["mallory"].fingerprint, "127.0.0.1")] and gw.sessions == []
        await gw.server.stop()

    run(main())


def test_the_client_hangs_up_on_a_gateway_it_did_not_pin(ids):
    async def main():
        gw = Gateway(ids)
        port = await gw.server.start("127.0.0.1", 0)
        with pytest.raises(PinMismatch):
            await connect("127.0.0.1", port, ids["alice"], ids["other-gateway"].fingerprint)
        await asyncio.sleep(0.1)
        assert gw.server.handshaking == 0 and gw.sessions == []
        await gw.server.stop()

    run(main())


async def _raw_tls(port: int):
    return await asyncio.open_connection("127.0.0.1", port, ssl=client_context())


def test_garbage_after_the_welcome_closes_the_session_with_a_protocol_code(ids):
    async def main():
        gw = Gateway(ids)
        port = await gw.server.start("127.0.0.1", 0)
        conn, _ = await connect("127.0.0.1", port, ids["alice"], ids["gateway"].fingerprint)
        conn.transport.write(wire.HEADER.pack(wire.PACKETS, 0, 3, 8) + b"\0\0\0\x09garb")
        [server_side] = gw.sessions
        assert (await asyncio.wait_for(server_side.closed, 2))[0] == Close.PROTOCOL
        assert (await asyncio.wait_for(conn.closed, 2))[0] == Close.PROTOCOL  # told why
        await gw.server.stop()

    run(main())


def test_a_client_that_never_says_hello_is_closed_at_the_handshake_timeout(ids):
    async def main():
        gw = Gateway(ids, Limits(handshake_timeout_s=0.3))
        port = await gw.server.start("127.0.0.1", 0)
        reader, writer = await _raw_tls(port)
        data = await asyncio.wait_for(reader.read(), 3)  # the challenge, a CLOSE, then EOF
        frames = wire.FrameReader().feed(data)
        assert [f[0] for f in frames] == [wire.CHALLENGE, wire.CLOSE]
        assert wire.decode_message(wire.CLOSE, frames[1][3]).code == Close.HANDSHAKE_TIMEOUT
        assert gw.server.handshaking == 0
        writer.close()
        await gw.server.stop()

    run(main())


def test_handshakes_in_progress_are_capped_and_the_rest_closed_at_accept(ids):
    async def main():
        gw = Gateway(ids, Limits(max_handshakes=2))
        port = await gw.server.start("127.0.0.1", 0)
        held = [await _raw_tls(port) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert gw.server.handshaking == 2
        with pytest.raises((ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError)):
            reader, _ = await _raw_tls(port)
            if not await asyncio.wait_for(reader.read(1), 2):
                raise ConnectionError("closed at accept")
        assert gw.server.refused_at_accept >= 1
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        assert gw.server.handshaking == 0
        conn, _ = await connect("127.0.0.1", port, ids["alice"], ids["gateway"].fingerprint)  # room again
        conn.close(Close.SHUTDOWN)
        await gw.server.stop()

    run(main())


def test_a_peer_gone_silent_is_closed_as_dead(ids):
    async def main():
        gw = Gateway(ids)
        port = await gw.server.start("127.0.0.1", 0)
        conn, _ = await connect("127.0.0.1", port, ids["alice"], ids["gateway"].fingerprint)
        conn._timer.cancel()  # the client stops sending keepalives (a frozen or vanished host)
        [server_side] = gw.sessions
        code, reason = await asyncio.wait_for(server_side.closed, 3)
        assert code == Close.DEAD_PEER, reason
        await gw.server.stop()

    run(main())


def test_a_client_that_does_not_read_costs_the_gateway_a_bounded_buffer_and_counted_drops(ids):
    async def main():
        gw = Gateway(ids, Limits(max_buffered=256 << 10))
        port = await gw.server.start("127.0.0.1", 0)
        conn, _ = await connect("127.0.0.1", port, ids["alice"], ids["gateway"].fingerprint)
        conn.transport.pause_reading()  # a slow (or hostile) reader
        [server_side] = gw.sessions
        batch = [_pkt(i) * 14 for i in range(40)]  # 56 KB per frame
        for _ in range(400):  # 22 MB offered, bounded in count
            server_side.send_packets(batch)
            await asyncio.sleep(0)
        assert server_side.dropped > 0
        assert server_side.transport.get_write_buffer_size() <= (256 << 10) + 60_000
        conn.close(Close.SHUTDOWN)
        await gw.server.stop()

    run(main())
