"""The Transport interface: how the coordinator reaches nodes.

One method does the work: send a batch of task messages and collect the replies that arrive before
a timeout. Implementations: :class:`~cordiale.transport.inmemory.InMemoryTransport` (simulation and
tests; a real implementation, with real encoding, in the spirit of httpx's MockTransport) and the
HTTPS transport of the hub. The round loop is written once against this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from cordiale.core.messages import Message

__all__ = ["Transport"]


class Transport(ABC):
    #: seconds that nodes answering one after another (in one process) spent beyond what
    #: nodes working at the same time would have: per exchange, all but the slowest node's time.
    #: Stays 0.0 where nodes are real processes.
    concurrency_saving: float = 0.0

    @abstractmethod
    def node_ids(self) -> list[str]:
        """The nodes currently connected, sorted."""

    @abstractmethod
    def send_and_receive(
        self, messages: Sequence[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Deliver ``messages`` and return the replies received within ``timeout`` seconds.

        A reply answers exactly one sent message (``reply_to``); nodes that do not answer in
        time are simply absent from the result. Duplicate or unsolicited replies are dropped.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""
