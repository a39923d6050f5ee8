# The miniature world (issue 15): its models (world.models, committed as models/world with their
# BUILD.json) and the evidence that they work. Neither is part of `all` (the check is, with its report page,
# when world.report_check is true):
#   snakemake --cores 2 world_check                            # results_dir/world/check.json
#   snakemake --cores 2 build_world --forcerun build_world     # rebuild the committed models


localrules:
    report_world,


rule build_world:
    output:
        directory(config["world"]["models"]),
    log:
        f"{LOGS}/build_world.log",
    conda:
        "../envs/s2s.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=300,
    params:
        settings=config["world"]["build_settings"],
    script:
        "../workflow_scripts/build_world.py"


rule world_check:
    input:
        # A file of the build, not its folder: the check never starts a rebuild (which Snakemake would
        # do for a committed folder older than build_world's script).
        build=f"{world_path('models')}/BUILD.json",
        prompts=world_path("check_prompts"),
    output:
        f"{RESULTS}/world/check.json",
    log:
        f"{LOGS}/world_check.log",
    conda:
        "../envs/s2s.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        # The check's settings (s2s.config.depends_world_check): a change re-runs it.
        depends=s2s_config.depends_world_check(config),
    script:
        "../workflow_scripts/world_check.py"


rule report_world:
    input:
        f"{RESULTS}/world/check.json",
    output:
        report(
            f"{RESULTS}/report/world.html",
            caption="../report/world.rst",
            category="World models",
        ),
    log:
        f"{LOGS}/report_world.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/report.py"
