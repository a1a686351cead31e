"""Privacy accounting of the (Poisson-subsampled) Gaussian mechanism, by Google's ``dp_accounting``.

Every number here comes from an established accountant: Rényi DP (``"rdp"``, Mironov et al. 2019,
with the conversion of Balle et al. 2020) or privacy loss distributions (``"pld"``, Koskela et al.
2020 / Doroshenko et al. 2022, pessimistic discretisation). No formula is re-derived in this module;
it only builds ``DpEvent`` objects, asks the library, and validates what comes in.

The neighbouring relation is add-or-remove-one. What "one" is depends on where the clipping
happens: one record for sample-level DP (DP-SGD), one *site's whole contribution* for client-level
DP, where ``sampling_rate`` is the fraction of sites sampled per round (``1.0``: every site, every
round).

The module has two layers, as in Opacus:

* pure functions :func:`epsilon`, :func:`epsilon_for_events` and :func:`noise_multiplier_for`;
* :class:`PrivacyAccountant`, the one stateful object, which records the rounds of a study (each
  with its own noise, if need be) and reports the epsilon they compose to.

``dp_accounting`` is imported lazily (about 1.5 s): a node that only needs the budget ledger or the
clipping helpers does not pay for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, get_args

from cordiale.core.errors import ConfigError, PrivacyError, UnknownNameError
from cordiale.privacy import _validate as check

if TYPE_CHECKING:
    from dp_accounting import DpEvent
    from dp_accounting import PrivacyAccountant as _DpAccountant

__all__ = [
    "AccountantKind",
    "GaussianEvent",
    "PrivacyAccountant",
    "epsilon",
    "epsilon_for_events",
    "noise_multiplier_for",
]

AccountantKind = Literal["rdp", "pld"]
ACCOUNTANTS: Final[tuple[str, ...]] = get_args(AccountantKind)

#: Width of the PLD discretisation (dp_accounting's default). The PLD estimate is pessimistic: an
#: upper bound on epsilon whatever the width; PLD cost grows with epsilon / width.
PLD_DISCRETIZATION: Final = 1e-4

#: Search range for :func:`noise_multiplier_for`.
_MIN_NOISE: Final = 2.0**-6
_MAX_NOISE: Final = 2.0**20
#: Relative tolerance of the noise-multiplier search (the result is within 0.1 % of the optimum).
_SEARCH_RTOL: Final = 1e-3


# --------------------------------------------------------------------------------------------------
# validation


def _check_noise_multiplier(value: object) -> float:
    return check.positive("noise_multiplier", value, why=" (0 means no privacy)")


def _check_sampling_rate(value: object) -> float:
    return check.probability("sampling_rate", value, low_open=True, high_open=False)


def _check_delta(value: object) -> float:
    return check.probability("delta", value, low_open=True, high_open=True)


def _check_kind(value: object) -> AccountantKind:
    if value not in ACCOUNTANTS:
        raise UnknownNameError("accountant", str(value), ACCOUNTANTS)
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# events


@dataclass(frozen=True, kw_only=True, slots=True)
class GaussianEvent:
    """``steps`` rounds of the Gaussian mechanism, each on a Poisson sample (``sampling_rate``).

    The noise standard deviation is ``noise_multiplier`` times the L2 sensitivity (the clip norm).
    Validated on construction.
    """

    noise_multiplier: float
    sampling_rate: float
    steps: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_multiplier", _check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "sampling_rate", _check_sampling_rate(self.sampling_rate))
        object.__setattr__(self, "steps", check.integer("steps", self.steps, minimum=1))

    def to_dp_event(self) -> DpEvent:
        """This event as a ``dp_accounting`` event (no subsampling wrapper when the rate is 1)."""
        import dp_accounting

        event: DpEvent = dp_accounting.GaussianDpEvent(self.noise_multiplier)
        if self.sampling_rate < 1.0:
            event = dp_accounting.PoissonSampledDpEvent(self.sampling_rate, event)
        return dp_accounting.SelfComposedDpEvent(event, self.steps)


def _merge_runs(events: Iterable[GaussianEvent]) -> list[GaussianEvent]:
    """Merge consecutive events with the same parameters (composition is order-independent, and a
    self-composed event is far cheaper to account than many copies)."""
    merged: list[GaussianEvent] = []
    for event in events:
        if not isinstance(event, GaussianEvent):
            raise ConfigError(f"events must be GaussianEvent objects; got {type(event).__name__}")
        last = merged[-1] if merged else None
        if last is not None and (last.noise_multiplier, last.sampling_rate) == (
            event.noise_multiplier,
            event.sampling_rate,
        ):
            merged[-1] = GaussianEvent(
                noise_multiplier=last.noise_multiplier,
                sampling_rate=last.sampling_rate,
                steps=last.steps + event.steps,
            )
        else:
            merged.append(event)
    return merged


def _fresh_accountant(kind: AccountantKind) -> _DpAccountant:
    if kind == "rdp":
        from dp_accounting.rdp import RdpAccountant

        return RdpAccountant()
    from dp_accounting.pld import PLDAccountant

    return PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)


@contextlib.contextmanager
def _quiet_accountant() -> Iterator[None]:
    """dp_accounting logs a warning per RDP order that fails to converge (thousands per call in
    some regimes, harmless: those orders are skipped); keep them out of node and hub logs."""
    log = logging.getLogger("absl")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)


def _compose(accountant: _DpAccountant, events: list[GaussianEvent]) -> None:
    import dp_accounting

    if events:
        with _quiet_accountant():
            accountant.compose(dp_accounting.ComposedDpEvent([e.to_dp_event() for e in events]))


def _epsilon_of(accountant: _DpAccountant, delta: float) -> float:
    with _quiet_accountant():
        value = float(accountant.get_epsilon(delta))
    if math.isnan(value) or value < 0:  # pragma: no cover - a library fault, never seen
        raise PrivacyError(f"the accountant returned an invalid epsilon {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# pure functions


def epsilon_for_events(
    events: Iterable[GaussianEvent], *, delta: float, accountant: AccountantKind = "rdp"
) -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0.0 for no events)."""
    delta = _check_delta(delta)
    kind = _check_kind(accountant)
    merged = _merge_runs(events)
    if not merged:
        return 0.0
    acc = _fresh_accountant(kind)
    _compose(acc, merged)
    return _epsilon_of(acc, delta)


def epsilon(
    *,
    noise_multiplier: float,
    sampling_rate: float,
    steps: int,
    delta: float,
    accountant: AccountantKind = "rdp",
) -> float:
    """Epsilon at ``delta`` after ``steps`` rounds of the Poisson-subsampled Gaussian mechanism.

    >>> round(epsilon(noise_multiplier=1.5, sampling_rate=0.04, steps=2250, delta=1e-5), 2)
    7.33
    """
    if check.integer("steps", steps, minimum=0) == 0:
        _check_delta(delta)
        _check_kind(accountant)
        return 0.0
    event = GaussianEvent(
        noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps
    )
    return epsilon_for_events([event], delta=delta, accountant=accountant)


def _bracket(
    eps_at: Callable[[float], float], *, target: float, start: float, factor: float
) -> tuple[float, float] | float:
    """``(low, high)`` with ``eps_at(low) > target >= eps_at(high)``, found by stepping from
    ``start`` by ``factor``; or a single multiplier if even ``_MIN_NOISE`` meets the target."""
    low = high = start
    if eps_at(start) > target:
        while True:
            low, high = high, high * factor
            if high > _MAX_NOISE:
                raise ConfigError(
                    f"target epsilon {target} cannot be met with a noise multiplier up to "
                    f"{_MAX_NOISE:g}; raise the target or lower the steps or sampling rate"
                )
            if eps_at(high) <= target:
                break
    else:
        while True:
            low, high = low / factor, low
            if low < _MIN_NOISE:
                return high  # a target so lax that about 2**-6 meets it: never search below that
            if eps_at(low) > target:
                break
    return low, high


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sampling_rate: float,
    steps: int,
    accountant: AccountantKind = "rdp",
) -> float:
    """The smallest noise multiplier (within 0.1 %) whose epsilon is at most ``target_epsilon``.

    The search runs on the accountant itself: it brackets the root by doubling and halving, then
    hands the bracket to ``dp_accounting.calibrate_dp_mechanism`` (Brent's method with a bisection
    fallback that guarantees the returned value meets the target). The result is checked once more
    with :func:`epsilon`, so ``epsilon(noise_multiplier=result, ...) <= target_epsilon`` always.

    Raises :class:`ConfigError` if the target cannot be met with a multiplier up to 2**20; never
    returns less than 2**-6.
    """
    target = check.positive("target_epsilon", target_epsilon)
    delta = _check_delta(delta)
    q = _check_sampling_rate(sampling_rate)
    steps = check.integer("steps", steps, minimum=1)
    kind = _check_kind(accountant)

    def eps_at(z: float) -> float:
        return epsilon(
            noise_multiplier=z, sampling_rate=q, steps=steps, delta=delta, accountant=kind
        )

    if kind == "pld":
        # PLD evaluations are slow and PLD <= RDP: start from the (fast) RDP answer, a close upper
        # estimate, and step down by 20 %.
        start, factor = (
            noise_multiplier_for(
                target_epsilon=target, delta=delta, sampling_rate=q, steps=steps, accountant="rdp"
            ),
            1.25,
        )
    else:
        start, factor = 1.0, 2.0
    bracket = _bracket(eps_at, target=target, start=start, factor=factor)
    if isinstance(bracket, float):
        return bracket
    low, high = bracket

    import dp_accounting

    z = float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _fresh_accountant(kind),
            lambda x: GaussianEvent(noise_multiplier=x, sampling_rate=q, steps=steps).to_dp_event(),
            target,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            tol=low * _SEARCH_RTOL,
        )
    )
    if eps_at(z) > target:  # pragma: no cover - calibrate_dp_mechanism guarantees this
        raise PrivacyError(f"noise search returned {z} which does not meet epsilon {target}")
    return z


# --------------------------------------------------------------------------------------------------
# the stateful accountant


class PrivacyAccountant:
    """Records the Gaussian rounds of one study and reports the epsilon they compose to.

    Rounds may differ in noise and sampling rate (e.g. a noise schedule, or fewer sites in some
    rounds). The record is a list of :class:`GaussianEvent` (``history``), from which an accountant
    can be rebuilt after a restart: ``PrivacyAccountant(accountant=..., history=saved)``.

    Rounds are composed into one live ``dp_accounting`` accountant as they are queried, so asking
    for epsilon every round costs one composition per round, not the whole history. (With PLD the
    live value and a fresh one may differ in the 8th digit: both are upper bounds.) Not
    thread-safe: one study's accountant lives in one place, the hub's round loop.

    >>> acc = PrivacyAccountant(accountant="rdp")
    >>> acc.record(noise_multiplier=1.0, sampling_rate=1.0, steps=10)
    >>> acc.record(noise_multiplier=2.0, sampling_rate=1.0)
    >>> acc.steps
    11
    """

    def __init__(
        self, *, accountant: AccountantKind = "rdp", history: Iterable[GaussianEvent] = ()
    ) -> None:
        self._kind = _check_kind(accountant)
        self._history: list[GaussianEvent] = []
        self._pending: list[GaussianEvent] = []
        self._live: _DpAccountant | None = None  # built on the first query, then composed into
        for event in _merge_runs(history):
            self._append(event)

    @property
    def kind(self) -> AccountantKind:
        """Which accountant (``"rdp"`` or ``"pld"``) this one uses."""
        return self._kind

    @property
    def history(self) -> tuple[GaussianEvent, ...]:
        """Every recorded event, consecutive identical rounds merged."""
        return tuple(self._history)

    @property
    def steps(self) -> int:
        """How many rounds have been recorded."""
        return sum(e.steps for e in self._history)

    def _append(self, event: GaussianEvent) -> None:
        self._history[-1:] = _merge_runs([*self._history[-1:], event])
        self._pending[-1:] = _merge_runs([*self._pending[-1:], event])

    def record(self, *, noise_multiplier: float, sampling_rate: float, steps: int = 1) -> None:
        """Record ``steps`` rounds of the Gaussian mechanism with these parameters."""
        self._append(
            GaussianEvent(
                noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, steps=steps
            )
        )

    def epsilon(self, *, delta: float) -> float:
        """Epsilon at ``delta`` of everything recorded so far (0.0 before the first round)."""
        delta = _check_delta(delta)
        if not self._history:
            return 0.0
        if self._live is None:
            self._live = _fresh_accountant(self._kind)
        _compose(self._live, self._pending)
        self._pending.clear()
        return _epsilon_of(self._live, delta)

    def __repr__(self) -> str:
        return f"PrivacyAccountant(accountant={self._kind!r}, steps={self.steps})"
