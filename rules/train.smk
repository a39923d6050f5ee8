# Training: one rule per method. Checkpoints live outside the outputs (results/{subject}/checkpoints/)
# so that Snakemake's clean-up of a failed job's outputs never deletes them; a re-run resumes only from
# a checkpoint of the same training config (the loop compares the checkpoint's config hash), so a job
# re-run for changed params, or by --forcerun, starts fresh.
# training.num_processes > 1 runs the job under `accelerate launch` (one process per GPU) and requests
# that many GPUs.
# Not protected(): a changed training key must be able to replace the model (params rerun trigger);
# Snakemake refuses to overwrite protected outputs, so every config change would need a chmod first.


# One rule per method of the registry and per variant the config declares (s2s.registry).
for _method in [*s2s_registry.NAMES, *s2s_registry.variants(config)]:

    rule:
        name:
            f"train_{_method}"
        input:
            unpack(train_inputs(_method)),
        output:
            model=trained_model_file("{subject}", _method),
            summary=f"{RESULTS}/{{subject}}/models/{_method}/train_summary.json",
        log:
            f"{LOGS}/{{subject}}/train_{_method}.log",
        benchmark:
            f"{BENCHMARKS}/{{subject}}/train_{_method}.tsv"
        conda:
            train_env(_method)
        threads: MODEL_THREADS
        resources:
            mem_mb=lambda wildcards, attempt: 32000 * attempt,
            runtime=480,
            gpu=train_gpus(_method),
            gpu_jobs=GPU_JOBS,
        params:
            method=_method,
            # The config this job depends on (s2s.config.depends_*): a change re-runs it.
            depends=training_depends(_method),
        script:
            "../workflow_scripts/train.py"


# On a cluster every training rule gets the settings a profile gives the stage `train` (profiles/slurm:
# GPU partition, CPUs per GPU), a variant's also those of its method's rule: rule names follow the config.
for _method in [*s2s_registry.NAMES, *s2s_registry.variants(config)]:
    apply_profile_train_settings(_method)
