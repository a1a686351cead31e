"""The hub anchors each site's audit log: a log rolled back or replaced at the site is caught.

A node shows the hub the head of its audit log (entries, last hash) with every hello and reply; the
hub keeps the newest. A node whose log now holds fewer entries is refused by the hub; a node whose
log no longer holds the anchored entry (replaced by another history) refuses to serve. Both over
real HTTPS with mutual TLS on loopback.
"""

from __future__ import annotations

import shutil

import httpx
import pytest

from consortium import SITES, LocalConsortium, study_spec, wait_until
from cordiale.core.errors import IntegrityError
from cordiale.governance.audit import AuditLog
from cordiale.node.agent import NodeAgent
from cordiale.node.config import NodeConfig


def _agent(c: LocalConsortium, site: str) -> NodeAgent:
    return NodeAgent(c.kits[site], NodeConfig.load(c.configs[site]), hub_url=c.url, poll_wait=1.0)


def _anchor(c: LocalConsortium, site: str) -> dict | None:
    with c.node_http(site) as http:
        return http.get("/v1/node/audit-anchor").json()["audit_anchor"]


@pytest.fixture
def served(tmp_path):
    """A consortium that ran a study; oxford's log as it was right after connecting is kept."""
    with LocalConsortium(tmp_path) as c:
        c.start_hub()
        agent = c.start_node("oxford")
        wait_until(lambda: _anchor(c, "oxford") is not None)
        early = tmp_path / "early"
        early.mkdir()
        for path in (agent.audit.path, agent.audit.head_path):
            shutil.copy2(path, early / path.name)
        for site in SITES:
            if site != "oxford":
                c.start_node(site)
        c.run_study(study_spec(list(SITES), rounds=1))
        c.stop_node("oxford")
        yield c, agent.audit, early


def test_the_anchor_follows_every_reply(served):
    c, log, _ = served
    entries = AuditLog(log.path).entries()
    assert _anchor(c, "oxford") == {"count": len(entries), "last_hash": entries[-1].hash}
    assert entries[-1].action == "task.reply"  # shown with the last reply that left


def test_a_rolled_back_log_makes_the_node_refuse_to_serve(served):
    c, log, early = served
    anchored = _anchor(c, "oxford")
    for path in (log.path, log.head_path):  # someone restores an older copy of the log
        shutil.copy2(early / path.name, path)

    with pytest.raises(IntegrityError, match=rf"holds 1 entries, the hub saw {anchored['count']}"):
        _agent(c, "oxford").run()

    assert _anchor(c, "oxford") == anchored  # the anchor did not move back


def test_the_hub_refuses_a_head_that_went_back_and_records_it(served):
    """A node that skips its own check (older or altered software) is stopped by the hub."""
    c, _, _ = served
    anchored = _anchor(c, "oxford")
    with c.node_http("oxford") as http:
        for count, digest in ((1, "0" * 64), (anchored["count"], "f" * 64)):
            hello = http.post(
                "/v1/node/hello",
                json={"datasets": {}},
                headers={"x-cordiale-audit-count": str(count), "x-cordiale-audit-hash": digest},
            )
            assert hello.status_code == 403 and "went back" in hello.json()["detail"]
        same = {"x-cordiale-audit-count": str(anchored["count"])}
        same["x-cordiale-audit-hash"] = anchored["last_hash"]
        assert http.post("/v1/node/hello", json={"datasets": {}}, headers=same).status_code == 200

    assert _anchor(c, "oxford") == anchored
    hub_log = AuditLog(c.settings.home / "audit.jsonl")
    events = hub_log.entries(action="site.audit_rollback")
    assert [(e.actor, e.details["shown"]) for e in events] == [
        ("site:oxford", 1),
        ("site:oxford", anchored["count"]),
    ]


def test_a_replaced_log_makes_the_node_refuse_to_serve(served):
    c, log, _ = served
    anchored = _anchor(c, "oxford")
    log.path.unlink()  # a new log, signed with the same key, longer than the one the hub saw
    log.head_path.unlink()
    forged = AuditLog(log.path, signing_key_pem=c.kits["oxford"].key_pem)
    for i in range(anchored["count"] + 3):
        forged.append(actor="site:oxford", action="task.reply", object=f"study/x/round/{i}")

    with pytest.raises(IntegrityError, match=f"no longer holds entry {anchored['count'] - 1}"):
        _agent(c, "oxford").run()

    assert _anchor(c, "oxford") == anchored  # the node showed the hub nothing of the new log


def test_a_malformed_head_is_refused(served):
    c, _, _ = served
    with c.node_http("oxford") as http:
        for count, digest in (("-1", "0" * 64), ("12", "xyz"), ("1e3", "0" * 64)):
            r = http.post(
                "/v1/node/hello",
                json={"datasets": {}},
                headers={"x-cordiale-audit-count": count, "x-cordiale-audit-hash": digest},
            )
            assert r.status_code == 400, (count, digest, r.text)
    # and without a certificate there is no anchor to read
    with pytest.raises(httpx.HTTPError), c.node_http(None) as anonymous:
        anonymous.get("/v1/node/audit-anchor").raise_for_status()
