"""What an honest client refuses, what the server refuses, and what the server learns.

A small harness runs an honest round up to any stage so that each test can tamper with one
request or reply (playing a malicious server or client) and check the refusal.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from cordiale.core.errors import CryptoError, ProtocolError, SecAggAbort, WireError
from cordiale.crypto import (
    FixedPointCodec,
    KeyAdvertisement,
    MaskedInputRequest,
    MaskedInputResponse,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    Share,
    ShareKeysRequest,
    ShareKeysResponse,
    Stage,
    UnmaskRequest,
    UnmaskResponse,
    expand_mask,
)

ROUND = 7


class Round:
    """An honest round whose requests and replies can be inspected and tampered with."""

    def __init__(
        self, n: int = 5, t: int = 3, degree: int | None = None, length: int = 16, bits: int = 32
    ) -> None:
        self.ids = [f"c{i}" for i in range(n)]
        self.config = SecAggConfig(
            round_id=ROUND,
            client_ids=tuple(self.ids),
            threshold=t,
            vector_length=length,
            bits=bits,
            degree=degree,
        )
        self.clients = {c: SecAggClient(c, self.config) for c in self.ids}
        self.server = SecAggServer(self.config)
        rng = np.random.default_rng(0)
        self.vectors = {
            c: rng.integers(0, 2**bits, length, dtype=self.config.dtype) for c in self.ids
        }
        self.requests: dict[str, object] = self.server.advertise_keys()
        self.stage = Stage.ADVERTISE_KEYS
        self.replies: list[object] = []

    def answer(self, client: str, request: object) -> object:
        c = self.clients[client]
        handlers = {
            Stage.ADVERTISE_KEYS: c.advertise_keys,
            Stage.SHARE_KEYS: c.share_keys,
            Stage.UNMASK: c.unmask,
            Stage.MASKED_INPUT: lambda r: c.masked_input(r, self.vectors[client]),
        }
        return handlers[request.stage](request)  # type: ignore[attr-defined]

    def step(self, skip: frozenset[str] = frozenset()) -> None:
        """Honest clients answer the current requests; the server produces the next ones."""
        self.replies = [self.answer(c, r) for c, r in self.requests.items() if c not in skip]
        following = [self.server.share_keys, self.server.masked_input, self.server.unmask]
        self.requests = following[self.stage](self.replies)
        self.stage = Stage(self.stage + 1)

    def until(self, stage: Stage) -> Round:
        while self.stage < stage:
            self.step()
        return self


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
    rnd = Round(n=3, t=2, length=length, bits=bits)
    codec = FixedPointCodec(clip=1.0, frac_bits=16, bits=bits)
    plain = codec.encode(np.full(length, 0.5))  # one constant word: maximally non-uniform
    rnd.vectors = {c: plain for c in rnd.ids}
    rnd.until(Stage.MASKED_INPUT).step()
    for reply in rnd.replies:
        masked = reply.masked  # type: ignore[attr-defined]
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


def test_server_only_relays_ciphertexts_unchanged():
    rnd = Round().until(Stage.SHARE_KEYS)
    rnd.step()
    sent = {
        (r.sender, rcv): ct
        for r in rnd.replies  # type: ignore[attr-defined]
        for rcv, ct in zip(r.receivers, r.ciphertexts, strict=True)
    }
    for receiver, request in rnd.requests.items():
        for sender, ct in zip(request.senders, request.ciphertexts, strict=True):  # type: ignore[attr-defined]
            assert sent[(sender, receiver)] == ct


# -- the honest client's refusals ----------------------------------------------------------


def refuse(
    rnd: Round, client: str, request: object, match: str, error: type[Exception] = SecAggAbort
) -> None:
    with pytest.raises(error, match=match):
        rnd.answer(client, request)
    assert rnd.clients[client].aborted and rnd.clients[client].next_stage is None
    with pytest.raises(ProtocolError, match="aborted"):
        rnd.answer(client, request)


def test_asking_for_both_shares_of_one_node_is_refused():
    rnd = Round().until(Stage.UNMASK)
    honest = rnd.requests["c0"]
    both = replace(honest, dropped=("c1",))
    assert "c1" in both.survivors
    refuse(
        rnd,
        "c0",
        both,
        r"consistency check failed: .* both the self-mask share and the "
        r"mask-key share of \['c1'\]",
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
    rnd = Round().until(Stage.UNMASK)
    refuse(rnd, "c0", replace(rnd.requests["c0"], survivors=survivors, dropped=dropped), match)


def test_a_dropped_neighbour_never_masked_with_is_not_asked_about():
    # c1 dropped before sharing keys: c0 never masked with it, so asking for its key share fails.
    rnd = Round().until(Stage.SHARE_KEYS)
    rnd.step(skip=frozenset({"c1"}))
    rnd.step()
    request = rnd.requests["c0"]
    assert "c1" not in request.survivors + request.dropped  # type: ignore[attr-defined]
    refuse(rnd, "c0", replace(request, dropped=("c1",)), r"unknown: \['c1'\]")


def test_replayed_unmask_request_cannot_extract_the_other_share():
    rnd = Round().until(Stage.UNMASK)
    honest = rnd.requests["c0"]
    rnd.answer("c0", honest)
    survivors = tuple(c for c in honest.survivors if c != "c1")  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="UNMASK already completed"):
        rnd.answer("c0", replace(honest, survivors=survivors, dropped=("c1",)))


@pytest.mark.parametrize("stage", [Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS, Stage.MASKED_INPUT])
def test_a_replayed_stage_is_refused(stage):
    rnd = Round().until(stage)
    request = rnd.requests["c0"]
    rnd.step()
    with pytest.raises(ProtocolError, match=f"{stage.name} already completed"):
        rnd.answer("c0", request)


def test_a_stage_out_of_order_is_refused():
    later = Round().until(Stage.MASKED_INPUT).requests["c0"]
    rnd = Round()
    with pytest.raises(ProtocolError, match="MASKED_INPUT requested out of order, expected"):
        rnd.answer("c0", replace(later, round_id=ROUND))
    assert rnd.clients["c0"].aborted is False  # a misrouted message does not abort


def test_wrong_round_and_wrong_receiver_are_refused():
    rnd = Round()
    with pytest.raises(ProtocolError, match="round 8"):
        rnd.answer("c0", replace(rnd.requests["c0"], round_id=ROUND + 1))
    with pytest.raises(ProtocolError, match="request for 'c1' delivered to client 'c0'"):
        rnd.answer("c0", rnd.requests["c1"])


def key_list(request: ShareKeysRequest) -> list[list]:
    return [list(request.client_ids), list(request.enc_public_keys), list(request.mask_public_keys)]


def with_keys(request: ShareKeysRequest, ids: list, enc: list, mask: list) -> ShareKeysRequest:
    return replace(
        request, client_ids=tuple(ids), enc_public_keys=tuple(enc), mask_public_keys=tuple(mask)
    )


def test_duplicate_public_keys_are_refused():
    rnd = Round().until(Stage.SHARE_KEYS)
    ids, enc, mask = key_list(rnd.requests["c0"])
    enc[ids.index("c2")] = enc[ids.index("c1")]
    refuse(rnd, "c0", with_keys(rnd.requests["c0"], ids, enc, mask), "public keys must be unique")
    ids, enc, mask = key_list(rnd.requests["c3"])
    mask[ids.index("c4")] = enc[ids.index("c3")]  # a neighbour "reusing" c3's own key
    refuse(rnd, "c3", with_keys(rnd.requests["c3"], ids, enc, mask), "must be unique")


def test_own_keys_must_be_echoed():
    rnd = Round().until(Stage.SHARE_KEYS)
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
    rnd = Round(n=8, t=2, degree=2).until(Stage.SHARE_KEYS)
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
    rnd = Round().until(Stage.SHARE_KEYS)
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


def ciphertexts(rnd: Round) -> dict[tuple[str, str], bytes]:
    """(sender, receiver) -> ciphertext from the stage-1 replies."""
    return {
        (r.sender, rcv): ct
        for r in rnd.replies  # type: ignore[attr-defined]
        for rcv, ct in zip(r.receivers, r.ciphertexts, strict=True)
    }


def relay(request: MaskedInputRequest, entries: list[tuple[str, str, bytes]]) -> MaskedInputRequest:
    senders, receivers, cts = zip(*entries, strict=True) if entries else ((), (), ())
    return replace(request, senders=senders, receivers=receivers, ciphertexts=cts)


def entries_for(rnd: Round, receiver: str) -> list[tuple[str, str, bytes]]:
    request = rnd.requests[receiver]
    return list(zip(request.senders, request.receivers, request.ciphertexts, strict=True))  # type: ignore[attr-defined]


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
    rnd = Round().until(Stage.MASKED_INPUT)
    request = relay(rnd.requests["c0"], tamper(entries_for(rnd, "c0"), ciphertexts(rnd)))
    with pytest.raises(SecAggAbort, match=match):
        rnd.clients["c0"].masked_input(request, rnd.vectors["c0"])
    assert rnd.clients["c0"].aborted


def test_a_wrong_input_vector_does_not_consume_the_stage():
    rnd = Round().until(Stage.MASKED_INPUT)
    client = rnd.clients["c0"]
    with pytest.raises(CryptoError, match="16 words of uint32"):
        client.masked_input(rnd.requests["c0"], np.zeros(16, dtype=np.uint64))
    assert client.next_stage is Stage.MASKED_INPUT
    assert isinstance(rnd.answer("c0", rnd.requests["c0"]), MaskedInputResponse)


# -- the server's refusals -----------------------------------------------------------------

SERVER_STEPS = ["advertise_keys", "share_keys", "masked_input", "unmask", "aggregate"]


@pytest.mark.parametrize("reached", range(6))
def test_every_invalid_server_transition_raises(reached):
    rnd = Round()  # the constructor already called advertise_keys
    for _ in range(min(reached, 4) - 1):
        rnd.step()
    if reached == 5:
        rnd.server.aggregate([rnd.answer(c, r) for c, r in rnd.requests.items()])
    if reached == 0:
        rnd.server = SecAggServer(rnd.config)
    for index, name in enumerate(SERVER_STEPS):
        if index == reached:
            continue
        method = getattr(rnd.server, name)
        with pytest.raises(ProtocolError, match=r"already done|out of order"):
            method() if name == "advertise_keys" else method([])


def test_server_refuses_everything_after_an_abort():
    rnd = Round()
    with pytest.raises(SecAggAbort):
        rnd.step(skip=frozenset({"c0", "c1", "c2"}))  # only 2 of 5 advertise, t = 3
    for call in (rnd.server.advertise_keys, lambda: rnd.server.masked_input([])):
        with pytest.raises(ProtocolError, match="aborted"):
            call()


def test_server_aborts_below_threshold_with_a_clear_message():
    rnd = Round()
    with pytest.raises(SecAggAbort, match="only 2 clients advertised keys, threshold is 3"):
        rnd.step(skip=frozenset({"c0", "c1", "c2"}))


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda rs: [*rs, rs[0]], "duplicate KeyAdvertisement from 'c0'"),
        (lambda rs: [replace(rs[0], sender="ghost"), *rs[1:]], "unexpected KeyAdvertisement"),
        (lambda rs: [replace(rs[0], round_id=ROUND + 1), *rs[1:]], "for round 8"),
        (lambda rs: [replace(rs[0], enc_public_key=b"short"), *rs[1:]], "not 32 bytes"),
        (lambda rs: ["not a message", *rs[1:]], "expected KeyAdvertisement, got str"),
    ],
)
def test_server_refuses_malformed_replies(tamper, match):
    rnd = Round()
    replies = [rnd.answer(c, r) for c, r in rnd.requests.items()]
    with pytest.raises(ProtocolError, match=match):
        rnd.server.share_keys(tamper(replies))


def test_server_excludes_clients_that_share_a_public_key():
    rnd = Round()
    replies = [rnd.answer(c, r) for c, r in rnd.requests.items()]
    copycat = replace(replies[1], mask_public_key=replies[0].mask_public_key)  # type: ignore[attr-defined]
    requests = rnd.server.share_keys([replies[0], copycat, *replies[2:]])
    assert set(requests) == {"c2", "c3", "c4"}


def test_server_checks_share_ciphertext_receivers_and_masked_shapes():
    rnd = Round().until(Stage.SHARE_KEYS)
    replies = [rnd.answer(c, r) for c, r in rnd.requests.items()]
    first: ShareKeysResponse = replies[0]  # type: ignore[assignment]
    short = replace(first, receivers=first.receivers[:-1], ciphertexts=first.ciphertexts[:-1])
    with pytest.raises(ProtocolError, match="expected exactly"):
        rnd.server.masked_input([short, *replies[1:]])
    rnd = Round().until(Stage.MASKED_INPUT)
    replies = [rnd.answer(c, r) for c, r in rnd.requests.items()]
    wrong = MaskedInputResponse(round_id=ROUND, sender="c0", masked=np.zeros(3, dtype=np.uint32))
    with pytest.raises(ProtocolError, match="shape"):
        rnd.server.unmask([wrong, *replies[1:]])


def unmask_replies(rnd: Round, skip: frozenset[str] = frozenset()) -> list[UnmaskResponse]:
    return [rnd.answer(c, r) for c, r in rnd.requests.items() if c not in skip]  # type: ignore[misc]


def corrupt(reply: UnmaskResponse, field: str) -> UnmaskResponse:
    shares = list(getattr(reply, field))
    share = Share.from_bytes(shares[0])
    shares[0] = Share(share.index, bytes(b ^ 0x5A for b in share.value)).to_bytes()
    return replace(reply, **{field: tuple(shares)})


def test_corrupted_share_is_detected_by_the_server():
    rnd = Round().until(Stage.UNMASK)
    replies = unmask_replies(rnd)
    with pytest.raises(SecAggAbort, match="inconsistent"):
        rnd.server.aggregate([corrupt(replies[0], "self_mask_shares"), *replies[1:]])
    rnd = Round().until(Stage.UNMASK)
    replies = unmask_replies(rnd, skip=frozenset({"c3", "c4"}))  # exactly t shares
    with pytest.raises(SecAggAbort, match="does not match its commitment"):
        rnd.server.aggregate([corrupt(replies[0], "self_mask_shares"), *replies[1:]])


def test_corrupted_key_share_of_a_dropped_client_is_detected():
    rnd = Round().until(Stage.MASKED_INPUT)
    rnd.step(skip=frozenset({"c4"}))
    replies = unmask_replies(rnd, skip=frozenset({"c3"}))  # exactly t holders of c4's key
    assert replies[0].key_owners == ("c4",)
    with pytest.raises(SecAggAbort, match="mask key of 'c4' does not match its public key"):
        rnd.server.aggregate([corrupt(replies[0], "key_shares"), *replies[1:]])


def test_server_refuses_answers_about_other_nodes_and_wrong_indices():
    rnd = Round().until(Stage.UNMASK)
    replies = unmask_replies(rnd)
    swapped = replace(replies[0], self_mask_owners=replies[1].self_mask_owners[::-1])
    with pytest.raises(ProtocolError, match="other nodes"):
        rnd.server.aggregate([swapped, *replies[1:]])
    rnd = Round().until(Stage.UNMASK)
    replies = unmask_replies(rnd)
    shares = list(replies[0].self_mask_shares)
    shares[0] = bytes([shares[0][0] % 5 + 1]) + shares[0][1:]
    with pytest.raises(ProtocolError, match="wrong index"):
        rnd.server.aggregate([replace(replies[0], self_mask_shares=tuple(shares)), *replies[1:]])


def test_server_aborts_early_when_a_needed_secret_lost_its_holders():
    rnd = Round(n=8, t=3, degree=2).until(Stage.MASKED_INPUT)
    victim = "c0"
    neighbours = sorted(rnd.config.neighbours(victim))
    with pytest.raises(SecAggAbort, match=f"self mask of '{victim}' has only 1 surviving"):
        rnd.step(skip=frozenset(neighbours))


# -- messages ------------------------------------------------------------------------------


def test_messages_validate_their_fields():
    with pytest.raises(WireError, match="parallel fields differ"):
        ShareKeysRequest(
            round_id=1,
            receiver="a",
            client_ids=("a", "b"),
            enc_public_keys=(b"x",),
            mask_public_keys=(b"x", b"y"),
        )
    with pytest.raises(WireError, match="key_owners"):
        UnmaskResponse(
            round_id=1,
            sender="a",
            self_mask_owners=(),
            self_mask_shares=(),
            key_owners=("b",),
            key_shares=(),
        )
    with pytest.raises(WireError, match="non-negative integer"):
        KeyAdvertisement(round_id=-1, sender="a", enc_public_key=b"", mask_public_key=b"")
    with pytest.raises(WireError, match="non-empty string"):
        UnmaskRequest(round_id=1, receiver="", survivors=(), dropped=())
    with pytest.raises(WireError, match="sequence of str"):
        UnmaskRequest(round_id=1, receiver="a", survivors=(1,), dropped=())  # type: ignore[arg-type]
    with pytest.raises(WireError, match="is bytes"):
        KeyAdvertisement(round_id=1, sender="a", enc_public_key="k", mask_public_key=b"")  # type: ignore[arg-type]
    with pytest.raises(WireError, match="dtype uint32 or uint64"):
        MaskedInputResponse(round_id=1, sender="a", masked=np.zeros(3))
    with pytest.raises(WireError, match="1-D"):
        MaskedInputResponse(round_id=1, sender="a", masked=np.zeros((2, 2), dtype=np.uint32))


def test_messages_are_immutable_and_normalised():
    source = np.arange(4, dtype=np.uint32)
    message = MaskedInputResponse(round_id=np.int64(2), sender="a", masked=source)
    source[0] = 99
    assert message.masked[0] == 0 and not message.masked.flags.writeable
    assert type(message.round_id) is int
    request = UnmaskRequest(round_id=1, receiver="a", survivors=["a", "b"], dropped=[])  # type: ignore[arg-type]
    assert request.survivors == ("a", "b") and request.dropped == ()
    with pytest.raises(AttributeError):
        request.receiver = "b"  # type: ignore[misc]
