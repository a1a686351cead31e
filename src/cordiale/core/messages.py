"""Messages: an envelope (who, what study, which round and stage, a unique id) and typed content.

Every message between the hub and a node - in simulation as over the network - is a
:class:`Message`. The envelope is a pydantic model, validated whenever a message is decoded; the
content is made of the validated records of :mod:`cordiale.core.records`. A message that replies to
another carries the id of the one it answers (``reply_to``), so that the sender can match replies
and drop duplicates and replays (:class:`ReplayGuard`).
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cordiale.core.errors import ProtocolError
from cordiale.core.records import ArrayRecord, ConfigRecord, MetricRecord

__all__ = [
    "Content",
    "Envelope",
    "ErrorInfo",
    "Message",
    "ReplayGuard",
    "Stage",
    "new_message_id",
]

#: The kinds of work a message can carry. Later stages (secure aggregation, analytics) add names.
Stage = Literal["stats", "train", "evaluate", "secagg", "analytics", "control"]

_ID = r"^[A-Za-z0-9_.\-]{1,128}$"


def new_message_id() -> str:
    """128 random bits as 32 hex digits (unpredictable: a replayed or forged id is detected)."""
    return secrets.token_hex(16)


class Envelope(BaseModel):
    """Routing metadata of a message. Immutable and validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study_id: str = Field(pattern=_ID)
    round: int = Field(ge=0, le=1_000_000)
    stage: Stage
    sender: str = Field(pattern=_ID)
    recipient: str = Field(pattern=_ID)
    message_id: str = Field(default_factory=new_message_id, pattern=r"^[0-9a-f]{32}$")
    reply_to: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")


class ErrorInfo(BaseModel):
    """A refusal or failure reported by the other side: a kind and a public sentence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: str = Field(max_length=64)
    message: str = Field(max_length=4000)


@dataclass
class Content:
    """What a message carries: named array records, metrics, configuration, or an error."""

    arrays: dict[str, ArrayRecord] = field(default_factory=dict)
    metrics: MetricRecord = field(default_factory=MetricRecord)
    config: ConfigRecord = field(default_factory=ConfigRecord)
    error: ErrorInfo | None = None


@dataclass
class Message:
    envelope: Envelope
    content: Content = field(default_factory=Content)

    @property
    def has_error(self) -> bool:
        return self.content.error is not None

    def reply(self, content: Content) -> Message:
        """A reply to this message, addressed back to its sender."""
        env = self.envelope
        # every field comes from this (validated) envelope or is a fresh id: no need to re-check
        reply = Envelope.model_construct(
            study_id=env.study_id,
            round=env.round,
            stage=env.stage,
            sender=env.recipient,
            recipient=env.sender,
            message_id=new_message_id(),
            reply_to=env.message_id,
        )
        return Message(reply, content)


class ReplayGuard:
    """Remembers the ids of recently accepted messages and refuses one seen before.

    Bounded (an LRU of ``capacity`` ids), so memory does not grow with the length of a study.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def seen(self, message_id: str) -> bool:
        return message_id in self._seen

    def accept(self, message: Message) -> None:
        """Record ``message``; raise ProtocolError if its id was already accepted."""
        mid = message.envelope.message_id
        if mid in self._seen:
            raise ProtocolError(f"message {mid} was already received: duplicate or replay")
        self._seen[mid] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
