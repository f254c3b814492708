"""One setting, one source: `udr.kl_threshold` decides "informative" for UDR, n_active, classify and the plots.

A tiny study is trained under the default cut-off; then the cut-off moves between two of
the trained models' component KLs, so that the count of informative components changes,
and every consumer must count the same components as informative.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import labelled_disc_splits, write_processed
from tubervae import plots
from tubervae.config import INFORMATIVE_KL, parse_params
from tubervae.runs import vae_artifacts
from tubervae.runs.study import storage_url
from tubervae.runs.tracker import Tracker
from tubervae.stages import classify, register, search, udr

FAMILY = "beta_vae"


def raw_params(kl_threshold: float, seeds: int) -> dict:
    return {
        "train": {
            "latent_dim": 4,
            "steps": 40,
            "batch_size": 16,
            "log_every": 20,
            "checkpoint_every": 40,
            "snapshot_every": 0,
            "device": "cpu",
            "threads": 1,
            "workers": 1,  # in-process, so that the plots spy sees the training
        },
        "search": {
            "seeds": seeds,
            "min_active": 0,
            "enqueue_grid": True,
            "spaces": {FAMILY: {"n_trials": 1, "beta": [1.0, 2.0], "grid": [{"beta": 1.0}]}},
        },
        "udr": {"kl_threshold": kl_threshold, "heatmap_pairs": 0},
        "classify": {"label_sizes": [6, 20], "n_draws": 1, "cnn_steps": 5, "gallery_size": 0},
    }


def run_search(root, params) -> dict:
    return search.run(
        params,
        FAMILY,
        root=root,
        processed_dir=root / "data" / "processed",
        reports_dir=root / "reports" / "search",
        progress=False,
    )


def between_two_kls(kls: list[np.ndarray]) -> float:
    """A cut-off above the default that makes at least one informative component uninformative."""
    values = np.unique(np.concatenate(kls))
    values = values[values > INFORMATIVE_KL]
    assert len(values) >= 2, f"the tiny models need two informative components to test with, got KLs {kls}"
    return float(np.sqrt(values[0] * values[1]))


@pytest.fixture
def project(tmp_path, empty_mlflow_db, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    splits, names = labelled_disc_splits(seed=0)
    write_processed(tmp_path / "data" / "processed", splits, names)
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.mark.slow
def test_kl_threshold_reaches_udr_n_active_classify_and_plots(project, monkeypatch):
    first = run_search(project, parse_params(raw_params(INFORMATIVE_KL, seeds=2)))
    tracker = Tracker(project)
    kls = {rid: vae_artifacts.latents(tracker, rid)["kl"] for rid in first["trials"][0]["seed_run_ids"]}
    threshold = between_two_kls(list(kls.values()))

    seen_thresholds = []
    real_distribution_figure = plots.distribution_figure

    def spy(*args, **kwargs):
        seen_thresholds.append(kwargs["kl_threshold"])
        return real_distribution_figure(*args, **kwargs)

    monkeypatch.setattr(plots, "distribution_figure", spy)
    params = parse_params(raw_params(threshold, seeds=3))  # a new study; seeds 0 and 1 reuse their runs
    summary = run_search(project, params)
    (trial,) = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    run_ids = trial["seed_run_ids"]
    kls = {rid: vae_artifacts.latents(tracker, rid)["kl"] for rid in run_ids}
    counts = {rid: int((kl > threshold).sum()) for rid, kl in kls.items()}
    assert counts != {rid: int((kl > INFORMATIVE_KL).sum()) for rid, kl in kls.items()}

    # plots: the newly trained seed drew its distributions with the configured cut-off
    assert seen_thresholds and set(seen_thresholds) == {threshold}
    # the search's feasibility count
    study = optuna.load_study(study_name=summary["study"], storage=storage_url(project))
    assert study.trials[-1].user_attrs["n_active_per_seed"] == [counts[rid] for rid in run_ids]

    # the UDR tables and the n_active metric written back onto every ranked run
    udr.run(
        params,
        root=project,
        search_dir=project / "reports" / "search",
        out_dir=project / "reports" / "udr",
        processed_dir=project / "data" / "processed",
    )
    models = pd.read_csv(project / "reports" / "udr" / "models.csv")
    assert dict(zip(models.run_id, models.n_active)) == counts
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    assert {rid: int(client.get_run(rid).data.metrics["n_active"]) for rid in run_ids} == counts

    # classify marks the champion's informative components with the same cut-off
    register.run(
        params,
        root=project,
        udr_dir=project / "reports" / "udr",
        processed_dir=project / "data" / "processed",
        out_path=project / "reports" / "register" / "c.json",
    )
    champion = json.loads((project / "reports" / "register" / "c.json").read_text())["run_id"]
    classify.run(
        params, root=project, processed_dir=project / "data" / "processed", out_dir=project / "reports" / "classify"
    )
    components = pd.read_csv(project / "reports" / "classify" / "components.csv")
    expected = kls[champion][components.component.to_numpy()] > threshold
    assert components.informative.tolist() == expected.tolist()
    metrics = json.loads((project / "reports" / "classify" / "metrics.json").read_text())
    assert metrics["candidate_components"] == [int(j) for j in np.flatnonzero(kls[champion] > threshold)] or (
        counts[champion] == 0 and len(metrics["candidate_components"]) == 4
    )


# ------------------------------------------------------------------ relative paths in settings


def _photos(folder, names, value=120):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (640, 480), (value, value, value)).save(folder / name)


def test_a_relative_data_source_is_read_from_the_project_not_the_working_folder(tmp_path, monkeypatch):
    """`cd elsewhere && tubervae --root PROJECT raw` with `data.source: photos` imports PROJECT/photos, while the
    working folder holds a decoy `photos` folder of its own."""
    from tubervae import cli

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    _photos(project / "photos", ["mine_a.jpg", "mine_b.jpg"])
    _photos(elsewhere / "photos", ["decoy.jpg"], value=30)
    (project / "params.yaml").write_text("data:\n  source: photos\n  workers: 1\n")
    monkeypatch.chdir(elsewhere)
    assert cli.main(["--root", str(project), "raw"]) == 0
    assert cli.main(["--root", str(project), "source"]) == 0
    ingest = pd.read_csv(project / "reports" / "data" / "ingest.csv", keep_default_na=False)
    assert sorted(ingest.source) == ["mine_a.jpg", "mine_b.jpg"]
    fingerprint = json.loads((project / "reports" / "data" / "source.json").read_text())
    assert fingerprint["source"] == "photos" and fingerprint["files_read"] == 2
    assert not (elsewhere / "data").exists() and not (elsewhere / "reports").exists()


def test_the_source_fingerprint_follows_the_photos_and_factors_only(tmp_path):
    from tubervae.config import DataConfig, Params
    from tubervae.stages import source

    photos = tmp_path / "photos"
    _photos(photos / "good", ["a.jpg"])
    _photos(photos, ["b.jpg"])
    (photos / "factors.csv").write_text("file,size\ngood/a.jpg,1\nb.jpg,2\n")
    (photos / "README.txt").write_text("notes")
    cfg = DataConfig(source="photos")
    first = source.run(Params(data=cfg), root=tmp_path)
    assert first == json.loads((tmp_path / "reports" / "data" / "source.json").read_text())
    assert (first["entries"], first["files_read"]) == (4, 3)  # two photos and factors.csv are read
    # Read again, from another working folder, with the files touched and the notes edited: the same.
    for path in photos.rglob("*"):
        path.touch()
    (photos / "README.txt").write_text("other notes")
    assert source.fingerprint(DataConfig(source=str(photos))).items() >= {"sha256": first["sha256"]}.items()
    changes = [
        lambda: _photos(photos / "bad", ["c.jpg"]),  # a photo added
        lambda: _photos(photos, ["b.jpg"], value=121),  # a photo changed
        lambda: (photos / "factors.csv").write_text("file,size\ngood/a.jpg,1\nb.jpg,3\n"),  # a factor changed
        lambda: (photos / "good" / "a.jpg").rename(photos / "a.jpg"),  # a photo moved out of good/
        lambda: (photos / "bad" / "c.jpg").unlink(),  # a photo removed
    ]
    seen = {first["sha256"]}
    for change in changes:
        change()
        seen.add(source.fingerprint(cfg, tmp_path)["sha256"])
    assert len(seen) == 1 + len(changes)
    assert source.fingerprint(DataConfig(source="synthetic"), tmp_path) == {"source": "synthetic"}


# ------------------------------------------------------------------ the tracking store, as MLFLOW_TRACKING_URI names it


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture
def bare_project(tmp_path, monkeypatch):
    """A project folder with settings and nothing else; no MLflow settings from the environment."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "params.yaml").write_text("udr: {heatmap_pairs: 0}\n")
    models = "run_id,family,beta,c_max,setting,seed,n_active,udr_within,feasible\n"
    (tmp_path / "reports" / "udr").mkdir(parents=True)
    (tmp_path / "reports" / "udr" / "models.csv").write_text(models + f"{'a' * 32},beta_vae,1.0,0.0,1.0,0,3,0.5,True\n")
    return tmp_path


@pytest.mark.parametrize("stage", ["udr", "register", "classify"])
def test_a_store_that_is_not_a_database_is_one_line(bare_project, monkeypatch, capsys, stage):
    from tubervae import cli

    not_a_db = bare_project / "notes.db"
    not_a_db.write_text("a text file, not a database\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{not_a_db}")
    assert cli.main(["--root", str(bare_project), stage]) == 1
    line = one_line_error(capsys)
    assert f"sqlite:///{not_a_db} (MLFLOW_TRACKING_URI) is not an MLflow database" in line
    assert "point MLFLOW_TRACKING_URI at an MLflow store" in line
    assert not_a_db.read_text() == "a text file, not a database\n"


def test_register_pointed_at_a_missing_store_makes_none(bare_project, tmp_path_factory, monkeypatch, capsys):
    from tubervae import cli

    other = tmp_path_factory.mktemp("another-store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other / 'mlflow.db'}")
    assert cli.main(["--root", str(bare_project), "register"]) == 1
    assert one_line_error(capsys).endswith(
        f"no MLflow store at {other / 'mlflow.db'}: run the stages before this one (dvc repro) in this project, "
        "or point MLFLOW_TRACKING_URI at the store that holds their runs"
    )
    assert list(other.iterdir()) == [] and not (bare_project / "mlflow.db").exists()


@pytest.mark.parametrize(
    "call, advice",
    [
        (lambda client: client.get_run("0" * 32), "point MLFLOW_TRACKING_URI at the store that made it"),
        (
            lambda client: client.get_model_version_by_alias("tuber-quality", "champion"),
            "register the champion first (tubervae register, or dvc repro register)",
        ),
    ],
    ids=["missing run", "missing alias"],
)
def test_mlflow_errors_are_one_line_at_the_cli_and_a_traceback_with_debug(
    bare_project, empty_mlflow_db, monkeypatch, capsys, call, advice
):
    """Whatever MLflow raises inside a stage (here: a real client on a real, empty store) ends as one line."""
    from mlflow.exceptions import MlflowException

    from tubervae import cli
    from tubervae.runs.tracker import tracking_uri

    shutil.copyfile(empty_mlflow_db, bare_project / "mlflow.db")
    monkeypatch.setattr(cli, "cmd_classify", lambda args, params: call(MlflowClient(tracking_uri(args.root))))
    assert cli.main(["--root", str(bare_project), "classify"]) == 1
    line = one_line_error(capsys)
    assert line.startswith("tubervae classify: error: ") and advice in line
    assert f"sqlite:///{bare_project.resolve() / 'mlflow.db'}" in line
    with pytest.raises(MlflowException):
        cli.main(["--root", str(bare_project), "--debug", "classify"])
