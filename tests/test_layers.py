"""The package's layers (issue 24, point 4): no import arrow of ``s2s`` points up.

Every module's imports of ``s2s`` modules are read with ``ast`` (top level and inside functions, relative
imports resolved, nothing imported), and each must point to the module's own layer or a lower one. The
layers, lowest first, are the data below; a module belongs to the layer of its longest listed prefix (a
prefix covers its submodules, except ``s2s``, the package's own empty ``__init__``), and every module not
listed belongs to ``pipeline``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from s2s.steps import STEPS

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "s2s"

# (layer, module prefixes, why it sits there), lowest first. A module may import its own layer and lower.
LAYERS = [
    (
        "base",
        ("s2s", "s2s.io", "s2s.progress", "s2s.clip_tokenizer"),
        "helpers every layer uses (files and errors, progress lines, CLIP's tokenizer); nothing above",
    ),
    (
        "world",
        ("s2s.world",),
        "the world's building blocks (scenes, renders, captions, read-outs, the build): no pipeline in them",
    ),
    (
        "pipeline",
        (),
        "config, data, models, training, sampling, edits, metrics, reports, bench: they may use the world",
    ),
    (
        "world_studies",
        ("s2s.world_studies",),
        "studies that run the pipeline's pieces on the world and measure them with the world's read-outs",
    ),
    (
        "steps",
        ("s2s.steps", "s2s.jobserver", "s2s.workflow", "s2s.report.steps", "s2s.bench.workflow"),
        "the step table, the job server that runs its steps, and the modules the table names: the rules' "
        "entry points, which no other module imports",
    ),
]
DEFAULT_LAYER = "pipeline"
RANK = {name: i for i, (name, _, _) in enumerate(LAYERS)}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every module of the package under ``root`` (the repository)."""
    return {module_name(p, root): p for p in sorted((root / "s2s").rglob("*.py"))}


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> dict[str, int]:
    """The ``s2s`` modules the file imports (anywhere in it) -> the line of the first such import.
    ``from m import x`` counts as an import of ``m.x`` where that is a module, else of ``m``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                for alias in node.names
            ]
        for target in targets:
            if target == "s2s" or target.startswith("s2s."):
                found.setdefault(target, node.lineno)
    return found


def layer_of(module: str) -> str:
    best, length = DEFAULT_LAYER, -1
    for name, prefixes, _ in LAYERS:
        for prefix in prefixes:
            covers = module == prefix or (prefix != "s2s" and module.startswith(prefix + "."))
            if covers and len(prefix) > length:
                best, length = name, len(prefix)
    return best


def upward_imports(root: Path) -> list[str]:
    """Every import that points to a higher layer, or to a module that does not exist, as a line each."""
    modules = all_modules(root)
    problems = []
    for name, path in modules.items():
        for target, line in imports_of(path, name, modules).items():
            where = f"{path.relative_to(root)}:{line}: {name} ({layer_of(name)})"
            if target not in modules:
                problems.append(f"{where} imports {target}, which is no module of the package")
            elif RANK[layer_of(target)] > RANK[layer_of(name)]:
                problems.append(f"{where} imports {target} ({layer_of(target)}), a higher layer")
    return problems


def test_no_import_points_up():
    assert upward_imports(REPO) == []


def test_every_layer_has_modules_and_the_steps_layer_is_the_step_table():
    layers = {layer_of(m) for m in all_modules(REPO)}
    assert layers == set(RANK)
    step_modules = {entry.split(":")[0] for entry in STEPS.values()} | {"s2s.steps", "s2s.jobserver"}
    assert {m for m in all_modules(REPO) if layer_of(m) == "steps"} == step_modules


def test_world_building_blocks_import_only_base_and_world():
    """The world's building blocks import no pipeline module (spelled out: the rule of issue 24)."""
    modules = all_modules(REPO)
    world = [m for m in modules if layer_of(m) == "world"]
    assert "s2s.world.build" in world and "s2s.world.classifier" in world
    for name in world:
        for target in imports_of(modules[name], name, modules):
            assert layer_of(target) in ("base", "world"), f"{name} imports {target}"


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    "source",
    [
        "from s2s.sample import draw\n",  # top level
        "def f():\n    import s2s.world_studies.check\n",  # inside a function
        "def f():\n    from .. import sample\n",  # relative, inside a function
        "from s2s.world.gone import x\n",  # a module that does not exist
    ],
)
def test_the_check_finds_an_upward_or_dangling_import(tmp_path, source):
    _write(
        tmp_path,
        {
            "s2s/__init__.py": "",
            "s2s/io.py": "",
            "s2s/sample.py": "from s2s.world import scene\n",  # pipeline -> world: allowed
            "s2s/world/__init__.py": "",
            "s2s/world/scene.py": "from s2s.io import x\n",
            "s2s/world/render.py": source,
            "s2s/world_studies/__init__.py": "",
            "s2s/world_studies/check.py": "from s2s import sample\n",
        },
    )
    problems = upward_imports(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("s2s/world/render.py:"), problems
