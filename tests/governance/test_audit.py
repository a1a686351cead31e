"""Audit log: round trip, digests not bytes, signed hash chain, tamper detection, crashes,
concurrent appends from threads and processes, export for a data-protection officer."""

from __future__ import annotations

import base64
import doctest
import hashlib
import json
import multiprocessing
import stat
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cordiale.core.errors import ConfigError, CryptoError
from cordiale.crypto.pki import CertificateAuthority, IssuedCertificate
from cordiale.governance import GENESIS, AuditLog, audit, head_path, verify

HASHED = ("seq", "time", "actor", "action", "object", "payload_sha256", "payload_size")
HASHED += ("details", "prev")
N = 10


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> CertificateAuthority:
    return CertificateAuthority.init(tmp_path_factory.mktemp("pki") / "ca", "test")


@pytest.fixture(scope="module")
def oxford(ca) -> IssuedCertificate:
    return ca.issue_node("oxford", "GB")


@pytest.fixture(scope="module")
def lyon(ca) -> IssuedCertificate:
    return ca.issue_node("lyon", "FR")


def fill(log: AuditLog, count: int = N) -> None:
    for i in range(count):
        log.append(
            actor="site:oxford" if i % 2 else "hub",
            action="task.reply" if i % 2 else "round.commit",
            object=f"study/abc123/round/{i}",
            payload=f"update {i}".encode(),
            details={"round": i, "rows": 100 + i},
        )


@pytest.fixture
def signed_log(tmp_path, oxford) -> Path:
    """A log of N entries signed with Oxford's node key."""
    log = AuditLog(tmp_path / "audit.jsonl", signing_key_pem=oxford.key_pem)
    fill(log)
    return log.path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def canonical(value: dict) -> bytes:
    """The canonical JSON the module documents, written out independently."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def rehash(entry: dict) -> dict:
    return {**entry, "hash": hashlib.sha256(canonical({k: entry[k] for k in HASHED})).hexdigest()}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def public_key_pem(issued: IssuedCertificate) -> bytes:
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    return cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# -------------------------------------------------------------------- workers for spawned processes


def _append_in_process(path: str, key_pem: bytes, worker: int, count: int) -> int:
    log = AuditLog(Path(path), signing_key_pem=key_pem)
    for i in range(count):
        log.append(actor=f"worker:{worker}", action="task.reply", object=f"w{worker}/{i}")
    return count


# ------------------------------------------------------------------------------------ round trip


def test_append_entries_and_filters_round_trip(tmp_path):
    # Prepare
    log = AuditLog(tmp_path / "nested" / "dir" / "audit.jsonl")

    # Execute
    written = [
        log.append(actor="researcher:alice", action="study.submit", object="study/abc123"),
        log.append(
            actor="hub",
            action="round.commit",
            object="study/abc123/round/0",
            details={"sites": 3, "mean_loss": 0.25, "dp": True, "note": None},
        ),
        log.append(
            actor="site:oxford", action="task.reply", object="study/abc123/round/0", payload=b"x"
        ),
        log.append(actor="admin", action="site.add", object="site/lyon"),
    ]

    # Assert: what was written is what is read, in order, chained.
    assert log.entries() == written
    assert [e.seq for e in written] == [0, 1, 2, 3]
    assert written[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in pairwise(written))
    assert all(e.signature is None for e in written)
    assert written[1].details == {"sites": 3, "mean_loss": 0.25, "dp": True, "note": None}
    when = datetime.fromisoformat(written[0].time)
    assert when.utcoffset() == timedelta(0)
    # Filters: exact action and actor, object by prefix, all combined.
    assert log.entries(action="round.commit") == [written[1]]
    assert log.entries(actor="site:oxford") == [written[2]]
    assert log.entries(object_prefix="study/abc123/round/") == written[1:3]
    assert log.entries(object_prefix="study/", actor="hub", action="round.commit") == [written[1]]
    assert log.entries(action="nothing") == []
    assert verify(log.path).ok


def test_the_payload_is_kept_as_its_digest_never_its_bytes(tmp_path):
    # Prepare
    log = AuditLog(tmp_path / "audit.jsonl")
    payload = b"PATIENT-0042 genotype rs1234=AG; " * 20

    # Execute
    entry = log.append(actor="site:oxford", action="task.reply", object="m/1", payload=payload)

    # Assert
    assert entry.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert entry.payload_size == len(payload)
    for stored in (log.path.read_bytes(), log.head_path.read_bytes()):
        assert b"PATIENT" not in stored
        assert base64.b64encode(payload)[:40] not in stored
        assert payload.hex()[:40].encode() not in stored
    assert log.append(actor="hub", action="a", object="o").payload_sha256 is None


def test_files_are_private_and_one_line_per_entry(tmp_path):
    # Prepare: details with characters that other line splitters treat as line ends.
    log = AuditLog(tmp_path / "a" / "b" / "audit.jsonl")
    details = {"note": "line\nbreak\u2028and\x85more", "ratio": 1.5, "é": "ü"}

    # Execute
    log.append(actor="admin", action="site.add", object="site/lyon", details=details)
    log.append(actor="admin", action="site.add", object="site/oxford")

    # Assert
    assert mode(log.path) == 0o600
    assert mode(log.head_path) == 0o600
    assert log.head_path == head_path(log.path) == tmp_path / "a" / "b" / "audit.jsonl.head"
    assert log.path.read_bytes().count(b"\n") == 2
    assert log.entries()[0].details == details
    assert verify(log.path).ok


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"actor": ""}, "actor"),
        ({"action": "a\nb"}, "action"),
        ({"object": "o" * 1025}, "object"),
        ({"details": {"nested": {"a": 1}}}, "details['nested']"),
        ({"details": {"x": float("nan")}}, "details['x']"),
        ({"details": {1: "x"}}, "details key"),
        ({"details": {"blob": "x" * 2000}}, "at most 1024"),
        ({"payload": "not bytes"}, "payload"),
    ],
)
def test_invalid_arguments_are_refused(tmp_path, arguments, fragment):
    # Prepare
    log = AuditLog(tmp_path / "audit.jsonl")
    call = {"actor": "hub", "action": "round.commit", "object": "study/s"} | arguments

    # Execute
    with pytest.raises(ConfigError) as info:
        log.append(**call)

    # Assert: nothing was written.
    assert fragment in str(info.value)
    assert log.entries() == []


# ---------------------------------------------------------------------------------------- verify


def test_an_intact_signed_log_verifies_with_the_certificate_or_the_public_key(signed_log, oxford):
    # Execute
    reports = [
        verify(signed_log, public_key_pem=oxford.cert_pem),
        verify(signed_log, public_key_pem=public_key_pem(oxford)),
        verify(signed_log),  # the chain and head alone
        AuditLog(signed_log, signing_key_pem=oxford.key_pem).verify(),
    ]

    # Assert
    for report in reports:
        assert (report.ok, report.entries, report.first_bad, report.problem) == (
            True,
            N,
            None,
            None,
        )


def test_hashes_and_signatures_follow_the_documented_canonical_form(signed_log, oxford):
    # Prepare: recompute everything from the file with nothing but json, hashlib, cryptography.
    public = x509.load_pem_x509_certificate(oxford.cert_pem).public_key()
    previous = GENESIS

    # Execute / Assert
    for index, line in enumerate(lines_of(signed_log)):
        assert line.endswith(b"\n")
        entry = json.loads(line)
        assert line == canonical(entry) + b"\n"
        assert entry["seq"] == index
        assert entry["prev"] == previous
        assert rehash(entry)["hash"] == entry["hash"]
        signature = base64.b64decode(entry["signature"])
        public.verify(signature, entry["hash"].encode("ascii"), ec.ECDSA(hashes.SHA256()))
        previous = entry["hash"]
    head = json.loads(head_path(signed_log).read_bytes())
    assert (head["count"], head["last_hash"]) == (N, previous)
    message = f"{N}:{previous}".encode("ascii")
    public.verify(base64.b64decode(head["signature"]), message, ec.ECDSA(hashes.SHA256()))


def edit_a_field(path: Path) -> None:
    lines = lines_of(path)
    lines[4] = lines[4].replace(b'"rows":104', b'"rows":999')
    path.write_bytes(b"".join(lines))


def delete_a_middle_line(path: Path) -> None:
    lines = lines_of(path)
    del lines[4]
    path.write_bytes(b"".join(lines))


def swap_two_lines(path: Path) -> None:
    lines = lines_of(path)
    lines[3], lines[4] = lines[4], lines[3]
    path.write_bytes(b"".join(lines))


def truncate_mid_line(path: Path) -> None:
    lines = lines_of(path)
    cut = sum(len(line) for line in lines[:6]) + len(lines[6]) // 2
    path.write_bytes(path.read_bytes()[:cut])


def drop_the_last_two(path: Path) -> None:
    path.write_bytes(b"".join(lines_of(path)[:-2]))


def resign_without_the_key(path: Path) -> None:
    """Edit entry 5 and recompute its hash (so its content matches) but keep its old signature."""
    lines = lines_of(path)
    entry = json.loads(lines[5])
    entry["details"]["rows"] = 1
    lines[5] = canonical(rehash(entry)) + b"\n"
    path.write_bytes(b"".join(lines))


def nothing(path: Path) -> None:
    pass


@pytest.mark.parametrize(
    ("tamper", "verifier", "first_bad", "problem"),
    [
        (edit_a_field, "oxford", 4, "entry 4: hash does not match its content (edited)"),
        (
            delete_a_middle_line,
            "oxford",
            4,
            "entry 4: prev does not chain to entry 3 (deleted or reordered; it carries seq 5)",
        ),
        (
            swap_two_lines,
            "oxford",
            3,
            "entry 3: prev does not chain to entry 2 (deleted or reordered; it carries seq 4)",
        ),
        (truncate_mid_line, "oxford", 6, "line 6: not a complete entry (truncated)"),
        (
            drop_the_last_two,
            "oxford",
            8,
            "the log ends at entry 7 but its signed head says 10 entries (truncated)",
        ),
        (resign_without_the_key, "oxford", 5, "entry 5: bad signature"),
        (nothing, "lyon", 0, "entry 0: bad signature"),
    ],
    ids=["edit", "delete", "reorder", "truncate-mid-line", "drop-tail", "re-sign", "other-site"],
)
def test_tampering_is_detected_at_the_first_bad_entry(
    signed_log, oxford, lyon, tamper: Callable[[Path], None], verifier, first_bad, problem
):
    # Prepare
    tamper(signed_log)
    certificate = {"oxford": oxford, "lyon": lyon}[verifier].cert_pem

    # Execute
    report = verify(signed_log, public_key_pem=certificate)

    # Assert
    assert not report.ok
    assert report.first_bad == first_bad
    assert report.problem == problem
    assert report.entries == len(signed_log.read_bytes().split(b"\n")) - 1


def test_a_forged_head_after_dropping_the_tail_fails_its_signature(signed_log, oxford):
    # Prepare: drop 2 entries and point the head at the new end, keeping its old signature.
    drop_the_last_two(signed_log)
    head = json.loads(head_path(signed_log).read_bytes())
    head.update(count=N - 2, last_hash=json.loads(lines_of(signed_log)[-1])["hash"])
    head_path(signed_log).write_bytes(canonical(head))

    # Execute
    with_key = verify(signed_log, public_key_pem=oxford.cert_pem)
    unsigned_head = head | {"signature": None}
    head_path(signed_log).write_bytes(canonical(unsigned_head))
    no_signature = verify(signed_log, public_key_pem=oxford.cert_pem)

    # Assert
    assert (with_key.ok, with_key.first_bad) == (False, None)
    assert with_key.problem == "the head has a bad signature (forged, or another key)"
    assert no_signature.problem == "the head is not signed"


def test_an_unsigned_log_does_not_resist_recomputing_the_chain(tmp_path):
    # Prepare: the documented limit - whoever can write an unsigned log can rewrite its history.
    log = AuditLog(tmp_path / "audit.jsonl")
    fill(log)
    entries = [json.loads(line) for line in lines_of(log.path)]

    # Execute: edit entry 4 and recompute every hash after it, then the head.
    entries[4]["details"]["rows"] = 1
    for i in range(4, N):
        entries[i] = rehash(entries[i] | {"prev": entries[i - 1]["hash"]})
    log.path.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
    head = {"count": N, "last_hash": entries[-1]["hash"], "signature": None}
    log.head_path.write_bytes(canonical(head))

    # Assert: undetected without a key; a careless edit (no recomputation) is detected.
    assert verify(log.path).ok
    lines = lines_of(log.path)
    lines[6] = lines[6].replace(b'"rows":106', b'"rows":999')
    log.path.write_bytes(b"".join(lines))
    careless = verify(log.path)
    assert (careless.ok, careless.first_bad) == (False, 6)


def test_missing_log_or_head_is_reported(signed_log, tmp_path):
    # Execute
    no_log = verify(tmp_path / "absent.jsonl")
    head_path(signed_log).unlink()
    no_head = verify(signed_log)

    # Assert
    assert (no_log.ok, no_log.entries, no_log.first_bad) == (False, 0, None)
    assert no_log.problem == "there is no audit log at this path (deleted?)"
    assert (no_head.ok, no_head.first_bad) == (False, None)
    assert no_head.problem == "the head file is missing (the log may have been truncated)"


@pytest.mark.parametrize("key", [b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n"])
def test_an_unusable_verification_key_raises(signed_log, key):
    with pytest.raises(CryptoError):
        verify(signed_log, public_key_pem=key)


def test_a_private_key_is_not_a_verification_key(signed_log, oxford):
    with pytest.raises(CryptoError):
        verify(signed_log, public_key_pem=oxford.key_pem)


# -------------------------------------------------------------------------- appending safely


def test_append_refuses_a_log_that_does_not_match_its_head(signed_log, oxford):
    # Prepare
    drop_the_last_two(signed_log)
    before = signed_log.read_bytes()
    log = AuditLog(signed_log, signing_key_pem=oxford.key_pem)

    # Execute
    with pytest.raises(CryptoError) as info:
        log.append(actor="hub", action="round.commit", object="study/s")

    # Assert: the tampered log was not extended nor re-signed over.
    assert "holds 8 entries but its head says 10" in str(info.value)
    assert signed_log.read_bytes() == before
    assert not verify(signed_log, public_key_pem=oxford.cert_pem).ok


def test_append_refuses_an_edited_last_entry(signed_log, oxford):
    # Prepare
    lines = lines_of(signed_log)
    lines[-1] = lines[-1].replace(b'"rows":109', b'"rows":1')
    signed_log.write_bytes(b"".join(lines))

    # Execute / Assert
    with pytest.raises(CryptoError, match="edited"):
        AuditLog(signed_log, signing_key_pem=oxford.key_pem).append(
            actor="hub", action="a", object="o"
        )


def test_signing_mode_must_match_the_log(signed_log, oxford, lyon, tmp_path):
    # Prepare
    unsigned = AuditLog(tmp_path / "unsigned.jsonl")
    fill(unsigned, 2)

    # Execute / Assert: reading needs no key, appending needs the log's own.
    reader = AuditLog(signed_log)
    assert len(reader.entries()) == N
    with pytest.raises(ConfigError, match="needs its signing key"):
        reader.append(actor="hub", action="a", object="o")
    with pytest.raises(CryptoError, match="not signed by this key"):
        AuditLog(signed_log, signing_key_pem=lyon.key_pem).append(
            actor="hub", action="a", object="o"
        )
    with pytest.raises(ConfigError, match="without a signing key"):
        AuditLog(unsigned.path, signing_key_pem=oxford.key_pem).append(
            actor="hub", action="a", object="o"
        )
    with pytest.raises(CryptoError):
        AuditLog(tmp_path / "x.jsonl", signing_key_pem=b"not a key")
    assert len(reader.entries()) == N


def test_a_partial_line_from_a_crashed_append_is_reported_then_discarded(signed_log, oxford):
    # Prepare: a crash cut the 11th line short; the head still says 10.
    with signed_log.open("ab") as handle:
        handle.write(b'{"action":"task.reply","actor":"si')
    log = AuditLog(signed_log, signing_key_pem=oxford.key_pem)

    # Execute
    report = verify(signed_log, public_key_pem=oxford.cert_pem)
    read = log.entries()
    entry = log.append(actor="hub", action="round.commit", object="study/s")

    # Assert
    assert (report.ok, report.first_bad) == (False, N)
    assert report.problem == (
        "line 10: not a complete entry (an append cut short; the next append removes it)"
    )
    assert len(read) == N
    assert entry.seq == N
    assert verify(signed_log, public_key_pem=oxford.cert_pem).ok


def test_an_entry_written_before_a_crash_updated_the_head_is_kept(signed_log, oxford):
    # Prepare: the 11th entry reached the disk, the head did not.
    log = AuditLog(signed_log, signing_key_pem=oxford.key_pem)
    old_head = log.head_path.read_bytes()
    log.append(actor="hub", action="round.commit", object="study/s/round/10")
    log.head_path.write_bytes(old_head)

    # Execute
    report = verify(signed_log, public_key_pem=oxford.cert_pem)
    entry = log.append(actor="hub", action="round.commit", object="study/s/round/11")

    # Assert: accepted, and the next append brings the head up to date.
    assert (report.ok, report.entries) == (True, N + 1)
    assert entry.seq == N + 1
    assert json.loads(log.head_path.read_bytes())["count"] == N + 2
    assert verify(signed_log, public_key_pem=oxford.cert_pem).ok


# ---------------------------------------------------------------------------------- concurrency


def test_concurrent_appends_from_threads_form_one_chain(tmp_path, oxford):
    # Prepare: two threads share an instance, two open their own (distinct file descriptors).
    path = tmp_path / "audit.jsonl"
    shared = AuditLog(path, signing_key_pem=oxford.key_pem)
    per_thread = 12
    start = threading.Barrier(4)

    def work(worker: int) -> None:
        log = shared if worker < 2 else AuditLog(path, signing_key_pem=oxford.key_pem)
        start.wait()
        for i in range(per_thread):
            log.append(actor=f"thread:{worker}", action="task.reply", object=f"t{worker}/{i}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]

    # Execute
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Assert
    entries = shared.entries()
    assert [e.seq for e in entries] == list(range(4 * per_thread))
    assert {e.object for e in entries} == {f"t{w}/{i}" for w in range(4) for i in range(per_thread)}
    assert verify(path, public_key_pem=oxford.cert_pem).ok


def test_concurrent_appends_from_processes_form_one_chain(tmp_path, oxford):
    # Prepare
    path = tmp_path / "audit.jsonl"
    AuditLog(path, signing_key_pem=oxford.key_pem)
    context = multiprocessing.get_context("spawn")

    # Execute
    with context.Pool(2) as pool:
        done = pool.starmap(
            _append_in_process, [(str(path), oxford.key_pem, w, 10) for w in (0, 1)]
        )

    # Assert
    entries = AuditLog(path).entries()
    assert done == [10, 10]
    assert [e.seq for e in entries] == list(range(20))
    assert {e.object for e in entries} == {f"w{w}/{i}" for w in (0, 1) for i in range(10)}
    report = verify(path, public_key_pem=oxford.cert_pem)
    assert (report.ok, report.entries) == (True, 20)


# --------------------------------------------------------------------------------------- export


def test_export_writes_the_entries_as_json_lines_that_verify(signed_log, oxford, tmp_path):
    # Prepare
    log = AuditLog(signed_log)
    out = tmp_path / "dpo" / "audit-export.jsonl"

    # Execute
    count = log.export(out)

    # Assert
    assert count == N
    exported = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert exported == [e.as_dict() for e in log.entries()]
    assert mode(out) == 0o600
    assert verify(out, public_key_pem=oxford.cert_pem).ok
    with pytest.raises(ConfigError):
        log.export(signed_log)


def test_docstring_examples():
    result = doctest.testmod(audit)
    assert result.attempted > 0
    assert result.failed == 0
