"""Who may call what, and what a malformed upload gets: all over real HTTPS on loopback.

One consortium runs for the module (hub with a 1 MB upload limit, three node agents). The site
``imperial`` is admitted but has no agent: the tests play it by hand to hold a pending task.
"""

from __future__ import annotations

import datetime as dt
import pickle
import ssl
import threading

import httpx
import numpy as np
import pytest

from consortium import LocalConsortium, study_spec, wait_until
from cordiale.core.codec import encode_message
from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ArrayRecord
from cordiale.crypto.pki import CertificateAuthority, EnrolmentKit
from cordiale.hub.admin import add_site, revoke_site
from cordiale.hub.db import Database, ResearcherRow
from cordiale.learn.study import StudySpec

WIRE = "application/vnd.cordiale.message"
LIMIT = 1_000_000


@pytest.fixture(scope="module")
def c(tmp_path_factory):
    consortium = LocalConsortium(
        tmp_path_factory.mktemp("access"), max_upload_bytes=LIMIT, start_timeout=30.0
    )
    path = consortium.root / "imperial.kit"
    add_site(consortium.settings, "imperial", "GB", consortium.url, path)
    consortium.kits["imperial"] = EnrolmentKit.read(path)
    with consortium.start():
        yield consortium


@pytest.fixture(scope="module")
def pending(c):
    """A study of oxford + imperial whose stats task imperial has taken and not answered."""
    spec = study_spec(["imperial", "oxford"], round_timeout=60.0, min_sites=1)
    found: dict[str, object] = {}

    def poll() -> None:
        with c.node_http("imperial") as http:
            while "task" not in found:
                r = http.get("/v1/node/tasks", params={"wait": 1})
                if r.status_code == 200:
                    found["task"] = (r.headers["x-cordiale-message-id"], r.content)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    with c.client() as client:
        found["study"] = client.submit(StudySpec.parse(spec))
    poller.join(timeout=30)
    message_id, data = found["task"]
    return {"study": found["study"], "message_id": message_id, "data": data}


def _reply(task_id: str, sender: str = "imperial", **arrays: np.ndarray) -> Message:
    env = Envelope(
        study_id="x", round=0, stage="stats", sender=sender, recipient="hub", reply_to=task_id
    )
    return Message(env, Content(arrays={"a": ArrayRecord(arrays)} if arrays else {}))


# -- node identity ---------------------------------------------------------------------------


def test_node_endpoints_refuse_a_client_without_certificate(c):
    with c.node_http(None) as http:
        r = http.get("/v1/node/tasks", params={"wait": 0})
    assert r.status_code == 401
    assert "client certificate" in r.json()["detail"]


def test_a_certificate_of_another_ca_fails_the_handshake(c, tmp_path):
    rogue = CertificateAuthority.init(tmp_path / "rogue", "uk-fr-alliance")
    kit = rogue.enrolment_kit("oxford", "GB", c.url)  # same name, same consortium, wrong CA
    # TLS 1.3: the client learns of the refusal as a failed handshake or a dropped connection
    with pytest.raises(httpx.TransportError), c.node_http(None, kit=kit) as http:
        http.get("/v1/node/tasks", params={"wait": 0})


def test_a_revoked_certificate_is_refused_and_a_reissued_one_supersedes_the_old(c, tmp_path):
    add_site(c.settings, "cnrs", "FR", c.url, tmp_path / "cnrs.kit")
    first = EnrolmentKit.read(tmp_path / "cnrs.kit")
    with c.node_http(None, kit=first) as http:
        assert http.get("/v1/node/tasks", params={"wait": 0}).status_code == 204
    add_site(c.settings, "cnrs", "FR", c.url, tmp_path / "cnrs2.kit")  # re-issue
    second = EnrolmentKit.read(tmp_path / "cnrs2.kit")
    with c.node_http(None, kit=first) as http:
        assert http.get("/v1/node/tasks", params={"wait": 0}).status_code == 401
    with c.node_http(None, kit=second) as http:
        assert http.get("/v1/node/tasks", params={"wait": 0}).status_code == 204
    revoke_site(c.settings, "cnrs")
    with c.node_http(None, kit=second) as http:
        r = http.get("/v1/node/tasks", params={"wait": 0})
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_a_node_cannot_read_another_sites_task(c, pending):
    with c.node_http("oxford") as http:
        r = http.get(f"/v1/node/tasks/{pending['message_id']}")
    assert r.status_code == 403
    with c.node_http("imperial") as http:
        again = http.get(f"/v1/node/tasks/{pending['message_id']}")
    assert again.status_code == 200 and again.content == pending["data"]


def test_a_reply_claiming_another_sender_is_refused(c, pending):
    forged = encode_message(_reply(pending["message_id"], sender="imperial"))
    with c.node_http("oxford") as http:
        r = http.post("/v1/node/replies", content=forged, headers={"content-type": WIRE})
    assert r.status_code == 403
    assert "claims to come from 'imperial'" in r.json()["detail"]


# -- uploads ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ctype", "status", "says"),
    [
        (pickle.dumps({"update": np.zeros(3)}), WIRE, 400, "not a Cordiale message"),
        (b"", WIRE, 400, ""),
        (b'{"update": [1, 2, 3]}', "application/json", 400, WIRE),
        (b"CDLW\x01\xff\xff\xff\x7f{", WIRE, 400, "header"),
    ],
    ids=["pickled", "empty", "json", "lying-header-length"],
)
def test_malformed_uploads_get_a_4xx_that_names_the_problem(c, body, ctype, status, says):
    with c.node_http("imperial") as http:
        r = http.post("/v1/node/replies", content=body, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert says in r.json()["detail"]


def test_a_truncated_reply_is_refused(c, pending):
    data = encode_message(_reply(pending["message_id"], w=np.ones(1000, np.float32)))
    with c.node_http("imperial") as http:
        r = http.post("/v1/node/replies", content=data[:-100], headers={"content-type": WIRE})
    assert r.status_code == 400
    assert r.json()["error"] == "WireError"


def test_oversized_uploads_are_refused_before_they_are_read(c):
    big = b"CDLW" + b"\0" * (LIMIT + 10)
    with c.node_http("imperial") as http:
        declared = http.post("/v1/node/replies", content=big, headers={"content-type": WIRE})
        streamed = http.post(
            "/v1/node/replies",
            content=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
            headers={"content-type": WIRE},
        )
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert "limit" in streamed.json()["detail"]


def test_a_reply_to_no_pending_task_is_a_conflict(c):
    data = encode_message(_reply("0" * 32))
    with c.node_http("imperial") as http:
        r = http.post("/v1/node/replies", content=data, headers={"content-type": WIRE})
    assert r.status_code == 409
    assert "not pending" in r.json()["detail"]


def test_hello_must_be_json_with_datasets(c):
    with c.node_http("imperial") as http:
        r = http.post("/v1/node/hello", content=b"\x80\x04garbage")
    assert r.status_code == 400


def test_a_valid_reply_is_accepted_once_and_its_duplicate_ignored(c, pending):
    # an error reply: imperial refuses the study; the hub records it and the study goes on
    env = Envelope(
        study_id=pending["study"],
        round=0,
        stage="stats",
        sender="imperial",
        recipient="hub",
        reply_to=pending["message_id"],
    )
    from cordiale.core.messages import ErrorInfo

    data = encode_message(
        Message(env, Content(error=ErrorInfo(kind="PolicyRefusal", message="not today")))
    )
    with c.node_http("imperial") as http:
        first = http.post("/v1/node/replies", content=data, headers={"content-type": WIRE})
        second = http.post("/v1/node/replies", content=data, headers={"content-type": WIRE})
    assert (first.status_code, first.json()["status"]) == (202, "accepted")
    assert (second.status_code, second.json()["status"]) == (200, "duplicate")
    with c.client() as client:
        wait_until(lambda: client.status(pending["study"])["state"] == "failed", timeout=30)
        status = client.status(pending["study"])
    assert "imperial: PolicyRefusal: not today" in status["error"]


# -- researchers -----------------------------------------------------------------------------


def test_a_researcher_cannot_read_another_researchers_study(c, pending):
    with c.client("bob") as bob:
        r = bob._http.get(f"/v1/studies/{pending['study']}")
        model = bob._http.get(f"/v1/studies/{pending['study']}/model")
        mine = bob.studies()
    assert r.status_code == 403 and model.status_code == 403
    assert pending["study"] not in {s["id"] for s in mine}


@pytest.mark.parametrize("header", [None, "Bearer cdl_not-a-token", "Basic YWxpY2U6eA=="])
def test_study_endpoints_need_a_valid_token(c, header):
    headers = {"authorization": header} if header else {}
    verify = ssl.create_default_context(cafile=c.settings.ca_dir / "ca.pem")
    with httpx.Client(base_url=c.url, verify=verify) as http:
        r = http.get("/v1/studies", headers=headers)
    assert r.status_code == 401


def test_an_expired_token_is_refused(c):
    db = Database(c.settings.database_url)
    with db.session() as s:
        s.get(ResearcherRow, "bob").expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    db.dispose()
    with c.client("bob") as bob:
        r = bob._http.get("/v1/studies")
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_a_study_naming_unknown_sites_or_invalid_values_is_refused(c):
    bad = study_spec(["oxford", "atlantis"])
    with c.client() as client:
        r = client._http.post("/v1/studies", json=bad)
        typed = client._http.post("/v1/studies", json={"study": {"rounds": "many"}})
    assert r.status_code == 422 and "atlantis" in r.json()["detail"]
    assert typed.status_code == 422 and "study.rounds" in typed.json()["detail"]


# -- roles: a table of cross-object attempts, none of which may succeed ----------------------


@pytest.fixture(scope="module")
def carol(c):
    """A third researcher, for the tests below (bob's token is expired by another test)."""
    from cordiale.client import Credentials
    from cordiale.hub.admin import add_researcher

    token = add_researcher(c.settings, "carol", "imperial")
    c.credentials["carol"] = Credentials("carol", c.url, c.ca.ca_cert_pem.decode(), token)
    return "carol"


def _researcher_http(c, name: str | None) -> httpx.Client:
    headers = {"authorization": f"Bearer {c.credentials[name].token}"} if name else {}
    verify = ssl.create_default_context(cafile=c.settings.ca_dir / "ca.pem")
    return httpx.Client(base_url=c.url, verify=verify, headers=headers, timeout=10)


ATTEMPTS = [  # (who, method, path template, body) - every one must be refused
    ("carol", "GET", "/v1/studies/{study}", None),
    ("carol", "GET", "/v1/studies/{study}/results", None),
    ("carol", "GET", "/v1/studies/{study}/model", None),
    ("carol", "POST", "/v1/studies/{study}/grants", {"researcher": "carol"}),
    ("carol", "GET", "/v1/studies/{study}/../{study}", None),
    ("carol", "GET", "/v1/studies/0123456789ab", None),  # a guessed id
    ("carol", "GET", "/v1/studies/%2e%2e", None),
    (None, "GET", "/v1/studies/{study}", None),  # no token at all
    ("carol", "GET", "/v1/node/tasks?wait=0", None),  # a researcher on a node endpoint
]


@pytest.mark.parametrize(("who", "method", "path", "body"), ATTEMPTS)
def test_cross_object_attempts_are_refused(c, pending, carol, who, method, path, body):
    with _researcher_http(c, who) as http:
        r = http.request(method, path.format(study=pending["study"]), json=body)
    assert r.status_code in (401, 403, 404), (r.status_code, r.text)


def test_listing_shows_only_own_or_granted_studies_whatever_the_query(c, pending, carol):
    with _researcher_http(c, "carol") as http:
        for query in ("", "?owner=alice", "?include=all", "?owner=*&expand=studies"):
            r = http.get(f"/v1/studies{query}")
            assert r.status_code == 200 and r.json() == []


def test_a_grant_opens_reads_only_and_only_the_owner_may_grant(c, pending, carol):
    study = pending["study"]
    with c.client("alice") as alice:
        alice.grant(study, "carol")
    with _researcher_http(c, "carol") as http:
        assert http.get(f"/v1/studies/{study}").status_code == 200
        assert [s["id"] for s in http.get("/v1/studies").json()] == [study]
        again = http.post(f"/v1/studies/{study}/grants", json={"researcher": "bob"})
    assert again.status_code == 403  # reading is not owning


def test_a_revoked_token_is_refused_at_once(c, carol):
    from cordiale.hub.admin import revoke_researcher

    with _researcher_http(c, "carol") as http:
        assert http.get("/v1/studies").status_code == 200
        revoke_researcher(c.settings, "carol")
        r = http.get("/v1/studies")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
