"""The ``bench:`` section of the config: which parts run and how many repetitions each takes.

Parsed without torch (Snakemake reads it at parse time). An unknown key or a bad value stops the run with
one line naming the key, like the rest of the config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from s2s import registry
from s2s.io import S2SError

PARTS = ("training", "memory", "edit", "dag")
JOB_MODES = ("server", "process")
ARCHITECTURES = ("tiny", "sd14")
#: a bench variant's suffix for its run with the class prior-preservation loss
PRIOR_SUFFIX = "_prior"


def bench_variants(config: dict) -> dict[str, tuple[str, bool]]:
    """The training variants the bench can run: name -> (the method or config variant it trains, with
    prior preservation). Every method of the registry and every variant of the config (``variants:``)
    by its name, without the prior loss; NAME_prior with it, where its method has one (the study's
    defaults: textual_inversion, dreambooth, dreambooth_prior, lora, lora_prior). A config variant
    named like a NAME_prior is that variant."""
    out: dict[str, tuple[str, bool]] = {}
    for name in [*registry.NAMES, *registry.variants(config)]:
        out[name] = (name, False)
        if registry.info(config, name).prior:
            out[f"{name}{PRIOR_SUFFIX}"] = (name, True)
    return out


def variant_label(config: dict, variant: str) -> str:
    """A bench row's label: the registry's label of its method (a config variant: its name), and
    whether the prior loss is on."""
    name, prior = bench_variants(config)[variant]
    return registry.label(name) + (" + prior preservation" if prior else "")


@dataclass(frozen=True)
class TrainingBench:
    """Training step time, fixed cost per run and peak memory; every run is a fresh process."""

    architecture: str = "tiny"
    resolution: int = 64
    batch_size: int = 2
    steps: int = 10  # optimizer steps per run; the first one is not timed (warm-up)
    runs: int = 3  # fresh processes per (variant, caching)
    variants: tuple[str, ...] = ("textual_inversion", "dreambooth", "dreambooth_prior", "lora")
    cache_latents: tuple[bool, ...] = (True, False)
    load_baseline: bool = False  # also measure a process that only loads the models (memory floor)


@dataclass(frozen=True)
class EditBench:
    architecture: str = "tiny"
    resolution: int = 64
    steps: int = 50
    p2p_reps: int = 5
    inversion_reps: int = 3
    inversion_steps: int = 50


@dataclass(frozen=True)
class DagBench:
    configfile: str = "config/config.yaml"  # relative to the workflow's folder
    cores: int = 2
    runs: int = 1  # whole demo runs (each takes minutes)
    # How the jobs run: "server" (forked from the job server, the default) and/or "process" (each in its
    # own process, job_server: false); with both, each run does both, alternately, and the part compares.
    job_modes: tuple[str, ...] = ("server",)


@dataclass(frozen=True)
class BenchConfig:
    parts: tuple[str, ...] = PARTS
    peak_tflops: float | None = None  # the device's dense peak for the run's precision (H200 bf16: 989)
    threads: int | None = None  # torch CPU threads of the measured processes; None: the job's threads
    training: TrainingBench = field(default_factory=TrainingBench)
    memory: TrainingBench = field(
        default_factory=lambda: TrainingBench(
            architecture="sd14",
            resolution=128,
            batch_size=1,
            steps=4,
            runs=1,
            variants=("textual_inversion", "dreambooth", "lora"),
            cache_latents=(True,),
            load_baseline=True,
        )
    )
    edit: EditBench = field(default_factory=EditBench)
    dag: DagBench = field(default_factory=DagBench)

    def part(self, name: str) -> dict:
        """The settings one part runs with (recorded in its JSON; a change re-runs the part)."""
        return {"peak_tflops": self.peak_tflops, "threads": self.threads, **asdict(getattr(self, name))}


def _fail(key: str, message: str) -> S2SError:
    return S2SError(f"config key bench.{key}: {message}")


def _value(key: str, value: Any, default: Any, choices: tuple | None = None) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(key, f"{value!r} is not true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(key, f"{value!r} is not a positive integer")
        if key.endswith("steps") and value < 2 and "edit" not in key:
            raise _fail(key, f"{value} is too few: the first step is a warm-up, give at least 2")
        return value
    if isinstance(default, str):
        if not isinstance(value, str) or (choices and value not in choices):
            allowed = f"one of {', '.join(choices)}" if choices else "a string"
            raise _fail(key, f"{value!r} is not {allowed}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not value:
            raise _fail(key, f"{value!r} is not a non-empty list")
        item_default = default[0]
        items = [_value(key, v, item_default, choices) for v in value]
        if len(set(items)) != len(items):
            raise _fail(key, f"{value!r} has duplicates")
        return tuple(items)
    raise AssertionError(key)


def _section(cls, raw: Any, prefix: str, base, variants: tuple[str, ...]):
    if not isinstance(raw, dict):
        raise _fail(prefix, f"{raw!r} is not a mapping")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(prefix, f"unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(known))}")
    choices = {"architecture": ARCHITECTURES, "variants": variants, "job_modes": JOB_MODES}
    values = {
        name: _value(f"{prefix}.{name}", value, getattr(base, name), choices.get(name))
        for name, value in raw.items()
    }
    return replace(base, **values)


def bench_settings(config: dict) -> BenchConfig:
    """The typed ``bench:`` section of a workflow config (defaults for every missing key); its training
    variants are any of ``bench_variants`` (the registry's methods and the config's variants)."""
    raw = config.get("bench") or {}
    if not isinstance(raw, dict):
        raise _fail("(section)", f"{raw!r} is not a mapping")
    default = BenchConfig()
    known = {f.name for f in fields(BenchConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        allowed = ", ".join(sorted(known))
        raise S2SError(f"config: unknown key(s) {', '.join(unknown)} under bench; allowed keys: {allowed}")
    values: dict[str, Any] = {}
    variants = tuple(bench_variants(config))
    if "parts" in raw:
        values["parts"] = _value("parts", raw["parts"], ("",), PARTS)
    if "peak_tflops" in raw:
        peak = raw["peak_tflops"]
        if peak is not None and (isinstance(peak, bool) or not isinstance(peak, int | float) or peak <= 0):
            raise _fail("peak_tflops", f"{peak!r} is not a positive number or null")
        values["peak_tflops"] = None if peak is None else float(peak)
    if "threads" in raw:
        threads = raw["threads"]
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise _fail("threads", f"{threads!r} is not a positive integer or null")
        values["threads"] = threads
    for name, cls in (
        ("training", TrainingBench),
        ("memory", TrainingBench),
        ("edit", EditBench),
        ("dag", DagBench),
    ):
        if name in raw:
            values[name] = _section(cls, raw[name], name, getattr(default, name), variants)
    return replace(default, **values)
