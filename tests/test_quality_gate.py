"""The quality model's gate (runs/quality_gate.py) on the session's tiny registry (conftest.py)."""

import pytest

from conftest import MARKER_CODE, VAE_NAME, changed_file, client_for, store_folder
from tubervae.runs import quality_gate
from tubervae.runs.model_files import ModelFilesError
from tubervae.runs.tracker import Tracker


@pytest.fixture(scope="module")
def project(registry_project):
    """The session's tiny registry (conftest.py)."""
    return registry_project


def test_classify_refuses_a_champion_vae_whose_code_was_changed(project, tmp_path, no_model_loads):
    client = client_for(project["root"])
    marker = tmp_path / "marker"
    path = store_folder(client, VAE_NAME) / "vae_model_code.py"
    with changed_file(path, path.read_bytes() + MARKER_CODE.format(marker=str(marker)).encode()):
        with pytest.raises(ModelFilesError, match=rf"^{VAE_NAME} version 2: vae_model_code.py was changed"):
            quality_gate.load_champion(Tracker(project["root"]), VAE_NAME)
    assert no_model_loads == [] and not marker.exists()
