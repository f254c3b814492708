"""experiments/disentanglement_curve.py on a photo folder (`--folder`): per-factor MIG rows for its factors."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parents[1]
EXPERIMENTS = PROJECT / "experiments"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # trains one model for 6 steps, measured twice: seconds
def test_the_curve_runs_on_a_photo_folder(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))  # as `python experiments/disentanglement_curve.py` has it
    curve, outside = load_script("disentanglement_curve"), load_script("outside_photos")
    rng = np.random.default_rng(0)
    n = 40
    factors = pd.DataFrame({"size": rng.uniform(0, 1, n), "red": rng.uniform(0, 1, n), "lamp": np.ones(n)})
    images = np.zeros((n, 64, 64, 3), dtype=np.uint8)
    for i, f in enumerate(factors.itertuples()):
        side = int(10 + 40 * f.size)
        images[i, :side, :side, 0] = int(80 + 170 * f.red)
    outside.write_folder(tmp_path / "boxes", images, factors, np.full(n, "", dtype=object))
    out = tmp_path / "curve.csv"
    args = ["--folder", str(tmp_path / "boxes"), "--image-size", "64", "--steps", "6", "--at", "3"]
    args += ["--models", "beta_vae:4", "--out", str(out), "--params", str(PROJECT / "params.yaml")]
    monkeypatch.setattr(sys, "argv", ["disentanglement_curve.py", *args])
    curve.main()
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["data"], r["step"]) for r in rows] == [("boxes", "3"), ("boxes", "6")]
    assert [c for c in rows[0] if c.startswith("mig_all_")] == ["mig_all_size", "mig_all_red"]  # not the constant
    assert (tmp_path / "import-boxes-64" / "data" / "processed" / "train.npz").exists()
