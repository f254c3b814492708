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
