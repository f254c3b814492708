"""`tubervae serve` (runs/model_server.py), which `make serve` runs, and `make ui`, on the session's tiny registry
(conftest.py): the served classifier answers good and bad requests and keeps serving.
"""

import base64

import pytest

from conftest import (
    QUALITY_NAME,
    free_port,
    http,
    make_target,
    png_16_bit_rgb,
    served,
    started,
    with_makefile,
)
from tubervae.runs import model_server
from tubervae.runs.tracker import Tracker


@pytest.fixture(scope="module")
def project(registry_project):
    """The session's tiny registry (conftest.py)."""
    return registry_project


def test_serve_takes_registered_models_only():
    with pytest.raises(ValueError, match=r"--model '/tmp/model': expected a registered model, models:/<name>@<alias>"):
        model_server.registered_version(None, "/tmp/model")


# ------------------------------------------------------------ the UI and the served model


@pytest.mark.slow
def test_make_ui_serves_the_projects_store_and_prints_the_link_to_its_training_runs(project, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the Makefile's store, the project's mlflow.db
    root = with_makefile(project["root"])
    port = free_port()
    log_path = tmp_path / "ui.log"
    url = f"http://127.0.0.1:{port}"
    with started(make_target("ui", UI_PORT=port), root, {}, log_path, f"{url}/health"):
        status, body = http(f"{url}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name=tubervae")
        assert status == 200, body
        experiment_id = body["experiment"]["experiment_id"]
        assert experiment_id == Tracker(root).experiment_id
        link = f"training runs: {url}/#/experiments/{experiment_id}?workflowType=machine_learning"
        assert link in log_path.read_text().splitlines()
        status, page = http(f"{url}/")
        assert status == 200 and "<html" in page.lower()


@pytest.mark.slow
def test_served_classifier_answers_good_and_bad_requests_and_keeps_serving(project, photos, tmp_path):
    """Served by `make serve`, as the README starts it: the champion of the project's own store."""
    env = {"TUBERVAE_INPUT_FOLDER": str(photos["path"].parent)}  # the `path` input is off without it
    column = f"z{project['metrics']['any_rule']['rules'][0]['component']}"
    root = with_makefile(project["root"])
    with served(f"models:/{QUALITY_NAME}@champion", env, tmp_path / "serve.log", make_root=root) as (url, server):
        status, body = http(f"{url}/invocations", {"dataframe_records": [{"path": str(photos["path"])}]})
        assert status == 200, body
        good = body["predictions"][0]
        assert good["label"] in ("good", "bad") and {"label", column, "threshold", "fired", "rules"} <= set(good)

        status, body = http(f"{url}/invocations", {"dataframe_records": [{"path": str(photos["not_image"])}]})
        assert status == 400
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        # The answer names the row, never the path the request sent.
        assert body["message"].startswith("row 0: not a readable image") and "notes.png" not in body["message"]

        # A wrong column is named, although MLflow drops it before the model sees the request.
        status, body = http(f"{url}/invocations", {"dataframe_records": [{"img": photos["encoded"]}]})
        assert status == 400 and "'img'" in body["message"] and "'image_base64'" in body["message"], body
        # 16 bits per channel, which Pillow shows as plain RGB: refused, as at ingestion.
        deep = base64.b64encode(png_16_bit_rgb(photos["grid"])).decode()
        status, body = http(f"{url}/invocations", {"dataframe_records": [{"image_base64": deep}]})
        assert status == 400 and "more than 8 bits per channel" in body["message"], body

        # An array is no table of photos: the signature refuses it before the model sees it.
        status, body = http(f"{url}/invocations", {"inputs": [[[1, 2], [3, 4]]]})
        assert status == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE", body

        status, body = http(f"{url}/invocations", {"dataframe_records": [{"image_base64": photos["encoded"]}]})
        assert status == 200, body
        again = body["predictions"][0]
        # The same photo as a path and as encoded bytes of another size gets the same answer.
        assert again["label"] == good["label"]
        assert again[column] == pytest.approx(good[column], abs=1e-5)
        assert server.poll() is None
