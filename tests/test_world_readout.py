"""The attribute read-out's measures (s2s.world.readout): identification against a line-up, attributes
found, the class gate and what covering contexts hide, on hand-built read-out outputs with known answers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from s2s.io import S2SError
from s2s.world.readout import (
    AttributeReadout,
    candidate_scores,
    identified,
    load_readout,
    save_readout,
    subject_truth,
    visible,
)
from s2s.world.scene import ATTRIBUTES, attributes, marked_individual


def _individuals(n: int, seed: int = 0):
    rng = random.Random(seed)
    return [marked_individual(rng, "dog") for _ in range(n)]


def _confident(truths: list[dict], sure: float = 0.9) -> dict[str, torch.Tensor]:
    """Read-out log-probabilities that put ``sure`` on each image's given attribute values."""
    out = {}
    for key, values in ATTRIBUTES.items():
        probs = torch.full((len(truths), len(values)), (1 - sure) / (len(values) - 1))
        for i, truth in enumerate(truths):
            probs[i, values.index(truth[key])] = sure
        out[key] = probs.log()
    return out


class _FakeReadout:
    def __init__(self, log_probs):
        self._log_probs = log_probs

    def log_probs(self, images):
        assert images.shape[0] == next(iter(self._log_probs.values())).shape[0]
        return self._log_probs


def test_identified_is_one_for_a_strict_top_a_share_for_a_tie_and_zero_below():
    scores = np.array([[3.0, 1.0, 2.0], [2.0, 2.0, 1.0], [2.0, 2.0, 2.0], [1.0, 3.0, 0.0]])
    assert identified(scores).tolist() == [1.0, 0.5, pytest.approx(1 / 3), 0.0]
    assert identified(scores, subject=1).tolist() == [0.0, 0.5, pytest.approx(1 / 3), 1.0]


def test_candidate_scores_sum_the_log_probabilities_of_each_candidates_attributes():
    people = _individuals(5)
    log_probs = _confident([attributes(p) for p in people])
    scores = candidate_scores(log_probs, people, list(ATTRIBUTES))
    assert scores.shape == (5, 5)
    assert (scores.argmax(axis=1) == np.arange(5)).all()  # each image is read as the one drawn
    expected = sum(
        float(log_probs[k][2, ATTRIBUTES[k].index(attributes(people[4])[k])]) for k in ("body", "tail")
    )
    assert candidate_scores(log_probs, people, ["body", "tail"])[2, 4] == pytest.approx(expected)


def test_subject_truth_identifies_gates_by_class_and_skips_hidden_attributes():
    subject, *lineup = _individuals(41, seed=2)
    other = lineup[0]
    shown = visible("wearing a tuxedo")  # no one in the line-up shares every attribute a tuxedo shows
    assert all(any(attributes(p)[k] != attributes(subject)[k] for k in shown) for p in lineup)
    # image 0: the subject; 1: another dog; 2: the subject, but the classifier finds no dog;
    # 3: the subject in a tuxedo, read with a wrong marking (hidden there, so not counted)
    wrong_marking = {**attributes(subject), "marking": "belly" if subject.marking != "belly" else "spots"}
    truths = [attributes(subject), attributes(other), attributes(subject), wrong_marking]
    contexts = ["plain", "in the snow", "plain", "wearing a tuxedo"]
    out = subject_truth(
        torch.zeros(4, 3, 64, 64, dtype=torch.uint8), contexts, subject, lineup,
        _FakeReadout(_confident(truths)), np.array([0.9, 0.9, 0.2, 0.9]),
    )  # fmt: skip
    assert out["identification"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out["attributes"][0] == 1.0 and out["attributes"][2] == 0.0 and out["attributes"][3] == 1.0
    assert 0 < out["attributes"][1] < 1
    assert np.isnan(out["attribute_marking"][3]) and out["attribute_marking"][0] == 1.0
    assert "marking" not in visible("wearing a tuxedo") and set(visible("plain")) == set(ATTRIBUTES)


def test_a_batchnorm_readout_keeps_its_running_statistics_and_reads_in_eval_mode(tmp_path):
    """BatchNorm's running statistics are buffers: saved, loaded, and used by the loaded model, so that a
    sample's reading does not depend on the other samples read with it."""
    model = AttributeReadout(width=8, spatial=4, norm="batch")
    with torch.no_grad():  # a few training-mode passes move the running statistics off their defaults
        for _ in range(3):
            model(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8))
    model.eval()
    loaded = load_readout(save_readout(model, tmp_path / "readout.safetensors"))
    assert loaded.norm == "batch" and not loaded.training
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    together, alone = loaded.log_probs(images), loaded.log_probs(images[:1])
    for key, value in model.log_probs(images).items():
        assert torch.allclose(together[key], value, atol=1e-5)
        assert torch.allclose(alone[key][0], together[key][0], atol=1e-5)


def test_readout_saves_and_loads_as_safetensors_with_its_format(tmp_path):
    model = AttributeReadout(width=8).eval()
    path = save_readout(model, tmp_path / "readout.safetensors")
    loaded = load_readout(path)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    for key, value in model.log_probs(images).items():
        assert torch.allclose(loaded.log_probs(images)[key], value)
        assert value.shape == (2, len(ATTRIBUTES[key]))
    from s2s.io import save_safetensors

    with pytest.raises(S2SError, match="read-out norm 'layer'"):
        AttributeReadout(norm="layer")
    save_safetensors({"w": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(S2SError, match="not a world attribute read-out"):
        load_readout(tmp_path / "other.safetensors")
    with pytest.raises(S2SError, match="no attribute read-out"):
        load_readout(tmp_path / "missing.safetensors")
