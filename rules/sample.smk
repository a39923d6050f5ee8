# Sampling: one job per subject, method and prompt, all seeds in one pipeline call. A prompt's folder is
# named after its text (s2s.plan.prompt_folder): a changed prompt is a new job and a new folder, and
# the other prompts' samples stay as they are.


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
