# Report: per subject, self-contained HTML pages (methods side by side per prompt, labelled grids, photos,
# training, metrics per prompt, edits) and one tables page; `snakemake report` builds them all and
# `--report` embeds them (README, "The report").


def report_subject_inputs(wildcards):
    subject = wildcards.subject
    files = {
        "samples": [f for m in SAMPLE_METHODS for f in sample_files(subject, m)],
        "metrics": expand(
            f"{RESULTS}/{subject}/metrics/{{method}}.json", method=SAMPLE_METHODS
        ),
        "summaries": expand(
            f"{RESULTS}/{subject}/models/{{method}}/train_summary.json", method=METHODS
        ),
        "instance": f"{RESULTS}/{subject}/instance",
    }
    if any(uses_prior(m) for m in METHODS):
        files["class_images"] = f"{RESULTS}/{subject}/class_images"
    if EDITS_ON:
        files["edits"] = edit_targets(subject)
    return files


def report_subject_outputs():
    pages = {
        "samples": report(
            f"{RESULTS}/{{subject}}/report/samples.html",
            caption="../report/samples.rst",
            category="Samples",
            subcategory="{subject}",
            labels={
                "subject": "{subject}",
                "page": "samples side by side, grids, photos",
            },
        ),
        "training": report(
            f"{RESULTS}/{{subject}}/report/training.html",
            caption="../report/training.rst",
            category="Training and metrics",
            subcategory="{subject}",
            labels={
                "subject": "{subject}",
                "page": "loss, cost, validation, metrics per prompt",
            },
        ),
        "figures": directory(f"{RESULTS}/{{subject}}/report/figures"),
    }
    if EDITS_ON:
        pages["edits"] = report(
            f"{RESULTS}/{{subject}}/report/edits.html",
            caption="../report/edits.rst",
            category="Edits",
            subcategory="{subject}",
            labels={"subject": "{subject}", "page": "Prompt-to-Prompt edits"},
        )
    return pages


def report_targets():
    targets = [f"{RESULTS}/report/tables.html"]
    for subject in SUBJECTS:
        targets += [
            f"{RESULTS}/{subject}/report/samples.html",
            f"{RESULTS}/{subject}/report/training.html",
        ]
        if EDITS_ON:
            targets.append(f"{RESULTS}/{subject}/report/edits.html")
    return targets


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
