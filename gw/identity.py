"""Identities: an Ed25519 key and a self-signed certificate, known to the other side by a fingerprint.

There is no certificate authority: the gateway lists each client's fingerprint (sha256 of its
certificate, hex) in gateway.toml and the client pins the gateway's in client.toml, as WireGuard peers
list public keys. ``gw keys new NAME`` writes ``NAME.key`` (0600) and ``NAME.crt`` and prints the lines
each side's configuration needs. A fingerprint is of the whole DER certificate, so a new certificate for
the same key is a new identity (revoke the old one by its fingerprint).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from gw.errors import GwError

VALID_DAYS = 3650  # a pinned self-signed identity is revoked by fingerprint, not by expiry
KEY_MODE = 0o600


class IdentityError(GwError):
    """An identity file is missing, unreadable or not what gw writes."""

    exit_code = 2


@dataclass(frozen=True)
class Identity:
    """A certificate (DER) with its private key, and the paths they came from (for TLS)."""

    name: str
    certificate: bytes
    key: Ed25519PrivateKey
    cert_path: Path
    key_path: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)


def fingerprint(certificate_der: bytes) -> str:
    """sha256 of a DER certificate, lowercase hex: what gateway.toml and client.toml pin."""
    return hashlib.sha256(certificate_der).hexdigest()


def new_identity(name: str, directory: str | os.PathLike[str]) -> Identity:
    """Make ``NAME.key`` (0600) and ``NAME.crt`` in ``directory``; never overwrites an existing file."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise IdentityError(
            f"identity name {name!r}: use letters, digits, '-', '_' and '.' (e.g. alice-laptop)"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise IdentityError(
                f"{path} exists: gw keys never overwrites an identity (remove it or pick a new name)"
            )
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .sign(key, None)
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(pem_key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Identity(name, cert.public_bytes(serialization.Encoding.DER), key, cert_path, key_path)


def load_certificate(path: str | os.PathLike[str]) -> x509.Certificate:
    """A PEM certificate file. Raises IdentityError naming the file."""
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except OSError as e:
        raise IdentityError(f"{path}: cannot read the certificate: {e.strerror}") from None
    except ValueError:
        raise IdentityError(f"{path}: not a PEM certificate (gw keys new writes NAME.crt)") from None


def load_identity(cert_path: str | os.PathLike[str], key_path: str | os.PathLike[str]) -> Identity:
    """A certificate and its key as ``gw keys new`` wrote them. Raises IdentityError naming the file."""
    cert = load_certificate(cert_path)
    try:
        data = Path(key_path).read_bytes()
    except OSError as e:
        raise IdentityError(f"{key_path}: cannot read the key: {e.strerror}") from None
    if os.name == "posix" and os.stat(key_path).st_mode & 0o077:
        raise IdentityError(f"{key_path}: the key is readable by others: chmod 600 {key_path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise IdentityError(
            f"{key_path}: not an unencrypted PEM private key (gw keys new writes NAME.key)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{key_path}: not an Ed25519 key (gw keys new writes one)")
    if key.public_key().public_bytes_raw() != _public_key(cert).public_bytes_raw():
        raise IdentityError(f"{key_path} is not the key of {cert_path}")
    name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(name[0].value if name else "", der, key, Path(cert_path), Path(key_path))


def _public_key(cert: x509.Certificate) -> Ed25519PublicKey:
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise IdentityError("the certificate's key is not Ed25519 (gw keys new writes one)")
    return key


def verify(certificate_der: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` over ``data`` was made by the key of this DER certificate (False for a
    certificate that does not parse or does not hold an Ed25519 key: it came from the network)."""
    try:
        key = x509.load_der_x509_certificate(certificate_der).public_key()
    except (ValueError, UnsupportedAlgorithm, x509.InvalidVersion):  # what a crafted certificate raises
        return False
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
