"""experiments/udr_validity.py on a photo folder (`--folder`): the project's import, the factors.csv columns as
the factors scored, the job score where the folder has labels, and a report of its own.

The folder is written from hand-made photos (a coloured square whose place, size and colour are its
factors) by experiments/outside_photos.py's `write_folder`, so no drawing library is needed.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, PROJECT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trial = load_script("udr_validity")
outside = load_script("outside_photos")


def square_photos(n: int, seed: int = 0, size: int = 64) -> tuple[np.ndarray, pd.DataFrame]:
    """Grey photos, each with one square: x, y, scale and hue vary; `lamp` is the same for every photo."""
    rng = np.random.default_rng(seed)
    factors = pd.DataFrame(
        {
            "x": rng.uniform(0, 1, n),
            "y": rng.uniform(0, 1, n),
            "scale": rng.uniform(0.5, 1, n),
            "hue": rng.integers(0, 3, n) / 3,
            "lamp": np.full(n, 2.0),
        }
    )
    images = np.full((n, size, size, 3), 128, dtype=np.uint8)
    colours = np.array([[230, 40, 40], [40, 230, 40], [40, 40, 230]], dtype=np.uint8)
    for i, f in enumerate(factors.itertuples()):
        side = int(8 + 16 * f.scale)
        left, top = int(f.x * (size - side)), int(f.y * (size - side))
        images[i, top : top + side, left : left + side] = colours[int(round(f.hue * 3))]
    return images, factors


def write_squares(folder: Path, n: int, labelled: float) -> pd.DataFrame:
    images, factors = square_photos(n)
    labels = outside.label_by_scale(factors["scale"].to_numpy(), labelled, np.random.default_rng(1))
    return outside.write_folder(folder, images, factors, labels)


def test_a_setting_claimed_by_one_process_is_left_to_it_until_it_lets_go(tmp_path):
    """Two processes sharing a results folder: a setting whose lock is held is skipped by the other, while a
    different setting and, once the holder lets go (as its death does), the same one are free."""
    (tmp_path / "checkpoints").mkdir()
    first, second = trial.Setting("cbeta_vae", 175.0, 6.0), trial.Setting("cbeta_vae", 175.0, 12.0)
    with trial.claim(tmp_path, first) as held:
        assert held
        with trial.claim(tmp_path, first) as again, trial.claim(tmp_path, second) as other:
            assert not again and other
    with trial.claim(tmp_path, first) as held:
        assert held


def test_few_label_draws_of_a_small_evaluation_set_take_all_of_it():
    draws = trial.label_draws(12, seed=0)
    assert all(len(d) == 12 for n in trial.FEW_LABELS for d in draws[n])
    large = trial.label_draws(10000, seed=0)
    assert [len(large[n][0]) for n in trial.FEW_LABELS] == list(trial.FEW_LABELS)


def test_the_job_column_is_in_the_table_only_for_data_with_labels():
    plain = trial.fields(["x", "y"], 3)
    with_job = trial.fields(["x", "y"], 3, job=True)
    assert "job_cv" not in plain
    assert [f for f in with_job if f != "job_cv"] == plain


def test_the_job_rule_is_compared_only_where_it_was_measured():
    rng = np.random.default_rng(0)
    m, groups = 6, ["a", "a", "a", "b", "b", "b"]
    quality = rng.uniform(0, 1, m)
    scores = {rule: rng.uniform(0, 1, m) for rule, _ in trial.RULES if rule not in ("random", "job")}
    scores.update({f"{k}_l{n}": rng.uniform(0, 1, (trial.LABEL_DRAWS, m)) for k in ("mig", "dci") for n in (100, 1000)})
    without = [e["rule"] for e in trial.family_regrets(scores, quality, groups, n_boot=5)]
    assert "job" not in without and "random" in without
    scores["job"] = quality  # a job score that follows MIG picks the best model: no regret
    entries = {e["rule"]: e for e in trial.family_regrets(scores, quality, groups, n_boot=5)}
    assert entries["job"]["model"][0] == 0.0


def test_a_folder_without_labels_says_the_job_score_is_not_measured(tmp_path):
    info = {
        "plan": [{"family": "beta_vae", "setting": "1"}],
        "command": "python experiments/udr_validity.py --folder shapes",
        "folder": "shapes",
        "image_size": 64,
        "crop_fraction": 1.0,
        "factors": ["x", "y"],
        "n_train": 80,
        "n_eval": 20,
        "probe": 10,
        "steps": 4,
        "precision": "float32",
        "threads": 1,
        "host": "here",
        "labelled": {"good": 0, "bad": 0},
    }
    args = argparse.Namespace(simulator="geometry", image_size=64, n_boot=5, report=str(tmp_path / "r.md"))
    text = "\n".join(trial.report_head(info, [], tmp_path / "shapes-64", args) + trial.report_tail(info))
    assert "the folder's labelled split has no good\n  and bad photos" in text
    assert "simulator" not in text.split("## How it is measured")[1].split("- **Training**")[0]
    assert "One data set, the photo folder `shapes`" in text


@pytest.mark.slow  # trains two models for 4 steps and scores them: about half a minute on a shared CPU
def test_the_trial_runs_on_a_photo_folder_and_reports_it(tmp_path, monkeypatch):
    folder = tmp_path / "squares"
    table = write_squares(folder, 60, labelled=0.5)
    out, report = tmp_path / "runs", tmp_path / "report.md"
    tiny = ["--folder", str(folder), "--image-size", "64", "--out", str(out), "--params", str(PROJECT / "params.yaml")]
    train = [*tiny, "--steps", "4", "--seeds", "2", "--settings", "1", "--families", "beta_vae", "--probe", "10"]
    monkeypatch.setattr(sys, "argv", ["udr_validity.py", *train])
    trial.main()

    results = out / "squares-64"
    with (results / "models.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["data"], r["family"], r["seed"]) for r in rows] == [
        ("squares", "beta_vae", "0"),
        ("squares", "beta_vae", "1"),
    ]
    factor_columns = [c for c in rows[0] if c.startswith("mig_") and not c.startswith("mig_l")]
    assert factor_columns == ["mig_x", "mig_y", "mig_scale", "mig_hue"]  # the constant `lamp` is not scored
    assert all(0.0 <= float(r["job_cv"]) <= 1.0 for r in rows)
    info = json.loads((results / "run.json").read_text())
    assert info["folder"] == str(folder) and info["n_train"] + info["n_eval"] == len(table) == 60
    assert info["n_eval"] == 12 and info["probe"] == 10
    assert info["labelled"]["good"] > 0 and info["labelled"]["bad"] > 0
    assert (results / "probe" / "beta_vae_0.25_s0.npz").exists()
    stamp = (results / "import" / "import.json").read_text()

    trial.main()  # everything finished and the folder unchanged: nothing imported or trained again
    assert (results / "import" / "import.json").read_text() == stamp
    with (results / "models.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2

    monkeypatch.setattr(sys, "argv", ["udr_validity.py", *tiny, "--analyse", "--n-boot", "5", "--report", str(report)])
    trial.main()
    text = report.read_text()
    assert f"the photo folder `{folder}`" in text and "x, y, scale, hue" in text
    assert "| job score on the labelled photos (`register.select: job`) |" in text
    assert "| x | y | scale | hue |" in text and " job |" in text
    assert not (out / "geometry-32").exists()
