"""Where the hub keeps its state and the limits it enforces (no heavy imports: admin commands)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cordiale.governance.audit import AuditLog

__all__ = ["HubSettings", "hub_audit_log"]


@dataclass(frozen=True)
class HubSettings:
    home: Path
    db_url: str | None = None  # default: sqlite:///<home>/hub.db
    offline_after: float = 20.0  # a site not heard from for this long is offline
    max_poll_wait: float = 25.0
    max_upload_bytes: int = 256 * 1024 * 1024
    start_timeout: float = 60.0  # how long a study waits for its sites
    round_retries: int = 2

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.home / 'hub.db').resolve()}"

    @property
    def ca_dir(self) -> Path:
        return self.home / "ca"


def hub_audit_log(settings: HubSettings) -> AuditLog:
    """The hub's audit log (``HOME/audit.jsonl``), signed with the hub's TLS key."""
    from cordiale.governance.audit import AuditLog

    key = (settings.ca_dir / "hub.key").read_bytes()
    return AuditLog(settings.home / "audit.jsonl", signing_key_pem=key)
