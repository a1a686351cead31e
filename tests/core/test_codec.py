import contextlib
import json
import pickle
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from cordiale.core.codec import DecodeLimits, decode_message, encode_message
from cordiale.core.errors import WireError
from cordiale.core.messages import Content, Envelope, ErrorInfo, Message
from cordiale.core.records import ALLOWED_DTYPES, ArrayRecord, ConfigRecord, MetricRecord


def _msg(arrays=None, **content) -> Message:
    env = Envelope(study_id="s1", round=3, stage="train", sender="hub", recipient="oxford")
    return Message(env, Content(arrays=arrays or {}, **content))


@pytest.mark.parametrize("dtype", sorted(ALLOWED_DTYPES))
def test_round_trip_every_dtype(dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random((3, 4)) * 100).astype(dtype)
    msg = _msg(
        {"weights": ArrayRecord({"a.weight": arr, "empty": np.zeros((0, 2), dtype)})},
        metrics=MetricRecord({"loss": 0.5, "n": 10}),
        config=ConfigRecord({"lr": 0.1, "layers": ["x"]}),
    )
    back = decode_message(encode_message(msg))
    assert back.envelope == msg.envelope
    assert back.content.arrays["weights"].equals(msg.content.arrays["weights"])
    assert back.content.arrays["weights"]["a.weight"].dtype == np.dtype(dtype)
    assert back.content.metrics.to_dict() == {"loss": 0.5, "n": 10}
    assert back.content.config.to_dict() == {"lr": 0.1, "layers": ["x"]}


def test_the_array_section_is_standard_safetensors_both_ways():
    """What the codec writes, the safetensors library reads; what the library writes, the codec
    reads (the writer is ours for speed, the format is theirs)."""
    arrays = {
        "w/a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "w/flag": np.array(True),
        "w/empty": np.zeros((0, 3), np.int64),
        "w/b": np.arange(5, dtype=np.float64),  # an 8-byte type after 4-byte ones
    }
    msg = _msg({"w": ArrayRecord({k.split("/")[1]: v for k, v in arrays.items()})})
    data = encode_message(msg)
    (hlen,) = struct.unpack("<I", data[5:9])
    body = data[9 + hlen :]
    read = st_load(body)
    assert set(read) == set(arrays)
    for key, arr in arrays.items():
        assert read[key].dtype == arr.dtype and np.array_equal(read[key], arr)
    theirs = data[: 9 + hlen] + st_save(arrays)  # the library's own layout and padding
    back = decode_message(theirs).content.arrays["w"]
    assert all(np.array_equal(back[k.split("/")[1]], v) for k, v in arrays.items())
    back["a"][0, 0] = -1.0  # decoded arrays are the receiver's own, writable memory


def test_round_trip_error_and_no_arrays():
    msg = _msg(error=ErrorInfo(kind="ContractViolation", message="missing column(s): Age"))
    back = decode_message(encode_message(msg))
    assert back.content.error == msg.content.error and back.content.arrays == {}


def test_pickled_payload_is_refused():
    payload = pickle.dumps({"weights": np.zeros(3)})
    with pytest.raises(WireError, match="bad magic"):
        decode_message(payload)


def test_every_truncation_is_refused():
    data = encode_message(_msg({"w": ArrayRecord({"x": np.arange(10, dtype=np.float32)})}))
    for cut in range(len(data)):
        with pytest.raises(WireError):
            decode_message(data[:cut])


def test_a_known_layout_is_still_refused_with_the_wrong_data_length():
    """Checked layouts are remembered by header and data length: the same header over a shorter
    or longer data section is checked again, and refused."""
    data = encode_message(_msg({"w": ArrayRecord({"x": np.arange(10, dtype=np.float32)})}))
    decode_message(data)  # the layout is now known
    with pytest.raises(WireError):
        decode_message(data[:-1])
    with pytest.raises(WireError, match="trailing bytes"):
        decode_message(data + b"\0")
    assert decode_message(data).content.arrays["w"]["x"].tolist() == list(range(10))


def test_oversized_message_refused_before_decoding():
    data = encode_message(_msg({"w": ArrayRecord({"x": np.zeros(1000)})}))
    with pytest.raises(WireError, match="exceeds the limit"):
        decode_message(data, DecodeLimits(max_bytes=1000))


def _rewrite_array_header(data: bytes, mutate) -> bytes:
    """Rebuild a message whose safetensors header was changed by ``mutate`` (a hostile sender)."""
    hlen = struct.unpack("<I", data[5:9])[0]
    head, body = data[: 9 + hlen], data[9 + hlen :]
    n = struct.unpack("<Q", body[:8])[0]
    st_header = json.loads(body[8 : 8 + n])
    mutate(st_header)
    new = json.dumps(st_header).encode()
    return head + struct.pack("<Q", len(new)) + new + body[8 + n :]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda h: h["w/x"].update(dtype="O"), "not allowed"),
        (lambda h: h["w/x"].update(shape=[1000, 1000]), "needs"),
        (lambda h: h["w/x"].update(shape=[-1]), "invalid shape"),
        (lambda h: h["w/x"].update(data_offsets=[0, 10**12]), "needs"),
        (lambda h: h.update({"w/y": dict(h["w/x"])}), "gaps or overlapping"),
        # well-formed safetensors that the library accepts, refused by our own rules
        (lambda h: h["w/x"].update(dtype="BF16", shape=[8]), "'BF16' not allowed"),
        (lambda h: h["w/x"].update(shape=[1] * 8 + [4]), "invalid shape"),
    ],
)
def test_hostile_array_headers_refused(mutate, match):
    data = encode_message(_msg({"w": ArrayRecord({"x": np.arange(4, dtype=np.float32)})}))
    with pytest.raises(WireError, match=match):
        decode_message(_rewrite_array_header(data, mutate))


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_in_the_header_are_refused(token):
    """The header is strict JSON: NaN and infinities (which Python's json accepts) are refused,
    and an overflowing number never becomes an infinite metric."""
    data = encode_message(_msg(metrics=MetricRecord({"loss": 0.25})))
    hostile = data.replace(b"0.25", token)
    hostile = hostile[:5] + struct.pack("<I", len(hostile) - 9) + hostile[9:]
    with pytest.raises(WireError, match=r"not valid JSON|must be finite"):
        decode_message(hostile)


def test_bad_envelope_names_the_field():
    data = encode_message(_msg())
    hlen = struct.unpack("<I", data[5:9])[0]
    header = json.loads(data[9 : 9 + hlen])
    header["envelope"]["round"] = -1
    new = json.dumps(header).encode()
    with pytest.raises(WireError, match="round"):
        decode_message(data[:5] + struct.pack("<I", len(new)) + new)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_wire_error(blob):
    for data in (blob, b"CDLW\x01" + blob):
        with contextlib.suppress(WireError):
            decode_message(data)
