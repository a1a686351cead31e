"""Secure-aggregation messages as message :class:`~cordiale.core.messages.Content`, and back.

The protocol messages of :mod:`cordiale.crypto.messages` are frozen dataclasses of ints,
strings, bytes, tuples of strings or bytes, and (for the masked input) one unsigned array. They
travel as records of a message of stage ``"secagg"``:

* ``config["secagg.stage"]``: the protocol step (:data:`STEPS`);
* ints, strings and tuples of strings: ``config["secagg.msg.<field>"]``;
* bytes: a ``uint8`` array ``arrays["secagg"]["<field>"]``; a tuple of bytes is the
  concatenation of its items with their lengths in ``config["secagg.msg.<field>.lengths"]``;
* the masked input: ``arrays["secagg"]["masked"]`` (``uint32`` or ``uint64``);
* the epoch's public parameters (:class:`~cordiale.crypto.SecAggConfig` and the fixed-point
  codec), sent with the epoch's first step only: ``config["secagg.config.<name>"]``.

Decoding checks everything before building a message: the step, that every field is present
with the expected type, that the ``secagg`` array record holds exactly the message's byte and
array fields, that lengths are non-negative and add up; the dataclass then checks values. A
malformed message raises :class:`~cordiale.core.errors.WireError` that says what was expected.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any, Final, NamedTuple, TypeVar

import numpy as np

from cordiale.core.errors import CordialeError, ProtocolError, WireError
from cordiale.core.messages import Content
from cordiale.core.records import ArrayRecord, ConfigRecord, MetricRecord
from cordiale.crypto import (
    AdvertiseKeysRequest,
    FixedPointCodec,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggConfig,
    ShareKeysRequest,
    ShareKeysResponse,
    UnmaskRequest,
    UnmaskResponse,
)

__all__ = [
    "REQUESTS",
    "RESPONSES",
    "STEPS",
    "TRAINING_STEP",
    "EpochParameters",
    "from_content",
    "parameters_from_config",
    "parameters_to_config",
    "step_of",
    "to_content",
]

STAGE_KEY: Final = "secagg.stage"
ARRAYS: Final = "secagg"
_MSG: Final = "secagg.msg."
_CFG: Final = "secagg.config."

#: The protocol steps, in order, as named in ``config["secagg.stage"]``: the first two once per
#: epoch, the others in every round.
STEPS: Final = ("advertise_keys", "share_keys", "masked_input", "unmask")
#: The step whose message carries the training task: the node trains, then masks its update.
TRAINING_STEP: Final = "masked_input"
REQUESTS: Final[dict[str, type]] = {
    "advertise_keys": AdvertiseKeysRequest,
    "share_keys": ShareKeysRequest,
    "masked_input": MaskedInputRequest,
    "unmask": UnmaskRequest,
}
RESPONSES: Final[dict[str, type]] = {
    "advertise_keys": KeyAdvertisement,
    "share_keys": ShareKeysResponse,
    "masked_input": MaskedInputResponse,
    "unmask": UnmaskResponse,
}

_M = TypeVar("_M")
_ARRAY_TYPES = ("bytes", "tuple[bytes, ...]", "np.ndarray")
_UINT8: Final = np.dtype(np.uint8)
_MISSING: Final = object()


def step_of(content: Content) -> str:
    """The protocol step named by a secagg message; ProtocolError if none or unknown."""
    step = content.config.get(STAGE_KEY)
    if step not in STEPS:
        raise ProtocolError(
            f"this node does not run stage 'secagg' step {step!r}; "
            f"'{STAGE_KEY}' must name one of {', '.join(STEPS)}"
        )
    assert isinstance(step, str)
    return step


class _Field(NamedTuple):
    name: str
    type: str  # as annotated: "int", "bytes", "tuple[str, ...]"...
    key: str  # the config key of its value, or of its lengths for a tuple of bytes


@functools.cache
def _layout(cls: type) -> tuple[tuple[_Field, ...], frozenset[str]]:
    """The fields of protocol message class ``cls`` and the names of those that travel as arrays:
    worked out once per class, not with ``dataclasses.fields`` for every message."""
    layout = tuple(
        _Field(
            f.name,
            str(f.type),
            f"{_MSG}{f.name}.lengths" if f.type == "tuple[bytes, ...]" else f"{_MSG}{f.name}",
        )
        for f in fields(cls)
    )
    return layout, frozenset(f.name for f in layout if f.type in _ARRAY_TYPES)


def to_content(step: str, message: Any, base: Content | None = None) -> Content:
    """``message`` (a protocol dataclass) as the records of a secagg message of ``step``.

    ``base`` (copied) holds other records to send along (the epoch's parameters, the training
    task).
    """
    if step not in STEPS:
        raise ProtocolError(f"unknown secure-aggregation step {step!r}")
    if base is None:
        content = Content()
    else:  # a record copies a record of its own type without checking its values again
        content = Content(dict(base.arrays), MetricRecord(base.metrics), ConfigRecord(base.config))
    config = content.config
    config[STAGE_KEY] = step
    arrays: list[tuple[str, np.ndarray]] = []
    for name, kind, key in _layout(type(message))[0]:
        value = getattr(message, name)
        if kind == "bytes":  # a read-only view of immutable bytes (bytes() copies anything else)
            arrays.append((name, np.frombuffer(bytes(value), _UINT8)))
        elif kind == "tuple[bytes, ...]":
            arrays.append((name, np.frombuffer(b"".join(value), _UINT8)))
            config[key] = list(map(len, value))
        elif kind == "np.ndarray":
            arrays.append((name, np.asarray(value)))
        else:  # int, str, tuple[str, ...] (which the record stores as a list)
            config[key] = value
    if arrays:
        content.arrays[ARRAYS] = ArrayRecord(arrays)
    return content


def from_content(cls: type[_M], content: Content) -> _M:
    """Rebuild a protocol message of type ``cls``; WireError if the records do not fit it."""
    name = cls.__name__
    cfg = content.config
    layout, expected = _layout(cls)
    arrays = content.arrays.get(ARRAYS)
    if arrays is None:
        arrays = ArrayRecord()
    if arrays.keys() != expected:
        raise WireError(
            f"{name}: the '{ARRAYS}' arrays must be exactly {sorted(expected)}, "
            f"got {sorted(arrays)}"
        )
    values: dict[str, Any] = {}
    for field, kind, key in layout:
        if kind == "np.ndarray":
            values[field] = arrays[field]
        elif kind in _ARRAY_TYPES:  # bytes or a tuple of bytes
            array = arrays[field]
            if array.dtype != _UINT8 or array.ndim != 1:
                raise WireError(
                    f"{name}.{field}: expected a 1-D uint8 array, got {array.dtype}"
                    f"{list(array.shape)}"
                )
            raw = array.tobytes()
            values[field] = raw if kind == "bytes" else _split(name, field, raw, cfg.get(key))
        else:
            value = cfg.get(key, _MISSING)
            if value is _MISSING:
                raise WireError(f"{name}: missing field {field!r} ('{key}')")
            if kind == "tuple[str, ...]":
                if not isinstance(value, list):
                    raise WireError(f"{name}.{field}: expected a list of strings, got {value!r}")
                value = tuple(value)
            values[field] = value
    try:
        return cls(**values)
    except WireError:
        raise
    except (CordialeError, TypeError, ValueError) as exc:
        raise WireError(f"{name}: malformed message ({exc})") from None


def _split(owner: str, field: str, raw: bytes, lengths: object) -> tuple[bytes, ...]:
    """``raw`` cut into pieces of ``lengths``: non-negative integers that add up to its size."""
    if not isinstance(lengths, list):
        raise _bad_lengths(owner, field)
    out: list[bytes] = []
    offset = 0
    for n in lengths:
        # an exact int (all that a record's list of ints holds) needs no isinstance; not a bool
        if (type(n) is not int and (not isinstance(n, int) or isinstance(n, bool))) or n < 0:
            raise _bad_lengths(owner, field)
        end = offset + n
        out.append(raw[offset:end])
        offset = end
    if offset != len(raw):
        raise WireError(
            f"{owner}.{field}: lengths add up to {offset} bytes, the array has {len(raw)}"
        )
    return tuple(out)


def _bad_lengths(owner: str, field: str) -> WireError:
    return WireError(f"{owner}.{field}: lengths must be a list of non-negative integers")


@dataclass(frozen=True)
class EpochParameters:
    """The public parameters of a secure-aggregation epoch: the protocol's and the encoding's.

    ``names`` fixes the order in which a node flattens its update; ``max_weight`` bounds the
    weight (example count) a node may carry, so that the ring cannot overflow.
    """

    protocol: SecAggConfig
    codec: FixedPointCodec
    names: tuple[str, ...]
    max_weight: int


def parameters_to_config(params: EpochParameters) -> ConfigRecord:
    p, c = params.protocol, params.codec
    cfg = ConfigRecord(
        {
            f"{_CFG}epoch_id": p.epoch_id,
            f"{_CFG}client_ids": list(p.client_ids),
            f"{_CFG}threshold": p.threshold,
            f"{_CFG}vector_length": p.vector_length,
            f"{_CFG}bits": p.bits,
            f"{_CFG}graph_seed": p.graph_seed.hex(),
            f"{_CFG}rounds": p.rounds,
            f"{_CFG}clip": float(c.clip),
            f"{_CFG}frac_bits": c.frac_bits,
            f"{_CFG}names": list(params.names),
            f"{_CFG}max_weight": params.max_weight,
        }
    )
    if p.degree is not None:
        cfg[f"{_CFG}degree"] = p.degree
    return cfg


def parameters_from_config(cfg: ConfigRecord) -> EpochParameters:
    """Rebuild the epoch parameters; ProtocolError naming the problem if they are invalid."""

    def get(name: str, kind: type | tuple[type, ...], default: object = None) -> Any:
        key = f"{_CFG}{name}"
        value = cfg.get(key, default)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise ProtocolError(f"secure-aggregation parameter '{key}' is missing or malformed")
        return value

    ids, names = get("client_ids", list), get("names", list)
    if not all(isinstance(x, str) for x in ids + names):
        raise ProtocolError("secure-aggregation client ids and names must be strings")
    try:
        seed = bytes.fromhex(get("graph_seed", str))
        degree = cfg.get(f"{_CFG}degree")
        if degree is not None and (isinstance(degree, bool) or not isinstance(degree, int)):
            raise ProtocolError("secure-aggregation parameter 'degree' must be an integer")
        protocol = SecAggConfig(
            epoch_id=get("epoch_id", int),
            client_ids=tuple(ids),
            threshold=get("threshold", int),
            vector_length=get("vector_length", int),
            bits=get("bits", int),
            degree=degree,
            graph_seed=seed,
            rounds=get("rounds", int),
        )
        codec = FixedPointCodec(
            clip=float(get("clip", (int, float))),
            frac_bits=get("frac_bits", int),
            bits=protocol.bits,
        )
    except ValueError:
        raise ProtocolError("secure-aggregation parameter 'graph_seed' is not hex") from None
    except ProtocolError:
        raise
    except CordialeError as exc:
        raise ProtocolError(f"invalid secure-aggregation parameters: {exc}") from None
    max_weight = get("max_weight", int)
    if max_weight < 1:
        raise ProtocolError("secure-aggregation parameter 'max_weight' must be at least 1")
    return EpochParameters(protocol, codec, tuple(names), max_weight)
