"""End-to-end secure aggregation: correct sums with dropouts, clean aborts, SecAgg+ graphs."""

from __future__ import annotations

import itertools
from collections.abc import Collection

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from secagg_harness import draw_counts, drop_schedule

from cordiale.core.errors import ConfigError, CryptoError, SecAggAbort
from cordiale.crypto import (
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Stage,
    _protocol,
    neighbour_graph,
    run_protocol,
    run_rounds,
    run_secagg_round,
)
from cordiale.crypto.messages import MAX_EPOCH_ROUNDS

CLIP = 1.0


def ids(n: int) -> list[str]:
    return [f"site-{i:02d}" for i in range(n)]


def random_inputs(n: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: rng.uniform(-CLIP, CLIP, length) for c in ids(n)}


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_sum_is_exact_within_quantisation_with_dropouts_at_every_stage(data):
    n = data.draw(st.integers(3, 8), label="n")
    t = data.draw(st.integers(2, n), label="t")
    counts = draw_counts(data, len(Stage), n - t)
    order = data.draw(st.permutations(ids(n)))
    inputs = random_inputs(n, data.draw(st.integers(1, 40)), data.draw(st.integers(0, 2**31)))
    drops = drop_schedule(list(order), counts)
    result = run_secagg_round(inputs, clip=CLIP, frac_bits=16, threshold=t, drop_at=drops)
    gone_before_input = drops[Stage.ADVERTISE_KEYS] | drops[Stage.SHARE_KEYS]
    expected_survivors = set(ids(n)) - gone_before_input - drops[Stage.MASKED_INPUT]
    assert set(result.survivors) == expected_survivors
    expected = sum(inputs[c] for c in result.survivors)
    assert np.abs(result.total - expected).max() <= result.quantisation_bound
    assert result.quantisation_bound == len(expected_survivors) * 2.0**-17


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 7), seed=st.integers(0, 2**31), data=st.data())
def test_weighted_sum_and_total_weight(n, seed, data):
    rng = np.random.default_rng(seed)
    weights = {c: int(rng.integers(0, 500)) for c in ids(n)}
    updates = {c: rng.uniform(-1, 1, 5) for c in ids(n)}
    weighted = {c: weights[c] * updates[c] for c in ids(n)}  # clip must cover max weight
    dropped = data.draw(st.sets(st.sampled_from(ids(n)), max_size=n - 2))
    result = run_secagg_round(
        weighted,
        clip=500.0,
        frac_bits=12,
        threshold=2,
        weights=weights,
        drop_at={Stage.MASKED_INPUT: dropped},
    )
    assert result.total_weight == sum(weights[c] for c in result.survivors)
    expected = sum(weighted[c] for c in result.survivors)
    assert np.abs(result.total - expected).max() <= result.quantisation_bound
    if result.total_weight:
        mean = sum(weights[c] * updates[c] for c in result.survivors) / result.total_weight
        assert np.abs(result.mean() - mean).max() <= result.quantisation_bound


def label(value: object) -> str:
    """A test id: "1@MASKED_INPUT+2@UNMASK" for a drop count per stage, else the value."""
    if isinstance(value, dict):
        return "+".join(f"{n}@{Stage(s).name}" for s, n in value.items())
    return str(value)


@pytest.mark.parametrize(
    ("counts", "survivors"),
    [
        ({Stage.ADVERTISE_KEYS: 3}, 4),
        ({Stage.SHARE_KEYS: 3}, 4),
        ({Stage.MASKED_INPUT: 3}, 4),
        ({Stage.UNMASK: 3}, 7),  # silent survivors: unmasked from exactly t others' shares
        ({Stage.MASKED_INPUT: 1, Stage.UNMASK: 2}, 6),  # and a seal key from exactly t shares
    ],
    ids=label,
)
def test_dropping_exactly_n_minus_t_still_sums(counts, survivors):
    inputs = random_inputs(7, 10, seed=len(counts))
    drops = drop_schedule(ids(7), list(counts.values()), list(counts))
    result = run_secagg_round(inputs, clip=CLIP, threshold=4, drop_at=drops)
    assert len(result.survivors) == survivors
    expected = sum(inputs[c] for c in result.survivors)
    assert np.abs(result.total - expected).max() <= result.quantisation_bound


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ({Stage.ADVERTISE_KEYS: 4}, "only 3 clients advertised keys"),
        ({Stage.SHARE_KEYS: 4}, "only 3 clients shared keys"),
        ({Stage.MASKED_INPUT: 4}, "only 3 clients sent masked inputs"),
        ({Stage.UNMASK: 4}, "cannot reconstruct the self mask of 'site-00': 3 shares received"),
        (
            {Stage.MASKED_INPUT: 1, Stage.UNMASK: 3},
            "cannot reconstruct the self mask of 'site-01': 3 shares received",
        ),
        (
            {Stage.MASKED_INPUT: 2, Stage.UNMASK: 2},
            "cannot reconstruct the self mask of 'site-02': 3 shares received",
        ),
    ],
    ids=label,
)
def test_fewer_than_t_survivors_abort_with_a_clear_message(counts, match):
    inputs = random_inputs(7, 10, seed=1)
    drops = drop_schedule(ids(7), list(counts.values()), list(counts))
    with pytest.raises(SecAggAbort, match=rf"{match}.*threshold is 4") as info:
        run_secagg_round(inputs, clip=CLIP, threshold=4, drop_at=drops)
    assert "aborted" in str(info.value)
    assert info.value.public_message == "secure aggregation aborted"


def test_dropouts_spread_over_stages_abort_when_they_add_up_past_n_minus_t():
    inputs = random_inputs(6, 4, seed=2)
    drops = {
        Stage.SHARE_KEYS: {"site-00"},
        Stage.MASKED_INPUT: {"site-01"},
        Stage.UNMASK: {"site-02"},
    }
    # Round members site-01..05, survivors site-02..05; only site-03..05 answer stage 3.
    with pytest.raises(
        SecAggAbort, match="self mask of 'site-02': 3 shares received, threshold is 4"
    ):
        run_secagg_round(inputs, clip=CLIP, threshold=4, drop_at=drops)


@pytest.mark.parametrize("bits", [32, 64])
def test_ring_sum_is_exact_on_raw_words(bits):
    dtype = np.uint32 if bits == 32 else np.uint64
    rng = np.random.default_rng(bits)
    config = SecAggConfig(
        epoch_id=3, client_ids=tuple(ids(6)), threshold=3, vector_length=64, bits=bits
    )
    vectors = {c: rng.integers(0, 2**bits, 64, dtype=dtype, endpoint=False) for c in ids(6)}
    result = run_protocol(config, vectors, drop_at={Stage.MASKED_INPUT: {"site-05"}})
    expected = np.zeros(64, dtype=dtype)
    for c in result.survivors:
        expected += vectors[c]
    assert np.array_equal(result.total, expected)
    assert result.round_id == 3


def test_large_values_pick_a_64_bit_ring_and_shapes_are_kept():
    rng = np.random.default_rng(5)
    inputs = {c: rng.uniform(-1e4, 1e4, (2, 3)) for c in ids(4)}
    result = run_secagg_round(inputs, clip=1e4, frac_bits=20)
    assert result.codec.bits == 64 and result.total.shape == (2, 3)
    assert np.abs(result.total - sum(inputs.values())).max() <= result.quantisation_bound


def test_stochastic_rounding_round():
    inputs = random_inputs(4, 50, seed=9)
    result = run_secagg_round(
        inputs, clip=CLIP, frac_bits=10, stochastic=True, rng=np.random.default_rng(0)
    )
    assert result.quantisation_bound == 4 * 2.0**-10
    assert np.abs(result.total - sum(inputs.values())).max() <= result.quantisation_bound


# -- several rounds of one epoch ------------------------------------------------------------


def random_words(clients: list[str], length: int, bits: int, rng: np.random.Generator) -> dict:
    dtype = np.uint32 if bits == 32 else np.uint64
    return {c: rng.integers(0, 2**bits, length, dtype=dtype) for c in clients}


def ring_sum(words: dict[str, np.ndarray], survivors: Collection[str]) -> np.ndarray:
    total = np.zeros_like(next(iter(words.values())))
    for c in survivors:
        total += words[c]
    return total


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_every_round_of_an_epoch_sums_exactly_with_dropouts(data):
    n = data.draw(st.integers(4, 8), label="n")
    t = data.draw(st.integers(2, n), label="t")
    bits = data.draw(st.sampled_from([32, 64]), label="bits")
    epoch = data.draw(st.integers(0, 10**6), label="epoch")
    rounds_run = data.draw(st.integers(2, 4), label="rounds run")
    config = SecAggConfig(
        epoch_id=epoch,
        client_ids=tuple(ids(n)),
        threshold=t,
        vector_length=8,
        bits=bits,
        rounds=rounds_run + data.draw(st.integers(0, 2), label="rounds left over"),
    )
    members, schedules, expected = set(ids(n)), [], []
    for i in range(rounds_run):
        stages = list(Stage) if i == 0 else [Stage.MASKED_INPUT, Stage.UNMASK]
        order = data.draw(st.permutations(sorted(members)))
        counts = draw_counts(data, len(stages), len(members) - t)
        schedule = drop_schedule(list(order), counts, stages)
        # Dropping before or at stage 2 leaves the epoch; dropping at stage 3 does not.
        for stage in (Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT):
            members -= schedule.get(stage, set())
        schedules.append(schedule)
        expected.append(set(members))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31), label="seed"))
    rounds = [random_words(ids(n), 8, bits, rng) for _ in schedules]
    results = run_rounds(config, rounds, schedules)
    assert [r.round_id for r in results] == [epoch + i for i in range(len(rounds))]
    for result, words, survivors in zip(results, rounds, expected, strict=True):
        assert set(result.survivors) == survivors
        assert np.array_equal(result.total, ring_sum(words, survivors))


def withstands(config: SecAggConfig, epoch: set[str], answering: set[str]) -> bool:
    """Whether a round over the clients still in the ``epoch`` succeeds with no client left out
    when only ``answering`` answer stage 3: each keeps t answering members of its closed
    neighbourhood (they hold shares of its self mask, or of its seal key if it dropped)."""
    t = config.threshold
    return all(len((config.neighbours(v) | {v}) & answering) >= t for v in epoch)


@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_a_long_secagg_plus_epoch_sums_every_round_exactly_with_dropouts(data):
    """20 clients, degree 6, t = 3, 5 rounds from one key set-up: each round some clients drop
    at stage 2 (they leave the epoch) or are silent at stage 3 (they come back next round), as
    many as the graph tolerates; every round's sum is exact."""
    n, rounds = 20, 5
    config = SecAggConfig(
        epoch_id=data.draw(st.integers(0, 10**6), label="epoch"),
        client_ids=tuple(ids(n)),
        threshold=3,
        vector_length=8,
        bits=data.draw(st.sampled_from([32, 64]), label="bits"),
        degree=6,
        graph_seed=data.draw(st.binary(min_size=4, max_size=4), label="graph seed"),
        rounds=rounds,
    )
    epoch, schedules, expected = set(ids(n)), [], []
    for _ in range(rounds):
        order = data.draw(st.permutations(sorted(epoch)))
        stages = data.draw(
            st.lists(st.sampled_from([Stage.MASKED_INPUT, Stage.UNMASK]), min_size=4, max_size=4)
        )
        schedule: dict[Stage, set[str]] = {Stage.MASKED_INPUT: set(), Stage.UNMASK: set()}
        for client, stage in zip(order, stages, strict=False):
            answering = epoch - schedule[Stage.MASKED_INPUT] - schedule[Stage.UNMASK] - {client}
            if withstands(config, epoch, answering):
                schedule[stage].add(client)
        expected.append(epoch - schedule[Stage.MASKED_INPUT])
        epoch -= schedule[Stage.MASKED_INPUT]
        schedules.append(schedule)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31), label="seed"))
    words = [random_words(ids(n), 8, config.bits, rng) for _ in range(rounds)]
    results = run_rounds(config, words, schedules)
    assert [r.round_id for r in results] == list(config.round_ids)
    for result, vectors, survivors in zip(results, words, expected, strict=True):
        assert set(result.survivors) == survivors
        assert np.array_equal(result.total, ring_sum(vectors, survivors))
    for i in range(rounds - 1):  # silent at stage 3, still in the epoch: in the next round
        back = schedules[i][Stage.UNMASK] - schedules[i + 1][Stage.MASKED_INPUT]
        assert back <= set(results[i + 1].survivors)


def spread(config: SecAggConfig, k: int) -> list[str]:
    """k clients, pairwise not neighbours where the graph allows it."""
    chosen: list[str] = []
    for c in config.client_ids:
        if all(c not in config.neighbours(o) for o in chosen):
            chosen.append(c)
    rest = [c for c in config.client_ids if c not in chosen]
    return (chosen + rest)[:k]


@pytest.mark.parametrize(("n", "degree"), [(6, None), (12, 4)])
def test_dropouts_at_stages_2_and_3_in_successive_rounds(n, degree):
    config = SecAggConfig(
        epoch_id=20,
        client_ids=tuple(ids(n)),
        threshold=3,
        vector_length=16,
        degree=degree,
        graph_seed=b"epoch",
        rounds=4,
    )
    a, b, c = spread(config, 3)
    d, e = sorted(config.neighbours(c) - {a})[:2]  # they hold shares of c's self-mask seed
    schedules = [
        {Stage.MASKED_INPUT: {a}},  # a leaves the epoch: it is in no later round
        {Stage.UNMASK: {b}},  # b is silent: its self mask is rebuilt from the others' shares
        {Stage.UNMASK: {c, d}},  # c and d are silent: exactly t holders of c's secrets answer
        {},  # b, c and d take part again
    ]
    rounds = [random_words(ids(n), 16, 32, np.random.default_rng(i)) for i in range(4)]
    results = run_rounds(config, rounds, schedules)
    assert [r.round_id for r in results] == [20, 21, 22, 23]
    everyone = set(ids(n))
    assert [set(r.survivors) for r in results] == [everyone - {a}] * 4
    for result, words in zip(results, rounds, strict=True):
        assert np.array_equal(result.total, ring_sum(words, result.survivors))
    # Exactly t holders of c's self-mask seed answered stage 3: one more silent is fatal (to c,
    # or to a survivor earlier in the order that also lost a holder).
    schedules[2] = {Stage.UNMASK: {c, d, e}}
    with pytest.raises(SecAggAbort, match=r"self mask of '.*': 2 shares received, threshold is 3"):
        run_rounds(config, rounds, schedules)


def test_a_client_left_out_of_a_round_takes_part_in_a_later_one():
    config = SecAggConfig(
        epoch_id=0, client_ids=tuple(ids(4)), threshold=2, vector_length=4, rounds=3
    )
    rounds = [random_words(ids(4), 4, 32, np.random.default_rng(i)) for i in range(3)]
    rounds[1].pop("site-03")  # no vector: not a member of round 1, but still in the epoch
    results = run_rounds(config, rounds)
    assert [r.survivors for r in results] == [tuple(ids(4)), tuple(ids(3)), tuple(ids(4))]
    assert all(
        np.array_equal(r.total, ring_sum(w, r.survivors))
        for r, w in zip(results, rounds, strict=True)
    )


# -- SecAgg+ -------------------------------------------------------------------------------


def tolerated(graph: dict[str, frozenset[str]], drops: dict[Stage, set[str]], t: int) -> bool:
    """Sufficient condition for success: every client that shared keys keeps >= t live members
    of its closed neighbourhood until the end."""
    alive = set(graph)
    for stage in Stage:
        alive -= drops.get(stage, set())
    shared = (
        set(graph) - drops.get(Stage.ADVERTISE_KEYS, set()) - drops.get(Stage.SHARE_KEYS, set())
    )
    return all(len((graph[v] | {v}) & alive) >= t for v in shared)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_secagg_plus_sums_correctly_with_dropouts_within_tolerance(data):
    n = data.draw(st.integers(8, 16), label="n")
    k = data.draw(st.integers(3, 6), label="k")
    t = data.draw(st.integers(2, (k + 1) // 2 + 1), label="t")
    seed = data.draw(st.binary(min_size=4, max_size=4), label="graph seed")
    order = data.draw(st.permutations(ids(n)))
    counts = [data.draw(st.integers(0, 2)) for _ in Stage]
    drops = drop_schedule(list(order), counts)
    inputs = random_inputs(n, 16, seed=n * k)
    graph = neighbour_graph(ids(n), k, seed)
    try:
        result = run_secagg_round(
            inputs, clip=CLIP, threshold=t, degree=k, graph_seed=seed, drop_at=drops
        )
    except SecAggAbort:
        assert not tolerated(graph, drops, t)
        return
    expected = sum(inputs[c] for c in result.survivors)
    assert np.abs(result.total - expected).max() <= result.quantisation_bound


def test_secagg_plus_with_a_known_tolerable_schedule():
    n, k, t = 20, 6, 3
    inputs = random_inputs(n, 30, seed=4)
    drops = {
        Stage.SHARE_KEYS: {"site-03"},
        Stage.MASKED_INPUT: {"site-11"},
        Stage.UNMASK: {"site-17"},
    }
    assert tolerated(neighbour_graph(ids(n), k, b"s"), drops, t)
    result = run_secagg_round(
        inputs, clip=CLIP, threshold=t, degree=k, graph_seed=b"s", drop_at=drops
    )
    assert len(result.survivors) == 18
    assert np.abs(result.total - sum(inputs[c] for c in result.survivors)).max() <= 18 * 2**-17


@pytest.mark.parametrize(("n", "k"), [(8, 2), (8, 3), (9, 3), (9, 4), (10, 5), (7, 6), (6, 9)])
def test_harary_graph_is_symmetric_regular_and_k_connected(n, k):
    graph = neighbour_graph(ids(n), k, b"seed")
    for v, nbrs in graph.items():
        assert v not in nbrs and all(v in graph[u] for u in nbrs)
    degrees = sorted(len(nbrs) for nbrs in graph.values())
    k_eff = min(k, n - 1)
    assert degrees[0] == k_eff and degrees[-1] <= k_eff + 1
    assert sum(d > k_eff for d in degrees) <= 1
    for removed in itertools.combinations(ids(n), k_eff - 1):
        assert _connected({v: nbrs - set(removed) for v, nbrs in graph.items() if v not in removed})


def test_graph_depends_on_seed_not_on_order():
    a = neighbour_graph(ids(12), 4, b"one")
    assert a == neighbour_graph(list(reversed(ids(12))), 4, b"one")
    assert a != neighbour_graph(ids(12), 4, b"two")
    complete = neighbour_graph(ids(5), 4)
    assert all(len(nbrs) == 4 for nbrs in complete.values())


@pytest.mark.parametrize(
    ("client_ids", "degree", "match"),
    [(["a", "a", "b"], 1, "distinct"), (["a", ""], 1, "non-empty"), (["a", "b"], 0, "degree")],
)
def test_bad_graph_parameters(client_ids, degree, match):
    with pytest.raises(CryptoError, match=match):
        neighbour_graph(client_ids, degree)


def _connected(graph: dict[str, set[str]]) -> bool:
    start = next(iter(graph))
    seen, frontier = {start}, [start]
    while frontier:
        for u in graph[frontier.pop()]:
            if u not in seen:
                seen.add(u)
                frontier.append(u)
    return seen == set(graph)


# -- configuration and driver errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"client_ids": ("a",)}, "at least 2 clients"),
        ({"threshold": 1}, "threshold lies in 2..5"),
        ({"threshold": 6}, "threshold lies in 2..5"),
        ({"degree": 2, "threshold": 4}, "threshold lies in 2..3"),
        ({"vector_length": 0}, "vector_length"),
        ({"bits": 16}, "32 or 64"),
        ({"epoch_id": -1}, "epoch_id"),
        ({"client_ids": tuple(ids(300)), "threshold": 2}, "exceeds the 255 shares"),
        ({"rounds": 0}, r"an epoch serves 1\.\.100 rounds, got 0"),
        ({"rounds": -3}, r"an epoch serves 1\.\.100 rounds, got -3"),
        ({"rounds": MAX_EPOCH_ROUNDS + 1}, r"an epoch serves 1\.\.100 rounds, got 101"),
        ({"rounds": True}, "rounds is an integer, got True"),
        ({"rounds": 2.0}, "rounds is an integer, got 2.0"),
        ({"rounds": "3"}, "rounds is an integer, got '3'"),
    ],
)
def test_bad_config_is_refused(kwargs, match):
    base = {"epoch_id": 0, "client_ids": tuple(ids(5)), "threshold": 3, "vector_length": 4}
    with pytest.raises(CryptoError, match=match):
        SecAggConfig(**{**base, **kwargs})


@pytest.mark.parametrize(("epoch_id", "rounds"), [(0, 1), (12, 5), (3, MAX_EPOCH_ROUNDS)])
def test_an_epoch_serves_its_rounds(epoch_id, rounds):
    config = SecAggConfig(
        epoch_id=epoch_id, client_ids=tuple(ids(3)), threshold=2, vector_length=1, rounds=rounds
    )
    assert config.round_ids == range(epoch_id, epoch_id + rounds)
    assert SecAggConfig(epoch_id=0, client_ids=("a", "b"), threshold=2, vector_length=1).rounds == 1


def test_large_federation_needs_secagg_plus():
    config = SecAggConfig(
        epoch_id=0, client_ids=tuple(ids(300)), threshold=3, vector_length=1, degree=8
    )
    assert len(config.neighbours("site-00")) == 8


def test_driver_errors():
    inputs = random_inputs(3, 2, 0)
    with pytest.raises(ConfigError, match="unknown clients"):
        run_secagg_round(inputs, clip=CLIP, drop_at={Stage.UNMASK: {"nobody"}})
    for stage in (4, 7):  # there is no stage 4 (recovery) any more
        with pytest.raises(ConfigError, match=rf"stage {stage}; stages are 0\.\.3"):
            run_secagg_round(inputs, clip=CLIP, drop_at={stage: set()})
    with pytest.raises(ConfigError, match="one shape"):
        run_secagg_round({**inputs, "site-00": np.zeros(3)}, clip=CLIP)
    with pytest.raises(ConfigError, match="at least 2"):
        run_secagg_round({"a": np.zeros(2)}, clip=CLIP)
    with pytest.raises(ConfigError, match="weights"):
        run_secagg_round(inputs, clip=CLIP, weights={"site-00": 1})
    config = SecAggConfig(
        epoch_id=0, client_ids=tuple(ids(3)), threshold=2, vector_length=2, rounds=2
    )
    with pytest.raises(ConfigError, match="one vector per client"):
        run_protocol(config, {})
    vectors = {c: np.zeros(2, dtype=np.uint32) for c in ids(3)}
    with pytest.raises(ConfigError, match="one schedule per round"):
        run_rounds(config, [vectors, vectors], [None])
    with pytest.raises(ConfigError, match="3 rounds given, the epoch serves 2"):
        run_rounds(config, [vectors] * 3)
    with pytest.raises(ConfigError, match="not in the config"):
        run_rounds(config, [vectors, {**vectors, "nobody": vectors["site-00"]}])
    with pytest.raises(ConfigError, match="one vector per client"):
        run_rounds(config, [])


def test_drop_at_accepts_stage_numbers():
    inputs = random_inputs(4, 3, 0)
    result = run_secagg_round(inputs, clip=CLIP, threshold=2, drop_at={2: ["site-01"]})
    assert "site-01" not in result.survivors


# -- asking only some survivors to unmask (spare_holders) -----------------------------------


def _config(
    n: int, t: int, degree: int | None, *, rounds: int = 1, length: int = 3
) -> SecAggConfig:
    return SecAggConfig(
        epoch_id=1,
        client_ids=tuple(ids(n)),
        threshold=t,
        vector_length=length,
        degree=degree,
        graph_seed=b"spares",
        rounds=rounds,
    )


def _unmask_requests(config: SecAggConfig, spare_holders: int | None) -> tuple[int, SecAggServer]:
    """Run one round to stage 3; the number of survivors asked, and the server."""
    clients = {c: SecAggClient(c, config) for c in config.client_ids}
    server = SecAggServer(config, spare_holders=spare_holders)
    adverts = [clients[c].advertise_keys(r) for c, r in server.advertise_keys().items()]
    shares = [clients[c].share_keys(r) for c, r in server.share_keys(adverts).items()]
    server.collect_shares(shares)
    words = random_words(
        list(config.client_ids), config.vector_length, 32, np.random.default_rng(0)
    )
    masked = [
        clients[c].masked_input(r, words[c])
        for c, r in server.masked_input(config.epoch_id).items()
    ]
    return len(server.unmask(masked)), server


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "spare", "asked"),
    [
        (40, None, 21, 0, 21),  # complete graph: any t survivors hold a share of every secret
        (40, None, 21, 2, 23),
        (20, None, 11, None, 20),  # off: every survivor
        (100, 10, 6, 0, range(55, 80)),  # each closed neighbourhood of 11 keeps 6 holders
        (100, 10, 6, 1, range(60, 90)),
        (8, 3, 3, 5, 8),  # more spares than holders: everyone
    ],
)
def test_only_enough_survivors_are_asked_to_unmask(n, degree, threshold, spare, asked):
    config = _config(n, threshold, degree)
    count, server = _unmask_requests(config, spare)
    assert count in asked if isinstance(asked, range) else count == asked
    # every secret has t + spare holders among those asked, where it has that many at all
    chosen = server.asked
    for owner in config.client_ids:
        holders = (config.neighbours(owner) | {owner}) & chosen
        assert len(holders) >= min(threshold + (spare or 0), len(config.neighbours(owner)) + 1)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_silent_survivors_asked_to_unmask_are_made_up_for_by_others(data):
    """With spare_holders, a survivor asked at stage 3 that stays silent costs one more
    exchange with the survivors not asked yet; the sum is exact while each secret keeps t
    holders among the survivors who answer."""
    n, degree, t = 12, 5, 3
    spare = data.draw(st.sampled_from([0, 1]), label="spare")
    config = _config(n, t, degree, rounds=2, length=5)
    silent = set(data.draw(st.lists(st.sampled_from(ids(n)), max_size=3, unique=True)))
    closed = {c: config.neighbours(c) | {c} for c in config.client_ids}
    rounds = [random_words(ids(n), 5, 32, np.random.default_rng(i)) for i in range(2)]
    schedule = {Stage.UNMASK: silent}
    if all(len(closed[c] - silent) >= t for c in config.client_ids):
        results = run_rounds(config, rounds, [schedule, {}], spare_holders=spare)
        for result, words in zip(results, rounds, strict=True):
            assert set(result.survivors) == set(ids(n))  # silent at stage 3: still counted
            assert np.array_equal(result.total, ring_sum(words, result.survivors))
    else:
        with pytest.raises(SecAggAbort, match=r"shares received, threshold is 3"):
            run_rounds(config, rounds, [schedule, {}], spare_holders=spare)


def test_a_follow_up_asks_only_survivors_not_asked_yet():
    count, server = _unmask_requests(_config(40, 21, None), 0)
    assert count == 21
    first = server.asked
    more = server.unmask_more([])  # every survivor asked was silent
    assert set(more) == set(ids(40)) - first  # only those can still help
    with pytest.raises(SecAggAbort, match="self mask of 'site-00': 0 shares received"):
        server.aggregate([])  # and they were silent too


@pytest.mark.parametrize("bad", [-1, True, 1.5, "1"])
def test_spare_holders_must_be_none_or_a_count(bad):
    config = SecAggConfig(epoch_id=1, client_ids=tuple(ids(4)), threshold=2, vector_length=3)
    with pytest.raises(CryptoError, match="spare_holders is None or an integer >= 0"):
        SecAggServer(config, spare_holders=bad)


def test_batched_seed_commitments_are_the_single_ones():
    """A client commits to all rounds at once; the server checks one round's seed at a time."""
    seeds = _protocol.round_seeds(bytes(range(32)), 3)
    assert len(set(seeds)) == 3 and all(len(s) == 32 for s in seeds)
    batch = _protocol.seed_commitments(range(5, 8), "b", "a", seeds)
    singles = [
        _protocol.seed_commitment(r, "a", "b", s) for r, s in zip(range(5, 8), seeds, strict=True)
    ]
    assert batch == b"".join(singles)
