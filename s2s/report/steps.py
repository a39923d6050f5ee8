"""The report rules' steps (rules/report.smk), in the shape of ``s2s.workflow``'s: ``step(smk, config)``,
reached through the step table (``s2s.steps``)."""

from __future__ import annotations

from pathlib import Path

from s2s import config as cfgmod
from s2s.report import NOTES, build_subject_pages, build_tables_page


def _note(config) -> str | None:
    return NOTES[cfgmod.model_kind(config)]


def report_subject(smk, config) -> None:
    subject = smk.wildcards.subject
    validation = [cfgmod.train_config(config, m).validation_prompt for m in config["methods"]]
    build_subject_pages(
        cfgmod.results_dir(config) / subject,
        cfgmod.sample_methods(config),
        cfgmod.sampling_config(config).seeds,
        smk.output.figures,
        smk.output.samples,
        smk.output.training,
        smk.output.get("edits"),
        validation_prompt=next((v for v in validation if v), "").replace(
            "{}", cfgmod.subject(config, subject).phrase
        ),
        note=_note(config),
    )


def report_tables(smk, config) -> None:
    companions = [(Path(p).stem.replace("_", " "), p) for p in smk.input.get("companions", [])]
    build_tables_page(
        smk.input.table1,
        smk.output[0],
        smk.input.summaries,
        companions,
        note=_note(config),
        run_name=config["run_name"],
    )


def report_world(smk, config) -> None:
    from s2s.report.figures import read_json
    from s2s.report.pages import world_check_page

    world_check_page(read_json(Path(smk.input[0])), Path(smk.output[0]))


def report_edit_bench(smk, config) -> None:
    from s2s.report.edit_bench_page import edit_bench_page

    edit_bench_page(Path(smk.input.summary), Path(smk.input.cases), Path(smk.output[0]))
