"""The hub side of dial-out: per-site task queues, and the Transport the round loop uses.

Nodes never listen. A node long-polls the hub for its next task and posts the reply; the
:class:`Mailbox` holds each site's queued tasks (encoded wire bytes) and the replies awaited, and
:class:`HubTransport` implements :class:`~cordiale.transport.base.Transport` on top of it, so the
same :class:`~cordiale.learn.federation.Federation` that simulation runs drives the network.

Replies arrive already decoded and checked by the hub's upload endpoint (size, format, sender).
Tasks are recorded as ``queued`` by ``on_post`` (one call per batch); every later change is
reported through ``on_state(message_id, state, error)``: ``delivered``, ``answered``, ``failed``
(the node replied with an error) or ``expired`` (no reply before the round timeout). The hub
records these in its ``tasks`` table for ``study status``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cordiale.core.codec import encode_message
from cordiale.core.errors import ProtocolError, TransportError
from cordiale.core.messages import Message, ReplayGuard
from cordiale.transport.base import Transport

__all__ = ["HubTransport", "Mailbox", "ReplyOutcome"]

StateCallback = Callable[[str, str, str | None], None]


@dataclass
class _Task:
    site: str
    data: bytes
    delivered: bool = False
    reply: Message | None = None


ReplyOutcome = str  # "accepted" | "duplicate" | "unknown"


class Mailbox:
    """Queued tasks per site and the replies that answer them. Thread-safe."""

    def __init__(self, on_state: StateCallback | None = None) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, deque[str]] = {}
        self._tasks: dict[str, _Task] = {}
        self._answered: OrderedDict[str, None] = OrderedDict()  # recent ids, to spot duplicates
        self._polling: dict[str, int] = {}
        self._on_state = on_state or (lambda _m, _s, _e: None)
        self._closed = False

    # -- hub side ----------------------------------------------------------------------------
    def post(self, site: str, message_id: str, data: bytes) -> None:
        with self._cond:
            self._tasks[message_id] = _Task(site, data)
            self._queues.setdefault(site, deque()).append(message_id)
            self._cond.notify_all()

    def wait_replies(
        self, message_ids: Sequence[str], deadline: float | None, stop: threading.Event
    ) -> dict[str, Message]:
        """Wait until every task is answered, the deadline passes or ``stop`` is set."""
        with self._cond:
            while True:
                done = {
                    m: t.reply
                    for m in message_ids
                    if (t := self._tasks.get(m)) is not None and t.reply is not None
                }
                if len(done) == len(message_ids) or stop.is_set():
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._cond.wait(timeout=0.5 if remaining is None else min(remaining, 0.5))
            for m in message_ids:  # whatever is left unanswered is withdrawn
                task = self._tasks.pop(m, None)
                if task is not None and task.site in self._queues:
                    with contextlib.suppress(ValueError):  # already delivered
                        self._queues[task.site].remove(m)
            return {m: r for m, r in done.items() if r is not None}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- node side ---------------------------------------------------------------------------
    def next_task(self, site: str, wait: float) -> tuple[str, bytes] | None:
        """The site's next queued task, waiting up to ``wait`` seconds (long poll)."""
        deadline = time.monotonic() + wait
        with self._cond:
            self._polling[site] = self._polling.get(site, 0) + 1
            try:
                while True:
                    queue = self._queues.get(site)
                    if queue:
                        mid = queue.popleft()
                        task = self._tasks[mid]
                        task.delivered = True
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        return None
                    self._cond.wait(timeout=remaining)
            finally:
                self._polling[site] -= 1
        self._on_state(mid, "delivered", None)
        return mid, task.data

    def redeliver(self, site: str, message_id: str) -> bytes | None:
        """A task already delivered to ``site`` (after a lost connection); None if not pending."""
        with self._cond:
            task = self._tasks.get(message_id)
            if task is None or task.site != site:
                return None
            return task.data

    def owner(self, message_id: str) -> str | None:
        with self._cond:
            task = self._tasks.get(message_id)
            return None if task is None else task.site

    def is_polling(self, site: str) -> bool:
        with self._cond:
            return self._polling.get(site, 0) > 0

    def put_reply(self, site: str, reply: Message) -> ReplyOutcome:
        """Hand over a decoded reply from ``site`` (already checked for size and format)."""
        reply_to = reply.envelope.reply_to or ""
        err = reply.content.error
        error = None if err is None else f"{err.kind}: {err.message}"
        with self._cond:
            if reply_to in self._answered:
                return "duplicate"
            task = self._tasks.get(reply_to)
            if task is None or task.site != site:
                return "unknown"
            if task.reply is not None:
                return "duplicate"
            task.reply = reply
            self._answered[reply_to] = None
            if len(self._answered) > 100_000:
                self._answered.popitem(last=False)
            self._cond.notify_all()
        self._on_state(reply_to, "failed" if error else "answered", error)
        return "accepted"


class HubTransport(Transport):
    """The round loop's view of the network: tasks go into the mailbox, replies come back."""

    def __init__(
        self,
        mailbox: Mailbox,
        online: Callable[[], list[str]],
        *,
        stop: threading.Event | None = None,
        on_post: Callable[[Sequence[Message]], None] | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        self._mailbox = mailbox
        self._online = online
        self._stop = stop or threading.Event()
        self._on_post = on_post or (lambda _m: None)
        self._guard = ReplayGuard()
        self._on_state = on_state or (lambda _m, _s, _e: None)

    def node_ids(self) -> list[str]:
        return sorted(self._online())

    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[Message]:
        if self._stop.is_set():
            raise TransportError("the hub is shutting down")
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {m.envelope.message_id: m for m in messages}
        self._on_post(messages)  # recorded as queued, in one transaction
        for m in messages:
            self._mailbox.post(m.envelope.recipient, m.envelope.message_id, encode_message(m))
        answered = self._mailbox.wait_replies(list(pending), deadline, self._stop)
        if self._stop.is_set():
            raise TransportError("the hub is shutting down")
        replies = []
        for mid, reply in answered.items():
            try:
                request = pending[mid]
                if reply.envelope.reply_to != mid:
                    raise ProtocolError("reply answers another message")
                if reply.envelope.sender != request.envelope.recipient:
                    raise ProtocolError("reply from a node other than the one asked")
                self._guard.accept(reply)
            except ProtocolError:
                continue  # the upload was checked on arrival; this is belt and braces
            replies.append(reply)
        for mid in pending.keys() - answered.keys():
            self._on_state(mid, "expired", "no reply before the round timeout")
        return replies
