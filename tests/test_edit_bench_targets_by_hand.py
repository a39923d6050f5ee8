"""The world edit benchmark's targets (s2s.world_studies.edit_bench_targets) on small hand-made rows: paired
by case, intervals from the project's bootstrap, the best inversion, and each target met or not at its
boundary. The full benchmark's targets are checked by the gated tests/test_edit_bench_targets.py."""

from __future__ import annotations

import pytest

from s2s.metrics.bootstrap import bootstrap_ci
from s2s.world_studies import edit_bench_targets as tg

N_BOOT, SEED = 200, 0
# Six cases: five whose attribute counts (object, colour) and one background case, which must not count.
CASES = {"c0": "object", "c1": "object", "c2": "object", "c3": "colour", "c4": "colour", "c5": "background"}
KEYS = [
    "direct_reconstruction",
    "direct_speed",
    "best_background_gain",
    "best_gt_psnr_gain",
    "best_attribute_share",
]


def row(case: str, method: str, **values) -> dict:
    return {"case": case, "method": method, "edit_type": CASES.get(case, "object"), **values}


def bench_rows(change: dict | None = None) -> list[dict]:
    """Rows of every method on the six cases, each target exactly at its boundary:

    - background PSNR: baseline 20 + i, null-text 25 + i (+5 dB, the target), Direct null-text's - 0.25;
    - gt_psnr: baseline 15, DDIM 16, negative prompt 16.5, Direct 17, null-text 17.5 (the best, +2.5);
    - inversion seconds: null-text 5.0, Direct 0.5 (10x, the target); the others 0.5;
    - target attribute (null-text): found in 4 of the 5 object and colour cases (0.8, the target), not in
      the background case.

    ``change``: {(method, column): [value per case]} replacing those values."""
    values = {
        "baseline": {"background_psnr": [20 + i for i in range(6)], "gt_psnr": [15.0] * 6},
        "p2p_ddim": {"background_psnr": [21.0] * 6, "gt_psnr": [16.0] * 6},
        "p2p_negative_prompt": {"background_psnr": [22.0] * 6, "gt_psnr": [16.5] * 6},
        "p2p_direct": {"background_psnr": [24.75 + i for i in range(6)], "gt_psnr": [17.0] * 6},
        "p2p_null_text": {
            "background_psnr": [25 + i for i in range(6)],
            "gt_psnr": [17.5] * 6,
            "inversion_seconds": [5.0] * 6,
            "target_attribute_correct": [1.0, 1.0, 1.0, 1.0, 0.0, 0.0],
        },
    }
    for (method, column), column_values in (change or {}).items():
        values[method][column] = column_values
    rows = []
    for method, columns in values.items():
        for i, case in enumerate(CASES):
            cells = {
                "inversion_seconds": 0.5,
                "seconds": 1.0,
                "inversion_unet_calls": 20,
                "target_attribute_correct": 1.0,
            }
            cells |= {column: column_values[i] for column, column_values in columns.items()}
            rows.append(row(case, method, **cells))
    return rows


def targets(rows: list[dict]) -> dict[str, dict]:
    return {t["key"]: t for t in tg.edit_bench_targets(rows, N_BOOT, SEED)}


# ---------------------------------------------------------------- pairing and intervals


def test_differences_pair_the_same_case_whatever_the_row_order():
    """Direct 20, 24, 28, 32 and null-text 0.25 lower on the same cases, null-text's rows in reverse order,
    with a case only null-text has and one where Direct has no value: every paired difference is 0.25, so
    the interval is [0.25, 0.25] on the 4 shared cases (rows paired by position would differ by up to 12)."""
    rows = [row(f"c{i}", "p2p_direct", background_psnr=v) for i, v in enumerate([20.0, 24.0, 28.0, 32.0])]
    rows.append(row("c5", "p2p_direct", background_psnr=""))  # the CSV's missing value
    null_text = [
        row(f"c{i}", "p2p_null_text", background_psnr=v) for i, v in enumerate([19.75, 23.75, 27.75, 31.75])
    ]
    rows += null_text[::-1]
    rows += [
        row("c4", "p2p_null_text", background_psnr=0.0),
        row("c5", "p2p_null_text", background_psnr=25.0),
    ]
    got = tg.paired_difference(rows, "p2p_direct", "p2p_null_text", "background_psnr", N_BOOT, SEED)
    assert got == {"value": 0.25, "ci_low": 0.25, "ci_high": 0.25, "n": 4}


def test_interval_is_the_projects_bootstrap_of_the_differences_and_contains_their_mean():
    """Differences 2, -1, 1, 1 (mean 0.75): the interval is bootstrap_ci of them with the run's n_boot and
    seed, and contains the mean."""
    a, b = [30.0, 20.0, 26.0, 21.0], [28.0, 21.0, 25.0, 20.0]
    rows = [row(f"c{i}", "x", gt_psnr=v) for i, v in enumerate(a)]
    rows += [row(f"c{i}", "y", gt_psnr=v) for i, v in enumerate(b)]
    got = tg.paired_difference(rows, "x", "y", "gt_psnr", N_BOOT, SEED)
    low, high = bootstrap_ci([2.0, -1.0, 1.0, 1.0], n_boot=N_BOOT, seed=SEED)
    assert got == {"value": 0.75, "ci_low": low, "ci_high": high, "n": 4}
    assert low < 0.75 < high


def test_csv_strings_give_the_same_targets_as_numbers():
    rows = bench_rows()
    as_csv = [{k: v if k in ("case", "method", "edit_type") else repr(v) for k, v in r.items()} for r in rows]
    assert tg.edit_bench_targets(as_csv, N_BOOT, SEED) == tg.edit_bench_targets(rows, N_BOOT, SEED)


# ---------------------------------------------------------------- the targets at their boundaries


def test_every_target_met_at_its_boundary():
    got = targets(bench_rows())
    assert list(got) == KEYS
    assert {k: t["met"] for k, t in got.items()} == dict.fromkeys(KEYS, True)
    expected = {
        "direct_reconstruction": (-0.25, 6),  # Direct 0.25 dB below null-text on every case
        "direct_speed": (10.0, 6),  # 5.0 s / 0.5 s
        "best_background_gain": (5.0, 6),  # null-text 25 + i - baseline 20 + i
        "best_gt_psnr_gain": (2.5, 6),  # 17.5 - 15
        "best_attribute_share": (0.8, 5),  # 4 of the 5 object and colour cases
    }
    for key, (value, n) in expected.items():
        entry = got[key]
        assert (entry["value"], entry["n"]) == (value, n), key
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], key
    assert got["best_attribute_share"]["per_type"]["object"]["value"] == 1.0
    assert got["best_attribute_share"]["per_type"]["colour"]["value"] == 0.5


@pytest.mark.parametrize(
    "key, change, value",
    [
        (
            "direct_reconstruction",
            {("p2p_direct", "background_psnr"): [24.625 + i for i in range(6)]},
            -0.375,
        ),
        ("direct_speed", {("p2p_null_text", "inversion_seconds"): [4.75] * 6}, 9.5),
        ("best_background_gain", {("baseline", "background_psnr"): [20.25 + i for i in range(6)]}, 4.75),
        ("best_attribute_share", {("p2p_null_text", "target_attribute_correct"): [1, 1, 1, 0, 0, 1]}, 0.6),
    ],
)
def test_target_not_met_just_past_its_boundary(key, change, value):
    got = targets(bench_rows(change))
    assert got[key]["value"] == pytest.approx(value, abs=1e-12)
    assert got[key]["met"] is False
    assert all(t["met"] for k, t in got.items() if k != key)


def test_gt_psnr_gain_needs_the_interval_above_zero():
    """Null-text minus baseline 3, -1, 3, -1, 3, -1 dB: a mean of +1 dB, but resamples with mostly -1 pull
    the interval's low end to zero or below, so the target is not met."""
    gains = [3.0, -1.0] * 3
    got = targets(bench_rows({("baseline", "gt_psnr"): [17.5 - g for g in gains]}))["best_gt_psnr_gain"]
    assert got["best_inversion"]["method"] == "p2p_null_text"
    assert got["value"] == 1.0 and got["ci_low"] <= 0 < got["value"]
    assert got["met"] is False


def test_the_best_inversion_is_the_highest_mean_gt_psnr_and_is_recorded():
    """Direct raised above null-text on gt_psnr becomes the best: the baseline comparisons and the attribute
    share are then Direct's (its background gain 4.75 dB, its attribute found everywhere)."""
    got = targets(bench_rows({("p2p_direct", "gt_psnr"): [18.0] * 6}))
    for key in ("best_background_gain", "best_gt_psnr_gain", "best_attribute_share"):
        assert got[key]["best_inversion"]["method"] == "p2p_direct", key
    assert got["best_background_gain"]["value"] == 4.75
    assert got["best_gt_psnr_gain"]["value"] == 3.0
    assert got["best_attribute_share"]["value"] == 1.0
    means = got["best_gt_psnr_gain"]["best_inversion"]["mean_gt_psnr"]
    assert means == {"p2p_ddim": 16.0, "p2p_null_text": 17.5, "p2p_negative_prompt": 16.5, "p2p_direct": 18.0}


def test_the_best_is_chosen_on_the_cases_every_p2p_method_has():
    """Null-text run on fewer cases (null_text_sources), at 17.5; Direct 18 on c0 and 16 elsewhere (16.3
    over all six). On c0 and c1 null-text is the best (17.5 against 17); on c0 alone Direct is (18 against
    17.5), though null-text's mean over its cases is higher than Direct's over all of its own."""
    rows = [
        r
        for r in bench_rows({("p2p_direct", "gt_psnr"): [18.0, 16.0, 16.0, 16.0, 16.0, 16.0]})
        if r["method"] != "p2p_null_text" or r["case"] in ("c0", "c1")
    ]
    assert tg.best_p2p(tg.p2p_means(rows)) == "p2p_null_text"
    rows = [r for r in rows if r["method"] != "p2p_null_text" or r["case"] == "c0"]
    assert tg.best_p2p(tg.p2p_means(rows)) == "p2p_direct"


def test_a_target_without_its_methods_is_not_measured():
    got = targets([r for r in bench_rows() if r["method"] != "baseline"])
    assert got["best_background_gain"]["value"] is None and got["best_background_gain"]["met"] is None
    assert got["best_gt_psnr_gain"]["met"] is None
    assert got["direct_reconstruction"]["met"] is True
    assert targets([])["best_attribute_share"]["best_inversion"]["method"] == "none"


def test_p2p_methods_are_the_benchmarks():
    from s2s.world_studies.edit_bench import METHODS

    assert tuple(m for m in METHODS if m.startswith("p2p_")) == tg.P2P_METHODS
    assert {tg.DIRECT, tg.NULL_TEXT, tg.BASELINE} <= set(METHODS)
