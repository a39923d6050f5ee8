# Editing: one Prompt-to-Prompt edit per job, one job per row of the manifest in config edits.manifest
# (replace / refine / reweight / local blend; real photos inverted; "subject" rows use the trained
# subject model). One row per job so that a changed row re-runs only its edit (its params carry the
# row); each job loads its pipeline once.


localrules:
    draw_demo_edit_photo,


rule draw_demo_edit_photo:
    output:
        f"{RESULTS}/demo_edit_photos/{{name}}.png",
    log:
        f"{LOGS}/draw_demo_edit_photo_{{name}}.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        depends=s2s_config.depends_tiny_models(config),
    script:
        "../workflow_scripts/draw_demo_edit_photo.py"


rule edit:
    input:
        unpack(edit_inputs),
    output:
        record=f"{RESULTS}/{{subject}}/edits/{{edit_id}}/edit.json",
        pair=report(
            f"{RESULTS}/{{subject}}/edits/{{edit_id}}/before_after.png",
            caption="../report/edit.rst",
            category="Edits",
            subcategory="{subject}",
        ),
        sheet=report(
            f"{RESULTS}/{{subject}}/edits/{{edit_id}}/attention.png",
            caption="../report/attention.rst",
            category="Edits",
            subcategory="{subject}",
        ),
    log:
        f"{LOGS}/{{subject}}/edit/{{edit_id}}.log",
    benchmark:
        f"{BENCHMARKS}/{{subject}}/edit/{{edit_id}}.tsv"
    conda:
        "../envs/s2s.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
        gpu_jobs=GPU_JOBS,
    params:
        row=lambda wildcards: EDIT_ROWS[wildcards.edit_id]["row"],
        # The config this job depends on (s2s.config.depends_*): a change re-runs it.
        depends=lambda wildcards: s2s_config.depends_edit(
            config, EDIT_ROWS[wildcards.edit_id]["row"]
        ),
    script:
        "../workflow_scripts/edit.py"
