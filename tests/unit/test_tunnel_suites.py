"""The tunnel's cipher suite: the gateway's measurement decides it, and a stock client follows."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from gw import identity
from gw.transport import suites
from gw.transport.endpoint import TunnelServer, client_context, server_context


@pytest.fixture(scope="module")
def gateway_id(tmp_path_factory):
    return identity.new_identity("gateway", tmp_path_factory.mktemp("ids"))


async def _negotiated(server_ctx: ssl.SSLContext) -> str:
    """The suite a stock client (OpenSSL's default list, AES-256-GCM first) gets from this server."""
    done = asyncio.get_running_loop().create_future()

    async def serve(reader, writer):
        done.set_result(writer.get_extra_info("ssl_object").cipher()[0])
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
    suite = await asyncio.wait_for(done, 5)
    writer.close()
    server.close()
    return suite


@pytest.mark.parametrize("fastest", suites.SUITES)
def test_the_suite_measured_fastest_is_the_one_a_stock_client_gets(gateway_id, monkeypatch, fastest):
    rates = {suite: 1e9 for suite in suites.SUITES} | {fastest: 5e9}
    monkeypatch.setattr(suites, "_measured", rates)
    assert asyncio.run(_negotiated(server_context(gateway_id))) == fastest


def test_the_measurement_ranks_every_suite_with_a_plausible_rate(gateway_id, monkeypatch):
    monkeypatch.setattr(suites, "_measured", None)
    ctx = server_context(gateway_id)
    rates = suites._measured
    assert set(rates) == set(suites.SUITES)
    assert all(50e6 < rate < 100e9 for rate in rates.values())  # bytes per second, from a real sealing
    assert [c["name"] for c in ctx.get_ciphers()][:3] == sorted(rates, key=rates.get, reverse=True)


def test_a_suite_that_could_not_be_measured_stays_allowed_last(gateway_id, monkeypatch):
    monkeypatch.setattr(suites, "_measured", {"TLS_AES_128_GCM_SHA256": 3e9, "TLS_AES_256_GCM_SHA384": 2e9})
    ctx = server_context(gateway_id)
    assert [c["name"] for c in ctx.get_ciphers()][:3] == [
        "TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"]  # fmt: skip


def test_a_suite_the_server_does_not_allow_measures_as_none_without_raising(gateway_id):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(gateway_id.cert_path, gateway_id.key_path)
    assert suites._set_suites(ctx, "TLS_AES_128_GCM_SHA256")
    assert suites._seal_rate(ctx, "TLS_CHACHA20_POLY1305_SHA256") is None
    assert suites._seal_rate(ctx, "TLS_AES_128_GCM_SHA256") > 0


def test_a_pointer_is_trusted_only_when_openssl_reads_that_context_s_options_through_it():
    ctx, twin = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert ctx.options == twin.options  # the twin passes a plain comparison: only the flip tells them apart
    assert suites._reads_options(ctx, suites._pointer(ctx))
    assert not suites._reads_options(ctx, suites._pointer(twin))
    assert ctx.options == twin.options  # the flip was undone


def test_a_gateway_starts_and_serves_with_its_chosen_suite(gateway_id):
    async def main():
        server = TunnelServer(gateway_id, lambda proof, peer: None, lambda conn: None)
        port = await server.start("127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context())
        suite = writer.get_extra_info("ssl_object").cipher()[0]
        writer.close()
        await server.stop()
        return suite

    chosen = [c["name"] for c in server_context(gateway_id).get_ciphers()][0]
    assert asyncio.run(main()) == chosen
