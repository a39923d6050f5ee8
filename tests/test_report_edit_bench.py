"""The world edit benchmark's report page: its tables and its grid of cases, from the benchmark's files."""

from __future__ import annotations

import re
import shutil

from s2s.report.edit_bench_page import CASES_PER_TYPE, TABLES, edit_bench_page
from s2s.world.edit_cases import EDIT_TYPES, write_case
from s2s.world_studies.edit_bench import METHODS, REFERENCE, SUMMARY_COLUMNS, bench_cases, summarise


def test_page_tables_each_method_and_edit_type_and_shows_the_first_cases_of_each_type(tmp_path):
    cases = bench_cases(0, 12)
    rows = []
    for i, case in enumerate(cases):
        folder = write_case(case, tmp_path / "cases" / case.case_id)
        for m, method in enumerate([REFERENCE, *METHODS]):
            # gt_psnr = 10 * case index + method index: every cell's mean is known
            row = {col: 0.5 for col in SUMMARY_COLUMNS} | {"gt_psnr": 10.0 * i + m}
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
    (tmp_path / "summary.json").write_text(__import__("json").dumps(summary))
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
