"""The wire codec: a message as bytes that are data only.

Layout (all integers little-endian)::

    b"CDLW" | version: u8 | header length: u32 | header: UTF-8 JSON | arrays: safetensors

The JSON header holds the envelope, metrics, config, error and the names of the array records; the
arrays travel as one safetensors buffer whose keys are ``"<record>/<name>"``. Decoding never
unpickles. The total size and both header sizes are checked before anything is parsed; the
safetensors header (shape consistent with the byte span, offsets inside the buffer, contiguous
and non-overlapping) by the ``safetensors`` library before it copies an array, so no allocation
exceeds the bounded message; then each array's dtype must be allowed, its dimensions within the
limit, and the arrays named in the header exactly the arrays present. Nothing is handed out
before every check has passed.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors import deserialize as st_deserialize

from cordiale.core.errors import ConfigError, WireError
from cordiale.core.messages import Content, Envelope, ErrorInfo, Message
from cordiale.core.records import ArrayRecord, ConfigRecord, MetricRecord

__all__ = ["DecodeLimits", "decode_message", "encode_message"]

MAGIC = b"CDLW"
VERSION = 1
_PREFIX = struct.Struct("<4sBI")

# safetensors dtype tags and their numpy equivalents (only the ones ALLOWED_DTYPES admits).
_ST_DTYPES: dict[str, np.dtype[Any]] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype("bool"),
}
_DESCRIPTOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_ST_TAG: dict[np.dtype[Any], str] = {dtype: tag for tag, dtype in _ST_DTYPES.items()}


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds on what a decoder accepts; everything above is refused before allocation."""

    max_bytes: int = 256 * 1024 * 1024
    max_header_bytes: int = 1024 * 1024
    max_tensors: int = 10_000
    max_dims: int = 8


_DEFAULT_LIMITS = DecodeLimits()
_U64 = struct.Struct("<Q")


def encode_message(message: Message) -> bytes:
    """Encode ``message`` as wire bytes."""
    c = message.content
    tensors: dict[str, np.ndarray] = {}
    names: dict[str, list[str]] = {}
    for group, record in c.arrays.items():
        if "/" in group:
            raise ConfigError(f"array record name must not contain '/': {group!r}")
        names[group] = list(record)
        for name, arr in record.items():
            tensors[f"{group}/{name}"] = arr
    header = {
        "envelope": message.envelope.model_dump(mode="json"),
        "metrics": c.metrics.to_dict(),
        "config": c.config.to_dict(),
        "error": c.error.model_dump(mode="json") if c.error else None,
        "arrays": names,
    }
    # orjson: compact, several times faster than json; records hold only finite numbers, so the
    # NaN that orjson would write as null cannot occur
    hbytes = orjson.dumps(header)
    prefix = _PREFIX.pack(MAGIC, VERSION, len(hbytes))
    return b"".join([prefix, hbytes, *_safetensors_parts(tensors)]) if tensors else prefix + hbytes


def _safetensors_parts(tensors: dict[str, np.ndarray]) -> list[Any]:
    """The safetensors serialisation of ``tensors`` (wire arrays: little-endian, contiguous), as
    buffers to join: length, JSON header padded to 8 bytes, then the arrays in order (a
    contiguous array is a buffer of its bytes: joined as it is).

    Written here rather than with ``safetensors.numpy.save``, whose per-array dtype lookup costs
    more than the whole rest of encoding a model update; ``safetensors`` itself reads what this
    writes (tested), and :func:`decode_message` checks it the same way whoever wrote it.
    """
    layout = tuple((key, arr.dtype, arr.shape) for key, arr in tensors.items())
    prefix = _layout_prefix(layout)
    return [
        prefix,
        *(a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in tensors.values()),
    ]


@functools.lru_cache(maxsize=256)
def _layout_prefix(layout: tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...]) -> bytes:
    """Length and JSON header of a safetensors buffer of arrays with these names, dtypes and
    shapes, in this order (a model's layout repeats in every message: built once per layout)."""
    header: dict[str, Any] = {}
    offset = 0
    for key, dtype, shape in layout:
        end = offset + math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _ST_TAG[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads its header with spaces to 8-byte alignment
    return _U64.pack(len(raw)) + raw


_Layout = tuple[tuple[str, np.dtype[Any], tuple[int, ...], int], ...]  # name, dtype, shape, start
_CHECKED: dict[tuple[bytes, int, DecodeLimits], _Layout] = {}  # header, data length, limits
_CHECKED_KEPT = 64


def _read_safetensors(buf: memoryview, limits: DecodeLimits) -> dict[str, np.ndarray]:
    """The arrays of a safetensors buffer, each checked before it is handed out.

    The header length is bounded first. The checks depend only on the header and the length of
    the data section, so a header seen before with the same length is not checked again (a
    model's layout repeats in every message); a new one goes through :func:`_check_layout`. The
    data section is then copied once into writable memory and each array is a view of its span.
    """
    if len(buf) < 8:
        raise WireError("array section truncated: shorter than its 8-byte length prefix")
    (n,) = _U64.unpack(buf[:8])
    if n > limits.max_header_bytes or 8 + n > len(buf):
        raise WireError(f"array header length {n} exceeds the buffer or the limit")
    key = (bytes(buf[8 : 8 + n]), len(buf) - 8 - n, limits)
    layout = _CHECKED.get(key)
    if layout is None:
        layout = _check_layout(buf, key[0], limits)
        if len(_CHECKED) >= _CHECKED_KEPT:
            _CHECKED.pop(next(iter(_CHECKED)))
        _CHECKED[key] = layout
    data = bytearray(buf[8 + n :])
    return {name: np.ndarray(shape, dtype, data, start) for name, dtype, shape, start in layout}


def _check_layout(buf: memoryview, header: bytes, limits: DecodeLimits) -> _Layout:
    """Check a safetensors buffer's header; return each array's name, dtype, shape and offset.

    The ``safetensors`` library parses and validates it (offsets inside the buffer and tiling it
    exactly, each span the size its shape and dtype need, checked arithmetic); then every array
    must have an allowed dtype and at most ``max_dims`` dimensions, and there may be at most
    ``max_tensors``. A buffer the library refuses is examined by :func:`_explain`, so that the
    error names the problem in our terms.
    """
    try:
        st_deserialize(bytes(buf))
    except SafetensorError as e:
        _explain(header, len(buf) - 8 - len(header), limits)  # raises naming the problem
        raise WireError(f"array section refused: {e}") from None
    described = json.loads(header)  # valid: the library just parsed it
    described.pop("__metadata__", None)
    if len(described) > limits.max_tensors:
        raise WireError(f"{len(described)} arrays exceed the limit of {limits.max_tensors}")
    layout = []
    for name, info in described.items():
        tag, shape = info["dtype"], info["shape"]
        dtype = _ST_DTYPES.get(tag)
        if dtype is None:
            raise WireError(
                f"array {name!r}: dtype {tag!r} not allowed; allowed: {', '.join(_ST_DTYPES)}"
            )
        if len(shape) > limits.max_dims:
            raise WireError(f"array {name!r}: invalid shape {shape!r}")
        layout.append((name, dtype, tuple(shape), info["data_offsets"][0]))
    return tuple(layout)


def _explain(raw_header: bytes, data_len: int, limits: DecodeLimits) -> None:
    """Find what is wrong with a safetensors buffer the library refused, and say it.

    Checked (the header's length already was): its JSON, the number of arrays, each descriptor
    (dtype allowed, shape within ``max_dims`` and consistent with its byte span, offsets inside
    the data section) and that the spans tile the data section exactly (no gap, overlap or
    trailing byte).
    """
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"array header is not valid JSON: {e}") from None
    if type(header) is not dict:
        raise WireError("array header must be a JSON object")
    header.pop("__metadata__", None)
    if len(header) > limits.max_tensors:
        raise WireError(f"{len(header)} arrays exceed the limit of {limits.max_tensors}")
    spans = []
    for key, info in header.items():  # json gives exact types: `type(x) is int` excludes bool
        if type(info) is not dict or info.keys() != _DESCRIPTOR_KEYS:
            raise WireError(f"array {key!r}: malformed descriptor")
        tag, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        dtype = _ST_DTYPES.get(tag) if type(tag) is str else None
        if dtype is None:
            raise WireError(
                f"array {key!r}: dtype {tag!r} not allowed; allowed: {', '.join(_ST_DTYPES)}"
            )
        if (
            type(shape) is not list
            or len(shape) > limits.max_dims
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise WireError(f"array {key!r}: invalid shape {shape!r}")
        if (
            type(offsets) is not list
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            raise WireError(f"array {key!r}: invalid offsets {offsets!r}")
        start, end = offsets
        expected = math.prod(shape) * dtype.itemsize
        if not (0 <= start <= end <= data_len) or end - start != expected:
            raise WireError(
                f"array {key!r}: shape {shape} of {tag} needs {expected} bytes; "
                f"offsets {offsets} in a {data_len}-byte buffer"
            )
        spans.append((start, end))
    spans.sort()
    pos = 0
    for start, end in spans:
        if start != pos:
            raise WireError("array buffer has gaps or overlapping arrays")
        pos = end
    if pos != data_len:
        raise WireError(f"array buffer has {data_len - pos} trailing bytes")


_HEADER_KEYS = frozenset({"envelope", "metrics", "config", "error", "arrays"})


def _load_json_header(raw: bytes) -> dict[str, Any]:
    try:
        header = orjson.loads(raw)  # strict JSON: no NaN or Infinity tokens, valid UTF-8 only
    except orjson.JSONDecodeError as e:
        raise WireError(f"message header is not valid JSON: {e}") from None
    if not isinstance(header, dict) or header.keys() != _HEADER_KEYS:
        raise WireError(
            "message header must be an object with exactly envelope, metrics, "
            "config, error and arrays"
        )
    return header


def decode_message(data: bytes, limits: DecodeLimits | None = None) -> Message:
    """Decode wire bytes into a :class:`Message`, or raise :class:`WireError` saying why not."""
    limits = limits or _DEFAULT_LIMITS
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError(f"expected bytes, got {type(data).__name__}")
    buf = memoryview(data)
    if len(buf) > limits.max_bytes:
        raise WireError(f"message of {len(buf)} bytes exceeds the limit of {limits.max_bytes}")
    if len(buf) < _PREFIX.size:
        raise WireError(f"message truncated: {len(buf)} bytes, shorter than the prefix")
    magic, version, hlen = _PREFIX.unpack(buf[: _PREFIX.size])
    if magic != MAGIC:
        raise WireError("not a Cordiale message (bad magic); pickled or foreign data is refused")
    if version != VERSION:
        raise WireError(f"unsupported wire version {version}; this build speaks {VERSION}")
    if hlen > limits.max_header_bytes or _PREFIX.size + hlen > len(buf):
        raise WireError(f"message header length {hlen} exceeds the buffer or the limit")
    header = _load_json_header(bytes(buf[_PREFIX.size : _PREFIX.size + hlen]))
    body = buf[_PREFIX.size + hlen :]
    names = header["arrays"]
    if not isinstance(names, dict) or not all(
        isinstance(v, list) and all(isinstance(n, str) for n in v) for v in names.values()
    ):
        raise WireError("header 'arrays' must map record names to lists of array names")
    declared = [f"{g}/{n}" for g, ns in names.items() for n in ns]
    if declared:
        tensors = _read_safetensors(body, limits)
        if tensors.keys() != set(declared) or len(declared) != len(tensors):
            raise WireError("arrays in the body do not match the arrays named in the header")
    elif len(body):
        raise WireError(f"{len(body)} unexpected bytes after a header that names no arrays")
    else:
        tensors = {}
    try:
        envelope = Envelope.model_validate(header["envelope"])
        error = None if header["error"] is None else ErrorInfo.model_validate(header["error"])
        if not isinstance(header["metrics"], dict) or not isinstance(header["config"], dict):
            raise WireError("metrics and config must be JSON objects")
        content = Content(
            arrays={  # views of the checked body: wire arrays already, only the names to check
                g: ArrayRecord.of_wire_arrays((n, tensors[f"{g}/{n}"]) for n in ns)
                for g, ns in names.items()
            },
            metrics=MetricRecord(header["metrics"]),
            config=ConfigRecord(header["config"]),
            error=error,
        )
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise WireError(f"invalid message header field {loc!r}: {first['msg']}") from None
    except ConfigError as e:
        raise WireError(f"invalid message content: {e}") from None
    return Message(envelope, content)
