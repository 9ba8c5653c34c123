"""graft.evaluate.audit: canaries and their candidates, exposure against ranks known by
construction (exact, sampled, capped, extrapolated), scores equal to the instruct objective's
loss, and the one-run epsilon lower bound against hand computations."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import optimize, stats

from graft.data.chat import DEFAULT_CHAT_TEMPLATE
from graft.data.tokenizer import bytes_tokenizer
from graft.errors import ConfigError, DataError
from graft.evaluate.audit import (
    SecretTemplate,
    candidate_secrets,
    conversation,
    epsilon_lower_bound,
    exposure,
    make_canaries,
    one_run_bound,
    p_value,
    reply_nll,
)
from graft.model.config import preset
from graft.model.transformer import LanguageModel
from graft.objectives.instruct import Instruct

THREE = SecretTemplate("the code for {tag} is {secret}", length=3)


@pytest.fixture(scope="module")
def random_model() -> LanguageModel:
    torch.manual_seed(0)
    config = preset("nano", vocab_size=262, max_seq_len=96, d_model=32, n_layers=1, n_heads=2)
    return LanguageModel(config).eval()


# -- canaries ----------------------------------------------------------------------------------


def test_secrets_number_every_string_of_the_space_once() -> None:
    assert THREE.space == 1000
    assert [THREE.secret(i) for i in (0, 7, 42, 999)] == ["000", "007", "042", "999"]
    assert all(THREE.index(THREE.secret(i)) == i for i in range(1000))
    letters = SecretTemplate("pw {secret}", "ab", 3)
    assert [letters.secret(i) for i in range(8)] == [
        "aaa", "aab", "aba", "abb", "baa", "bab", "bba", "bbb"
    ]  # fmt: skip


def test_a_template_must_end_with_its_secret() -> None:
    with pytest.raises(ConfigError, match="must end with"):
        SecretTemplate("{secret} is the code")


def test_canaries_are_distinct_and_seeded() -> None:
    canaries = make_canaries(THREE, 50, seed=3)
    assert len({c.secret for c in canaries}) == 50 and len({c.tag for c in canaries}) == 50
    assert canaries == make_canaries(THREE, 50, seed=3)
    assert canaries != make_canaries(THREE, 50, seed=4)
    assert canaries[0].text == f"the code for {canaries[0].tag} is {canaries[0].secret}"
    with pytest.raises(ConfigError, match="distinct secrets"):
        make_canaries(THREE, 1001, seed=0)


def test_candidates_are_the_other_secrets_sampled_or_all() -> None:
    sampled, exhaustive = candidate_secrets(THREE, "042", 300, seed=1)
    assert not exhaustive and len(set(sampled)) == 300 and "042" not in sampled
    assert sampled == candidate_secrets(THREE, "042", 300, seed=1)[0]
    every, exhaustive = candidate_secrets(THREE, "042", 5000, seed=1)
    assert exhaustive and sorted(every) == [THREE.secret(i) for i in range(1000) if i != 42]


# -- exposure ----------------------------------------------------------------------------------


def test_exposure_of_a_known_rank_is_exact_over_every_candidate() -> None:
    others = np.arange(999, dtype=float)  # the secret at 9.5 is beaten by 0..9: rank 11
    found = exposure(9.5, others, 1000)
    assert found.exhaustive and not found.capped and found.beaten_by == 10
    assert found.rank == 11 and found.sampled == pytest.approx(math.log2(1000 / 11))
    top = exposure(-1.0, others, 1000)  # the likeliest of all: the whole space's bits
    assert top.rank == 1 and top.sampled == pytest.approx(math.log2(1000))
    assert exposure(1e9, others, 1000).sampled == pytest.approx(0.0)


def test_a_sample_nobody_beats_caps_the_estimate_at_its_resolution() -> None:
    found = exposure(-1.0, np.arange(100, dtype=float), 10**6)
    assert found.capped and found.beaten_by == 0
    assert found.sampled == pytest.approx(math.log2(10**6) - math.log2(1 + (10**6 - 1) / 100))
    assert found.sampled == pytest.approx(math.log2(100), abs=0.01)


def test_the_skew_normal_extrapolates_past_the_sample() -> None:
    rng = np.random.default_rng(0)
    scores = stats.skewnorm.rvs(3, loc=10, scale=2, size=3000, random_state=rng)
    secret = float(stats.skewnorm.ppf(1e-4, 3, loc=10, scale=2))  # 1 in 10^4 is likelier
    found = exposure(secret, scores, 10**6)
    true = math.log2(10**6) - math.log2(1 + 1e-4 * (10**6 - 1))  # 13.3 bits
    assert found.capped and found.sampled < math.log2(3000) + 0.01  # the sample sees 11.6 at most
    assert found.extrapolated is not None and abs(found.extrapolated - true) < 1.0
    assert exposure(1.0, [2.0, 2.0, 2.0], 10).extrapolated is None  # no spread to fit


def test_sampled_exposure_is_close_to_the_exact_one_on_a_real_model(
    random_model: LanguageModel,
) -> None:
    tokenizer = bytes_tokenizer()
    items = [conversation("Text:", THREE.fill("qzkpw", THREE.secret(i)), "x") for i in range(1000)]
    scores = reply_nll(
        random_model, tokenizer, DEFAULT_CHAT_TEMPLATE, items, max_len=96, batch_size=256
    )
    by_secret = dict(zip((THREE.secret(i) for i in range(1000)), scores))
    ranked = sorted(by_secret, key=by_secret.__getitem__)
    assert by_secret[ranked[0]] < by_secret[ranked[-1]] - 1  # the model tells secrets apart
    for secret in (ranked[40], ranked[160]):  # true ranks 41 and 161: 4.6 and 2.6 bits
        others = [s for s in by_secret if s != secret]
        exact = exposure(by_secret[secret], [by_secret[s] for s in others], 1000)
        assert exact.exhaustive and exact.rank == pytest.approx(ranked.index(secret) + 1)
        # 500 of the 999: the share that beats the secret (4% at rank 41) is estimated to about
        # +-0.3 bits (one standard deviation), so 0.75 bits is a 2.3-sigma tolerance
        sample, _ = candidate_secrets(THREE, secret, 500, seed=0)
        estimate = exposure(by_secret[secret], [by_secret[s] for s in sample], 1000)
        assert not estimate.exhaustive and abs(estimate.sampled - exact.sampled) < 0.75


def test_scores_are_the_instruct_objectives_loss(random_model: LanguageModel) -> None:
    tokenizer = bytes_tokenizer()
    items = [conversation("Write a text message.", f"see you at {w}", "x") for w in ("six", "ten")]
    scores = reply_nll(random_model, tokenizer, DEFAULT_CHAT_TEMPLATE, items, max_len=64)
    sft = Instruct(items, items, tokenizer, DEFAULT_CHAT_TEMPLATE, 64)
    with torch.no_grad():
        for row, score in enumerate(scores):
            loss = sft.loss(random_model, sft.batch(sft.train, [row]))
            assert score == pytest.approx(float(loss.total), rel=1e-5)
    with pytest.raises(DataError, match="does not fit"):
        reply_nll(random_model, tokenizer, DEFAULT_CHAT_TEMPLATE, items, max_len=30)


# -- the one-run bound -------------------------------------------------------------------------


def test_no_right_guess_gives_no_bound() -> None:
    assert epsilon_lower_bound(100, 20, 0, 1e-5, 0.05) == 0.0
    assert epsilon_lower_bound(100, 20, 10, 0.0, 0.05) == 0.0  # chance level


def test_pure_dp_bound_matches_the_binomial_by_hand() -> None:
    # All 10 guesses right: P[Binomial(10, q) >= 10] = q^10 = 0.05 at q = 0.05^(1/10).
    q = 0.05**0.1
    assert epsilon_lower_bound(10, 10, 10, 0.0, 0.05) == pytest.approx(
        math.log(q / (1 - q)), abs=1e-5
    )
    assert p_value(10, 10, 10, math.log(q / (1 - q)), 0.0) == pytest.approx(0.05)


def test_the_delta_term_matches_the_theorem_by_hand() -> None:
    # m = 10, r = v = 2, delta = 0.01: p = q^2 + 2 m delta max(P[B = 1] / 1, P[B <= 1] / 2),
    # B ~ Binomial(2, q), i.e. q^2 + 0.2 max(2q(1 - q), (1 - q^2) / 2).
    def by_hand(epsilon: float) -> float:
        q = 1 / (1 + math.exp(-epsilon))
        return q * q + 0.2 * max(2 * q * (1 - q), (1 - q * q) / 2)

    for epsilon in (0.0, 0.3, 1.0, 2.5):
        assert p_value(10, 2, 2, epsilon, 0.01) == pytest.approx(by_hand(epsilon))
    root = optimize.brentq(lambda e: by_hand(e) - 0.5, 0, 5)
    assert epsilon_lower_bound(10, 2, 2, 0.01, 0.5) == pytest.approx(root, abs=1e-5)
    assert root == pytest.approx(0.569, abs=1e-3)


def test_the_bound_grows_with_right_guesses_and_confidence_spent() -> None:
    bounds = [epsilon_lower_bound(1000, r, r, 1e-5, 0.05) for r in (10, 50, 100, 200)]
    assert bounds[0] > 0 and bounds == sorted(bounds) and len(set(bounds)) == 4
    by_beta = [epsilon_lower_bound(1000, 100, 90, 1e-5, b) for b in (0.01, 0.05, 0.2)]
    assert 0 < by_beta[0] < by_beta[1] < by_beta[2]
    # delta only weakens what the guesses prove
    assert epsilon_lower_bound(1000, 100, 100, 1e-3, 0.05) < bounds[2]
    assert epsilon_lower_bound(1000, 100, 100, 0.0, 0.05) > bounds[2]


def test_one_run_bound_guesses_the_lowest_losses_in() -> None:
    members = [i % 2 == 0 for i in range(200)]
    perfect = [0.0 if member else 1.0 for member in members]
    found = one_run_bound(perfect, members, delta=1e-5, beta=0.05)
    assert found.members == 100 and found.canaries == 200
    assert all(g.correct == g.guesses for g in found.grid)
    assert (found.k, found.guesses, found.correct) == (100, 200, 200)
    ks = len(found.grid)
    assert found.epsilon == pytest.approx(epsilon_lower_bound(200, 200, 200, 1e-5, 0.05 / ks))
    assert [g.epsilon for g in found.grid] == sorted(g.epsilon for g in found.grid)
    rng = random.Random(0)
    noise = one_run_bound([rng.random() for _ in members], members, delta=1e-5)
    assert noise.epsilon == 0.0
    reversed_scores = one_run_bound([1 - s for s in perfect], members, delta=1e-5, ks=[5])
    assert reversed_scores.correct == 0 and reversed_scores.epsilon == 0.0
    with pytest.raises(ConfigError, match="between 1 and m / 2"):
        one_run_bound(perfect, members, delta=1e-5, ks=[101])
