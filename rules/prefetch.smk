# Prefetch: cache every model the config names, for compute nodes without internet.


localrules:
    prefetch,


rule prefetch:
    # Run on a machine with internet (a login node); then HF_HUB_OFFLINE=1 for the jobs.
    output:
        f"{RESULTS}/prefetch.json",
    log:
        f"{LOGS}/prefetch.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        # The models it fetches: a changed model id re-runs it.
        depends=s2s_config.depends_prefetch(config),
    script:
        "../workflow_scripts/prefetch.py"
