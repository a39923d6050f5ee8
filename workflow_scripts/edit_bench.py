"""Rule entry point: calls s2s.workflow.edit_bench (all logic lives in the package)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package, also inside conda jobs
from s2s.workflow import run  # noqa: E402

run(snakemake, "edit_bench")  # noqa: F821
