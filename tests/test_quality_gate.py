"""The quality model's gate (runs/quality_gate.py) on the session's tiny registry (conftest.py), and the promotion
gate (champion / challenger) on a gated project of its own.

The `gated` project (two tiny VAEs trained for a few steps, the one of β 6 registered, `tuber-quality` classified
four times) is built once for the module; the VAE's gate in the register stage (runs/promotion.py) and the job
selection's gate are tried on the same project, so that its models are trained once.
"""

import dataclasses
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from conftest import (
    MARKER_CODE,
    QUALITY_NAME,
    TINY_DATA_VERSION,
    TINY_SIZE,
    VAE_NAME,
    changed_file,
    client_for,
    models_row,
    one_model_registry,
    store_folder,
    tiny_params,
    with_labels,
    write_labelled_discs,
    write_models_csv,
)
from tubervae.runs import quality_gate
from tubervae.runs.model_files import ModelFilesError
from tubervae.runs.tracker import Tracker
from tubervae.stages import classify, register

SIZE, DATA_VERSION = TINY_SIZE, TINY_DATA_VERSION


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


# ------------------------------------------------------------ the promotion gate (champion / challenger)


def blank_vae(monkeypatch):
    """Make the classify stage build its rule on a VAE whose weights are all zero: every photo encodes alike,
    so no rule on it can beat chance (a champion that learned nothing)."""
    real = quality_gate.load_champion

    def load(tracker, name):
        version, model = real(tracker, name)
        with torch.no_grad():
            for weights in model.vae.parameters():
                weights.zero_()
        return version, model

    monkeypatch.setattr(quality_gate, "load_champion", load)


def labels_at_chance(split, labels):
    """Labelled photos' labels made independent of the photos (alternating over 10 good then 10 bad discs)."""
    return np.where(labels >= 0, np.arange(labels.size) % 2, -1) if split == "labelled" else labels


@pytest.fixture(scope="module")
def gated(tmp_path_factory, empty_mlflow_db):
    """One tiny project; tubervae-vae@champion is β 6. Then tuber-quality is classified four times:
    1. labels at chance: refused, no champion, nothing served;
    2. labels at chance on a blank VAE, classify.force_promotion: promoted by force;
    3. the true labels on the trained VAE: beats the blank champion, promoted;
    4. labels at chance again: refused, the champion of step 3 stays."""
    with one_model_registry(tmp_path_factory, empty_mlflow_db, "gated", 6) as (root, processed, runs):
        chance = root / "data" / "chance"
        shutil.copytree(processed, chance)
        with_labels(chance, labels_at_chance)
        params = tiny_params()
        forced = dataclasses.replace(params, classify=dataclasses.replace(params.classify, force_promotion=True))
        register.run(params, root=root, processed_dir=processed)
        steps, logs = [], []
        for step, (settings, data) in enumerate(
            [(params, chance), (forced, chance), (params, processed), (params, chance)], start=1
        ):
            with pytest.MonkeyPatch.context() as patch:
                if step == 2:
                    blank_vae(patch)
                handler = _Capture()
                logger = logging.getLogger("tubervae")
                logger.addHandler(handler)
                try:
                    steps.append(
                        classify.run(settings, root=root, processed_dir=data, out_dir=root / "reports" / f"c{step}")
                    )
                finally:
                    logger.removeHandler(handler)
                logs.append(handler.lines)
        yield {"root": root, "steps": steps, "logs": logs, "processed": processed, "chance": chance, "runs": runs}


class _Capture(logging.Handler):
    """The warning lines a stage logged (caplog is function-scoped; the fixture is module-scoped)."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.mark.slow
def test_the_gate_refuses_a_rule_at_chance_and_with_no_champion_serves_nothing(gated):
    first = gated["steps"][0]
    gate = first["gate"]
    assert not gate["promoted"] and gate["champion"] is None and gate["challenger"]["low"] <= 0.5
    assert first["registered"] == {"model": QUALITY_NAME, "version": 1, "alias": "challenger"}
    assert first["served"] is None
    on_disk = json.loads((gated["root"] / "reports" / "c1" / "metrics.json").read_text())
    assert on_disk["served"] is None and on_disk["gate"]["line"] == gate["line"]
    assert gate["line"].startswith(f"{QUALITY_NAME} version 1 is @challenger and nothing is served")
    assert "not above chance (0.5)" in gate["line"] and "no champion to compare with" in gate["line"]
    assert gate["line"] in gated["logs"][0]
    # The learned classifiers stay beside the rule as reference figures.
    assert set(first["alternatives"]) == {"any_rule", "logistic", "gradient_boosting", "pixel_cnn"}
    version = client_for(gated["root"]).get_model_version(QUALITY_NAME, "1")
    # Its alias `challenger` has since moved to the latest refused version (step 4); the card keeps the decision.
    assert "champion" not in version.aliases and version.tags["decision"] == "challenger"


@pytest.mark.slow
def test_forced_promotion_is_logged_on_the_version_the_run_and_as_a_warning(gated):
    second = gated["steps"][1]
    assert second["gate"]["promoted"] and second["gate"]["forced"]
    assert second["registered"]["alias"] == "champion" and second["served"]["version"] == 2
    assert second["gate"]["reason"].startswith("forced promotion") and "would have refused" in second["gate"]["reason"]
    client = client_for(gated["root"])
    version = client.get_model_version(QUALITY_NAME, "2")
    assert version.tags["forced_promotion"] == "true" and "- **forced**: True" in version.description
    run = client.get_run(version.run_id)
    assert run.data.tags["forced_promotion"] == "true" and run.data.tags["kind"] == "classify"
    assert any(line.startswith("classify.force_promotion is set") for line in gated["logs"][1])
    # Unforced runs carry no such tag.
    assert client.get_model_version(QUALITY_NAME, "3").tags["forced_promotion"] == "false"


@pytest.mark.slow
def test_a_challenger_that_beats_the_champion_is_promoted_with_its_model_card(gated):
    third = gated["steps"][2]
    gate = third["gate"]
    champion = gate["champion"]["estimate"]
    # The forced champion's VAE knows nothing: on the same labels and folds its rule is at chance.
    assert gate["champion"]["version"] == 2 and champion["value"] == pytest.approx(0.5)
    assert gate["promoted"] and not gate["forced"] and gate["challenger"]["value"] > champion["value"]
    assert gate["challenger"]["n_labels"] == champion["n_labels"] == 20
    assert gate["line"].startswith(f"{QUALITY_NAME} version 3 is @champion: promoted")
    client = client_for(gated["root"])
    version = client.get_model_version_by_alias(QUALITY_NAME, "champion")
    assert int(version.version) == 3 and client.get_model_version(QUALITY_NAME, "2").aliases == []
    card = version.description
    for heading in ("## Data", "## Validation", "## Test", "## Compared with", "## Decision"):
        assert heading in card
    assert f"- **data version**: {DATA_VERSION}" in card and "10 good + 10 bad (all labelled photos)" in card
    assert "majority baseline" in card and f"{QUALITY_NAME} version 2: 0.500" in card
    assert version.tags["compared_with"].startswith(f"{QUALITY_NAME} version 2")
    assert float(version.tags["gate_balanced_accuracy"]) == pytest.approx(gate["challenger"]["value"], abs=1e-4)
    # MLflow's classifier evaluation on the test split is linked to the logged model (reported only).
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert {"accuracy_score", "f1_score", "precision_score", "recall_score"} <= {m.key for m in model.metrics}


@pytest.mark.slow
def test_the_gate_keeps_the_champion_when_the_challenger_is_at_chance_and_names_both_figures(gated):
    fourth = gated["steps"][3]
    gate = fourth["gate"]
    assert not gate["promoted"] and gate["champion"]["version"] == 3
    assert fourth["registered"]["alias"] == "challenger" and fourth["served"]["version"] == 3
    line = gate["line"]
    assert line.startswith(f"{QUALITY_NAME} version 4 is @challenger, version 3 stays @champion: not promoted")
    challenger, champion = gate["challenger"], gate["champion"]["estimate"]
    assert f"{challenger['value']:.3f} [{challenger['low']:.3f}, {challenger['high']:.3f}]" in line
    assert f"champion {champion['value']:.3f}" in line
    client = client_for(gated["root"])
    assert client.get_model_version_by_alias(QUALITY_NAME, "champion").version == 3
    assert client.get_model_version_by_alias(QUALITY_NAME, "challenger").version == 4


@pytest.mark.slow
def test_the_vae_gate_on_udr_refuses_a_worse_model_force_promotes_it_and_a_new_data_version_is_not_compared(
    gated, monkeypatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, runs = gated["root"], gated["runs"]
    params = tiny_params()
    params = dataclasses.replace(params, register=dataclasses.replace(params.register, model_name="vae-gated"))
    forced = dataclasses.replace(params, register=dataclasses.replace(params.register, force_promotion=True))
    udr_dir, out = root / "reports" / "udr-gated", root / "reports" / "register-gated" / "champion.json"
    kwargs = dict(root=root, udr_dir=udr_dir, processed_dir=gated["processed"], out_path=out)
    write_models_csv(udr_dir, [models_row(runs[6.0], "beta_vae", 6, 0, 0.70, 3)])
    assert register.run(params, **kwargs)["alias"] == "champion"
    # A table without the champion's run: its UDR is the one its version recorded, on the same data version.
    write_models_csv(udr_dir, [models_row(runs[2.0], "beta_vae", 2, 0, 0.40, 4)])
    refused = register.run(params, **kwargs)
    assert refused["alias"] == "challenger" and refused["version"] == 2 and not refused["gate"]["promote"]
    assert refused["gate"]["line"].startswith("vae-gated version 2 is @challenger, version 1 stays @champion")
    assert "0.400" in refused["gate"]["line"] and "below the champion's 0.700" in refused["gate"]["line"]
    assert "not in this UDR table: its UDR as registered" in refused["gate"]["line"]
    client = client_for(root)
    assert client.get_model_version_by_alias("vae-gated", "champion").version == 1
    assert client.get_model_version("vae-gated", "2").aliases == ["challenger"]
    pushed = register.run(forced, **kwargs)
    assert pushed["alias"] == "champion" and pushed["version"] == 2 and pushed["gate"]["forced"]
    version = client.get_model_version("vae-gated", "2")
    assert version.tags["forced_promotion"] == "true" and "champion" in version.aliases
    (run,) = client.search_runs(
        [client.get_run(runs[2.0]).info.experiment_id], "tags.forced_promotion = 'true' and tags.kind = 'register'"
    )
    assert run.data.tags["source_run_id"] == runs[2.0]
    # New photos: the champion's UDR was measured on other data, so it is not compared, and the worse-looking
    # model is promoted on its own bar.
    moved = root / "data" / "moved"
    shutil.copytree(gated["processed"], moved)
    meta = json.loads((moved / "meta.json").read_text())
    (moved / "meta.json").write_text(json.dumps(meta | {"data_version": "tiny-v2"}))
    write_models_csv(udr_dir, [models_row(runs[6.0], "beta_vae", 6, 0, 0.30, 3)])
    anew = register.run(params, **(kwargs | {"processed_dir": moved}))
    assert anew["alias"] == "champion" and anew["version"] == 1
    assert "trained on data version tiny-v1, the data is tiny-v2" in anew["gate"]["line"]


def test_the_gate_reads_only_the_labels_no_guidance_head_trained_on(tmp_path):
    """A labelled split with `guide` marks: the rule is fitted and the gate estimates on the other labels."""
    processed = write_labelled_discs(tmp_path / "processed")
    with np.load(processed / "labelled.npz") as data:
        arrays = {k: data[k] for k in data.files}
    arrays["guide"] = np.isin(np.arange(20), [0, 1, 2, 10, 11, 12])  # 3 good and 3 bad trained a head
    np.savez(processed / "labelled.npz", **arrays)
    meta = json.loads((processed / "meta.json").read_text())
    photos = classify.labelled_photos(processed, {"data_version": meta["data_version"], "image_size": SIZE}, meta)
    assert photos.holdout.tolist() == (~arrays["guide"]).tolist()
    assert photos.labels_used == "7 good + 7 bad (the labelled photos no guidance head trained on, of 20)"
    arrays.pop("guide")
    np.savez(processed / "labelled.npz", **arrays)
    photos = classify.labelled_photos(processed, {"data_version": meta["data_version"], "image_size": SIZE}, meta)
    assert photos.holdout.all() and photos.labels_used == "10 good + 10 bad (all labelled photos)"


@pytest.mark.slow
def test_the_vae_gate_for_the_job_refuses_a_model_at_chance_and_classify_then_serves_nothing(gated, monkeypatch):
    """register.select: job on labels at chance, with no champion yet: the VAE is registered @challenger only,
    and the classify stage says why it builds no rule."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root, runs = gated["root"], gated["runs"]
    params = tiny_params()
    params = dataclasses.replace(
        params, register=dataclasses.replace(params.register, model_name="vae-job", select="job")
    )
    udr_dir, out = root / "reports" / "udr-job", root / "reports" / "register-job"
    write_models_csv(udr_dir, [models_row(runs[6.0], "beta_vae", 6, 0, 0.70, 3)])
    summary = register.run(
        params, root=root, udr_dir=udr_dir, processed_dir=gated["chance"], out_path=out / "champion.json"
    )
    gate = summary["gate"]
    assert summary["alias"] == "challenger" and not gate["promote"] and gate["challenger"]["low"] <= 0.5
    assert gate["line"].startswith("vae-job version 1 is @challenger and nothing is served")
    assert gate["labels"] == "10 good + 10 bad (labelled split)"
    metrics = classify.run(params, root=root, processed_dir=gated["chance"], out_dir=out / "classify")
    assert "the register stage's gate refused version 1" in metrics["skipped"]
    assert "not above chance" in metrics["skipped"]
