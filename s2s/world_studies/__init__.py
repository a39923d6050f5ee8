"""Studies on the miniature world: modules that run the pipeline's pieces (sampling, models, metrics,
Prompt-to-Prompt and inversion) on the world's models and measure the results with the world's read-outs.

- ``s2s.world_studies.check``: evidence that the world's models work, against fixed targets
  (``snakemake world_check``);
- ``s2s.world_studies.study``: the study's world measures (prompt fidelity, subject identification, class
  drift) that the evaluation adds for world subjects;
- ``s2s.world_studies.edit_bench``: the world edit benchmark (``snakemake edit_bench``, docs/edit_bench.md);
- ``s2s.world_studies.behaviour``: Prompt-to-Prompt and inversion measured on the world's models (the
  behavioural tests, tests/test_world_edits.py).

The layers (tests/test_layers.py): ``s2s.world`` holds the world's building blocks and imports nothing
from the pipeline; the pipeline may use the building blocks; these studies sit above both and only
``s2s.workflow`` (the steps) imports them.
"""
