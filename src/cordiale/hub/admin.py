"""Consortium administration: admitting sites and researchers, revoking them.

These run where the hub's home directory and database are (``cordiale site add``, ``cordiale
researcher add``), and take effect on a running hub at once: it checks every node certificate
against the ``sites`` table and every token against the ``researchers`` table on each request.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from cordiale.core.errors import ConfigError
from cordiale.crypto.pki import CertificateAuthority, EnrolmentKit
from cordiale.crypto.tokens import hash_token, new_token
from cordiale.hub.db import Database, ResearcherRow, SiteRow, utcnow
from cordiale.hub.settings import HubSettings, hub_audit_log

__all__ = ["add_researcher", "add_site", "init_consortium", "revoke_researcher", "revoke_site"]


def _db(settings: HubSettings) -> Database:
    db = Database(settings.database_url)
    db.migrate()
    return db


def init_consortium(
    settings: HubSettings, consortium: str, hub_hosts: list[str], *, hub_country: str = "ZZ"
) -> Path:
    """Create the CA (and the hub's TLS certificate) and the database; returns the CA dir.

    ``hub_country`` (ISO 3166; ZZ: unspecified) goes into the hub's certificate, where nodes read
    it to apply their sites' jurisdiction rules."""
    settings.home.mkdir(parents=True, exist_ok=True)
    CertificateAuthority.init(
        settings.ca_dir, consortium, hub_hosts=hub_hosts, hub_country=hub_country
    )
    _db(settings).dispose()
    hub_audit_log(settings).append(
        actor="admin", action="consortium.init", object=f"consortium/{consortium}"
    )
    return settings.ca_dir


def add_site(
    settings: HubSettings, site_id: str, country: str, hub_url: str, out: Path
) -> EnrolmentKit:
    """Admit a site (or re-issue its certificate, which supersedes the old one); write its kit."""
    ca = CertificateAuthority.load(settings.ca_dir)
    kit = ca.enrolment_kit(site_id, country, hub_url)
    serial = ca.check_peer(kit.cert_pem).serial
    db = _db(settings)
    try:
        with db.session() as s:
            row = s.get(SiteRow, site_id)
            if row is None:
                s.add(SiteRow(id=site_id, country=country, cert_serial=f"{serial:x}", datasets={}))
            else:
                if row.cert_serial:
                    ca.revoke(int(row.cert_serial, 16))
                row.country, row.cert_serial, row.revoked = country, f"{serial:x}", False
    finally:
        db.dispose()
    kit.write(out)
    hub_audit_log(settings).append(
        actor="admin",
        action="site.add",
        object=f"site/{site_id}",
        details={"serial": f"{serial:x}"},
    )
    return kit


def revoke_site(settings: HubSettings, site_id: str) -> None:
    ca = CertificateAuthority.load(settings.ca_dir)
    db = _db(settings)
    try:
        with db.session() as s:
            row = s.get(SiteRow, site_id)
            if row is None:
                raise ConfigError(f"no site {site_id!r} to revoke")
            ca.revoke(int(row.cert_serial, 16))
            row.revoked = True
    finally:
        db.dispose()
    hub_audit_log(settings).append(actor="admin", action="site.revoke", object=f"site/{site_id}")


def add_researcher(settings: HubSettings, name: str, org: str, *, days: int = 90) -> str:
    """Register a researcher; returns the bearer token (shown once, stored only as a hash)."""
    if days < 1:
        raise ConfigError(f"a token must be valid for at least one day; got {days}")
    token = new_token()
    db = _db(settings)
    try:
        with db.session() as s:
            s.add(
                ResearcherRow(
                    name=name,
                    org=org,
                    token_hash=hash_token(token),
                    expires_at=utcnow() + dt.timedelta(days=days),
                )
            )
    except IntegrityError:
        raise ConfigError(f"researcher {name!r} already exists") from None
    finally:
        db.dispose()
    hub_audit_log(settings).append(
        actor="admin", action="researcher.add", object=f"researcher/{name}", details={"org": org}
    )
    return token


def revoke_researcher(settings: HubSettings, name: str) -> None:
    """Revoke a researcher's token at once (a new one needs `researcher add` under a new name)."""
    db = _db(settings)
    try:
        with db.session() as s:
            row = s.get(ResearcherRow, name)
            if row is None:
                raise ConfigError(f"no researcher {name!r} to revoke")
            row.revoked_at = utcnow()
    finally:
        db.dispose()
    hub_audit_log(settings).append(
        actor="admin", action="researcher.revoke", object=f"researcher/{name}"
    )
