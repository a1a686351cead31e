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

from dataclasses import dataclass, fields
from typing import Any, Final, TypeVar

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


def to_content(step: str, message: Any, base: Content | None = None) -> Content:
    """``message`` (a protocol dataclass) as the records of a secagg message of ``step``.

    ``base`` (copied) holds other records to send along (the epoch's parameters, the training
    task).
    """
    if step not in STEPS:
        raise ProtocolError(f"unknown secure-aggregation step {step!r}")
    content = Content(
        arrays=dict(base.arrays) if base else {},
        metrics=MetricRecord(base.metrics.to_dict() if base else {}),
        config=ConfigRecord(base.config.to_dict() if base else {}),
    )
    content.config[STAGE_KEY] = step
    arrays = ArrayRecord()
    for f in fields(message):
        value = getattr(message, f.name)
        if f.type == "bytes":
            arrays[f.name] = np.frombuffer(value, dtype=np.uint8).copy()
        elif f.type == "tuple[bytes, ...]":
            arrays[f.name] = np.frombuffer(b"".join(value), dtype=np.uint8).copy()
            content.config[f"{_MSG}{f.name}.lengths"] = [len(v) for v in value]
        elif f.type == "np.ndarray":
            arrays[f.name] = np.asarray(value)
        else:  # int, str, tuple[str, ...]
            content.config[f"{_MSG}{f.name}"] = list(value) if isinstance(value, tuple) else value
    if arrays:
        content.arrays[ARRAYS] = arrays
    return content


def from_content(cls: type[_M], content: Content) -> _M:
    """Rebuild a protocol message of type ``cls``; WireError if the records do not fit it."""
    name = cls.__name__
    cfg = content.config
    arrays = content.arrays.get(ARRAYS, ArrayRecord())
    expected = {f.name for f in fields(cls) if f.type in _ARRAY_TYPES}  # type: ignore[arg-type]
    if set(arrays) != expected:
        raise WireError(
            f"{name}: the '{ARRAYS}' arrays must be exactly {sorted(expected)}, "
            f"got {sorted(arrays)}"
        )
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.type in _ARRAY_TYPES:
            array = arrays[f.name]
            if f.type == "np.ndarray":
                values[f.name] = array
                continue
            if array.dtype != np.uint8 or array.ndim != 1:
                raise WireError(
                    f"{name}.{f.name}: expected a 1-D uint8 array, got {array.dtype}"
                    f"{list(array.shape)}"
                )
            raw = array.tobytes()
            if f.type == "bytes":
                values[f.name] = raw
            else:
                values[f.name] = _split(name, f.name, raw, cfg.get(f"{_MSG}{f.name}.lengths"))
            continue
        key = f"{_MSG}{f.name}"
        if key not in cfg:
            raise WireError(f"{name}: missing field {f.name!r} ('{key}')")
        value = cfg[key]
        if f.type == "tuple[str, ...]":
            if not isinstance(value, list):
                raise WireError(f"{name}.{f.name}: expected a list of strings, got {value!r}")
            value = tuple(value)
        values[f.name] = value
    try:
        return cls(**values)
    except WireError:
        raise
    except (CordialeError, TypeError, ValueError) as exc:
        raise WireError(f"{name}: malformed message ({exc})") from None


def _split(owner: str, field: str, raw: bytes, lengths: object) -> tuple[bytes, ...]:
    if not isinstance(lengths, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in lengths
    ):
        raise WireError(f"{owner}.{field}: lengths must be a list of non-negative integers")
    if sum(lengths) != len(raw):
        raise WireError(
            f"{owner}.{field}: lengths add up to {sum(lengths)} bytes, the array has {len(raw)}"
        )
    out, offset = [], 0
    for n in lengths:
        out.append(raw[offset : offset + n])
        offset += n
    return tuple(out)


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
