"""Governance: what a site and the hub can show a data-protection officer.

* :mod:`~cordiale.governance.policy` - a site's policy, checked by the node before any work;
* :mod:`~cordiale.governance.plans` - code approval: plans pinned by SHA-256;
* :mod:`~cordiale.governance.audit_format` - the entry format: canonical JSON, hashes,
  parsing, signatures (pure);
* :mod:`~cordiale.governance.audit` - :class:`AuditLog`, a tamper-evident, append-only audit log
  (a hash chain in a JSON-lines file, signed with the node key), and :func:`verify`, which checks
  it with nothing but the node certificate.

A node records what leaves it, with the digest of the bytes, never the bytes::

    log = AuditLog(state_dir / "audit.jsonl", signing_key_pem=kit.key_pem)
    log.append(actor=f"site:{kit.site_id}", action="task.reply",
               object=f"study/{study}/round/{r}", payload=reply_bytes)
    verify(state_dir / "audit.jsonl", public_key_pem=kit.cert_pem).ok
"""

from cordiale.governance.audit import (
    GENESIS,
    HEAD_SUFFIX,
    AuditEntry,
    AuditLog,
    DetailValue,
    VerifyReport,
    head_path,
    verify,
)

__all__ = [
    "GENESIS",
    "HEAD_SUFFIX",
    "AuditEntry",
    "AuditLog",
    "DetailValue",
    "VerifyReport",
    "head_path",
    "verify",
]
