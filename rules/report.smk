# Report: per subject, self-contained HTML pages (methods side by side per prompt, labelled grids, photos,
# training, metrics per prompt, edits) and one tables page; `snakemake report` builds them all and
# `--report` embeds them (README, "The report").


localrules:
    report,
    report_subject,
    report_tables,


rule report:
    # Everything, and the report pages: `snakemake report --report results/report-<run_name>.html`.
    input:
        all_targets(),
        report_targets(),


rule report_subject:
    input:
        unpack(report_subject_inputs),
    output:
        **report_subject_outputs(),
    log:
        f"{LOGS}/{{subject}}/report_subject.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/report.py"


rule report_tables:
    input:
        table1=f"{RESULTS}/table1.csv",
        summaries=expand(
            f"{RESULTS}/{{subject}}/models/{{method}}/train_summary.json",
            subject=SUBJECTS,
            method=METHODS,
        ),
    output:
        report(
            f"{RESULTS}/report/tables.html",
            caption="../report/tables.rst",
            category="Tables",
        ),
    log:
        f"{LOGS}/report_tables.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/report.py"
