"""Benchmarks: settings, the SD-v1.4 shapes, and every part with minimal repetitions (JSON and Markdown:
every figure has a repetition count and a spread; ratios divide the medians)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from s2s.bench.dag import summarize_dag
from s2s.bench.report import write_report
from s2s.bench.run import run_part
from s2s.bench.settings import bench_settings
from s2s.bench.stats import is_figure, summarize
from s2s.config import check_config
from s2s.io import S2SError

REPO = Path(__file__).resolve().parent.parent
QUICK = {
    "parts": ["training", "edit"],
    "peak_tflops": 1.0,
    "threads": 1,  # robust on a shared CPU (2 threads on an oversubscribed CPU are many times slower)
    "training": {
        "runs": 1,
        "steps": 2,
        "variants": ["lora"],
        "cache_latents": [True, False],
        "load_baseline": True,
    },
    "edit": {"steps": 2, "p2p_reps": 2, "inversion_reps": 1, "inversion_steps": 2},
}


def figures(node, path=""):
    """Every {median, ...} figure in a JSON tree, with its path."""
    if is_figure(node):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from figures(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from figures(value, f"{path}[{i}]")


def ratios(node):
    if isinstance(node, dict):
        if {"numerator_median", "denominator_median", "value"} <= set(node):
            yield node
        for value in node.values():
            yield from ratios(value)
    elif isinstance(node, list):
        for value in node:
            yield from ratios(value)


@pytest.mark.parametrize("name", ["bench.yaml", "bench_gpu.yaml"])
def test_shipped_bench_configs_are_valid(name):
    raw = yaml.safe_load((REPO / "config" / name).read_text())
    config = check_config(raw, base_dir=REPO)
    bench = bench_settings(config)
    assert bench.parts and all(bench.part(p) for p in bench.parts)
    assert bench_settings({"bench": {"threads": 1}}).threads == 1
    if name == "bench_gpu.yaml":
        assert (
            bench.peak_tflops == 989
            and bench.training.resolution == 512
            and bench.training.architecture == "sd14"
        )


@pytest.mark.parametrize(
    ("bench", "expected"),
    [
        ({"trainig": {}}, "unknown key(s) trainig under bench"),
        ({"training": {"steps": 1}}, "bench.training.steps: 1 is too few"),
        (
            {"training": {"variants": ["lora", "dreambooht"]}},
            "bench.training.variants: 'dreambooht' is not one of",
        ),
        ({"memory": {"architecture": "sdxl"}}, "bench.memory.architecture: 'sdxl' is not one of tiny, sd14"),
        ({"parts": ["dag", "dag"]}, "bench.parts: ['dag', 'dag'] has duplicates"),
        ({"peak_tflops": -1}, "bench.peak_tflops: -1 is not a positive number"),
        ({"threads": 0}, "bench.threads: 0 is not a positive integer"),
        (
            {"dag": {"job_modes": ["server", "thread"]}},
            "bench.dag.job_modes: 'thread' is not one of server, process",
        ),
    ],
)
def test_bad_bench_settings_give_one_line(bench, expected):
    with pytest.raises(S2SError) as info:
        bench_settings({"bench": bench})
    assert expected in str(info.value) and "\n" not in str(info.value)


def _dry_run(tmp_path, *args) -> str:
    snakefile = str(REPO / "Snakefile")
    command = [sys.executable, "-m", "snakemake", "-n", "-s", snakefile, "--directory", str(tmp_path), *args]
    proc = subprocess.run(command, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_bench_target_runs_every_part_and_is_not_in_all(tmp_path):
    out = _dry_run(tmp_path, "bench", "--cores", "2", "--configfile", str(REPO / "config" / "bench.yaml"))
    jobs = dict(line.split() for line in out.splitlines() if line.startswith(("bench_part ", "bench ")))
    assert jobs == {"bench_part": "4", "bench": "1"}
    default = _dry_run(tmp_path, "--cores", "2")
    assert "total" in default and not [line for line in default.splitlines() if line.startswith("bench")]


def test_sd14_shapes_match_the_real_model(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from s2s.bench.models import SD14_TEXT, SD14_UNET, SD14_VAE, unet_flops, write_padded_tokenizer

    with torch.device("meta"):
        sizes = [
            sum(p.numel() for p in m.parameters())
            for m in (
                UNet2DConditionModel(**SD14_UNET),
                AutoencoderKL(**SD14_VAE),
                CLIPTextModel(CLIPTextConfig(**SD14_TEXT)),
            )
        ]
    assert sizes == [859_520_964, 83_653_863, 123_060_480]  # CompVis/stable-diffusion-v1-4
    write_padded_tokenizer(tmp_path)
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == 49408 and (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    ids = tokenizer("a photo of sks toy", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    forward = unet_flops(SD14_UNET, 1, 512, "forward")
    assert 0.75e12 < forward < 0.85e12  # ~0.8 TFLOP per 512 px UNet call
    full, text = unet_flops(SD14_UNET, 1, 128, "full"), unet_flops(SD14_UNET, 1, 128, "text")
    assert full > text > forward / 16  # weight gradients cost more than input gradients only


def test_any_method_or_variant_of_the_registry_is_a_bench_variant():
    """The training part benches every method of the registry and every config variant, with or without the
    prior loss, labelled by the registry; each method's FLOP mode follows what it trains."""
    from s2s.bench.models import SD14_UNET, unet_flops
    from s2s.bench.settings import bench_variants, variant_label
    from s2s.bench.training import flop_mode

    config = check_config(
        {
            "subjects": {"toy": {"synthetic": True, "class": "toy"}},
            "methods": ["lora", "lora_dora"],
            "variants": {"lora_dora": {"method": "lora", "use_dora": True}},
        }
    )
    variants = bench_variants(config)
    expected = {"textual_inversion", "dreambooth_prior", "lora", "pivotal_prior", "custom_diffusion"}
    assert expected <= set(variants)
    assert "textual_inversion_prior" not in variants  # Textual Inversion has no prior loss
    assert variants["lora_dora_prior"] == ("lora_dora", True)
    bench = bench_settings({**config, "bench": {"training": {"variants": ["pivotal", "lora_dora"]}}})
    assert bench.training.variants == ("pivotal", "lora_dora")
    assert variant_label(config, "custom_diffusion_prior") == "Custom Diffusion + prior preservation"
    assert variant_label(config, "lora_dora") == "lora_dora"
    with pytest.raises(S2SError, match=r"bench.training.variants: 'lora_dora' is not one of .*pivotal"):
        bench_settings({"bench": {"training": {"variants": ["lora_dora"]}}})  # no such variant declared
    flops = {
        name: unet_flops(SD14_UNET, 1, 64, **flop_mode(config, name, "toy"))
        for name in ("textual_inversion", "lora", "lora_dora", "pivotal", "custom_diffusion", "dreambooth")
    }
    # Weight gradients cost: DreamBooth's every weight most, Custom Diffusion's cross-attention K/V and the
    # adapters less; pivotal's backward pass also reaches the prompt (its new token), DoRA adds the norm.
    assert flops["dreambooth"] > flops["custom_diffusion"] > flops["textual_inversion"] > flops["lora"]
    assert flops["pivotal"] > flops["lora"] and flops["lora_dora"] > flops["lora"]


def test_training_part_benches_a_new_method_with_its_label(tmp_path):
    """One run of Custom Diffusion with prior preservation through the bench's training part (tiny model)."""
    config = check_config(
        {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "device": "cpu", "models": "tiny"}
    )
    training = {"runs": 1, "steps": 2, "variants": ["custom_diffusion_prior"], "cache_latents": [True]}
    bench = bench_settings({**config, "bench": {"parts": ["training"], "threads": 1, "training": training}})
    out = run_part("training", bench, config, tmp_path / "training.json", threads=1)
    (row,) = out["rows"]
    assert (row["variant"], row["method"], row["with_prior_preservation"]) == (
        "custom_diffusion_prior",
        "custom_diffusion",
        True,
    )
    assert row["label"] == "Custom Diffusion + prior preservation" and row["unet_gflop_per_step"] > 0
    assert row["step_s"]["n"] == 1 and row["trainable_params"] > 0
    write_report([tmp_path / "training.json"], tmp_path / "bench.json", tmp_path / "bench.md")
    assert "| Custom Diffusion + prior preservation | yes |" in (tmp_path / "bench.md").read_text()


def test_cuda_parts_are_skipped_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    config = check_config({"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "device": "cuda"})
    out = run_part("training", bench_settings({}), config, tmp_path / "training.json", threads=1)
    assert out["skipped"].startswith("skipped: device 'cuda' was requested")
    assert json.loads((tmp_path / "training.json").read_text())["skipped"] == out["skipped"]


def job(rule, start, first, end, exit_s=0.01, mode="server"):
    """A job's record as s2s.job writes it (times in seconds from 1000)."""
    t0 = 1000.0
    record = {"rule": rule, "mode": mode, "process_start": t0 + start, "step_end": t0 + end, "exit_s": exit_s}
    record["first_model_call"] = None if first is None else t0 + first
    record["startup_s"] = None if first is None else first - start
    record["model_work_s"] = None if first is None else end - first
    record["wall_s"] = end - start + exit_s
    if first is not None:
        record["fixed_cost_s"] = record["startup_s"] + exit_s
    return record


def test_dag_timing_from_the_jobs_records():
    records = [
        job("train_lora", 0, 2, 20),  # model work 2-20
        job("sample", 10, 11.5, 30),  # model work 11.5-30, overlapping the training's
        job("table", 30, None, 31),  # no model call: no fixed cost, no model work
    ]
    summary = summarize_dag(records, wall_s=40.0)
    assert summary["compute_s"] == pytest.approx(28.0)  # the union 2-30, counted once
    assert summary["compute_sum_s"] == pytest.approx(36.5)
    assert summary["non_compute_share"] == pytest.approx(1 - 28 / 40)
    assert summary["non_compute_share_summed"] == pytest.approx(1 - 36.5 / 40)
    assert summary["busy_s"] == pytest.approx(31.01)  # 0-30.01 and 30-31.01
    assert summary["job_fixed_costs"] == pytest.approx([2.01, 1.51])
    assert (
        summary["job_fixed_cost_s"]["median"] == pytest.approx(1.76) and summary["job_fixed_cost_s"]["n"] == 2
    )
    assert summary["per_rule"]["sample"]["fixed_cost_median_s"] == pytest.approx(1.51)
    assert summary["per_rule"]["table"] == {
        "jobs": 1, "job_s": pytest.approx(1.01), "model_work_s": 0.0, "fixed_cost_median_s": None
    }  # fmt: skip
    assert summary["modes"] == ["server"]


@pytest.fixture(scope="module")
def quick_parts(tmp_path_factory) -> list[Path]:
    """The training and edit parts with minimal repetitions (tiny model, CPU)."""
    root = tmp_path_factory.mktemp("bench")
    config = check_config(
        {"subjects": {"toy": {"synthetic": True, "class": "toy"}}, "device": "cpu", "models": "tiny"}
    )
    bench = bench_settings({"bench": QUICK})
    files = []
    for part in bench.parts:
        run_part(part, bench, config, root / f"{part}.json", threads=2)
        files.append(root / f"{part}.json")
    # a DAG part from a recorded run, so that the report shows every section without running the demo
    run = summarize_dag([job("train_lora", 0, 2, 20), job("sample", 10, 11.5, 30)], wall_s=40.0)
    figures_of_run = ("wall_s", "busy_s", "job_sum_s", "compute_s", "compute_sum_s")
    stats = {k: summarize([run[k]], "s") for k in figures_of_run}
    (root / "dag.json").write_text(
        json.dumps(
            {
                "part": "dag",
                "device": "cpu",
                "threads": 2,
                "part_wall_s": 41.0,
                "load_average_before_after": [0.1, 0.2],
                "settings": {"configfile": "config/config.yaml", "cores": 2, "runs": 1},
                "configfile": "config/config.yaml",
                **stats,
                "job_fixed_cost_s": summarize(run["job_fixed_costs"], "s"),
                "non_compute_share": summarize([run["non_compute_share"]], "fraction"),
                "non_compute_share_summed": summarize([run["non_compute_share_summed"]], "fraction"),
                "ratios": [],
                "runs": [run],
            }
        )
    )
    return [*files, root / "dag.json"]


def test_parts_report_medians_with_spread_and_ratios_of_medians(quick_parts, tmp_path):
    report = write_report(quick_parts, tmp_path / "bench.json", tmp_path / "bench.md")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(report)) and set(data["parts"]) == {"training", "edit", "dag"}

    found = list(figures(data))
    assert len(found) > 20
    for path, stat in found:
        assert stat["n"] >= 1 and stat["min"] <= stat["q1"] <= stat["median"] <= stat["q3"] <= stat["max"], (
            path
        )
        assert stat["unit"], path
    for r in ratios(data):
        assert math.isclose(r["value"], r["numerator_median"] / r["denominator_median"]), r["name"]

    training = data["parts"]["training"]
    rows = {(r["variant"], r["cache_latents"]): r for r in training["rows"]}
    assert set(rows) == {("lora", True), ("lora", False)}
    for row in rows.values():
        assert row["step_s"]["n"] == 1 and row["runs"] == 1  # 2 steps, the first one untimed
        assert row["peak_memory_mb"]["median"] > 100 and row["unet_gflop_per_step"] > 0
        assert math.isclose(row["fraction_of_peak"], row["achieved_tflops"] / 1.0)
        assert row["reference_step_s"] == 0.079
    names = [r["name"] for r in training["ratios"]]
    assert "lora: step time without / with latent caching" in names
    assert training["load_baseline"]["peak_memory_mb"]["n"] == 1

    edit = data["parts"]["edit"]
    assert edit["available"] and edit["p2p"]["plain_s"]["n"] == 2
    assert edit["p2p"]["p2p_unet_calls"] == edit["p2p"]["plain_unet_calls"] == 2
    inversion = edit["inversion"]
    assert inversion["null_text"]["unet_calls"] > inversion["negative_prompt"]["unet_calls"]

    md = (tmp_path / "bench.md").read_text()
    for title in ("## 1. Training step time", "## 3-4. Prompt-to-Prompt", "## 5. Demo DAG"):
        assert title in md
    assert "reference (diffusers examples, measured by the issue author)" in md
    assert "(n=1)" in md and "(n=2)" in md
    # The start-up targets' figures, at bench.json's top level (docs/benchmarks.md).
    assert data["job_fixed_cost_s"] == data["parts"]["dag"]["job_fixed_cost_s"]
    assert data["job_fixed_cost_s"]["median"] == pytest.approx(1.76)
    assert data["non_compute_share"]["median"] == pytest.approx(1 - 28 / 40)
    assert "| job fixed cost, s (jobs that call a model) | 1.76 [1.51-2.01] (n=2) |" in md
