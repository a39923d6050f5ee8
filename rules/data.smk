# Data: the demo's own tiny models and subject photos, prepared instance images, class-prior images.
# Each rule's params carry the config its outputs depend on (s2s.config.depends_*): a change re-runs it.


localrules:
    build_tiny_models,
    draw_synthetic_subject,


rule build_tiny_models:
    output:
        sd=f"{RESULTS}/tiny_models/sd/model_index.json",
        clip=f"{RESULTS}/tiny_models/clip/config.json",
        dino=f"{RESULTS}/tiny_models/dino/config.json",
        features=f"{RESULTS}/tiny_models/inception_like.safetensors",
    log:
        f"{LOGS}/build_tiny_models.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        depends=s2s_config.depends_tiny_models(config),
    script:
        "../workflow_scripts/build_tiny_models.py"


rule draw_synthetic_subject:
    output:
        directory(f"{RESULTS}/{{subject}}/photos"),
    log:
        f"{LOGS}/{{subject}}/draw_synthetic_subject.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        depends=lambda wildcards: s2s_config.depends_synthetic_subject(
            config, wildcards.subject
        ),
    script:
        "../workflow_scripts/draw_synthetic_subject.py"


rule prepare_instance:
    input:
        photos=subject_photos,
    output:
        directory(f"{RESULTS}/{{subject}}/instance"),
    log:
        f"{LOGS}/{{subject}}/prepare_instance.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        depends=s2s_config.depends_instance(config),
    script:
        "../workflow_scripts/prepare_instance.py"


rule class_priors:
    input:
        base_model_inputs(),
    output:
        directory(f"{RESULTS}/{{subject}}/class_images"),
    log:
        f"{LOGS}/{{subject}}/class_priors.log",
    benchmark:
        f"{BENCHMARKS}/{{subject}}/class_priors.tsv"
    conda:
        "../envs/s2s.yaml"
    threads: MODEL_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
        gpu_jobs=GPU_JOBS,
    params:
        depends=lambda wildcards: s2s_config.depends_class_priors(
            config, wildcards.subject
        ),
    script:
        "../workflow_scripts/class_priors.py"
