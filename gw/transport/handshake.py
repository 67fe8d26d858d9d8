"""The tunnel handshake after TLS, sans-I/O: the gateway's challenge, the client's proof, the answer.

Theory of operation
-------------------
TLS 1.3 (stdlib ``ssl``) encrypts the stream and authenticates the gateway: the client pins the
gateway's certificate fingerprint and closes before sending anything if the certificate it got differs.
The client proves its identity inside the stream, the way SSH public-key authentication does: the
gateway sends a fresh 32-byte nonce (``Challenge``); the client answers with its certificate and an
Ed25519 signature over ``proof_data(nonce, gateway fingerprint)`` (``Hello``). The nonce makes the proof
unusable for any other connection, and the gateway's fingerprint in it makes it unusable with any
other gateway. This is done in the stream, not by TLS client certificates, because the stdlib ``ssl``
has no verification callback: it could only accept clients whose certificates the gateway holds as
trust anchors, and an unknown client would fail inside OpenSSL, leaving nothing to journal. Here every
refusal carries the fingerprint that was refused (``SessionRefused``).

``GatewayHandshake`` checks the proof and returns a ``Proof`` (who it is); the daemon decides (known?
revoked? which address?) and answers with ``welcome`` or ``refuse``. ``ClientHandshake`` pins, answers
the challenge and returns the ``Welcome``, or raises ``Refused``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gw import identity
from gw.config import fingerprint_hex
from gw.transport import wire
from gw.transport.wire import Close, ProtocolError

NONCE_LEN = 32
_PROOF_CONTEXT = b"gw tunnel client proof v1\0"
FEATURES = ("vnet",)  # what this build speaks: super-packets with vnet headers


def proof_data(nonce: bytes, gateway_fingerprint: str) -> bytes:
    """What the client signs: a context string, the gateway's nonce and the gateway's fingerprint."""
    return _PROOF_CONTEXT + nonce + bytes.fromhex(gateway_fingerprint)


class Refused(Exception):
    """The gateway refused the session (``code`` as in ``wire.Refusal``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class PinMismatch(Exception):
    """The gateway's certificate is not the one client.toml pins."""


@dataclass(frozen=True)
class Proof:
    """A client that proved it holds the key of ``certificate``."""

    fingerprint: str
    certificate: bytes
    version: int
    features: tuple[str, ...]


class GatewayHandshake:
    """The gateway's side: ``start()`` -> challenge frame; ``receive(frame)`` -> Proof or ProtocolError."""

    def __init__(self, gateway_certificate: bytes, nonce: bytes | None = None) -> None:
        self._fingerprint = identity.fingerprint(gateway_certificate)
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_LEN)
        self._sent = False

    def start(self) -> bytes:
        self._sent = True
        return wire.encode_message(wire.Challenge(wire.PROTOCOL_VERSION, self._nonce))

    def receive(self, ftype: int, payload: memoryview) -> Proof:
        """The client's hello, checked. Raises ProtocolError (the session closes with its code)."""
        if not self._sent or ftype != wire.HELLO:
            raise ProtocolError(Close.UNEXPECTED, f"frame type {ftype} before the hello")
        hello = wire.decode_message(ftype, payload)
        if hello.version != wire.PROTOCOL_VERSION:
            raise ProtocolError(
                Close.VERSION, f"client speaks version {hello.version}, gateway {wire.PROTOCOL_VERSION}"
            )
        if not identity.verify(
            hello.certificate, hello.signature, proof_data(self._nonce, self._fingerprint)
        ):
            raise ProtocolError(Close.REFUSED, "the client's signature does not prove its certificate")
        return Proof(
            identity.fingerprint(hello.certificate), hello.certificate, hello.version, tuple(hello.features)
        )

    @staticmethod
    def welcome(welcome: wire.Welcome) -> bytes:
        return wire.encode_message(welcome)

    @staticmethod
    def refuse(code: str, reason: str) -> bytes:
        return wire.encode_message(wire.Refusal(code, reason))


class ClientHandshake:
    """The client's side: ``check_gateway(der)``, then ``receive`` each control frame until a Welcome."""

    def __init__(
        self, me: identity.Identity, gateway_fingerprint: str, features: tuple[str, ...] = FEATURES
    ) -> None:
        self._me = me
        self.features = features
        self._pin = fingerprint_hex(gateway_fingerprint) or gateway_fingerprint
        self._checked = False

    def check_gateway(self, certificate: bytes | None) -> None:
        """Right after TLS: the gateway's certificate must be the pinned one. Raises PinMismatch."""
        got = identity.fingerprint(certificate) if certificate else "none"
        if got != self._pin:
            raise PinMismatch(f"the gateway presented certificate {got}, client.toml pins {self._pin}")
        self._checked = True

    def receive(self, ftype: int, payload: memoryview) -> bytes | wire.Welcome:
        """A challenge -> the hello frame to send; a welcome -> the Welcome. Raises Refused or ProtocolError."""
        if not self._checked:
            raise ProtocolError(Close.UNEXPECTED, "a frame before the gateway's certificate was checked")
        message = wire.decode_message(ftype, payload)
        if isinstance(message, wire.Challenge):
            if message.version != wire.PROTOCOL_VERSION:
                raise ProtocolError(Close.VERSION, f"gateway speaks version {message.version}")
            if len(message.nonce) != NONCE_LEN:
                raise ProtocolError(Close.PROTOCOL, f"a nonce of {len(message.nonce)} bytes")
            signature = self._me.sign(proof_data(message.nonce, self._pin))
            return wire.encode_message(
                wire.Hello(wire.PROTOCOL_VERSION, self._me.certificate, signature, list(self.features))
            )
        if isinstance(message, wire.Welcome):
            return message
        if isinstance(message, wire.Refusal):
            raise Refused(message.code, message.reason)
        if isinstance(message, wire.CloseMessage):
            raise ProtocolError(Close.of(message.code), f"the gateway closed: {message.reason}")
        raise ProtocolError(Close.UNEXPECTED, f"{type(message).__name__} in the handshake")
