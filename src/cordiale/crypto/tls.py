"""TLS contexts for the hub and its clients, and reading a server's identity.

The hub's context presents the hub certificate and accepts (optionally) client certificates that
chain to the consortium CA; endpoints that need one check it at the application layer. Clients
trust only the consortium CA and check the host name. :func:`peer_identity` lets a node read the
hub's country from the hub's own certificate.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cordiale.core.errors import ConfigError, CryptoError
from cordiale.crypto.pki import CertificateAuthority, Identity, identity_of

__all__ = ["client_ssl_context", "peer_identity", "server_ssl_context"]


def server_ssl_context(ca: CertificateAuthority) -> ssl.SSLContext:
    """The hub's TLS context: hub certificate, TLS ≥ 1.2, client certificates optional.

    A client certificate, when sent, must chain to the consortium CA (else the handshake fails);
    endpoints that need one check its presence, role and revocation with
    :meth:`CertificateAuthority.check_peer`.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(ca.hub_cert_path, ca.hub_key_path)
        context.load_verify_locations(cafile=ca.ca_cert_path)
    except FileNotFoundError as exc:
        raise ConfigError(f"cannot build the hub's TLS context: missing {exc.filename}") from None
    except ssl.SSLError as exc:
        raise CryptoError(f"cannot build the hub's TLS context: {exc}") from None
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_ssl_context(
    ca_cert: Path, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A client TLS context trusting only ``ca_cert``, with an optional client certificate.

    Checks the server's host name against its certificate. ``key`` may be left out when
    ``cert`` holds both certificate and key.
    """
    if key is not None and cert is None:
        raise ConfigError("a client key was given without its certificate")
    for path in (ca_cert, cert, key):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"cannot build a TLS client context: {path} does not exist")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_cert))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if cert is not None:
            context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise CryptoError(f"cannot build a TLS client context: {exc}") from None
    return context


def peer_identity(url: str, context: ssl.SSLContext, *, timeout: float = 10.0) -> Identity:
    """The identity in the certificate of the TLS server at ``url`` (verified by ``context``).

    A node uses it to learn the hub's country from the hub's own certificate, not from its word.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise CryptoError(f"cannot read the certificate of {url}: {exc}") from None
    if der is None:
        raise CryptoError(f"{url} presented no certificate")
    return identity_of(der)
