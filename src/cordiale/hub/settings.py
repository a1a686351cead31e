"""Where the hub keeps its state and the limits it enforces (no heavy imports: admin commands)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["HubSettings"]


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
