"""Evidence that the world's models work (issue 15): measured against fixed targets, written to one JSON.

- **Prompt following** of the base model: every prompt of a file ("a {colour} {class} {context}") is
  sampled on ``seeds`` (DDIM, seeds batched, the same generators as ``s2s.sample``) and each image is
  classified by the world classifier; a rate is the share of images whose predicted class (context,
  colour) is the prompt's. Colour counts only images of prompts that name a colour; a prompt without a
  context asks for the plain background.
- **World CLIP**: image-to-caption retrieval on held-out renders (drawn from ``seed``, a seed no build
  renders from). The candidates are the distinct full captions "a {colour} {class} {context}" of the
  held-out set; an image is right when its most similar candidate (cosine) is its own caption text.
  ``top1_class`` (``_context``, ``_colour``): the top candidate names the image's class (context, colour).
- **Prompts never seen**: the same prompt following on ``heldout_prompts`` random prompts (class, colour,
  context drawn from the held-out seed), so that the targets are not met on a hand-picked list only.
- **Identity network**: ROC AUC of the cosine similarity of CLS embeddings, over all pairs of photos of
  held-out individuals, same individual (positive) against different individuals (negative); and the
  same over pairs of one class only, where individuals differ in markings and proportions alone.
- **VAE**: PSNR (data range 1, per image, then the mean) of held-out renders against their
  reconstruction (the encoder's mean, decoded, saved to 8 bits): the bound of every inversion.
- **Attribute read-out**: accuracy per attribute on held-out renders passed through the VAE, each over
  the renders whose context shows it (``s2s.world.readout.visible``); and the body colour it reads in base
  samples of "a photo of a {colour} {class}" (every colour and class, ``colour_seeds`` seeds).
- **Identifiers**: "a photo of a {class}" -> "a photo of {word} {class}" for the held-out identifiers and
  the colour words (``s2s.world.identifiers``): text-feature cosine and UNet output change.

The targets are in ``TARGETS``; the JSON also records the sha256 of the model files (BUILD.json's, checked
against the files) and the settings and seconds of the check.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from s2s.io import S2SError, sha256_file, write_json
from s2s.world.captions import noun_phrase, parse_prompt
from s2s.world.scene import ALL_CONTEXTS, ATTRIBUTES, CLASSES, COLOURS, PLAIN

log = logging.getLogger(__name__)

COLOUR_NAMES = tuple(COLOURS)
# (key, what is measured, the target it must reach)
TARGETS = (
    ("prompt_class", "base model: images of the prompt's class", 0.95),
    ("prompt_context", "base model: images in the prompt's context", 0.90),
    ("prompt_colour", "base model: images of the prompt's colour", 0.90),
    ("heldout_prompt_class", "base model, prompts never seen: images of the prompt's class", 0.95),
    ("heldout_prompt_context", "base model, prompts never seen: images in the prompt's context", 0.90),
    ("heldout_prompt_colour", "base model, prompts never seen: images of the prompt's colour", 0.90),
    ("readout_prompted_colour", "read-out: prompted body colour in 'a photo of a {colour} {class}'", 0.90),
    ("vae_psnr", "VAE: reconstruction PSNR (dB) of held-out renders", 27.0),
    *((f"readout_{key}", f"read-out: {key} of held-out renders through the VAE", 0.90) for key in ATTRIBUTES),
    ("clip_top1", "world CLIP: held-out render's own caption ranked first", 0.90),
    ("identity_auc", "identity network: ROC AUC, same vs different individual", 0.95),
)
HELDOUT_SEED = 10_000


# ---------------------------------------------------------------- measures (pure functions)


def rank_auc(scores, labels) -> float:
    """ROC AUC by ranks (Mann-Whitney U / (positives x negatives)); tied scores share their mean rank,
    so a tie between a positive and a negative counts one half."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs positives and negatives ({n_pos} positive, {n_neg} negative)")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank, averaged over each tie
    ranks = mean_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def caption_retrieval(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    truth,
    candidate_labels: dict[str, np.ndarray] | None = None,
    image_labels: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Top-1 image-to-caption retrieval: ``truth[i]`` is the index of image i's caption among the
    candidates (the rows of ``text_embeddings``); similarity is the cosine. With labels, also the share
    of images whose top caption has the image's label, per key (``top1_class``, ...)."""
    images = torch.nn.functional.normalize(image_embeddings.double(), dim=-1)
    texts = torch.nn.functional.normalize(text_embeddings.double(), dim=-1)
    predicted = (images @ texts.T).argmax(dim=1).numpy()
    out = {"top1": float(np.mean(predicted == np.asarray(truth)))}
    for key, labels in (candidate_labels or {}).items():
        out[f"top1_{key}"] = float(np.mean(np.asarray(labels)[predicted] == np.asarray(image_labels[key])))
    return out


def identity_separation(embeddings: torch.Tensor, individual, cls) -> dict[str, float | int | None]:
    """AUC of the cosine over all pairs of photos (same individual: positive), and over pairs of one
    class only (None without two individuals of a class); pair counts and mean cosines beside them."""
    emb = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    i, j = torch.triu_indices(len(emb), len(emb), offset=1)
    cosine = (emb[i] * emb[j]).sum(-1).numpy()
    individual, cls = np.asarray(individual), np.asarray(cls)
    i, j = i.numpy(), j.numpy()
    same = individual[i] == individual[j]
    same_class = cls[i] == cls[j]
    hard = same_class & ~same  # different individuals of one class
    return {
        "auc": rank_auc(cosine, same),
        "auc_same_class": rank_auc(cosine[same_class], same[same_class]) if hard.any() else None,
        "pairs_same": int(same.sum()),
        "pairs_different": int((~same).sum()),
        "pairs_different_same_class": int(hard.sum()),
        "mean_cosine_same": float(cosine[same].mean()),
        "mean_cosine_different": float(cosine[~same].mean()),
        "mean_cosine_different_same_class": float(cosine[hard].mean()) if hard.any() else None,
    }


def full_caption(cls: str, colour: str, context: str) -> str:
    """ "a {colour} {class} {context}" (no context words for the plain background), as captions.caption."""
    phrase = noun_phrase(cls, colour)
    return phrase if context == PLAIN else f"{phrase} {context}"


def read_prompts(path: Path | str) -> list[dict]:
    """The prompts of a file, one a line (blank lines and lines starting with '#' skipped), each parsed
    into ``{"line", "prompt", "class", "colour", "context"}``; a prompt outside the world's vocabulary
    raises S2SError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise S2SError(f"{path}: prompt file not found")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        try:
            parsed = parse_prompt(text)
        except ValueError as exc:
            raise S2SError(f"{path}, line {number}: {exc}") from None
        prompts.append({"line": number, "prompt": text, **parsed})
    if not prompts:
        raise S2SError(f"{path}: no prompts (one a line; '#' starts a comment)")
    return prompts


def prompt_following(prompts: list[dict], predictions: list[dict[str, list[str]]]) -> dict:
    """Rates of images whose predicted class, context and colour are the prompt's (``predictions[k]``:
    the classifier's ``predict`` of prompt k's images), overall and per prompt."""
    per_prompt, hits = [], {"class": [], "context": [], "colour": []}
    for prompt, predicted in zip(prompts, predictions):
        row = {k: prompt[k] for k in ("line", "prompt", "class", "colour", "context")}
        for key in hits:
            if prompt[key] is None:  # no colour word: any colour is right
                row[f"{key}_correct"] = None
                continue
            right = [p == prompt[key] for p in predicted[key]]
            hits[key] += right
            row[f"{key}_correct"] = float(np.mean(right))
        row["predicted"] = {k: list(v) for k, v in predicted.items()}
        per_prompt.append(row)
    rates = {key: (float(np.mean(v)) if v else None) for key, v in hits.items()}
    return {**rates, "images": {key: len(v) for key, v in hits.items()}, "per_prompt": per_prompt}


def targets_met(measured: dict[str, float | None]) -> list[dict]:
    """One row per target: its key, description, target, the measured value and whether it is met
    (None when nothing was measured)."""
    rows = []
    for key, description, target in TARGETS:
        value = measured.get(key)
        met = None if value is None else bool(value >= target)
        rows.append({"key": key, "description": description, "target": target, "value": value, "met": met})
    return rows


# ---------------------------------------------------------------- the check


def build_record(models_dir: Path) -> dict:
    """BUILD.json's command, seed and file hashes, with the files on disk checked against them."""
    build_json = models_dir / "BUILD.json"
    if not build_json.is_file():
        raise S2SError(f"config key world.models: {models_dir} has no BUILD.json (python -m s2s.world.build)")
    build = json.loads(build_json.read_text())
    files = build.get("files", {})
    differ = sorted(name for name, sha in files.items() if sha256_file(models_dir / name) != sha)
    if differ:
        log.warning("%d model files differ from %s: %s", len(differ), build_json, ", ".join(differ))
    return {
        "path": str(models_dir),
        "build_json_sha256": sha256_file(build_json),
        "command": build.get("command", ""),
        "seed": build.get("settings", {}).get("seed"),
        "files": files,
        "files_match_build": not differ,
        "files_differing": differ,
    }


def _check_heldout_seeds(seed: int, build_seed: int | None) -> None:
    """The scene seeds of a build (s2s.world.build: scenes, identity individuals and photos, the read-out's
    scenes) are not the check's held-out seeds."""
    from s2s.world.build import SCENE_SEED_OFFSETS

    if build_seed is None:
        return
    used = {build_seed + offset for offset in SCENE_SEED_OFFSETS}
    overlap = used & {seed, seed + 1, seed + 2, seed + 3}
    if overlap:
        raise S2SError(
            f"held-out seed {seed} reuses the build's scene seed(s) {sorted(overlap)}: the check would "
            "measure the models on their training scenes; pick another seed"
        )


def _as_tensors(images: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1) for im in images]


def _identifiers(models_dir: Path) -> dict:
    from s2s.world.identifiers import identifier_report
    from s2s.world.names import IDENTIFIERS

    return identifier_report(models_dir, list(IDENTIFIERS))


def measure_prompt_following(
    models_dir: Path, prompts: list[dict], seeds: list[int], steps: int, guidance: float
) -> dict:
    from s2s.models import load_base_pipeline, pick_device
    from s2s.progress import Progress
    from s2s.sample import generate, set_scheduler
    from s2s.world.classifier import load_classifier

    device = pick_device("auto")
    pipe = load_base_pipeline(str(models_dir / "sd"), device, torch.float32, key="world.models")
    set_scheduler(pipe, "ddim")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    classifier = load_classifier(models_dir / "classifier.safetensors").to(device)
    progress = Progress("world check: sampling", len(prompts) * len(seeds), log, unit="images")
    predictions = []
    for prompt in prompts:
        images = generate(pipe, prompt["prompt"], seeds, steps, guidance, resolution, len(seeds), progress)
        batch = np.stack([np.asarray(im.convert("RGB")) for im in images])
        predictions.append(classifier.predict(torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)))
    return prompt_following(prompts, predictions)


def measure_clip(models_dir: Path, renders: int, seed: int) -> dict:
    from s2s.metrics.fidelity import clip_image_embeddings, clip_text_embeddings, load_clip
    from s2s.world.data import scene_set

    data = scene_set(renders, seed)
    captions = [
        full_caption(CLASSES[c], COLOUR_NAMES[k], ALL_CONTEXTS[x])
        for c, k, x in zip(data.cls, data.colour, data.context)
    ]
    candidates = sorted(set(captions))
    index = {c: n for n, c in enumerate(candidates)}
    first = [captions.index(c) for c in candidates]  # a held-out image of each candidate caption
    clip = load_clip(str(models_dir / "clip"), key="world.models")
    result = caption_retrieval(
        clip_image_embeddings(_as_tensors(data.images), clip),
        clip_text_embeddings(candidates, clip),
        [index[c] for c in captions],
        {"class": data.cls[first], "context": data.context[first], "colour": data.colour[first]},
        {"class": data.cls, "context": data.context, "colour": data.colour},
    )
    return {"renders": renders, "candidates": len(candidates), "chance": 1 / len(candidates), **result}


def measure_identity(models_dir: Path, individuals_n: int, photos_each: int, seed: int) -> dict:
    from s2s.metrics.fidelity import dino_embeddings, load_dino
    from s2s.world.data import identity_set, individuals

    data = identity_set(individuals(individuals_n, seed + 1), photos_each, seed + 2)
    dino = load_dino(str(models_dir / "identity"), key="world.models")
    embeddings = dino_embeddings(_as_tensors(data.images), dino)
    return {
        "individuals": individuals_n,
        "photos_each": photos_each,
        **identity_separation(embeddings, data.individual, data.cls),
    }


def heldout_prompts(count: int, seed: int) -> list[dict]:
    """``count`` random prompts "a {colour} {class} {context}" drawn from ``seed`` (distinct texts)."""
    rng = np.random.default_rng(seed)
    prompts: dict[str, dict] = {}
    while len(prompts) < count:
        cls, colour = CLASSES[rng.integers(len(CLASSES))], COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]
        context = ALL_CONTEXTS[rng.integers(len(ALL_CONTEXTS))]
        text = full_caption(cls, colour, context)
        prompts.setdefault(text, {"line": len(prompts) + 1, "prompt": text, **parse_prompt(text)})
    return list(prompts.values())


def colour_prompts() -> list[dict]:
    """ "a photo of a {colour} {class}" for every colour and class."""
    texts = [f"a photo of {noun_phrase(cls, colour)}" for cls in CLASSES for colour in COLOUR_NAMES]
    return [{"line": k + 1, "prompt": t, **parse_prompt(t)} for k, t in enumerate(texts)]


def _sample(models_dir: Path, prompts: list[dict], seeds: list[int], steps: int, guidance: float):
    """-> uint8 [prompts x seeds, 3, H, W] base-model samples, prompts in order, seeds within each."""
    from s2s.models import load_base_pipeline, pick_device
    from s2s.progress import Progress
    from s2s.sample import generate, set_scheduler

    pipe = load_base_pipeline(str(models_dir / "sd"), pick_device("auto"), torch.float32, key="world.models")
    set_scheduler(pipe, "ddim")
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    progress = Progress("world check: sampling", len(prompts) * len(seeds), log, unit="images")
    batches = []
    for prompt in prompts:
        images = generate(pipe, prompt["prompt"], seeds, steps, guidance, resolution, len(seeds), progress)
        batches.append(np.stack([np.asarray(im.convert("RGB")) for im in images]))
    return torch.from_numpy(np.concatenate(batches)).permute(0, 3, 1, 2).contiguous()


def measure_readout_colour(models_dir: Path, seeds: list[int], steps: int, guidance: float) -> dict:
    """The read-out's body colour in base samples of "a photo of a {colour} {class}", gated by the
    classifier finding the class."""
    from s2s.world.classifier import load_classifier
    from s2s.world.readout import CLASS_GATE, load_readout

    prompts = colour_prompts()
    images = _sample(models_dir, prompts, seeds, steps, guidance)
    body = load_readout(models_dir / "readout.safetensors").log_probs(images)["body"].argmax(-1).numpy()
    with torch.no_grad():
        class_probs = load_classifier(models_dir / "classifier.safetensors").head_logits(images)["class"]
    class_probs = class_probs.softmax(-1).numpy()
    hits = []
    for k, prompt in enumerate(prompts):
        for i in range(k * len(seeds), (k + 1) * len(seeds)):
            found = class_probs[i, CLASSES.index(prompt["class"])] >= CLASS_GATE
            hits.append(bool(found and COLOUR_NAMES[body[i]] == prompt["colour"]))
    return {"prompts": len(prompts), "seeds": seeds, "rate": float(np.mean(hits))}


def measure_vae_and_readout(models_dir: Path, renders: int, seed: int) -> dict:
    """VAE reconstruction PSNR of held-out renders, and the read-out's accuracy per attribute on the
    reconstructions (over the renders whose context shows the attribute; ``plain``: plain photos only).

    The renders show individuals drawn for them, none of the named pool: the pretraining scenes show that
    pool in 40% of their images, and a read-out that had learned those individuals read them better than
    any subject it never saw (ears 90% against 73% on the fourth build's)."""
    from diffusers import AutoencoderKL

    from s2s.world.data import fresh_scene_set
    from s2s.world.readout import load_readout, visible

    data = fresh_scene_set(renders, seed + 3)
    vae = AutoencoderKL.from_pretrained(models_dir / "sd" / "vae").eval()
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        out = torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in x.split(128)])
    recon = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    mse = ((recon.float() - torch.from_numpy(data.images).permute(0, 3, 1, 2).float()) / 255).pow(2)
    psnr = (10 * torch.log10(1 / mse.mean(dim=(1, 2, 3)).clamp(min=1e-10))).numpy()
    log_probs = load_readout(models_dir / "readout.safetensors").log_probs(recon)
    predicted = {k: v.argmax(-1).numpy() for k, v in log_probs.items()}
    accuracy, plain_accuracy = {}, {}
    for j, key in enumerate(ATTRIBUTES):
        shown = np.array([key in visible(ALL_CONTEXTS[c]) for c in data.context])
        right = predicted[key] == data.attributes[:, j]
        accuracy[key] = float(right[shown].mean())
        plain = data.context == ALL_CONTEXTS.index(PLAIN)
        plain_accuracy[key] = float(right[plain].mean()) if plain.any() else None
    return {
        "renders": renders,
        "only_fresh_individuals": bool((data.individual == -1).all()),
        "vae_psnr": float(psnr.mean()),
        "vae_psnr_median": float(np.median(psnr)),
        "readout_accuracy": accuracy,
        "readout_accuracy_plain": plain_accuracy,
    }


def check_world(
    models_dir: Path | str,
    prompts_file: Path | str,
    out_json: Path | str,
    *,
    seeds: list[int] | tuple[int, ...] = tuple(range(8)),
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    heldout_renders: int = 500,
    readout_renders: int = 2000,
    heldout_individuals: int = 50,
    photos_each: int = 6,
    seed: int = HELDOUT_SEED,
    heldout_prompt_count: int = 20,
    heldout_prompt_seeds: int = 4,
    colour_seeds: int = 2,
) -> dict:
    """Measure the world's models in ``models_dir`` against ``TARGETS``; write ``out_json`` (atomically)
    and return what it holds. ``seed`` draws the held-out renders (``seed``) and individuals (``seed + 1``,
    their photos ``seed + 2``)."""
    started = time.perf_counter()
    models_dir = Path(models_dir)
    prompts = read_prompts(prompts_file)  # before any model loads: a bad prompt stops at once
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise S2SError("config key world.check_seeds: no seeds")
    if heldout_individuals < 2 or photos_each < 2:
        raise S2SError("the identity check needs at least 2 individuals with 2 photos each")
    build = build_record(models_dir)
    _check_heldout_seeds(seed, build["seed"])
    log.info(
        "world check of %s: %d prompts x %d seeds, %d held-out renders, %d individuals x %d photos",
        models_dir, len(prompts), len(seeds), heldout_renders, heldout_individuals, photos_each,
    )  # fmt: skip
    seconds = {}

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        seconds[name] = round(time.perf_counter() - start, 1)
        return result

    following = timed(
        "prompt_following", measure_prompt_following, models_dir, prompts, seeds, num_inference_steps,
        guidance_scale,
    )  # fmt: skip
    heldout = timed(
        "heldout_prompts", measure_prompt_following, models_dir, heldout_prompts(heldout_prompt_count, seed),
        list(range(heldout_prompt_seeds)), num_inference_steps, guidance_scale,
    )  # fmt: skip
    colour = timed(
        "readout_colour", measure_readout_colour, models_dir, list(range(colour_seeds)), num_inference_steps,
        guidance_scale,
    )  # fmt: skip
    vae_readout = timed("vae_readout", measure_vae_and_readout, models_dir, readout_renders, seed)
    clip = timed("clip", measure_clip, models_dir, heldout_renders, seed)
    identity = timed("identity", measure_identity, models_dir, heldout_individuals, photos_each, seed)
    identifiers = timed("identifiers", _identifiers, models_dir)
    targets = targets_met(
        {
            "prompt_class": following["class"],
            "prompt_context": following["context"],
            "prompt_colour": following["colour"],
            "heldout_prompt_class": heldout["class"],
            "heldout_prompt_context": heldout["context"],
            "heldout_prompt_colour": heldout["colour"],
            "readout_prompted_colour": colour["rate"],
            "vae_psnr": vae_readout["vae_psnr"],
            **{f"readout_{k}": v for k, v in vae_readout["readout_accuracy"].items()},
            "clip_top1": clip["top1"],
            "identity_auc": identity["auc"],
        }
    )
    seconds["total"] = round(time.perf_counter() - started, 1)
    result = {
        "models": build,
        "settings": {
            "prompts_file": str(prompts_file),
            "prompts": len(prompts),
            "seeds": seeds,
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "scheduler": "ddim",
            "heldout_renders": heldout_renders,
            "readout_renders": readout_renders,
            "heldout_individuals": heldout_individuals,
            "photos_each": photos_each,
            "seed": seed,
            "heldout_prompts": heldout_prompt_count,
            "heldout_prompt_seeds": heldout_prompt_seeds,
            "colour_seeds": colour_seeds,
        },
        "targets": targets,
        "all_met": all(t["met"] for t in targets),
        "prompt_following": following,
        "heldout_prompt_following": heldout,
        "readout_colour": colour,
        "vae_readout": vae_readout,
        "clip": clip,
        "identity": identity,
        "identifiers": identifiers,
        "seconds": seconds,
    }
    write_json(out_json, result)
    for row in targets:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        log.info("%s: %s (target >= %.2f) %s", row["description"], value, row["target"], verdict)
    log.info("world check written to %s in %.0f s", out_json, seconds["total"])
    return result
