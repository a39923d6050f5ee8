# s2s (Subject-to-Subject): teach Stable Diffusion a subject, sample, edit, evaluate.
# Table of contents: the stages live in rules/*.smk; all logic lives in the s2s package.

# The demo config applies only when no --configfile is given: Snakemake would otherwise merge the
# demo's subject into the user's config.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/rehearsal.smk"
include: "rules/train.smk"
include: "rules/sample.smk"
include: "rules/evaluate.smk"
include: "rules/edit.smk"
include: "rules/bench.smk"
include: "rules/prefetch.smk"
include: "rules/report.smk"
include: "rules/world.smk"
include: "rules/edit_bench.smk"


report: "report/workflow.rst"


# Local runs: jobs fork from one process that has the libraries imported (s2s.jobserver).
onstart:
    s2s_jobserver.start(
        config,
        local=workflow.local_exec,
        conda=DeploymentMethod.CONDA
        in workflow.deployment_settings.deployment_method,
        log_file=f"{LOGS}/job_server.log",
    )


onsuccess:
    s2s_jobserver.stop()


onerror:
    s2s_jobserver.stop()


rule all:
    default_target: True
    input:
        all_targets(),
