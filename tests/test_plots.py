"""Figures (s2s.plots), progress lines (s2s.progress) and quiet model loading (s2s.models)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from s2s import plots
from s2s.progress import Progress, format_seconds


@pytest.fixture
def drawn(monkeypatch):
    """Every figure saved through plots._save, kept open long enough to read its texts."""
    figures = []
    original = plots._save

    def keep(fig, out):
        texts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]
        figures.append({"fig": fig, "texts": texts, "axes": list(fig.axes), "out": Path(out)})
        original(fig, out)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _png(path: Path, value: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _samples(root: Path, prompts: dict[str, str], seeds: list[int]) -> Path:
    for index, (pid, prompt) in enumerate(prompts.items()):
        for seed in seeds:
            _png(root / pid / f"{seed}.png", 10 * index + seed)
        (root / pid / "prompt.json").write_text(json.dumps({"prompt": prompt, "seeds": seeds}))
    return root


def test_grid_rows_are_labelled_with_prompt_text_and_columns_with_seeds(tmp_path, drawn):
    prompts = {"p00": "a sks toy on the beach", "p01": "a sks toy in the snow, photographed at night"}
    root = _samples(tmp_path / "samples", prompts, [3, 11])
    rows = [[root / pid / f"{s}.png" for s in (3, 11)] for pid in prompts]
    plots.image_grid(rows, tmp_path / "grid.png", row_labels=list(prompts))
    texts = " ".join(drawn[0]["texts"]).replace("\n", " ")
    for prompt in prompts.values():
        assert prompt in texts
    assert "seed 3" in texts and "seed 11" in texts
    assert "p00" not in texts  # the prompt id is not what a reader needs
    assert Image.open(tmp_path / "grid.png").width > 2 * 16


def test_side_by_side_has_a_column_per_method_in_study_order(tmp_path, drawn):
    roots = {m: _samples(tmp_path / m, {"p00": "a toy"}, [0, 1]) for m in ("lora", "base", "dreambooth")}
    columns = {m: [(s, roots[m] / "p00" / f"{s}.png") for s in (0, 1)] for m in roots}
    plots.side_by_side("a toy", columns, tmp_path / "side.png")
    axes = drawn[0]["axes"]
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["Base model", "DreamBooth", "LoRA"]
    assert "\u201ca toy\u201d" in drawn[0]["texts"]
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["seed 0", "seed 1"]


def test_smoothing_is_bias_corrected_and_reduces_noise():
    rng = np.random.default_rng(0)
    noisy = 1.0 + rng.normal(0, 0.2, 400)
    smoothed = plots.smooth(noisy)
    assert smoothed[0] == pytest.approx(noisy[0])  # no pull towards zero at the start
    assert np.allclose(plots.smooth(np.full(50, 3.0)), 3.0)
    assert smoothed[50:].std() < 0.5 * noisy[50:].std()
    assert abs(smoothed[50:].mean() - 1.0) < 0.05


def test_loss_curves_one_panel_per_method_with_axis_titles(tmp_path, drawn):
    steps = np.arange(1, 21)
    curves = {
        "lora": {"step": steps, "loss": 0.1 + 0.01 * np.sin(steps), "prior_loss": 0 * steps},
        "dreambooth": {"step": steps, "loss": 5 + np.sin(steps), "prior_loss": 0.3 + 0 * steps},
    }
    plots.loss_curves(curves, tmp_path / "loss.png")
    axes = drawn[0]["axes"]
    assert [ax.get_title() for ax in axes] == ["DreamBooth", "LoRA"]
    for ax in axes:
        assert ax.get_xlabel() == "optimizer step" and "loss" in ax.get_ylabel()
    # Each panel on its own scale: LoRA's small loss is not flattened by DreamBooth's.
    assert axes[1].get_ylim()[1] < 1 < axes[0].get_ylim()[1]
    labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
    assert "prior-preservation term (smoothed)" in labels[0]
    assert "prior-preservation term (smoothed)" not in labels[1]  # LoRA had no prior term


def test_training_cost_bars_show_each_summary_value(tmp_path, drawn):
    summaries = {
        "lora": {"wall_time_s": 12.5, "median_step_s": 0.1, "peak_memory_mb": 400, "trainable_params": 2000},
        "dreambooth": {
            "wall_time_s": 40,
            "median_step_s": 0.4,
            "peak_memory_mb": 900,
            "trainable_params": 10**6,
        },
    }
    plots.training_cost(summaries, tmp_path / "cost.png")
    axes = drawn[0]["axes"]
    assert len(axes) == len(plots.COST_PANELS)
    for ax, (key, _, _) in zip(axes, plots.COST_PANELS):
        heights = [p.get_height() for p in ax.patches]
        assert heights == [summaries["dreambooth"][key], summaries["lora"][key]]
    assert axes[3].get_yscale() == "log"
    assert "1M" in drawn[0]["texts"] and "12.5" in drawn[0]["texts"]


def test_per_prompt_interval_is_the_t_interval_over_seeds():
    from scipy import stats

    values = [0.2, 0.25, 0.31]
    rows = [{"prompt": "a", "clip_t": v} for v in values] + [{"prompt": "b", "clip_t": 0.4}]
    result = plots.per_prompt_stats(rows, "clip_t")
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert result["a"]["mean"] == pytest.approx(np.mean(values))
    assert (result["a"]["low"], result["a"]["high"]) == (pytest.approx(low), pytest.approx(high))
    assert result["b"] == {"mean": 0.4, "low": None, "high": None, "n": 1}


def test_attention_sheet_shows_both_prompts_with_the_new_word_marked_and_a_colour_scale(drawn):
    from matplotlib import pyplot as plt

    maps = np.random.default_rng(0).random((4, 8, 8))
    image = Image.new("RGB", (64, 64), "gray")
    fig = plots.attention_figure(
        image,
        [("source", maps, ["a", "dog", "on", "grass"]), ("target", maps, ["a", "cat", "on", "grass"])],
        changed={"cat"},
    )
    titles = [ax.get_title() for ax in fig.axes]
    assert titles.count("grass") == 2 and "dog" in titles and "cat" in titles
    cat = next(ax for ax in fig.axes if ax.get_title() == "cat")
    dog = next(ax for ax in fig.axes if ax.get_title() == "dog")
    assert cat.title.get_color() != dog.title.get_color()
    assert any(ax.get_ylabel() == "attention / token's max" for ax in fig.axes)  # the colour bar
    plt.close(fig)
    sheet = plots.attention_sheet(maps, ["a", "dog", "on", "grass"], image, maps, ["a", "cat", "on", "grass"])
    single = plots.attention_sheet(maps, ["a", "dog", "on", "grass"], image)
    assert sheet.height > single.height  # a second row of maps for the target prompt


def test_before_after_captions_name_the_edit_and_prompts(tmp_path, drawn):
    for name in ("source.png", "reconstruction.png", "edited.png"):
        _png(tmp_path / name, len(name))
    record = {
        "edit_id": "002_sks",
        "edit": "subject",
        "model": "textual_inversion",
        "inversion": "null_text",
        "image": "photo.png",
        "source_prompt": "a dog on the beach",
        "target_prompt": "a sks dog on the beach",
    }
    plots.before_after(record, tmp_path, tmp_path / "pair.png")
    texts = " ".join(drawn[0]["texts"]).replace("\n", " ")
    for value in ("002_sks", "subject edit", "Textual Inversion", "null_text", "a sks dog on the beach"):
        assert value in texts
    assert len(drawn[0]["axes"]) == 3  # photo, its reconstruction, the edit


# ---------------------------------------------------------------- progress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_give_done_total_elapsed_and_eta(caplog):
    clock = Clock()
    progress = Progress("sampling lora", 10, logging.getLogger("t"), every_s=30, unit="images", clock=clock)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(10):
            clock.now += 5.0
            progress.update()
    lines = [r.getMessage() for r in caplog.records]
    # First item, then every 30 s (items 7 at 35 s), and the last.
    assert lines[0] == "sampling lora: 1/10 images (10%), elapsed 5.0s, ETA 45.0s"
    assert lines[1] == "sampling lora: 7/10 images (70%), elapsed 35.0s, ETA 15.0s"
    assert lines[-1] == "sampling lora: 10/10 images (100%), elapsed 50.0s, ETA 0.0s"
    assert len(lines) == 3
    assert not any("\r" in line for line in lines)


def test_one_progress_logger_serves_steps_parts_and_resumed_runs(caplog):
    """The training loop's and the world build's policies through the one Progress: every N items and the
    last, without the first (training), counting from a resumed step, with the step's values and a given
    rate in the ETA."""
    clock = Clock()
    progress = Progress(
        "lora", 20, logging.getLogger("t"), every_s=300.0, every_items=2, first=False, start=4, clock=clock,
        label="step ",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="t"):
        for step in range(5, 21):
            clock.now += 1.0
            progress.update(seconds_per_item=0.5, loss=f"{1 / step:.4f}")
    lines = [r.getMessage() for r in caplog.records]
    assert [int(line.split("/")[0].split()[-1]) for line in lines] == list(range(6, 21, 2))
    assert lines[0] == "lora: step 6/20 (30%), loss 0.1667, elapsed 2.0s, ETA 7.0s"
    assert lines[-1] == "lora: step 20/20 (100%), loss 0.0500, elapsed 16.0s, ETA 0.0s"
    caplog.clear()
    part = Progress(
        "vae", 100, logging.getLogger("t"), every_s=None, every_items=5, unit="steps", clock=clock
    )
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(100):
            clock.now += 100.0  # time alone never writes a line here
            part.update(mse="0.0100")
    done = [int(r.getMessage().split("/")[0].split()[-1]) for r in caplog.records]
    assert done == [1, *range(6, 100, 5), 100]


def test_format_seconds():
    assert [format_seconds(s) for s in (4.25, 75, 3725)] == ["4.2s", "1m15s", "1h02m"]


# ---------------------------------------------------------------- quiet logs


def test_loading_models_logs_no_warning_of_our_own_calls(tiny_sd, tmp_path, caplog, capfd, one_torch_thread):
    """Base, LoRA and TI pipelines load without deprecation warnings, without the known-harmless
    warnings of diffusers/transformers, and without progress bars (carriage returns)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from s2s.io import save_safetensors
    from s2s.models import load_method_pipeline

    cpu = torch.device("cpu")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        pipe = load_method_pipeline(str(tiny_sd), "base", None, cpu, torch.float32)
        pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"]))
        StableDiffusionPipeline.save_lora_weights(
            tmp_path / "lora",
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
            safe_serialization=True,
        )
        dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
        (tmp_path / "ti").mkdir()
        save_safetensors({"sks": torch.zeros(1, dim)}, tmp_path / "ti" / "learned_embeds.safetensors")
        load_method_pipeline(str(tiny_sd), "lora", tmp_path / "lora", cpu, torch.float32)
        load_method_pipeline(str(tiny_sd), "textual_inversion", tmp_path / "ti", cpu, torch.float32)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    err = capfd.readouterr().err
    assert not [m for m in messages if "deprecated" in m or "No LoRA keys" in m or "new embeddings" in m], (
        messages
    )
    assert "\r" not in err and "No LoRA keys" not in err, err[-2000:]


def test_ddim_from_sd14s_pndm_config_logs_nothing(capfd):
    """SD v1.x ships a PNDM config; the DDIM schedulers made from it ignore PNDM's keys, which diffusers
    would report in every sampling, editing and inversion job."""
    from diffusers import DDIMInverseScheduler, PNDMScheduler

    from s2s.progress import quiet_libraries
    from s2s.rehearsal import SD14_SCHEDULER

    quiet_libraries()
    pndm = PNDMScheduler(**SD14_SCHEDULER)
    capfd.readouterr()
    DDIMInverseScheduler.from_config(pndm.config)  # diffusers logs to stderr through its own handler
    out, err = capfd.readouterr()
    assert "were passed to" not in out + err


def test_casting_a_frozen_module_to_half_precision_logs_nothing(capfd):
    """The training loop casts frozen modules with .to(dtype); diffusers warns on every such cast even when
    no module needs fp32 ("[]")."""
    import torch
    from diffusers import AutoencoderKL

    from s2s.progress import quiet_libraries

    quiet_libraries()
    vae = AutoencoderKL(block_out_channels=(32,), norm_num_groups=8)
    capfd.readouterr()
    vae.to(torch.bfloat16)
    out, err = capfd.readouterr()
    assert "should be kept in float32" not in out + err
