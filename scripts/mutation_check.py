"""Mutation check: break the package in targeted ways, one at a time, and check that the tests catch each.

Mutations are listed in ``tests/mutations/*.yaml``: each entry names a file, an exact text that occurs once
in it, its replacement, and the pytest node ids that must fail with the mutation in place. The tree is
copied once into a temporary folder (the files git tracks or would track), the listed tests are run there
unmutated first (they must pass, or the check means nothing), then each mutation is applied, its tests
run, and the file restored.

    python scripts/mutation_check.py            # all mutations; exit 1 if any survives or errs
    python scripts/mutation_check.py --only ID  # one mutation (repeatable)
    python scripts/mutation_check.py --list     # the list as a Markdown table (for tests/README.md)
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


def run_tests(root: Path, tests: list[str]) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--no-header", *tests],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode, proc.stdout[-2000:] + proc.stderr[-1000:]


def markdown(entries: list[dict]) -> str:
    lines = ["| mutation | file | tests that catch it |", "|---|---|---|"]
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
    args = parser.parse_args(argv)
    entries = load_mutations()
    if args.only:
        unknown = set(args.only) - {e["id"] for e in entries}
        if unknown:
            raise SystemExit(f"unknown mutation id(s): {sorted(unknown)}")
        entries = [e for e in entries if e["id"] in args.only]
    if args.list:
        print(markdown(entries))
        return 0
    bad = [(e["id"], why) for e in entries if (why := check_applicable(e, REPO))]
    if bad:
        for ident, why in bad:
            print(f"mutation {ident}: cannot be applied: {why}")
        return 1
    started = time.perf_counter()
    failures = []
    with tempfile.TemporaryDirectory(prefix="s2s-mutants-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        baseline = sorted({t for e in entries for t in e["tests"]})
        code, output = run_tests(root, baseline)
        if code != 0:
            print(output)
            print(f"the {len(baseline)} tests fail without any mutation: fix them first")
            return 1
        print(f"baseline: {len(baseline)} tests pass unmutated ({time.perf_counter() - started:.0f} s)")
        for entry in entries:
            path = root / entry["file"]
            original = path.read_text()
            path.write_text(original.replace(entry["find"], entry["replace"], 1))
            t0 = time.perf_counter()
            try:
                code, output = run_tests(root, entry["tests"])
            finally:
                path.write_text(original)
            verdict = {0: "SURVIVED", 1: "caught"}.get(code, f"ERROR (pytest exit {code})")
            print(f"{verdict:>24}  {entry['id']}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if code != 1:
                failures.append(entry["id"])
                print(output)
    total = len(entries)
    print(f"{total - len(failures)} of {total} mutations caught in {time.perf_counter() - started:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
