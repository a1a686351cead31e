"""The public SecAgg+ communication graph: which clients mask with (and share secrets to) whom.

Hand-written for Cordiale, following Bell et al. (CCS 2020): instead of the complete graph of
Bonawitz et al. (CCS 2017), each client is joined to about ``k`` neighbours on a Harary graph
``H(k, n)`` laid over a pseudo-random ordering of the clients. The ordering sorts the client ids
by ``HMAC-SHA256(graph_seed, id)``, so everybody who knows the public seed and the client list
derives the same graph, and nobody can choose their position without knowing the seed first.

``H(k, n)`` on positions ``0..n-1`` joins each position to the ``k // 2`` next and previous
positions around the ring; for odd ``k`` it adds the "diameter" edges ``i ~ i + n // 2`` (even
``n``: every degree is ``k``) or ``i ~ i + (n + 1) // 2`` for ``i <= (n - 1) // 2`` (odd ``n``:
one node gets degree ``k + 1``). The graph is ``k``-connected. With ``k >= n - 1`` it is the
complete graph, i.e. the original SecAgg protocol.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from cordiale.core.errors import CryptoError

__all__ = ["neighbour_graph"]


def neighbour_graph(
    client_ids: Sequence[str], degree: int, seed: bytes = b""
) -> dict[str, frozenset[str]]:
    """Each client's neighbours (itself excluded) on the seeded Harary graph ``H(degree, n)``.

    ``client_ids`` must be distinct non-empty strings; their order does not matter. ``degree``
    is at least 1 (capped at ``n - 1``, the complete graph).
    """
    ids = list(client_ids)
    if any(not isinstance(c, str) or not c for c in ids):
        raise CryptoError("client ids are non-empty strings")
    if len(set(ids)) != len(ids):
        raise CryptoError("client ids must be distinct")
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise CryptoError(f"the graph degree is a positive integer, got {degree!r}")
    if not isinstance(seed, bytes):
        raise CryptoError("the graph seed is bytes")
    n = len(ids)
    if degree >= n - 1:
        everyone = frozenset(ids)
        return {c: everyone - {c} for c in ids}
    order = sorted(ids, key=lambda c: hmac.new(seed, c.encode(), hashlib.sha256).digest())
    edges: set[tuple[int, int]] = set()
    for i in range(n):
        for step in range(1, degree // 2 + 1):
            edges.add((i, (i + step) % n))
    if degree % 2 == 1:
        if n % 2 == 0:
            edges.update((i, i + n // 2) for i in range(n // 2))
        else:
            edges.update((i, (i + (n + 1) // 2) % n) for i in range((n - 1) // 2 + 1))
    neighbours: dict[str, set[str]] = {c: set() for c in ids}
    for a, b in edges:
        if a != b:
            neighbours[order[a]].add(order[b])
            neighbours[order[b]].add(order[a])
    return {c: frozenset(v) for c, v in neighbours.items()}
