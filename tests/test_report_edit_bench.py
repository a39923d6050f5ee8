"""The world edit benchmark's report page: its tables and its grid of cases, from the benchmark's files."""

from __future__ import annotations

import json
import re
import shutil

from s2s.report.edit_bench_page import CASES_PER_TYPE, RERUN, TABLES, TARGET_FORMATS, edit_bench_page
from s2s.world.edit_cases import EDIT_TYPES, write_case
from s2s.world_studies.edit_bench import METHODS, REFERENCE, SUMMARY_COLUMNS, bench_cases, summarise
from s2s.world_studies.edit_bench_targets import edit_bench_targets


def _bench(tmp_path, targets: bool = False):
    """A fake benchmark of 12 cases in ``tmp_path``: each case's files, every method's PNG, its rows and
    its summary JSON (with issue 23's targets computed from the rows when ``targets``)."""
    cases = bench_cases(0, 12)
    rows = []
    for i, case in enumerate(cases):
        folder = write_case(case, tmp_path / "cases" / case.case_id)
        for m, method in enumerate([REFERENCE, *METHODS]):
            # gt_psnr = 10 * case index + method index: every cell's mean is known; null-text's inversion
            # 20 x Direct's (the speed target met), the rest equal (the baseline's background as P2P's: the
            # background gain not met)
            inversion = {"p2p_null_text": 20.0 + i % 3}.get(method, 1.0)
            row = {col: 0.5 for col in SUMMARY_COLUMNS} | {"gt_psnr": 10.0 * i + m}
            row |= {"inversion_seconds": inversion, "inversion_unet_calls": inversion}
            rows.append(row | {"case": case.case_id, "method": method, "edit_type": case.edit_type})
            if method != REFERENCE:
                shutil.copy(folder / "source.png", folder / f"{method}.png")
    summary = {
        "settings": {
            "seed": 0, "edit_types": list(EDIT_TYPES), "num_inference_steps": 20, "guidance_scale": 7.5,
            "subject_model": "lora",
        },
        "n_cases": len(cases), "n_sources": len({c.source_id for c in cases}), "seconds": {"total": 12.0},
        "methods": summarise(rows, 50, 0),
    }  # fmt: skip
    if targets:
        summary["targets"] = edit_bench_targets(rows, 50, 0)
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    return cases, rows, summary


def test_page_tables_each_method_and_edit_type_and_shows_the_first_cases_of_each_type(tmp_path):
    cases, _, _ = _bench(tmp_path)
    out = tmp_path / "edit_bench.html"
    edit_bench_page(tmp_path / "summary.json", tmp_path / "cases", out)
    html = out.read_text()
    tables, grid = html.split("<h2>Cases</h2>")
    # One table per column, a row per method (the ground truth too), a cell per edit type and over all.
    assert tables.count("<table>") == len(TABLES)
    for method in [REFERENCE, *METHODS]:
        assert tables.count(f"<td>{method}</td>") == len(TABLES), method
    assert tables.count("<th>all</th>") == len(TABLES)
    # The mean over all cases of a method's gt_psnr, as the page prints it (one decimal).
    index = [REFERENCE, *METHODS].index("p2p_direct")
    mean = sum(10.0 * i + index for i in range(len(cases))) / len(cases)
    gt_table = tables.split("PSNR against the ground truth")[1].split("</table>")[0]
    direct_row = gt_table.split("<td>p2p_direct</td>")[1].split("</tr>")[0]
    assert re.search(r'<td class="num">([0-9.]+)<span class="ci">', direct_row).group(1) == f"{mean:.1f}"
    # The grid: the first cases of each type, each with the source, the truth and every method's edit.
    types = [c.edit_type for c in cases]
    expected = sum(min(CASES_PER_TYPE, types.count(t)) for t in EDIT_TYPES)
    grid_rows = grid.split("<tbody>")[1].split("</tr>")[:-1]
    assert len(grid_rows) == expected
    assert all(r.count("<img ") == 2 + len(METHODS) for r in grid_rows)
    first_of_each = {t: next(c.case_id for c in cases if c.edit_type == t) for t in set(types)}
    for case_id in first_of_each.values():
        assert case_id in grid


def _targets_section(html: str) -> str:
    return html.split("<h2>Targets</h2>")[1].split("<h2>Cases</h2>")[0]


def test_page_tables_each_target_with_its_interval_and_whether_it_is_met(tmp_path):
    _, _, summary = _bench(tmp_path, targets=True)
    targets = summary["targets"]
    # The fixture meets some targets and not others, so the two labels must be told apart.
    assert {e["met"] for e in targets} == {True, False}
    out = tmp_path / "edit_bench.html"
    edit_bench_page(tmp_path / "summary.json", tmp_path / "cases", out)
    html = out.read_text()
    # After the methods x edit types tables, before the cases.
    assert (
        html.index("PSNR against the ground truth") < html.index("<h2>Targets</h2>") < html.index("<h2>Cases")
    )
    section = _targets_section(html)
    assert section.count('<table class="targets">') == 1
    assert "predates" not in section
    body = section.split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r'<tr data-key="([a-z_]+)">(.*?)</tr>', body)
    assert [key for key, _ in rows] == [e["key"] for e in targets]
    for (_, row), entry in zip(rows, targets, strict=True):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert len(cells) == 5, row
        description, measured, target, met, details = cells
        assert entry["description"] in description
        fmt, unit = TARGET_FORMATS[entry["key"]]
        assert measured == (
            f'{fmt.format(entry["value"])}{unit}<span class="ci">[{fmt.format(entry["ci_low"])}, '
            f"{fmt.format(entry['ci_high'])}], n = {entry['n']}</span>"
        )
        assert target.startswith(fmt.format(entry["target"]) + unit)
        assert entry["rule"].replace(">", "&gt;") in target  # escaped
        label = re.search(r'<td class="([a-z-]+)">(met|not met)</td>', row)
        assert label.groups() == (("met", "met") if entry["met"] else ("not-met", "not met")), entry["key"]
        if "per_type" in entry:
            for edit_type, stat in entry["per_type"].items():
                assert f"{edit_type} edits: {fmt.format(stat['value'])}" in details
        if "best_inversion" in entry:
            assert f"best inversion: {entry['best_inversion']['method']}" in details
    met = dict(rows)
    assert '<td class="met">met</td>' in met["direct_speed"]  # 20x or more: met
    assert '<td class="not-met">not met</td>' in met["best_background_gain"]  # +0 dB: not met
    # The best inversion: the P2P method of the highest gt_psnr (the fixture's last P2P), and every mean.
    best = targets[-1]["best_inversion"]
    assert best["method"] == "p2p_direct"
    assert f"The best inversion: {best['method']}" in section
    assert all(method in section.split("The best inversion")[1] for method in best["mean_gt_psnr"])


def test_a_summary_from_before_the_targets_says_how_to_measure_them(tmp_path):
    _bench(tmp_path)
    out = tmp_path / "edit_bench.html"
    edit_bench_page(tmp_path / "summary.json", tmp_path / "cases", out)
    section = _targets_section(out.read_text())
    assert "predates the targets" in section
    assert f"<code>{RERUN}</code>" in section
    assert RERUN == "snakemake --cores 2 edit_bench --forcerun edit_bench"
    assert "<table" not in section
