# Training: one rule per method. Checkpoints live outside the outputs (results/{subject}/checkpoints/)
# so that Snakemake's clean-up of a failed job's outputs never deletes them; a re-run resumes.
# training.num_processes > 1 runs the job under `accelerate launch` (one process per GPU) and requests
# that many GPUs.


for _method in ("textual_inversion", "dreambooth", "lora"):

    rule:
        name:
            f"train_{_method}"
        input:
            unpack(train_inputs(_method)),
        output:
            model=trained_model_file("{subject}", _method),
            summary=f"{RESULTS}/{{subject}}/models/{_method}/train_summary.json",
        params:
            method=_method,
        log:
            f"{LOGS}/{{subject}}/train_{_method}.log",
        conda:
            train_env(_method)
        threads: 2
        resources:
            mem_mb=lambda wildcards, attempt: 32000 * attempt,
            runtime=480,
            gpu=train_gpus(_method),
            gpu_jobs=1,
        script:
            "../workflow_scripts/train.py"
