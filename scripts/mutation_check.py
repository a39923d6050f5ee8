"""Mutation check: break the package in targeted ways, one at a time, and check that the tests catch each.

Mutations are listed in ``tests/mutations/*.yaml``: each entry names a file, an exact text that occurs once
in it, its replacement, and the pytest node ids that must fail with the mutation in place. The tree is
copied into a temporary folder per worker (the files git tracks or would track), the listed tests are run
there unmutated first (they must pass, or the check means nothing; split by test file across the
workers), then each mutation is applied, its tests run, and the file restored.

Speed: each mutation's tests run in a process forked from one that has already imported torch, diffusers,
transformers and the other heavy libraries (but not ``s2s``, which the child imports from the mutated
tree), so a mutation costs its tests' time rather than ~5 s of imports; two workers run side by side.

    python scripts/mutation_check.py            # all mutations; exit 1 if any survives or errs
    python scripts/mutation_check.py --only ID  # one mutation (repeatable)
    python scripts/mutation_check.py --list     # the list as a Markdown table (for tests/README.md)

The slow mutations (``tests/mutations/slow/*.yaml``: a method that learns nothing, an identifier made inert
in training) are caught only by the study's tests on the committed world, whose fixture runs the whole
world demo (~5 min per mutation on 2 cores). CI does not run them; ``--slow`` does:

    python scripts/mutation_check.py --slow --workers 1 --show  # --show: why each was caught
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
MUTATIONS = REPO / "tests" / "mutations"
SLOW_MUTATIONS = MUTATIONS / "slow"
KEYS = ("id", "file", "find", "replace", "tests")


def load_mutations(folder: Path = MUTATIONS) -> list[dict]:
    """Every entry of every YAML file in ``folder``, checked for shape and unique ids."""
    entries, seen = [], {}
    for path in sorted(folder.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or []
        if not isinstance(data, list):
            raise SystemExit(f"{path}: a mutation file is a YAML list of entries")
        for number, entry in enumerate(data, start=1):
            where = f"{path.name} entry {number}"
            if not isinstance(entry, dict) or set(entry) != set(KEYS):
                raise SystemExit(f"{where}: needs exactly the keys {', '.join(KEYS)}")
            if entry["id"] in seen:
                raise SystemExit(f"{where}: id {entry['id']!r} is also used in {seen[entry['id']]}")
            if not entry["tests"] or entry["find"] == entry["replace"]:
                raise SystemExit(f"{where}: needs tests and a replacement that differs from the text")
            seen[entry["id"]] = where
            entries.append({**entry, "source": path.name})
    return entries


def check_applicable(entry: dict, root: Path) -> str | None:
    """None if the entry's text occurs exactly once in its file, else why not."""
    path = root / entry["file"]
    if not path.is_file():
        return f"{entry['file']} does not exist"
    count = path.read_text().count(entry["find"])
    return None if count == 1 else f"its text occurs {count} times in {entry['file']} (must be once)"


def copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft", "torchmetrics", "scipy.stats", "pandas",
         "matplotlib.pyplot", "safetensors.torch", "pytest")  # fmt: skip


def preload() -> None:
    """Import the heavy libraries once, in the parent (no torch op runs here: forking after OpenMP has
    started its threads can hang the child)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    import importlib

    for name in HEAVY:
        importlib.import_module(name)


def start_tests(root: Path, tests: list[str], log: Path) -> int:
    """Fork a child that runs ``tests`` in ``root`` with pytest; return its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child: output to ``log``, the tree's package first on the path
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # Python's streams onto those descriptors too: a parent that replaced sys.stdout (pytest's capture,
        # when the check itself is under test) would otherwise get the child's report.
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - flushed before _exit
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(root)
        sys.path.insert(0, str(root))
        import pytest

        code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", "--no-header", *tests])
    except BaseException:  # noqa: BLE001 - the child must never return into the parent's code
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code))


def split_by_file(tests: list[str], parts: int) -> list[list[str]]:
    """``tests`` in at most ``parts`` groups, each test file whole (its module fixtures then run once), the
    files dealt largest first to the group with the fewest tests."""
    by_file: dict[str, list[str]] = {}
    for test in tests:
        by_file.setdefault(test.split("::")[0], []).append(test)
    groups: list[list[str]] = [[] for _ in range(max(1, min(parts, len(by_file))))]
    for file_tests in sorted(by_file.values(), key=len, reverse=True):
        min(groups, key=len).extend(file_tests)
    return groups


def run_baseline(roots: list[Path], tests: list[str]) -> tuple[int, str]:
    """Run ``tests`` unmutated, split across the workers' trees side by side; the first failing group's
    exit code and output, else (0, "")."""
    running = {}
    for root, group in zip(roots, split_by_file(tests, len(roots))):
        running[start_tests(root, group, root / ".mutation-log")] = root
    results = {}
    while running:
        pid, status = os.wait()
        root = running.pop(pid)
        results[root] = (os.waitstatus_to_exitcode(status), (root / ".mutation-log").read_text()[-3000:])
    return next((result for result in results.values() if result[0] != 0), (0, ""))


def markdown(entries: list[dict], heading: str = "mutation") -> str:
    lines = [f"| {heading} | file | tests that catch it |", "|---|---|---|"]
    for e in entries:
        tests = ", ".join(f"`{t.split('/')[-1]}`" for t in e["tests"])
        lines.append(f"| `{e['id']}` | `{e['file']}` | {tests} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", default=[], help="run only this mutation id")
    parser.add_argument("--list", action="store_true", help="print the mutations as a Markdown table")
    parser.add_argument("--workers", type=int, default=2, help="mutations tested side by side (default 2)")
    parser.add_argument(
        "--slow", action="store_true", help=f"the slow mutations ({SLOW_MUTATIONS.relative_to(REPO)}) instead"
    )
    parser.add_argument(
        "--show", action="store_true", help="print the end of every mutation's test output, caught ones too"
    )
    args = parser.parse_args(argv)
    entries = load_mutations(SLOW_MUTATIONS if args.slow else MUTATIONS)
    if args.only:
        unknown = set(args.only) - {e["id"] for e in entries}
        if unknown:
            raise SystemExit(f"unknown mutation id(s): {sorted(unknown)}")
        entries = [e for e in entries if e["id"] in args.only]
    if args.list:
        print(markdown(entries, "slow mutation" if args.slow else "mutation"))
        return 0
    bad = [(e["id"], why) for e in entries if (why := check_applicable(e, REPO))]
    if bad:
        for ident, why in bad:
            print(f"mutation {ident}: cannot be applied: {why}")
        return 1
    started = time.perf_counter()
    preload()
    failures = []
    with tempfile.TemporaryDirectory(prefix="s2s-mutants-") as tmp:
        roots = [Path(tmp) / f"worker{i}" for i in range(args.workers)]
        for root in roots:
            copy_tree(root)
        if (REPO.parent / "shared").is_dir():  # ../shared/data as the checkout sees it (shared_data tests)
            (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")
        baseline = sorted({t for e in entries for t in e["tests"]})
        code, output = run_baseline(roots, baseline)
        if code != 0:
            print(output)
            print(f"the {len(baseline)} tests fail without any mutation: fix them first")
            return 1
        print(f"baseline: {len(baseline)} tests pass unmutated ({time.perf_counter() - started:.0f} s)")
        pending = list(entries)
        running: dict[int, tuple[dict, Path, str, float]] = {}  # pid -> entry, root, original text, start
        free = list(roots)
        while pending or running:
            while pending and free:
                entry, root = pending.pop(0), free.pop()
                path = root / entry["file"]
                original = path.read_text()
                path.write_text(original.replace(entry["find"], entry["replace"], 1))
                pid = start_tests(root, entry["tests"], root / ".mutation-log")
                running[pid] = (entry, root, original, time.perf_counter())
            pid, status = os.wait()
            entry, root, original, t0 = running.pop(pid)
            (root / entry["file"]).write_text(original)
            free.append(root)
            code = os.waitstatus_to_exitcode(status)
            verdict = {0: "SURVIVED", 1: "caught"}.get(code, f"ERROR (pytest exit {code})")
            print(f"{verdict:>24}  {entry['id']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if args.show and code == 1:
                print((root / ".mutation-log").read_text()[-1500:], flush=True)
            if code != 1:
                failures.append(entry["id"])
                print((root / ".mutation-log").read_text()[-3000:])
    total = len(entries)
    print(f"{total - len(failures)} of {total} mutations caught in {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
