"""One simulated photo (`tubervae.data.synth_render`): what each factor draws, visible after a 32 px downscale."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from conftest import tuber_factors
from tubervae.data import synth_factors, synth_render

CROP = (slice(96, 384), slice(176, 464))  # the pipeline's 288×288 centre crop (fraction 0.6)


def _render(**overrides) -> np.ndarray:
    return synth_render.render_tuber(tuber_factors(**overrides), np.random.default_rng(11))


def _tuber_mask(image: np.ndarray) -> np.ndarray:
    """Pixels brighter than the belt can be (the belt albedo is ~65, the tuber's > 120)."""
    mask = image.astype(float).mean(axis=2) > 110
    mask[:32] = mask[-32:] = False  # the steel rails at the frame's top and bottom
    return mask


def _downscale(image: np.ndarray, side: int) -> np.ndarray:
    crop = Image.fromarray(image[CROP])
    return np.asarray(crop.resize((side, side), Image.BILINEAR)).astype(float)


def test_tuber_stays_inside_the_centre_crop_at_the_extremes():
    for x in (-40.0, 40.0):
        for y in (-40.0, 40.0):
            image = _render(x=x, y=y, size=0.68, elongation=1.0, tone=0.0, brightness=1.2)
            mask = _tuber_mask(image)
            rows, cols = np.nonzero(mask)
            assert rows.size > 15_000  # the tuber is there (π·98² ≈ 30 000 px)
            assert rows.min() >= 96 and rows.max() < 384 and cols.min() >= 176 and cols.max() < 464


def test_position_size_and_brightness_act_as_their_factors_say():
    left, right = _tuber_mask(_render(x=-40.0)), _tuber_mask(_render(x=40.0))
    shift = np.nonzero(right)[1].mean() - np.nonzero(left)[1].mean()
    assert shift == pytest.approx(80.0, abs=6.0)  # shading shifts the thresholded centroid a little
    small, large = _tuber_mask(_render(size=0.40)).sum(), _tuber_mask(_render(size=0.68)).sum()
    assert large / small == pytest.approx((0.68 / 0.40) ** 2, rel=0.15)  # area scales with length²
    dim = _render(brightness=0.65)[CROP].astype(float).mean()
    bright = _render(brightness=1.2)[CROP].astype(float).mean()
    assert bright / dim == pytest.approx(1.2 / 0.65, rel=0.06)


def test_black_spots_darken_the_crop_and_survive_32px():
    plain, spotted = _render(), _render(spot_area=5 * math.pi * 18.0**2)  # 5 spots of radius 18 px
    diff = spotted[CROP].astype(float) - plain[CROP].astype(float)
    # 5 spots of ~18 px cover ~5 100 px² (3.5 % of the crop), each darkening by ~100 levels.
    assert np.abs(diff).mean() > 1.5
    assert diff.mean() < -1.5
    small_diff = _downscale(spotted, 32) - _downscale(plain, 32)
    assert small_diff.min() < -40  # at least one 32×32 pixel is much darker


def test_greening_tints_the_tuber_green_and_survives_32px():
    plain, green = _render(), _render(greening=0.4)
    changed = np.abs(green.astype(float) - plain.astype(float)).sum(axis=2) > 30
    assert changed[CROP].mean() > 0.02
    g_minus_r = lambda img: img[..., 1].astype(float) - img[..., 0].astype(float)
    assert (g_minus_r(green) - g_minus_r(plain))[changed].mean() > 30
    small = _downscale(green, 32) - _downscale(plain, 32)
    assert (small[..., 1] - small[..., 0]).max() > 30


def test_rot_darkens_a_large_patch():
    plain, rotten = _render(), _render(rot=0.3)
    diff = rotten.astype(float).mean(axis=2) - plain.astype(float).mean(axis=2)
    # 30 % of a tuber of π·86·66 ≈ 17 800 px² is ~5 300 px², darkened by ~60 levels.
    assert (diff[CROP] < -30).sum() > 2500


def test_render_accepts_a_factors_csv_row_with_its_derived_columns():
    row = synth_factors.sample_factors(3, np.random.default_rng(4)).iloc[0].to_dict() | {"spot_area": 3000.0}
    row["spot_count"], row["spot_size"] = synth_factors.spot_layout(3000.0)
    without = {k: v for k, v in row.items() if k not in synth_factors.DERIVED_FACTORS}
    image = synth_render.render_tuber(row, np.random.default_rng(1))
    assert np.array_equal(image, synth_render.render_tuber(without, np.random.default_rng(1)))


def test_render_consumes_rng_but_is_reproducible():
    a = synth_render.render_tuber(tuber_factors(), np.random.default_rng(3))
    b = synth_render.render_tuber(tuber_factors(), np.random.default_rng(3))
    c = synth_render.render_tuber(tuber_factors(), np.random.default_rng(4))
    assert a.dtype == np.uint8 and a.shape == (480, 640, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_render_rejects_bad_factors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="missing.*'rot'"):
        synth_render.render_tuber({k: v for k, v in tuber_factors().items() if k != "rot"}, rng)
    with pytest.raises(ValueError, match="'size'.*0.9"):
        synth_render.render_tuber(tuber_factors(size=0.9), rng)
    with pytest.raises(ValueError, match="spot_count and spot_size are derived"):
        synth_render.render_tuber(tuber_factors(spot_count=4), rng)
    with pytest.raises(ValueError, match="spot_count and spot_size are derived"):
        synth_render.render_tuber(tuber_factors(spot_area=2000.0, spot_count=3, spot_size=12.0), rng)
    with pytest.raises(ValueError, match="'spot_area'.*500"):
        synth_render.render_tuber(tuber_factors(spot_area=500.0), rng)
    with pytest.raises(ValueError, match="'greening'"):
        synth_render.render_tuber(tuber_factors(greening=0.9), rng)
    with pytest.raises(TypeError, match="rng"):
        synth_render.render_tuber(tuber_factors(), 0)
