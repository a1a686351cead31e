"""What an honest client refuses, what the server refuses, and what the server learns.

The :class:`~secagg_harness.Epoch` harness runs an honest epoch up to any stage of any round so
that each test can tamper with one request or reply (playing a malicious server or client) and
check the refusal.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import (
    EPOCH,
    Epoch,
    commitment_of,
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
    SecAggClient,
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


def ciphertexts(rnd: Epoch) -> dict[tuple[str, str], bytes]:
    """(sender, receiver) -> ciphertext of the share packages the server got (stage 1)."""
    return {
        (p.sender, receiver): ct
        for p in rnd.received
        if isinstance(p, SharePackage)
        for receiver, ct in zip(p.receivers, p.ciphertexts, strict=True)
    }


def relayed(requests: dict[str, MaskedInputRequest]) -> dict[tuple[str, str], bytes]:
    """(sender, receiver) -> ciphertext relayed in stage-2 requests."""
    return {
        (sender, receiver): ct
        for receiver, request in requests.items()
        for sender, ct in zip(request.senders, request.ciphertexts, strict=True)
    }


def test_server_relays_the_ciphertexts_unchanged_once_an_epoch():
    rnd = Epoch(rounds=3).until(Stage.MASKED_INPUT)
    sent = ciphertexts(rnd)
    assert relayed(rnd.requests) == sent and len(sent) == 5 * 4  # all in the first round
    share_bytes = 2 * 32 * 3  # each holds a share of 3 rounds' (self-mask seed, seal key)
    assert all(len(ct) > share_bytes for ct in sent.values())
    for round_id in (EPOCH + 1, EPOCH + 2):
        rnd.until(Stage.MASKED_INPUT, round_id)
        assert set(rnd.requests) == set(rnd.ids) and relayed(rnd.requests) == {}
        for c, request in rnd.requests.items():  # the round's neighbours are named every round
            assert request.neighbours == tuple(v for v in rnd.ids if v != c)
        result = rnd.run_round()
        assert np.array_equal(result.total, rnd.plain_sum(result))
    assert len(rnd.results) == 3 and rnd.finished


def test_a_client_first_in_a_later_round_gets_its_ciphertexts_then():
    rnd = Epoch(rounds=3).until(Stage.SHARE_KEYS)
    rnd.step(members={"c0", "c1", "c2", "c3"})  # c4 is left out of round 7, not of the epoch
    assert "c4" not in rnd.requests and relayed(rnd.requests) == {
        k: ct for k, ct in ciphertexts(rnd).items() if k[1] != "c4"
    }
    assert rnd.can_mask("c4") == [EPOCH, EPOCH + 1, EPOCH + 2]
    result = rnd.run_round()
    assert result.survivors == ("c0", "c1", "c2", "c3")
    assert np.array_equal(result.total, rnd.plain_sum(result))
    assert relayed(rnd.requests) == {k: ct for k, ct in ciphertexts(rnd).items() if k[1] == "c4"}
    result = rnd.run_round()
    assert result.survivors == tuple(rnd.ids)
    assert np.array_equal(result.total, rnd.plain_sum(result))


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

    def counting_split(secret: bytes, t: int, n: int) -> list[Share]:
        split.append(len(secret))
        return real_split(secret, t, n)

    split: list[int] = []
    real_split = secagg_client.split_secret
    monkeypatch.setattr(_protocol, "agree", counting_agree)
    monkeypatch.setattr(secagg_client, "generate_keypair", counting_generate)
    monkeypatch.setattr(secagg_client, "split_secret", counting_split)
    rnd = Epoch(n=8, t=3, degree=4, rounds=4).until(Stage.MASKED_INPUT)
    adverts = [a for a in rnd.received if isinstance(a, KeyAdvertisement)]
    assert len(generated) == 2 * 8 and len(adverts) == 8
    assert split == [2 * 32 * 4] * 8  # each client shares all 4 rounds' secrets in stage 1
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
    assert len(split) == 8 and rnd.finished


def test_a_reconstructed_round_seed_is_bound_to_its_round(monkeypatch):
    calls: dict[bytes, tuple[KeyPair, bytes]] = {}
    real_agree = _protocol.agree

    def recording_agree(own: KeyPair, peer_public: bytes, info: bytes) -> bytes:
        calls[info] = (own, peer_public)
        return real_agree(own, peer_public, info)

    monkeypatch.setattr(_protocol, "agree", recording_agree)
    rnd = Epoch(rounds=3)
    rnd.run_round({Stage.MASKED_INPUT: {"c4"}})  # round 7: c0..c3 reveal c4's seal-key shares
    rnd.run_round({Stage.MASKED_INPUT: {"c3"}})  # round 8: c0..c2 reveal c3's seal-key shares
    opened = {}  # (round, dropped node, peer) -> the round seed the server opens
    for round_id, dropped in ((EPOCH, "c4"), (EPOCH + 1, "c3")):
        _, seals = received_shares(rnd.unmask_replies(round_id))
        assert set(seals) == {dropped}
        seal_key = combine_shares(seals[dropped], rnd.config.threshold)
        seeds = open_sealed_seeds(rnd.package(dropped), round_id, seal_key)
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
        epoch_seeds = _protocol.round_seeds(key, rnd.config.rounds)
        assert seed == epoch_seeds[round_id - EPOCH]
        assert seed not in {key, primitives.exchange(own, peer), old_style}
        assert len(set(epoch_seeds)) == rnd.config.rounds
        for other in (round_id - 1, round_id, round_id + 1):
            if other not in rnd.config.round_ids:  # no round 6
                continue
            other_seed = epoch_seeds[other - EPOCH]
            assert (other_seed == seed) == (other == round_id)
            for owner, partner in ((u, v), (v, u)):  # both ends commit to each round's seed
                package = rnd.package(owner)
                commitments = package.seed_commitments[package.receivers.index(partner)]
                commitment = commitment_of(commitments, package, other)
                assert commitment == _protocol.seed_commitment(other, u, v, other_seed)
                assert (commitment == _protocol.seed_commitment(other, u, v, seed)) == (
                    other == round_id
                )


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_the_server_never_holds_both_secrets_of_a_node_in_a_round(data):
    n = data.draw(st.integers(5, 8), label="n")
    t = data.draw(st.integers(2, n - 2), label="t")
    rnd = Epoch(n=n, t=t, length=4, rounds=3).until(Stage.MASKED_INPUT)
    stages = [Stage.MASKED_INPUT, Stage.UNMASK]
    for least in ([1, 1], [], []):  # the first round has dropouts at stages 2 and 3 at least
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


@dataclass
class Leak:
    """What a server learns of one node from the stage-3 shares of a round: how many shares of
    its self-mask seed and of its seal key, and the secrets they rebuild (t shares or more)."""

    round_id: int
    self_shares: int
    seal_shares: int
    self_seed: bytes | None
    seal_key: bytes | None
    seeds: dict[str, bytes] | None  # the pairwise seeds the seal key opens


def leak_of(rnd: Epoch, replies: list[UnmaskResponse], node: str, round_id: int) -> Leak:
    t = rnd.config.threshold
    selves, seals = received_shares(replies)
    mine, sealed = selves.get(node, []), seals.get(node, [])
    self_seed = combine_shares(mine, t) if len(mine) >= t else None
    seal_key = combine_shares(sealed, t) if len(sealed) >= t else None
    seeds = None
    if seal_key is not None:
        seeds = open_sealed_seeds(rnd.package(node), round_id, seal_key)
    return Leak(round_id, len(mine), len(sealed), self_seed, seal_key, seeds)


def strip(masked: np.ndarray, node: str, leak: Leak, bits: int) -> np.ndarray:
    """``node``'s masked input with every mask the leaked secrets remove taken off."""
    residue = masked.copy()
    if leak.self_seed is not None:
        residue -= expand_mask(leak.self_seed, residue.size, bits)
    for peer, seed in (leak.seeds or {}).items():
        _protocol.add_pairwise_mask(residue, seed, node, peer, subtract=True)
    return residue


def lie_about(rnd: Epoch, victim: str, truthful: int) -> tuple[Leak, np.ndarray]:
    """Play a server lying at stage 3 of a round without dropouts: the victim is told that all
    its neighbours survived; of its neighbours (in order), the first ``truthful`` are told that
    it survived and the others that it dropped. The honest clients all answer (each one's view
    is consistent); returns what the server learns of the victim, and the victim's masked input
    with every mask that removes taken off."""
    told_dropped = sorted(rnd.config.neighbours(victim))[truthful:]
    replies = []
    for c, request in rnd.requests.items():
        if c in told_dropped:
            survivors = tuple(s for s in request.survivors if s != victim)
            request = replace(request, survivors=survivors, dropped=(victim,))
        replies.append(rnd.answer(c, request))
    leak = leak_of(rnd, replies, victim, rnd.round_id)
    (masked,) = [r.masked for r in rnd.replies if r.sender == victim]
    return leak, strip(masked, victim, leak, rnd.config.bits)


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
    leak, residue = lie_about(rnd, victim, truthful)
    # The victim gives its own share of its self mask (it is listed as a survivor); a neighbour
    # gives a share of the self mask or of the seal key, never both.
    assert (leak.self_shares, leak.seal_shares) == (1 + truthful, 4 - truthful)
    assert leak.self_seed is None or leak.seal_key is None
    # With truthful <= 1 (the full lie) the seal key opens and every pairwise mask comes off,
    # but the self mask stays: the victim's input remains hidden.
    assert not np.array_equal(residue, rnd.inputs[rnd.round_id][victim])


def test_a_minority_threshold_lets_a_lying_server_unmask_a_victim():
    """The documented limit: with t = 2 of 5, not a majority, the same lie unmasks the victim,
    so the check above does detect a successful attack."""
    rnd = Epoch(n=5, t=2).until(Stage.UNMASK)
    leak, residue = lie_about(rnd, "c0", truthful=1)
    assert (leak.self_shares, leak.seal_shares) == (2, 3)
    assert np.array_equal(residue, rnd.inputs[rnd.round_id]["c0"])


@pytest.mark.parametrize(("n", "degree", "t"), [(11, None, 6), (40, 10, 6)])
def test_known_limit_contradictory_views_unmask_a_victim(n, degree, t):
    """The documented limit of per-client checks (README "Threat model"), with the default
    majority t: the server names only t - 1 neighbours X to the victim, tells each x in X that it
    and the victim survived (the rest of X dropped) and everyone else that X dropped. Every
    client's own view is consistent, none holds both secrets of any node, yet the server rebuilds
    the victim's self-mask seed and each x's seal key, hence the victim's input. This test must
    flip when the signed consistency round lands."""
    rnd = Epoch(n=n, t=t, degree=degree, length=8).until(Stage.MASKED_INPUT)
    victim, r = "c0", rnd.round_id
    lied = sorted(rnd.config.neighbours(victim))[: t - 1]
    requests = dict(rnd.requests)
    requests[victim] = replace(requests[victim], neighbours=tuple(lied))
    masked = {c: rnd.answer(c, q) for c, q in requests.items()}
    replies = []
    for c, q in sorted(requests.items()):
        if c == victim:
            continue  # not asked: it would see that X did not drop
        closed = set(q.neighbours) | {c}
        dropped = closed & set(lied) - {c}
        unmask = UnmaskRequest(
            round_id=r,
            receiver=c,
            survivors=tuple(sorted(closed - dropped)),
            dropped=tuple(sorted(dropped)),
        )
        replies.append(rnd.clients[c].unmask(unmask))  # no client refuses
    selves, seals = received_shares(replies)
    assert not [v for v in selves if len(selves[v]) >= t and len(seals.get(v, [])) >= t]
    residue = masked[victim].masked.copy()
    residue -= expand_mask(combine_shares(selves[victim], t), residue.size, rnd.config.bits)
    for x in lied:
        seeds = open_sealed_seeds(rnd.package(x), r, combine_shares(seals[x], t))
        _protocol.add_pairwise_mask(residue, seeds[victim], victim, x, subtract=True)
    assert np.array_equal(residue, rnd.inputs[r][victim])


@pytest.mark.parametrize("later", [1, 2])
def test_secrets_a_lying_server_gains_unmask_only_their_round(later):
    """What the lie above gains in round 7 (with t = 2: the victim's self-mask seed and seal key
    of round 7, and the round-7 seeds it sealed) unmasks its round-7 input exactly, and nothing
    of its input in a later round of the epoch, which it masks with other secrets."""
    rnd = Epoch(n=5, t=2, rounds=3).until(Stage.UNMASK)
    leak, residue = lie_about(rnd, "c0", truthful=1)
    assert np.array_equal(residue, rnd.inputs[EPOCH]["c0"])  # the attack works in its round
    round_id, package = EPOCH + later, rnd.package("c0")
    # The lying server asks the victim to mask a later round (no ciphertexts: they came once).
    request = MaskedInputRequest(
        round_id=round_id,
        receiver="c0",
        neighbours=("c1", "c2", "c3", "c4"),
        senders=(),
        receivers=(),
        ciphertexts=(),
    )
    masked = rnd.answer("c0", request).masked
    stripped = strip(masked, "c0", leak, rnd.config.bits)
    plain = rnd.inputs[round_id]["c0"]
    assert np.mean(stripped == plain) < 0.01 and np.mean(masked == plain) < 0.01
    # Nor do the round-7 secrets open or match any of the later round's.
    with pytest.raises(CryptoError, match="authentication failed"):
        open_sealed_seeds(package, round_id, leak.seal_key)
    ad = _protocol.sealed_seeds_associated_data(EPOCH, "c0")  # nor under round 7's data
    with pytest.raises(CryptoError, match="authentication failed"):
        primitives.decrypt(leak.seal_key, package.sealed_seeds[later], ad)
    committed = commitment_of(package.self_mask_commitments, package, round_id)
    assert committed != _protocol.self_mask_commitment(round_id, "c0", leak.self_seed)
    for peer, seed in leak.seeds.items():
        commitments = package.seed_commitments[package.receivers.index(peer)]
        later_commitment = commitment_of(commitments, package, round_id)
        assert later_commitment != _protocol.seed_commitment(round_id, "c0", peer, seed)


def test_a_dropped_nodes_seal_key_opens_only_the_round_it_dropped_in():
    """c4 survives round 7 (the server rebuilds its round-7 self-mask seed) and drops at stage 2
    of round 8 (the server rebuilds its round-8 seal key and opens its round-8 seeds). None of
    that opens c4's sealed seeds of rounds 7 and 9, and its inputs of rounds 7 and 9 (had it
    masked round 9) stay masked with all of it taken off."""
    rnd = Epoch(rounds=3)
    rnd.run_round()
    rnd.until(Stage.MASKED_INPUT, EPOCH + 1)
    nine = replace(rnd.requests["c4"], round_id=EPOCH + 2)  # a round-9 request, as of round 8
    result = rnd.run_round({Stage.MASKED_INPUT: {"c4"}})
    assert result.survivors == ("c0", "c1", "c2", "c3")
    assert np.array_equal(result.total, rnd.plain_sum(result))
    round_7 = leak_of(rnd, rnd.unmask_replies(EPOCH), "c4", EPOCH)
    round_8 = leak_of(rnd, rnd.unmask_replies(EPOCH + 1), "c4", EPOCH + 1)
    assert round_7.self_seed is not None and round_7.seal_key is None
    assert round_8.self_seed is None and round_8.seeds is not None  # round 8's seeds open
    assert set(round_8.seeds) == {"c0", "c1", "c2", "c3"}
    package = rnd.package("c4")
    for round_id in (EPOCH, EPOCH + 2):
        with pytest.raises(CryptoError, match="authentication failed"):
            open_sealed_seeds(package, round_id, round_8.seal_key)
        ad = _protocol.sealed_seeds_associated_data(EPOCH + 1, "c4")  # nor under round 8's data
        with pytest.raises(CryptoError, match="authentication failed"):
            primitives.decrypt(round_8.seal_key, package.sealed_seeds[round_id - EPOCH], ad)
    # All the server holds of c4 in this epoch, taken off together.
    everything = Leak(EPOCH + 1, 0, 0, round_7.self_seed, round_8.seal_key, round_8.seeds)
    (masked_7,) = [
        r.masked
        for r in rnd.received
        if isinstance(r, MaskedInputResponse) and (r.sender, r.round_id) == ("c4", EPOCH)
    ]
    masked_9 = rnd.answer("c4", nine).masked  # c4 still masks round 9 if asked
    for round_id, masked in ((EPOCH, masked_7), (EPOCH + 2, masked_9)):
        stripped = strip(masked, "c4", everything, rnd.config.bits)
        assert not np.any(stripped == rnd.inputs[round_id]["c4"])


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


def out_of_order(round_id: int, expected: str) -> str:
    return (
        rf"'c0': stage MASKED_INPUT for round {round_id}, expected {expected} "
        r"\(a replayed or out-of-order request\)"
    )


def test_each_round_of_the_epoch_is_masked_once_in_order():
    rnd = Epoch(rounds=3).until(Stage.MASKED_INPUT)
    request, client = rnd.requests["c0"], rnd.clients["c0"]
    assert rnd.can_mask("c0") == [7, 8, 9] and not client.can_mask(6) and not client.can_mask(10)
    beyond = replace(request, round_id=EPOCH + 3, senders=(), receivers=(), ciphertexts=())
    with pytest.raises(ProtocolError, match=out_of_order(10, r"a round in 7\.\.9")):
        rnd.answer("c0", beyond)
    reply = rnd.answer("c0", request)
    assert rnd.can_mask("c0") == [8, 9]
    with pytest.raises(ProtocolError, match=out_of_order(7, r"a round in 8\.\.9")):
        rnd.answer("c0", request)
    with pytest.raises(ProtocolError, match=out_of_order(12, r"a round in 8\.\.9")):
        rnd.answer("c0", replace(request, round_id=EPOCH + 5))
    assert not client.aborted
    rnd.advance([reply, *rnd.replies_to(skip={"c0"})])
    rnd.until(Stage.MASKED_INPUT, EPOCH + 1)
    with pytest.raises(ProtocolError, match=out_of_order(7, r"a round in 8\.\.9")):
        rnd.answer("c0", request)
    later = rnd.requests["c0"]
    rnd.step()
    assert rnd.can_mask("c0") == [9]
    for round_id in (EPOCH, EPOCH + 1, EPOCH + 3):  # the round it masked, before and after
        with pytest.raises(ProtocolError, match=out_of_order(round_id, "round 9")):
            rnd.answer("c0", replace(later, round_id=round_id))
    rnd.step()
    result = rnd.run_round()
    assert result.round_id == EPOCH + 2 and rnd.finished and rnd.can_mask("c0") == []
    assert np.array_equal(result.total, rnd.plain_sum(result))
    with pytest.raises(ProtocolError, match=out_of_order(9, "no round")):
        rnd.answer("c0", replace(later, round_id=EPOCH + 2))
    assert not client.aborted


def test_rounds_may_be_skipped_but_each_is_masked_once():
    rnd = Epoch(rounds=4).until(Stage.SHARE_KEYS)
    rnd.step(next_round=EPOCH + 1)  # the epoch starts with its second round
    assert rnd.can_mask("c0") == [7, 8, 9, 10]
    result = rnd.run_round(next_round=EPOCH + 3)  # and skips round 9
    assert result.round_id == EPOCH + 1 and np.array_equal(result.total, rnd.plain_sum(result))
    assert rnd.can_mask("c0") == [9, 10]  # once it masked round 8, rounds 7 and 8 are gone
    request = rnd.requests["c0"]
    assert request.round_id == EPOCH + 3
    for round_id in (EPOCH, EPOCH + 1, EPOCH + 4):
        with pytest.raises(ProtocolError, match=out_of_order(round_id, r"a round in 9\.\.10")):
            rnd.answer("c0", replace(request, round_id=round_id))
    result = rnd.run_round()
    assert result.round_id == EPOCH + 3 and result.survivors == tuple(rnd.ids)
    assert np.array_equal(result.total, rnd.plain_sum(result))
    assert rnd.finished and [r.round_id for r in rnd.results] == [EPOCH + 1, EPOCH + 3]
    assert rnd.can_mask("c0") == []  # round 9, skipped, can no longer be masked
    with pytest.raises(ProtocolError, match=out_of_order(EPOCH + 2, "no round")):
        rnd.answer("c0", replace(request, round_id=EPOCH + 2))
    assert not rnd.clients["c0"].aborted


def test_a_survivor_silent_at_stage_3_counts_and_takes_part_in_the_next_round():
    rnd = dropout_round(Epoch(), dropped={"c4"})
    stale = rnd.requests["c3"]
    rnd.step(skip={"c3"})  # aggregate round 7; round 8 starts over the clients with a package
    result = rnd.results[-1]
    assert result.survivors == ("c0", "c1", "c2", "c3")  # c3's mask from the others' shares
    assert np.array_equal(result.total, rnd.plain_sum(result))
    assert set(rnd.requests) == {"c0", "c1", "c2", "c3"}  # c3 was silent at stage 3 only
    assert rnd.can_mask("c3") == [EPOCH + 1, EPOCH + 2]
    assert rnd.clients["c3"].expects == (Stage.UNMASK, Stage.MASKED_INPUT)
    assert rnd.server.ready(EPOCH + 1) == frozenset()  # round 8 is in progress
    rnd.step()
    with pytest.raises(ProtocolError, match="UNMASK for round 7, expected round 8"):
        rnd.answer("c3", stale)  # once it masked round 8, round 7's stage 3 is over for it
    result = rnd.run_round()
    assert result.survivors == ("c0", "c1", "c2", "c3")
    assert np.array_equal(result.total, rnd.plain_sum(result))


def test_a_client_dropped_at_stage_2_is_out_of_the_rest_of_the_epoch():
    rnd = dropout_round(Epoch(rounds=3), dropped={"c4"})
    assert rnd.can_mask("c4") == [EPOCH, EPOCH + 1, EPOCH + 2]  # it does not know it dropped
    result = rnd.run_round()
    assert result.survivors == ("c0", "c1", "c2", "c3")
    assert np.array_equal(result.total, rnd.plain_sum(result))
    assert rnd.server.ready(EPOCH + 1) == frozenset()  # round 8 is in progress, without c4
    assert set(rnd.requests) == {"c0", "c1", "c2", "c3"}
    assert all("c4" not in r.neighbours for r in rnd.requests.values())
    for round_id in (EPOCH + 1, EPOCH + 2):
        result = rnd.run_round()
        assert result.round_id == round_id and result.survivors == ("c0", "c1", "c2", "c3")
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
    request = relay(rnd.requests["c0"], tamper(entries_for(rnd, "c0"), ciphertexts(rnd)))
    refuse(rnd, "c0", request, match)


@pytest.mark.parametrize("later", [False, True], ids=["first-round", "later-round"])
@pytest.mark.parametrize(
    ("neighbours", "match"),
    [
        (("c1", "c2", "c3", "c4"), r"the round's neighbours \['c4'\] sent it no shares"),
        (("c1", "c2", "c0"), r"the round's neighbours \['c0'\] sent it no shares"),
        (("c1", "c2", "ghost"), r"the round's neighbours \['ghost'\] sent it no shares"),
        (("c1", "c2", "c2"), "the round's neighbours name a client twice"),
        (("c1",), "only 2 clients of its neighbourhood take part in round (7|8), threshold is 3"),
        ((), "only 1 clients of its neighbourhood take part in round (7|8), threshold is 3"),
    ],
    ids=["no-shares", "itself", "stranger", "twice", "too-few", "none"],
)
def test_the_round_neighbours_must_be_enough_and_all_hold_shares(later, neighbours, match):
    """c0 masks with exactly the neighbours the server names: all distinct, all of them senders
    of shares it accepted (c4 dropped at stage 1 and sent none), and with c0 at least t."""
    rnd = Epoch(rounds=2).until(Stage.SHARE_KEYS)
    rnd.step(skip={"c4"})
    assert rnd.requests["c0"].neighbours == ("c1", "c2", "c3")
    if later:
        rnd.run_round()
        assert entries_for(rnd, "c0") == []
    refuse(rnd, "c0", replace(rnd.requests["c0"], neighbours=neighbours), match)


@pytest.mark.parametrize("view", ["named", "server"])
def test_stage_3_must_match_the_neighbours_a_client_was_named(view):
    """c0 masks with exactly the neighbours named in its request (here c1 and c2 of four): at
    stage 3 it answers about those, and refuses the server's view that it masked with all."""
    rnd = Epoch().until(Stage.MASKED_INPUT)
    named = replace(rnd.requests["c0"], neighbours=("c1", "c2"))
    rnd.advance([rnd.answer("c0", named), *rnd.replies_to(skip={"c0"})])
    request = rnd.requests["c0"]
    assert request.survivors == tuple(rnd.ids)  # the server believes c0 masked with all
    if view == "server":
        refuse(rnd, "c0", request, r"unknown: \['c3', 'c4'\], unaccounted for: \[\]")
        return
    reply = rnd.answer("c0", replace(request, survivors=("c0", "c1", "c2")))
    assert reply.self_mask_owners == ("c0", "c1", "c2") and reply.seed_owners == ()


@pytest.mark.parametrize("silent", [False, True])
def test_ciphertexts_relayed_a_second_time_are_refused(silent):
    """The shares come once an epoch: a replay of them in a later round is refused, whether the
    client answered the last round's stage 3 or not."""
    rnd = Epoch(rounds=3).until(Stage.MASKED_INPUT)
    first = entries_for(rnd, "c0")
    rnd.until(Stage.UNMASK).step(skip={"c0"} if silent else ())
    assert entries_for(rnd, "c0") == []
    refuse(
        rnd,
        "c0",
        relay(rnd.requests["c0"], first[:1]),
        "share ciphertexts were relayed to it a second time this epoch",
    )


@pytest.mark.parametrize("epoch", [EPOCH - 1, EPOCH, EPOCH + 1])
def test_a_share_ciphertext_is_bound_to_its_epoch(epoch):
    """A share re-encrypted under the right channel key authenticates only under the associated
    data of this epoch: the client then masks and the round sums; of another epoch, it refuses."""
    rnd = Epoch().until(Stage.MASKED_INPUT)
    entries = entries_for(rnd, "c0")
    sender, receiver, ciphertext = entries[0]
    key = rnd.clients[sender]._channel[receiver]  # the pair's channel key, as the sender holds it
    ad = _protocol.share_associated_data(EPOCH, sender, receiver)
    plaintext = primitives.decrypt(key, ciphertext, ad)
    ad = _protocol.share_associated_data(epoch, sender, receiver)
    forged = primitives.encrypt(key, plaintext, ad)
    request = relay(rnd.requests["c0"], [(sender, receiver, forged), *entries[1:]])
    if epoch != EPOCH:
        refuse(rnd, "c0", request, rf"from '{sender}' is invalid: AES-GCM authentication failed")
        return
    rnd.advance([rnd.answer("c0", request), *rnd.replies_to(skip={"c0"})])
    result = rnd.run_round()
    assert result.survivors == tuple(rnd.ids)
    assert np.array_equal(result.total, rnd.plain_sum(result))


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
    "unmask_more": lambda s: s.unmask_more([]),
    "aggregate": lambda s: s.aggregate([]),
}
# The server's six phases: the steps allowed in each, the harness stage reaching it and, for
# the phase "keyed" (entered after collect_shares and after each aggregate), the step taken
# there and the round whose packages the clients then hold.
PHASES = {
    "new": ("advertise_keys", None, None),
    "advertised": ("share_keys", Stage.ADVERTISE_KEYS, None),
    "sharing": ("collect_shares", Stage.SHARE_KEYS, None),
    "keyed": ("masked_input", Stage.SHARE_KEYS, ("collect_shares", EPOCH)),
    "keyed-again": ("masked_input", Stage.UNMASK, ("aggregate", EPOCH + 1)),
    "masking": ("unmask", Stage.MASKED_INPUT, None),
    "unmasking": ("unmask_more or aggregate", Stage.UNMASK, None),
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
        if name not in allowed.split(" or "):
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


def keyed_after(done: int, share_keys_skip: set[str], round_7_skip: set[str]) -> Epoch:
    """An epoch of rounds 7..9 whose server is between rounds after ``done`` of them (each
    started right after the last), ``share_keys_skip`` dropping at stage 1 and
    ``round_7_skip`` at stage 2 of round 7."""
    rnd = Epoch(rounds=3).until(Stage.SHARE_KEYS)
    replies = rnd.replies_to(skip=share_keys_skip)
    if not done:
        rnd.server.collect_shares(replies)
        return rnd
    rnd.advance(replies)
    for i in range(done):
        rnd.step(skip=round_7_skip if i == 0 else ())
        if i < done - 1:
            rnd.step()
    rnd.server.aggregate(rnd.replies_to())
    return rnd


@pytest.mark.parametrize(
    ("done", "dropped", "kwargs", "match"),
    [
        (0, None, {"round_id": 6}, r"round 6 cannot start: the epoch runs rounds 7\.\.9 now"),
        (0, None, {"round_id": 10}, r"round 10 cannot start: the epoch runs rounds 7\.\.9 now"),
        (1, None, {"round_id": 7}, r"round 7 cannot start: the epoch runs rounds 8\.\.9 now"),
        (1, None, {"round_id": 6}, r"round 6 cannot start: the epoch runs rounds 8\.\.9 now"),
        (2, None, {"round_id": 8}, r"round 8 cannot start: the epoch runs rounds 9\.\.9 now"),
        (2, None, {"round_id": 10}, r"round 10 cannot start: the epoch runs rounds 9\.\.9 now"),
        (
            3,
            None,
            {"round_id": 9},
            r"round 9 cannot start: the epoch \(rounds 7\.\.9\) has no round",
        ),
        (3, None, {"round_id": 10}, r"round 10 cannot start: the epoch \(rounds 7\.\.9\) has no"),
        (
            0,
            None,
            {"round_id": 7, "members": ["c0", "ghost"]},
            r"\['ghost'\] are not in the epoch \(no share package, or dropped\)",
        ),
        (1, 2, {"round_id": 8, "members": ["c0", "c1", "c4"]}, r"\['c4'\] are not in the epoch"),
        (0, 1, {"round_id": 7, "members": ["c0", "c1", "c4"]}, r"\['c4'\] are not in the epoch"),
    ],
)
def test_a_round_starts_only_inside_the_epoch_over_its_clients(done, dropped, kwargs, match):
    """A round comes after every round started and lies inside the epoch (rounds may be
    skipped); its members are in the epoch: they shared keys (stage 1) and sent their masked
    input in every round they were members of (stage 2). Any such error ends the epoch."""
    rnd = keyed_after(done, {"c4"} if dropped == 1 else set(), {"c4"} if dropped == 2 else set())
    in_epoch = frozenset(rnd.ids) - ({"c4"} if dropped else set())
    assert rnd.server.ready(EPOCH + 2) == (frozenset() if done == 3 else in_epoch)
    with pytest.raises(ProtocolError, match=match):
        rnd.server.masked_input(**kwargs)
    assert rnd.server.aborted and rnd.server.ready(EPOCH + 2) == frozenset()


@pytest.mark.parametrize("done", [0, 1, 2])
def test_the_server_may_skip_rounds(done):
    rnd = keyed_after(done, set(), set())
    assert rnd.server.ready(EPOCH + done - 1) == frozenset()  # started already, or none
    assert rnd.server.ready(EPOCH + 3) == frozenset()  # beyond the epoch
    assert rnd.server.ready(EPOCH + 2) == frozenset(rnd.ids)
    rnd.start(EPOCH + 2)  # skipping the rounds between
    result = rnd.run_round()
    assert result.round_id == EPOCH + 2 and result.survivors == tuple(rnd.ids)
    assert np.array_equal(result.total, rnd.plain_sum(result))
    assert rnd.finished and rnd.server.ready(EPOCH + 2) == frozenset()


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


NOT_THE_EPOCHS = "a share package that is not for the epoch's 3 rounds"


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda p: replace(p, round_id=p.round_id + 1), "'c0' replied for round 8, expected 7"),
        (fewer_receivers, "'c0' sent ciphertexts to .* expected exactly"),
        (reversed_receivers, "'c0' sent ciphertexts to .* expected exactly"),
        (lambda p: replace(p, self_mask_commitments=b"short"), NOT_THE_EPOCHS),
        (lambda p: replace(p, self_mask_commitments=p.self_mask_commitments[:64]), NOT_THE_EPOCHS),
        (
            lambda p: replace(p, self_mask_commitments=p.self_mask_commitments * 2),
            NOT_THE_EPOCHS,
        ),
        (
            lambda p: replace(
                p, seed_commitments=(p.seed_commitments[0][32:], *p.seed_commitments[1:])
            ),
            NOT_THE_EPOCHS,
        ),
        (lambda p: replace(p, sealed_seeds=p.sealed_seeds[:2]), NOT_THE_EPOCHS),
        (lambda p: replace(p, sealed_seeds=(*p.sealed_seeds, p.sealed_seeds[0])), NOT_THE_EPOCHS),
    ],
    ids=[
        "other-round",
        "fewer-receivers",
        "reordered-receivers",
        "short-commitment",
        "self-commitments-of-2-rounds",
        "self-commitments-of-6-rounds",
        "seed-commitments-of-2-rounds",
        "sealed-seeds-of-2-rounds",
        "sealed-seeds-of-4-rounds",
    ],
)
def test_server_refuses_a_malformed_share_package(tamper, match):
    rnd = Epoch(rounds=3).until(Stage.SHARE_KEYS)
    replies = rnd.replies_to()
    with pytest.raises(ProtocolError, match=match):
        rnd.advance([tamper(replies[0]), *replies[1:]])
    assert rnd.server.aborted and rnd.server.ready(EPOCH) == frozenset()


def test_a_client_set_up_for_other_rounds_is_refused():
    """A client whose configuration serves 2 rounds where the epoch serves 3 sends a package
    of the wrong size: the server refuses it at stage 1, before any round."""
    rnd = Epoch(rounds=3)
    rnd.clients["c2"] = SecAggClient("c2", replace(rnd.config, rounds=2))
    rnd.until(Stage.SHARE_KEYS)
    with pytest.raises(
        ProtocolError, match="'c2' sent a share package that is not for the epoch's"
    ):
        rnd.step()
    assert rnd.server.aborted and not rnd.results


def test_server_checks_masked_shapes():
    rnd = Epoch().until(Stage.MASKED_INPUT)
    replies = rnd.replies_to()
    wrong = replace(replies[0], masked=np.zeros(3, dtype=np.uint32))
    with pytest.raises(ProtocolError, match="shape"):
        rnd.server.unmask([wrong, *replies[1:]])


@pytest.mark.parametrize("round_id", [EPOCH, EPOCH + 1, EPOCH + 2])
def test_mismatched_seed_commitments_abort_the_epoch_set_up(round_id):
    """Both ends of a pair commit to each round's seed; a mismatch in any round (here of c1's
    commitment to its seed with c3) aborts at stage 1, before any round runs."""
    rnd = Epoch(rounds=3).until(Stage.SHARE_KEYS)
    replies = rnd.replies_to()
    package = replies[1]
    commitments = list(package.seed_commitments)
    i, at = package.receivers.index("c3"), (round_id - EPOCH) * 32
    commitments[i] = commitments[i][:at] + bytes(32) + commitments[i][at + 32 :]
    replies[1] = replace(package, seed_commitments=tuple(commitments))
    with pytest.raises(SecAggAbort, match="'c1' and 'c3' committed to different round seeds"):
        rnd.advance(replies)
    assert rnd.server.aborted and not rnd.results


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
        ("self mask", "c0", set(), None),
        ("self mask", "c4", set(), None),
        ("self mask", "c4", {"c2", "c3"}, "the self-mask seed of 'c4' does not match"),
        ("seal key", "c0", set(), None),
        ("seal key", "c3", set(), None),
        ("seal key", "c3", {"c2"}, "the sealed round seeds of 'c4' do not open"),
    ],
    ids=["self-used", "self-spare", "self-exactly-t", "seal-used", "seal-spare", "seal-exactly-t"],
)
@pytest.mark.parametrize("round_id", [EPOCH, EPOCH + 2])
def test_a_corrupted_share_is_outvoted_by_a_spare_or_aborts(
    secret, holder, silent, match, round_id
):
    """The server rebuilds each secret from the t shares of lowest Shamir index (c0 holds index
    1 of c4's secrets, c4 index 5) and checks what it rebuilt: a self-mask seed against its
    commitment, a seal key by opening the sealed seeds. A corrupted share among those t fails
    the check, and another t of the shares (with the spare that came) rebuild the secret; with
    exactly t shares the round aborts. Either way the sum is never wrong."""
    rnd = Epoch(rounds=3)
    while rnd.round_id < round_id:
        rnd.run_round()
    rnd = dropout_round(rnd, dropped={"c4"} if secret == "seal key" else set())
    replies = rnd.replies_to(skip=silent)
    tampered = [corrupt(r, secret, "c4") if r.sender == holder else r for r in replies]
    if match is None:
        rnd.advance(tampered)
        assert rnd.results[-1].round_id == round_id
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
    commitments[reply.receivers.index("c4" if reply.sender == "c0" else "c0")] = bytes(32 * 3)
    return replace(reply, seed_commitments=tuple(commitments))


def resealed(reply: SharePackage) -> SharePackage:
    """c4's sealed seeds of round 8 corrupted (those of rounds 7 and 9 intact)."""
    if reply.sender != "c4":
        return reply
    sealed = list(reply.sealed_seeds)
    sealed[1] = flip(sealed[1])
    return replace(reply, sealed_seeds=tuple(sealed))


def swapped(reply: SharePackage) -> SharePackage:
    """c4's sealed seeds of rounds 7 and 8 swapped: each opens, but only in its own round."""
    if reply.sender != "c4":
        return reply
    first, second, third = reply.sealed_seeds
    return replace(reply, sealed_seeds=(second, first, third))


@pytest.mark.parametrize(
    ("tamper", "dropped_in", "match"),
    [
        (resealed, EPOCH + 1, "the sealed round seeds of 'c4' do not open"),
        (resealed, EPOCH + 2, None),  # round 8's seeds are never opened
        (swapped, EPOCH, "the sealed round seeds of 'c4' do not open"),
        (swapped, EPOCH + 2, None),
        (recommitted, EPOCH, "the round seed of 'c4' and 'c0' does not match its commitment"),
        (recommitted, EPOCH + 2, "the round seed of 'c4' and 'c0' does not match"),
    ],
    ids=["sealed-8-in-8", "sealed-8-in-9", "swapped-in-7", "swapped-in-9", "commit-7", "commit-9"],
)
def test_round_seeds_of_a_dropped_node_that_do_not_check_abort_the_round(tamper, dropped_in, match):
    """The server opens a dropped node's sealed seeds of the round it dropped in only, under
    that round's associated data, and checks them against that round's commitments."""
    rnd = Epoch(rounds=3).until(Stage.SHARE_KEYS)
    rnd.advance([tamper(r) for r in rnd.replies_to()])
    while rnd.round_id < dropped_in:
        result = rnd.run_round()  # no dropout: no sealed seeds are opened
        assert np.array_equal(result.total, rnd.plain_sum(result))
    dropout_round(rnd, dropped={"c4"})  # its seal key is rebuilt, its round seeds opened
    if match is None:
        rnd.step()
        assert rnd.results[-1].survivors == ("c0", "c1", "c2", "c3")
        assert np.array_equal(rnd.results[-1].total, rnd.plain_sum(rnd.results[-1]))
        return
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
    "receivers": ("b",),
    "ciphertexts": (b"x",),
    "self_mask_commitments": b"c" * 32,
    "seed_commitments": (b"d" * 32,),
    "sealed_seeds": (b"s",),
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
            lambda: ShareKeysResponse(
                round_id=1, sender="a", **{**PACKAGE, "seed_commitments": (b"d" * 32,) * 2}
            ),
            "parallel fields differ .*seed_commitments",
        ),
        (
            lambda: MaskedInputRequest(
                round_id=1,
                receiver="a",
                neighbours=("b",),
                senders=("b",),
                receivers=(),
                ciphertexts=(),
            ),
            "parallel fields differ .*senders",
        ),
        (
            lambda: MaskedInputRequest(
                round_id=1, receiver="a", neighbours=[3], senders=(), receivers=(), ciphertexts=()
            ),
            "neighbours is a sequence of str",
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
            lambda: ShareKeysResponse(round_id=1, sender="a", **{**PACKAGE, "sealed_seeds": b"s"}),
            "sealed_seeds is a sequence of bytes",
        ),
        (
            lambda: ShareKeysResponse(
                round_id=1, sender="a", **{**PACKAGE, "self_mask_commitments": (b"c",)}
            ),
            "self_mask_commitments is bytes",
        ),
        (
            lambda: MaskedInputResponse(round_id=1, sender="a", masked=np.zeros(3)),
            "dtype uint32 or uint64",
        ),
        (
            lambda: MaskedInputResponse(
                round_id=1, sender="a", masked=np.zeros((2, 2), dtype=np.uint32)
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
    message = MaskedInputResponse(round_id=np.int64(2), sender="a", masked=source)
    source[0] = 99
    assert message.masked[0] == 0 and not message.masked.flags.writeable
    assert type(message.round_id) is int
    request = UnmaskRequest(round_id=1, receiver="a", survivors=["a", "b"], dropped=[])
    assert request.survivors == ("a", "b") and request.dropped == ()
    package = ShareKeysResponse(
        round_id=1,
        sender="a",
        **{
            **PACKAGE,
            "receivers": ["b"],
            "self_mask_commitments": bytearray(b"c" * 32),
            "sealed_seeds": [b"s", b"t"],
        },
    )
    assert package.receivers == ("b",) and package.sealed_seeds == (b"s", b"t")
    assert type(package.self_mask_commitments) is bytes
    relay = MaskedInputRequest(
        round_id=1, receiver="a", neighbours=["b"], senders=[], receivers=[], ciphertexts=[]
    )
    assert relay.neighbours == ("b",) and relay.ciphertexts == ()
    with pytest.raises(AttributeError):
        request.receiver = "b"
