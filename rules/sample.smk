# Sampling: one job per subject, method and prompt (sampling.jobs: per_prompt, the default), all seeds
# in one pipeline call. A prompt's folder is named after its text (s2s.plan.prompt_folder): a changed
# prompt is a new job and a new folder, and the other prompts' samples stay as they are.
# sampling.jobs: per_method makes one job per subject and method for all prompts. The folders are the
# same; a changed prompt then re-samples its method's other prompts too (on the same noise, so to the
# same images). On small models a job is mostly start-up (imports, loading: ~8 s on CPU), which the
# world demo's 80 prompt jobs paid 80 times.

if config["sampling"]["jobs"] == "per_prompt":

    rule sample:
        input:
            sample_inputs,
        output:
            expand(
                f"{RESULTS}/{{{{subject}}}}/samples/{{{{method}}}}/{{{{prompt}}}}/{{seed}}.png",
                seed=SEEDS,
            ),
        log:
            f"{LOGS}/{{subject}}/sample_{{method}}/{{prompt}}.log",
        benchmark:
            f"{BENCHMARKS}/{{subject}}/sample_{{method}}/{{prompt}}.tsv"
        conda:
            "../envs/s2s.yaml"
        threads: MODEL_THREADS
        resources:
            mem_mb=16000,
            runtime=120,
            gpu=1,
            gpu_jobs=GPU_JOBS,
        params:
            # The config this job depends on (s2s.config.depends_*): a change re-runs it.
            depends=lambda wildcards: s2s_config.depends_sampling(
                config, PROMPTS[wildcards.prompt], wildcards.subject
            ),
        script:
            "../workflow_scripts/sample.py"

else:

    rule sample:
        input:
            sample_inputs,
        output:
            expand(
                f"{RESULTS}/{{{{subject}}}}/samples/{{{{method}}}}/{{prompt}}/{{seed}}.png",
                prompt=PROMPT_IDS,
                seed=SEEDS,
            ),
        log:
            f"{LOGS}/{{subject}}/sample_{{method}}.log",
        benchmark:
            f"{BENCHMARKS}/{{subject}}/sample_{{method}}.tsv"
        conda:
            "../envs/s2s.yaml"
        threads: MODEL_THREADS
        resources:
            mem_mb=16000,
            runtime=240,
            gpu=1,
            gpu_jobs=GPU_JOBS,
        params:
            depends=lambda wildcards: [
                s2s_config.depends_sampling(config, PROMPTS[p], wildcards.subject)
                for p in PROMPT_IDS
            ],
        script:
            "../workflow_scripts/sample.py"
