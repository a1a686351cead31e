"""Consortium PKI: CA directory, node certificates, revocation, enrolment kits, tokens, real TLS."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cordiale.core.errors import ConfigError, CryptoError
from cordiale.crypto.pki import (
    CA_CERT,
    CA_KEY,
    CONSORTIUM_FILE,
    CRL_FILE,
    HUB_CERT,
    HUB_KEY,
    CertificateAuthority,
    EnrolmentKit,
    Identity,
    identity_of,
    verify_issued_by,
)
from cordiale.crypto.tls import client_ssl_context, server_ssl_context
from cordiale.crypto.tokens import hash_token, new_token, token_matches

HUB_URL = "https://127.0.0.1:8443"
TIMEOUT = 5.0


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "ca", "Oncology Alliance")


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "other", "Oncology Alliance")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- CA directory --------------------------------------------------------------------------------


def test_init_writes_the_ca_directory_and_load_round_trips(tmp_path):
    directory = tmp_path / "consortium"
    ca = CertificateAuthority.init(directory, "Cardio EU", hub_hosts=("127.0.0.1", "hub.example"))
    for name in (CA_CERT, CA_KEY, HUB_CERT, HUB_KEY, CRL_FILE, CONSORTIUM_FILE):
        assert (directory / name).is_file(), name
    assert mode(directory) == 0o700
    assert mode(directory / CA_KEY) == 0o600
    assert mode(directory / HUB_KEY) == 0o600

    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert_pem)
    constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = ca_cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.ca and usage.key_cert_sign and usage.crl_sign
    assert isinstance(ca_cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca_cert.signature_hash_algorithm, hashes.SHA256)

    hub = x509.load_pem_x509_certificate((directory / HUB_CERT).read_bytes())
    san = hub.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["hub.example"]
    eku = hub.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert identity_of(hub).role == "hub"
    verify_issued_by(hub, ca.ca_cert_pem)
    assert ca.revoked_serials() == frozenset()

    again = CertificateAuthority.load(directory)
    assert again.consortium == "Cardio EU"
    assert again.directory == directory
    assert again.ca_cert_pem == ca.ca_cert_pem
    # The loaded CA signs with the same key: its certificates verify against the original CA.
    verify_issued_by(again.issue_node("site-a", "DE").cert_pem, ca.ca_cert_pem)


def test_init_twice_is_refused_and_keeps_the_first_ca(tmp_path):
    first = CertificateAuthority.init(tmp_path / "ca", "Alliance")
    with pytest.raises(ConfigError, match="already holds a consortium CA"):
        CertificateAuthority.init(tmp_path / "ca", "Another alliance")
    assert CertificateAuthority.load(tmp_path / "ca").ca_cert_pem == first.ca_cert_pem


def test_load_of_an_empty_directory_names_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"missing ca\.pem"):
        CertificateAuthority.load(tmp_path)


def test_load_names_a_single_missing_file(tmp_path):
    CertificateAuthority.init(tmp_path / "ca", "Alliance")
    (tmp_path / "ca" / HUB_KEY).unlink()
    with pytest.raises(ConfigError, match=r"missing hub\.key"):
        CertificateAuthority.load(tmp_path / "ca")


def test_load_refuses_a_ca_key_that_does_not_match_the_certificate(tmp_path, other_ca):
    CertificateAuthority.init(tmp_path / "ca", "Alliance")
    (tmp_path / "ca" / CA_KEY).write_bytes((other_ca.directory / CA_KEY).read_bytes())
    with pytest.raises(CryptoError, match="is not the key of"):
        CertificateAuthority.load(tmp_path / "ca")


# -- node certificates ---------------------------------------------------------------------------


def test_node_certificate_names_its_site_and_verifies_against_its_ca(ca):
    issued = ca.issue_node("charite-berlin", "DE")
    identity = identity_of(issued.cert_pem)
    assert identity == Identity(
        site_id="charite-berlin",
        country="DE",
        consortium="Oncology Alliance",
        serial=issued.serial,
        role="node",
    )
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert identity_of(cert.public_bytes(serialization.Encoding.DER)) == identity
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(issued.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    assert "key_pem" not in repr(issued)
    verify_issued_by(issued.cert_pem, ca.ca_cert_pem)
    assert ca.check_peer(issued.cert_pem) == identity


def test_certificate_of_another_ca_fails_verification(ca, other_ca):
    # Same consortium name, so same issuer name: only the signature tells them apart.
    foreign = other_ca.issue_node("charite-berlin", "DE")
    with pytest.raises(CryptoError, match="not issued by this consortium's CA"):
        verify_issued_by(foreign.cert_pem, ca.ca_cert_pem)
    with pytest.raises(CryptoError, match="not issued by this consortium's CA"):
        ca.check_peer(foreign.cert_pem)


def test_expired_and_not_yet_valid_certificates_fail_verification(ca):
    cert = x509.load_pem_x509_certificate(ca.issue_node("site-a", "FR", valid_days=1).cert_pem)
    after = cert.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CryptoError, match="expired"):
        verify_issued_by(cert, ca.ca_cert_pem, now=after)
    before = cert.not_valid_before_utc - timedelta(seconds=1)
    with pytest.raises(CryptoError, match="not valid before"):
        verify_issued_by(cert, ca.ca_cert_pem, now=before)


@pytest.mark.parametrize(
    "site_id", ["", "Site-A", "site_a", "site a", "-site", "site-", "a" * 64, "sité", "a.b"]
)
def test_bad_site_ids_are_refused(ca, site_id):
    with pytest.raises(ConfigError, match="invalid site id"):
        ca.issue_node(site_id, "FR")


@pytest.mark.parametrize("site_id", ["a", "0", "site-01", "a" * 63])
def test_good_site_ids_are_accepted(ca, site_id):
    assert identity_of(ca.issue_node(site_id, "FR").cert_pem).site_id == site_id


@pytest.mark.parametrize("country", ["", "fr", "FRA", "F", "F1", "Fr"])
def test_bad_countries_are_refused(ca, country):
    with pytest.raises(ConfigError, match="invalid country"):
        ca.issue_node("site-a", country)


def test_identity_of_refuses_a_subject_without_the_consortium_fields(ca):
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert_pem)  # CN and O only
    with pytest.raises(CryptoError, match="C attribute"):
        identity_of(ca_cert)
    with pytest.raises(CryptoError, match="cannot be parsed"):
        identity_of(b"not a certificate")


# -- revocation ----------------------------------------------------------------------------------


def test_revoke_puts_the_serial_in_a_signed_crl_and_is_idempotent(tmp_path):
    ca = CertificateAuthority.init(tmp_path / "ca", "Alliance")
    issued, kept = ca.issue_node("site-a", "IT"), ca.issue_node("site-b", "IT")
    ca.revoke(issued.serial)
    crl = x509.load_pem_x509_crl(ca.crl_pem())
    ca_cert = x509.load_pem_x509_certificate(ca.ca_cert_pem)
    assert crl.is_signature_valid(ca_cert.public_key())
    assert crl.issuer == ca_cert.subject
    assert crl.get_revoked_certificate_by_serial_number(issued.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial) is None
    assert crl.next_update_utc - crl.last_update_utc >= timedelta(days=7)
    assert ca.revoked_serials() == {issued.serial}

    ca.revoke(issued.serial)
    assert len(x509.load_pem_x509_crl(ca.crl_pem())) == 1
    assert CertificateAuthority.load(tmp_path / "ca").revoked_serials() == {issued.serial}

    with pytest.raises(CryptoError, match="revoked"):
        ca.check_peer(issued.cert_pem)
    assert ca.check_peer(kept.cert_pem).site_id == "site-b"


def test_a_crl_signed_by_another_ca_is_refused(tmp_path, other_ca):
    ca = CertificateAuthority.init(tmp_path / "ca", "Alliance")
    (tmp_path / "ca" / CRL_FILE).write_bytes(other_ca.crl_pem())
    with pytest.raises(CryptoError, match="not signed by this consortium's CA"):
        ca.revoked_serials()


# -- enrolment kit -------------------------------------------------------------------------------


def test_kit_round_trips_with_mode_0600(ca, tmp_path):
    kit = ca.enrolment_kit("hospital-lyon", "FR", HUB_URL)
    path = tmp_path / "kits" / "hospital-lyon.toml"
    kit.write(path)
    assert mode(path) == 0o600
    document = tomllib.loads(path.read_text())
    assert document["kit_version"] == 1
    assert set(document) == {
        "kit_version",
        "site_id",
        "country",
        "consortium",
        "hub_url",
        "ca_cert",
        "cert",
        "key",
    }
    assert EnrolmentKit.read(path) == kit
    assert "key_pem" not in repr(kit)

    ca_path, cert_path, key_path = kit.materialise(tmp_path / "node")
    assert ca_path.read_bytes() == ca.ca_cert_pem
    assert identity_of(cert_path.read_bytes()).site_id == "hospital-lyon"
    assert mode(key_path) == 0o600
    assert isinstance(client_ssl_context(ca_path, cert_path, key_path), ssl.SSLContext)


def rewrite(path: Path, **changes: object) -> Path:
    document = tomllib.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    path.write_text(tomli_w.dumps(document))
    return path


@pytest.fixture
def kit_path(ca, tmp_path) -> Path:
    path = tmp_path / "kit.toml"
    ca.enrolment_kit("hospital-lyon", "FR", HUB_URL).write(path)
    return path


def test_kit_with_a_missing_key_names_file_and_key(kit_path):
    rewrite(kit_path, hub_url=None)
    with pytest.raises(ConfigError, match=r"kit\.toml has no key 'hub_url'"):
        EnrolmentKit.read(kit_path)


def test_kit_with_an_invalid_key_names_it(kit_path):
    rewrite(kit_path, country="france")
    with pytest.raises(ConfigError, match=r"kit\.toml: invalid key 'country'"):
        EnrolmentKit.read(kit_path)


def test_missing_or_unreadable_kit_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.toml does not exist"):
        EnrolmentKit.read(tmp_path / "absent.toml")
    (tmp_path / "broken.toml").write_text("site_id = ")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        EnrolmentKit.read(tmp_path / "broken.toml")


def test_kit_with_a_tampered_certificate_is_refused(kit_path):
    document = tomllib.loads(kit_path.read_text())
    cert = x509.load_pem_x509_certificate(document["cert"].encode())
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # flip a bit of the signature
    tampered = x509.load_der_x509_certificate(bytes(der))
    rewrite(kit_path, cert=tampered.public_bytes(serialization.Encoding.PEM).decode())
    with pytest.raises(CryptoError, match="not issued by this consortium's CA"):
        EnrolmentKit.read(kit_path)


def test_kit_with_the_certificate_of_another_site_is_refused(ca, kit_path):
    other = ca.issue_node("hospital-turin", "IT")
    rewrite(kit_path, cert=other.cert_pem.decode(), key=other.key_pem.decode())
    with pytest.raises(CryptoError, match="names site 'hospital-turin'"):
        EnrolmentKit.read(kit_path)


def test_kit_with_a_certificate_of_another_ca_is_refused(other_ca, kit_path):
    foreign = other_ca.issue_node("hospital-lyon", "FR")
    rewrite(kit_path, cert=foreign.cert_pem.decode(), key=foreign.key_pem.decode())
    with pytest.raises(CryptoError, match="not issued by this consortium's CA"):
        EnrolmentKit.read(kit_path)


def test_kit_with_a_key_of_another_certificate_is_refused(ca, kit_path):
    rewrite(kit_path, key=ca.issue_node("hospital-lyon", "FR").key_pem.decode())
    with pytest.raises(CryptoError, match="private key does not match"):
        EnrolmentKit.read(kit_path)


# -- researcher tokens ---------------------------------------------------------------------------


def test_tokens_are_random_and_match_only_their_hash():
    token, other = new_token(), new_token()
    assert token.startswith("cdl_") and len(token) == 4 + 43
    assert token != other
    digest = hash_token(token)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert token not in digest
    assert token_matches(token, digest)
    assert not token_matches(other, digest)
    assert not token_matches(token[:-1], digest)
    assert not token_matches(token, digest.upper())
    assert not token_matches(token, "é")


# -- real mutual TLS on loopback -----------------------------------------------------------------


class OneShotServer:
    """Accepts one TLS connection on 127.0.0.1 in a thread and records what it saw."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        self.context = context
        self.peer_der: bytes | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.settimeout(TIMEOUT)
            with self.context.wrap_socket(conn, server_side=True) as tls:
                self.peer_der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
        except BaseException as exc:
            self.error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        self.thread.join(TIMEOUT * 2)
        assert not self.thread.is_alive()


def connect(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        return tls.recv(2)


def test_mutual_tls_handshake_identifies_the_node(ca, tmp_path):
    ca_path, cert_path, key_path = ca.enrolment_kit("site-tls", "ES", HUB_URL).materialise(tmp_path)
    server = OneShotServer(server_ssl_context(ca))
    assert connect(client_ssl_context(ca_path, cert_path, key_path), server.port) == b"ok"
    server.join()
    assert server.error is None
    assert server.peer_der is not None
    assert identity_of(server.peer_der).site_id == "site-tls"
    assert ca.check_peer(server.peer_der).country == "ES"


def test_client_without_certificate_connects_but_presents_no_identity(ca, tmp_path):
    server = OneShotServer(server_ssl_context(ca))
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.ca_cert_pem)
    assert connect(client_ssl_context(ca_path), server.port) == b"ok"
    server.join()
    assert server.error is None
    assert server.peer_der is None


def test_client_certificate_of_another_ca_fails_the_handshake(ca, other_ca, tmp_path):
    foreign = other_ca.enrolment_kit("site-tls", "ES", HUB_URL)
    _, cert_path, key_path = foreign.materialise(tmp_path / "foreign")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca.ca_cert_pem)  # the client trusts the right hub
    server = OneShotServer(server_ssl_context(ca))
    # Under TLS 1.3 the client learns of the refusal only when it reads.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(client_ssl_context(ca_path, cert_path, key_path), server.port)
    server.join()
    assert isinstance(server.error, ssl.SSLError)
    assert server.peer_der is None


def test_client_refuses_a_hub_of_another_ca(other_ca, tmp_path, ca):
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(other_ca.ca_cert_pem)
    server = OneShotServer(server_ssl_context(ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(client_ssl_context(ca_path), server.port)
    server.join()
    assert isinstance(server.error, ssl.SSLError | ConnectionError)


def test_client_context_names_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.pem does not exist"):
        client_ssl_context(tmp_path / "absent.pem")


def test_forged_self_signed_certificate_with_the_same_names_is_refused(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.load_pem_x509_certificate(ca.ca_cert_pem).subject
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Oncology Alliance"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "node"),
            x509.NameAttribute(NameOID.COMMON_NAME, "hospital-lyon"),
        ]
    )
    issued = ca.issue_node("hospital-lyon", "FR")
    real = x509.load_pem_x509_certificate(issued.cert_pem)
    forged = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(real.serial_number)
        .not_valid_before(real.not_valid_before_utc)
        .not_valid_after(real.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )
    assert identity_of(forged) == identity_of(real)  # the names alone prove nothing
    with pytest.raises(CryptoError, match="not issued by this consortium's CA"):
        verify_issued_by(forged, ca.ca_cert_pem)
