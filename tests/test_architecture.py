"""The layout keeps its promises: stages' code is declared to DVC, and the import layers hold.

`dvc repro` reruns a stage only when one of its declared deps changed, so a stage whose
deps miss a module it imports (directly or not) could silently keep stale results.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tubervae"


def module_file(module: str) -> Path:
    path = ROOT / "src" / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def import_closure(graph, module: str) -> set[Path]:
    """The files of `module` and of every package module it imports, directly or not.

    Importing `a.b.c` also runs `a/__init__.py` and `a/b/__init__.py`, and whatever they import.
    """
    modules, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in modules or not current.startswith("tubervae"):
            continue
        modules.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:k]) for k in range(1, len(parts))]
        todo += graph.find_upstream_modules(current)
    return {module_file(m).relative_to(ROOT) for m in modules}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


def stages() -> dict[str, dict]:
    """Each DVC stage with its deps (a foreach stage once, with its template)."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in spec.items()}


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("tubervae")


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_stage_deps_cover_the_stage_import_closure(graph, name):
    stage = stages()[name]
    command = re.match(r"tubervae (\w+)", stage["cmd"])
    assert command, f"stage {name}: its cmd {stage['cmd']!r} does not run a tubervae subcommand"
    module = f"tubervae.stages.{command.group(1)}"
    assert module_file(module).exists(), f"stage {name} runs {module}, which does not exist"
    deps = [str(d) for d in stage.get("deps", [])]
    # The CLI parses and validates params.yaml before any stage runs.
    needed = import_closure(graph, module) | import_closure(graph, "tubervae.config")
    missing = sorted(str(p) for p in needed if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {name!r} misses deps on files its code imports: {missing}"
    # And no more: a file the stage never imports would rerun it for nothing when it changes.
    extra = sorted(d for d in deps if d.startswith("src/") and Path(d) not in needed)
    assert not extra, f"dvc.yaml stage {name!r} depends on files its code does not import: {extra}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_dvc_stage_deps_exist(name):
    for dep in stages()[name].get("deps", []):
        if str(dep).startswith("src/"):
            assert (ROOT / dep).exists(), f"dvc.yaml stage {name!r} depends on {dep}, which does not exist"


def test_import_closure_sees_indirect_imports(graph):
    """The check above is only as good as the closure: the udr stage reaches the networks through the runs layer."""
    closure = import_closure(graph, "tubervae.stages.udr")
    assert Path("src/tubervae/models/nets.py") in closure
    assert Path("src/tubervae/stages/search.py") not in closure
    # Reading latents and weights needs nothing of the served models.
    assert Path("src/tubervae/runs/serving.py") not in closure
    assert Path("src/tubervae/runs/serving.py") not in import_closure(graph, "tubervae.stages.evaluate")


@pytest.mark.skipif(
    shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None, reason="import-linter is not installed"
)
def test_import_layers_hold():
    """The contracts in pyproject.toml: CLI > stages > runs > pure core > settings, stages independent."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
