"""Rule entry point: step build_rehearsal_models of s2s.steps (all logic lives in the package)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package, also inside conda jobs
from s2s.steps import run  # noqa: E402

run(snakemake, "build_rehearsal_models")  # noqa: F821
