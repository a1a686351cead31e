"""The audit log's entry format: fields, canonical JSON, hashes, parsing and signatures.

Everything here is pure (bytes in, values out); :mod:`cordiale.governance.audit` does the files,
locks and verification. The canonical JSON and signature formats are spelled out in that module's
docstring, so that anyone can check a log in any language.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cordiale.core.errors import CryptoError

DetailValue: TypeAlias = str | int | float | bool | None
"""What a ``details`` value may be: a JSON scalar (floats finite)."""
HEX64 = re.compile(r"^[0-9a-f]{64}$")

_HASHED_FIELDS = (
    "seq",
    "time",
    "actor",
    "action",
    "object",
    "payload_sha256",
    "payload_size",
    "details",
    "prev",
)
_ALL_FIELDS = frozenset((*_HASHED_FIELDS, "hash", "signature"))
_HEAD_FIELDS = frozenset(("count", "last_hash", "signature"))


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEntry:
    """One event. ``hash`` covers every field above it; ``signature`` signs ``hash``."""

    seq: int
    time: str
    actor: str
    action: str
    object: str
    payload_sha256: str | None
    payload_size: int | None
    details: dict[str, DetailValue]
    prev: str
    hash: str
    signature: str | None

    def as_dict(self) -> dict[str, Any]:
        """The entry as a JSON-able dict (a line of the log, parsed)."""
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "object": self.object,
            "payload_sha256": self.payload_sha256,
            "payload_size": self.payload_size,
            "details": dict(self.details),
            "prev": self.prev,
            "hash": self.hash,
            "signature": self.signature,
        }


@dataclass(frozen=True, slots=True)
class Head:
    count: int
    last_hash: str
    signature: str | None


# ------------------------------------------------------------------------------ canonical form


def canonical(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def entry_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical({k: fields[k] for k in _HASHED_FIELDS})).hexdigest()


def head_message(count: int, last_hash: str) -> bytes:
    return f"{count}:{last_hash}".encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(raw: bytes) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at character {exc.pos}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_scalar(value: object) -> bool:
    if value is None or isinstance(value, str | bool) or _is_int(value):
        return True
    return isinstance(value, float) and math.isfinite(value)


def parse_entry(raw: bytes) -> AuditEntry:
    """One line (without its newline) as an entry; ValueError says what is wrong with it."""
    data = _load_json(raw)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if set(data) != _ALL_FIELDS:
        missing, extra = sorted(_ALL_FIELDS - set(data)), sorted(set(data) - _ALL_FIELDS)
        raise ValueError(f"fields missing {missing}, unexpected {extra}")
    for name in ("time", "actor", "action", "object"):
        if not isinstance(data[name], str):
            raise ValueError(f"{name} is not a string")
    if not _is_int(data["seq"]) or data["seq"] < 0:
        raise ValueError("seq is not a non-negative integer")
    for name in ("prev", "hash"):
        if not isinstance(data[name], str) or not HEX64.match(data[name]):
            raise ValueError(f"{name} is not 64 lowercase hex digits")
    digest, size = data["payload_sha256"], data["payload_size"]
    if (digest is None) != (size is None):
        raise ValueError("payload_sha256 and payload_size must both be set or both be null")
    if digest is not None and (not isinstance(digest, str) or not HEX64.match(digest)):
        raise ValueError("payload_sha256 is not 64 lowercase hex digits")
    if size is not None and (not _is_int(size) or size < 0):
        raise ValueError("payload_size is not a non-negative integer")
    details = data["details"]
    if not isinstance(details, dict) or not all(is_scalar(v) for v in details.values()):
        raise ValueError("details is not an object of scalars")
    if data["signature"] is not None and not isinstance(data["signature"], str):
        raise ValueError("signature is not a string")
    return AuditEntry(**data)


def parse_head(raw: bytes) -> Head:
    data = _load_json(raw.rstrip(b"\n"))
    if not isinstance(data, dict) or set(data) != _HEAD_FIELDS:
        raise ValueError(f"expected an object with fields {sorted(_HEAD_FIELDS)}")
    count, last_hash, signature = data["count"], data["last_hash"], data["signature"]
    if not _is_int(count) or count < 0:
        raise ValueError("count is not a non-negative integer")
    if not isinstance(last_hash, str) or not HEX64.match(last_hash):
        raise ValueError("last_hash is not 64 lowercase hex digits")
    if signature is not None and not isinstance(signature, str):
        raise ValueError("signature is not a string")
    return Head(count, last_hash, signature)


# ------------------------------------------------------------------------------------- keys


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    if not isinstance(pem, bytes | bytearray):
        raise CryptoError(f"signing_key_pem must be PEM bytes, got {type(pem).__name__}")
    try:
        key = serialization.load_pem_private_key(bytes(pem), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"signing_key_pem is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError("signing_key_pem is not an ECDSA P-256 key (a node key)")
    return key


def load_public_key(pem: bytes) -> ec.EllipticCurvePublicKey:
    """A certificate PEM or a public key PEM, as an ECDSA P-256 public key."""
    if not isinstance(pem, bytes | bytearray):
        raise CryptoError(f"public_key_pem must be PEM bytes, got {type(pem).__name__}")
    data = bytes(pem)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(
            f"public_key_pem is neither a PEM certificate nor a PEM public key: {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CryptoError("public_key_pem does not hold an ECDSA P-256 key (a node key)")
    return key


def sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def signature_ok(key: ec.EllipticCurvePublicKey, signature: str, message: bytes) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
