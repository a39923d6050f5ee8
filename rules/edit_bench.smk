# The world edit benchmark (issue 23; docs/edit_bench.md): P2P after DDIM, null-text, negative-prompt and
# Direct Inversion, and a plain baseline, on the world's edit cases with ground-truth targets. Not part of
# `all`:
#   snakemake --cores 2 edit_bench      # results_dir/world/edit_bench{/, .csv, .json}
# Subject edits use the trained model (edit_bench.subject_model) of the world subject {world: 1, class:
# dog, token: sks}, trained first if missing; edit_bench.subject_model: base runs them on the base model.
# `snakemake --cores 2 report_edit_bench` adds its report page (results_dir/report/edit_bench.html).


localrules:
    report_edit_bench,


rule edit_bench:
    input:
        unpack(edit_bench_inputs),
    output:
        cases=directory(f"{RESULTS}/world/edit_bench"),
        csv=f"{RESULTS}/world/edit_bench.csv",
        summary=f"{RESULTS}/world/edit_bench.json",
    log:
        f"{LOGS}/edit_bench.log",
    benchmark:
        f"{BENCHMARKS}/edit_bench.tsv"
    conda:
        "../envs/s2s.yaml"
    threads: config["edit_bench"]["jobs"]
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        subject=lambda wildcards: s2s_plan.edit_bench_subject(config),
        # The benchmark's settings (s2s.plan.depends_edit_bench): a change re-runs it.
        depends=lambda wildcards: s2s_plan.depends_edit_bench(config),
    script:
        "../workflow_scripts/edit_bench.py"


rule report_edit_bench:
    # The benchmark's report page: `snakemake --cores 2 report_edit_bench` runs the benchmark first.
    input:
        summary=rules.edit_bench.output.summary,
        cases=rules.edit_bench.output.cases,
    output:
        report(
            f"{RESULTS}/report/edit_bench.html",
            caption="../report/edit_bench.rst",
            category="Edit benchmark",
        ),
    log:
        f"{LOGS}/report_edit_bench.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/report.py"
