"""Secure aggregation around any strategy, over the real message path (in-memory transport).

References are independent of the protocol: the same study run in plain (every site sends its
update), whose updates the recording transport captures at the hub.
"""

import logging

import numpy as np
import pytest

from cordiale.core.errors import ConfigError, ProtocolError, SecAggAbort, WireError
from cordiale.core.messages import Content, Envelope, Message
from cordiale.core.records import ConfigRecord
from cordiale.crypto import (
    AdvertiseKeysRequest,
    FixedPointCodec,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    ShareKeysResponse,
    UnmaskRequest,
    UnmaskResponse,
    encode_weighted,
)
from cordiale.learn.federation import Federation, FederationConfig
from cordiale.learn.models import ModelSpec
from cordiale.learn.secagg_wire import from_content, step_of, to_content
from cordiale.learn.secure_aggregation import SecureAggregationConfig
from cordiale.learn.strategies import make_strategy
from cordiale.node.runtime import NodeRuntime
from cordiale.transport.inmemory import InMemoryTransport

SITES = ["site-0", "site-1", "site-2", "site-3"]


class RecordingTransport(InMemoryTransport):
    """The in-memory transport, recording what the hub sends and receives.

    ``before(step, messages)`` may disconnect nodes or rewrite requests just before a batch of
    stage ``secagg`` goes out (a lost node mid-round, a tampering hub).
    """

    def __init__(self, handlers, before=None):
        super().__init__(handlers)
        self.sent: list[Message] = []
        self.received: list[Message] = []
        self.before = before

    def send_and_receive(self, messages, *, timeout=None):
        if self.before is not None and messages and messages[0].envelope.stage == "secagg":
            self.before(messages[0].content.config["secagg.stage"], messages)
        self.sent.extend(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        self.received.extend(replies)
        return replies


def _federation(
    sites,
    *,
    strategy="fedavg",
    secure=True,
    rounds=1,
    before=None,
    handlers=None,
    task_context=None,
    **secagg,
):
    """A federation over ``sites`` (each a NodeRuntime, unless ``handlers`` are given)."""
    handlers = handlers or {s: NodeRuntime(s, d).handle_bytes for s, d in sites.items()}
    transport = RecordingTransport(handlers, before=before)
    cfg = FederationConfig(
        study_id="secagg",
        rounds=rounds,
        seed=5,
        model=ModelSpec(hidden=(8,)),
        evaluate_every=0,
        task_context=task_context or {},
        secure_aggregation=SecureAggregationConfig(**secagg) if secure else None,
    )
    fed = Federation(cfg, make_strategy(strategy), transport)
    fed.setup()
    return fed, transport


def _plain_updates(sites, lost=()):
    """Round 1 of the plain study: each site's update and example count, as the hub sees them."""
    fed, transport = _federation(sites, secure=False)
    for node in lost:
        transport.disconnect(node)
    fed.step(1)
    updates = {
        r.envelope.sender: (r.content.arrays["update"], int(r.content.metrics["num_examples"]))
        for r in transport.received
        if r.envelope.stage == "train"
    }
    return fed.weights, updates


def _assert_same_weights(a, b, atol=1e-5):
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


# -- equivalence ------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_secure_rounds_give_the_plain_result(pima_sites, strategy):
    results = {}
    for secure in (False, True):
        fed, _ = _federation(pima_sites, strategy=strategy, secure=secure, rounds=3)
        for r in range(1, 4):
            record = fed.step(r)
        results[secure] = (fed.weights, record)
    (plain_w, plain_rec), (secure_w, secure_rec) = results[False], results[True]
    _assert_same_weights(secure_w, plain_w, atol=1e-3)
    _assert_same_weights(secure_w, plain_w, atol=1e-5)  # in fact far inside the bound
    assert secure_rec.nodes == plain_rec.nodes == SITES and not secure_rec.failures
    assert secure_rec.train_loss == pytest.approx(plain_rec.train_loss, abs=1e-4)
    assert secure_rec.evaluation.pooled["auc"] == pytest.approx(
        plain_rec.evaluation.pooled["auc"], abs=0.005
    )


# -- what the hub sees ------------------------------------------------------------------------


def test_the_hub_never_receives_a_single_site_update(pima_sites):
    _, plain = _plain_updates(pima_sites)
    fed, transport = _federation(pima_sites)
    fed.step(1)
    replies = [r for r in transport.received if r.envelope.stage == "secagg"]
    assert len(replies) == 4 * len(SITES)
    masked = {}
    for reply in replies:
        assert reply.content.error is None
        assert len(reply.content.metrics) == 0  # no per-site loss, count or clipping count
        assert set(reply.content.arrays) <= {"secagg"}
        for name, arr in reply.content.arrays.get("secagg", {}).items():
            if name == "masked":
                masked[reply.envelope.sender] = arr
            else:
                assert arr.dtype == np.uint8  # keys, ciphertexts, commitments, shares
    assert set(masked) == set(SITES)
    codec = FixedPointCodec(
        clip=1000.0, frac_bits=16, bits=next(iter(masked.values())).itemsize * 8
    )
    for site, (update, n) in plain.items():
        flat = np.concatenate([v.astype(np.float64).ravel() for v in update.values()])
        encoded = encode_weighted(codec, n * flat, n)
        for reply in replies:
            for arr in reply.content.arrays.get("secagg", {}).values():
                values = arr.astype(np.float64)
                for plaintext in (flat, n * flat):
                    if values.size == plaintext.size:
                        assert not np.allclose(values, plaintext, atol=1e-3)
                if arr.size == encoded.size + 1 and arr.dtype == encoded.dtype:
                    # the masked vector shares essentially no word with the site's encoding
                    assert np.mean(arr[:-1] == encoded) < 0.01
        assert np.mean(masked[site][:-2] == encoded[:-1]) < 0.01


def test_masked_vectors_sum_to_the_weighted_update_sum(pima_sites):
    plain_weights, _ = _plain_updates(pima_sites)
    fed, _ = _federation(pima_sites)
    record = fed.step(1)
    _assert_same_weights(fed.weights, plain_weights)
    assert record.nodes == SITES


# -- dropouts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "in_sum"),
    [("share_keys", False), ("masked_input", False), ("unmask", True)],
)
def test_a_site_lost_mid_round_is_handled_by_the_dropout_path(pima_sites, step, in_sum):
    """Lost after key advertisement: its update is out of the sum, unless it already sent its
    masked input (lost at unmasking), when its self mask is recovered from the others' shares."""

    def lose(current, messages):
        if current == step:
            transport.disconnect("site-2")

    fed, transport = _federation(pima_sites, before=lose)
    record = fed.step(1)
    survivors = SITES if in_sum else ["site-0", "site-1", "site-3"]
    assert record.nodes == survivors
    assert record.failures == {"site-2": "no reply before the round timeout"}
    plain_weights, _ = _plain_updates(pima_sites, lost=() if in_sum else ("site-2",))
    _assert_same_weights(fed.weights, plain_weights)


def test_fewer_survivors_than_the_threshold_fail_the_round(pima_sites):
    def lose(current, messages):
        if current == "masked_input":
            transport.disconnect("site-1")
            transport.disconnect("site-2")

    fed, transport = _federation(pima_sites, before=lose)
    before = fed.weights.copy()
    with pytest.raises(SecAggAbort, match=r"round 1: .*only 2 clients sent masked inputs, thres"):
        fed.step(1)
    assert fed.weights.equals(before)  # the global model did not move


def test_a_threshold_of_every_site_tolerates_no_loss(pima_sites):
    def lose(current, messages):
        if current == "share_keys":
            transport.disconnect("site-0")

    fed, transport = _federation(pima_sites, before=lose, threshold=4)
    with pytest.raises(SecAggAbort, match=r"threshold is 4.*site-0: no reply"):
        fed.step(1)


# -- refusals over the message path ----------------------------------------------------------


def _ask_for_both_shares(nodes):
    """A tampering hub: lists a surviving neighbour as dropped too in the unmasking request."""

    def tamper(step, messages):
        if step != "unmask":
            return
        for m in messages:
            if m.envelope.recipient not in nodes:
                continue
            req = from_content(UnmaskRequest, m.content)
            victim = next(s for s in req.survivors if s != req.receiver)
            bad = UnmaskRequest(
                round_id=req.round_id,
                receiver=req.receiver,
                survivors=req.survivors,
                dropped=(*req.dropped, victim),
            )
            m.content = to_content("unmask", bad)

    return tamper


def test_a_node_refuses_a_request_for_both_shares(pima_sites):
    fed, transport = _federation(pima_sites, before=_ask_for_both_shares({"site-0"}))
    record = fed.step(1)  # the three honest requests still give enough shares
    assert record.nodes == SITES
    assert record.failures["site-0"].startswith("SecAggAbort: client 'site-0' refuses")
    assert "both as survivors and as dropped" in record.failures["site-0"]
    secagg = [r for r in transport.received if r.envelope.stage == "secagg"]
    refusal = [r for r in secagg if r.envelope.sender == "site-0"][-1]
    assert refusal.content.error is not None and not refusal.content.arrays


def test_when_every_node_refuses_the_round_fails(pima_sites):
    fed, _ = _federation(pima_sites, before=_ask_for_both_shares(set(SITES)))
    with pytest.raises(SecAggAbort, match=r"cannot reconstruct.*consistency check failed"):
        fed.step(1)


def test_a_node_masks_only_one_update_per_round(pima_sites):
    fed, _ = _federation(pima_sites)
    fed.step(1)
    with pytest.raises(SecAggAbort, match="already sent a masked update for round 1"):
        fed.step(1)  # a hub re-running a round it already unmasked (with fresh keys)


def test_node_refuses_steps_out_of_place(pima_sites):
    node = NodeRuntime("site-0", pima_sites["site-0"])

    def send(step):
        env = Envelope(study_id="s", round=1, stage="secagg", sender="hub", recipient="site-0")
        cfg = ConfigRecord({"secagg.stage": step})
        return node.handle(Message(env, Content(config=cfg))).content.error

    err = send("share_keys")
    assert err.kind == "ProtocolError" and "no secure-aggregation epoch in progress" in err.message
    err = send("finish")
    assert err.kind == "ProtocolError"
    assert "does not run stage 'secagg' step 'finish'" in err.message


def test_a_replayed_step_is_refused_and_the_round_goes_on(pima_sites):
    refusals = []

    def replay(step, messages):
        if step == "masked_input":  # send site-0 its share_keys request again, with a new id
            old = next(
                m
                for m in transport.sent
                if m.content.config.get("secagg.stage") == "share_keys"
                and m.envelope.recipient == "site-0"
            )
            again = Message(old.envelope.model_copy(update={"message_id": "f" * 32}), old.content)
            refusals.extend(InMemoryTransport.send_and_receive(transport, [again]))

    fed, transport = _federation(pima_sites, before=replay)
    assert fed.step(1).nodes == SITES
    (refusal,) = refusals
    assert refusal.content.error.kind == "ProtocolError"
    assert "stage SHARE_KEYS refused, it expects MASKED_INPUT now" in refusal.content.error.message


# -- clipping stays local ---------------------------------------------------------------------


def test_clipping_is_counted_in_the_node_log_only(pima_sites, caplog):
    plain_weights, _ = _plain_updates(pima_sites)
    fed, transport = _federation(pima_sites, clip=0.5)
    with caplog.at_level(logging.WARNING, logger="cordiale.learn.secure_aggregation"):
        record = fed.step(1)
    assert record.nodes == SITES
    assert "clipped" in caplog.text and "(local information, not sent)" in caplog.text
    for reply in transport.received:
        if reply.envelope.stage == "secagg":
            assert not any("clip" in k for k in reply.content.config)
            assert not len(reply.content.metrics)
    assert not fed.weights.equals(plain_weights, atol=1e-4)  # clipping changed the result
    # the default bound is never reached on this study: no clipping, the plain result
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cordiale.learn.secure_aggregation"):
        fed, _ = _federation(pima_sites)
        fed.step(1)
    assert "clipped" not in caplog.text
    _assert_same_weights(fed.weights, plain_weights)


# -- settings and wire ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "text"),
    [
        ({"threshold": 1}, "threshold must be an integer >= 2"),
        ({"degree": 0}, "neighbours must be an integer >= 1"),
        ({"clip": -1.0}, "clip must be a finite positive number"),
        ({"frac_bits": 60}, "frac_bits must be an integer in 0..52"),
        ({"spare_holders": -1}, "spare_holders must be an integer >= 0"),
        ({"rekey_every": 101}, r"rekey_every must be an integer in 1\.\.100"),
        ({"clip": 1e12, "frac_bits": 40}, "does not fit a 64-bit ring"),
    ],
)
def test_invalid_settings_are_refused_with_a_reason(kw, text):
    with pytest.raises(ConfigError, match=text):
        SecureAggregationConfig(**kw)


def test_a_threshold_above_the_neighbourhood_is_a_config_error(pima_sites):
    fed, _ = _federation(pima_sites, threshold=5)
    with pytest.raises(ConfigError, match=r"secure aggregation over 4 sites.*2\.\.4"):
        fed.step(1)


def test_secagg_plus_neighbourhoods(pima_sites):
    plain_weights, _ = _plain_updates(pima_sites)
    fed, _ = _federation(pima_sites, degree=2)
    assert fed.step(1).nodes == SITES
    _assert_same_weights(fed.weights, plain_weights)


def test_protocol_messages_round_trip_through_content():
    messages = {
        "advertise_keys": KeyAdvertisement(
            round_id=3, sender="a", enc_public_key=b"\x01" * 32, mask_public_key=b"\x02" * 32
        ),
        "share_keys": ShareKeysResponse(**PACKAGE),
        "masked_input": MaskedInputResponse(
            round_id=3, sender="a", masked=np.arange(5, dtype=np.uint64)
        ),
        "unmask": UnmaskResponse(
            round_id=3,
            sender="a",
            self_mask_owners=("a", "b"),
            self_mask_shares=(b"123", b"4"),
            seed_owners=("c",),
            seed_shares=(b"56",),
        ),
    }
    messages["masked_input request"] = MaskedInputRequest(
        round_id=3,
        receiver="a",
        neighbours=("b",),
        senders=("b", "c"),
        receivers=("a", "a"),
        ciphertexts=(b"xyz", b""),
    )
    messages["unmask request"] = UnmaskRequest(
        round_id=3, receiver="a", survivors=("a", "b"), dropped=("c",)
    )
    for key, msg in messages.items():
        step = key.removesuffix(" request")
        content = to_content(step, msg)
        assert step_of(content) == step
        back = from_content(type(msg), content)
        for name in msg.__dataclass_fields__:
            a, b = getattr(msg, name), getattr(back, name)
            assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b


PACKAGE = {
    "round_id": 3,
    "sender": "a",
    "receivers": ("b", "c"),
    "ciphertexts": (b"xy", b""),
    "self_mask_commitments": b"\x00" * 64,
    "seed_commitments": (b"\x01" * 64, b"\x02" * 64),
    "sealed_seeds": (b"sealed", b"sealed too"),
}


def _share_keys_content():
    package = {**PACKAGE, "receivers": ("b",), "ciphertexts": (b"abc",)}
    package["seed_commitments"] = (b"\x01" * 64,)
    return to_content("share_keys", ShareKeysResponse(**package))


def _drop_field(c):
    del c.config["secagg.msg.sender"]


def _bad_lengths(c):
    c.config["secagg.msg.ciphertexts.lengths"] = [2]


def _negative_length(c):
    c.config["secagg.msg.ciphertexts.lengths"] = [-1, 4]


def _wrong_dtype(c):
    c.arrays["secagg"]["ciphertexts"] = np.zeros(3, np.int32)


def _extra_array(c):
    c.arrays["secagg"]["extra"] = np.zeros(1, np.uint8)


def _wrong_type(c):
    c.config["secagg.msg.receivers"] = [1]


def _negative_round(c):
    c.config["secagg.msg.round_id"] = -1


@pytest.mark.parametrize(
    ("corrupt", "text"),
    [
        (_drop_field, "missing field 'sender'"),
        (_bad_lengths, "lengths add up to 2 bytes, the array has 3"),
        (_negative_length, "non-negative integers"),
        (_wrong_dtype, "expected a 1-D uint8 array"),
        (_extra_array, "must be exactly"),
        (_wrong_type, "sequence of str"),
        (_negative_round, "non-negative integer"),
    ],
)
def test_malformed_protocol_content_is_a_wire_error(corrupt, text):
    content = _share_keys_content()
    corrupt(content)
    with pytest.raises(WireError, match=text):
        from_content(ShareKeysResponse, content)


def test_a_malformed_first_step_is_refused_by_the_node(pima_sites):
    node = NodeRuntime("site-0", pima_sites["site-0"])
    content = to_content("advertise_keys", AdvertiseKeysRequest(round_id=1, receiver="site-0"))
    env = Envelope(study_id="s", round=1, stage="secagg", sender="hub", recipient="site-0")
    err = node.handle(Message(env, content)).content.error
    assert err.kind == "ProtocolError" and "'secagg.config.client_ids' is missing" in err.message
    with pytest.raises(ProtocolError, match="does not run stage 'secagg'"):
        step_of(Content())


# -- key epochs across rounds -----------------------------------------------------------------


def _steps_by_round(transport):
    """The secagg steps the hub sent in each round, in order of first appearance."""
    steps: dict[int, list[str]] = {}
    for m in transport.sent:
        if m.envelope.stage == "secagg":
            step = m.content.config["secagg.stage"]
            if step not in steps.setdefault(m.envelope.round, []):
                steps[m.envelope.round].append(step)
    return steps


def test_keys_are_agreed_once_per_epoch(pima_sites):
    fed, transport = _federation(pima_sites, rounds=5, rekey_every=3)
    records = [fed.step(r) for r in range(1, 6)]
    setup = ["advertise_keys", "share_keys", "masked_input", "unmask"]
    steady = ["masked_input", "unmask"]
    assert _steps_by_round(transport) == {1: setup, 2: steady, 3: steady, 4: setup, 5: steady}
    assert all(r.nodes == SITES and not r.failures for r in records)
    # the same five rounds in plain: the epochs change nothing in the result
    plain, _ = _federation(pima_sites, rounds=5, secure=False)
    for r in range(1, 6):
        plain.step(r)
    _assert_same_weights(fed.weights, plain.weights)


def test_an_epoch_sets_up_its_rounds_once_and_ends_with_the_study(pima_sites):
    fed, transport = _federation(pima_sites, rounds=5, rekey_every=3)
    for r in range(1, 6):
        fed.step(r)
    sent = [m for m in transport.sent if m.envelope.stage == "secagg"]
    # each epoch covers rekey_every rounds, or those left in the study
    epochs = {
        m.envelope.round: m.content.config["secagg.config.rounds"]
        for m in sent
        if m.content.config["secagg.stage"] == "advertise_keys"
    }
    assert epochs == {1: 3, 4: 2}
    # the share ciphertexts travel once an epoch, with each node's first masked-input request
    relayed = {
        m.envelope.round: len(m.content.config["secagg.msg.senders"])
        for m in sent
        if m.content.config["secagg.stage"] == "masked_input"
    }
    assert relayed == {1: 3, 2: 0, 3: 0, 4: 3, 5: 0}


def test_fresh_keys_every_round_when_asked(pima_sites):
    fed, transport = _federation(pima_sites, rounds=2, rekey_every=1)
    fed.step(1), fed.step(2)
    assert [s[0] for s in _steps_by_round(transport).values()] == ["advertise_keys"] * 2


def test_a_site_that_missed_a_round_gets_fresh_keys_to_rejoin(pima_sites):
    def lose(step, messages):
        if step == "masked_input" and messages[0].envelope.round == 2:
            transport.disconnect("site-2")
        if step == "advertise_keys" and messages[0].envelope.round == 4:
            transport.reconnect("site-2")

    fed, transport = _federation(pima_sites, rounds=5, before=lose)
    fed.step(1)
    lost = fed.step(2)
    assert lost.nodes == ["site-0", "site-1", "site-3"]
    assert lost.failures == {"site-2": "no reply before the round timeout"}
    # site-2 holds no share package for round 3: the hub agrees on fresh keys (site-2 is
    # still silent), and again in round 4, where site-2 is back
    assert fed.step(3).nodes == ["site-0", "site-1", "site-3"]
    assert fed.step(4).nodes == SITES and fed.step(5).nodes == SITES
    steps = _steps_by_round(transport)
    assert [steps[r][0] for r in range(1, 6)] == [
        "advertise_keys",
        "masked_input",
        "advertise_keys",
        "advertise_keys",
        "masked_input",
    ]


def test_a_silent_survivor_is_recovered_from_shares(pima_sites):
    """site-1 sends its masked input and then goes silent while site-2 was lost: the others'
    shares give site-1's self mask and site-2's seal key, hence its round seeds."""

    def lose(step, messages):
        if step == "masked_input":
            transport.disconnect("site-2")
        if step == "unmask":
            transport.disconnect("site-1")

    fed, transport = _federation(pima_sites, before=lose, threshold=2)
    record = fed.step(1)
    assert record.nodes == ["site-0", "site-1", "site-3"]
    assert _steps_by_round(transport)[1][-1] == "unmask"
    plain_weights, _ = _plain_updates(pima_sites, lost=("site-2",))
    _assert_same_weights(fed.weights, plain_weights)


def test_the_hub_asks_enough_sites_to_unmask_and_others_if_one_is_silent(pima_sites):
    """With no spare share (spare_holders=0) the hub asks t = 2 of the 4 sites to unmask; one
    of them is silent, so it asks the two others in a second unmask exchange of the round."""
    asked: list[list[str]] = []

    def lose(step, messages):
        if step == "unmask":
            asked.append(sorted(m.envelope.recipient for m in messages))
            if len(asked) == 1:
                transport.disconnect(asked[0][-1])

    fed, transport = _federation(pima_sites, before=lose, threshold=2, spare_holders=0)
    record = fed.step(1)
    assert len(asked) == 2 and len(asked[0]) == 2
    assert set(asked[1]) == set(SITES) - set(asked[0])  # only those not asked yet
    assert record.nodes == SITES  # the silent one sent its masked input: its update counts
    plain_weights, _ = _plain_updates(pima_sites)
    _assert_same_weights(fed.weights, plain_weights)


def test_a_node_that_lost_its_epoch_is_rekeyed_next_round(pima_sites):
    nodes = {s: NodeRuntime(s, d) for s, d in pima_sites.items()}

    def restart(step, messages):
        if step == "masked_input" and messages[0].envelope.round == 2:
            nodes["site-1"].state.secagg.clear()  # a node restarted: its epoch keys are gone

    handlers = {s: n.handle_bytes for s, n in nodes.items()}
    fed, transport = _federation(pima_sites, rounds=3, before=restart, handlers=handlers)
    fed.step(1)
    second = fed.step(2)
    assert second.nodes == ["site-0", "site-2", "site-3"]
    assert "no secure-aggregation epoch in progress" in second.failures["site-1"]
    third = fed.step(3)
    assert third.nodes == SITES and not third.failures
    assert _steps_by_round(transport)[3][0] == "advertise_keys"


def test_protocol_steps_need_no_task_context_at_a_restarted_node(pima_sites):
    """A real site resolves its dataset from the task's ``data.dataset`` (nothing cached after
    a restart): the key set-up and unmasking steps carry no task and touch no data, so a node
    restarted mid-study still joins the next epoch."""

    def resolver(data):
        def resolve(_study, config):
            if config.get_str("data.dataset", "") != "pima":
                raise ConfigError("this site has no dataset named ''")
            return data

        return resolve

    nodes = {s: NodeRuntime(s, resolver(d)) for s, d in pima_sites.items()}

    def restart(step, messages):
        if step == "masked_input" and messages[0].envelope.round == 2:
            nodes["site-1"] = NodeRuntime("site-1", resolver(pima_sites["site-1"]))

    handlers = {s: (lambda data, s=s: nodes[s].handle_bytes(data)) for s in nodes}
    fed, _ = _federation(
        pima_sites,
        rounds=3,
        before=restart,
        handlers=handlers,
        task_context={"data.dataset": "pima"},
    )
    assert fed.step(1).nodes == SITES
    assert "site-1" in fed.step(2).failures
    assert fed.step(3).nodes == SITES
