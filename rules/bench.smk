# Benchmarks, not part of `all`: snakemake bench --cores 2 --configfile config/bench.yaml
# One job per part (results/bench/parts/{part}.json), each taking every core so that no other job runs
# beside it; then the report (results/bench/bench.{json,md}). Settings: the config's `bench:` section.

from s2s.bench.settings import bench_settings  # noqa: E402

try:
    BENCH = bench_settings(config)
except S2SError as _error:
    sys.exit(f"s2s config error: {_error}")


localrules:
    bench,


rule bench:
    input:
        expand(f"{RESULTS}/bench/parts/{{part}}.json", part=BENCH.parts),
    output:
        json=f"{RESULTS}/bench/bench.json",
        md=f"{RESULTS}/bench/bench.md",
    log:
        f"{LOGS}/bench/bench.log",
    conda:
        "../envs/s2s.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/bench.py"


rule bench_part:
    output:
        f"{RESULTS}/bench/parts/{{part}}.json",
    log:
        f"{LOGS}/bench/{{part}}.log",
    wildcard_constraints:
        part="training|memory|edit|dag",
    conda:
        "../envs/s2s.yaml"
    # All cores for one measured job at a time (Snakemake caps threads at --cores). Not
    # workflow.cores: it is undefined under cluster executors, where this file is parsed too.
    threads: 64
    resources:
        mem_mb=20000,
        runtime=30,
    params:
        settings=lambda wildcards: BENCH.part(wildcards.part),
    script:
        "../workflow_scripts/bench.py"
