"""One exception tree for Cordiale.

Every error a user or another site can see derives from :class:`CordialeError` and carries a
sentence that says what was expected and what came. Errors of other libraries are translated at
the boundary where they arise (wire decoding, file reading, network) so that a user never sees a
traceback, and another site sees only :attr:`CordialeError.public_message`, which leaks no local
detail (no paths, no values).

::

    CordialeError
    ├── ConfigError                 invalid settings, study spec or CLI option
    │   └── UnknownNameError        unknown dataset, strategy, partition, model: lists valid ones
    ├── DataError                   a dataset cannot be used
    │   └── ContractViolation       the data fails its data contract: lists every problem
    ├── WireError                   a message that cannot be decoded safely (truncated, oversized,
    │   │                           wrong dtype or shape, pickled, malformed header)
    │   └── PayloadTooLarge         an upload above the size limit, refused before it is read
    ├── ProtocolError               a valid message in the wrong place (bad stage, replay, wrong
    │                               sender or round)
    ├── CryptoError                 a cryptographic check failed (bad tag, bad share, bad key)
    │   └── SecAggAbort             secure aggregation cannot complete (too few survivors, an
    │                               honest node refuses the server's request)
    ├── PrivacyError                a privacy rule blocks the operation
    │   └── BudgetExceeded          the task would spend more privacy budget than is left
    ├── PolicyRefusal               a site policy or approval refuses a task (names the rule)
    ├── TransportError              a node or the hub cannot be reached, or a reply timed out
    ├── AccessError                 the caller is not who it must be
    │   ├── AuthenticationError     no credential, or one the consortium did not issue (HTTP 401)
    │   └── PermissionDenied        a valid caller reaching for what is not theirs (HTTP 403)
    └── NotFoundError               no such study, task or site (HTTP 404)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "AccessError",
    "AuthenticationError",
    "BudgetExceeded",
    "ConfigError",
    "ContractViolation",
    "CordialeError",
    "CryptoError",
    "DataError",
    "NotFoundError",
    "PayloadTooLarge",
    "PermissionDenied",
    "PolicyRefusal",
    "PrivacyError",
    "ProtocolError",
    "SecAggAbort",
    "TransportError",
    "UnknownNameError",
    "WireError",
]


class CordialeError(Exception):
    """Base of every Cordiale error.

    ``public_message`` is what may cross a site boundary; by default it is the class's generic
    description, never the (possibly detailed) local message.
    """

    public_description = "the operation failed"
    #: Whether the full message may cross a site boundary. True only for errors whose messages
    #: are written to name rules, fields and counts, never local values or paths.
    shareable = False

    def __init__(self, message: str, *, public_message: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self._public = public_message

    @property
    def public_message(self) -> str:
        if self._public is not None:
            return self._public
        return self.message if self.shareable else self.public_description

    def __str__(self) -> str:
        return self.message


class ConfigError(CordialeError):
    public_description = "invalid configuration"
    shareable = True


class UnknownNameError(ConfigError):
    """A name that is not one of the registered choices; the message lists the valid ones."""

    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}; valid {kind}s are: {', '.join(self.valid)}",
            public_message=f"unknown {kind} {name!r}",
        )


class DataError(CordialeError):
    public_description = "the local dataset cannot be used"


class ContractViolation(DataError):
    """A dataset fails its data contract. ``problems`` holds every problem found, not the first."""

    public_description = "the local dataset does not satisfy the data contract"
    shareable = True

    def __init__(self, dataset: str, problems: Sequence[str]) -> None:
        self.dataset = dataset
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(
            f"dataset {dataset!r} fails its data contract ({n} problem{'s' if n != 1 else ''}):\n"
            f"{lines}"
        )


class WireError(CordialeError):
    public_description = "malformed message"


class ProtocolError(CordialeError):
    public_description = "message out of protocol"
    shareable = True


class CryptoError(CordialeError):
    public_description = "cryptographic check failed"


class SecAggAbort(CryptoError):
    public_description = "secure aggregation aborted"


class PrivacyError(CordialeError):
    public_description = "refused by a privacy rule"
    shareable = True


class BudgetExceeded(PrivacyError):
    public_description = "privacy budget exceeded"


class PolicyRefusal(CordialeError):
    public_description = "refused by the site's policy"
    shareable = True


class IntegrityError(CordialeError):
    """Two records that must agree do not: a site's audit log and the hub's anchor of it."""

    public_description = "records disagree"


class TransportError(CordialeError):
    public_description = "transport failure"


class PayloadTooLarge(WireError):
    public_description = "upload too large"
    shareable = True


class AccessError(CordialeError):
    public_description = "access refused"
    shareable = True


class AuthenticationError(AccessError):
    public_description = "authentication required"


class PermissionDenied(AccessError):
    public_description = "permission denied"


class NotFoundError(CordialeError):
    public_description = "not found"
    shareable = True
