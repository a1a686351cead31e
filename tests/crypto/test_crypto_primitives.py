"""X25519, HKDF and AES-GCM wrappers: symmetric agreement, authenticated encryption, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cordiale.core.errors import CryptoError
from cordiale.crypto.primitives import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    agree,
    decrypt,
    derive_key,
    encrypt,
    exchange,
    generate_keypair,
)


def test_agreement_is_symmetric_and_bound_to_context():
    a, b, c = generate_keypair(), generate_keypair(), generate_keypair()
    k_ab = agree(a, b.public, b"ctx")
    assert k_ab == agree(b, a.public, b"ctx")
    assert len(k_ab) == KEY_BYTES
    assert k_ab != agree(a, b.public, b"other ctx")
    assert k_ab != agree(a, c.public, b"ctx")
    assert exchange(a, b.public) == exchange(b, a.public)


def test_a_keypair_never_shows_its_secret():
    pair = generate_keypair()
    assert len(pair.public) == KEY_BYTES
    assert "private" not in repr(pair)  # the secret never shows in logs


@pytest.mark.parametrize("bad", [b"", b"\x01" * 31, b"\x01" * 33, "not bytes"])
def test_malformed_keys_raise_crypto_error(bad):
    pair = generate_keypair()
    with pytest.raises(CryptoError):
        exchange(pair, bad)
    with pytest.raises(CryptoError):
        encrypt(bad, b"x", b"")
    with pytest.raises(CryptoError):
        decrypt(bad, bytes(40), b"")


def test_low_order_public_key_is_refused():
    with pytest.raises(CryptoError, match="invalid public key"):
        exchange(generate_keypair(), bytes(32))


def test_hkdf_needs_a_secret_and_depends_on_salt():
    with pytest.raises(CryptoError):
        derive_key(b"", b"info")
    assert derive_key(b"s", b"i") != derive_key(b"s", b"i", salt=b"salt")


@settings(max_examples=30, deadline=None)
@given(plaintext=st.binary(max_size=300), ad=st.binary(max_size=50))
def test_encrypt_decrypt_round_trip(plaintext, ad):
    key = derive_key(b"secret", b"test")
    blob = encrypt(key, plaintext, ad)
    assert len(blob) == NONCE_BYTES + len(plaintext) + TAG_BYTES
    assert decrypt(key, blob, ad) == plaintext


def test_encryption_is_randomised():
    key = derive_key(b"secret", b"test")
    assert encrypt(key, b"same", b"") != encrypt(key, b"same", b"")


def test_bad_tag_wrong_ad_or_wrong_key_raise():
    key, other = derive_key(b"secret", b"a"), derive_key(b"secret", b"b")
    blob = encrypt(key, b"payload", b"ad")
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(key, blob, b"other ad")
    with pytest.raises(CryptoError, match="authentication failed"):
        decrypt(other, blob, b"ad")
    for position in (0, NONCE_BYTES, len(blob) - 1):
        tampered = bytearray(blob)
        tampered[position] ^= 1
        with pytest.raises(CryptoError):
            decrypt(key, bytes(tampered), b"ad")
    with pytest.raises(CryptoError, match="at least"):
        decrypt(key, blob[: NONCE_BYTES + TAG_BYTES - 1], b"ad")
