"""Run one training job in several processes (one per GPU) under ``accelerate launch``.

The training rules call :func:`train_job`. With ``num_processes: 1`` it runs the loop in the job's own
process. Above 1 it writes the job's arguments to a JSON file and starts
``accelerate launch --multi_gpu --num_processes N -m s2s.train.launch SPEC.json``. Each process then
runs the same loop under DDP (NCCL on GPUs, gloo on CPU). The argument list is passed without a shell,
so prompts and paths from the config are never interpreted by one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from s2s.config import Subject, TrainConfig
from s2s.io import S2SError

log = logging.getLogger(__name__)

_PATH_ARGS = ("instance_dir", "out_dir", "checkpoint_dir", "class_dir", "validation_dir")


def train_job(cfg: TrainConfig, subject: Subject, threads: int = 1, **kwargs) -> dict | None:
    """Train in this process, or in ``cfg.num_processes`` processes; ``kwargs`` as ``loop.train``.

    Returns the summary when training ran in this process (None after a multi-process run; the
    summary is in ``out_dir/train_summary.json``).
    """
    if cfg.num_processes == 1:
        from s2s.train.loop import train

        return train(cfg, subject, **kwargs)
    launch_processes(cfg, subject, threads=threads, **kwargs)
    return None


def _free_port() -> int:
    # Two multi-process jobs on one node must not both use accelerate's default port 29500.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(num_processes: int, spec_path: Path, port: int) -> list[str]:
    # --multi_gpu selects torch.distributed's launcher; on a machine without GPUs each process's
    # Accelerator(cpu=True) then joins a gloo process group (accelerate's MULTI_CPU).
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(port),
        "--mixed_precision",
        "no",  # the loop sets the precision itself from the config
        "--dynamo_backend",
        "no",
        "-m",
        "s2s.train.launch",
        str(spec_path),
    ]


def check_gpus(num_processes: int, device: str, key: str = "training.num_processes") -> None:
    """One process per GPU: refuse to start more processes than the job can see GPUs."""
    import torch

    from s2s.models import pick_device

    visible = torch.cuda.device_count()
    if pick_device(device).type == "cuda" and visible < num_processes:
        raise S2SError(
            f"{key} is {num_processes} but this job sees {visible} GPU(s); "
            f"request as many GPUs (the training rules ask for num_processes GPUs; locally make sure the "
            f"machine has them and CUDA_VISIBLE_DEVICES shows them) or lower {key}"
        )


def process_env(threads: int, num_processes: int) -> dict[str, str]:
    """Environment of the launched processes."""
    env = dict(os.environ)
    # CPU threads are shared out between the processes (on GPUs they only feed the data).
    env["OMP_NUM_THREADS"] = str(max(1, threads // num_processes))
    # The package must import in the new processes too: in `--use-conda` jobs it is not installed (the
    # rule scripts put the workflow folder on sys.path, and Snakemake strips PYTHONPATH).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def launch_processes(cfg: TrainConfig, subject: Subject, threads: int = 1, **kwargs) -> None:
    check_gpus(cfg.num_processes, kwargs.get("device", "auto"), cfg.key("num_processes"))
    spec = {
        "cfg": dataclasses.asdict(cfg),
        "subject": dataclasses.asdict(subject),
        "kwargs": {k: (str(v) if k in _PATH_ARGS and v is not None else v) for k, v in kwargs.items()},
    }
    checkpoint_dir = Path(kwargs["checkpoint_dir"])
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    env = process_env(threads, cfg.num_processes)
    with tempfile.TemporaryDirectory(dir=checkpoint_dir, prefix=".launch-") as tmp:
        spec_path = Path(tmp) / "train_spec.json"
        spec_path.write_text(json.dumps(spec))
        command = launch_command(cfg.num_processes, spec_path, _free_port())
        log.info("training %s in %d processes: %s", cfg.run_name, cfg.num_processes, " ".join(command))
        sys.stdout.flush()
        sys.stderr.flush()
        # The processes write their logs to this job's stderr (the rule's log file).
        result = subprocess.run(command, env=env, stdout=sys.stderr, stderr=sys.stderr, check=False)
    if result.returncode != 0:
        raise S2SError(
            f"training {cfg.run_name}: one of the {cfg.num_processes} training processes failed "
            f"(exit status {result.returncode}); its error is in the log above; "
            f"set training.num_processes: 1 to train in a single process"
        )


def main(spec_path: str) -> None:
    """Entry point of each launched process: rebuild the arguments and run the loop."""
    import torch

    from s2s.train.loop import train

    # Every process trains; only the main one reports progress (the others' warnings still show).
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    spec = json.loads(Path(spec_path).read_text())
    raw = spec["cfg"]
    cfg = TrainConfig(**{**raw, "target_modules": tuple(raw["target_modules"])})
    subject = Subject(**spec["subject"])
    try:
        train(cfg, subject, **spec["kwargs"])
    except S2SError as exc:
        log.error("%s", exc)
        sys.exit(1)


if __name__ == "__main__":
    main(*sys.argv[1:])
