"""Researcher tokens: high-entropy bearer secrets, stored by the hub only as hashes.

A token is ``cdl_`` and 32 random bytes in URL-safe base64. A 256-bit random secret needs no slow
password hash: SHA-256 of it is as hard to invert as the secret is to guess, so the hub stores the
digest and compares in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = ["TOKEN_PREFIX", "hash_token", "new_token", "token_matches"]

TOKEN_PREFIX = "cdl_"
"""Prefix of researcher tokens, so that a leaked token is easy to recognise and scan for."""


def new_token() -> str:
    """A fresh researcher bearer token: ``cdl_`` and 32 random bytes, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token: what the hub stores instead of the token.

    A plain hash is enough: the token is a 256-bit random secret, so no dictionary or
    brute-force attack on the hash is feasible and a slow password hash would only add latency.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, token_hash: str) -> bool:
    """Whether ``token`` hashes to ``token_hash`` (constant-time comparison)."""
    if not isinstance(token, str) or not isinstance(token_hash, str):
        return False
    return hmac.compare_digest(hash_token(token).encode(), token_hash.encode("utf-8"))
