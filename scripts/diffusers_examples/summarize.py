"""Summarise compare.sh: median step time [min-max] (n), fixed cost per process, ratio ours / reference."""

import json
import statistics
import sys
from pathlib import Path

METHODS = ["dreambooth", "dreambooth_prior", "lora", "textual_inversion"]


def main(out: str) -> None:
    folder = Path(out)
    runs: dict[tuple[str, str], list[tuple[list[float], float]]] = {}
    for line in (folder / "wall.txt").read_text().splitlines():
        side, method, rnd, start, end, _load = line.split()
        record = json.loads((folder / f"{side}_{method}_{rnd}.json").read_text())
        runs.setdefault((side, method), []).append((record["step_s"], float(end) - float(start)))
    print("| method | reference s/step | s2s s/step | s2s / reference | fixed s (reference, s2s) |")
    print("|---|---|---|---|---|")
    for method in METHODS:
        cells, medians, fixed = [], [], []
        for side in ("reference", "ours"):
            steps = [s for step_s, _ in runs[(side, method)] for s in step_s]
            median = statistics.median(steps)
            medians.append(median)
            cells.append(f"{median:.4f} [{min(steps):.4f}-{max(steps):.4f}] n={len(steps)}")
            # process wall time minus its timed steps and the untimed first step (taken at the median)
            fixed.append(statistics.median(wall - sum(s) - median for s, wall in runs[(side, method)]))
        print(f"| {method} | {cells[0]} | {cells[1]} | {medians[1] / medians[0]:.2f} | "
              f"{fixed[0]:.1f}, {fixed[1]:.1f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
