"""What the stages open alike (tubervae.stages.common): report paths, model labels, UDR's groups."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tubervae.stages.common import beside, excluded_components, model_label, model_labels, project_paths, setting_groups


def test_report_paths_are_read_from_the_project_and_default_beside_the_stage_reports(tmp_path):
    assert project_paths(tmp_path, "data/processed", "/elsewhere/x") == [
        tmp_path / "data/processed",
        Path("/elsewhere/x"),
    ]
    out_dir = tmp_path / "reports" / "udr"
    assert beside(tmp_path, None, out_dir, "metrics/udr.json") == tmp_path / "reports" / "metrics" / "udr.json"
    assert beside(tmp_path, "m.json", out_dir, "metrics/udr.json") == tmp_path / "m.json"


def test_a_model_has_one_label_everywhere():
    assert model_label("beta_vae", "4", 0) == "beta_vae 4 s0"
    models = pd.DataFrame({"family": ["beta_vae", "beta_tcvae"], "setting": ["4", "2"], "seed": [0, 3]})
    assert model_labels(models) == ["beta_vae 4 s0", "beta_tcvae 2 s3"]


def test_udr_groups_and_left_out_components_with_and_without_guidance_columns():
    old = pd.DataFrame({"family": ["beta_vae"] * 2, "beta": [2.0, 4.0], "c_max": [0.0, 0.0]})
    assert setting_groups(old) == [("beta_vae", 2.0, 0.0, 0.0), ("beta_vae", 4.0, 0.0, 0.0)]
    assert excluded_components(old) == [(), ()]
    guided = old.assign(guide_weight=[9.0, 0.0], guided_component=[0, -1])
    assert setting_groups(guided) == [("beta_vae", 2.0, 0.0, 9.0), ("beta_vae", 4.0, 0.0, 0.0)]
    assert excluded_components(guided) == [(0,), ()]
