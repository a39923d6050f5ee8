"""Train one method with the s2s loop and record when each optimizer step ends (see timed_script.py).

    python timed_s2s.py OUT.json METHOD PRIOR(yes|no) STEPS MODEL INSTANCE_DIR CLASS_DIR
"""

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

STARTED = time.perf_counter()

from timed_script import write_timings  # noqa: E402 - this folder (run as a script)
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from s2s.config import check_config, subject, train_config  # noqa: E402
from s2s.train.loop import train  # noqa: E402


def main(out: str, method: str, prior: str, steps: str, model: str, instance: str, class_dir: str) -> None:
    config = check_config({"subjects": {"toy": {"synthetic": True, "class": "toy"}}})
    cfg = replace(
        train_config(config, method),
        max_train_steps=int(steps),
        train_batch_size=2,
        with_prior_preservation=prior == "yes",
        checkpointing_steps=10**9,
        validation_prompt=None,
    )
    ends: list[float] = []
    register_optimizer_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, subject(config, "toy"), model, instance, Path(tmp) / "model", Path(tmp) / "ckpt", 64,
              "a photo of sks toy", class_dir=class_dir, class_prompt="a photo of a toy", device="cpu")
    write_timings(out, ends, STARTED)


if __name__ == "__main__":
    main(*sys.argv[1:])
