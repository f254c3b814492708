"""`make gpu-smoke-cpu`: the GPU smoke profile end to end on the CPU, at test size.

A file of its own: it is the suite's longest test, and a file runs on one worker (`--dist loadfile`).
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from conftest import make_target, with_makefile
from test_dvc_workflow import TINY_SMOKE, copy_project, env_for, sh


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
@pytest.mark.slow
def test_gpu_smoke_profile_runs_every_stage_on_the_cpu(tmp_path):
    """`make gpu-smoke-cpu` in a git copy of the project, at test size (OVERRIDES after the profiles): one
    `dvc exp run` of every stage, on the CPU; the profiles' values stand where the test's do not replace them."""
    env = env_for(tmp_path)
    (tmp_path / "home").mkdir()
    root = tmp_path / "project"
    copy_project(root)
    with_makefile(root)
    sh(["git", "init", "-q", "-b", "main"], root, env)
    (root / ".git" / "info" / "exclude").write_text(".venv\n")
    sh(["git", "add", "-A"], root, env)
    sh(["git", "commit", "-q", "-m", "project"], root, env)
    env["PYTHONPATH"] = str(root / "src")  # the copy's stages run the copy's sources

    overrides = " ".join(f"-S {pair}" for pair in TINY_SMOKE)
    out = sh(make_target("gpu-smoke-cpu", OVERRIDES=overrides), root, env, timeout=900)
    for stage in ("raw", "preprocess", "evalset", "search@beta_vae", "search@guided_beta_vae", "udr", "register"):
        assert f"Running stage '{stage}'" in out, stage
    assert "Running stage 'classify'" in out and "Running stage 'evaluate'" in out
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["train"]["device"] == "cpu" and params["preprocess"]["image_size"] == 16
    assert params["search"]["seeds"] == 2  # gpu-smoke.txt's, which the test does not replace
    assert {space["n_trials"] for space in params["search"]["spaces"].values()} == {1}
    evaluated = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert evaluated["n_models"] == 2 * len(params["search"]["spaces"]), evaluated
