"""A node answers every task, and refuses bad ones with a reason that leaks nothing local."""

import numpy as np
import pytest

from cordiale.core.codec import decode_message, encode_message
from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ArrayRecord
from cordiale.learn.models import ModelSpec, build_model, get_weights
from cordiale.node.runtime import NodeRuntime


@pytest.fixture
def node(pima_sites):
    return NodeRuntime("site-0", pima_sites["site-0"])


def _task(stage="train", recipient="site-0", arrays=None):
    env = Envelope(study_id="s", round=1, stage=stage, sender="hub", recipient=recipient)
    return Message(env, Content(arrays=arrays or {}))


def _weights(num_features=8):
    return get_weights(build_model(ModelSpec(), num_features, seed=0))


def test_train_returns_an_update_not_data(node, pima_sites):
    reply = node.handle(_task(arrays={"weights": _weights()}))
    assert reply.content.error is None
    assert set(reply.content.arrays) == {"update"}
    assert reply.content.arrays["update"].shapes() == _weights().shapes()
    assert reply.content.metrics["num_examples"] == pima_sites["site-0"].num_train


def test_replayed_task_is_refused(node):
    task = _task(arrays={"weights": _weights()})
    assert node.handle(task).content.error is None
    again = node.handle(task).content.error
    assert again is not None and again.kind == "ProtocolError" and "replay" in again.message
    assert node.tasks_run == 1


@pytest.mark.parametrize(
    ("task", "kind", "text"),
    [
        (
            _task(recipient="site-1", arrays={"weights": _weights()}),
            "ProtocolError",
            "not to this node",
        ),
        (_task(stage="secagg"), "ProtocolError", "does not run stage"),
        (_task(), "ProtocolError", "no 'weights'"),
        (
            _task(arrays={"weights": _weights(num_features=5)}),
            "ProtocolError",
            "expected float32[32, 8]",
        ),
        (
            _task(arrays={"weights": ArrayRecord({"net.0.weight": np.zeros((32, 8), np.float64)})}),
            "ProtocolError",
            "missing",
        ),
    ],
)
def test_bad_tasks_get_a_clear_refusal(node, task, kind, text):
    err = node.handle(task).content.error
    assert err is not None and err.kind == kind and text in err.message
    assert node.tasks_run == 0


def test_garbage_bytes_get_a_wire_error_reply(node):
    reply = decode_message(node.handle_bytes(b"\x80\x04garbage"))
    assert reply.content.error.kind == "WireError"
    assert reply.content.error.message == "malformed message"
    ok = decode_message(node.handle_bytes(encode_message(_task(stage="stats"))))
    assert ok.content.arrays["stats"]["count"].shape == (8,)
