"""Promotion to the Model Registry (runs/promotion.py) on a tiny registry of its own: the test moves the alias."""

import pandas as pd
import pytest

from conftest import (
    TINY_CROP,
    TINY_DATA_VERSION,
    VAE_NAME,
    client_for,
    logged_vae,
    models_row,
    one_model_registry,
    tiny_params,
)
from tubervae.runs import promotion, registry
from tubervae.runs.model_files import DIGESTS_TAG
from tubervae.runs.tracker import Tracker

CROP, DATA_VERSION = TINY_CROP, TINY_DATA_VERSION


@pytest.fixture(scope="module")
def project(tmp_path_factory, empty_mlflow_db):
    """Two tiny VAEs; the register stage registers β=6 as tubervae-vae@champion (version 1)."""
    from tubervae.stages import register

    with one_model_registry(tmp_path_factory, empty_mlflow_db, "promotion", 6) as (root, processed, runs):
        register.run(tiny_params(), root=root, processed_dir=processed)
        yield {"root": root, "processed": processed, "runs": runs}


def test_register_replaces_a_champion_registered_without_digests_by_a_model_logged_from_code(project):
    """A run whose model was logged before digests were recorded (pickled, then) gets a new model, logged from
    code from the run's weights, and a new version with digests, even though the alias already is that run."""
    client = client_for(project["root"])
    tracker = Tracker(project["root"])
    run_id = project["runs"][6.0]
    old = logged_vae(client, run_id)
    before = client.get_model_version_by_alias(VAE_NAME, "champion")
    client.delete_logged_model_tag(old.model_id, DIGESTS_TAG)
    client.delete_model_version_tag(VAE_NAME, before.version, DIGESTS_TAG)
    champion = pd.Series(models_row(run_id, "beta_vae", 6, 0, 0.70, 3))
    version = promotion.promote(tracker, VAE_NAME, champion, {"crop_fraction": CROP, "data_version": DATA_VERSION})
    assert int(version.version) == int(before.version) + 1 and registry.has_digests(version)
    assert version.source != before.source and version.tags["source_run_id"] == run_id
    assert client.get_model_version_by_alias(VAE_NAME, "champion").version == version.version
    model = registry.load_registered(tracker, VAE_NAME)
    assert model.metadata.model_id == version.source.removeprefix("models:/")


@pytest.mark.slow  # trains two tiny VAEs, then three register stages and a classify stage
def test_select_centrality_registers_the_medoid_and_gates_it_on_centrality(tmp_path_factory, empty_mlflow_db):
    """register.select: centrality: the feasible model of highest ModelCentrality is chosen whatever its UDR,
    and the gate compares ModelCentrality figures of the same table."""
    import dataclasses
    import json

    from conftest import write_models_csv
    from tubervae.stages import classify, register

    with one_model_registry(tmp_path_factory, empty_mlflow_db, "centrality", 6) as (root, processed, runs):
        base = tiny_params()
        params = dataclasses.replace(base, register=dataclasses.replace(base.register, select="centrality"))
        udr_dir, out = root / "reports" / "udr", root / "reports" / "register" / "champion.json"
        kwargs = dict(root=root, udr_dir=udr_dir, processed_dir=processed, out_path=out)

        def table(centrality_2, centrality_6):
            rows = [models_row(runs[2.0], "beta_vae", 2, 0, 0.40, 4), models_row(runs[6.0], "beta_vae", 6, 0, 0.70, 3)]
            return [row | {"centrality": c} for row, c in zip(rows, (centrality_2, centrality_6))]

        write_models_csv(udr_dir, table(0.3, 0.5))
        first = register.run(params, **kwargs)  # no champion yet: β 6, the medoid (and the UDR choice)
        assert (first["run_id"], first["alias"], first["select"]) == (runs[6.0], "champion", "centrality")
        write_models_csv(udr_dir, table(0.6, 0.5))
        second = register.run(params, **kwargs)  # β 2: lower UDR (0.40 against 0.70), higher centrality
        assert (second["run_id"], second["alias"]) == (runs[2.0], "champion")
        assert second["champions"]["centrality"] == {
            "run_id": runs[2.0],
            "family": "beta_vae",
            "setting": "2",
            "seed": 0,
            "udr_within": 0.4,
            "centrality": 0.6,
        }
        assert second["champions"]["udr"]["run_id"] == runs[6.0]  # the UDR policy's choice, beside it
        assert "ModelCentrality" in second["policy"]
        gate = second["gate"]
        assert (gate["challenger"]["name"], gate["challenger"]["value"]) == ("ModelCentrality", 0.6)
        assert gate["champion"]["value"] == 0.5 and gate["labels"] == "none (ModelCentrality is unsupervised)"
        classify.run(params, root=root, processed_dir=processed, out_dir=root / "reports" / "classify")
        side = pd.read_csv(root / "reports" / "classify" / "champions.csv")  # the medoid is served, beside the others
        assert side.selection.tolist() == ["udr", "job", "centrality"]
        assert side.set_index("selection").loc["centrality", ["run_id", "served"]].tolist() == [runs[2.0], True]
        assert side.set_index("selection").loc["udr", ["run_id", "served"]].tolist() == [runs[6.0], False]
        # The champion's own row is the yardstick, feasible or not: β 2, now infeasible at 0.8, cannot be chosen,
        # and β 6 (0.7) is below it: refused
        rows = table(0.8, 0.7)
        rows[0]["feasible"] = False
        write_models_csv(udr_dir, rows)
        third = register.run(params, **kwargs)
        assert (third["run_id"], third["alias"]) == (runs[6.0], "challenger")
        assert "its 0.700 is below the champion's 0.800" in third["gate"]["reason"]
        assert json.loads(out.read_text()) == third
        client = client_for(root)
        assert client.get_model_version_by_alias(VAE_NAME, "champion").tags["source_run_id"] == runs[2.0]
