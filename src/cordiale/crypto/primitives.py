"""Thin, typed wrappers over the ``cryptography`` primitives used by secure aggregation.

Hand-written glue for Cordiale's secure-aggregation protocol; every cryptographic primitive
itself comes from the ``cryptography`` package (OpenSSL):

* X25519 key pairs and Diffie–Hellman exchange (:class:`KeyPair`, :func:`exchange`),
* HKDF-SHA256 to turn a shared secret into a 32-byte key bound to a context string
  (:func:`derive_key`, :func:`agree`),
* AES-256-GCM authenticated encryption with associated data (:func:`encrypt`, :func:`decrypt`).
  A ciphertext is ``nonce (12 bytes) || ciphertext || tag (16 bytes)``; a wrong key, a wrong
  associated data or any flipped bit raises :class:`~cordiale.core.errors.CryptoError`.

Every error of the underlying library is translated into ``CryptoError`` here, so callers
never see a ``cryptography`` exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cordiale.core.errors import CryptoError

__all__ = [
    "KEY_BYTES",
    "NONCE_BYTES",
    "TAG_BYTES",
    "KeyPair",
    "agree",
    "decrypt",
    "derive_key",
    "encrypt",
    "exchange",
    "generate_keypair",
]

KEY_BYTES = 32
"""Length of X25519 keys, derived keys and AES-256-GCM keys."""
NONCE_BYTES = 12
"""Length of the random AES-GCM nonce that prefixes every ciphertext."""
TAG_BYTES = 16
"""Length of the AES-GCM authentication tag that ends every ciphertext."""


@dataclass(frozen=True)
class KeyPair:
    """An X25519 key pair. ``public`` is the 32-byte raw public key."""

    private: X25519PrivateKey = field(repr=False)
    public: bytes


def generate_keypair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    private = X25519PrivateKey.generate()
    return KeyPair(private=private, public=private.public_key().public_bytes_raw())


def exchange(own: KeyPair, peer_public: bytes) -> bytes:
    """The raw 32-byte X25519 shared secret between ``own`` and a peer's raw public key.

    Raises CryptoError for a malformed public key or a low-order point (all-zero secret).
    """
    if not isinstance(peer_public, bytes | bytearray) or len(peer_public) != KEY_BYTES:
        raise CryptoError(
            f"an X25519 public key has {KEY_BYTES} bytes, got {_describe(peer_public)}"
        )
    try:
        return own.private.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError as exc:  # low-order point: the shared secret would be all zeros
        raise CryptoError(f"X25519 exchange failed with an invalid public key: {exc}") from None


def derive_key(secret: bytes, info: bytes, *, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 of ``secret`` into a 32-byte key bound to the context string ``info``."""
    if not secret:
        raise CryptoError("HKDF needs a non-empty input secret")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(secret)


def agree(own: KeyPair, peer_public: bytes, info: bytes) -> bytes:
    """X25519 exchange followed by HKDF-SHA256: a 32-byte pairwise key bound to ``info``.

    Symmetric: ``agree(a, b.public, info) == agree(b, a.public, info)``.
    """
    return derive_key(exchange(own, peer_public), info)


def encrypt(key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM encryption with a fresh random nonce; returns ``nonce || ct || tag``."""
    _check_key(key)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises CryptoError when authentication fails."""
    _check_key(key)
    if not isinstance(ciphertext, bytes | bytearray) or len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError(
            f"an AES-GCM ciphertext has at least {NONCE_BYTES + TAG_BYTES} bytes, "
            f"got {_describe(ciphertext)}"
        )
    nonce, body = bytes(ciphertext[:NONCE_BYTES]), bytes(ciphertext[NONCE_BYTES:])
    try:
        return AESGCM(key).decrypt(nonce, body, associated_data)
    except InvalidTag:
        raise CryptoError(
            "AES-GCM authentication failed: wrong key, wrong associated data or tampered ciphertext"
        ) from None


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise CryptoError(f"an AES-256-GCM key has {KEY_BYTES} bytes, got {_describe(key)}")


def _describe(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return f"{len(value)} bytes"
    return type(value).__name__
