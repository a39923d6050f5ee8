# Evaluation: metrics per method (CLIP score, FID/KID/IS and the study's variants, DINO, CLIP-I,
# CLIP-T, bootstrap CIs), an image grid per method, then Table 1 and the loss curves (light: local).


localrules:
    table,
    loss_curves,
    world_prompt_fidelity,


rule evaluate:
    input:
        samples=lambda wildcards: sample_files(wildcards.subject, wildcards.method),
        instance=f"{RESULTS}/{{subject}}/instance",
        models=metric_model_inputs(),
    output:
        metrics=f"{RESULTS}/{{subject}}/metrics/{{method}}.json",
        grid=report(
            f"{RESULTS}/{{subject}}/grids/{{method}}.png",
            caption="../report/grid.rst",
            category="Samples",
            subcategory="{subject}",
            labels={"subject": "{subject}", "method": "{method}"},
        ),
    log:
        f"{LOGS}/{{subject}}/evaluate_{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/{{subject}}/evaluate_{{method}}.tsv"
    conda:
        "../envs/s2s.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        # The config this job depends on (s2s.config.depends_*): a change re-runs it.
        depends=s2s_config.depends_evaluation(config),
    script:
        "../workflow_scripts/evaluate.py"


rule table:
    input:
        metrics=expand(
            f"{RESULTS}/{{subject}}/metrics/{{method}}.json",
            subject=SUBJECTS,
            method=SAMPLE_METHODS,
        ),
        summaries=expand(
            f"{RESULTS}/{{subject}}/models/{{method}}/train_summary.json",
            subject=SUBJECTS,
            method=METHODS,
        ),
    output:
        csv=f"{RESULTS}/table1.csv",
        md=f"{RESULTS}/table1.md",
        html=report(
            f"{RESULTS}/table1.html", caption="../report/table.rst", category="Table 1"
        ),
        companion_csv=f"{RESULTS}/table1_companion.csv",
        companion_md=f"{RESULTS}/table1_companion.md",
        companion_html=f"{RESULTS}/table1_companion.html",
    log:
        f"{LOGS}/table.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # Table 1 records the whole config's hash (provenance), so any config change re-makes it.
        config_hash=s2s_config.config_hash(config),
        compare_published=config["evaluation"]["compare_published"],
    script:
        "../workflow_scripts/table.py"


rule loss_curves:
    input:
        summaries=lambda wildcards: expand(
            f"{RESULTS}/{wildcards.subject}/models/{{method}}/train_summary.json",
            method=METHODS,
        ),
    output:
        report(
            f"{RESULTS}/{{subject}}/loss_curves.png",
            caption="../report/loss.rst",
            category="Training",
            labels={"subject": "{subject}"},
        ),
    log:
        f"{LOGS}/{{subject}}/loss_curves.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/loss_curves.py"


rule world_prompt_fidelity:
    input:
        samples=lambda wildcards: [
            f for m in SAMPLE_METHODS for f in sample_files(wildcards.subject, m)
        ],
        models=metric_model_inputs(),
    output:
        f"{RESULTS}/{{subject}}/metrics/world_prompt_fidelity.json",
    log:
        f"{LOGS}/{{subject}}/world_prompt_fidelity.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        # The classifier is the evaluation's feature network: the same config re-runs it.
        depends=lambda wildcards: s2s_config.depends_evaluation(config),
    script:
        "../workflow_scripts/world_prompt_fidelity.py"
