"""The Model Registry aliases and the pyfunc models, with the register and classify stages that fill it.

Kept whole: the register and classify stages are what builds the registry: the session's tiny project is
their output, so the tests of its versions, aliases, model files and pyfunc models read what those stages
registered, and `unlabelled_project` (a module fixture that trains two VAEs) runs both stages in each of its
cases. The gate (test_quality_gate.py) and the server (test_model_server.py) are tested in their own files.

The registry tests share one tiny project (16×16 disc photos, two VAEs trained for a
few steps, `registry_project` in conftest.py) built once per session: training dominates the cost.
"""

import base64
import dataclasses
import hashlib
import io
import json
import py_compile
import shutil
import sys
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import (
    MARKER_CODE,
    QUALITY_NAME,
    TINY_DATA_VERSION,
    TINY_LATENT,
    TINY_SIZE,
    VAE_NAME,
    changed_file,
    client_for,
    logged_vae,
    models_row,
    one_model_registry,
    store_folder,
    tiny_params,
    two_tiny_vaes,
    use_registry,
    with_labels,
    write_labelled_discs,
    write_models_csv,
)
from conftest import load_split as load
from tubervae import cli
from tubervae.classify import fit_any_of_rule, fit_threshold_rule
from tubervae.config import parse_params
from tubervae.models.nets import VAE
from tubervae.runs import model_server, registry, vae_artifacts
from tubervae.runs.model_files import DIGESTS_TAG, ModelFilesError
from tubervae.runs.tracker import Tracker
from tubervae.stages import classify, register

SIZE, LATENT, DATA_VERSION = TINY_SIZE, TINY_LATENT, TINY_DATA_VERSION


@pytest.fixture(scope="module")
def project(registry_project):
    """The session's tiny registry (conftest.py)."""
    return registry_project


def test_register_without_the_udr_table_says_to_run_udr(tmp_path):
    with pytest.raises(FileNotFoundError, match="udr stage"):
        register.run(
            parse_params({}),
            root=tmp_path,
            udr_dir=tmp_path / "reports" / "udr",
            processed_dir=write_labelled_discs(tmp_path / "data" / "processed"),
            out_path=tmp_path / "champion.json",
        )


# ------------------------------------------------------------ a tiny registry


def independent_vae(root: Path, run_id: str, tmp: Path) -> VAE:
    """The weights the training run logged, loaded straight into the network."""
    path = client_for(root).download_artifacts(run_id, "model/model.pt", str(tmp))
    model = VAE(image_size=SIZE, latent_dim=LATENT)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@torch.no_grad()
def means(model: VAE, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return model.encode(x)[0].numpy()


def test_register_tags_the_champion_version(project):
    client = client_for(project["root"])
    first = project["first"]
    assert first["version"] == 1 and first["run_id"] == project["runs"][2.0]
    assert project["first_file"] == first
    version = client.get_model_version(VAE_NAME, "1")
    digests = json.loads(version.tags[DIGESTS_TAG])
    assert {k: version.tags[k] for k in ("family", "setting", "seed", "udr", "n_active", "data_version")} == {
        "family": "beta_vae",
        "setting": "2",
        "seed": "0",
        "udr": "0.4",
        "n_active": "4",
        "data_version": DATA_VERSION,
    }
    assert version.tags["source_run_id"] == project["runs"][2.0]
    # The model card: what it was compared with and the decision, in the tags and the description.
    assert version.tags["compared_with"] == "no champion" and version.tags["decision"] == "champion"
    assert version.tags["selection_score"] == "within-family UDR 0.400"
    for line in (f"- **data version**: {DATA_VERSION}", "- **labels used**: none (UDR is unsupervised)"):
        assert line in version.description
    assert "## Compared with" in version.description and "## Decision" in version.description
    assert first["gate"]["promote"] and first["gate"]["line"].startswith(f"{VAE_NAME} version 1 is @champion")
    assert first["data_version"] == DATA_VERSION and first["udr_within"] == pytest.approx(0.40)
    assert "more informative components" in first["policy"]
    # The SHA-256 of every file of the logged model, which is readable code and plain data: no pickle, no
    # copy of the package (it is served from the installed one).
    folder = store_folder(client, VAE_NAME, "1")
    files = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    files.pop(registry.REGISTERED_MODEL_META, None)  # MLflow's own note, written when a version is read by name
    assert set(digests) == set(files)
    assert {"MLmodel", "vae_model_code.py", "artifacts/model.pt", "artifacts/vae_config.json"} <= set(digests)
    assert {"requirements.txt", "conda.yaml", "python_env.yaml"} <= set(digests)
    assert not any(name.endswith(".pkl") or name.startswith("code/") for name in digests)
    assert all(digests[name] == hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items())
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (folder / "MLmodel").read_text()


def test_each_version_is_the_model_its_training_run_logged(project):
    client = client_for(project["root"])
    for version, beta in (("1", 2.0), ("2", 6.0)):
        run_id = project["runs"][beta]
        registered = client.get_model_version(VAE_NAME, version)
        model = logged_vae(client, run_id)
        # The version is the training run's own model, not a copy logged by another run.
        assert registered.run_id == run_id and registered.source == f"models:/{model.model_id}"
        assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": VAE_NAME, "version": int(version)}]
        run = client.get_run(run_id)
        # The model carries the run's params and its final metrics (those of the last training step).
        assert model.params["beta"] == run.data.params["beta"] == str(beta)
        assert {m.key for m in model.metrics} >= {"curves/loss", "n_active", "test_rec"}
        assert {m.step for m in model.metrics} == {8}
        # Its scores on its data: the model's page lists data/processed under "Datasets used".
        on_data = {(m.key, m.dataset_name, m.dataset_digest) for m in model.metrics if m.dataset_name}
        digest = run.inputs.dataset_inputs[0].dataset.digest
        assert on_data == {("test_rec", "processed", digest), ("n_active", "processed", digest)}
    registers = client.search_runs([client.get_run(project["runs"][2.0]).info.experiment_id], "tags.kind = 'register'")
    assert len(registers) == 3 and all(r.info.status == "FINISHED" for r in registers)
    assert not any(client.list_artifacts(r.info.run_id, "model") for r in registers)  # no model re-logged there
    assert {r.data.metrics["version"] for r in registers} == {1.0, 2.0}


def test_the_registered_models_have_a_signature_and_an_input_example(project):
    use_registry(project["root"])
    vae = mlflow.models.get_model_info(f"models:/{VAE_NAME}@champion")
    assert vae.signature.inputs.input_names() == ["image_base64", "path"]
    assert vae.signature.inputs.required_input_names() == []
    assert vae.signature.outputs.input_names() == [f"mu_{j}" for j in range(LATENT)] + [
        f"logvar_{j}" for j in range(LATENT)
    ]
    quality = mlflow.models.get_model_info(f"models:/{QUALITY_NAME}@champion")
    assert quality.signature.inputs == vae.signature.inputs
    assert quality.signature.outputs.input_names()[0] == "label"
    assert {"score", "fired", "rules"} <= set(quality.signature.outputs.input_names())
    for name in (VAE_NAME, QUALITY_NAME):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        example = model.input_example
        assert list(example.columns) == ["image_base64"] and len(example) == 1
        # The example is a photo of the training size that the model answers.
        photo = Image.open(io.BytesIO(base64.b64decode(example.image_base64[0])))
        assert photo.size == (SIZE, SIZE) and photo.mode == "RGB"
        assert len(model.predict(example)) == 1


def test_a_better_model_moves_the_alias_and_earlier_versions_stay(project):
    client = client_for(project["root"])
    second = project["second"]
    assert second["version"] == 2 and second["run_id"] == project["runs"][6.0]
    assert (second["setting"], second["n_active"]) == ("6", 3)
    champion = client.get_model_version_by_alias(VAE_NAME, "champion")
    assert int(champion.version) == 2 and champion.tags["source_run_id"] == project["runs"][6.0]
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{VAE_NAME}'"))
    assert versions == [1, 2]
    earlier = client.get_model_version(VAE_NAME, "1")
    assert earlier.tags["source_run_id"] == project["runs"][2.0] and earlier.aliases == []
    # The experiment's Models tab marks the served model, and only it.
    assert logged_vae(client, project["runs"][6.0]).tags.get("champion") == VAE_NAME
    assert "champion" not in logged_vae(client, project["runs"][2.0]).tags
    # Registering the same champion again adds no version and leaves the alias where it is.
    assert project["again"]["version"] == 2 and project["second_file"]["version"] == 2


def test_classify_fits_the_rule_on_the_labelled_set_and_scores_the_test_set(project, tmp_path):
    metrics, processed = project["metrics"], project["processed"]
    vae = independent_vae(project["root"], project["runs"][6.0], tmp_path)
    labelled, test = load(processed, "labelled"), load(processed, "test")
    z_lab, z_test = means(vae, labelled["images"]), means(vae, test["images"])
    y_lab, y_test = labelled["labels"] == 1, test["labels"] == 1

    probe = load(processed, "udr_probe")["images"]
    with torch.no_grad():
        mu, logvar = vae.encode(torch.from_numpy(probe.astype(np.float32) / 255.0).permute(0, 3, 1, 2))
    kl = (0.5 * (mu**2 + logvar.exp() - logvar - 1)).mean(0).numpy()
    informative = [int(j) for j in np.flatnonzero(kl > 0.01)] or list(range(LATENT))
    assert metrics["candidate_components"] == informative
    # The one-cut rule chooses among the informative components, as the other rules and learners do.
    expected = fit_threshold_rule(z_lab, y_lab, components=informative)
    rule = metrics["threshold_rule"]
    assert rule["component"] in informative and rule["informative"] == (kl > 0.01).any()
    assert (rule["component"], rule["direction"]) == (expected.component, expected.direction)
    assert rule["threshold"] == pytest.approx(expected.threshold, abs=1e-5)

    values = z_test[:, rule["component"]]
    predicted_bad = values > rule["threshold"] if rule["direction"] == "bad_if_above" else values < rule["threshold"]
    recall_bad, recall_good = predicted_bad[y_test].mean(), (~predicted_bad[~y_test]).mean()
    assert metrics["threshold_rule_test"]["accuracy"] == pytest.approx((predicted_bad == y_test).mean())
    assert metrics["threshold_rule_test"]["balanced_accuracy"] == pytest.approx((recall_bad + recall_good) / 2)
    # Training photos are 75 % bad, so the baseline says "bad" to every test photo.
    assert metrics["threshold_rule_test"]["majority_accuracy"] == pytest.approx(y_test.mean())
    assert metrics["n_labelled"] == {"good": 10, "bad": 10}
    assert set(metrics["alternatives"]) == {"any_rule", "logistic", "gradient_boosting", "pixel_cnn"}
    assert metrics["champion"]["version"] == 2 and metrics["champion"]["run_id"] == project["runs"][6.0]

    out = project["root"] / "reports" / "classify"
    # The dim discs are plain to the tiny VAE: the rule beats chance on the labelled photos, and there is no champion.
    gate = metrics["gate"]
    assert gate["promoted"] and not gate["forced"] and gate["champion"] is None, gate["line"]
    assert gate["challenger"]["low"] > 0.5 and gate["challenger"]["n_labels"] == 20
    assert gate["line"].startswith(f"{QUALITY_NAME} version 1 is @champion: promoted")
    assert json.loads((out / "metrics.json").read_text())["registered"] == {
        "model": QUALITY_NAME,
        "version": 1,
        "alias": "champion",
    }
    assert metrics["served"] == {"model": QUALITY_NAME, "version": 1, "alias": "champion"}
    # DVC's metrics file: numbers only, by method; the classify run logs the same figures grouped by '/'.
    folder = project["root"] / "reports" / "metrics" / "classify"  # one file per method, as dvc metrics shows them
    numbers = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    assert set(numbers) == {"threshold", "any_rule", "majority", "logistic", "gradient_boosting", "pixel_cnn", "gate"}
    assert numbers["gate"]["balanced_accuracy"] == pytest.approx(gate["challenger"]["value"])
    assert all(isinstance(v, float) for group in numbers.values() for v in group.values())
    assert numbers["threshold"]["balanced_accuracy"] == pytest.approx(
        metrics["threshold_rule_test"]["balanced_accuracy"]
    )
    assert numbers["any_rule"]["n_rules"] == len(metrics["any_rule"]["rules"])
    assert numbers["majority"]["accuracy"] == pytest.approx(metrics["threshold_rule_test"]["majority_accuracy"])
    client = client_for(project["root"])
    (run,) = client.search_runs([client.get_run(project["runs"][6.0]).info.experiment_id], "tags.kind = 'classify'")
    assert run.data.metrics["any_rule/balanced_accuracy"] == pytest.approx(numbers["any_rule"]["balanced_accuracy"])
    efficiency = pd.read_csv(out / "label_efficiency.csv")
    # 100 labels exceed the 20 labelled photos: only the 6-label draw is measured.
    assert set(efficiency.n_labels) == {6}
    assert set(efficiency.method) == {"threshold", "any_rule", "logistic", "gradient_boosting", "pixel_cnn"}
    for name in ("components.csv", "scatter.png", "label_efficiency.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "misclassified.png").exists() == bool((predicted_bad != y_test).any())
    version = client_for(project["root"]).get_model_version_by_alias(QUALITY_NAME, "champion")
    served = metrics["any_rule"]["rules"]  # the served rule: one cut per chosen component, bad if any fires
    assert version.tags["component"] == ",".join(str(r["component"]) for r in served)
    assert int(version.tags["vae_version"]) == 2 and int(version.tags["n_rules"]) == len(served)


def test_classify_without_a_champion_says_to_run_search_and_register(tmp_path, monkeypatch, empty_mlflow_db):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")  # a store with no model in it
    processed = write_labelled_discs(tmp_path / "data" / "processed")
    with pytest.raises(RuntimeError, match=r"tubervae-vae@champion.*run the search and the register stage"):
        classify.run(tiny_params(), root=tmp_path, processed_dir=processed, out_dir=tmp_path / "classify")
    assert not (tmp_path / "classify" / "metrics.json").exists()


# ------------------------------------------------------------ photos of any size


def test_vae_pyfunc_by_alias_encodes_a_path_and_an_array_of_another_size(project, photos, tmp_path, monkeypatch):
    use_registry(project["root"])
    monkeypatch.setenv("TUBERVAE_INPUT_FOLDER", str(photos["path"].parent))  # the `path` input is off without it
    model = registry.load_registered(Tracker(project["root"]), VAE_NAME)  # its files checked first
    expected = means(independent_vae(project["root"], project["runs"][6.0], tmp_path), photos["grid"][None])[0]
    from_path = model.predict(pd.DataFrame({"path": [str(photos["path"])]}))
    from_bytes = model.predict(pd.DataFrame({"image_base64": [photos["encoded"]]}))
    # An array goes to the Python model itself: the signature admits tables only.
    from_array = model.unwrap_python_model().predict(None, photos["array"])
    mu_columns = [f"mu_{j}" for j in range(LATENT)]
    assert list(from_path.columns) == mu_columns + [f"logvar_{j}" for j in range(LATENT)]
    for answer in (from_path, from_bytes, from_array):
        np.testing.assert_allclose(answer[mu_columns].to_numpy()[0], expected, atol=1e-5)


def test_quality_pyfunc_by_alias_labels_a_path_and_an_array_and_rejects_bad_input(
    project, photos, tmp_path, monkeypatch
):
    use_registry(project["root"])
    monkeypatch.setenv("TUBERVAE_INPUT_FOLDER", str(photos["path"].parent))  # the `path` input is off without it
    model = registry.load_registered(Tracker(project["root"]), QUALITY_NAME)  # its files checked first
    rules = project["metrics"]["any_rule"]["rules"]
    c, threshold = rules[0]["component"], rules[0]["threshold"]
    mu = means(independent_vae(project["root"], project["runs"][6.0], tmp_path), photos["grid"][None])[0]
    z = mu[c]
    fired = [
        r["component"]
        for r in rules
        if (
            mu[r["component"]] > r["threshold"]
            if r["direction"] == "bad_if_above"
            else mu[r["component"]] < r["threshold"]
        )
    ]
    answers = (
        model.predict(pd.DataFrame({"path": [str(photos["path"])]})),
        model.predict(pd.DataFrame({"image_base64": [photos["encoded"]]})),
        model.unwrap_python_model().predict(None, photos["array"]),  # arrays: the Python model only
    )
    for answer in answers:
        assert list(answer.columns[:3]) == ["label", f"z{c}", "threshold"]  # what the one-rule model sent
        assert answer.loc[0, f"z{c}"] == pytest.approx(z, abs=1e-5)
        assert answer.loc[0, "label"] == ("bad" if fired else "good")
        assert answer.loc[0, "threshold"] == pytest.approx(threshold)
        assert list(answer.loc[0, "fired"]) == fired
        assert [r["component"] for r in answer.loc[0, "rules"]] == [r["component"] for r in rules]
    two = model.unwrap_python_model().predict(None, np.stack([photos["array"], photos["array"][:, ::-1]]))
    assert len(two) == 2 and two.loc[0, f"z{c}"] == pytest.approx(z, abs=1e-5)

    with pytest.raises(MlflowException, match="^row 0: not a readable image") as info:
        model.predict(pd.DataFrame({"path": [str(photos["not_image"])]}))
    assert info.value.get_http_status_code() == 400 and "notes.png" not in info.value.message
    with pytest.raises(MlflowException, match=r"shape \(1, 5, 5, 2\)") as info:
        model.unwrap_python_model().predict(None, np.zeros((5, 5, 2), np.uint8))
    assert info.value.get_http_status_code() == 400
    with pytest.raises(MlflowException) as info:  # the loaded model: MLflow holds an array to the signature
        model.predict(np.zeros((1, 16, 16, 3), np.uint8))
    assert info.value.get_http_status_code() == 400


def other_weights(path: Path) -> bytes:
    """A valid weights file of the same network, every weight halved: it would load without complaint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    buffer = io.BytesIO()
    torch.save({k: v / 2 if v.is_floating_point() else v for k, v in state.items()}, buffer)
    return buffer.getvalue()


CHANGES = {
    "the model code": lambda folder, marker: (folder / "quality_model_code.py", MARKER_CODE.format(marker=marker)),
    "a weight file": lambda folder, marker: (folder / "artifacts" / "model.pt", None),
    "an added file": lambda folder, marker: (folder / "artifacts" / "extra.py", MARKER_CODE.format(marker=marker)),
}


@pytest.mark.parametrize("change", CHANGES, ids=str)
def test_a_changed_or_added_file_is_refused_before_any_of_the_models_code_runs(
    project, change, tmp_path, no_model_loads, capsys, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the CLI reads the project's own store
    client = client_for(project["root"])
    tracker = Tracker(project["root"])
    folder = store_folder(client, QUALITY_NAME)
    marker = tmp_path / "marker"
    path, code = CHANGES[change](folder, str(marker))
    content = other_weights(path) if code is None else (path.read_bytes() if path.exists() else b"") + code.encode()
    name = path.relative_to(folder).as_posix()
    verb = "was added" if change == "an added file" else "was changed"
    with changed_file(path, content):
        with pytest.raises(ModelFilesError, match=rf"^{QUALITY_NAME} version 1: {name} {verb}") as info:
            registry.load_registered(tracker, QUALITY_NAME)
        assert "\n" not in str(info.value) and "refused, nothing loaded" in str(info.value)
        assert no_model_loads == [] and not marker.exists()
        # The serving entry point (`tubervae serve`, which `make serve` runs) refuses it in one line, no server.
        capsys.readouterr()
        assert cli.main(["--root", str(project["root"]), "serve", "--port", "1"]) == 1
        err = capsys.readouterr().err
        assert (
            err.startswith(f"tubervae serve: error: {QUALITY_NAME} version 1: {name} {verb}") and err.count("\n") == 1
        )
        assert no_model_loads == [] and not marker.exists()
        if change == "the model code":
            # What the check prevents: MLflow alone runs the appended line.
            mlflow.pyfunc.load_model(str(folder))
            assert marker.exists()
    # Put back as it was logged, the model loads again.
    assert registry.load_registered(tracker, QUALITY_NAME).metadata.model_id is not None


def test_a_compiled_cache_in_the_store_is_never_trusted_and_never_runs(project, tmp_path, monkeypatch):
    """With bytecode writing on (Python's default), importing the model code in place writes a compiled
    cache beside it, as a user's own `mlflow.pyfunc.load_model` of the store's folder does. The champion
    still loads, and a cache planted there, one Python runs without looking at the source (PEP 552's
    unchecked hash), never runs: caches are no model file and are removed from the checked copy."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    tracker = Tracker(project["root"])
    folder = store_folder(client_for(project["root"]), QUALITY_NAME)
    cache = folder / "__pycache__" / f"quality_model_code.{sys.implementation.cache_tag}.pyc"
    try:
        mlflow.pyfunc.load_model(str(folder))  # in place: writes the cache into the store
        assert cache.is_file()
        assert registry.load_registered(tracker, QUALITY_NAME).metadata.model_id is not None

        marker = tmp_path / "marker"
        planted = tmp_path / "quality_model_code.py"
        planted.write_text((folder / "quality_model_code.py").read_text() + MARKER_CODE.format(marker=str(marker)))
        py_compile.compile(
            str(planted), cfile=str(cache), invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )
        assert registry.load_registered(tracker, QUALITY_NAME).metadata.model_id is not None
        assert not marker.exists()
        mlflow.pyfunc.load_model(str(folder))  # what removing it prevents: in place, the planted cache runs
        assert marker.exists()
    finally:
        shutil.rmtree(folder / "__pycache__", ignore_errors=True)


def test_registering_a_model_changed_since_it_was_logged_is_refused(project):
    client = client_for(project["root"])
    tracker = Tracker(project["root"])
    model = logged_vae(client, project["runs"][2.0])
    folder = store_folder(client, VAE_NAME, "1")
    with changed_file(folder / "MLmodel", (folder / "MLmodel").read_bytes() + b"\n"):
        with pytest.raises(ModelFilesError, match=rf"^logged model {model.name} \({model.model_id}\): MLmodel was"):
            registry.register_model(tracker, "another-name", model.model_id)
    assert client.search_model_versions("name = 'another-name'") == []


class Payload(mlflow.pyfunc.PythonModel):
    """A model whose pickle writes a marker file when it is unpickled, as a tampered python_model.pkl would."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "the pickle ran"))

    def predict(self, context, model_input, params=None):
        return model_input


def test_a_version_registered_without_digests_is_refused_with_how_to_register_it_again(
    project, tmp_path, no_model_loads
):
    """A version registered before digests were recorded (a pickled model): refused unread, in one line."""
    tracker = Tracker(project["root"])
    marker = tmp_path / "marker"
    with mlflow.start_run(experiment_id=tracker.experiment_id):
        info = mlflow.pyfunc.log_model(name="legacy", python_model=Payload(str(marker)), pip_requirements=["mlflow"])
    assert not marker.exists()
    version = mlflow.register_model(info.model_uri, "legacy-quality")
    tracker.client.set_registered_model_alias("legacy-quality", "champion", version.version)
    with pytest.raises(ModelFilesError, match=r"^legacy-quality version 1 carries no file digests") as info:
        registry.load_registered(tracker, "legacy-quality")
    assert "register it again" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelFilesError, match="carries no file digests"):
        model_server.serve("models:/legacy-quality/1", root=project["root"], port=1)
    assert no_model_loads == [] and not marker.exists()
    with pytest.raises(AttributeError):  # what the refusal prevents: MLflow alone unpickles it (then fails)
        mlflow.pyfunc.load_model("models:/legacy-quality@champion")
    assert marker.exists()


@pytest.mark.slow
def test_selection_for_the_job_scores_the_udr_ties_on_the_labels_and_classify_reports_both(
    tmp_path, monkeypatch, empty_mlflow_db
):
    """register.select: job: among the settings tied on UDR, the one whose multi-defect rule cross-validates best
    on the labelled photos becomes the champion; champion.json names both champions, and classify scores both on
    the test photos side by side. The cross-validated scores are recomputed here from the logged weights."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    processed, tracker, runs = two_tiny_vaes(tmp_path, empty_mlflow_db)
    udr_dir = tmp_path / "reports" / "udr"
    write_models_csv(
        udr_dir, [models_row(runs[2.0], "beta_vae", 2, 0, 0.70, 3), models_row(runs[6.0], "beta_vae", 6, 0, 0.68, 3)]
    )
    params = tiny_params()
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, select="job"))
    summary = register.run(params, root=tmp_path, udr_dir=udr_dir, processed_dir=processed)

    labelled = load(processed, "labelled")
    expected = {}
    for run_id in runs.values():
        z = means(independent_vae(tmp_path, run_id, tmp_path), labelled["images"])
        kl = vae_artifacts.latents(tracker, run_id)["kl"]
        informative = [int(j) for j in np.flatnonzero(kl > params.udr.kl_threshold)] or None
        rule = fit_any_of_rule(z, labelled["labels"] == 1, components=informative, max_rules=3, n_folds=5)
        expected[run_id] = max(rule.cv_balanced_accuracy)
    best_for_job = max(expected, key=lambda r: (expected[r], r == runs[2.0]))  # ties keep the UDR order
    champions = summary["champions"]
    assert summary["select"] == "job" and champions["job_candidates"] == 2
    assert champions["udr"]["run_id"] == runs[2.0]
    assert champions["job"]["run_id"] == best_for_job == summary["run_id"]
    for entry in (champions["udr"], champions["job"]):
        assert entry["rule_cv_balanced_accuracy"] == pytest.approx(expected[entry["run_id"]])
    version = client_for(tmp_path).get_model_version_by_alias("tubervae-vae", "champion")
    assert version.tags["source_run_id"] == best_for_job

    metrics = classify.run(params, root=tmp_path, processed_dir=processed, out_dir=tmp_path / "reports" / "classify")
    table = pd.read_csv(tmp_path / "reports" / "classify" / "champions.csv")
    assert list(table.selection) == ["udr", "job"] and list(table.run_id) == [runs[2.0], best_for_job]
    served = table[table.served]
    assert list(served.run_id.unique()) == [best_for_job]
    assert served.any_rule_test_balanced_accuracy.iloc[0] == pytest.approx(
        metrics["any_rule"]["test"]["balanced_accuracy"]
    )
    assert table.threshold_test_balanced_accuracy.between(0, 1).all()


def first_per_class(n: int):
    """Keep the first `n` good and the first `n` bad labels of each split; the rest become unlabelled."""

    def keep(split, labels):
        out = np.full_like(labels, -1)
        for cls in (0, 1):
            out[np.flatnonzero(labels == cls)[:n]] = cls
        return out

    return keep


LABEL_CASES = {
    "no labels": lambda split, labels: np.full_like(labels, -1),
    "one class": lambda split, labels: np.where(labels >= 0, 1, -1),
    "5 per class": first_per_class(5),
}


@pytest.fixture(scope="module")
def unlabelled_project(tmp_path_factory, empty_mlflow_db):
    """Two tiny VAEs, the one of β 2 alone in the UDR table; each test rewrites the labels of its own copy."""
    with one_model_registry(tmp_path_factory, empty_mlflow_db, "few-labels", 2) as project:
        yield project


@pytest.mark.parametrize("case", LABEL_CASES, ids=str)
@pytest.mark.slow
def test_register_and_classify_with_no_labels_one_class_or_few(unlabelled_project, case, caplog, monkeypatch):
    """Without both classes the job's selection falls back to UDR and classify writes its outputs with the
    reason, registering nothing; with 5 per class both run, and warn that the figures are rough."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, original, runs = unlabelled_project
    out = root / "cases" / case.replace(" ", "_")
    processed = out / "processed"
    shutil.copytree(original, processed)
    with_labels(processed, LABEL_CASES[case])
    params = tiny_params()
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, select="job"))
    with caplog.at_level("WARNING", logger="tubervae"):
        summary = register.run(params, root=root, processed_dir=processed, out_path=out / "champion.json")
        metrics = classify.run(
            params, root=root, processed_dir=processed, out_dir=out / "classify", champion_path=out / "champion.json"
        )
    assert summary["run_id"] == runs[2.0]
    written = {p.name for p in (out / "classify").iterdir()}
    assert {"metrics.json", "components.csv", "champions.csv", "label_efficiency.csv", "scatter.png"} <= written
    assert "label_efficiency.png" in written and any((out / "metrics" / "classify").glob("*.json"))
    if case == "5 per class":
        assert summary["select"] == "job"
        assert metrics["n_labelled"] == {"good": 5, "bad": 5} and "skipped" not in metrics
        assert "only 5 good and 5 bad labelled photos" in caplog.text
    else:
        assert summary["select"] == "udr" and "chosen by UDR alone" in caplog.text
        assert "a rule needs both" in metrics["skipped"]
        assert json.loads((out / "classify" / "metrics.json").read_text())["skipped"] == metrics["skipped"]
        assert pd.read_csv(out / "classify" / "components.csv").empty
        assert "classify skipped, tuber-quality not registered" in caplog.text
