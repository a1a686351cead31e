"""The node agent: dials out to the hub over mutual TLS, pulls tasks, runs them, posts replies.

A hospital opens no port: the agent long-polls ``GET /v1/node/tasks`` and posts each reply to
``/v1/node/replies``. It registers its datasets first (metadata and row counts only), sends
heartbeats while a long task runs, and reconnects with capped exponential backoff (with jitter)
whenever the hub is unreachable, so a restarted hub finds its nodes back within seconds. Tasks run
through the same :class:`~cordiale.node.runtime.NodeRuntime` as simulation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from cordiale.core.codec import DecodeLimits, decode_message
from cordiale.core.errors import (
    AuthenticationError,
    CryptoError,
    IntegrityError,
    TransportError,
    WireError,
)
from cordiale.crypto.pki import EnrolmentKit
from cordiale.crypto.tls import client_ssl_context, peer_identity
from cordiale.governance.audit import AuditEntry, AuditLog
from cordiale.node.config import NodeConfig, SiteData
from cordiale.node.runtime import NodeRuntime

__all__ = ["AUDIT_FILE", "NodeAgent"]

log = logging.getLogger(__name__)

WIRE_TYPE = "application/vnd.cordiale.message"
AUDIT_FILE = "audit.jsonl"


class NodeAgent:
    """One site's connection to the hub. :meth:`run` blocks until :meth:`stop`."""

    def __init__(
        self,
        kit: EnrolmentKit,
        config: NodeConfig,
        *,
        hub_url: str | None = None,
        poll_wait: float = 20.0,
        heartbeat_every: float = 5.0,
        max_backoff: float = 5.0,
        limits: DecodeLimits | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.kit = kit
        self.site = kit.site_id
        self.hub_url = (hub_url or kit.hub_url).rstrip("/")
        self.data = SiteData(self.site, config)
        self.runtime = NodeRuntime(
            self.site,
            self.data.resolve,
            limits=limits,
            privacy=config.privacy_keeper(),
            policy=config.site_policy(),
            approvals=config.plan_approvals() if config.node.require_plan_approval else None,
        )
        # what leaves this site is recorded, signed with the node key, before it leaves
        self.audit = AuditLog(config.node.state_dir / AUDIT_FILE, signing_key_pem=kit.key_pem)
        self.poll_wait = poll_wait
        self.heartbeat_every = heartbeat_every
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._on_event = on_event or (lambda line: log.info("%s", line))
        self.tasks_done = 0
        with tempfile.TemporaryDirectory(prefix="cordiale-kit-") as d:
            ca, cert, key = kit.materialise(Path(d))
            self._ssl = client_ssl_context(ca, cert, key)  # keys are read now; files go away

    def stop(self) -> None:
        self._stop.set()

    # -- HTTP --------------------------------------------------------------------------------
    def _client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.hub_url,
            verify=self._ssl,
            timeout=httpx.Timeout(connect=5.0, read=self.poll_wait + 15.0, write=60.0, pool=5.0),
            headers={"user-agent": f"cordiale-node/{self.site}"},
        )

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code in (401, 403):
            raise AuthenticationError(f"the hub refused this node: {_detail(response)}")
        if response.status_code >= 400:
            raise TransportError(f"hub answered {response.status_code}: {_detail(response)}")
        return response

    @contextmanager
    def _heartbeats(self, client: httpx.Client) -> Any:
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.heartbeat_every):
                # a lost hub is noticed by the main loop when it posts the reply
                with contextlib.suppress(httpx.HTTPError):
                    client.post("/v1/node/heartbeat")

        t = threading.Thread(target=beat, name="heartbeat", daemon=True)
        t.start()
        try:
            yield
        finally:
            done.set()
            t.join(timeout=2)

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> None:
        """Connect, serve tasks, reconnect after failures; return when stopped."""
        self.data.check_local_contracts()
        datasets = self.data.summary()
        backoff = 0.25
        while not self._stop.is_set():
            try:
                with self._client() as client:
                    # where results go, from the hub's own certificate (site policies use it)
                    self.runtime.hub_country = peer_identity(self.hub_url, self._ssl).country
                    # before this log shows the hub anything new: does it hold what it showed?
                    anchor = self._check(client.get("/v1/node/audit-anchor")).json()
                    self._check_anchor(anchor.get("audit_anchor"))
                    hello = json.dumps({"datasets": datasets}).encode()
                    entry = self._record("node.hello", "hub", hello, {"datasets": len(datasets)})
                    self._check(
                        client.post(
                            "/v1/node/hello",
                            content=hello,
                            headers={"content-type": "application/json", **_anchor(entry)},
                        )
                    )
                    self._on_event(f"{self.site}: connected to {self.hub_url}")
                    backoff = 0.25
                    self._serve(client)
            except (AuthenticationError, IntegrityError):
                raise  # a revoked certificate or a rolled-back audit log: retrying cannot help
            except (httpx.HTTPError, TransportError, CryptoError) as e:
                if self._stop.is_set():
                    break
                delay = min(self.max_backoff, backoff) * (0.5 + random.random() / 2)
                self._on_event(
                    f"{self.site}: hub unreachable ({type(e).__name__}); retry in {delay:.1f} s"
                )
                self._stop.wait(delay)
                backoff *= 2

    def _serve(self, client: httpx.Client) -> None:
        while not self._stop.is_set():
            response = self._check(client.get("/v1/node/tasks", params={"wait": self.poll_wait}))
            if response.status_code == 204:
                continue
            with self._heartbeats(client):
                reply = self.runtime.handle_bytes(response.content)
            entry = self._record_reply(response.headers.get("x-cordiale-message-id", ""), reply)
            answer = client.post(
                "/v1/node/replies",
                content=reply,
                headers={"content-type": WIRE_TYPE, **_anchor(entry)},
            )
            if answer.status_code in (400, 409, 413):  # e.g. the round closed before we answered
                self._on_event(f"{self.site}: reply not taken: {_detail(answer)}")
                continue
            self._check(answer)
            self.tasks_done += 1

    def _record(
        self, action: str, obj: str, payload: bytes, details: dict[str, str | int | float]
    ) -> AuditEntry:
        return self.audit.append(
            actor=f"site:{self.site}", action=action, object=obj, payload=payload, details=details
        )

    def _record_reply(self, task_id: str, reply: bytes) -> AuditEntry:
        try:
            env = decode_message(reply).envelope  # our own bytes: only the envelope is read
            obj = f"study/{env.study_id}/round/{env.round}/{env.stage}"
        except WireError:
            obj = "unknown"
        return self._record("task.reply", obj, reply, {"task": task_id})

    def _check_anchor(self, anchor: Any) -> None:
        """The hub keeps the newest head of this site's audit log that it was shown; the local
        log must still hold it, or entries were removed or the log replaced since."""
        if not isinstance(anchor, dict):
            return  # the hub has seen no head of this log yet
        count, last_hash = anchor.get("count"), anchor.get("last_hash")
        if not isinstance(count, int) or not isinstance(last_hash, str):
            raise TransportError("the hub sent a malformed audit anchor")
        if not self.audit.holds(count, last_hash):
            held = len(self.audit.entries())
            what = (
                f"holds {held} entries, the hub saw {count}: entries were removed (rolled back)"
                if held < count
                else f"no longer holds entry {count - 1} as the hub saw it: it was replaced"
            )
            raise IntegrityError(
                f"the audit log {self.audit.path} {what}; run 'cordiale audit verify' and "
                "investigate before this node serves again"
            )


def _anchor(entry: AuditEntry) -> dict[str, str]:
    """Headers showing the hub the audit log's head, the entry for what is being sent included."""
    return {"x-cordiale-audit-count": str(entry.seq + 1), "x-cordiale-audit-hash": entry.hash}


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("detail", body))
    except (json.JSONDecodeError, ValueError, AttributeError):
        return response.text[:200]
