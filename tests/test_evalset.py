"""The dedicated evaluation set: simulated apart from the training photos, preprocessed like them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tubervae.config import parse_params
from tubervae.data import synth_dataset, synth_factors, synth_render
from tubervae.data.images import load_model_input
from tubervae.data.processed import load_evalset
from tubervae.stages import evalset


def params(**evaluate):
    return parse_params(
        {
            "data": {"n_images": 30, "workers": 1},
            "preprocess": {"image_size": 16, "crop_fraction": 0.6, "probe_size": 10},
            "evaluate": {"set_size": 12, "set_seed": 3, **evaluate},
        }
    )


def test_evalset_holds_preprocessed_photos_with_their_factors(tmp_path):
    meta = evalset.run(params(), out_dir=tmp_path / "evalset")
    data = load_evalset(tmp_path / "evalset")
    assert meta["n"] == 12 and data["images"].shape == (12, 16, 16, 3) and data["images"].dtype == np.uint8
    assert list(data["factor_names"]) == list(synth_factors.FACTOR_NAMES)
    assert list(data["scored_names"]) == list(synth_factors.SCORED_FACTORS)
    assert meta["good"] + meta["bad"] == 12 and int(data["labels"].sum()) == meta["bad"]

    # photo 4 is the simulator's photo from the evaluation streams, through JPEG, decode, crop and resize
    factors = dict(zip(synth_factors.FACTOR_NAMES, data["factors"][4].astype(float)))
    photo = synth_render.render_tuber(factors, np.random.default_rng([3, 3, 4]))
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    buffer.seek(0)
    expected = load_model_input(buffer, crop_fraction=0.6, image_size=16)
    np.testing.assert_array_equal(data["images"][4], expected)
    bad = any(factors[name] > 0 for name in synth_factors.DEFECT_COLUMNS.values())
    assert data["labels"][4] == int(bad)


def test_evalset_never_repeats_the_training_photos(tmp_path):
    """Same seed for both: the evaluation set draws its factors from streams of its own."""
    table = synth_dataset.generate(tmp_path / "raw", 20, seed=3, workers=1, progress=False)
    evalset.run(params(set_size=20), out_dir=tmp_path / "evalset")
    held_out = load_evalset(tmp_path / "evalset")["factors"]
    train = table[list(synth_factors.FACTOR_NAMES)].to_numpy(np.float32)
    assert not (held_out[:, None, :] == train[None, :, :]).all(axis=2).any()


def test_evalset_is_reproducible_and_worker_count_free(tmp_path):
    evalset.run(params(), out_dir=tmp_path / "a")
    one = load_evalset(tmp_path / "a")
    other = parse_params({**_raw(params()), "data": {"n_images": 30, "workers": 2}})
    evalset.run(other, out_dir=tmp_path / "b")
    two = load_evalset(tmp_path / "b")
    for key in ("images", "factors", "labels"):
        np.testing.assert_array_equal(one[key], two[key])


def test_real_photo_folder_records_an_empty_set(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    real = parse_params({"data": {"source": str(folder)}})
    meta = evalset.run(real, out_dir=tmp_path / "evalset")
    assert meta["n"] == 0 and "folder" in meta["reason"]
    assert load_evalset(tmp_path / "evalset") is None
    with pytest.raises(FileNotFoundError, match="evalset stage"):
        load_evalset(tmp_path / "missing")


def _raw(p) -> dict:
    import dataclasses

    return {f.name: dataclasses.asdict(getattr(p, f.name)) for f in dataclasses.fields(p)}
