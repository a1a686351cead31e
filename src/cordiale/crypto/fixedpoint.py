"""Fixed-point encoding of float vectors into the ring Z_{2^bits} used by secure aggregation.

Hand-written for Cordiale. A value ``x`` is encoded as ``q = round(clip(x, -c, c) * 2^f)``
stored in two's complement modulo ``2^bits`` (``bits`` is 32 or 64); ring addition of encodings
is integer addition of the ``q`` as long as the true sum stays in
``[-2^(bits-1), 2^(bits-1))``, so decoding the ring sum of ``n`` encodings (as a signed integer
divided by ``2^f``) gives the sum of the quantised values exactly.

**Quantisation bound.** After clipping, each encoded value differs from the clipped input by at
most ``2^-(f+1)`` with deterministic (round-half-to-even) rounding, and by less than ``2^-f``
with stochastic rounding (which is unbiased: ``E[q] = x * 2^f``). The decoded sum of ``n``
encodings therefore differs from the sum of the clipped inputs by at most
``n * 2^-(f+1)`` (deterministic) or ``n * 2^-f`` (stochastic); see
:meth:`FixedPointCodec.quantisation_bound`. Values are first clipped to ``[-c, c]``: clipping
is the caller's choice of ``c`` and is not a quantisation error.

**No overflow.** Every ``|q| <= ceil(c * 2^f)``, so the sum of ``n`` encodings cannot wrap if
``n * ceil(c * 2^f) <= 2^(bits-1) - 1``. :func:`choose_bits` picks 32 bits when that holds and
64 otherwise, and :meth:`FixedPointCodec.capacity` says how many inputs one codec can sum.

**Weighted averages.** To aggregate ``sum_u w_u * x_u`` and ``sum_u w_u`` in one secure sum,
the caller encodes the vector ``w_u * x_u`` (which must lie in ``[-c, c]``: choose ``c`` as the
largest weight times the bound on ``x``, or normalise the weights into ``[0, 1]``) and the
integer weight ``w_u`` as one extra word *without scaling* (:func:`encode_weighted`); the ring
sum decodes into the weighted sum and the exact total weight (:func:`decode_weighted`), and the
weighted mean is their quotient. Pass ``max_weight`` to :func:`choose_bits` so that the total
weight fits as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cordiale.core.errors import CryptoError

from .prg import ring_dtype

__all__ = [
    "DEFAULT_CLIP",
    "DEFAULT_FRAC_BITS",
    "DEFAULT_REKEY_EVERY",
    "DEFAULT_SPARE_HOLDERS",
    "FixedPointCodec",
    "choose_bits",
    "decode_weighted",
    "encode_weighted",
]

DEFAULT_CLIP = 1000.0
"""Default bound on ``|n * delta|`` per element of a secure-aggregation update."""
DEFAULT_FRAC_BITS = 16
"""Default fractional bits of the fixed-point encoding (resolution ``2^-16``)."""
DEFAULT_REKEY_EVERY = 10
"""Default number of rounds one secure-aggregation key epoch serves (kept here, with the other
secure-aggregation defaults, so that the CLI reads them without loading the protocol)."""
DEFAULT_SPARE_HOLDERS: int | None = 1
"""Default shares beyond the threshold the hub asks for at unmasking (None: ask every survivor):
one spare, so that one site silent at unmasking costs no extra exchange."""

_MAX_SCALED = 2**52
"""Largest |c * 2^f| accepted: float64 then represents every quantised value exactly."""


@dataclass(frozen=True)
class FixedPointCodec:
    """Clip to ``[-clip, clip]``, scale by ``2^frac_bits``, round, and store modulo ``2^bits``."""

    clip: float
    frac_bits: int
    bits: int = 32
    stochastic: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise CryptoError(f"the clip bound is a finite positive number, got {self.clip!r}")
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int):
            raise CryptoError(f"frac_bits is an integer, got {self.frac_bits!r}")
        if not 0 <= self.frac_bits <= 52:
            raise CryptoError(f"frac_bits lies in 0..52, got {self.frac_bits}")
        ring_dtype(self.bits)
        if self.max_abs_word > min(_MAX_SCALED, 2 ** (self.bits - 1) - 1):
            raise CryptoError(
                f"clip * 2^frac_bits = {self.clip * 2.0**self.frac_bits:g} does not fit a "
                f"{self.bits}-bit ring; lower the clip bound or frac_bits"
            )

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger]:
        """The unsigned numpy dtype of the ring words."""
        return ring_dtype(self.bits)

    @property
    def max_abs_word(self) -> int:
        """The largest ``|q|`` an encoded value can have: ``ceil(clip * 2^frac_bits)``."""
        return math.ceil(self.clip * 2.0**self.frac_bits)

    def capacity(self, max_weight: int = 0) -> int:
        """How many encodings (with weights up to ``max_weight``) can be summed without wrap."""
        per_input = self.max_abs_word + max(int(max_weight), 0)
        return (2 ** (self.bits - 1) - 1) // per_input

    def quantisation_bound(self, count: int = 1) -> float:
        """Worst-case |decoded sum - sum of clipped inputs| for ``count`` inputs, per element."""
        step = 2.0**-self.frac_bits
        return count * (step if self.stochastic else step / 2)

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Encode a float array into ring words (same shape, dtype :attr:`dtype`).

        NaN is refused; infinities are clipped. Stochastic rounding draws from ``rng`` (a fresh
        default generator when None).
        """
        x = np.asarray(values, dtype=np.float64)
        if np.isnan(x).any():
            raise CryptoError("cannot encode NaN into the secure-aggregation ring")
        scaled = np.clip(x, -self.clip, self.clip) * 2.0**self.frac_bits
        if self.stochastic:
            floor = np.floor(scaled)
            rng = rng if rng is not None else np.random.default_rng()
            rounded = floor + (rng.random(scaled.shape) < scaled - floor)
        else:
            rounded = np.rint(scaled)
        return self.wrap(rounded.astype(np.int64))

    def wrap(self, integers: np.ndarray) -> np.ndarray:
        """Signed integers (int64) into ring words by two's complement modulo ``2^bits``."""
        return np.asarray(integers, dtype=np.int64).astype(self.dtype)

    def signed(self, words: np.ndarray) -> np.ndarray:
        """Ring words as signed integers (int64) in ``[-2^(bits-1), 2^(bits-1))``."""
        w = np.asarray(words)
        if w.dtype != self.dtype:
            raise CryptoError(f"expected ring words of dtype {self.dtype}, got {w.dtype}")
        signed = w.view(np.int32 if self.bits == 32 else np.int64)
        return signed.astype(np.int64)

    def decode(self, words: np.ndarray) -> np.ndarray:
        """Ring words (an encoding or a sum of encodings) back to float64."""
        return self.signed(words).astype(np.float64) * 2.0**-self.frac_bits


def choose_bits(count: int, clip: float, frac_bits: int, max_weight: int = 0) -> int:
    """The smallest ring width (32 or 64) in which ``count`` encodings sum without overflow.

    ``max_weight`` is the largest integer weight carried as an extra word (0 when none).
    Raises CryptoError when even 64 bits do not suffice.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise CryptoError(f"the number of inputs is a positive integer, got {count!r}")
    if isinstance(max_weight, bool) or not isinstance(max_weight, int) or max_weight < 0:
        raise CryptoError(f"max_weight is a non-negative integer, got {max_weight!r}")
    for bits in (32, 64):
        try:
            codec = FixedPointCodec(clip=clip, frac_bits=frac_bits, bits=bits)
        except CryptoError:
            if bits == 64:  # invalid parameters whatever the width
                raise
            continue  # clip * 2^f alone does not fit 32 bits
        if codec.capacity(max_weight) >= count:
            return bits
    raise CryptoError(
        f"{count} inputs clipped to ±{clip} with {frac_bits} fractional bits "
        f"(max weight {max_weight}) overflow even a 64-bit ring"
    )


def encode_weighted(
    codec: FixedPointCodec,
    weighted_values: np.ndarray,
    weight: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Encode the 1-D vector ``w * x`` and append the integer weight ``w`` exactly (unscaled)."""
    if isinstance(weight, bool) or not isinstance(weight, int | np.integer) or weight < 0:
        raise CryptoError(f"a weight is a non-negative integer, got {weight!r}")
    if int(weight) > 2 ** (codec.bits - 1) - 1:
        raise CryptoError(f"weight {weight} does not fit a {codec.bits}-bit ring")
    body = codec.encode(np.ravel(weighted_values), rng=rng)
    return np.concatenate([body, codec.wrap(np.array([int(weight)]))])


def decode_weighted(codec: FixedPointCodec, words: np.ndarray) -> tuple[np.ndarray, int]:
    """Split a ring sum of :func:`encode_weighted` outputs into (weighted sum, total weight)."""
    w = np.asarray(words)
    if w.ndim != 1 or w.size < 1:
        raise CryptoError("a weighted encoding is a 1-D vector ending with the weight word")
    return codec.decode(w[:-1]), int(codec.signed(w[-1:])[0])
