"""Rule entry point of the report rules: calls s2s.report.steps (all logic lives in the package)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 - the package, also inside conda jobs
from s2s.report.steps import STEPS as REPORT_STEPS  # noqa: E402
from s2s.workflow import STEPS, run  # noqa: E402

STEPS.update(REPORT_STEPS)
run(snakemake, snakemake.rule)  # noqa: F821
