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
from secagg_harness import (
    EPOCH,
    Epoch,
    draw_counts,
    drop_schedule,
    open_sealed_seeds,
    received_shares,
    refuse,
)

from cordiale.core.errors import CryptoError, ProtocolError, SecAggAbort, WireError
from cordiale.crypto import (
    AdvertiseKeysRequest,
    FixedPointCodec,
    KeyAdvertisement,
    KeyPair,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggServer,
    Share,
    ShareKeysRequest,
    ShareKeysResponse,
    SharePackage,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    _protocol,
    combine_shares,
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


def test_a_reconstructed_round_seed_is_bound_to_its_round(monkeypatch):
    calls: dict[bytes, tuple[KeyPair, bytes]] = {}
    real_agree = _protocol.agree

    def recording_agree(own: KeyPair, peer_public: bytes, info: bytes) -> bytes:
        calls[info] = (own, peer_public)
        return real_agree(own, peer_public, info)

    monkeypatch.setattr(_protocol, "agree", recording_agree)
    rnd = Epoch()
    rnd.run_round({Stage.MASKED_INPUT: {"c4"}})  # round 7: c0..c3 reveal c4's seal-key shares
    rnd.run_round({Stage.MASKED_INPUT: {"c3"}})  # round 8: c0..c2 reveal c3's seal-key shares
    opened = {}  # (round, dropped node, peer) -> the round seed the server opens
    for round_id, dropped in ((EPOCH, "c4"), (EPOCH + 1, "c3")):
        _, seals = received_shares(rnd.unmask_replies(round_id))
        assert set(seals) == {dropped}
        seal_key = combine_shares(seals[dropped], rnd.config.threshold)
        package = rnd.package(dropped, round_id)
        seeds = open_sealed_seeds(package, seal_key)
        opened |= {(round_id, dropped, v): seed for v, seed in seeds.items()}
    assert set(opened) == {(EPOCH, "c4", c) for c in ("c0", "c1", "c2", "c3")} | {
        (EPOCH + 1, "c3", c) for c in ("c0", "c1", "c2", "c4")
    }
    assert len(set(opened.values())) == len(opened)
    for (round_id, u, v), seed in opened.items():
        pair = sorted((u, v))
        own, peer = calls[_protocol.context("mask-key", EPOCH, *pair)]
        key = real_agree(own, peer, _protocol.context("mask-key", EPOCH, *pair))
        old_style = real_agree(own, peer, _protocol.context("mask-seed", round_id, *pair))
        assert seed == _protocol.round_seed(key, round_id, u, v)
        assert seed not in {key, primitives.exchange(own, peer), old_style}
        for other in (round_id - 1, round_id, round_id + 1):
            other_seed = _protocol.round_seed(key, other, u, v)
            assert (other_seed == seed) == (other == round_id)
            for owner, partner in ((u, v), (v, u)):  # both ends commit to the round's seed
                package = rnd.package(owner, other)
                if package is None:  # no round 6; c4 left the epoch in round 7
                    continue
                commitment = package.seed_commitments[package.receivers.index(partner)]
                assert commitment == _protocol.seed_commitment(other, u, v, other_seed)
                assert (commitment == _protocol.seed_commitment(other, u, v, seed)) == (
                    other == round_id
                )


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_the_server_never_holds_both_secrets_of_a_node_in_a_round(data):
    n = data.draw(st.integers(5, 8), label="n")
    t = data.draw(st.integers(2, n - 2), label="t")
    rnd = Epoch(n=n, t=t, length=4).until(Stage.MASKED_INPUT)
    stages = [Stage.MASKED_INPUT, Stage.UNMASK]
    for least in ([1, 1], []):  # the first round has dropouts at stages 2 and 3 at least
        members = sorted(rnd.requests)
        order = data.draw(st.permutations(members))
        counts = draw_counts(data, len(stages), len(members) - t, least)
        drops = drop_schedule(list(order), counts, stages)
        result = rnd.run_round(drops)
        survivors = set(members) - drops[Stage.MASKED_INPUT]
        assert set(result.survivors) == survivors
        assert np.array_equal(result.total, rnd.plain_sum(result))
        replies = rnd.unmask_replies(result.round_id)
        for reply in replies:  # one holder never reveals both of its shares of a node
            assert not set(reply.self_mask_owners) & set(reply.seed_owners)
        selves, seals = received_shares(replies)
        assert {v for v, shares in selves.items() if len(shares) >= t} == survivors
        assert set(seals) <= set(members) - survivors  # seal keys only of dropped nodes
        for v in members:  # so no node is reconstructible on both sides
            assert len(selves.get(v, [])) < t or len(seals.get(v, [])) < t


def lie_about(rnd: Epoch, victim: str, truthful: int) -> tuple[int, int, np.ndarray]:
    """Play a server lying at stage 3 of a round without dropouts: the victim is told that all
    its neighbours survived; of its neighbours (in order), the first ``truthful`` are told that
    it survived and the others that it dropped. The honest clients all answer (each one's view
    is consistent); returns the numbers of self-mask and seal-key shares of the victim the
    server gets, and the victim's masked input with every mask those shares remove taken off."""
    t = rnd.config.threshold
    told_dropped = sorted(rnd.config.neighbours(victim))[truthful:]
    replies = []
    for c, request in rnd.requests.items():
        if c in told_dropped:
            survivors = tuple(s for s in request.survivors if s != victim)
            request = replace(request, survivors=survivors, dropped=(victim,))
        replies.append(rnd.answer(c, request))
    selves, seals = received_shares(replies)
    mine, sealed = selves.get(victim, []), seals.get(victim, [])
    (masked,) = [r.masked for r in rnd.replies if r.sender == victim]
    residue = masked.copy()
    if len(mine) >= t:
        residue -= expand_mask(combine_shares(mine, t), residue.size, rnd.config.bits)
    if len(sealed) >= t:
        package = rnd.package(victim, rnd.round_id)
        for peer, seed in open_sealed_seeds(package, combine_shares(sealed, t)).items():
            _protocol.add_pairwise_mask(residue, seed, victim, peer, subtract=True)
    return len(mine), len(sealed), residue


@pytest.mark.parametrize("truthful", range(5))
@pytest.mark.parametrize(("n", "degree"), [(5, None), (9, 4)])
def test_a_server_lying_about_a_victim_cannot_unmask_it(n, degree, truthful):
    """The attack on the previous design (the victim revealed its self-mask seed, and each
    neighbour its round seed with a 'dropped' node, directly): with shares only, and t a strict
    majority of the victim's closed neighbourhood (3 of 5), however the server splits the
    neighbours it either lacks t shares of the victim's self mask or t of its seal key."""
    rnd = Epoch(n=n, t=3, degree=degree).until(Stage.UNMASK)
    victim = "c0"
    assert len(rnd.config.neighbours(victim)) == 4
    mine, sealed, residue = lie_about(rnd, victim, truthful)
    # The victim gives its own share of its self mask (it is listed as a survivor); a neighbour
    # gives a share of the self mask or of the seal key, never both.
    assert (mine, sealed) == (1 + truthful, 4 - truthful)
    assert min(mine, sealed) < 3
    # With truthful <= 1 (the full lie) the seal key opens and every pairwise mask comes off,
    # but the self mask stays: the victim's input remains hidden.
    assert not np.array_equal(residue, rnd.inputs[rnd.round_id][victim])


def test_a_minority_threshold_lets_a_lying_server_unmask_a_victim():
    """The documented limit: with t = 2 of 5, not a majority, the same lie unmasks the victim,
    so the check above does detect a successful attack."""
    rnd = Epoch(n=5, t=2).until(Stage.UNMASK)
    mine, sealed, residue = lie_about(rnd, "c0", truthful=1)
    assert (mine, sealed) == (2, 3)
    assert np.array_equal(residue, rnd.inputs[rnd.round_id]["c0"])


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


def dropout_round(rnd: Epoch, dropped: set[str]) -> Epoch:
    """Run to stage 3 of the round in progress, ``dropped`` dropping at stage 2."""
    rnd.until(Stage.MASKED_INPUT).step(skip=dropped)
    return rnd


def test_replayed_unmask_request_cannot_extract_the_other_secret():
    rnd = Epoch().until(Stage.UNMASK)
    honest = rnd.requests["c0"]
    rnd.answer("c0", honest)
    survivors = tuple(c for c in honest.survivors if c != "c1")
    with pytest.raises(ProtocolError, match="stage UNMASK refused, it expects MASKED_INPUT"):
        rnd.answer("c0", replace(honest, survivors=survivors, dropped=("c1",)))
    assert not rnd.clients["c0"].aborted


@pytest.mark.parametrize("stage", list(Stage))
def test_a_replayed_stage_is_refused(stage):
    rnd = Epoch().until(stage)
    request = rnd.requests["c0"]
    rnd.step()
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


def test_a_survivor_silent_at_stage_3_counts_and_takes_part_in_the_next_round():
    rnd = dropout_round(Epoch(), dropped={"c4"})
    stale = rnd.requests["c3"]
    rnd.step(skip={"c3"})  # aggregate round 7; round 8 starts over the clients with a package
    result = rnd.results[-1]
    assert result.survivors == ("c0", "c1", "c2", "c3")  # c3's mask from the others' shares
    assert np.array_equal(result.total, rnd.plain_sum(result))
    assert set(rnd.requests) == {"c0", "c1", "c2", "c3"}  # c3 was silent at stage 3 only
    assert rnd.clients["c3"].next_round == EPOCH + 1
    assert rnd.clients["c4"].next_round == EPOCH  # it never masked round 7
    assert rnd.server.ready(EPOCH + 1) == frozenset()  # round 8 is in progress
    rnd.step()
    with pytest.raises(ProtocolError, match="UNMASK for round 7, expected round 8"):
        rnd.answer("c3", stale)  # once it masked round 8, round 7's stage 3 is over for it
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
    early = AdvertiseKeysRequest(round_id=EPOCH, receiver="c0")
    with pytest.raises(ProtocolError, match="ADVERTISE_KEYS refused, it expects UNMASK or MASKED"):
        rnd.answer("c0", early)
    assert rnd.clients["c0"].expects == (Stage.UNMASK, Stage.MASKED_INPUT)


def test_wrong_round_and_wrong_receiver_are_refused():
    rnd = Epoch()
    with pytest.raises(ProtocolError, match="for round 8, expected round 7"):
        rnd.answer("c0", replace(rnd.requests["c0"], round_id=EPOCH + 1))
    with pytest.raises(ProtocolError, match="request for 'c1' delivered to client 'c0'"):
        rnd.answer("c0", rnd.requests["c1"])
    assert not rnd.clients["c0"].aborted


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
    "aggregate": lambda s: s.aggregate([]),
}
# The server's six phases: the one step allowed in each, the harness stage reaching it and, for
# the phase "keyed" (entered after collect_shares and after each aggregate), the step taken
# there and the round whose packages the clients then hold.
PHASES = {
    "new": ("advertise_keys", None, None),
    "advertised": ("share_keys", Stage.ADVERTISE_KEYS, None),
    "sharing": ("collect_shares", Stage.SHARE_KEYS, None),
    "keyed": ("masked_input", Stage.SHARE_KEYS, ("collect_shares", EPOCH)),
    "keyed-again": ("masked_input", Stage.UNMASK, ("aggregate", EPOCH + 1)),
    "masking": ("unmask", Stage.MASKED_INPUT, None),
    "unmasking": ("aggregate", Stage.UNMASK, None),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_every_invalid_server_transition_raises(phase):
    allowed, stage, entered_by = PHASES[phase]
    rnd = Epoch()
    if stage is None:
        rnd.server = SecAggServer(rnd.config)
    else:
        rnd.until(stage)
    if entered_by is not None:
        step, ready_round = entered_by
        getattr(rnd.server, step)(rnd.replies_to())
        assert rnd.server.ready(ready_round) == frozenset(rnd.ids)
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


# The fields of an UnmaskResponse that carry shares of each secret: (owners, shares).
SHARE_FIELDS = {
    "self mask": ("self_mask_owners", "self_mask_shares"),
    "seal key": ("seed_owners", "seed_shares"),
}


def corrupt(reply: UnmaskResponse, secret: str, owner: str) -> UnmaskResponse:
    """``reply`` with its share of ``owner``'s ``secret`` (a key of SHARE_FIELDS) corrupted."""
    owners, field = SHARE_FIELDS[secret]
    shares = list(getattr(reply, field))
    i = getattr(reply, owners).index(owner)
    share = Share.from_bytes(shares[i])
    shares[i] = Share(share.index, bytes(b ^ 0x5A for b in share.value)).to_bytes()
    return replace(reply, **{field: tuple(shares)})


@pytest.mark.parametrize(
    ("secret", "holder", "silent", "match"),
    [
        ("self mask", "c0", set(), "the self-mask seed of 'c4' does not match its commitment"),
        ("self mask", "c4", set(), None),
        ("self mask", "c4", {"c2", "c3"}, "the self-mask seed of 'c4' does not match"),
        ("seal key", "c0", set(), "the sealed round seeds of 'c4' do not open"),
        ("seal key", "c3", set(), None),
        ("seal key", "c3", {"c2"}, "the sealed round seeds of 'c4' do not open"),
    ],
    ids=["self-used", "self-spare", "self-exactly-t", "seal-used", "seal-spare", "seal-exactly-t"],
)
def test_a_corrupted_share_aborts_the_round_or_is_not_used(secret, holder, silent, match):
    """The server rebuilds each secret from the t shares of lowest Shamir index (c0 holds index
    1 of c4's secrets, c4 index 5) and checks what it rebuilt: a self-mask seed against its
    commitment, a seal key by opening the sealed seeds. A corrupted share among those t aborts
    the round; one beyond them is not used. Either way the sum is never wrong."""
    rnd = dropout_round(Epoch(), dropped={"c4"} if secret == "seal key" else set())
    replies = rnd.replies_to(skip=silent)
    tampered = [corrupt(r, secret, "c4") if r.sender == holder else r for r in replies]
    if match is None:
        rnd.advance(tampered)
        assert np.array_equal(rnd.results[-1].total, rnd.plain_sum(rnd.results[-1]))
        return
    with pytest.raises(SecAggAbort, match=match):
        rnd.advance(tampered)
    assert rnd.server.aborted


def recommitted(reply: SharePackage) -> SharePackage:
    """c0 and c4 both commit to a bogus round seed for their pair: the commitments still agree,
    so the round starts, but the seed c4 sealed does not match them."""
    if reply.sender not in ("c0", "c4"):
        return reply
    commitments = list(reply.seed_commitments)
    commitments[reply.receivers.index("c4" if reply.sender == "c0" else "c0")] = bytes(32)
    return replace(reply, seed_commitments=tuple(commitments))


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (
            lambda r: replace(r, sealed_seeds=flip(r.sealed_seeds)) if r.sender == "c4" else r,
            "the sealed round seeds of 'c4' do not open",
        ),
        (recommitted, "the round seed of 'c4' and 'c0' does not match its commitment"),
    ],
    ids=["sealed-seeds", "seed-commitment"],
)
def test_round_seeds_of_a_dropped_node_that_do_not_check_abort_the_round(tamper, match):
    rnd = Epoch().until(Stage.SHARE_KEYS)
    rnd.advance([tamper(r) for r in rnd.replies_to()])
    dropout_round(rnd, dropped={"c4"})  # its seal key is rebuilt, its round seeds opened
    with pytest.raises(SecAggAbort, match=match):
        rnd.step()
    assert rnd.server.aborted


def reindexed(share: bytes) -> bytes:
    """The encoded share with another Shamir index (1..5)."""
    return bytes([share[0] % 5 + 1]) + share[1:]


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda r: replace(r, seed_owners=("c3",)), "answered for other nodes than it was asked"),
        (
            lambda r: replace(
                r, self_mask_owners=r.self_mask_owners[1:], self_mask_shares=r.self_mask_shares[1:]
            ),
            "answered for other nodes",
        ),
        (lambda r: replace(r, seed_owners=(), seed_shares=()), "answered for other nodes"),
        (
            lambda r: replace(r, seed_shares=(reindexed(r.seed_shares[0]),)),
            "sent a share of 'c4' with a wrong index",
        ),
        (
            lambda r: replace(r, self_mask_shares=(b"\x01", *r.self_mask_shares[1:])),
            "sent a malformed share of 'c0'",
        ),
    ],
    ids=["other-owner", "missing-self-mask", "missing-seal-key", "wrong-index", "malformed"],
)
def test_server_refuses_answers_about_other_nodes_and_wrong_shares(tamper, match):
    rnd = dropout_round(Epoch(), dropped={"c4"})
    replies = rnd.replies_to()
    assert (replies[0].sender, replies[0].seed_owners) == ("c0", ("c4",))
    with pytest.raises(ProtocolError, match=f"'c0' {match}"):
        rnd.advance([tamper(replies[0]), *replies[1:]])
    assert rnd.server.aborted


@pytest.mark.parametrize(
    ("degree", "dropped", "match"),
    [
        (2, lambda nb: set(nb), "the self mask of 'c0' has only 1 surviving share holders"),
        (4, lambda nb: set(nb[:3]), "the self mask of 'c0' has only 2 surviving share holders"),
        (4, lambda nb: {"c0", *nb[:2]}, "the seal key of 'c0' has only 2 surviving share holders"),
    ],
    ids=["ring", "self-mask", "seal-key"],
)
def test_server_aborts_early_when_a_needed_secret_lost_its_holders(degree, dropped, match):
    rnd = Epoch(n=8, t=3, degree=degree).until(Stage.MASKED_INPUT)
    neighbours = sorted(rnd.config.neighbours("c0"))
    with pytest.raises(SecAggAbort, match=f"{match}, threshold is 3"):
        rnd.step(skip=dropped(neighbours))
    assert rnd.server.aborted and not rnd.unmask_replies(EPOCH)  # no share was asked for


# -- messages ------------------------------------------------------------------------------

PACKAGE = {
    "shares_round": 2,
    "receivers": ("b",),
    "ciphertexts": (b"x",),
    "self_mask_commitment": b"c" * 32,
    "seed_commitments": (b"d" * 32,),
    "sealed_seeds": b"s",
}


def unmask_response(**fields) -> UnmaskResponse:
    """A stage-3 reply of 'a' that reveals nothing, but for ``fields``."""
    empty = {"self_mask_owners": (), "self_mask_shares": (), "seed_owners": (), "seed_shares": ()}
    return UnmaskResponse(round_id=1, sender="a", **{**empty, **fields})


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
            lambda: unmask_response(self_mask_owners=("a", "b"), self_mask_shares=(b"x",)),
            "parallel fields differ .*self_mask_owners",
        ),
        (
            lambda: unmask_response(seed_shares=(b"x",)),
            "parallel fields differ .*seed_owners",
        ),
        (
            lambda: unmask_response(seed_owners=[2], seed_shares=[b"x"]),
            "seed_owners is a sequence of str",
        ),
        (
            lambda: unmask_response(self_mask_owners=("a",), self_mask_shares=("x",)),
            "self_mask_shares is a sequence of bytes",
        ),
        (
            lambda: KeyAdvertisement(
                round_id=-1, sender="a", enc_public_key=b"", mask_public_key=b""
            ),
            "round_id is a non-negative integer",
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
