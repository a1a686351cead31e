"""A tamper-evident, append-only audit log: a signed hash chain in a JSON-lines file.

Every step of a study is an audit event at the hub and, for what leaves a site, at the node. A node
keeps its own log, signed with its node key (the one in its enrolment kit), so that the site can
check it with nothing but the node certificate: it need not trust the hub, nor this log's host.

Each line of the file is one :class:`AuditEntry`. Its ``hash`` is the SHA-256 of the *canonical
JSON* of its other fields (``seq``, ``time``, ``actor``, ``action``, ``object``,
``payload_sha256``, ``payload_size``, ``details``, ``prev``); ``prev`` is the previous entry's
``hash`` (:data:`GENESIS`, 64 zeros, for entry 0), so each entry commits to everything before it.
A signed log adds, per entry, an ECDSA P-256 / SHA-256 ``signature`` of the ASCII bytes of
``hash``. Next to the log, ``<log>.head`` records ``count`` (entries), ``last_hash`` and, when
signed, a signature of the ASCII bytes ``f"{count}:{last_hash}"``; it is rewritten atomically
(temporary file, fsync, rename, fsync of the directory) after every append.

Canonical JSON, which anyone can recompute in any language: ``json.dumps(fields,
sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` encoded as UTF-8 -
keys sorted at every level, no whitespace, strings with JSON's minimal escapes, integers in
decimal, floats (finite only) as Python's shortest round-trip ``repr``, ``null`` for None. A line
of the log is the canonical JSON of all eleven fields followed by ``\\n``. Signatures are DER
(as X.509 writes ECDSA signatures), in standard base64 with padding. Lines and entries are
counted from 0, so in an intact log line *i* holds entry ``seq == i``.

Guarantees:

* **Append-only, serialised**: :meth:`AuditLog.append` holds an exclusive ``fcntl.flock`` on the
  log while it reads the tail and the head, writes one line and rewrites the head, so appends from
  threads and from processes (on a local file system) form one chain with no gaps or forks.
* **Durable**: when :meth:`AuditLog.append` returns, the entry is fsynced, then the head. A crash
  can leave a partial last line (the head never counted it: :func:`verify` reports it as an
  append cut short, the next append removes it) or one complete entry beyond the head
  (:func:`verify` accepts it; the next append counts it).
* **Nothing of the payload but its digest**: the log holds the SHA-256 and size of what left,
  never the bytes. ``details`` are small scalars; keeping personal data out of them is the
  caller's duty (nothing here can tell).
* **Tamper-evident, signed**: with the node key, :func:`verify` and the node certificate detect an
  edited entry (its hash or its signature fails), a deleted, inserted or reordered entry (the chain
  breaks), a cut in the middle of a line, and whole entries cut from the end (the log no longer
  reaches its signed head). Hiding any of these needs the private key: cutting the tail *and*
  rewriting the head to match means signing a new head. An append refuses a log that does not
  match its head, so it never signs over a tampered tail. Signing with the node key (from the
  enrolment kit) is what lets a site prove its own log to anyone holding its certificate.
* **Tamper-evident, unsigned - only weakly**: without a key, :func:`verify` detects edits that do
  not recompute the chain (a changed field, a deleted or reordered line, a truncation that leaves
  the head alone). Anyone who can write the file can recompute every hash after an edit and
  rewrite the head; an unsigned log detects accidents and careless tampering, not an adversary.

What it does not do:

* It cannot see a *rollback*: replacing the log and its head by an older copy of both (each
  consistent and signed) passes, as does deleting both. Only an anchor kept elsewhere shows it:
  node logs are anchored at the hub (each hello and reply shows the head; the node checks
  :meth:`AuditLog.holds` against the hub's anchor before serving, see
  :mod:`cordiale.node.agent`); a data-protection officer may note a head's count and hash too.
* ``time`` is the appender's clock, not a timestamp authority; it is signed but not checked for
  order.
* :func:`verify` checks signatures against the key it is given; whether that certificate belongs
  to the site (and chains to the consortium CA) is for
  :func:`cordiale.crypto.pki.verify_issued_by`.
* :meth:`AuditLog.entries` reads; it does not check hashes. Run :func:`verify` for that.

Hand-written on :mod:`hashlib`, :mod:`json`, :mod:`fcntl` and the ``cryptography`` package's
ECDSA, because no maintained library offers a signed hash-chained log in a plain file that a site
can check without the service that wrote it (transparency-log and ledger databases need their own
server). POSIX only (``fcntl``). Invalid arguments and unusable paths raise
:class:`~cordiale.core.errors.ConfigError`; a key that cannot be used, or an append to a log that
does not match its head, raises :class:`~cordiale.core.errors.CryptoError`; :func:`verify` reports
a damaged log in a :class:`VerifyReport` rather than raising.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from os import PathLike
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cordiale.core.errors import ConfigError, CryptoError
from cordiale.governance.audit_format import (
    AuditEntry,
    DetailValue,
    Head,
    canonical,
    entry_hash,
    head_message,
    is_scalar,
    load_private_key,
    load_public_key,
    parse_entry,
    parse_head,
    sign,
    signature_ok,
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

GENESIS = "0" * 64
"""The ``prev`` of entry 0, and the head's ``last_hash`` of an empty log."""
HEAD_SUFFIX = ".head"
"""The head file is the log's path with this suffix added: ``audit.jsonl.head``."""


MAX_NAME_CHARS = 256
"""Longest ``actor`` or ``action``."""
MAX_OBJECT_CHARS = 1024
"""Longest ``object``."""
MAX_DETAILS = 64
"""Most ``details`` items."""
MAX_DETAIL_KEY_CHARS = 64
"""Longest ``details`` key."""
MAX_DETAIL_STR_CHARS = 1024
"""Longest ``details`` string value."""

_FILE_MODE = 0o600
_DIR_MODE = 0o700
_TAIL_CHUNK = 64 * 1024
_PUBLIC_UNAVAILABLE = "the audit log is unavailable"
_PUBLIC_DAMAGED = "the audit log is damaged"


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifyReport:
    """What :func:`verify` found.

    ``entries`` counts the complete lines of the log, good or bad. ``first_bad`` is the line index
    (= ``seq`` in an intact log) of the first bad entry; for a log cut short it is the index of the
    first missing entry; it is None when ``ok`` or when only the head file is at fault. ``problem``
    is one sentence, None when ``ok``.
    """

    ok: bool
    entries: int
    first_bad: int | None = None
    problem: str | None = None


def head_path(path: str | PathLike[str]) -> Path:
    """The head file of the log at ``path``."""
    path = Path(path)
    return path.with_name(path.name + HEAD_SUFFIX)


# ------------------------------------------------------------------------------------- files


@contextmanager
def _locked(fd: int, operation: int) -> Iterator[None]:
    fcntl.flock(fd, operation)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    parts: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, max(size - offset, _TAIL_CHUNK), offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` by a fsynced temporary file renamed over it (mode 0600)."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    try:
        try:
            os.fchmod(fd, _FILE_MODE)  # the umask may have narrowed os.open's mode
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_head(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _tail(fd: int) -> tuple[bytes | None, int, int]:
    """``(last complete line or None, end of the complete lines, file size)``, read backwards."""
    size = os.fstat(fd).st_size
    data, start = b"", size
    while start > 0 and data.count(b"\n") < 2:
        step = min(_TAIL_CHUNK, start)
        start -= step
        data = os.pread(fd, step, start) + data
    last_newline = data.rfind(b"\n")
    if last_newline < 0:
        return None, 0, size
    previous = data.rfind(b"\n", 0, last_newline)
    return data[previous + 1 : last_newline], start + last_newline + 1, size


# ------------------------------------------------------------------------------- validation


def _text(name: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise ConfigError(
            f"audit {name} must be a non-empty printable string of at most {limit} characters, "
            f"got {value!r:.80}"
        )
    return value


def _details(details: Mapping[str, DetailValue] | None) -> dict[str, DetailValue]:
    if details is None:
        return {}
    if not isinstance(details, Mapping):
        raise ConfigError(f"audit details must be a mapping, got {type(details).__name__}")
    if len(details) > MAX_DETAILS:
        raise ConfigError(f"audit details hold {len(details)} items; at most {MAX_DETAILS}")
    result: dict[str, DetailValue] = {}
    for key, value in details.items():
        _text("details key", key, MAX_DETAIL_KEY_CHARS)
        if not is_scalar(value):
            raise ConfigError(
                f"audit details[{key!r}] must be a string, integer, finite float, boolean or "
                f"None, got {type(value).__name__}"
            )
        if isinstance(value, str) and len(value) > MAX_DETAIL_STR_CHARS:
            raise ConfigError(
                f"audit details[{key!r}] holds {len(value)} characters; at most "
                f"{MAX_DETAIL_STR_CHARS} (the log keeps digests, not contents)"
            )
        result[key] = value
    return result


# ------------------------------------------------------------------------------------ the log


class AuditLog:
    """The append-only audit log in the JSON-lines file ``path`` and its head ``<path>.head``.

    Both are created if absent (parent directories too; files mode 0600). With
    ``signing_key_pem`` (an ECDSA P-256 private key in PEM, such as
    :attr:`cordiale.crypto.pki.EnrolmentKit.key_pem`) every entry and the head are signed; a log
    is signed throughout or not at all. Opening needs no key to read; appending to a signed log
    needs its key. One instance may be shared by threads, and several processes may open the same
    path.

    >>> import tempfile, os
    >>> log = AuditLog(os.path.join(tempfile.mkdtemp(), "audit.jsonl"))
    >>> log.append(actor="site:oxford", action="task.reply", object="study/s1/round/0",
    ...            payload=b"weights").payload_size
    7
    >>> verify(log.path).ok
    True
    """

    def __init__(self, path: str | PathLike[str], *, signing_key_pem: bytes | None = None) -> None:
        self._path = Path(path)
        self._head_path = head_path(self._path)
        self._key = None if signing_key_pem is None else load_private_key(signing_key_pem)
        self._public = None if self._key is None else self._key.public_key()
        self._lock = threading.Lock()
        try:
            self._path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            with self._open(create=True) as fd, _locked(fd, fcntl.LOCK_EX):
                if _read_head(self._head_path) is None and os.fstat(fd).st_size == 0:
                    self._write_head(0, GENESIS)
        except OSError as exc:
            raise ConfigError(
                f"cannot open the audit log {self._path}: {exc.strerror or exc}",
                public_message=_PUBLIC_UNAVAILABLE,
            ) from None

    @property
    def path(self) -> Path:
        """The log file."""
        return self._path

    @property
    def head_path(self) -> Path:
        """The head file, ``<path>.head``."""
        return self._head_path

    @property
    def signed(self) -> bool:
        """Whether this instance signs what it appends."""
        return self._key is not None

    # ---------------------------------------------------------------------------------- plumbing

    @contextmanager
    def _open(self, *, create: bool = False) -> Iterator[int]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        if create:
            try:
                fd = os.open(self._path, flags | os.O_CREAT | os.O_EXCL, _FILE_MODE)
            except FileExistsError:
                fd = os.open(self._path, flags)
            else:
                os.fchmod(fd, _FILE_MODE)
                _fsync_dir(self._path.parent)
        else:
            try:
                fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ConfigError(
                    f"the audit log {self._path} no longer exists",
                    public_message=_PUBLIC_UNAVAILABLE,
                ) from None
        try:
            yield fd
        finally:
            os.close(fd)

    def _write_head(self, count: int, last_hash: str) -> None:
        signature = None
        if self._key is not None:
            signature = sign(self._key, head_message(count, last_hash))
        head = {"count": count, "last_hash": last_hash, "signature": signature}
        _write_atomic(self._head_path, canonical(head) + b"\n")

    def _damaged(self, why: str) -> CryptoError:
        return CryptoError(
            f"audit log {self._path}: {why}; nothing was appended (run verify)",
            public_message=_PUBLIC_DAMAGED,
        )

    def _check_head(self, head: Head) -> None:
        """Refuse to extend a log whose head this instance cannot (or must not) sign over."""
        if self._public is None:
            if head.signature is not None:
                raise ConfigError(
                    f"audit log {self._path} is signed; appending to it needs its signing key",
                    public_message="the audit log is signed; appending needs its key",
                )
            return
        if head.signature is None:
            if head.count > 0:
                raise ConfigError(
                    f"audit log {self._path} was written without a signing key; a log is signed "
                    "throughout or not at all",
                    public_message="the audit log is not signed",
                )
            return
        if not signature_ok(self._public, head.signature, head_message(head.count, head.last_hash)):
            raise self._damaged(
                "its head is not signed by this key (another site's key, or a forged head)"
            )

    def _position(self, fd: int) -> tuple[int, str, int]:
        """``(next seq, its prev, where the complete lines end)`` after checking tail and head."""
        line, complete_end, size = _tail(fd)
        raw_head = _read_head(self._head_path)
        if raw_head is None:
            if size > 0:
                raise self._damaged("its head file is missing")
            raw_head = canonical({"count": 0, "last_hash": GENESIS, "signature": None})
        try:
            head = parse_head(raw_head)
        except ValueError as exc:
            raise self._damaged(f"its head file is not valid ({exc})") from None
        self._check_head(head)
        if line is None:
            count, last_hash, last_prev = 0, GENESIS, None
        else:
            try:
                last = parse_entry(line)
            except ValueError as exc:
                raise self._damaged(f"its last line is not a valid entry ({exc})") from None
            if entry_hash(last.as_dict()) != last.hash:
                raise self._damaged("its last entry does not match its hash (edited)")
            count, last_hash, last_prev = last.seq + 1, last.hash, last.prev
        if head.count == count and head.last_hash == last_hash:
            return count, last_hash, complete_end  # a partial line after it is a crashed append
        if head.count == count - 1 and head.last_hash == last_prev and complete_end == size:
            return count, last_hash, complete_end  # a crash came between the entry and the head
        raise self._damaged(
            f"it holds {count} entries but its head says {head.count} (truncated or edited)"
        )

    # ------------------------------------------------------------------------------------ public

    def append(
        self,
        *,
        actor: str,
        action: str,
        object: str,  # shadows the builtin: the audit vocabulary is actor, action, object
        payload: bytes | None = None,
        details: Mapping[str, DetailValue] | None = None,
    ) -> AuditEntry:
        """Record one event and return it, durably, signed when the log has a key.

        ``payload`` is what left (or came); only its SHA-256 and size are kept. ``details`` are
        at most :data:`MAX_DETAILS` scalars, no personal data. Raises :class:`ConfigError` for
        invalid arguments or a signing mode that does not match the log's, :class:`CryptoError`
        when the log does not match its head (it is never extended then).
        """
        fields: dict[str, Any] = {
            "actor": _text("actor", actor, MAX_NAME_CHARS),
            "action": _text("action", action, MAX_NAME_CHARS),
            "object": _text("object", object, MAX_OBJECT_CHARS),
            "details": _details(details),
            "payload_sha256": None,
            "payload_size": None,
        }
        if payload is not None:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise ConfigError(f"audit payload must be bytes, got {type(payload).__name__}")
            fields["payload_sha256"] = hashlib.sha256(payload).hexdigest()
            fields["payload_size"] = memoryview(payload).nbytes
        try:
            with self._lock, self._open(create=True) as fd, _locked(fd, fcntl.LOCK_EX):
                seq, prev, complete_end = self._position(fd)
                fields["seq"], fields["prev"] = seq, prev
                fields["time"] = datetime.now(UTC).isoformat(timespec="microseconds")
                fields["hash"] = entry_hash(fields)
                fields["signature"] = None
                if self._key is not None:
                    fields["signature"] = sign(self._key, fields["hash"].encode("ascii"))
                entry = AuditEntry(**fields)
                if os.fstat(fd).st_size != complete_end:
                    os.ftruncate(fd, complete_end)
                try:
                    _write_all(fd, canonical(entry.as_dict()) + b"\n")
                    os.fsync(fd)
                except BaseException:
                    os.ftruncate(fd, complete_end)
                    raise
                self._write_head(seq + 1, entry.hash)
        except OSError as exc:
            raise ConfigError(
                f"cannot append to the audit log {self._path}: {exc.strerror or exc}",
                public_message=_PUBLIC_UNAVAILABLE,
            ) from None
        return entry

    def _lines(self) -> tuple[list[bytes], bytes | None]:
        """The complete lines and the head, read together under a shared lock."""
        try:
            with self._open() as fd, _locked(fd, fcntl.LOCK_SH):
                data = _read_all(fd)
                head = _read_head(self._head_path)
        except OSError as exc:
            raise ConfigError(
                f"cannot read the audit log {self._path}: {exc.strerror or exc}",
                public_message=_PUBLIC_UNAVAILABLE,
            ) from None
        return data.split(b"\n")[:-1], head  # what follows the last newline is no entry

    def _parsed(self, lines: list[bytes]) -> list[AuditEntry]:
        result = []
        for index, line in enumerate(lines):
            try:
                result.append(parse_entry(line))
            except ValueError as exc:
                raise CryptoError(
                    f"audit log {self._path}: line {index} is not a valid entry ({exc}); "
                    "run verify",
                    public_message=_PUBLIC_DAMAGED,
                ) from None
        return result

    def holds(self, count: int, last_hash: str) -> bool:
        """Whether this log's first ``count`` entries end with the entry hashed ``last_hash``: an
        anchor of it kept elsewhere (the hub keeps one per site) still matches. ``False`` when
        the log is shorter (rolled back) or differs there (replaced). Hashes are not re-checked
        here: :func:`verify` does that."""
        if count == 0:
            return last_hash == GENESIS
        lines, _ = self._lines()
        if count > len(lines):
            return False
        try:
            entry = parse_entry(lines[count - 1])
        except ValueError:
            return False
        return entry.seq == count - 1 and entry.hash == last_hash

    def entries(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        object_prefix: str | None = None,
    ) -> list[AuditEntry]:
        """The entries, oldest first, that match every filter given (``action`` and ``actor``
        exactly, ``object`` by prefix). Reads without checking hashes: see :func:`verify`.
        A partial last line (a crashed append) is skipped."""
        lines, _ = self._lines()
        return [
            e
            for e in self._parsed(lines)
            if (action is None or e.action == action)
            and (actor is None or e.actor == actor)
            and (object_prefix is None or e.object.startswith(object_prefix))
        ]

    def export(self, out: str | PathLike[str]) -> int:
        """Write the log's entries to ``out`` as JSON lines, for a data-protection officer, and
        return how many. The lines are the log's own, and the head goes to ``<out>.head``, so
        that ``verify(out, public_key_pem=node_cert)`` checks the copy as it would the log.
        Both files are written atomically, mode 0600."""
        out = Path(out)
        if out.resolve() in {self._path.resolve(), self._head_path.resolve()}:
            raise ConfigError(
                "cannot export the audit log onto itself", public_message="invalid export path"
            )
        lines, head = self._lines()
        count = len(self._parsed(lines))
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if head is not None:
                _write_atomic(head_path(out), head)
            _write_atomic(out, b"".join(line + b"\n" for line in lines))
        except OSError as exc:
            raise ConfigError(
                f"cannot export the audit log to {out}: {exc.strerror or exc}",
                public_message="cannot export the audit log",
            ) from None
        return count

    def verify(self) -> VerifyReport:
        """:func:`verify` this log, with this instance's own public key when it signs."""
        public = None
        if self._public is not None:
            public = self._public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        return verify(self._path, public_key_pem=public)

    def __repr__(self) -> str:
        return f"AuditLog({str(self._path)!r}, signed={self.signed})"


# ---------------------------------------------------------------------------------- verify


@dataclass(slots=True)
class _Checker:
    public: ec.EllipticCurvePublicKey | None
    entries: int = 0
    hashes: list[str] = field(default_factory=list)

    def bad(self, index: int | None, problem: str) -> VerifyReport:
        return VerifyReport(ok=False, entries=self.entries, first_bad=index, problem=problem)

    def entry(self, index: int, line: bytes) -> str | None:
        """None if line ``index`` is a good next entry, else what is wrong with it."""
        try:
            entry = parse_entry(line)
        except ValueError as exc:
            return f"line {index}: not a valid entry ({exc})"
        if entry_hash(entry.as_dict()) != entry.hash:
            return f"entry {index}: hash does not match its content (edited)"
        if self.public is not None:
            if entry.signature is None:
                return f"entry {index}: not signed"
            if not signature_ok(self.public, entry.signature, entry.hash.encode("ascii")):
                return f"entry {index}: bad signature"
        expected_prev = self.hashes[-1] if self.hashes else GENESIS
        if entry.prev != expected_prev or entry.seq != index:
            carries = f"; it carries seq {entry.seq}" if entry.seq != index else ""
            if index == 0:
                return f"entry 0: does not start the chain (deleted or reordered{carries})"
            return (
                f"entry {index}: prev does not chain to entry {index - 1} "
                f"(deleted or reordered{carries})"
            )
        self.hashes.append(entry.hash)
        return None

    def head(self, raw: bytes | None) -> VerifyReport:
        """The report, once every line passed, comparing the log with its head."""
        n = len(self.hashes)
        if raw is None:
            return self.bad(None, "the head file is missing (the log may have been truncated)")
        try:
            head = parse_head(raw)
        except ValueError as exc:
            return self.bad(None, f"the head file is not valid ({exc})")
        signed = ""
        if self.public is not None:
            if head.signature is None:
                return self.bad(None, "the head is not signed")
            message = head_message(head.count, head.last_hash)
            if not signature_ok(self.public, head.signature, message):
                return self.bad(None, "the head has a bad signature (forged, or another key)")
            signed = "signed "
        if head.count > n:
            where = f"ends at entry {n - 1}" if n else "is empty"
            return self.bad(
                n, f"the log {where} but its {signed}head says {head.count} entries (truncated)"
            )
        if head.count < n - 1:
            return self.bad(
                head.count + 1,
                f"the log holds {n} entries but its {signed}head says {head.count} "
                "(entries added without the head)",
            )
        expected = self.hashes[head.count - 1] if head.count else GENESIS
        if head.last_hash != expected:
            return self.bad(
                head.count - 1 if head.count else None,
                f"the {signed}head's last hash does not match entry {head.count - 1} (rewritten)",
            )
        # head.count == n, or n - 1 when a crash came between an entry and its head.
        return VerifyReport(ok=True, entries=self.entries)


def verify(path: str | PathLike[str], *, public_key_pem: bytes | None = None) -> VerifyReport:
    """Check the audit log at ``path`` and its head; report rather than raise.

    With ``public_key_pem`` (the node's certificate PEM, or its public key PEM) every entry and
    the head must carry a good signature by that key; without it, only the hash chain and the
    head's count and hash are checked (see the module's note on unsigned logs). Stops at the
    first problem. Raises :class:`CryptoError` only when ``public_key_pem`` is not a P-256
    certificate or public key.
    """
    checker = _Checker(None if public_key_pem is None else load_public_key(public_key_pem))
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return checker.bad(None, "there is no audit log at this path (deleted?)")
    except OSError as exc:
        return checker.bad(None, f"cannot read the audit log ({exc.strerror or exc})")
    try:
        with _locked(fd, fcntl.LOCK_SH):
            data = _read_all(fd)
            raw_head = _read_head(head_path(path))
    except OSError as exc:
        return checker.bad(None, f"cannot read the audit log ({exc.strerror or exc})")
    finally:
        os.close(fd)
    *lines, fragment = data.split(b"\n")
    checker.entries = len(lines)
    for index, line in enumerate(lines):
        problem = checker.entry(index, line)
        if problem is not None:
            return checker.bad(index, problem)
    report = checker.head(raw_head)
    if fragment:
        # A partial line after a log that matches its head is an append cut short by a crash.
        why = "an append cut short; the next append removes it" if report.ok else "truncated"
        return checker.bad(len(lines), f"line {len(lines)}: not a complete entry ({why})")
    return report
