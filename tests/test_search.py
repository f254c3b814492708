"""The search stage (`tubervae.stages.search`): one family's study from settings to reports, on tiny studies."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import FAMILY, RAW_PARAMS, merged
from tubervae.config import parse_params
from tubervae.stages import search


def test_unknown_family_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="cbeta_vae.*no search space"):
        search.run(parse_params(RAW_PARAMS), "cbeta_vae", root=tmp_path, processed_dir=tmp_path / "missing")


def test_search_prints_its_progress_to_stderr(project, no_pictures, capsys):
    """One line per event: the study, each trial's start (k of n), each seed's steps (every tenth, the
    loss), each trial's UDR; on stderr, so that stdout keeps the command's one summary line."""
    raw = merged(RAW_PARAMS, search={"spaces": {FAMILY: {"n_trials": 2}}})
    search.run(
        parse_params(raw),
        FAMILY,
        root=project,
        processed_dir=project / "data" / "processed",
        reports_dir=project / "reports" / "search",
    )
    out, err = capsys.readouterr()
    assert "search beta_vae:" not in out
    lines = [line for line in err.splitlines() if line.startswith("search beta_vae: ")]
    assert lines[0].startswith("search beta_vae: study ") and "holds 0 of 2 finished trials" in lines[0]
    for k in (1, 2):
        assert any(
            f"trial {k} of 2 (Optuna #{k - 1}, β " in line and "2 seeds of 20 steps" in line for line in lines
        ), lines
        for seed in (0, 1):
            steps = [line for line in lines if line.startswith(f"search beta_vae: trial {k} of 2, seed {seed}: step ")]
            # logged every 5 of 20 steps: each log passes a tenth, so each is a line, the last one step 20 of 20
            assert [line.split("step ")[1].split(",")[0] for line in steps] == [
                "5 of 20",
                "10 of 20",
                "15 of 20",
                "20 of 20",
            ]
            assert all(", loss " in line for line in steps)
        assert any(line.startswith(f"search beta_vae: trial {k} of 2 scored: median UDR ") for line in lines)


@pytest.mark.slow
def test_the_search_stage_starts_without_scikit_learn_or_scipy_stats():
    """A search that scores by UDR needs neither: its process and the pool's forkserver import none of them
    (about a second of every `tubervae search`); the check sees scikit-learn once MIG is computed."""
    check = (
        "import sys, numpy as np, tubervae.stages.search, tubervae.runs.pool; "
        "before = [m in sys.modules for m in ('sklearn', 'scipy.stats')]; "
        "from tubervae.evaluation.mig import mig; mig(np.eye(4), np.eye(4)); "
        "print(*before, 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]
