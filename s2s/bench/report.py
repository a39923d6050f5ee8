"""Collect the parts' JSON into ``bench.json`` and write ``bench.md``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from s2s.bench.stats import fmt
from s2s.io import write_json, write_text

TITLES = {
    "training": "1. Training step time per method, with and without latent caching",
    "memory": "2. LoRA vs full fine-tuning vs Textual Inversion: step time and peak memory",
    "edit": "3-4. Prompt-to-Prompt cost, and null-text vs negative-prompt inversion",
    "dag": "5. Demo DAG: orchestration overhead",
}


def _g(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def _ratios(ratios: list[dict]) -> list[str]:
    if not ratios:
        return []
    lines = ["", "| ratio (of medians, same run) | value | meaning |", "|---|---|---|"]
    lines += [f"| {r['name']} | {r['value']:.3g} | {r['meaning']} |" for r in ratios]
    return lines


def _contention(part: dict) -> str:
    cpus = part.get("machine", {}).get("cpus") or 1
    before, after = part.get("load_average_before_after", [0, 0])
    others = part.get("other_processes_cpus")
    note = f"load average {before:.1f} before, {after:.1f} after (this part's own processes included)"
    if others is not None:
        note = f"other processes kept {others:.2f} of the {cpus} CPUs busy on average; " + note
        if others > 0.25:
            note += " (**the machine was shared with other work: times are inflated and noisy**)"
    return note


def _name(row: dict) -> str:
    """A row's label (the registry's, s2s.bench.settings.variant_label); its variant name in older JSON."""
    return row.get("label", row["variant"])


def _label(row: dict) -> str:
    return f"{_name(row)} | {'yes' if row['cache_latents'] else 'no'}"


def _training(part: dict) -> list[str]:
    s = part["settings"]
    lines = [
        f"{s['architecture']} model, {s['resolution']} px, batch {s['batch_size']}, device {part['device']}, "
        f"{part['threads']} threads; {s['runs']} fresh process(es) per row, {s['steps']} optimizer steps "
        "each (the first not timed). Figures: median [min-max] (n = repetitions).",
        "",
        "| method | latent caching | step time, s | reference step time, s | UNet GFLOP/step "
        "| achieved TFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        achieved = _g(r["achieved_tflops"])
        if "fraction_of_peak" in r:
            achieved += f" ({100 * r['fraction_of_peak']:.1f}% of peak)"
        lines.append(
            f"| {_label(r)} | {fmt(r['step_s'])} | {_g(r.get('reference_step_s'))} "
            f"| {_g(r['unet_gflop_per_step'])} | {achieved} |"
        )
    lines += [
        "",
        "| method | latent caching | fixed cost per run, s | imports, s | load + caching + 1st step, s "
        "| after last step, s | peak memory, MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in part["rows"]:
        lines.append(
            f"| {_label(r)} | {fmt(r['fixed_s'])} | {fmt(r['import_s'])} "
            f"| {fmt(r['setup_and_first_step_s'])} | {fmt(r['after_last_step_s'])} "
            f"| {fmt(r['peak_memory_mb'], 4)} |"
        )
    if "reference" in part:
        ref = part["reference"]
        lines += ["", f"The {ref['source']}; start-up ~{ref['startup_s']:g} s per run."]
    if "load_baseline" in part:
        base = part["load_baseline"]
        floor = base["peak_memory_mb"]["median"]
        above = ", ".join(f"{_name(r)} {r['peak_memory_mb']['median'] - floor:.0f} MiB" for r in part["rows"])
        lines += [
            "",
            f"Load-only process (imports + models loaded, no training): peak memory "
            f"{fmt(base['peak_memory_mb'], 4)} MiB, load {fmt(base['load_s'])} s. "
            f"Training above that floor (medians): {above}.",
        ]
    lines += _ratios(part["ratios"])
    lines += [
        "",
        f"Notes: {part['memory_note']}. FLOPs: {part['flops_note']}. Fixed cost per run = the process's wall "
        "time minus its timed steps and the untimed first step (taken at the median step time): "
        "interpreter, imports, model load, caching, saving the result.",
    ]
    return lines


def _edit(part: dict) -> list[str]:
    s = part["settings"]
    p, inv = part["p2p"], part["inversion"]
    lines = [
        f"{s['architecture']} model, {s['resolution']} px, {part['dtype']}, device {part['device']}. Each "
        "figure: median [min-max] (n = calls of the edit package's benchmark function, each 1 repetition "
        "after its own warm-up).",
        "",
        f"P2P replace edit of 2 prompts vs plain 2-prompt generation, {p['steps']} steps:",
        "",
        "| | wall time, s | CPU time, s | UNet calls | achieved TFLOP/s (UNet) |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("plain", "plain generation"), ("p2p", "Prompt-to-Prompt")):
        lines.append(
            f"| {label} | {fmt(p[f'{name}_s'])} | {fmt(p.get(f'{name}_cpu_s'))} | {p[f'{name}_unet_calls']} "
            f"| {_g(p[f'{name}_achieved_tflops'])} |"
        )
    lines += _ratios(p["ratios"])
    lines += [
        "",
        f"Inversion of one {s['resolution']} px image, {inv['steps']} steps, guidance "
        f"{inv['guidance_scale']}, then the reconstruction/edit generation:",
        "",
        "| inversion | inversion + edit, s | inversion only, s | UNet calls (inversion) | latent MSE "
        "| pixel MSE |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("null_text", "negative_prompt"):
        m = inv[name]
        lines.append(
            f"| {name.replace('_', '-')} | {fmt(m['seconds'])} | {fmt(m['inversion_s'])} | {m['unet_calls']} "
            f"({m['inversion_unet_calls']}) | {fmt(m['latent_mse'])} | {fmt(m['pixel_mse'])} |"
        )
    lines += _ratios(inv["ratios"])
    lines += ["", f"UNet calls, null-text / negative-prompt: {inv['unet_calls_ratio']:.3g}."]
    return lines


def _dag(part: dict) -> list[str]:
    last = part["runs"][-1]
    lines = [
        f"`snakemake --cores {part['settings']['cores']}` of `{part['configfile']}` from scratch in a "
        f"temporary folder; {part['settings']['runs']} run(s); jobs ran in: {', '.join(last['modes'])} "
        "(server: forked from the job server, s2s.jobserver; process: each in its own process). Every job's "
        "times come from its own record (logs/jobs.jsonl): fixed cost = process start to first model call + "
        "step end to exit; model work = first model call to step end.",
        "",
        "| | value |",
        "|---|---|",
        f"| job fixed cost, s (jobs that call a model) | {fmt(part['job_fixed_cost_s'])} |",
        f"| non-compute share of wall time (no job doing model work) | {fmt(part['non_compute_share'])} |",
        f"| non-compute share, model work summed over jobs | {fmt(part['non_compute_share_summed'])} |",
        f"| wall time, s | {fmt(part['wall_s'])} |",
        f"| time with at least one job running, s | {fmt(part['busy_s'])} |",
        f"| summed job time, s | {fmt(part['job_sum_s'])} |",
        f"| model work (union over jobs), s | {fmt(part['compute_s'])} |",
        f"| model work (summed over jobs), s | {fmt(part['compute_sum_s'])} |",
    ]
    lines += _ratios(part["ratios"])
    modes = part.get("by_mode", {})
    if len(modes) > 1:
        lines += [
            "",
            "The same DAG with its jobs forked from the job server and each in its own process, alternately:",
            "",
            "| jobs ran in | wall time, s | job fixed cost, s | non-compute share | (summed) |",
            "|---|---|---|---|---|",
        ]
        for mode, m in modes.items():
            lines.append(
                f"| {mode} | {fmt(m['wall_s'])} | {fmt(m['job_fixed_cost_s'])} "
                f"| {fmt(m['non_compute_share'])} | {fmt(m['non_compute_share_summed'])} |"
            )
    lines += [
        "",
        "Per rule (last run):",
        "",
        "| rule | jobs | job time, s | model work, s | fixed cost per job (median), s |",
        "|---|---|---|---|---|",
    ]
    for rule, entry in last["per_rule"].items():
        lines.append(
            f"| {rule} | {entry['jobs']} | {entry['job_s']:.0f} | {entry['model_work_s']:.1f} "
            f"| {_g(entry['fixed_cost_median_s'])} |"
        )
    return lines


RENDER = {"training": _training, "memory": _training, "edit": _edit, "dag": _dag}


def write_report(part_files: list[Path | str], out_json: Path | str, out_md: Path | str) -> dict:
    parts = {}
    for path in part_files:
        data = json.loads(Path(path).read_text())
        parts[data["part"]] = data
    report = {"generated": datetime.now(UTC).isoformat(timespec="seconds"), "parts": parts}
    if "dag" in parts and "skipped" not in parts["dag"]:  # the start-up targets (docs/benchmarks.md)
        report["job_fixed_cost_s"] = parts["dag"]["job_fixed_cost_s"]
        report["non_compute_share"] = parts["dag"]["non_compute_share"]
    write_json(out_json, report)
    lines = [
        "# s2s benchmarks",
        "",
        f"Generated {report['generated']}. How each figure is measured: docs/benchmarks.md. Every figure "
        "is a median over repetitions with [min-max] and the repetition count n; quartiles are in "
        "bench.json. Ratios divide medians measured in the same run.",
    ]
    for name, part in parts.items():
        lines += ["", f"## {TITLES.get(name, name)}", ""]
        if "skipped" in part:
            lines.append(part["skipped"])
            continue
        lines += RENDER[name](part)
        lines += ["", f"_Part wall time {part['part_wall_s']:.0f} s; {_contention(part)}._"]
    write_text(out_md, "\n".join(lines) + "\n")
    return report
