"""What every rule's job does first (s2s.steps.run, for every step of the table): logging into the rule's
log, torch threads, and the config as the workflow checked it; and the prompts built from a subject,
which the training rules and the training benchmark both use."""

from __future__ import annotations

import gc
import logging
import sys

from s2s.io import S2SError

log = logging.getLogger("s2s")


def setup_job(smk) -> dict:
    if smk.log:
        handler = logging.FileHandler(smk.log[0], mode="a", encoding="utf-8")
        stream = open(smk.log[0], "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives for the job
        sys.stderr = stream  # tqdm and library warnings go to the rule's log too
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    from s2s.progress import quiet_libraries

    quiet_libraries()  # before torch and the libraries are imported: their notices go too
    import torch

    torch.set_num_threads(max(1, int(smk.threads)))
    # The config rules/common.smk checked at parse time (s2s.config.check_config: validated, defaults
    # filled); Snakemake hands the job that same config, so it is not checked again here.
    return dict(smk.config)


def run_step(step, smk, config) -> None:
    """Run one rule's function; a user-facing S2SError ends the job with its one line."""
    try:
        step(smk, config)
    except S2SError as exc:
        log.error("%s", exc)
        print(f"s2s error: {exc}", file=sys.__stderr__)
        sys.exit(1)
    # The outputs are written and closed. The interpreter's exit would now collect every object of
    # torch, diffusers and transformers one by one: ~1.5 s per job here, a sixth of a small model's
    # sampling job. Frozen objects are left to the process's end.
    gc.freeze()


def class_prompt_for(config, subject) -> str:
    return config["class_prompt"].replace("{class}", subject.class_noun)


def instance_prompt_for(config, subject) -> str:
    return config["instance_prompt"].replace("{}", subject.phrase)
