"""What an honest client refuses, what the server refuses, and what the server learns.

The :class:`~secagg_harness.Epoch` harness runs an honest epoch up to any stage of any round so
that each test can tamper with one request or reply (playing a malicious server or client) and
check the refusal.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import EPOCH, Epoch, draw_counts, drop_schedule, refuse

from cordiale.core.errors import CryptoError, ProtocolError, SecAggAbort, WireError
from cordiale.crypto import (
    FixedPointCodec,
    KeyAdvertisement,
    KeyPair,
    MaskedInputRequest,
    MaskedInputResponse,
    RecoverRequest,
    RecoverResponse,
    SecAggServer,
    Share,
    ShareKeysRequest,
    ShareKeysResponse,
    SharePackage,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    _protocol,
    expand_mask,
    primitives,
    secagg_client,
)

# -- what the server sees ------------------------------------------------------------------


# Each uniformity check below runs on fresh key material, so a false alarm at level ALPHA happens
# on a truly uniform stream with probability ALPHA per check. A missing or structured mask gives
# p-values below 1e-20 at these sample sizes, so a tiny ALPHA costs no power and keeps the suite
# from failing by chance.
ALPHA = 1e-7


def chi_square_p(counts: np.ndarray) -> float:
    """Upper-tail p-value of Pearson's chi-square test against the uniform distribution."""
    expected = counts.sum() / counts.size
    statistic = float(((counts - expected) ** 2 / expected).sum())
    dof = counts.size - 1
    try:
        from scipy.stats import chi2
    except ImportError:  # Wilson-Hilferty normal approximation, accurate for dof >= 15
        z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
        return 0.5 * math.erfc(z / math.sqrt(2))
    return float(chi2.sf(statistic, dof))


@pytest.mark.parametrize("bits", [32, 64])
def test_masked_input_is_uniform_and_hides_the_encoding(bits):
    length = 2**15
    rnd = Epoch(n=3, t=2, length=length, bits=bits).until(Stage.MASKED_INPUT)
    codec = FixedPointCodec(clip=1.0, frac_bits=16, bits=bits)
    plain = codec.encode(np.full(length, 0.5))  # one constant word: maximally non-uniform
    rnd.vectors = {c: plain for c in rnd.ids}
    rnd.step()
    for reply in rnd.replies:
        masked = reply.masked
        assert np.mean(masked == plain) < 1e-3
        byte_counts = np.bincount(masked.view(np.uint8), minlength=256)
        top_nibbles = np.bincount(
            (masked >> np.array(bits - 4, dtype=masked.dtype)).astype(int), minlength=16
        )
        assert chi_square_p(byte_counts) > ALPHA
        assert chi_square_p(top_nibbles) > ALPHA


def test_prg_output_is_uniform():
    words = expand_mask(bytes(range(32)), 2**16)
    assert chi_square_p(np.bincount(words.view(np.uint8), minlength=256)) > ALPHA
    assert chi_square_p(np.bincount((words >> np.uint32(28)).astype(int), minlength=16)) > ALPHA


def ciphertexts(rnd: Epoch, shares_round: int) -> dict[tuple[str, str], bytes]:
    """(sender, receiver) -> ciphertext of the share packages the server got for a round."""
    return {
        (p.sender, receiver): ct
        for p in rnd.received
        if isinstance(p, SharePackage) and p.shares_round == shares_round
        for receiver, ct in zip(p.receivers, p.ciphertexts, strict=True)
    }


def test_server_only_relays_ciphertexts_unchanged():
    rnd = Epoch()
    for round_id in (EPOCH, EPOCH + 1):  # packages from stage 1, then from stage 2
        rnd.until(Stage.MASKED_INPUT, round_id)
        sent = ciphertexts(rnd, round_id)
        relayed = {
            (sender, receiver): ct
            for receiver, request in rnd.requests.items()
            for sender, ct in zip(request.senders, request.ciphertexts, strict=True)
        }
        assert relayed == sent and len(sent) == 5 * 4
    assert not set(ciphertexts(rnd, EPOCH).values()) & set(ciphertexts(rnd, EPOCH + 1).values())


# -- epochs: keys agreed once, secrets revealed for one round only -------------------------


def test_keys_are_agreed_once_per_epoch(monkeypatch):
    agreed: Counter[bytes] = Counter()
    generated: list[KeyPair] = []
    real_agree, real_generate = _protocol.agree, secagg_client.generate_keypair

    def counting_agree(own: KeyPair, peer_public: bytes, info: bytes) -> bytes:
        agreed[own.public] += 1
        return real_agree(own, peer_public, info)

    def counting_generate() -> KeyPair:
        generated.append(real_generate())
        return generated[-1]

    monkeypatch.setattr(_protocol, "agree", counting_agree)
    monkeypatch.setattr(secagg_client, "generate_keypair", counting_generate)
    rnd = Epoch(n=8, t=3, degree=4).until(Stage.MASKED_INPUT)
    adverts = [a for a in rnd.received if isinstance(a, KeyAdvertisement)]
    assert len(generated) == 2 * 8 and len(adverts) == 8
    for a in adverts:  # one agreement per key pair and neighbour: channel key and pair key
        degree = len(rnd.config.neighbours(a.sender))
        assert agreed[a.enc_public_key] == agreed[a.mask_public_key] == degree
    set_up = sum(agreed.values())
    assert set_up == 2 * sum(len(rnd.config.neighbours(c)) for c in rnd.ids)
    drops = [{}, {Stage.MASKED_INPUT: {"c1"}}, {Stage.UNMASK: {"c2"}}, {}]
    for schedule in drops:
        result = rnd.run_round(schedule)
        assert np.array_equal(result.total, rnd.plain_sum(result))
    assert sum(agreed.values()) == set_up and len(generated) == 2 * 8


def test_a_revealed_round_seed_is_bound_to_its_round(monkeypatch):
    calls: dict[bytes, tuple[KeyPair, bytes]] = {}
    real_agree = _protocol.agree

    def recording_agree(own: KeyPair, peer_public: bytes, info: bytes) -> bytes:
        calls[info] = (own, peer_public)
        return real_agree(own, peer_public, info)

    monkeypatch.setattr(_protocol, "agree", recording_agree)
    rnd = Epoch()
    rnd.run_round({Stage.MASKED_INPUT: {"c4"}})  # round 7: c0..c3 reveal their seeds with c4
    rnd.run_round({Stage.MASKED_INPUT: {"c3"}})  # round 8: c0..c2 reveal their seeds with c3
    revealed = {
        (r.round_id, r.sender, v): seed
        for r in rnd.received
        if isinstance(r, UnmaskResponse)
        for v, seed in zip(r.seed_peers, r.pair_seeds, strict=True)
    }
    expected = {(EPOCH, c, "c4") for c in ("c0", "c1", "c2", "c3")}
    assert set(revealed) == expected | {(EPOCH + 1, c, "c3") for c in ("c0", "c1", "c2")}
    assert len(set(revealed.values())) == len(revealed)
    packages = {(p.sender, p.shares_round): p for p in rnd.received if isinstance(p, SharePackage)}
    for (round_id, u, v), seed in revealed.items():
        pair = sorted((u, v))
        own, peer = calls[_protocol.context("mask-key", EPOCH, *pair)]
        key = real_agree(own, peer, _protocol.context("mask-key", EPOCH, *pair))
        old_style = real_agree(own, peer, _protocol.context("mask-seed", round_id, *pair))
        assert seed == _protocol.round_seed(key, round_id, u, v)
        assert seed not in {key, primitives.exchange(own, peer), old_style}
        for other in (round_id - 1, round_id, round_id + 1):
            if (u, other) not in packages:  # no round 6; c4 left the epoch in round 7
                continue
            package = packages[(u, other)]
            commitment = package.seed_commitments[package.receivers.index(v)]
            other_seed = _protocol.round_seed(key, other, u, v)
            assert commitment == _protocol.seed_commitment(other, u, v, other_seed)
            assert (other_seed == seed) == (other == round_id)
            assert (commitment == _protocol.seed_commitment(other, u, v, seed)) == (
                other == round_id
            )


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_the_server_never_holds_both_secrets_of_a_node_in_a_round(data):
    n = data.draw(st.integers(5, 8), label="n")
    t = data.draw(st.integers(2, n - 2), label="t")
    rnd = Epoch(n=n, t=t, length=4).until(Stage.MASKED_INPUT)
    stages = [Stage.MASKED_INPUT, Stage.UNMASK, Stage.RECOVER]
    for least in ([1, 1], []):  # the first round has dropouts at stages 2 and 3 at least
        members = sorted(rnd.requests)
        order = data.draw(st.permutations(members))
        counts = draw_counts(data, len(stages), len(members) - t, least)
        drops = drop_schedule(list(order), counts, stages)
        result = rnd.run_round(drops)
        survivors = set(members) - drops[Stage.MASKED_INPUT]
        assert set(result.survivors) == survivors
        assert np.array_equal(result.total, rnd.plain_sum(result))
        selves, sealed, pairs = rnd.revealed(result.round_id)
        assert selves == survivors  # the self mask of every survivor and of no dropped node
        assert not sealed & selves  # round seeds only of nodes whose self mask stays hidden
        assert all(not pair <= selves for pair in pairs)  # no mask between two survivors


# -- the honest client's refusals ----------------------------------------------------------


def test_asking_for_both_secrets_of_one_node_is_refused():
    rnd = Epoch().until(Stage.UNMASK)
    both = replace(rnd.requests["c0"], dropped=("c1",))
    assert "c1" in both.survivors
    refuse(
        rnd,
        "c0",
        both,
        r"consistency check failed: the server lists \['c1'\] both as survivors and as dropped",
    )


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        (("c1", "c2", "c3", "c4"), ("c0",), "does not list this client"),
        (("c0", "c1", "c2"), ("c3",), r"unaccounted for: \['c4'\]"),
        (("c0", "c1", "c2", "c3", "c4", "ghost"), (), r"unknown: \['ghost'\]"),
        (("c0", "c1"), ("c2", "c3", "c4"), "only 2 survivors in its neighbourhood, threshold is 3"),
        (("c0", "c1", "c1", "c2"), ("c3", "c4"), "names a client twice"),
    ],
)
def test_inconsistent_unmask_requests_are_refused(survivors, dropped, match):
    rnd = Epoch().until(Stage.UNMASK)
    refuse(rnd, "c0", replace(rnd.requests["c0"], survivors=survivors, dropped=dropped), match)


def test_a_dropped_neighbour_never_masked_with_is_not_asked_about():
    # c1 dropped before sharing keys: c0 never masked with it, so naming it fails.
    rnd = Epoch().until(Stage.SHARE_KEYS)
    rnd.step(skip={"c1"})
    rnd.step()
    request = rnd.requests["c0"]
    assert "c1" not in request.survivors + request.dropped
    refuse(rnd, "c0", replace(request, dropped=("c1",)), r"unknown: \['c1'\]")


def dropout_round(rnd: Epoch, dropped: set[str], silent: set[str]) -> Epoch:
    """Run to stage 4 of the round in progress: ``dropped`` drop at stage 2, ``silent`` at 3."""
    rnd.until(Stage.MASKED_INPUT).step(skip=dropped)
    rnd.step(skip=silent)
    return rnd


def test_replayed_unmask_request_cannot_extract_the_other_secret():
    rnd = Epoch().until(Stage.UNMASK)
    honest = rnd.requests["c0"]
    rnd.answer("c0", honest)
    survivors = tuple(c for c in honest.survivors if c != "c1")
    with pytest.raises(ProtocolError, match="stage UNMASK refused, it expects RECOVER"):
        rnd.answer("c0", replace(honest, survivors=survivors, dropped=("c1",)))


@pytest.mark.parametrize("stage", list(Stage))
def test_a_replayed_stage_is_refused(stage):
    rnd = Epoch()
    while rnd.stage < stage:  # c4 is silent at stage 3, so that stage 4 runs
        rnd.step(skip={"c4"} if rnd.stage is Stage.UNMASK else ())
    request = rnd.requests["c0"]
    rnd.step(skip={"c4"} if stage is Stage.UNMASK else ())
    with pytest.raises(ProtocolError, match=f"stage {stage.name} .*replayed or out-of-order"):
        rnd.answer("c0", request)
    assert not rnd.clients["c0"].aborted


def test_a_round_is_masked_once_and_only_with_its_package():
    rnd = Epoch().until(Stage.MASKED_INPUT)
    request, client = rnd.requests["c0"], rnd.clients["c0"]
    assert client.next_round == EPOCH
    reply = rnd.answer("c0", request)
    assert client.next_round == EPOCH + 1 and reply.shares_round == EPOCH + 1
    with pytest.raises(ProtocolError, match="MASKED_INPUT for round 7, expected round 8"):
        rnd.answer("c0", request)
    with pytest.raises(ProtocolError, match="for round 12, expected round 8"):
        rnd.answer("c0", replace(request, round_id=EPOCH + 5, next_round=EPOCH + 6))
    assert not client.aborted
    rnd.advance([reply, *rnd.replies_to(skip={"c0"})])
    rnd.until(Stage.MASKED_INPUT, EPOCH + 1)
    with pytest.raises(ProtocolError, match="MASKED_INPUT for round 7, expected round 8"):
        rnd.answer("c0", request)
    refuse(
        rnd,
        "c0",
        replace(rnd.requests["c0"], next_round=EPOCH + 1),
        "the next round 8 does not follow round 8",
    )


def test_who_holds_a_package_for_the_next_round():
    rnd = dropout_round(Epoch(), dropped={"c4"}, silent={"c3"})
    rnd.step()  # aggregate round 7; round 8 starts over the clients that sent a package
    assert set(rnd.requests) == {"c0", "c1", "c2", "c3"}  # c3 was silent at stage 3 only
    assert rnd.clients["c3"].next_round == EPOCH + 1
    assert rnd.clients["c4"].next_round == EPOCH  # it never masked round 7
    assert rnd.server.ready(EPOCH + 1) == frozenset()  # round 8 is in progress
    result = rnd.run_round()
    assert result.survivors == ("c0", "c1", "c2", "c3")
    assert np.array_equal(result.total, rnd.plain_sum(result))


def test_a_stage_out_of_order_is_refused():
    rnd = Epoch().until(Stage.MASKED_INPUT)
    fresh = Epoch()
    with pytest.raises(ProtocolError, match="MASKED_INPUT refused, it expects ADVERTISE_KEYS now"):
        fresh.answer("c0", rnd.requests["c0"])
    assert fresh.clients["c0"].aborted is False  # a misrouted message does not abort
    rnd.answer("c0", rnd.requests["c0"])
    early = RecoverRequest(round_id=EPOCH, receiver="c0", self_mask_owners=("c1",), seed_owners=())
    with pytest.raises(ProtocolError, match="RECOVER refused, it expects UNMASK or MASKED_INPUT"):
        rnd.answer("c0", early)
    assert rnd.clients["c0"].expects == (Stage.UNMASK, Stage.MASKED_INPUT)


def test_wrong_round_and_wrong_receiver_are_refused():
    rnd = Epoch()
    with pytest.raises(ProtocolError, match="for round 8, expected round 7"):
        rnd.answer("c0", replace(rnd.requests["c0"], round_id=EPOCH + 1))
    with pytest.raises(ProtocolError, match="request for 'c1' delivered to client 'c0'"):
        rnd.answer("c0", rnd.requests["c1"])
    assert not rnd.clients["c0"].aborted


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (
            lambda r: replace(r, self_mask_owners=("c4",)),
            r"consistency check failed: .* self-mask shares of \['c4'\], which it did not list "
            "as other survivors",
        ),
        (lambda r: replace(r, self_mask_owners=("c0",)), r"self-mask shares of \['c0'\]"),
        (
            lambda r: replace(r, seed_owners=("c3",)),
            r"consistency check failed: .* seed shares of \['c3'\], which it did not list as "
            "dropped",
        ),
        (lambda r: replace(r, seed_owners=("c1", "c4")), r"seed shares of \['c1'\]"),
        (lambda r: replace(r, seed_owners=("c0",)), r"seed shares of \['c0'\]"),
        (lambda r: replace(r, self_mask_owners=("c3", "c3")), "names self-mask owners twice"),
    ],
    ids=[
        "dropped-self-mask",
        "own-self-mask",
        "survivor-seeds",
        "answered-seeds",
        "own-seeds",
        "twice",
    ],
)
def test_recovery_requests_are_checked_against_the_unmask_request(tamper, match):
    rnd = dropout_round(Epoch(), dropped={"c4"}, silent={"c3"})
    honest = rnd.requests["c0"]
    assert (honest.self_mask_owners, honest.seed_owners) == (("c3",), ("c4",))
    refuse(rnd, "c0", tamper(honest), match)
    reply = rnd.answer("c1", rnd.requests["c1"])  # the others answer, once
    assert reply.self_mask_owners == ("c3",) and len(reply.self_mask_shares) == 1
    with pytest.raises(ProtocolError, match="stage RECOVER refused"):
        rnd.answer("c1", rnd.requests["c1"])


def key_list(request: ShareKeysRequest) -> list[list]:
    return [list(request.client_ids), list(request.enc_public_keys), list(request.mask_public_keys)]


def with_keys(request: ShareKeysRequest, ids: list, enc: list, mask: list) -> ShareKeysRequest:
    return replace(
        request, client_ids=tuple(ids), enc_public_keys=tuple(enc), mask_public_keys=tuple(mask)
    )


def test_duplicate_public_keys_are_refused():
    rnd = Epoch().until(Stage.SHARE_KEYS)
    ids, enc, mask = key_list(rnd.requests["c0"])
    enc[ids.index("c2")] = enc[ids.index("c1")]
    refuse(rnd, "c0", with_keys(rnd.requests["c0"], ids, enc, mask), "public keys must be unique")
    ids, enc, mask = key_list(rnd.requests["c3"])
    mask[ids.index("c4")] = enc[ids.index("c3")]  # a neighbour "reusing" c3's own key
    refuse(rnd, "c3", with_keys(rnd.requests["c3"], ids, enc, mask), "must be unique")


def test_own_keys_must_be_echoed():
    rnd = Epoch().until(Stage.SHARE_KEYS)
    ids, enc, mask = key_list(rnd.requests["c0"])
    mask[ids.index("c0")] = mask[ids.index("c1")]
    refuse(rnd, "c0", with_keys(rnd.requests["c0"], ids, enc, mask), "did not echo")
    ids, enc, mask = key_list(rnd.requests["c1"])
    i = ids.index("c1")
    refuse(
        rnd,
        "c1",
        with_keys(
            rnd.requests["c1"],
            ids[:i] + ids[i + 1 :],
            enc[:i] + enc[i + 1 :],
            mask[:i] + mask[i + 1 :],
        ),
        "did not echo",
    )


def test_key_list_must_name_neighbours_once_and_enough_of_them():
    rnd = Epoch(n=8, t=2, degree=2).until(Stage.SHARE_KEYS)
    ids, enc, mask = key_list(rnd.requests["c0"])
    outsider = next(c for c in rnd.ids if c not in ids)
    refuse(
        rnd,
        "c0",
        with_keys(
            rnd.requests["c0"], [*ids, outsider], [*enc, b"\x09" * 32], [*mask, b"\x0a" * 32]
        ),
        rf"\['{outsider}'\], not neighbours",
    )
    ids, enc, mask = key_list(rnd.requests["c1"])
    refuse(
        rnd,
        "c1",
        with_keys(rnd.requests["c1"], ids + ids[:1], enc + enc[:1], mask + mask[:1]),
        "more than once",
    )
    rnd = Epoch().until(Stage.SHARE_KEYS)
    ids, enc, mask = key_list(rnd.requests["c0"])
    keep = [ids.index("c0"), ids.index("c1")]
    refuse(
        rnd,
        "c0",
        with_keys(
            rnd.requests["c0"],
            [ids[i] for i in keep],
            [enc[i] for i in keep],
            [mask[i] for i in keep],
        ),
        "only 2 clients .* threshold is 3",
    )


def relay(request: MaskedInputRequest, entries: list[tuple[str, str, bytes]]) -> MaskedInputRequest:
    senders, receivers, cts = zip(*entries, strict=True) if entries else ((), (), ())
    return replace(request, senders=senders, receivers=receivers, ciphertexts=cts)


def entries_for(rnd: Epoch, receiver: str) -> list[tuple[str, str, bytes]]:
    request = rnd.requests[receiver]
    return list(zip(request.senders, request.receivers, request.ciphertexts, strict=True))


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (
            lambda e, cts: [("c1", "c2", cts[("c1", "c2")]), *e[1:]],
            r"from 'c1' addressed to 'c2' was routed to it",
        ),
        (lambda e, cts: [("c1", "c0", cts[("c1", "c2")]), *e[1:]], r"from 'c1' is invalid"),
        (lambda e, cts: [(e[1][0], "c0", e[0][2]), (e[0][0], "c0", e[1][2]), *e[2:]], "invalid"),
        (
            lambda e, cts: [(e[0][0], "c0", e[0][2][:-1] + bytes([e[0][2][-1] ^ 1])), *e[1:]],
            "authentication failed",
        ),
        (lambda e, cts: [*e, e[0]], "two ciphertexts come from"),
        (lambda e, cts: [("c0", "c0", e[0][2]), *e[1:]], "'c0', not a listed neighbour"),
        (lambda e, cts: e[:1], "only 2 clients of its neighbourhood shared keys, threshold is 3"),
    ],
    ids=[
        "wrong-receiver",
        "rewritten-receiver",
        "swapped-senders",
        "bad-tag",
        "duplicate",
        "from-self",
        "too-few",
    ],
)
def test_misrouted_or_forged_ciphertexts_are_refused(tamper, match):
    rnd = Epoch().until(Stage.MASKED_INPUT)
    request = relay(rnd.requests["c0"], tamper(entries_for(rnd, "c0"), ciphertexts(rnd, EPOCH)))
    refuse(rnd, "c0", request, match)


def test_a_ciphertext_of_an_earlier_round_is_refused():
    rnd = Epoch().until(Stage.MASKED_INPUT)
    earlier = rnd.requests["c0"]
    rnd.until(Stage.MASKED_INPUT, EPOCH + 1)
    request = replace(rnd.requests["c0"], ciphertexts=earlier.ciphertexts)
    assert request.senders == earlier.senders
    refuse(rnd, "c0", request, "from 'c1' is invalid: AES-GCM authentication failed")


def test_a_wrong_input_vector_does_not_consume_the_stage():
    rnd = Epoch().until(Stage.MASKED_INPUT)
    client = rnd.clients["c0"]
    with pytest.raises(CryptoError, match="16 words of uint32"):
        client.masked_input(rnd.requests["c0"], np.zeros(16, dtype=np.uint64))
    assert client.expects == (Stage.MASKED_INPUT,) and not client.aborted
    assert isinstance(rnd.answer("c0", rnd.requests["c0"]), MaskedInputResponse)


# -- the server's refusals -----------------------------------------------------------------

STEPS = {
    "advertise_keys": lambda s: s.advertise_keys(),
    "share_keys": lambda s: s.share_keys([]),
    "collect_shares": lambda s: s.collect_shares([]),
    "masked_input": lambda s: s.masked_input(EPOCH),
    "unmask": lambda s: s.unmask([]),
    "recover": lambda s: s.recover([]),
    "aggregate": lambda s: s.aggregate([]),
}
# The one step allowed in each phase an epoch goes through, and the harness stage reaching it.
PHASES = [
    ("advertise_keys", None),
    ("share_keys", Stage.ADVERTISE_KEYS),
    ("collect_shares", Stage.SHARE_KEYS),
    ("masked_input", Stage.SHARE_KEYS),  # after collect_shares
    ("unmask", Stage.MASKED_INPUT),
    ("recover", Stage.UNMASK),
    ("aggregate", Stage.RECOVER),
    ("masked_input", Stage.RECOVER),  # after aggregate: the next round
]


@pytest.mark.parametrize("phase", range(len(PHASES)))
def test_every_invalid_server_transition_raises(phase):
    allowed, stage = PHASES[phase]
    rnd = Epoch()
    if stage is None:
        rnd.server = SecAggServer(rnd.config)
    else:
        rnd.until(stage)
    if phase == 3:
        assert rnd.server.collect_shares(rnd.replies_to()) == rnd.server.ready(EPOCH)
    if phase == 7:
        rnd.server.aggregate(rnd.replies_to())
        assert rnd.server.ready(EPOCH + 1) == frozenset(rnd.ids)
    for name, call in STEPS.items():
        if name != allowed:
            with pytest.raises(
                ProtocolError,
                match=rf"step {name} refused \(already done or out of order\): the next step "
                rf"is {allowed}$",
            ):
                call(rnd.server)
    assert not rnd.server.aborted  # a refused transition leaves the epoch intact


def test_server_refuses_everything_after_an_abort():
    rnd = Epoch()
    with pytest.raises(SecAggAbort, match="only 2 clients advertised keys, threshold is 3"):
        rnd.step(skip={"c0", "c1", "c2"})  # only 2 of 5 advertise, t = 3
    assert rnd.server.aborted and rnd.server.ready(EPOCH) == frozenset()
    for call in STEPS.values():
        with pytest.raises(ProtocolError, match="aborted"):
            call(rnd.server)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"round_id": EPOCH + 1}, "round 8 cannot start: .* share packages are for round 7"),
        ({"round_id": EPOCH, "next_round": EPOCH}, "the next round 7 must follow round 7"),
        ({"round_id": EPOCH, "members": ["c0", "ghost"]}, r"\['ghost'\] hold no share package"),
    ],
)
def test_a_round_starts_only_over_clients_holding_its_packages(kwargs, match):
    rnd = Epoch().until(Stage.SHARE_KEYS)
    rnd.server.collect_shares(rnd.replies_to())
    with pytest.raises(ProtocolError, match=match):
        rnd.server.masked_input(**kwargs)
    assert rnd.server.aborted


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda rs: [*rs, rs[0]], "duplicate KeyAdvertisement from 'c0'"),
        (lambda rs: [replace(rs[0], sender="ghost"), *rs[1:]], "unexpected KeyAdvertisement"),
        (lambda rs: [replace(rs[0], round_id=EPOCH + 1), *rs[1:]], "for round 8, expected 7"),
        (lambda rs: [replace(rs[0], enc_public_key=b"short"), *rs[1:]], "not 32 bytes"),
        (lambda rs: ["not a message", *rs[1:]], "expected KeyAdvertisement, got str"),
    ],
)
def test_server_refuses_malformed_replies(tamper, match):
    rnd = Epoch()
    with pytest.raises(ProtocolError, match=match):
        rnd.server.share_keys(tamper(rnd.replies_to()))


def test_server_excludes_clients_that_share_a_public_key():
    rnd = Epoch()
    replies = rnd.replies_to()
    copycat = replace(replies[1], mask_public_key=replies[0].mask_public_key)
    requests = rnd.server.share_keys([replies[0], copycat, *replies[2:]])
    assert set(requests) == {"c2", "c3", "c4"}


def reversed_receivers(p: SharePackage) -> SharePackage:
    return replace(
        p,
        receivers=p.receivers[::-1],
        ciphertexts=p.ciphertexts[::-1],
        seed_commitments=p.seed_commitments[::-1],
    )


def fewer_receivers(p: SharePackage) -> SharePackage:
    return replace(
        p,
        receivers=p.receivers[:-1],
        ciphertexts=p.ciphertexts[:-1],
        seed_commitments=p.seed_commitments[:-1],
    )


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT])
@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda p: replace(p, shares_round=p.shares_round + 1), "share package for round"),
        (lambda p: replace(p, shares_round=p.shares_round - 1), "share package for round"),
        (fewer_receivers, "expected exactly"),
        (reversed_receivers, "expected exactly"),
        (lambda p: replace(p, self_mask_commitment=b"short"), "malformed commitment"),
    ],
    ids=["next-round", "earlier-round", "fewer-receivers", "reordered-receivers", "commitment"],
)
def test_server_refuses_a_malformed_share_package(stage, tamper, match):
    rnd = Epoch().until(stage)  # stage 1 replies carry round 7's package, stage 2 round 8's
    replies = rnd.replies_to()
    with pytest.raises(ProtocolError, match=f"'c0' sent .*{match}"):
        rnd.advance([tamper(replies[0]), *replies[1:]])
    assert rnd.server.aborted


def test_server_checks_masked_shapes():
    rnd = Epoch().until(Stage.MASKED_INPUT)
    replies = rnd.replies_to()
    wrong = replace(replies[0], masked=np.zeros(3, dtype=np.uint32))
    with pytest.raises(ProtocolError, match="shape"):
        rnd.server.unmask([wrong, *replies[1:]])


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT])
def test_mismatched_seed_commitments_abort_the_round(stage):
    rnd = Epoch().until(stage)  # tamper with the package for round 7 or for round 8
    replies = rnd.replies_to()
    package = replies[1]
    commitments = list(package.seed_commitments)
    commitments[package.receivers.index("c3")] = bytes(32)
    replies[1] = replace(package, seed_commitments=tuple(commitments))
    with pytest.raises(SecAggAbort, match="'c1' and 'c3' committed to different round seeds"):
        rnd.advance(replies)
        rnd.run_round()
    assert rnd.server.aborted
    assert len(rnd.results) == (stage is Stage.MASKED_INPUT)  # round 7 was not affected


def flip(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda rs: replace(rs[0], self_mask_seed=flip(rs[0].self_mask_seed)), "self-mask seed"),
        (lambda rs: replace(rs[0], self_mask_seed=rs[1].self_mask_seed), "self-mask seed"),
        (lambda rs: replace(rs[0], self_mask_seed=b"short"), "self-mask seed"),
        (lambda rs: replace(rs[0], pair_seeds=(flip(rs[0].pair_seeds[0]),)), "round seed"),
        (lambda rs: replace(rs[0], pair_seeds=rs[1].pair_seeds), "round seed"),
    ],
    ids=["flipped-self", "other-self", "short-self", "flipped-pair", "other-pair"],
)
def test_a_tampered_revealed_seed_does_not_match_its_commitment(tamper, match):
    rnd = Epoch().until(Stage.MASKED_INPUT)
    rnd.step(skip={"c4"})  # each survivor reveals its seed with c4
    replies = rnd.replies_to()
    with pytest.raises(SecAggAbort, match=f"the {match} of 'c0'.* does not match its commitment"):
        rnd.advance([tamper(replies), *replies[1:]])
    assert rnd.server.aborted


def corrupt(reply: RecoverResponse, field: str) -> RecoverResponse:
    shares = list(getattr(reply, field))
    share = Share.from_bytes(shares[0])
    shares[0] = Share(share.index, bytes(b ^ 0x5A for b in share.value)).to_bytes()
    return replace(reply, **{field: tuple(shares)})


@pytest.mark.parametrize(
    ("also_dropping", "match"),
    [
        (set(), "cannot reconstruct the self mask of 'c4': the shares are inconsistent"),
        ({"c3"}, "the self-mask seed of 'c4' does not match its commitment"),  # exactly t shares
    ],
)
def test_a_corrupted_self_mask_share_is_detected(also_dropping, match):
    rnd = dropout_round(Epoch(), dropped=set(), silent={"c4"})
    replies = rnd.replies_to(skip=also_dropping)
    with pytest.raises(SecAggAbort, match=match):
        rnd.advance([corrupt(replies[0], "self_mask_shares"), *replies[1:]])


@pytest.mark.parametrize(
    ("n", "match"),
    [
        (5, "the sealed round seeds of 'c4' do not open"),  # exactly t holders of c4's seal key
        (6, "cannot reconstruct the seal key of 'c5': the shares are inconsistent"),
    ],
)
def test_a_corrupted_seal_key_share_of_a_dropped_node_is_detected(n, match):
    last = f"c{n - 1}"
    rnd = dropout_round(Epoch(n=n), dropped={last}, silent={f"c{n - 2}"})
    replies = rnd.replies_to()
    assert replies[0].seed_owners == (last,)
    with pytest.raises(SecAggAbort, match=match):
        rnd.advance([corrupt(replies[0], "seed_shares"), *replies[1:]])


def test_sealed_seeds_that_do_not_open_abort_the_round():
    rnd = Epoch().until(Stage.SHARE_KEYS)
    replies = rnd.replies_to()
    replies[4] = replace(replies[4], sealed_seeds=flip(replies[4].sealed_seeds))
    rnd.advance(replies)
    dropout_round(rnd, dropped={"c4"}, silent={"c3"})
    with pytest.raises(SecAggAbort, match="the sealed round seeds of 'c4' do not open"):
        rnd.step()


def reindexed(share: bytes) -> bytes:
    """The encoded share with another Shamir index (1..5)."""
    return bytes([share[0] % 5 + 1]) + share[1:]


@pytest.mark.parametrize(
    ("stage", "tamper", "match"),
    [
        (Stage.UNMASK, lambda r: replace(r, seed_peers=("c2",)), "revealed seeds for other"),
        (Stage.RECOVER, lambda r: replace(r, self_mask_owners=("c2",)), "answered for other"),
        (Stage.RECOVER, lambda r: replace(r, seed_owners=(), seed_shares=()), "answered for"),
        (
            Stage.RECOVER,
            lambda r: replace(r, seed_shares=(reindexed(r.seed_shares[0]),)),
            "sent a share of 'c4' with a wrong index",
        ),
        (
            Stage.RECOVER,
            lambda r: replace(r, self_mask_shares=(b"\x01",)),
            "sent a malformed share of 'c3'",
        ),
    ],
    ids=["unmask-peers", "recover-owners", "recover-missing", "wrong-index", "malformed"],
)
def test_server_refuses_answers_about_other_nodes_and_wrong_shares(stage, tamper, match):
    rnd = Epoch().until(Stage.MASKED_INPUT)
    rnd.step(skip={"c4"})
    if stage is Stage.RECOVER:
        rnd.step(skip={"c3"})
    replies = rnd.replies_to(skip={"c3"})
    with pytest.raises(ProtocolError, match=f"'c0' {match}"):
        rnd.advance([tamper(replies[0]), *replies[1:]])


@pytest.mark.parametrize(
    ("degree", "drops", "match"),
    [
        (2, lambda nb: {Stage.MASKED_INPUT: set(nb)}, "'c0' has only 1 survivors in its"),
        (4, lambda nb: {Stage.UNMASK: {"c0", *nb[:2]}}, "self mask of 'c0' has only 2 share"),
        (
            4,
            lambda nb: {Stage.MASKED_INPUT: {"c0"}, Stage.UNMASK: set(nb[:3])},
            "seal key of 'c0' has only 1 share",
        ),
    ],
    ids=["survivors", "silent", "dropped"],
)
def test_server_aborts_early_when_a_needed_secret_lost_its_holders(degree, drops, match):
    rnd = Epoch(n=8, t=3, degree=degree).until(Stage.MASKED_INPUT)
    neighbours = sorted(rnd.config.neighbours("c0"))
    with pytest.raises(SecAggAbort, match=f"{match}.*threshold is 3"):
        rnd.run_round(drops(neighbours))
    assert not any(isinstance(r, RecoverResponse) for r in rnd.received)  # before stage 4


# -- messages ------------------------------------------------------------------------------

PACKAGE = {
    "shares_round": 2,
    "receivers": ("b",),
    "ciphertexts": (b"x",),
    "self_mask_commitment": b"c" * 32,
    "seed_commitments": (b"d" * 32,),
    "sealed_seeds": b"s",
}


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: ShareKeysRequest(
                round_id=1,
                receiver="a",
                client_ids=("a", "b"),
                enc_public_keys=(b"x",),
                mask_public_keys=(b"x", b"y"),
            ),
            "parallel fields differ",
        ),
        (
            lambda: ShareKeysResponse(round_id=1, sender="a", **{**PACKAGE, "ciphertexts": ()}),
            "parallel fields differ .*ciphertexts",
        ),
        (
            lambda: MaskedInputRequest(
                round_id=1, receiver="a", senders=("b",), receivers=(), ciphertexts=(), next_round=2
            ),
            "parallel fields differ .*senders",
        ),
        (
            lambda: UnmaskResponse(
                round_id=1, sender="a", self_mask_seed=b"", seed_peers=("b",), pair_seeds=()
            ),
            "parallel fields differ .*seed_peers",
        ),
        (
            lambda: RecoverResponse(
                round_id=1,
                sender="a",
                self_mask_owners=("b",),
                self_mask_shares=(),
                seed_owners=(),
                seed_shares=(),
            ),
            "parallel fields differ .*self_mask_owners",
        ),
        (
            lambda: RecoverResponse(
                round_id=1,
                sender="a",
                self_mask_owners=(),
                self_mask_shares=(),
                seed_owners=(),
                seed_shares=(b"x",),
            ),
            "parallel fields differ .*seed_owners",
        ),
        (
            lambda: KeyAdvertisement(
                round_id=-1, sender="a", enc_public_key=b"", mask_public_key=b""
            ),
            "round_id is a non-negative integer",
        ),
        (
            lambda: RecoverRequest(round_id=1, receiver="a", self_mask_owners=(), seed_owners=[2]),
            "seed_owners is a sequence of str",
        ),
        (
            lambda: UnmaskRequest(round_id=1, receiver="", survivors=(), dropped=()),
            "receiver is a non-empty string",
        ),
        (
            lambda: UnmaskRequest(round_id=1, receiver="a", survivors=(1,), dropped=()),
            "survivors is a sequence of str",
        ),
        (
            lambda: KeyAdvertisement(
                round_id=1, sender="a", enc_public_key="k", mask_public_key=b""
            ),
            "enc_public_key is bytes",
        ),
        (
            lambda: ShareKeysResponse(round_id=1, sender="a", **{**PACKAGE, "sealed_seeds": "s"}),
            "sealed_seeds is bytes",
        ),
        (
            lambda: MaskedInputResponse(round_id=1, sender="a", masked=np.zeros(3), **PACKAGE),
            "dtype uint32 or uint64",
        ),
        (
            lambda: MaskedInputResponse(
                round_id=1, sender="a", masked=np.zeros((2, 2), dtype=np.uint32), **PACKAGE
            ),
            "1-D",
        ),
    ],
)
def test_messages_validate_their_fields(build, match):
    with pytest.raises(WireError, match=match):
        build()


def test_messages_are_immutable_and_normalised():
    source = np.arange(4, dtype=np.uint32)
    message = MaskedInputResponse(round_id=np.int64(2), sender="a", masked=source, **PACKAGE)
    source[0] = 99
    assert message.masked[0] == 0 and not message.masked.flags.writeable
    assert type(message.round_id) is int
    request = UnmaskRequest(round_id=1, receiver="a", survivors=["a", "b"], dropped=[])
    assert request.survivors == ("a", "b") and request.dropped == ()
    package = ShareKeysResponse(
        round_id=1, sender="a", **{**PACKAGE, "receivers": ["b"], "sealed_seeds": bytearray(b"s")}
    )
    assert package.receivers == ("b",) and type(package.sealed_seeds) is bytes
    with pytest.raises(AttributeError):
        request.receiver = "b"
