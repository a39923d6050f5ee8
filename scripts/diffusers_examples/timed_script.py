"""Run a training script in this process and record when each optimizer step ends.

    python timed_script.py OUT.json SCRIPT.py [script arguments...]

Used to time the diffusers example scripts exactly as the s2s benchmark times its own loop: a global
optimizer-step hook; the first step is a warm-up and is not timed.
"""

import json
import runpy
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()

from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402


def write_timings(out: str, ends: list[float], started: float) -> None:
    """Step times (between consecutive optimizer steps), step count and the process's time so far."""
    step_s = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    record = {"step_s": step_s, "steps": len(ends), "process_s": time.perf_counter() - started}
    Path(out).write_text(json.dumps(record))


def main(out: str, script: str, *args: str) -> None:
    ends: list[float] = []
    handle = register_optimizer_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        handle.remove()
        write_timings(out, ends, STARTED)


if __name__ == "__main__":
    main(*sys.argv[1:])
