"""gw.identity: what ``gw keys new`` writes, what loading it checks, and signatures."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography import x509

from gw import identity
from gw.identity import IdentityError


def test_a_new_identity_is_a_0600_key_and_a_self_signed_certificate_named_by_its_fingerprint(tmp_path):
    me = identity.new_identity("alice", tmp_path)
    assert stat.S_IMODE(os.stat(me.key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(me.cert_path.read_bytes())
    assert cert.subject == cert.issuer and cert.subject.rfc4514_string() == "CN=alice"
    assert me.fingerprint == identity.fingerprint(me.certificate) and len(me.fingerprint) == 64
    again = identity.load_identity(me.cert_path, me.key_path)
    assert again.fingerprint == me.fingerprint and again.name == "alice"


def test_signatures_verify_only_with_the_signer_s_certificate_and_data(tmp_path):
    alice, bob = identity.new_identity("alice", tmp_path), identity.new_identity("bob", tmp_path)
    sig = alice.sign(b"data")
    assert identity.verify(alice.certificate, sig, b"data")
    assert not identity.verify(bob.certificate, sig, b"data")
    assert not identity.verify(alice.certificate, sig, b"other")
    assert not identity.verify(b"not a certificate", sig, b"data")


def test_an_identity_is_never_overwritten(tmp_path):
    identity.new_identity("alice", tmp_path)
    with pytest.raises(IdentityError, match="never overwrites"):
        identity.new_identity("alice", tmp_path)


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "with space"])
def test_a_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    with pytest.raises(IdentityError, match="identity name"):
        identity.new_identity(name, tmp_path)


def test_loading_refuses_a_key_others_can_read_a_key_of_another_cert_and_garbage(tmp_path):
    alice, bob = identity.new_identity("alice", tmp_path), identity.new_identity("bob", tmp_path)
    with pytest.raises(IdentityError, match="is not the key of"):
        identity.load_identity(alice.cert_path, bob.key_path)
    os.chmod(alice.key_path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        identity.load_identity(alice.cert_path, alice.key_path)
    (tmp_path / "junk.crt").write_text("hello")
    with pytest.raises(IdentityError, match="not a PEM certificate"):
        identity.load_identity(tmp_path / "junk.crt", bob.key_path)
    with pytest.raises(IdentityError, match="cannot read"):
        identity.load_identity(tmp_path / "missing.crt", bob.key_path)
