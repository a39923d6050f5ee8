"""Bootstrap intervals against known answers: coverage of a known mean on clustered synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s2s.metrics.bootstrap import (
    bootstrap_ci,
    bootstrap_set_ci,
    cluster_bootstrap_ci,
    jackknife_set_ci,
    paired_difference_ci,
)

# 400 draws: the percentile interval's expected coverage here is ~0.93 (measured over 1000 draws; it
# under-covers a little with 20 clusters), and 400 draws put the observed rate within +-0.026 (2 SD).
N_PROMPTS, N_SEEDS, DRAWS = 20, 4, 400


def clustered_draw(rng, mean: float = 0.0, prompt_sd: float = 1.0, seed_sd: float = 0.3):
    """The design's shape: 20 prompts x 4 seeds; a prompt effect shared by its seeds, plus seed noise."""
    prompt_effect = rng.normal(0, prompt_sd, size=N_PROMPTS)
    values = mean + np.repeat(prompt_effect, N_SEEDS) + rng.normal(0, seed_sd, size=N_PROMPTS * N_SEEDS)
    prompts = [f"p{i:02d}" for i in np.repeat(np.arange(N_PROMPTS), N_SEEDS)]
    return values, prompts


def test_cluster_bootstrap_covers_a_known_mean_where_the_iid_bootstrap_does_not():
    rng = np.random.default_rng(0)
    covered_cluster = covered_iid = 0
    for draw in range(DRAWS):
        values, prompts = clustered_draw(rng, mean=3.0)
        low, high = cluster_bootstrap_ci(values, prompts, n_boot=500, seed=draw)
        covered_cluster += low <= 3.0 <= high
        low, high = bootstrap_ci(values, n_boot=500, seed=draw)
        covered_iid += low <= 3.0 <= high
    # Intra-prompt correlation 0.92 and 4 seeds: the i.i.d. interval is ~1/sqrt(3.75) as wide as it
    # should be, ~70% coverage; resampling the 20 prompts gives close to the nominal 95%.
    assert 0.90 <= covered_cluster / DRAWS <= 0.99
    assert covered_iid / DRAWS < 0.80


def test_cluster_interval_width_matches_the_standard_error_of_prompt_means():
    rng = np.random.default_rng(1)
    values, prompts = clustered_draw(rng)
    means = values.reshape(N_PROMPTS, N_SEEDS).mean(axis=1)
    # Known answer: the bootstrap standard error of a mean of k values is sd(ddof=0) / sqrt(k).
    half_width = 1.959964 * means.std(ddof=0) / np.sqrt(N_PROMPTS)
    low, high = cluster_bootstrap_ci(values, prompts, n_boot=20000, seed=0)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.05)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.1 * half_width)
    low90, high90 = cluster_bootstrap_ci(values, prompts, n_boot=20000, seed=0, confidence=0.90)
    assert (high90 - low90) / 2 == pytest.approx(half_width * 1.644854 / 1.959964, rel=0.05)
    assert cluster_bootstrap_ci(values, prompts, n_boot=500, seed=3) == cluster_bootstrap_ci(
        values, prompts, n_boot=500, seed=3
    )


def test_paired_difference_covers_a_known_difference_and_keeps_its_sign():
    rng = np.random.default_rng(2)
    covered, widths_paired, widths_unpaired = 0, [], []
    for draw in range(DRAWS):
        # Two methods on the same prompts and seeds: the prompt effect is shared, method b is 0.2 lower.
        shared, prompts = clustered_draw(rng)
        a_values = shared + rng.normal(0, 0.1, size=shared.size)
        b_values = shared - 0.2 + rng.normal(0, 0.1, size=shared.size)
        seeds = list(range(N_SEEDS)) * N_PROMPTS
        a = {(p, s): v for p, s, v in zip(prompts, seeds, a_values)}
        # b's entries in another order: pairing must go by (prompt, seed), not by position.
        b = {(p, s): v for p, s, v in reversed(list(zip(prompts, seeds, b_values)))}
        result = paired_difference_ci(a, b, n_boot=500, seed=draw)
        assert result["n_pairs"] == N_PROMPTS * N_SEEDS and result["n_prompts"] == N_PROMPTS
        covered += result["ci_low"] <= 0.2 <= result["ci_high"]
        widths_paired.append(result["ci_high"] - result["ci_low"])
        lo_a, hi_a = cluster_bootstrap_ci(a_values, prompts, n_boot=500, seed=draw)
        widths_unpaired.append(hi_a - lo_a)
        if draw == 0:
            assert result["difference"] == pytest.approx(np.mean(a_values - b_values))
            reverse = paired_difference_ci(b, a, n_boot=500, seed=draw)
            assert reverse["difference"] == pytest.approx(-result["difference"])
    assert 0.90 <= covered / DRAWS <= 0.99
    # The shared prompt effect cancels in the pairs: the paired interval is far narrower.
    assert np.median(widths_paired) < 0.3 * np.median(widths_unpaired)


def test_paired_difference_uses_only_common_pairs():
    a = {("p0", 0): 1.0, ("p0", 1): 2.0, ("p1", 0): 5.0}
    b = {("p0", 0): 0.5, ("p1", 0): 4.0, ("p2", 0): 9.0}
    result = paired_difference_ci(a, b, n_boot=100)
    assert (result["n_pairs"], result["n_prompts"]) == (2, 2)
    assert result["difference"] == pytest.approx((0.5 + 1.0) / 2)
    assert paired_difference_ci(a, {}, n_boot=10)["n_pairs"] == 0


def test_set_level_bootstrap_resamples_whole_prompts():
    prompts = [f"p{i}" for i in range(5) for _ in range(3)]
    seen = []

    def record(idx):
        seen.append(idx)
        return float(len(idx))

    bootstrap_set_ci(record, len(prompts), n_boot=50, seed=0, clusters=prompts)
    for idx in seen:
        assert len(idx) == 15
        drawn = [prompts[i] for i in idx]
        # Every drawn prompt comes with all three of its images, as many times as it was drawn.
        for p in set(drawn):
            assert drawn.count(p) % 3 == 0
    assert any(len(set(idx)) < 15 for idx in seen)


def test_jackknife_of_a_mean_is_the_standard_error_of_the_prompt_means():
    rng = np.random.default_rng(3)
    values, prompts = clustered_draw(rng)
    low, high = jackknife_set_ci(lambda idx: float(values[idx].mean()), len(values), clusters=prompts)
    means = values.reshape(N_PROMPTS, N_SEEDS).mean(1)
    se = means.std(ddof=1) / np.sqrt(N_PROMPTS)
    assert (low + high) / 2 == pytest.approx(values.mean(), rel=1e-12)
    assert (high - low) / 2 == pytest.approx(1.959964 * se, rel=1e-5)


def test_is_interval_contains_its_value_where_the_bootstrap_interval_does_not():
    """IS of the design's shape (20 prompts x 4 seeds, each prompt its own class): resampling prompts with
    replacement repeats images and lowers IS below the full set's; leaving one out does not."""
    from s2s.metrics.image_metrics import is_from_logits

    rng = np.random.default_rng(0)
    classes = 20
    logits = rng.normal(0, 1, size=(N_PROMPTS * N_SEEDS, classes))
    logits[np.arange(N_PROMPTS * N_SEEDS), np.repeat(np.arange(N_PROMPTS), N_SEEDS)] += 6.0
    logits = torch.from_numpy(logits)
    prompts = [f"p{i:02d}" for i in np.repeat(np.arange(N_PROMPTS), N_SEEDS)]
    value = is_from_logits(logits)[0]

    def of(idx):
        return is_from_logits(logits[idx])[0]

    boot_low, boot_high = bootstrap_set_ci(of, len(prompts), n_boot=200, seed=0, clusters=prompts)
    jack_low, jack_high = jackknife_set_ci(of, len(prompts), clusters=prompts)
    assert boot_high < value, (value, boot_low, boot_high)  # the bias the jackknife avoids
    assert jack_low < value < jack_high, (value, jack_low, jack_high)
    assert jack_high - jack_low < 0.5 * value  # an interval, not the whole axis
