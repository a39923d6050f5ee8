# Editing: a Prompt-to-Prompt edit batch per subject, driven by the manifest in config edits.manifest
# (replace / refine / reweight / local blend; real photos inverted; "subject" rows use the trained
# subject model). One job per subject: each pipeline is loaded once for all its rows.


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
    script:
        "../workflow_scripts/draw_demo_edit_photo.py"


rule edit_batch:
    input:
        unpack(edit_inputs),
    output:
        records=expand(f"{RESULTS}/{{{{subject}}}}/edits/{{edit_id}}/edit.json", edit_id=EDIT_IDS),
        pairs=report(
            expand(f"{RESULTS}/{{{{subject}}}}/edits/{{edit_id}}/before_after.png", edit_id=EDIT_IDS),
            caption="../report/edit.rst",
            category="Edits",
            subcategory="{subject}",
        ),
        sheets=report(
            expand(f"{RESULTS}/{{{{subject}}}}/edits/{{edit_id}}/attention.png", edit_id=EDIT_IDS),
            caption="../report/attention.rst",
            category="Edits",
            subcategory="{subject}",
        ),
    log:
        f"{LOGS}/{{subject}}/edit_batch.log",
    conda:
        "../envs/s2s.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
        gpu_jobs=1,
    script:
        "../workflow_scripts/edit.py"
