"""MIG on the few photos with measured factors (`tubervae.runs.measured`, `search.objective: measured_mig`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_processed
from tubervae.runs.measured import MIN_MEASURED, measured_mig, measured_photos


def split(n: int, first: float, measured: np.ndarray | None = None):
    """`n` photos whose one factor counts up from `first` (the photo's pixel value), NaN where not measured."""
    values = first + np.arange(n, dtype=np.float32)
    images = np.repeat(values.astype(np.uint8)[:, None, None, None], 4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    factors = values[:, None].copy()
    if measured is not None:
        factors[~measured] = np.nan
    return images, np.zeros(n, np.int64), factors


def test_measured_photos_take_the_labelled_split_first_then_test_then_train_in_file_order(tmp_path):
    some = np.array([True, False] * 15)  # 15 of the 30 labelled photos measured
    write_processed(
        tmp_path,
        {"labelled": split(30, 0, some), "test": split(10, 100), "train": split(40, 150), "udr_probe": split(4, 200)},
        ["f"],
    )
    photos = measured_photos(tmp_path, limit=30)
    assert photos["sources"] == {"labelled": 15, "test": 10, "train": 5}
    expected = [*range(0, 30, 2), *range(100, 110), *range(150, 155)]
    assert photos["factors"][:, 0].tolist() == expected
    assert photos["images"][:, 0, 0, 0].tolist() == expected  # each photo with its own factors
    assert photos["factor_names"] == ["f"]
    assert measured_photos(tmp_path, limit=0)["sources"] == {"labelled": 15, "test": 10, "train": 40}
    with pytest.raises(ValueError, match="measured_photos must be 0"):
        measured_photos(tmp_path, limit=-1)


def test_too_few_measured_photos_are_refused_with_the_way_out(tmp_path):
    few = np.zeros(30, bool)
    few[: MIN_MEASURED - 1] = True
    nothing = np.zeros(30, bool)
    splits = {"labelled": split(30, 0, few), "test": split(30, 0, nothing), "train": split(30, 0, nothing)}
    write_processed(tmp_path, {**splits, "udr_probe": split(4, 0)}, ["f"])
    with pytest.raises(ValueError, match=rf"but {MIN_MEASURED - 1} photo\(s\) .* have measured factors .* factors.csv"):
        measured_photos(tmp_path)
    bare = tmp_path / "bare"  # photos without any factors at all
    write_processed(bare, {name: split(30, 0)[:2] for name in ("labelled", "test", "train", "udr_probe")})
    with pytest.raises(ValueError, match=r"but 0 photo\(s\) .* search.objective: udr, elbo or job"):
        measured_photos(bare)


class PixelEncoder(torch.nn.Module):
    """An encoder whose first mean is the photo's first pixel and whose second is constant."""

    latent_dim = 2

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def encode(self, x):
        first = x[:, 0, 0, 0]
        return torch.stack([first, torch.zeros_like(first)], dim=1), torch.zeros(len(x), 2)


def test_measured_mig_of_a_code_that_copies_the_factor_is_one_and_of_a_constant_code_is_zero():
    images, _, factors = split(40, 0)
    photos = {"images": images, "factors": factors.astype(np.float64)}
    # One component is a monotone copy of the factor (the same 20 equal-width bins), the other constant:
    # MIG = (I(z0; f) − I(z1; f)) / H(f) = (H(f) − 0) / H(f) = 1.
    assert measured_mig(PixelEncoder(), photos) == pytest.approx(1.0)
    shuffled = {"images": images, "factors": np.zeros_like(photos["factors"]) + 5.0}
    assert np.isnan(measured_mig(PixelEncoder(), shuffled))  # a factor that never varies has no entropy
