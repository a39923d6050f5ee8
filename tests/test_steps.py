"""The step table (s2s.steps): every rule script, the report and the bench reach their function through it,
and it is the only table of steps."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from s2s.steps import STEPS, step_function

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "workflow_scripts"


def _script_steps(path: Path) -> list[ast.expr]:
    """The step argument of each run(snakemake, STEP) call of a workflow script."""
    calls = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "run"
    ]
    return [call.args[1] for call in calls]


def _rules_of_script() -> dict[str, list[str]]:
    """Script file name -> the names of the rules (in rules/*.smk) whose script it is."""
    rules: dict[str, list[str]] = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            if m := re.match(r"\s*rule (\w+):", line):
                rule = m.group(1)
            elif m := re.match(r'\s*"\.\./workflow_scripts/(\w+\.py)"', line):
                rules.setdefault(m.group(1), []).append(rule)
    return rules


def test_every_rule_script_reaches_a_step_of_the_table():
    scripts = sorted(SCRIPTS.glob("*.py"))
    by_script = _rules_of_script()
    assert {p.name for p in scripts} == set(by_script), "a script no rule runs, or a rule's missing script"
    for path in scripts:
        (step,) = _script_steps(path)  # one call, through s2s.steps
        assert "from s2s.steps import run" in path.read_text(), path.name
        if isinstance(step, ast.Constant):
            assert step.value in STEPS, (path.name, step.value)
        else:  # run(snakemake, snakemake.rule): one script for several rules, each rule's name a step
            assert ast.unparse(step) == "snakemake.rule", path.name
            for rule in by_script[path.name]:
                assert rule in STEPS, (path.name, rule)


def test_the_bench_and_the_report_rules_are_steps_of_the_table():
    by_script = _rules_of_script()
    assert set(by_script["bench.py"]) == {"bench", "bench_part"}
    assert set(by_script["report.py"]) == {
        "report_subject",
        "report_tables",
        "report_world",
        "report_edit_bench",
    }
    for rule in by_script["bench.py"] + by_script["report.py"]:
        assert STEPS[rule].endswith(f":{rule}")


def test_every_step_names_a_function_of_smk_and_config():
    for name in STEPS:
        function = step_function(name)
        assert callable(function), name
        assert list(inspect.signature(function).parameters) == ["smk", "config"], name


def test_the_table_is_complete_and_the_only_one():
    # Every rule function of the glue modules is in the table (none reached another way) ...
    modules = {target.split(":")[0] for target in STEPS.values()}
    for module in modules:
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        functions = re.findall(r"^def (\w+)\(smk, config\)", source, flags=re.M)
        assert functions, module
        for function in functions:
            assert f"{module}:{function}" in STEPS.values(), f"{module}.{function} is not in s2s.steps.STEPS"
        # ... and no module keeps or grows a table of its own.
        assert not re.search(r"^STEPS\b", source, flags=re.M), module
    for path in SCRIPTS.glob("*.py"):
        assert "STEPS" not in path.read_text(), path.name


def test_a_job_takes_the_checked_config_as_it_is(monkeypatch, one_torch_thread):
    """The workflow checked the config at parse time (rules/common.smk); a job neither checks it again nor
    merges the schema's defaults a second time: it gets Snakemake's config unchanged."""
    import logging
    from types import SimpleNamespace

    from s2s import config as cfgmod
    from s2s.job import setup_job

    checked = cfgmod.check_config({"subjects": {"toy": {"class": "toy", "synthetic": True}}})

    def check_again(*args, **kwargs):
        raise AssertionError("the job checked the config again")

    monkeypatch.setattr(cfgmod, "check_config", check_again)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        config = setup_job(SimpleNamespace(log=[], threads=1, config=checked))
    finally:
        root.handlers[:], root.level = handlers, level
    assert config == checked


def test_a_bad_build_settings_file_is_one_line_naming_the_key(tmp_path):
    """build_world's settings file with an unknown setting: the library's S2SError, prefixed with the
    config key (s2s.world.build raises no SystemExit any more)."""
    from types import SimpleNamespace

    import pytest

    from s2s.io import S2SError
    from s2s.workflow import build_world

    settings = tmp_path / "settings.yaml"
    settings.write_text("vae_stepz: 3\n")
    smk = SimpleNamespace(params=SimpleNamespace(settings=str(settings)), output=[str(tmp_path / "world")])
    with pytest.raises(
        S2SError, match=r"^config key world.build_settings: .*unknown build setting.*vae_stepz"
    ):
        build_world(smk, {})
