"""Issue 23 point 5's targets on the full world edit benchmark: `snakemake --cores 2 edit_bench` on the
committed world models (models/world) with the config's edit_bench settings (config/config.yaml: the
schema's defaults, 100 cases of seed 0 at 20 steps), the demo subject's LoRA trained first when missing,
then each target of the summary's ``targets`` (s2s.world_studies.edit_bench_targets) checked.

The benchmark takes 7-15 minutes on 2 cores (852 s measured from scratch, the LoRA's training included),
too long for CI, so these tests run only with S2S_EDIT_BENCH=1:

    S2S_EDIT_BENCH=1 .venv/bin/python -m pytest -q -s -m edit_bench tests/test_edit_bench_targets.py

It re-runs the benchmark (``--forcerun edit_bench``: an up-to-date summary may come from older code) and
writes results/world/edit_bench{/, .csv, .json} as the rule does. A target the world does not meet is a
strict xfail whose reason gives the value measured (docs/edit_bench.md, "Targets"): if it starts to be met,
the test fails until the xfail is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SUMMARY = REPO / "results" / "world" / "edit_bench.json"
# Targets not met on the committed world, with the values measured (seventeenth session, 2026-12-06, the
# sixth build; docs/edit_bench.md). The best inversion by gt_psnr is Direct, by 0.01 dB over null-text.
NOT_MET = {
    "best_background_gain": (
        "P2P after Direct Inversion (the best inversion by gt_psnr) beats the baseline on background PSNR by "
        "+4.38 [3.65, 5.14] dB, not 5"
    ),
    "best_attribute_share": (
        "P2P after Direct Inversion finds the target attribute in 0.71 [0.59, 0.81] of object and colour "
        "edits (object 0.69, colour 0.72), not 0.80; after null-text, 0.01 dB behind on gt_psnr, 0.84"
    ),
}
KEYS = (
    "direct_reconstruction",
    "direct_speed",
    "best_background_gain",
    "best_gt_psnr_gain",
    "best_attribute_share",
)

pytestmark = [
    pytest.mark.edit_bench,
    pytest.mark.skipif(
        os.environ.get("S2S_EDIT_BENCH") != "1",
        reason="set S2S_EDIT_BENCH=1 (the full edit benchmark, 10-15 min)",
    ),
]


def config_settings() -> dict:
    """edit_bench.* as the workflow reads them: config/config.yaml checked, the schema's defaults filled."""
    from dataclasses import asdict

    from s2s.config import check_config, edit_bench_config

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return asdict(edit_bench_config(check_config(raw, base_dir=REPO)))


@pytest.fixture(scope="module")
def summary() -> dict:
    from s2s.world_studies.edit_bench import targets_table

    # The target before --forcerun, which takes every rule name after it (the target would default to all).
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "edit_bench", "--forcerun", "edit_bench"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
    }
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    print(f"\nedit benchmark: {time.perf_counter() - started:.0f} s wall, exit {proc.returncode}")
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
    assert proc.returncode == 0, "snakemake edit_bench failed: see the output above"
    out = json.loads(SUMMARY.read_text())
    print(f"benchmark job: {out['seconds']['total']:.0f} s\n{targets_table(out['targets'])}")
    return out


def test_the_run_is_the_full_benchmark_on_the_committed_world(summary):
    settings = config_settings()
    for key in (
        "cases",
        "seed",
        "methods",
        "edit_types",
        "num_inference_steps",
        "null_text_sources",
        "n_boot",
    ):
        assert summary["settings"][key] == settings[key], key
    assert summary["n_cases"] == settings["cases"] == 100
    assert summary["settings"]["subject_model"].startswith(settings["subject_model"])
    assert (REPO / summary["models"]).resolve() == (REPO / "models" / "world").resolve()
    assert [t["key"] for t in summary["targets"]] == list(KEYS)


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(k, marks=pytest.mark.xfail(strict=True, reason=NOT_MET[k])) if k in NOT_MET else k
        for k in KEYS
    ],
)
def test_target(summary, key):
    entry = next(t for t in summary["targets"] if t["key"] == key)
    shown = f"{entry['value']:.3g} [{entry['ci_low']:.3g}, {entry['ci_high']:.3g}]"
    print(f"{key}: {shown}, target {entry['target']:g} ({entry['rule']}): met {entry['met']}")
    assert entry["met"] is True, f"{entry['description']}: {entry['measure']} = {shown}"
