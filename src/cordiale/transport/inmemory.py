"""In-memory transport: nodes are byte handlers in this process.

Every message is encoded to wire bytes and decoded on the other side, exactly as over the network,
so simulation exercises the codec and no object is ever shared between hub and node. Replies are
matched to requests by ``reply_to``; duplicates, replays and unsolicited replies are dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from cordiale.core.codec import DecodeLimits, decode_message, encode_message
from cordiale.core.errors import ProtocolError, WireError
from cordiale.core.messages import Message, ReplayGuard
from cordiale.transport.base import Transport

__all__ = ["ByteHandler", "InMemoryTransport"]

ByteHandler = Callable[[bytes], bytes]


class InMemoryTransport(Transport):
    def __init__(
        self, handlers: Mapping[str, ByteHandler], *, limits: DecodeLimits | None = None
    ) -> None:
        self._handlers = dict(handlers)
        self._limits = limits or DecodeLimits()
        self._guard = ReplayGuard()
        self._down: set[str] = set()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.concurrency_saving = 0.0  # nodes answer one after another here (see Transport)

    def node_ids(self) -> list[str]:
        return sorted(self._handlers)

    def disconnect(self, node_id: str) -> None:
        """Simulate a lost node: it stays registered but stops answering."""
        self._down.add(node_id)

    def reconnect(self, node_id: str) -> None:
        """A node lost by :meth:`disconnect` answers again (with the state it had)."""
        self._down.discard(node_id)

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[Message]:
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {m.envelope.message_id: m for m in messages}
        replies: list[Message] = []
        handler_seconds = [0.0]
        for msg in messages:
            if deadline is not None and time.monotonic() > deadline:
                break
            handler = self._handlers.get(msg.envelope.recipient)
            if handler is None or msg.envelope.recipient in self._down:
                continue
            data = encode_message(msg)
            self.bytes_sent += len(data)
            t0 = time.perf_counter()
            raw = handler(data)
            handler_seconds.append(time.perf_counter() - t0)
            self.bytes_received += len(raw)
            try:
                reply = decode_message(raw, self._limits)
                self._accept(reply, pending)
            except (WireError, ProtocolError):
                continue  # a corrupt or out-of-protocol reply counts as no reply
            replies.append(reply)
        self.concurrency_saving += sum(handler_seconds) - max(handler_seconds)
        return replies

    def _accept(self, reply: Message, pending: dict[str, Message]) -> None:
        request = pending.pop(reply.envelope.reply_to or "", None)
        if request is None:
            raise ProtocolError("reply to no pending request")
        if reply.envelope.sender != request.envelope.recipient:
            raise ProtocolError("reply from a node other than the one asked")
        self._guard.accept(reply)
