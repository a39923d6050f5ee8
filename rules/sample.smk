# Sampling: all seeds of a prompt in one pipeline call, several prompts per job (prompt_chunk_size),
# the model loaded once per job; outputs stay one folder per prompt.


for _index, _chunk in enumerate(PROMPT_CHUNKS):

    rule:
        name:
            f"sample_chunk{_index}"
        input:
            sample_inputs,
        output:
            expand(f"{RESULTS}/{{{{subject}}}}/samples/{{{{method}}}}/{{pid}}/{{seed}}.png", pid=_chunk, seed=SEEDS),
        params:
            prompt_ids=_chunk,
        log:
            f"{LOGS}/{{subject}}/sample_{{method}}_chunk{_index}.log",
        conda:
            "../envs/s2s.yaml"
        threads: 2
        resources:
            mem_mb=16000,
            runtime=120,
            gpu=1,
            gpu_jobs=1,
        script:
            "../workflow_scripts/sample.py"
