"""Metrics against independent hand computations, on tiny models built offline."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import scipy.stats
import torch
from PIL import Image

from s2s.config import EvaluationConfig
from s2s.io import S2SError, save_safetensors
from s2s.metrics.bootstrap import bootstrap_ci, bootstrap_set_ci
from s2s.metrics.evaluate import IS_INTERVAL, evaluate_method, load_images, study_selection
from s2s.metrics.features import (
    FeatureView,
    build_tiny_feature_extractor,
    extract_features,
    load_feature_extractor,
)
from s2s.metrics.fidelity import load_clip, subject_fidelity
from s2s.metrics.image_metrics import (
    clip_score,
    fid,
    fid_sample_size_warning,
    frechet_distance,
    inception_score,
    is_from_logits,
    kid,
    study_fid,
    study_fid_from_logits,
    study_is,
    study_is_from_logits,
    torchmetrics_clip,
)
from s2s.tiny import build_tiny_clip, build_tiny_dino

# Tiny matrices gain nothing from threads; with 2 threads on shared CI cores this module ran 10-20x slower.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("metric_models")
    return {
        "clip": str(build_tiny_clip(root / "clip")),
        "dino": str(build_tiny_dino(root / "dino")),
        "extractor": str(build_tiny_feature_extractor(root / "extractor.safetensors", seed=0)),
        # 8-d pool features, so that FID can be checked with more images than dimensions, and 64 classes,
        # so that hand computations on softmax outputs stay cheap (still more classes than images).
        "extractor8": str(
            build_tiny_feature_extractor(root / "extractor8.safetensors", seed=1, pool_dim=8, num_classes=64)
        ),
        # The study columns' stand-in: another network than the FID one, 200 classes (scipy's sqrtm of
        # 200 x 200 matrices stays fast; still more classes than the study's 18 images).
        "study": str(
            build_tiny_feature_extractor(root / "study.safetensors", seed=2, pool_dim=8, num_classes=200)
        ),
    }


def make_images(n: int, seed: int, size: tuple[int, int] = (32, 32)) -> torch.Tensor:
    """Smooth random uint8 images (blurry colour blobs plus noise), different for each seed."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=gen) * 255
    x = torch.nn.functional.interpolate(base, size=size, mode="bilinear")
    return (x + torch.rand(n, 3, *size, generator=gen) * 40).clamp(0, 255).to(torch.uint8)


def hand_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Textbook FID with scipy's matrix square root (well posed when n > d)."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def hand_frechet_psd(x: np.ndarray, y: np.ndarray) -> float:
    """FID via tr sqrt(S1^1/2 S2 S1^1/2) with symmetric eigendecompositions (stable when n < d)."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ s2 @ root1), 0, None)).sum()
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ignite_fid(real_logits: np.ndarray, fake_logits: np.ndarray) -> float:
    """pytorch-ignite's FID (fid_score) on softmax outputs, written with scipy: sqrtm of S1 S2."""
    x, y = scipy.special.softmax(real_logits, axis=1), scipy.special.softmax(fake_logits, axis=1)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)  # unbiased, as ignite's _get_covariance
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)  # ignite raises otherwise
    diff = x.mean(0) - y.mean(0)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def ignite_is(logits: np.ndarray) -> float:
    """pytorch-ignite's InceptionScore on softmax outputs: exp of the mean KL(p(y|x) || p(y)) (scipy)."""
    p = scipy.special.softmax(logits, axis=1)
    return float(np.exp(np.mean([scipy.stats.entropy(row, p.mean(axis=0)) for row in p])))


def hand_is(logits: np.ndarray) -> float:
    p = softmax(logits)
    kl = (p * (np.log(p) - np.log(p.mean(axis=0, keepdims=True)))).sum(axis=1)
    return float(np.exp(kl.mean()))


# ------------------------------------------------------------------------------------------------
# Feature extractor


def test_tiny_extractor_is_deterministic_and_safetensors_only(models, tmp_path):
    again = load_feature_extractor(str(build_tiny_feature_extractor(tmp_path / "again.safetensors", seed=0)))
    other = load_feature_extractor(str(build_tiny_feature_extractor(tmp_path / "other.safetensors", seed=5)))
    net = load_feature_extractor(models["extractor"])
    images = make_images(4, 0, size=(40, 56))
    out = net(images)
    assert out["pool"].shape == (4, 64) and out["logits"].shape == (4, 1000)
    torch.testing.assert_close(again(images)["logits"], out["logits"], rtol=0, atol=0)
    assert not torch.allclose(other(images)["logits"], out["logits"])
    # logits_unbiased is logits without the final bias, as in torch-fidelity's Inception.
    torch.testing.assert_close(out["logits"] - out["logits_unbiased"], net.fc.bias.expand(4, -1))

    (tmp_path / "weights.pt").write_bytes(b"not really")
    with pytest.raises(S2SError, match="pickle"):
        load_feature_extractor(str(tmp_path / "weights.pt"))
    save_safetensors({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(S2SError, match="not an s2s feature extractor"):
        load_feature_extractor(str(tmp_path / "foreign.safetensors"))


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity installed")
@pytest.mark.filterwarnings("ignore::UserWarning")  # torchmetrics' memory / one-split std notices
def test_feature_view_is_a_torchmetrics_feature_module(models):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore

    net = load_feature_extractor(models["extractor"])
    real, fake = make_images(10, 1), make_images(12, 2, size=(48, 40))
    metric = FrechetInceptionDistance(feature=FeatureView(net, "pool"))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert float(metric.compute()) == pytest.approx(fid(real, fake, net), rel=1e-6)

    view = FeatureView(net, "logits_unbiased")
    assert view.num_features == 1000
    is_metric = InceptionScore(feature=view, splits=1)
    is_metric.update(fake)
    assert float(is_metric.compute()[0]) == pytest.approx(inception_score(fake, net)[0], rel=1e-6)


# ------------------------------------------------------------------------------------------------
# CLIP score and subject fidelity


def _hand_clip_cosines(clip_path: str, images: torch.Tensor, prompts: list[str], flip: bool) -> np.ndarray:
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_path, use_safetensors=True).eval()
    if flip:
        with torch.no_grad():
            model.visual_projection.weight.neg_()
    processor = CLIPProcessor.from_pretrained(clip_path)
    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]
    inputs = processor(text=prompts, images=pil, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)  # image_embeds and text_embeds come out unit-norm
    return (out.image_embeds * out.text_embeds).sum(-1).double().numpy()


@pytest.mark.parametrize("flip", [False, True])
def test_clip_score_is_100_times_clamped_cosine(models, flip):
    # Negating the visual projection flips every cosine's sign, so across the two cases both the
    # clamped (0) and the positive branch are checked against the hand computation.
    images = make_images(5, 3, size=(36, 44))
    prompts = ["a photo of a dog", "a red car", "a cat on the beach", "a toy robot", "a dog in the snow"]
    bundle = load_clip(models["clip"])
    if flip:
        with torch.no_grad():
            bundle.model.visual_projection.weight.neg_()
    cos = _hand_clip_cosines(models["clip"], images, prompts, flip)
    scores = clip_score(list(images), prompts, bundle).numpy()
    np.testing.assert_allclose(scores, 100 * np.maximum(cos, 0), atol=1e-4)
    assert np.array_equal(scores > 0, cos > 0) and np.array_equal(scores == 0, cos <= 0)

    # The same wrapper makes torchmetrics' public CLIPScore work with transformers 5 (clamp of the mean).
    from torchmetrics.multimodal.clip_score import CLIPScore

    metric = CLIPScore(model_name_or_path=torchmetrics_clip(bundle))
    metric.update(list(images), prompts)
    assert float(metric.compute()) == pytest.approx(max(100 * cos.mean(), 0), abs=1e-4)


def test_subject_fidelity_matches_hand_cosines(models):
    from transformers import AutoImageProcessor, ViTModel

    generated = list(make_images(4, 4, size=(40, 40)))
    reference = list(make_images(3, 5, size=(48, 36)))
    prompts = ["a photo of a dog"] * 4
    result = subject_fidelity(generated, reference, prompts, models["clip"], models["dino"])

    dino = ViTModel.from_pretrained(models["dino"], add_pooling_layer=False, use_safetensors=True).eval()
    processor = AutoImageProcessor.from_pretrained(models["dino"])

    def dino_cls(images):
        with torch.no_grad():
            pixels = processor(
                images=[Image.fromarray(i.permute(1, 2, 0).numpy()) for i in images], return_tensors="pt"
            )["pixel_values"]
            cls = dino(pixel_values=pixels).last_hidden_state[:, 0].double().numpy()
        return cls / np.linalg.norm(cls, axis=1, keepdims=True)

    g, r = dino_cls(generated), dino_cls(reference)
    np.testing.assert_allclose(result["dino"].numpy(), (g @ r.T).mean(axis=1), atol=1e-5)
    rr = r @ r.T
    assert result["dino_real"] == pytest.approx((rr.sum() - np.trace(rr)) / 6, abs=1e-5)

    # CLIP-T is the raw cosine (may be negative): CLIP score is exactly its clamped x100 version.
    cos = _hand_clip_cosines(models["clip"], torch.stack(generated), prompts, flip=False)
    np.testing.assert_allclose(result["clip_t"].numpy(), cos, atol=1e-5)

    # CLIP-I: cosines of CLIP image embeddings (vision tower -> projection), by hand.
    from transformers import CLIPModel, CLIPProcessor

    clip = CLIPModel.from_pretrained(models["clip"], use_safetensors=True).eval()
    clip_processor = CLIPProcessor.from_pretrained(models["clip"])

    def clip_image(images):
        pil = [Image.fromarray(i.permute(1, 2, 0).numpy()) for i in images]
        with torch.no_grad():
            pixels = clip_processor(images=pil, return_tensors="pt")["pixel_values"]
            emb = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
        emb = emb.double().numpy()
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    cg, cr = clip_image(generated), clip_image(reference)
    np.testing.assert_allclose(result["clip_i"].numpy(), (cg @ cr.T).mean(axis=1), atol=1e-5)
    crr = cr @ cr.T
    assert result["clip_i_real"] == pytest.approx((crr.sum() - np.trace(crr)) / 6, abs=1e-5)
    assert not np.allclose(result["clip_i"].numpy(), 1, atol=1e-3)
    # Generated images identical to the one reference image: CLIP-I and DINO are exactly 1.
    same = subject_fidelity(generated[:2], [generated[0]], prompts[:2], models["clip"], models["dino"])
    assert same["clip_i"][0] == pytest.approx(1, abs=1e-6) and same["dino"][0] == pytest.approx(1, abs=1e-6)
    assert same["clip_i"][1] < 1 - 1e-4


# ------------------------------------------------------------------------------------------------
# FID, KID, IS and the study's variants


def test_fid_of_a_set_against_itself_is_zero(models):
    images = make_images(20, 6)
    assert abs(fid(images, images, models["extractor"])) < 1e-3
    assert abs(study_fid(images, images, models["extractor"])) < 1e-6


def test_fid_matches_scipy_frechet_distance(models):
    net = load_feature_extractor(models["extractor8"])
    real, fake = make_images(30, 7), make_images(24, 8, size=(40, 40))
    x, y = extract_features(net, real)["pool"].numpy(), extract_features(net, fake)["pool"].numpy()
    expected = hand_frechet(x, y)
    assert expected > 0
    assert fid(real, fake, net) == pytest.approx(expected, rel=1e-4)
    # The low-rank formula used for bootstrap resamples agrees, with more and with fewer images than dims.
    assert frechet_distance(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-6)
    net64 = load_feature_extractor(models["extractor"])
    x64, y64 = extract_features(net64, real)["pool"].numpy(), extract_features(net64, fake)["pool"].numpy()
    low_rank = frechet_distance(torch.from_numpy(x64), torch.from_numpy(y64))
    assert low_rank == pytest.approx(hand_frechet_psd(x64, y64), rel=1e-4)
    assert low_rank == pytest.approx(fid(real, fake, net64), rel=1e-4)


def test_fid_warns_below_feature_dimension(models, caplog):
    assert fid_sample_size_warning("FID", 3000, 3000, 2048) is None
    assert "not meaningful" in fid_sample_size_warning("FID", 18, 18, 2048)
    with caplog.at_level("WARNING"):
        fid(make_images(5, 1), make_images(5, 2), models["extractor"])
    assert any("not meaningful" in r.message for r in caplog.records)


def test_kid_matches_hand_unbiased_mmd(models):
    net = load_feature_extractor(models["extractor"])
    real, fake = make_images(12, 9), make_images(12, 10)
    x = extract_features(net, real)["pool"].numpy()
    y = extract_features(net, fake)["pool"].numpy()
    d, m = x.shape[1], x.shape[0]

    def k(a, b):
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    mean, std = kid(real, fake, net)
    assert mean == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert std == 0  # equal set sizes: every subset is the whole of both sets

    # Unequal sizes: subset size drops to the smaller set, subsets are seeded.
    more_real = make_images(20, 11)
    assert kid(more_real, fake, net, seed=3) == kid(more_real, fake, net, seed=3)
    assert kid(more_real, fake, net, seed=3) != kid(more_real, fake, net, seed=4)


def test_inception_score_matches_hand_computation(models):
    net = load_feature_extractor(models["extractor"])
    images = make_images(16, 12)
    logits = extract_features(net, images)["logits_unbiased"]
    assert inception_score(images, net)[0] == pytest.approx(hand_is(logits.numpy()), rel=1e-9)
    # torchmetrics' splits: shuffle with the (seeded) global RNG, then torch.chunk into `splits` parts,
    # IS per part, mean (and std) over parts.
    torch.manual_seed(0)
    perm = torch.randperm(16)
    parts = [hand_is(chunk.numpy()) for chunk in logits[perm].chunk(4)]
    mean, std = is_from_logits(logits, splits=4, seed=0)
    assert mean == pytest.approx(np.mean(parts), rel=1e-9)
    assert std == pytest.approx(np.std(parts, ddof=1), rel=1e-6)


def test_study_variants_match_hand_computation_on_softmax(models):
    net = load_feature_extractor(models["extractor8"])
    real, fake = make_images(18, 13), make_images(18, 14)
    lr = extract_features(net, real)["logits"].numpy()
    lf = extract_features(net, fake)["logits"].numpy()
    expected = hand_frechet_psd(softmax(lr), softmax(lf))
    assert expected > 0
    assert study_fid(real, fake, net) == pytest.approx(expected, rel=1e-4)
    # ... and it is not the pool-feature FID.
    assert study_fid(real, fake, net) != pytest.approx(fid(real, fake, net), rel=1e-2)
    assert study_is(fake, net) == pytest.approx(hand_is(lf), rel=1e-9)


def test_study_fid_and_is_match_ignite_formulas_written_with_scipy(models):
    # The study's shape: 18 vs 18 images, far fewer than classes (rank-deficient covariances).
    net = load_feature_extractor(models["study"])
    lr = extract_features(net, make_images(18, 40))["logits"]
    lf = extract_features(net, make_images(18, 41, size=(40, 40)))["logits"]
    expected_fid = ignite_fid(lr.numpy(), lf.numpy())
    assert expected_fid > 1e-4
    # sqrtm of the singular 200 x 200 product is accurate to ~1e-9 absolute here (measured 1.6e-6 relative).
    assert study_fid_from_logits(lr, lf) == pytest.approx(expected_fid, rel=1e-5)
    assert study_is_from_logits(lf) == pytest.approx(ignite_is(lf.numpy()), rel=1e-9)
    assert study_is_from_logits(lf) > 1.01  # not the trivial IS of a uniform softmax


def test_study_selection_takes_first_seeds_of_every_prompt_first():
    samples = [
        {"prompt": f"x {p}", "prompt_id": f"p{p}", "seed": s, "path": f"{p}/{s}"}
        for p in range(5)
        for s in range(4)
    ]
    idx, n = study_selection(samples, n_real=17, n_images=7)
    assert n == 7
    assert [samples[i]["path"] for i in idx] == ["0/0", "1/0", "2/0", "3/0", "4/0", "0/1", "1/1"]
    assert study_selection(samples, n_real=4, n_images=18) == (idx[:4], 4)  # fewer real: both sets shrink
    assert study_selection(samples[:3], n_real=17, n_images=18)[1] == 3


# ------------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_ci_contains_estimate_shrinks_and_is_deterministic():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5, 2, size=20), rng.normal(5, 2, size=500)
    lo_s, hi_s = bootstrap_ci(small, n_boot=500, seed=1)
    lo_l, hi_l = bootstrap_ci(large, n_boot=500, seed=1)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)  # ~sqrt(20/500) = 0.2 expected
    assert bootstrap_ci(small, n_boot=500, seed=1) == (lo_s, hi_s)
    assert bootstrap_ci(small, n_boot=500, seed=2) != (lo_s, hi_s)
    lo90, hi90 = bootstrap_ci(small, n_boot=500, seed=1, confidence=0.9)
    assert lo_s < lo90 < hi90 < hi_s
    lo_med, hi_med = bootstrap_ci(small, n_boot=500, seed=1, statistic=np.median)
    assert lo_med <= np.median(small) <= hi_med
    # The set-level variant resamples indices the same way: for the mean it gives the same interval.
    assert bootstrap_set_ci(lambda idx: small[idx].mean(), len(small), n_boot=500, seed=1) == (lo_s, hi_s)


def test_bootstrap_set_ci_drops_failed_resamples():
    values = np.arange(10.0)

    def fragile(idx):
        if idx[0] == 0:
            raise ValueError("degenerate resample")
        return values[idx].mean()

    lo, hi = bootstrap_set_ci(fragile, 10, n_boot=200, seed=0)
    assert np.isfinite(lo) and lo < values.mean() < hi


# ------------------------------------------------------------------------------------------------
# evaluate_method


def _save(images: torch.Tensor, folder, prefix: str, suffix: str = ".png") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = folder / f"{prefix}{i}{suffix}"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    return paths


def evaluation(
    models: dict,
    dino: bool = False,
    reference_images=None,
    n_boot: int = 200,
    study_extractor: str | None = None,
    study_n_images: int = 18,
) -> EvaluationConfig:
    """evaluation.* for a test's evaluation on the tiny metric models: DINO only if asked for, the study
    FID/IS on the FID extractor unless another is given, 18 study images (the schema's default)."""
    return EvaluationConfig(
        clip_model=models["clip"],
        dino_model=models["dino"] if dino else None,
        feature_extractor=models["extractor"],
        study_feature_extractor=study_extractor or models["extractor"],
        study_n_images=study_n_images,
        reference_images=None if reference_images is None else str(reference_images),
        n_boot=n_boot,
        compare_published=False,
    )


def test_evaluate_method_writes_complete_json(models, tmp_path):
    gen_paths = _save(make_images(6, 20, size=(48, 48)), tmp_path / "gen", "g")
    real_paths = _save(make_images(3, 21, size=(60, 44)), tmp_path / "real", "r", ".jpg")
    ref_paths = _save(make_images(2, 22, size=(32, 32)), tmp_path / "ref", "x")
    samples = [{"prompt": f"a photo of sks dog {i}", "seed": i, "path": p} for i, p in enumerate(gen_paths)]
    out = tmp_path / "metrics" / "lora.json"
    result = evaluate_method(
        "lora",
        samples,
        real_paths,
        out,
        evaluation(models, dino=True, reference_images=tmp_path / "ref", n_boot=20),
        seed=0,
    )

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    on_disk = json.loads(out.read_text(), parse_constant=no_nan)
    assert on_disk == json.loads(json.dumps(result))
    assert (on_disk["method"], on_disk["n_generated"], on_disk["n_real"], on_disk["n_fid_real"]) == (
        "lora",
        6,
        3,
        5,
    )
    expected = {
        "clip_score",
        "fid",
        "kid",
        "inception_score",
        "study_fid",
        "study_is",
        "dino",
        "clip_i",
        "clip_t",
    }
    assert set(on_disk["metrics"]) == expected
    for key, entry in on_disk["metrics"].items():
        assert {"value", "ci_low", "ci_high", "n"} <= set(entry), key
        assert entry["n"] == (5 if key.startswith("study_") else 6) and entry["value"] is not None, key
        assert entry["ci_low"] <= entry["ci_high"], key
    assert on_disk["metrics"]["fid"]["n_real"] == 5 and on_disk["metrics"]["fid"]["feature_dim"] == 64
    for key in ("inception_score", "study_is"):  # jackknife intervals around the value (docs/metrics.md)
        entry = on_disk["metrics"][key]
        assert entry["interval"] == IS_INTERVAL and entry["ci_low"] < entry["value"] < entry["ci_high"], entry
    assert on_disk["metrics"]["kid"]["subset_size"] == 5
    assert on_disk["metrics"]["study_fid"]["feature_dim"] == 1000  # no study extractor: the FID one
    assert on_disk["metrics"]["study_fid"]["n_real"] == on_disk["study_images"]["n"] == 5  # min(18, 6, 5)
    assert any("not meaningful" in w for w in on_disk["warnings"])
    assert on_disk["bootstrap"]["n_boot"] == 20

    # Per-image values are the ones the metric functions give; the metric value is their mean.
    images = load_images(gen_paths)
    scores = clip_score(images, [s["prompt"] for s in samples], models["clip"]).numpy()
    np.testing.assert_allclose([r["clip_score"] for r in on_disk["per_image"]], scores, atol=1e-6)
    per_image_t = [r["clip_t"] for r in on_disk["per_image"]]
    assert on_disk["metrics"]["clip_t"]["value"] == pytest.approx(np.mean(per_image_t))
    fid_value = fid(load_images(real_paths + ref_paths), images, models["extractor"])
    assert on_disk["metrics"]["fid"]["value"] == pytest.approx(fid_value, rel=1e-6)


def test_evaluate_method_without_dino_and_with_bad_input(models, tmp_path):
    gen_paths = _save(make_images(3, 30), tmp_path / "gen", "g")
    real_paths = _save(make_images(2, 31), tmp_path / "real", "r")
    samples = [{"prompt": "a photo of a dog", "seed": i, "path": p} for i, p in enumerate(gen_paths)]
    result = evaluate_method(
        "dreambooth",
        samples,
        real_paths,
        tmp_path / "m.json",
        evaluation(models, n_boot=10),
    )
    assert result["metrics"]["dino"] is None and result["reference"]["dino_real"] is None
    assert any("DINO skipped" in w for w in result["warnings"])

    with pytest.raises(S2SError, match="lacks"):
        evaluate_method(
            "lora",
            [{"prompt": "x", "path": gen_paths[0]}],
            real_paths,
            tmp_path / "x.json",
            evaluation(models),
        )
    with pytest.raises(S2SError, match="not found"):
        evaluate_method(
            "lora",
            samples,
            [str(tmp_path / "missing.png")],
            tmp_path / "x.json",
            evaluation(models),
        )
    assert not (tmp_path / "x.json").exists()


def test_evaluate_method_study_columns_and_prompt_resampled_intervals(models, tmp_path):
    # 5 prompts x 3 seeds; the study columns take 7 vs 7 images on their own extractor.
    gen = make_images(15, 50, size=(40, 40))
    gen_paths = _save(gen, tmp_path / "gen", "g")
    real_paths = _save(make_images(6, 51), tmp_path / "real", "r")
    ref_paths = _save(make_images(3, 52), tmp_path / "ref", "x")
    samples = [
        {"prompt": f"a photo of sks dog, style {i // 3}", "prompt_id": f"p{i // 3}", "seed": i % 3, "path": p}
        for i, p in enumerate(gen_paths)
    ]
    n_boot, seed = 40, 3
    result = evaluate_method(
        "lora",
        samples,
        real_paths,
        tmp_path / "m.json",
        evaluation(
            models,
            reference_images=tmp_path / "ref",
            n_boot=n_boot,
            study_extractor=models["study"],
            study_n_images=7,
        ),
        seed=seed,
    )
    chosen = [0, 3, 6, 9, 12, 1, 4]  # seed 0 of p0..p4, then seed 1 of p0, p1
    assert result["study_images"]["generated"] == [gen_paths[i] for i in chosen]
    assert result["study_images"]["real"] == real_paths[:6] + ref_paths[:1]
    net = load_feature_extractor(models["study"])
    lf = extract_features(net, load_images([gen_paths[i] for i in chosen]))["logits"].numpy()
    lr = extract_features(net, load_images(real_paths + ref_paths[:1]))["logits"].numpy()
    study = result["metrics"]["study_fid"]
    assert (study["n_generated"], study["n_real"], study["feature_dim"]) == (7, 7, 200)
    assert study["value"] == pytest.approx(ignite_fid(lr, lf), rel=1e-5)
    assert result["metrics"]["study_is"]["value"] == pytest.approx(ignite_is(lf), rel=1e-9)
    assert result["models"]["study_feature_extractor"] == models["study"]

    # The set-level interval resamples prompts: all chosen images of a drawn prompt together.
    prompts = [samples[i]["prompt_id"] for i in chosen]
    groups = {p: [j for j, q in enumerate(prompts) if q == p] for p in dict.fromkeys(prompts)}
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        drawn = rng.integers(0, len(groups), size=len(groups))
        idx = [j for g in drawn for j in list(groups.values())[g]]
        stats.append(hand_frechet_psd(softmax(lr), softmax(lf[idx])))
    low, high = np.quantile(stats, [0.025, 0.975])
    assert (study["ci_low"], study["ci_high"]) == (
        pytest.approx(low, rel=1e-4),
        pytest.approx(high, rel=1e-4),
    )

    # A per-image interval is scipy's percentile bootstrap of the per-prompt means (same generator).
    clip_t = np.array([r["clip_t"] for r in result["per_image"]]).reshape(5, 3)
    direct = scipy.stats.bootstrap(
        (clip_t.mean(axis=1),),
        np.mean,
        n_resamples=n_boot,
        method="percentile",
        rng=np.random.default_rng(seed),
    ).confidence_interval
    entry = result["metrics"]["clip_t"]
    assert (entry["ci_low"], entry["ci_high"]) == (pytest.approx(direct.low), pytest.approx(direct.high))
    assert entry["value"] == pytest.approx(clip_t.mean())
    assert result["bootstrap"]["clusters"] == 5

    # Fewer real images than study_n_images: both sets shrink to the real count, with a warning.
    fewer = evaluate_method(
        "lora",
        samples,
        real_paths[:4],
        tmp_path / "m2.json",
        evaluation(models, n_boot=10, study_extractor=models["study"]),
    )
    assert fewer["metrics"]["study_fid"]["n_generated"] == fewer["metrics"]["study_fid"]["n_real"] == 4
    assert any("evaluation.study_n_images = 18" in w for w in fewer["warnings"])
