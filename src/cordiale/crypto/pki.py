"""The consortium's public-key infrastructure: one CA, a hub certificate, node certificates.

Hand-written glue over the ``cryptography`` package's X.509 support; every key, signature and
certificate is made by ``cryptography`` (OpenSSL), and TLS is Python's :mod:`ssl`:

* :class:`CertificateAuthority` keeps the consortium's CA in a directory (mode 0700): the CA key
  and certificate (``ca.key``, ``ca.pem``), the hub's TLS server certificate (``hub.pem``,
  ``hub.key``), the certificate revocation list (``crl.pem``) and ``consortium.json``. It issues
  node client certificates and revokes them. Keys are ECDSA P-256 and signatures ECDSA-SHA256,
  which every TLS stack accepts; private keys are unencrypted PKCS#8 PEM written with mode 0600.
* A certificate names its holder in its subject (:class:`Identity`): CN the site id, C the
  site's 2-letter country code, O the consortium, OU the role (``node`` or ``hub``).
  :func:`identity_of` reads it, :func:`verify_issued_by` checks signature and validity period.
* Researchers authenticate with high-entropy bearer tokens (:func:`new_token`) that the hub
  stores only as SHA-256 hashes (:func:`hash_token`, :func:`token_matches`).
* An :class:`EnrolmentKit` is the single TOML file a site administrator receives: the hub URL,
  the CA certificate and the node's certificate and key. Reading it checks that the certificate
  names the kit's site and was issued by the kit's CA.
* :func:`server_ssl_context` (hub) and :func:`client_ssl_context` (node, researcher) build the
  TLS contexts. The hub asks for but does not require a client certificate (``CERT_OPTIONAL``):
  node endpoints require one at the application layer (:meth:`CertificateAuthority.check_peer`,
  which also consults the CRL), researcher endpoints use tokens.

Unlike the rest of :mod:`cordiale.crypto` this module reads and writes files. Bad, forged or
mismatched certificates raise :class:`~cordiale.core.errors.CryptoError`; missing files, invalid
names and an already-initialised directory raise :class:`~cordiale.core.errors.ConfigError`.
Errors of ``cryptography`` and :mod:`ssl` are translated here.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import tomli_w
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cordiale.core.errors import ConfigError, CryptoError

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "CONSORTIUM_FILE",
    "CRL_FILE",
    "HUB_CERT",
    "HUB_COUNTRY",
    "HUB_KEY",
    "HUB_SITE_ID",
    "KIT_VERSION",
    "CertificateAuthority",
    "EnrolmentKit",
    "Identity",
    "IssuedCertificate",
    "identity_of",
    "verify_issued_by",
]

CA_CERT = "ca.pem"
"""The CA certificate (public; every node and researcher trusts it)."""
CA_KEY = "ca.key"
"""The CA private key (secret; never leaves the CA directory)."""
HUB_CERT = "hub.pem"
"""The hub's TLS server certificate."""
HUB_KEY = "hub.key"
"""The hub's TLS private key."""
CRL_FILE = "crl.pem"
"""The certificate revocation list, signed by the CA."""
CONSORTIUM_FILE = "consortium.json"
"""``{"consortium": name, "created": ISO 8601 time}``."""

HUB_SITE_ID = "hub"
"""Common name of the hub's certificate."""
HUB_COUNTRY = "ZZ"
"""Country of the hub's certificate: ``ZZ`` is user-assigned in ISO 3166 (no one country)."""
KIT_VERSION = 1
"""Format version of an enrolment kit file."""

NODE_KEY_FILE = "node.key"
NODE_CERT_FILE = "node.pem"

ROLES = ("node", "hub")
CRL_VALIDITY = timedelta(days=7)
CLOCK_SKEW = timedelta(minutes=5)
"""Certificates are back-dated by this much so that a peer with a slow clock accepts them."""

_SITE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CA_FILES = (CA_CERT, CA_KEY, HUB_CERT, HUB_KEY, CRL_FILE, CONSORTIUM_FILE)


@dataclass(frozen=True)
class Identity:
    """Who a certificate names: site id (CN), country (C), consortium (O), role (OU), serial."""

    site_id: str
    country: str
    consortium: str
    serial: int
    role: str


@dataclass(frozen=True)
class IssuedCertificate:
    """A freshly issued certificate and its private key (unencrypted PKCS#8 PEM)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    serial: int


class CertificateAuthority:
    """The consortium's CA, kept in one directory; create with :meth:`init`, open with :meth:`load`.

    The CA key is held in memory while the object lives; every change (a revocation) is written
    to the directory at once.
    """

    def __init__(
        self,
        directory: Path,
        consortium: str,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey,
    ) -> None:
        self.directory = Path(directory)
        self._consortium = consortium
        self._ca_cert = ca_cert
        self._ca_key = ca_key

    @classmethod
    def init(
        cls,
        directory: Path,
        consortium: str,
        *,
        hub_hosts: Sequence[str] = ("127.0.0.1", "localhost"),
        hub_country: str = HUB_COUNTRY,
        valid_days: int = 3650,
    ) -> CertificateAuthority:
        """Create a new CA in ``directory``: CA key and certificate, hub certificate, empty CRL.

        ``hub_hosts`` are the names and IP addresses the hub is reached at; they go into the hub
        certificate's subject alternative names, which clients check. ``hub_country`` (ISO
        3166) is where the hub runs: sites' policies decide whether results may flow there.
        Refuses a directory that already holds a CA.
        """
        directory = Path(directory)
        _check_consortium(consortium)
        _check_country(hub_country)
        _check_days(valid_days)
        hosts = _parse_hosts(hub_hosts)
        if directory.exists() and not directory.is_dir():
            raise ConfigError(f"cannot create a CA in {directory}: it is not a directory")
        present = [name for name in _CA_FILES if (directory / name).exists()]
        if present:
            raise ConfigError(
                f"{directory} already holds a consortium CA ({', '.join(present)}); "
                "refusing to overwrite it"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

        now = _now()
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, f"{consortium} root CA"[:64]),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, consortium),
            ]
        )
        ca_public = ca_key.public_key()
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        ca = cls(directory, consortium, ca_cert, ca_key)

        hub = ca._issue(
            site_id=HUB_SITE_ID,
            country=hub_country,
            role="hub",
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            valid_days=valid_days,
            alt_names=hosts,
        )
        _write(directory / CA_KEY, _key_pem(ca_key), 0o600)
        _write(directory / CA_CERT, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(directory / HUB_KEY, hub.key_pem, 0o600)
        _write(directory / HUB_CERT, hub.cert_pem, 0o644)
        ca._write_crl({}, crl_number=0)
        created = {"consortium": consortium, "created": now.isoformat()}
        _write(directory / CONSORTIUM_FILE, json.dumps(created, indent=2).encode() + b"\n", 0o644)
        return ca

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """Open the CA kept in ``directory``; checks that key, certificate and names agree."""
        directory = Path(directory)
        missing = [name for name in _CA_FILES if not (directory / name).is_file()]
        if missing:
            raise ConfigError(
                f"{directory} holds no initialised consortium CA: missing "
                f"{', '.join(missing)} (create one with CertificateAuthority.init)"
            )
        path = directory / CONSORTIUM_FILE
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        consortium = meta.get("consortium") if isinstance(meta, dict) else None
        if not isinstance(consortium, str) or not consortium:
            raise ConfigError(f"{path} has no string key 'consortium'")
        ca_cert = _load_cert_file(directory / CA_CERT)
        ca_key = _load_key_file(directory / CA_KEY)
        if not _same_public_key(ca_key, ca_cert):
            raise CryptoError(f"{directory / CA_KEY} is not the key of {directory / CA_CERT}")
        orgs = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        if [a.value for a in orgs] != [consortium]:
            raise CryptoError(
                f"{directory / CA_CERT} does not name consortium {consortium!r} "
                f"of {CONSORTIUM_FILE}"
            )
        ca = cls(directory, consortium, ca_cert, ca_key)
        hub_cert = _load_cert_file(directory / HUB_CERT)
        if not _same_public_key(_load_key_file(directory / HUB_KEY), hub_cert):
            raise CryptoError(f"{directory / HUB_KEY} is not the key of {directory / HUB_CERT}")
        _check_signed_by(hub_cert, ca_cert, what=str(directory / HUB_CERT))
        ca._read_crl()  # checks the CRL's signature
        return ca

    @property
    def consortium(self) -> str:
        """The consortium's name (the O of every certificate it issues)."""
        return self._consortium

    @property
    def ca_cert_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self._ca_cert.public_bytes(serialization.Encoding.PEM)

    @property
    def hub_cert_path(self) -> Path:
        """The hub's TLS certificate file."""
        return self.directory / HUB_CERT

    @property
    def hub_key_path(self) -> Path:
        """The hub's TLS private key file."""
        return self.directory / HUB_KEY

    @property
    def ca_cert_path(self) -> Path:
        """The CA certificate file."""
        return self.directory / CA_CERT

    def issue_node(self, site_id: str, country: str, *, valid_days: int = 825) -> IssuedCertificate:
        """A TLS client certificate (and fresh key) for site ``site_id`` in ``country``.

        ``site_id`` is a DNS label (lowercase letters, digits and '-', 1 to 63 characters, not
        starting or ending with '-'); ``country`` a 2-letter upper-case ISO 3166 code. The
        validity never outlasts the CA's.
        """
        _check_site_id(site_id)
        _check_country(country)
        _check_days(valid_days)
        return self._issue(
            site_id=site_id,
            country=country,
            role="node",
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            valid_days=valid_days,
            alt_names=[],
        )

    def enrolment_kit(
        self, site_id: str, country: str, hub_url: str, *, valid_days: int = 825
    ) -> EnrolmentKit:
        """Issue a node certificate for ``site_id`` and pack it into an enrolment kit."""
        _check_hub_url(hub_url, where="hub_url")
        issued = self.issue_node(site_id, country, valid_days=valid_days)
        return EnrolmentKit(
            site_id=site_id,
            country=country,
            consortium=self._consortium,
            hub_url=hub_url,
            ca_cert_pem=self.ca_cert_pem,
            cert_pem=issued.cert_pem,
            key_pem=issued.key_pem,
        )

    def revoke(self, serial: int) -> None:
        """Add ``serial`` to the CRL and re-sign it (next update in 7 days). Idempotent."""
        if isinstance(serial, bool) or not isinstance(serial, int) or serial <= 0:
            raise ConfigError(f"a certificate serial is a positive integer, got {serial!r}")
        crl = self._read_crl()
        revoked = {entry.serial_number: entry.revocation_date_utc for entry in crl}
        if serial in revoked:
            return
        revoked[serial] = _now()
        self._write_crl(revoked, crl_number=_crl_number(crl) + 1)

    def revoked_serials(self) -> frozenset[int]:
        """Serials of every revoked certificate (the CRL's signature is checked first)."""
        return frozenset(entry.serial_number for entry in self._read_crl())

    def crl_pem(self) -> bytes:
        """The current CRL, PEM."""
        return self._read_crl().public_bytes(serialization.Encoding.PEM)

    def check_peer(self, cert: bytes | x509.Certificate, *, role: str = "node") -> Identity:
        """The identity of a peer's certificate, after checking it fully.

        Checks issuer signature and validity period (:func:`verify_issued_by`), the consortium,
        the role and the CRL. Use it on ``getpeercert(binary_form=True)`` at node endpoints.
        """
        certificate = _as_certificate(cert)
        verify_issued_by(certificate, self.ca_cert_pem)
        identity = identity_of(certificate)
        if identity.consortium != self._consortium:
            raise CryptoError(
                f"certificate of {identity.site_id!r} names consortium {identity.consortium!r}, "
                f"not {self._consortium!r}"
            )
        if identity.role != role:
            raise CryptoError(
                f"certificate of {identity.site_id!r} has role {identity.role!r}, expected {role!r}"
            )
        if identity.serial in self.revoked_serials():
            raise CryptoError(
                f"certificate of {identity.site_id!r} (serial {identity.serial}) is revoked"
            )
        return identity

    # -- internals ---------------------------------------------------------------------------

    def _issue(
        self,
        *,
        site_id: str,
        country: str,
        role: str,
        usage: x509.ObjectIdentifier,
        valid_days: int,
        alt_names: Sequence[x509.GeneralName],
    ) -> IssuedCertificate:
        now = _now()
        not_after = min(now + timedelta(days=valid_days), self._ca_cert.not_valid_after_utc)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self._consortium),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                x509.NameAttribute(NameOID.COMMON_NAME, site_id),
            ]
        )
        ca_ski = self._ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return IssuedCertificate(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key),
            serial=serial,
        )

    def _read_crl(self) -> x509.CertificateRevocationList:
        path = self.directory / CRL_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"the CA's revocation list {path} is missing") from None
        try:
            crl = x509.load_pem_x509_crl(data)
        except ValueError as exc:
            raise CryptoError(f"{path} is not a PEM revocation list: {exc}") from None
        if not crl.is_signature_valid(self._ca_cert.public_key()):
            raise CryptoError(f"{path} is not signed by this consortium's CA")
        return crl

    def _write_crl(self, revoked: dict[int, datetime], *, crl_number: int) -> None:
        now = _now()
        ca_ski = self._ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._ca_cert.subject)
            .last_update(now - CLOCK_SKEW)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        for serial, when in sorted(revoked.items()):
            entry = (
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self._ca_key, hashes.SHA256())
        _write(self.directory / CRL_FILE, crl.public_bytes(serialization.Encoding.PEM), 0o644)


def identity_of(cert: bytes | x509.Certificate) -> Identity:
    """The :class:`Identity` a certificate (PEM, DER or parsed) names in its subject."""
    certificate = _as_certificate(cert)
    values: dict[str, str] = {}
    for label, oid in (
        ("CN", NameOID.COMMON_NAME),
        ("C", NameOID.COUNTRY_NAME),
        ("O", NameOID.ORGANIZATION_NAME),
        ("OU", NameOID.ORGANIZATIONAL_UNIT_NAME),
    ):
        attributes = certificate.subject.get_attributes_for_oid(oid)
        if len(attributes) != 1 or not isinstance(attributes[0].value, str):
            found = "none" if not attributes else f"{len(attributes)}"
            raise CryptoError(
                f"certificate subject must hold exactly one {label} attribute, found {found}"
            )
        values[label] = attributes[0].value
    if values["OU"] not in ROLES:
        raise CryptoError(
            f"certificate subject OU {values['OU']!r} is not a role ({', '.join(ROLES)})"
        )
    return Identity(
        site_id=values["CN"],
        country=values["C"],
        consortium=values["O"],
        serial=certificate.serial_number,
        role=values["OU"],
    )


def verify_issued_by(
    cert: bytes | x509.Certificate, ca_cert_pem: bytes, *, now: datetime | None = None
) -> None:
    """Check that the CA signed ``cert`` and that both are within their validity period.

    ``now`` (timezone-aware) defaults to the current time. Raises CryptoError otherwise.
    """
    certificate = _as_certificate(cert)
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"the CA certificate is not a PEM certificate: {exc}") from None
    _check_signed_by(certificate, ca_cert, what="certificate")
    if now is not None and now.tzinfo is None:
        raise ConfigError("verify_issued_by needs a timezone-aware 'now'")
    moment = now if now is not None else _now()
    for what, c in (("the CA certificate", ca_cert), ("certificate", certificate)):
        if moment < c.not_valid_before_utc:
            raise CryptoError(f"{what} is not valid before {c.not_valid_before_utc.isoformat()}")
        if moment > c.not_valid_after_utc:
            raise CryptoError(f"{what} expired on {c.not_valid_after_utc.isoformat()}")


# -- enrolment kit ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrolmentKit:
    """Everything a site needs to join: hub URL, CA certificate, node certificate and key."""

    site_id: str
    country: str
    consortium: str
    hub_url: str
    ca_cert_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def write(self, path: Path) -> None:
        """Write the kit as TOML, mode 0600 (it holds the node's private key)."""
        document = {
            "kit_version": KIT_VERSION,
            "site_id": self.site_id,
            "country": self.country,
            "consortium": self.consortium,
            "hub_url": self.hub_url,
            "ca_cert": self.ca_cert_pem.decode("ascii"),
            "cert": self.cert_pem.decode("ascii"),
            "key": self.key_pem.decode("ascii"),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, tomli_w.dumps(document).encode("utf-8"), 0o600)

    @classmethod
    def read(cls, path: Path) -> EnrolmentKit:
        """Read and check a kit: its certificate must name its site and come from its CA."""
        path = Path(path)
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"enrolment kit {path} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read enrolment kit {path}: {exc}") from None

        def text(key: str) -> str:
            if key not in document:
                raise ConfigError(f"enrolment kit {path} has no key {key!r}")
            value = document[key]
            if not isinstance(value, str) or not value:
                raise ConfigError(f"enrolment kit {path}: key {key!r} must be a non-empty string")
            return value

        version = document.get("kit_version")
        if version is None:
            raise ConfigError(f"enrolment kit {path} has no key 'kit_version'")
        if version != KIT_VERSION or isinstance(version, bool):
            raise ConfigError(
                f"enrolment kit {path}: key 'kit_version' is {version!r}; this version of "
                f"Cordiale reads kit_version {KIT_VERSION}"
            )
        site_id, country = text("site_id"), text("country")
        consortium, hub_url = text("consortium"), text("hub_url")
        ca_pem, cert_pem, key_pem = (text(k).encode("ascii", "replace") for k in _PEM_KEYS)
        for key, value, check in (
            ("site_id", site_id, _check_site_id),
            ("country", country, _check_country),
        ):
            try:
                check(value)
            except ConfigError as exc:
                raise ConfigError(f"enrolment kit {path}: invalid key {key!r}: {exc}") from None
        _check_hub_url(hub_url, where=f"enrolment kit {path}: key 'hub_url'")

        certificate = _as_certificate(cert_pem, what=f"enrolment kit {path}: key 'cert'")
        verify_issued_by(certificate, ca_pem)
        identity = identity_of(certificate)
        expected = Identity(site_id, country, consortium, certificate.serial_number, "node")
        if identity != expected:
            raise CryptoError(
                f"enrolment kit {path}: the certificate names site {identity.site_id!r} "
                f"({identity.country}, {identity.consortium!r}, role {identity.role!r}), "
                f"not site {site_id!r} ({country}, {consortium!r}, role 'node')"
            )
        key = _load_key(key_pem, what=f"enrolment kit {path}: key 'key'")
        if not _same_public_key(key, certificate):
            raise CryptoError(f"enrolment kit {path}: the private key does not match the cert")
        return cls(
            site_id=site_id,
            country=country,
            consortium=consortium,
            hub_url=hub_url,
            ca_cert_pem=ca_pem,
            cert_pem=cert_pem,
            key_pem=key_pem,
        )

    def materialise(self, directory: Path) -> tuple[Path, Path, Path]:
        """Write ``ca.pem``, ``node.pem`` and ``node.key`` (0600) into ``directory``.

        Returns ``(ca, cert, key)`` paths, ready for :func:`client_ssl_context`.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        ca, cert, key = directory / CA_CERT, directory / NODE_CERT_FILE, directory / NODE_KEY_FILE
        _write(ca, self.ca_cert_pem, 0o644)
        _write(cert, self.cert_pem, 0o644)
        _write(key, self.key_pem, 0o600)
        return ca, cert, key


_PEM_KEYS = ("ca_cert", "cert", "key")


# -- helpers ----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _check_site_id(site_id: str) -> None:
    if not isinstance(site_id, str) or not _SITE_ID.match(site_id):
        raise ConfigError(
            f"invalid site id {site_id!r}: use 1 to 63 lowercase letters, digits and '-', "
            "not starting or ending with '-' (a DNS label)"
        )


def _check_country(country: str) -> None:
    if not isinstance(country, str) or not _COUNTRY.match(country):
        raise ConfigError(
            f"invalid country {country!r}: use a 2-letter upper-case ISO 3166 code such as 'FR'"
        )


def _check_consortium(consortium: str) -> None:
    if (
        not isinstance(consortium, str)
        or not 1 <= len(consortium) <= 64
        or not consortium.isprintable()
        or consortium != consortium.strip()
    ):
        raise ConfigError(
            f"invalid consortium name {consortium!r}: use 1 to 64 printable characters "
            "without leading or trailing spaces"
        )


def _check_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or valid_days <= 0:
        raise ConfigError(f"valid_days must be a positive integer, got {valid_days!r}")


def _check_hub_url(hub_url: str, *, where: str) -> None:
    if not isinstance(hub_url, str) or not re.match(r"^https://[^\s/]+", hub_url):
        raise ConfigError(f"{where} must be an https:// URL, got {hub_url!r}")


def _parse_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    if isinstance(hosts, str) or not hosts:
        raise ConfigError("hub_hosts must be a non-empty list of host names or IP addresses")
    names: list[x509.GeneralName] = []
    for host in hosts:
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise ConfigError(f"invalid hub host {host!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _as_certificate(
    cert: bytes | x509.Certificate, *, what: str = "certificate"
) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    if not isinstance(cert, bytes | bytearray):
        raise CryptoError(f"{what}: expected PEM or DER bytes, got {type(cert).__name__}")
    data = bytes(cert)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise CryptoError(f"{what} cannot be parsed: {exc}") from None


def _load_cert_file(path: Path) -> x509.Certificate:
    return _as_certificate(path.read_bytes(), what=str(path))


def _load_key(data: bytes, *, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"{what} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError(f"{what} is not an ECDSA key")
    return key


def _load_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    return _load_key(path.read_bytes(), what=str(path))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _same_public_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def _check_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate, *, what: str) -> None:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CryptoError(f"{what} not issued by this consortium's CA") from None


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename) with ``mode``."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed os.open's mode
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
