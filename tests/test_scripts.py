"""The benchmarks and experiments keep working while the library changes under them.

No test runs them for real (each takes minutes to hours), so cheap checks stand in:

- every script's `--help` exits 0 and prints its usage: it imports, and it does its work in
  `main()`, not at import;
- every name a script takes from `tubervae` is public: no leading underscore, and in the
  module's `__all__` where it has one, else defined there rather than imported (read from the
  scripts' and the modules' source);
- no script replaces a library attribute, beyond the known ones listed below.

A rename of a public name then fails here rather than in a benchmark run months later, and an
internal a script needs is something its module offers openly first (a parameter, a documented
function).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

from tubervae.config import TrainConfig
from tubervae.training.device import new_optimiser
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.setting import Setting

PROJECT = Path(__file__).resolve().parents[1]
SRC = PROJECT / "src"
SCRIPTS = sorted(PROJECT.glob("benchmarks/bench_*.py")) + sorted(PROJECT.glob("experiments/*.py"))
SCRIPT_IDS = [str(p.relative_to(PROJECT)) for p in SCRIPTS]

DEVICE_CHECK = PROJECT / "benchmarks" / "device_check.sh"
DEVICE_CHECK_PARTS = (
    "nvidia-smi",
    "pytest -m cuda",
    "make gpu-smoke",
    "bench_gpu baseline",
    "lever: NCHW layout",
    "lever: 230 fused models",
    "lever: torch.compile",
    "lever: CUDA graphs",
)

# Library attributes a script still replaces, each until its module takes a parameter for it.
KNOWN_PATCHES: set[tuple[str, str, str]] = set()  # (script, module, name) a script may replace


def module_file(dotted: str) -> Path | None:
    """The source of a tubervae module or package, or None when there is no such module."""
    base = SRC.joinpath(*dotted.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


@functools.cache
def surface(dotted: str) -> tuple[frozenset[str] | None, dict[str, str]]:
    """A module's `__all__` (None without one) and its top-level names, each with what binds it."""
    tree = ast.parse(module_file(dotted).read_text(encoding="utf-8"))
    listed, names = None, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = "defined"
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(target, ast.Name):
                    names[target.id] = "defined"
                    if target.id == "__all__":
                        listed = frozenset(ast.literal_eval(node.value))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = "imported"
    return listed, names


def problem(dotted: str, name: str) -> str | None:
    """Why `dotted.name` is not a public name of the module, or None when it is."""
    if name.startswith("_"):
        return "private (leading underscore)"
    listed, names = surface(dotted)
    if listed is not None:
        return None if name in listed else "not in the module's __all__"
    kind = names.get(name)
    if kind is None:
        return "not defined in the module"
    if kind == "imported":
        return "imported there, not the module's own (take it from where it is defined)"
    return None


def uses(source: str) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """(module, name, line) of every name a script takes from a tubervae module, and of those it replaces."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # the script's name for a module -> the module
    taken, patched = [], []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tubervae":
                    modules[alias.asname or "tubervae"] = alias.name if alias.asname else "tubervae"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "tubervae":
            for alias in node.names:
                if module_file(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                else:
                    taken.append((node.module, alias.name, node.lineno))

    def module_of(expr) -> str | None:
        if isinstance(expr, ast.Name):
            return modules.get(expr.id)
        if isinstance(expr, ast.Attribute):
            parent = module_of(expr.value)
            if parent and module_file(f"{parent}.{expr.attr}"):
                return f"{parent}.{expr.attr}"
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (owner := module_of(node.value)) and not module_of(node):
            taken.append((owner, node.attr, node.lineno))
            if isinstance(node.ctx, ast.Store | ast.Del):
                patched.append((owner, node.attr, node.lineno))
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            # setattr(module, "name", ...), mock.patch.object(module, "name", ...), getattr(module, "name")
            owner, name = module_of(node.args[0]), node.args[1]
            if owner and isinstance(name, ast.Constant) and isinstance(name.value, str):
                taken.append((owner, name.value, node.lineno))
                if not (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")):
                    patched.append((owner, name.value, node.lineno))
    return taken, patched


def run_forked(script: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` run in a child forked from this process, with the project as working folder.

    The child keeps the third-party libraries this process has imported (torch, MLflow: most of a cold
    start's seconds) and drops every `tubervae` module, so the script imports the library as a fresh
    Python would. Its exit status and output are returned as `subprocess.run` returns them."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            status = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)
                for name in [m for m in sys.modules if m == "tubervae" or m.startswith("tubervae.")]:
                    del sys.modules[name]
                os.chdir(PROJECT)
                sys.argv = [str(script), *args]
                sys.path.insert(0, str(script.parent))
                try:
                    runpy.run_path(str(script), run_name="__main__")
                    status = 0
                except SystemExit as stop:
                    status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        deadline = time.monotonic() + timeout
        while (waited := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"{script.name} {' '.join(args)} ran over {timeout} s")
            time.sleep(0.05)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(
            [str(script), *args], os.waitstatus_to_exitcode(waited[1]), out.read(), err.read()
        )


@pytest.mark.slow  # a forked child per script, which imports what torch and the worker have not
@pytest.mark.parametrize("script", SCRIPTS, ids=SCRIPT_IDS)
def test_script_help_exits_cleanly(script):
    done = run_forked(script, "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()


def test_scripts_take_only_public_names_from_tubervae():
    wrong = []
    for script, label in zip(SCRIPTS, SCRIPT_IDS):
        taken, _ = uses(script.read_text(encoding="utf-8"))
        for dotted, name, line in taken:
            if (why := problem(dotted, name)) is not None:
                wrong.append(f"{label}:{line}: {dotted}.{name}: {why}")
    assert not wrong, "\n".join(wrong)


def test_scripts_replace_no_library_attribute_beyond_the_known_ones():
    found = set()
    for script, label in zip(SCRIPTS, SCRIPT_IDS):
        _, patched = uses(script.read_text(encoding="utf-8"))
        found |= {(label, dotted, name) for dotted, name, _ in patched}
    assert found - KNOWN_PATCHES == set(), "give the module a parameter instead of replacing its attribute"
    assert KNOWN_PATCHES - found == set(), "a known patch is gone: drop it from KNOWN_PATCHES"


def test_scripts_do_their_work_in_main():
    """At import a script only imports, defines and names constants; the rest waits for `main()`."""
    wrong = []
    for script, label in zip(SCRIPTS, SCRIPT_IDS):
        tree = ast.parse(script.read_text(encoding="utf-8"))
        for i, node in enumerate(tree.body):
            if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # the docstring
            if isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.ClassDef | ast.Assign):
                continue
            if isinstance(node, ast.AnnAssign) or (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)):
                continue
            wrong.append(f"{label}:{node.lineno}: {ast.unparse(node).splitlines()[0]}")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_what_they_look_for():
    """The reader above finds a private name, a name outside __all__ and a replaced attribute."""
    source = (
        "import tubervae.runs.training_run as tr\n"
        "from tubervae.training import fused\n"
        "from tubervae.data import synth_dataset\n"
        "from tubervae.training.fused import train_fused, _Member\n"
        "tr.figures = None\n"
        "synth_dataset._warm_caches()\n"
        "fused.train_fused\n"
    )
    assert problem("tubervae.training.fused", "_Member") is not None
    assert problem("tubervae.training.fused", "Outcome") == "not in the module's __all__"
    assert problem("tubervae.data.synth_dataset", "generate") is None
    assert problem("tubervae.data.synth_dataset", "no_such_name") == "not defined in the module"
    taken, patched = uses(source)
    assert ("tubervae.training.fused", "_Member", 4) in taken
    assert ("tubervae.data.synth_dataset", "_warm_caches", 6) in taken
    assert ("tubervae.training.fused", "train_fused", 7) in taken
    assert patched == [("tubervae.runs.training_run", "figures", 5)]


def test_the_benchmarks_knobs_of_train_fused_change_speed_not_weights():
    """bench_gpu.py's `--adam foreach` and `--layout contiguous` train the default's weights, to rounding."""
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    cfg = TrainConfig(
        steps=6, batch_size=8, latent_dim=3, log_every=3, checkpoint_every=6, snapshot_every=0, device="cpu"
    )
    jobs = [FusedJob(Setting("beta_vae", 4.0), 0), FusedJob(Setting("beta_tcvae", 6.0), 1)]
    built = []

    def per_tensor_adam(params, cfg, device):
        built.append(new_optimiser(params, cfg, device, fused=False))
        return built[-1]

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        runs = [
            train_fused(jobs, cfg, train_images=images, probe_images=images[:8], test_images=images[:8], **knobs)
            for knobs in (
                {},
                {"make_optimiser": per_tensor_adam},
                {"input_layout": torch.contiguous_format},
            )
        ]
    finally:
        torch.set_default_dtype(previous)
    assert built and not any(adam.defaults["fused"] for adam in built)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()):
                assert torch.allclose(x, y, rtol=0, atol=1e-9)


def test_device_check_passes_the_benchmarks_only_options_they_have():
    """Every `--option` device_check.sh gives bench_gpu.py or bench_gpu_layout.py is one of theirs."""
    script = DEVICE_CHECK.read_text(encoding="utf-8")
    benches = ("bench_gpu.py", "bench_gpu_layout.py")
    accepted = "".join((PROJECT / "benchmarks" / name).read_text(encoding="utf-8") for name in benches)
    lines = [line for line in script.splitlines() if "bench_gpu" in line or re.match(r"\s*(bench|layout)=\(", line)]
    options = {option for line in lines for option in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line)}
    assert {"--models", "--layout", "--compile-mode", "--only", "--cpu"} <= options
    assert not {option for option in options if f'"{option}"' not in accepted}


@pytest.mark.slow  # records the versions of torch, MLflow, DVC and Optuna: tens of seconds on a shared CPU
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or torch.cuda.is_available(), reason="a GPU machine")
def test_device_check_skips_its_cuda_parts_on_a_machine_without_one(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEVICE_CHECK_", "BOX_"))}
    env.update(OUT=str(out), PYTHON=sys.executable)
    done = subprocess.run(
        ["bash", str(DEVICE_CHECK)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert "no CUDA (no nvidia-smi on PATH" in summary[1]
    for part in DEVICE_CHECK_PARTS:
        (line,) = [line for line in summary if line.startswith(part + " ")]
        assert "skipped: no nvidia-smi on PATH" in line, line
    assert summary[-1].startswith("device check done")
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "summary.txt"]
    assert f"torch {torch.__version__}" in (out / "env.txt").read_text()
