"""The world edit benchmark's report page (``snakemake edit_bench_report``): its summary as tables of
methods x edit types, with intervals, issue 23's targets (each measured value with its interval, the
target and whether it is met), and a grid of cases (source, ground truth, each method's edit).

Everything comes from the benchmark's files (``s2s.world_studies.edit_bench``): the summary JSON for the
tables, each case's ``case.json`` and PNGs for the grid, so the page shows exactly what was scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from s2s.io import write_text
from s2s.report.pages import E, img, page

# The columns the page tables, with how to read them (docs/edit_bench.md defines each).
TABLES = (
    ("target_attribute_correct", "target attribute found (share of cases)", "{:.2f}"),
    ("gt_psnr", "PSNR against the ground truth, dB (whole image)", "{:.1f}"),
    ("background_psnr", "background PSNR against the source, dB (PnPInversion's convention)", "{:.1f}"),
    ("structure_distance", "structure distance x 1000 (lower: closer to the source's layout)", "{:.2f}"),
    ("seconds", "seconds per edit from the photo (its share of the source's inversion included)", "{:.2f}"),
)
SCALE = {"structure_distance": 1000.0}
CASES_PER_TYPE = 2
CSS = (
    "<style>.cases img{width:96px;height:96px;image-rendering:pixelated}"
    ".cases td{text-align:center;font-size:11.5px}"
    ".targets td{max-width:330px}.targets .met{color:#17641f;font-weight:600}"
    ".targets .not-met{color:#a11b1b;font-weight:600}.targets .unmeasured{color:#666}</style>"
)
# How each target's value reads (s2s.world_studies.edit_bench_targets): a format and a unit; others "{:.3g}".
TARGET_FORMATS = {
    "direct_reconstruction": ("{:+.2f}", " dB"),
    "direct_speed": ("{:.1f}", "x"),
    "best_background_gain": ("{:+.2f}", " dB"),
    "best_gt_psnr_gain": ("{:+.2f}", " dB"),
    "best_attribute_share": ("{:.2f}", ""),
}
# met -> (label, CSS class); None: the rows lacked the target's methods.
MET = {True: ("met", "met"), False: ("not met", "not-met"), None: ("not measured", "unmeasured")}
RERUN = "snakemake --cores 2 edit_bench --forcerun edit_bench"


def _cell(entry: dict | None, fmt: str, scale: float) -> str:
    if not entry or entry.get("mean") is None:
        return "<td></td>"
    low, high = entry.get("ci_low"), entry.get("ci_high")
    interval = (
        ""
        if low is None
        else f'<span class="ci">[{fmt.format(low * scale)}, {fmt.format(high * scale)}]</span>'
    )
    return f'<td class="num">{fmt.format(entry["mean"] * scale)}{interval}</td>'


def summary_tables(methods: dict, edit_types: list[str]) -> list[str]:
    """One table per column of ``TABLES``: a row per method (the ground truth first), a column per edit
    type and over all, each cell the mean over cases and its 95% interval (cases resampled)."""
    groups = ["all", *edit_types]
    out = []
    for column, title, fmt in TABLES:
        head = "".join(f"<th>{E(g)}</th>" for g in groups)
        rows = []
        for method, by_group in methods.items():
            cells = "".join(
                _cell(by_group.get(g, {}).get(column), fmt, SCALE.get(column, 1.0)) for g in groups
            )
            rows.append(f"<tr><td>{E(method)}</td>{cells}</tr>")
        out.append(
            f"<h3>{E(title)}</h3><table><thead><tr><th>method</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return out


def _measured_parts(stat: dict, fmt: str, unit: str = "") -> tuple[str, str]:
    """A measured statistic as (``value unit``, ``[low, high], n cases``); ("not measured", "") without a
    value."""
    if stat.get("value") is None:
        return "not measured", ""
    interval = ""
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        interval = f"[{fmt.format(stat['ci_low'])}, {fmt.format(stat['ci_high'])}], "
    return fmt.format(stat["value"]) + unit, f"{interval}n = {stat.get('n', 0)}"


def _measured(stat: dict, fmt: str, unit: str = "") -> str:
    """``value unit [low, high], n cases`` on one line."""
    value, interval = _measured_parts(stat, fmt, unit)
    return f"{value} {interval}".strip()


def _target_notes(entry: dict, fmt: str, unit: str) -> str:
    """The entry's extras, one line each: ``also`` (the same comparison on other columns), ``per_type``
    (the attribute rate per edit type) and the best inversion it compares."""
    lines = []
    for name, stat in entry.get("also", {}).items():
        lines.append(f"also {E(name)}: {E(_measured(stat, fmt, unit))}")
    for edit_type, stat in entry.get("per_type", {}).items():
        lines.append(f"{E(edit_type)} edits: {E(_measured(stat, fmt, unit))}")
    if entry.get("best_inversion"):
        lines.append(f"best inversion: {E(str(entry['best_inversion'].get('method')))}")
    return "<br>".join(lines)


def targets_table(targets: list[dict] | None) -> str:
    """Issue 23's targets (``s2s.world_studies.edit_bench_targets``), a row each: what is measured, the
    measured value with its 95% interval and the cases, the target and its rule, met or not, and the
    entry's per-type rates, other columns and best inversion. A summary without targets (a run before
    they were computed) gets a line saying how to re-run the benchmark."""
    if targets is None:
        return (
            "<p>This run predates the targets: its summary (edit_bench.json) has none. Re-run the "
            f"benchmark to measure them: <code>{E(RERUN)}</code>.</p>"
        )
    head = "".join(
        f"<th>{E(h)}</th>" for h in ("target", "measured [95% interval]", "target (rule)", "met", "details")
    )
    rows = []
    for entry in targets:
        fmt, unit = TARGET_FORMATS.get(entry["key"], ("{:.3g}", ""))
        label, css = MET[entry.get("met")]
        target = E(fmt.format(entry["target"]) + unit)
        value, interval = _measured_parts(entry, fmt, unit)
        rows.append(
            f'<tr data-key="{E(entry["key"])}"><td>{E(entry["description"])}'
            f'<span class="ci">{E(entry.get("measure", ""))}</span></td>'
            f'<td class="num">{E(value)}<span class="ci">{E(interval)}</span></td>'
            f'<td>{target}<span class="ci">{E(entry.get("rule", ""))}</span></td>'
            f'<td class="{css}">{label}</td><td>{_target_notes(entry, fmt, unit)}</td></tr>'
        )
    table = f'<table class="targets"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    best = next((e["best_inversion"] for e in targets if e.get("best_inversion")), None)
    if best:
        # The entry names the column it chose by: the page reads the summary, never the world studies.
        by = str(best.get("by", ""))
        means = ", ".join(
            f"{E(m)} {v:.2f}" for m, v in sorted(best.get(f"mean_{by}", {}).items(), key=lambda kv: -kv[1])
        )
        table += (
            f"<p>The best inversion: {E(str(best.get('method')))}, {E(best.get('chosen_by', ''))} "
            f"(mean {E(by)}, dB: {means}). It is chosen on the run it is measured on, so its comparisons "
            "with the baseline are slightly optimistic.</p>"
        )
    return table


def case_grid(
    cases_dir: Path, methods: list[str], edit_types: list[str], per_type: int = CASES_PER_TYPE
) -> str:
    """The first ``per_type`` cases of each edit type: source, ground truth and each method's edit."""
    folders = sorted(p for p in Path(cases_dir).iterdir() if (p / "case.json").is_file())
    chosen = []
    for edit_type in edit_types:
        chosen += [
            f for f in folders if json.loads((f / "case.json").read_text()).get("edit_type") == edit_type
        ][:per_type]
    head = "".join(f"<th>{E(h)}</th>" for h in ("case", "source", "ground truth", *methods))
    rows = []
    for folder in chosen:
        case = json.loads((folder / "case.json").read_text())
        label = (
            f"{folder.name}<br>{E(case.get('source_prompt', ''))} &rarr; {E(case.get('target_prompt', ''))}"
        )
        images = [folder / "source.png", folder / "target_gt.png", *(folder / f"{m}.png" for m in methods)]
        cells = "".join(f"<td>{img(p, p.stem) if p.is_file() else ''}</td>" for p in images)
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    return f'<table class="cases"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def edit_bench_page(
    summary_json: Path | str, cases_dir: Path | str, out: Path | str, note: str | None = None
) -> None:
    summary = json.loads(Path(summary_json).read_text())
    settings = summary["settings"]
    edit_types = list(settings["edit_types"])
    methods = [m for m in summary["methods"] if m != "ground_truth"]
    body = [
        CSS,
        f"<p>{summary['n_cases']} world edit cases from {summary['n_sources']} sources (seed "
        f"{settings['seed']}), {settings['num_inference_steps']} DDIM steps, guidance "
        f"{settings['guidance_scale']}, subject edits on {E(settings['subject_model'])}; the benchmark took "
        f"{summary['seconds']['total']:.0f} s. Every metric read back from the saved PNGs; intervals: 95% "
        "percentile bootstrap over cases. The ground-truth row scores the renderer's target as if it were "
        "an edit (the ceiling). Definitions: docs/edit_bench.md.</p>",
        "<h2>Methods x edit types</h2>",
        *summary_tables(summary["methods"], edit_types),
        "<h2>Targets</h2><p>Issue 23's targets, measured from the benchmark's rows: comparisons of two "
        "methods paired by case, intervals 95% percentile bootstrap over cases (docs/edit_bench.md, "
        "Targets).</p>",
        targets_table(summary.get("targets")),
        f"<h2>Cases</h2><p>The first {CASES_PER_TYPE} cases of each edit type.</p>",
        case_grid(Path(cases_dir), methods, edit_types),
    ]
    write_text(out, page("World edit benchmark", body, note))
