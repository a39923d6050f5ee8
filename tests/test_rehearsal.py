"""The rehearsal: the study's own run (config/paper.yaml) on random models with SD v1.4's exact architecture,
the real CLIP tokenizer and bf16 autocast on CPU, reduced in size (config/rehearsal.yaml).

It takes about 20 minutes on 2 cores and ~25 GB of disk, so it runs only with S2S_REHEARSAL=1 (.ci/run
sets it):

    S2S_REHEARSAL=1 .venv/bin/python -m pytest -q -s -m rehearsal tests/test_rehearsal.py

It checks that every stage finished, that mixed precision really ran (autocast on in every training log,
bf16 in every summary), that each method checkpointed at its last step and wrote validation images, that
the edit batch inverted a real photo with null-text inversion and made a subject edit, that evaluation
ran the paper's metric models, and it prints each stage's wall time and each training job's memory
estimate beside its measured peak.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
RESULTS = REPO / "results" / "rehearsal"
METHODS = ("textual_inversion", "dreambooth", "lora")
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ ")

pytestmark = [
    pytest.mark.rehearsal,
    pytest.mark.skipif(os.environ.get("S2S_REHEARSAL") != "1", reason="set S2S_REHEARSAL=1 (about 20 min)"),
]


def log_span(path: Path) -> float:
    """Seconds between a log's first and last timestamped line."""
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S") for m in map(STAMP.match, path.open()) if m]
    return (stamps[-1] - stamps[0]).total_seconds() if len(stamps) > 1 else 0.0


@pytest.fixture(scope="module")
def rehearsal():
    if not (SHARED / "subjects" / "dog").is_dir():
        pytest.skip("the rehearsal uses the study's photos in ../shared/data")
    shutil.rmtree(RESULTS, ignore_errors=True)
    command = [
        sys.executable, "-m", "snakemake", "--cores", "2",
        "--configfile", "config/paper.yaml", "config/rehearsal.yaml",
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    print(f"\nrehearsal: {wall / 60:.1f} min, exit {proc.returncode}")
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
    return proc, wall


def test_the_studys_run_finishes_with_mixed_precision_on(rehearsal):
    proc, wall = rehearsal
    assert proc.returncode == 0, "the rehearsal failed: see the output above"
    logs = RESULTS / "logs"
    print("stage wall times (first to last log line):")
    for log in sorted(logs.rglob("*.log")):
        print(f"  {log.relative_to(logs)}: {log_span(log):.0f} s")
    for method in METHODS:
        text = (logs / "dog" / f"train_{method}.log").read_text()
        assert re.search(r"autocast", text, re.I) and "bf16" in text, f"{method}: autocast not in its log"
        assert "checkpoint-4" in text, f"{method}: no checkpoint at the last step"
        summary = json.loads((RESULTS / "dog" / "models" / method / "train_summary.json").read_text())
        assert summary["mixed_precision"] == "bf16" and summary["steps"] == 4
        assert (RESULTS / "dog" / "validation" / method / "step-000004.png").is_file()
        estimate = summary.get("memory_estimate_mb")
        print(f"  {method}: peak RSS {summary['peak_memory_mb']:.0f} MB, estimate {estimate} MB")
    for row in ("generated_replace", "photo_null_text", "photo_subject"):
        record = json.loads((RESULTS / "dog" / "edits" / row / "edit.json").read_text())
        assert record["edit_id"] == row
    null_text = json.loads((RESULTS / "dog" / "edits" / "photo_null_text" / "edit.json").read_text())
    assert null_text["inversion"] == "null_text" and null_text["unet_calls"]["inversion"] > 3
    metrics = json.loads((RESULTS / "dog" / "metrics" / "dreambooth.json").read_text())
    assert "rehearsal_models" in metrics["models"]["feature_extractor"]
    assert (RESULTS / "table1.csv").is_file()
    print(f"total {wall / 60:.1f} min")
