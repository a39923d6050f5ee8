"""Run one benchmark part and write its JSON (one Snakemake job per part)."""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from s2s.bench.settings import BenchConfig
from s2s.io import write_json

log = logging.getLogger(__name__)


def cuda_missing(device: str) -> str | None:
    """Why a part cannot run on ``device`` (None when it can)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"skipped: device {device!r} was requested (config key 'device') but no CUDA GPU is visible"
    return None


def machine() -> dict:
    import torch

    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_counters() -> tuple[float, float] | None:
    """CPU seconds used by the whole machine (all processes) and by this process and its waited-for
    children, for the share of the CPU that other work took during a part (Linux only)."""
    import resource

    try:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = sum(
        getattr(resource.getrusage(who), field)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for field in ("ru_utime", "ru_stime")
    )
    return busy, own


def run_part(name: str, bench: BenchConfig, config: dict, out_json: Path | str, threads: int) -> dict:
    """Run part ``name`` (training, memory, edit, dag) and write ``out_json``.

    ``threads``: torch CPU threads of the measured processes, unless the settings fix them.
    """
    import torch

    threads = bench.threads or threads
    torch.set_num_threads(threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    cpu_before = _cpu_counters()
    device = config["device"]
    result: dict = {"part": name, "settings": bench.part(name), "device": device}
    skipped = cuda_missing(device) if name != "dag" else None
    if name == "dag" and device.startswith("cuda"):
        skipped = (
            "skipped: the demo DAG runs on the CPU (config/config.yaml); it is not part of the GPU variant"
        )
    if skipped:
        log.warning("%s: %s", name, skipped)
        result["skipped"] = skipped
    else:
        with tempfile.TemporaryDirectory(prefix=f"s2s-bench-{name}-") as tmp:
            work = Path(tmp)
            if name in ("training", "memory"):
                from s2s.bench.training import bench_training

                result.update(bench_training(getattr(bench, name), config, work, threads, bench.peak_tflops))
            elif name == "edit":
                from s2s.bench.edit import bench_edit

                result.update(bench_edit(bench.edit, config, work, bench.peak_tflops))
            elif name == "dag":
                from s2s.bench.dag import bench_dag

                result.update(bench_dag(bench.dag, work))
            else:
                raise ValueError(f"unknown benchmark part {name!r}")
    result["threads"] = threads
    result["machine"] = machine()
    result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    result["part_wall_s"] = time.perf_counter() - started
    result["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    cpu_after = _cpu_counters()
    if cpu_before and cpu_after:
        # CPUs busy with other processes, on average over the part (0: the part had the machine alone)
        others = (cpu_after[0] - cpu_before[0]) - (cpu_after[1] - cpu_before[1])
        result["other_processes_cpus"] = max(0.0, others / result["part_wall_s"])
    write_json(out_json, result)
    log.info("benchmark part %s done in %.0f s", name, result["part_wall_s"])
    return result
