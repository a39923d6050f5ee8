# Rehearsal (config/rehearsal.yaml): the study's models replaced by random weights with their exact
# architectures (SD v1.4, CLIP ViT-L/14, DINO ViT-S/16, the FID and ImageNet Inception-v3), built here
# because no weights can be downloaded where the rehearsal runs.


rule build_rehearsal_models:
    output:
        sd=rehearsal_file("sd"),
        clip=rehearsal_file("clip"),
        dino=rehearsal_file("dino"),
        fid_inception=rehearsal_file("fid_inception"),
        imagenet_inception=rehearsal_file("imagenet_inception"),
    log:
        f"{LOGS}/build_rehearsal_models.log",
    conda:
        "../envs/s2s.yaml"
    threads: 2
    resources:
        mem_mb=12000,
        runtime=20,
    params:
        depends=s2s_config.depends_tiny_models(config),
    script:
        "../workflow_scripts/build_rehearsal_models.py"
