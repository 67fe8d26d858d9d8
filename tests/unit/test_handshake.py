"""gw.transport.handshake, sans-I/O: the client proves its key on this connection to this gateway only."""

from __future__ import annotations

import pytest

from gw import identity
from gw.transport import wire
from gw.transport.handshake import ClientHandshake, GatewayHandshake, PinMismatch, Refused
from gw.transport.wire import Close, FrameReader, ProtocolError


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    d = tmp_path_factory.mktemp("ids")
    return {n: identity.new_identity(n, d) for n in ("gateway", "alice", "other-gateway")}


def _one(data: bytes):
    [(ftype, _flags, _count, payload)] = FrameReader(wire.MAX_CONTROL).feed(data)
    return ftype, payload


def test_a_client_proves_its_identity_and_gets_the_welcome(ids):
    gw, client = (
        GatewayHandshake(ids["gateway"].certificate),
        ClientHandshake(ids["alice"], ids["gateway"].fingerprint),
    )
    client.check_gateway(ids["gateway"].certificate)
    hello = client.receive(*_one(gw.start()))
    proof = gw.receive(*_one(hello))
    assert proof.fingerprint == ids["alice"].fingerprint and "vnet" in proof.features
    welcome = wire.Welcome(7, "10.66.77.2", 24, "10.66.77.1", ["10.66.77.1"], 1400, True, 10.0, 30.0)
    assert client.receive(*_one(gw.welcome(welcome))) == welcome


def test_a_refusal_reaches_the_client_with_its_code(ids):
    client = ClientHandshake(ids["alice"], ids["gateway"].fingerprint)
    client.check_gateway(ids["gateway"].certificate)
    with pytest.raises(Refused) as e:
        client.receive(*_one(GatewayHandshake.refuse("revoked", "alice was revoked")))
    assert e.value.code == "revoked"


def test_the_client_refuses_a_gateway_whose_certificate_is_not_pinned(ids):
    client = ClientHandshake(ids["alice"], ids["gateway"].fingerprint)
    with pytest.raises(PinMismatch):
        client.check_gateway(ids["other-gateway"].certificate)
    with pytest.raises(ProtocolError):  # and nothing is answered before the pin was checked
        client.receive(*_one(GatewayHandshake(ids["gateway"].certificate).start()))


def test_a_proof_made_for_another_gateway_or_another_connection_is_refused(ids):
    # a malicious gateway relays its challenge: alice signs for the fingerprint she pinned, not ours
    evil = ClientHandshake(ids["alice"], ids["other-gateway"].fingerprint)
    evil.check_gateway(ids["other-gateway"].certificate)
    gw = GatewayHandshake(ids["gateway"].certificate)
    relayed = evil.receive(*_one(gw.start()))
    with pytest.raises(ProtocolError) as e:
        gw.receive(*_one(relayed))
    assert e.value.code == Close.REFUSED
    # a hello recorded from one connection, replayed on another: another nonce
    client = ClientHandshake(ids["alice"], ids["gateway"].fingerprint)
    client.check_gateway(ids["gateway"].certificate)
    recorded = client.receive(*_one(GatewayHandshake(ids["gateway"].certificate).start()))
    fresh = GatewayHandshake(ids["gateway"].certificate)
    fresh.start()
    with pytest.raises(ProtocolError) as e:
        fresh.receive(*_one(recorded))
    assert e.value.code == Close.REFUSED


def test_data_or_a_second_message_before_the_hello_is_unexpected(ids):
    gw = GatewayHandshake(ids["gateway"].certificate)
    gw.start()
    [(ftype, _f, _c, payload)] = FrameReader().feed(wire.encode_packets([b"\x45" + b"x" * 19]))
    with pytest.raises(ProtocolError) as e:
        gw.receive(ftype, payload)
    assert e.value.code == Close.UNEXPECTED


def test_another_protocol_version_is_refused_with_its_own_code(ids):
    gw = GatewayHandshake(ids["gateway"].certificate)
    gw.start()
    hello = wire.encode_message(wire.Hello(99, ids["alice"].certificate, b"sig"))
    with pytest.raises(ProtocolError) as e:
        gw.receive(*_one(hello))
    assert e.value.code == Close.VERSION
