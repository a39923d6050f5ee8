"""The mutation list stays applicable and documented (the mutation run itself is scripts/mutation_check.py,
run by .ci/run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("mutation_check", REPO / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_names_existing_tests_and_is_listed_in_the_readme():
    checker = _checker()
    entries = checker.load_mutations()
    assert len(entries) >= 20, "the mutation check needs at least 20 targeted mutations"
    readme = (REPO / "tests" / "README.md").read_text()
    for entry in entries:
        assert checker.check_applicable(entry, REPO) is None, entry["id"]
        for node in entry["tests"]:
            assert (REPO / node.split("::")[0]).is_file(), f"{entry['id']}: {node}"
        assert f"`{entry['id']}`" in readme, f"mutation {entry['id']} is not listed in tests/README.md"


def test_every_slow_mutation_applies_names_existing_tests_and_is_listed_in_the_readme():
    """The slow list (scripts/mutation_check.py --slow): for each of the study's three methods a trained
    model that learned nothing, and an identifier made inert."""
    checker = _checker()
    entries = checker.load_mutations(checker.SLOW_MUTATIONS)
    guarded = {"textual_inversion", "dreambooth", "lora"}
    beats_base = "test_method_identifies_the_subject_more_often_than_the_base_model["
    assert guarded <= {t.split("[")[-1].rstrip("]") for e in entries for t in e["tests"] if beats_base in t}
    assert not {e["id"] for e in entries} & {e["id"] for e in checker.load_mutations()}
    readme = (REPO / "tests" / "README.md").read_text()
    assert checker.markdown(entries, "slow mutation") in readme
    for entry in entries:
        assert checker.check_applicable(entry, REPO) is None, entry["id"]
        for node in entry["tests"]:
            assert (REPO / node.split("::")[0]).is_file(), f"{entry['id']}: {node}"


def test_a_mutation_whose_text_is_missing_or_repeated_is_refused(tmp_path):
    checker = _checker()
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    assert "2 times" in checker.check_applicable({"file": "m.py", "find": "x = 1"}, tmp_path)
    assert "0 times" in checker.check_applicable({"file": "m.py", "find": "y"}, tmp_path)
    (tmp_path / "bad.yaml").write_text("- id: a\n  file: m.py\n")
    with pytest.raises(SystemExit, match="needs exactly the keys"):
        checker.load_mutations(tmp_path)


def test_the_baseline_is_split_by_whole_test_files_across_the_workers():
    checker = _checker()
    tests = ["t/a.py::x", "t/a.py::y", "t/b.py::z", "t/c.py::w[1]", "t/c.py::w[2]", "t/c.py::v"]
    groups = checker.split_by_file(tests, 2)
    assert sorted(t for group in groups for t in group) == sorted(tests)
    files = [{t.split("::")[0] for t in group} for group in groups]
    assert len(groups) == 2 and not files[0] & files[1]
    assert sorted(map(len, groups)) == [3, 3]
    assert checker.split_by_file(tests[:2], 4) == [tests[:2]]  # one file: one worker


def test_a_baseline_failing_in_any_worker_fails_the_baseline(tmp_path):
    checker = _checker()
    roots = [tmp_path / "worker0", tmp_path / "worker1"]
    for root in roots:
        (root / "t").mkdir(parents=True)
        (root / "t" / "test_ok.py").write_text("def test_ok():\n    pass\n")
        (root / "t" / "test_bad.py").write_text("def test_bad():\n    assert False, 'broken in this tree'\n")
    code, _ = checker.run_baseline(roots, ["t/test_ok.py::test_ok"])
    assert code == 0
    for order in (["t/test_ok.py::test_ok", "t/test_bad.py::test_bad"], ["t/test_bad.py::test_bad"]):
        code, output = checker.run_baseline(roots, order)
        assert code == 1 and "broken in this tree" in output
