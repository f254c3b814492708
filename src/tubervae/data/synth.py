"""Simulated tuber photos with known factors of variation.

No real potato photos are reachable, so the project's default raw data is drawn
here: 640×480 RGB JPEG photos of one tuber on a conveyor belt, like the thesis's
data, plus the ground truth a real data set lacks (`factors.csv`), which lets the
supervised disentanglement metrics be checked against UDR.

Columns of `factors.csv` (order `FACTOR_NAMES`):

| name         | meaning                                                    | range              | scored |
|--------------|------------------------------------------------------------|--------------------|--------|
| `x`, `y`     | tuber centre minus image centre, px                        | [-40, 40]          | yes    |
| `size`       | tuber length (major axis) / side of the centre crop        | [0.40, 0.68]       | yes    |
| `elongation` | length / width                                             | [1.0, 1.6]         | yes    |
| `rotation`   | angle of the major axis, degrees (image y axis points down)| [0, 180)           | no     |
| `tone`       | skin colour, 0 = pale yellow, 1 = russet brown             | [0, 1]             | yes    |
| `brightness` | scene illumination multiplier                              | [0.65, 1.20]       | yes    |
| `spot_area`  | nominal total area of the black spots, px² (0 = none)      | 0 or [950, 7500]   | yes    |
| `greening`   | nominal share of the tuber's area under a green patch      | 0 or [0.25, 0.55]  | yes    |
| `rot`        | nominal share of the tuber's area under a brown sunken rot | 0 or [0.15, 0.40]  | yes    |
| `spot_count` | number of black spots, a function of `spot_area`           | 0 or {3, …, 6}     | no     |
| `spot_size`  | black-spot radius, px (each spot ±15 %), from `spot_area`  | 0 or [10, 20]      | no     |

What is independent of what, exactly:

* Every column of `SAMPLED_FACTORS` (all but `spot_count` and `spot_size`) is
  drawn independently of every other one: each nuisance factor is uniform on its
  range; each defect type (spots, greening, rot) has its own presence draw,
  Bernoulli(q), and its own amount draw, uniform on its range, and its column is
  the amount when present, else 0. No draw depends on another, so the scored
  factors (`SCORED_FACTORS`) are mutually independent, and so are the three
  presences. With q = 1 - good_fraction^(1/3), P(no defect) = (1 - q)^3 is
  exactly the configured good fraction.
* The label is a function of the three presences only: 'bad' when any defect is
  present. It therefore depends on `spot_area`, `greening` and `rot` (through
  their zeros) and on nothing else; 'bad without black spots' (the thesis's main
  failure case) is common.
* `spot_count` and `spot_size` are deterministic functions of `spot_area`
  (`spot_layout`): the count steps 3 → 6 over the four quarters of the area
  range and the radius is sqrt(area / (π · count)). They are descriptive columns,
  not scored: they share the zero of `spot_area` (and each other's), so a single
  "spots" component would serve three factors, which FactorVAE's vote and DCI
  would penalise though the model is right.
* `rotation` is drawn independently too, and rendered, but not scored: it is
  periodic (0° and 179° look alike yet bin apart) and only identifiable through
  the outline's elongation, invisible on a round tuber (elongation ≈ 1). Any
  identifiable stand-in, e.g. (elongation - 1)·cos 2·rotation, would be a
  function of `elongation` and break the independence of the scored set.
* Outline wobble, texture offsets, belt position and where each defect sits are
  per-photo randomness (from the image's own generator), not factors.

How the metrics see the zero-inflated defect factors (`spot_area`, `greening`,
`rot`): they are scored as the amount, 0 when absent, one factor per defect.
Discretised into equal-width bins over [0, max] (MIG's 20 bins), 0 falls alone
into the first bin and the present amounts spread over the upper 11-18 bins, so a
factor's entropy is its presence (about 0.68 nats at q ≈ 0.43) plus its amount
given presence. FactorVAE's 10 quantile bins collapse the ~57 % zeros into one
bin, which also takes the present amounts below the 60 % quantile (about 3 % of
rows), so holding the factor holds its presence all but fixed. Presence alone is
not a column: it is the zero of the amount.

Everything stays inside the pipeline's centre crop (288×288 around the image
centre for crop_fraction 0.6), and the tuber fills most of it, as in the thesis's
photos: |x| + length/2 · 1.06 ≤ 40 + 103.8 < 144. Defects are sized to survive a
32×32 downscale of that crop (9 px of photo per pixel): the smallest spot layout
is 3 spots of radius 10 px.

Images are reproducible: factors come from `default_rng([seed, 0])`, image i is
drawn from `default_rng([seed, 1, i])`, so the bytes do not depend on the number
of workers.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import gaussian_filter
from tqdm import tqdm

from tubervae.checks import check_int
from tubervae.data.images import load_model_input
from tubervae.io import atomic_path, write_csv

WIDTH, HEIGHT = 640, 480
CROP_FRACTION = 0.6
CROP_SIDE = CROP_FRACTION * HEIGHT  # 288 px: the square the pipeline keeps
GOOD_FRACTION = 1554 / 8498  # the thesis's training set: 1554 good, 6944 bad

# Drawn independently of each other by `sample_factors`; what `render_tuber` needs.
SAMPLED_FACTORS = (
    "x",
    "y",
    "size",
    "elongation",
    "rotation",
    "tone",
    "brightness",
    "spot_area",
    "greening",
    "rot",
)
# Descriptive columns, deterministic functions of `spot_area` (`spot_layout`).
DERIVED_FACTORS = ("spot_count", "spot_size")
FACTOR_NAMES = SAMPLED_FACTORS + DERIVED_FACTORS  # every column of factors.csv, in order
# The mutually independent, identifiable factors the supervised metrics score. Left out:
# rotation (periodic, and unidentifiable on a round tuber) and the derived spot_count,
# spot_size (they share spot_area's zero), see the module docstring.
SCORED_FACTORS = tuple(name for name in SAMPLED_FACTORS if name != "rotation")
NUISANCE_RANGES = {
    "x": (-40.0, 40.0),
    "y": (-40.0, 40.0),
    "size": (0.40, 0.68),
    "elongation": (1.0, 1.6),
    "rotation": (0.0, 180.0),
    "tone": (0.0, 1.0),
    "brightness": (0.65, 1.20),
}
# Amount ranges when a defect is present; an absent defect has amount 0.
DEFECT_RANGES = {
    "spot_area": (950.0, 7500.0),  # 3 spots of radius 10 px … 6 of radius 20 px
    "greening": (0.25, 0.55),
    "rot": (0.15, 0.40),
}
SPOT_COUNTS = (3, 6)  # fewest and most black spots, stepped through by spot_area
DEFECT_TYPES = ("spots", "greening", "rot")  # the independently present defect types
DEFECT_COLUMNS = {"spots": "spot_area", "greening": "greening", "rot": "rot"}  # type → its scored amount

# Albedo colours (RGB, 0–255) before lighting.
_SKIN_PALE = np.array([214.0, 188.0, 128.0], dtype=np.float32)
_SKIN_RUSSET = np.array([158.0, 108.0, 64.0], dtype=np.float32)
_GREEN = np.array([104.0, 132.0, 52.0], dtype=np.float32)
_ROT = np.array([88.0, 54.0, 30.0], dtype=np.float32)
_SPOT = np.array([24.0, 20.0, 17.0], dtype=np.float32)
_BELT = np.array([58.0, 63.0, 70.0], dtype=np.float32)
_RAIL = np.array([150.0, 152.0, 155.0], dtype=np.float32)

_LIGHT = np.array([-0.42, -0.52, 0.74], dtype=np.float32)
_LIGHT /= np.linalg.norm(_LIGHT)
_HALF = _LIGHT + np.array([0.0, 0.0, 1.0], dtype=np.float32)
_HALF /= np.linalg.norm(_HALF)
_AMBIENT, _DIFFUSE, _SPECULAR = 0.28, 0.78, 0.10
_THICKNESS = 0.75  # tuber depth / width: how flat the shading ellipsoid is
_OUTLINE_MAX = 0.06  # the outline wobbles by at most ±6 % of the radius
_SHADOW_SHIFT = (12, 9)  # (down, right) px: the light comes from the upper left
_SHADOW_REACH = 1.12  # the shadow fades out at this many tuber radii (before the shift)
_MARGIN = 16  # px beyond the shadow's reach kept in the bounding box

_TABLE = 720  # angular resolution of the outline look-up tables
_BELT_PAD = 256  # the belt texture is wider than the frame: it moves between photos
_BELT_FRAMES = 8
_NOISE_PAD = 64
_SKIN_TEX = 640


# --------------------------------------------------------------------- sampling


def _check_fraction(good_fraction: float) -> None:
    if not (isinstance(good_fraction, (int, float)) and 0.0 < good_fraction < 1.0):
        raise ValueError(f"good_fraction must be a number in (0, 1), got {good_fraction!r}")


def defect_probability(good_fraction: float = GOOD_FRACTION) -> float:
    """Presence probability q of each defect type, so that P(no defect) = good_fraction."""
    _check_fraction(good_fraction)
    return 1.0 - good_fraction ** (1.0 / len(DEFECT_TYPES))


def spot_layout(spot_area):
    """Black-spot count and nominal radius (px) for a total spot area (px²): (0, 0.0) when 0.

    The count steps from `SPOT_COUNTS[0]` to `SPOT_COUNTS[1]` over equal parts of
    the area range and the radius makes count · π · radius² the area, so both are
    fixed by the one scored amount (radius 10–20 px over the range). Works on
    arrays (returns int64 and float64 arrays) and on scalars (returns int, float).
    """
    lo, hi = DEFECT_RANGES["spot_area"]
    first, last = SPOT_COUNTS
    levels = last - first + 1
    if np.ndim(spot_area) == 0:  # one photo: plain floats, the same arithmetic as below
        area = float(spot_area)
        if not area > 0:
            return 0, 0.0
        count = first + min(max(math.floor(levels * (area - lo) / (hi - lo)), 0), levels - 1)
        return count, math.sqrt(area / (math.pi * count))
    area = np.asarray(spot_area, dtype=np.float64)
    step = np.clip(np.floor(levels * (area - lo) / (hi - lo)), 0, levels - 1)
    count = np.where(area > 0, first + step, 0).astype(np.int64)
    radius = np.where(count > 0, np.sqrt(area / (np.pi * np.maximum(count, 1))), 0.0)
    return count, radius


# The simulator's variants (`data.simulator`): the factors each holds at a constant. "geometry" has no
# defects and one skin tone, so only position, size, elongation, rotation and brightness vary: the
# regime where the models disentangle within a CPU's budget (docs/results/disentanglement-curve.md).
SIMULATORS: dict[str, dict[str, float]] = {
    "full": {},
    "geometry": {"tone": 0.5, "spot_area": 0.0, "greening": 0.0, "rot": 0.0},
}


def _check_fixed(fixed: Mapping[str, float] | None) -> dict[str, float]:
    """`fixed` as {sampled factor: float}, each value one the factor can take (a defect: 0 or its range)."""
    if fixed is None:
        return {}
    if not isinstance(fixed, Mapping):
        raise TypeError(f"fixed must be a mapping of factor names to values, got {type(fixed).__name__}")
    unknown = [k for k in fixed if k not in SAMPLED_FACTORS]
    if unknown:
        raise ValueError(f"fixed names unknown factors {unknown}; it may fix any of {list(SAMPLED_FACTORS)}")
    values = {}
    for name, value in fixed.items():
        v = float(value)
        lo, hi = NUISANCE_RANGES.get(name) or DEFECT_RANGES[name]
        if not (math.isfinite(v) and (lo <= v <= hi or (name in DEFECT_RANGES and v == 0))):
            allowed = f"[{lo}, {hi}]" if name in NUISANCE_RANGES else f"0 (absent) or [{lo}, {hi}]"
            raise ValueError(f"fixed factor {name!r} must be {allowed}, got {value!r}")
        values[name] = v
    return values


def sample_factors(
    n: int,
    rng: np.random.Generator,
    good_fraction: float = GOOD_FRACTION,
    *,
    fixed: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Draw `n` factor rows (columns `FACTOR_NAMES`), see the module docstring.

    Every sampled column is drawn independently of the others: uniform nuisances,
    then one Bernoulli(q) presence per defect type, then one uniform amount per
    defect type (kept where present, else 0). The derived spot columns follow.
    `fixed` ({sampled factor: value}) holds those columns at a constant, e.g.
    ``{"tone": 0.5, "spot_area": 0, "greening": 0, "rot": 0}`` for a simulator with
    fewer factors; every draw is still made, so the other columns are unchanged.
    """
    n = check_int("n", n, 1)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    constants = _check_fixed(fixed)
    q = defect_probability(good_fraction)
    cols: dict[str, np.ndarray] = {}
    for name, (lo, hi) in NUISANCE_RANGES.items():
        cols[name] = rng.uniform(lo, hi, n)
    presence = rng.random((len(DEFECT_TYPES), n)) < q
    for present, defect in zip(presence, DEFECT_TYPES):
        name = DEFECT_COLUMNS[defect]
        lo, hi = DEFECT_RANGES[name]
        cols[name] = np.where(present, rng.uniform(lo, hi, n), 0.0)
    for name, value in constants.items():
        cols[name] = np.full(n, value)
    cols["spot_count"], cols["spot_size"] = spot_layout(cols["spot_area"])
    return pd.DataFrame(cols, columns=list(FACTOR_NAMES))


def labels_from_factors(factors: pd.DataFrame) -> pd.Series:
    """'bad' when any defect is present (its amount is > 0), else 'good' (the thesis's two classes)."""
    bad = np.zeros(len(factors), dtype=bool)
    for name in DEFECT_COLUMNS.values():
        bad |= factors[name].to_numpy() > 0
    return pd.Series(np.where(bad, "bad", "good"), index=factors.index, name="label")


def defect_names(row: Mapping[str, float]) -> list[str]:
    """The defect types present in one factor row, e.g. ['spots', 'rot']."""
    return [defect for defect in DEFECT_TYPES if row[DEFECT_COLUMNS[defect]] > 0]


def _validate_factors(factors: Mapping[str, float]) -> dict[str, float]:
    """The sampled factors as floats, checked; derived spot columns, if given, must match spot_area."""
    missing = [k for k in SAMPLED_FACTORS if k not in factors]
    if missing:
        raise ValueError(f"factors is missing {missing}; required keys are {list(SAMPLED_FACTORS)}")
    values = {k: float(factors[k]) for k in SAMPLED_FACTORS}
    for name, v in values.items():
        if not math.isfinite(v):
            raise ValueError(f"factor {name!r} must be finite, got {v!r}")
    for name, (lo, hi) in NUISANCE_RANGES.items():
        if not lo <= values[name] <= hi:
            raise ValueError(f"factor {name!r} must lie in [{lo}, {hi}], got {values[name]!r}")
    for name, (lo, hi) in DEFECT_RANGES.items():
        v = values[name]
        if not (v == 0 or lo <= v <= hi):
            raise ValueError(f"factor {name!r} must be 0 (absent) or in [{lo}, {hi}], got {v!r}")
    count, radius = spot_layout(values["spot_area"])
    given = {k: float(factors[k]) for k in DERIVED_FACTORS if k in factors}
    if given and not (
        given.get("spot_count", count) == count and math.isclose(given.get("spot_size", radius), radius, rel_tol=1e-6)
    ):
        raise ValueError(
            f"spot_count and spot_size are derived from spot_area={values['spot_area']!r} "
            f"(count {count}, radius {radius!r}); got {given}"
        )
    return values


# ------------------------------------------------------------ precomputed layers
# Deterministic constants (fixed seeds), built once per process: they carry the
# expensive smooth noise, so each photo only shifts and scales them.


@lru_cache(maxsize=1)
def _belt_texture() -> np.ndarray:
    """Conveyor albedo (H, W + pad, 3): woven noise, transverse ridges, steel rails."""
    rng = np.random.default_rng(20_201)
    h, w = HEIGHT, WIDTH + _BELT_PAD
    fine = gaussian_filter(rng.standard_normal((h, w)), 1.0)
    coarse = gaussian_filter(rng.standard_normal((h, w)), 14.0)
    fine /= fine.std()
    coarse /= coarse.std()
    xs = np.arange(w)
    ridges = 0.5 + 0.5 * np.cos(2 * np.pi * xs / 22.0)
    shade = 1.0 + 0.05 * fine + 0.06 * coarse - 0.07 * ridges[None, :] ** 4
    tex = shade[..., None] * _BELT
    ys = np.arange(h)[:, None]
    for top, bottom in ((0, 30), (h - 30, h)):  # rails, outside the centre crop
        band = (ys >= top) & (ys < bottom)
        tex = np.where(band[..., None], _RAIL * (0.93 + 0.03 * fine[..., None]), tex)
    for edge in (30, h - 31):  # the dark gap between rail and belt
        tex[edge - 1 : edge + 2] *= 0.45
    return tex.astype(np.float32)


@lru_cache(maxsize=1)
def _light_field() -> np.ndarray:
    """Illumination (H, W): brighter towards the upper left, vignetted corners."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    u = (xs - WIDTH / 2) / (WIDTH / 2)
    v = (ys - HEIGHT / 2) / (HEIGHT / 2)
    field = (1.0 - 0.10 * u - 0.08 * v) * (1.0 - 0.18 * (u**2 + v**2) / 2)
    return field.astype(np.float32)


@lru_cache(maxsize=1)
def _lit_belts() -> np.ndarray:
    """`_BELT_FRAMES` lit belt photos (k, H, W, 3): the belt stopped at different places.

    Lighting them once here leaves one multiply (brightness) per photo.
    """
    belt, light = _belt_texture(), _light_field()[..., None]
    shifts = np.linspace(0, _BELT_PAD, _BELT_FRAMES).astype(int)
    return np.stack([belt[:, s : s + WIDTH] * light for s in shifts]).astype(np.float32)


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Sensor noise (σ ≈ 2.5 grey levels) plus the 0.5 that makes truncation round."""
    rng = np.random.default_rng(20_202)
    noise = 2.5 * rng.standard_normal((HEIGHT + _NOISE_PAD, WIDTH + _NOISE_PAD, 3)) + 0.5
    return noise.astype(np.float32)


@lru_cache(maxsize=1)
def _skin_texture() -> np.ndarray:
    """Skin albedo multiplier around 1: mottling, net-like russeting and lenticels."""
    rng = np.random.default_rng(20_203)
    s = _SKIN_TEX
    mottle = gaussian_filter(rng.standard_normal((s, s)), 6.0)
    grain = gaussian_filter(rng.standard_normal((s, s)), 1.2)
    lenticels = gaussian_filter((rng.random((s, s)) < 0.0035).astype(np.float64), 1.1)
    mottle /= mottle.std()
    grain /= grain.std()
    lenticels /= lenticels.max()
    tex = 1.0 + 0.06 * mottle + 0.05 * grain - 0.35 * np.clip(3 * lenticels, 0, 1)
    return tex.astype(np.float32)


@lru_cache(maxsize=1)
def _table_angles() -> np.ndarray:
    return np.linspace(-np.pi, np.pi, _TABLE, endpoint=False)


def warm_caches() -> None:
    """Build the simulator's lookup tables (lit belts, light field, noise bank, skin texture) now.

    The first photo of a process would otherwise pay for them; `generate` calls this before it
    forks its workers, so that they inherit the tables, and a benchmark calls it to keep the
    one-off cost out of its timing.
    """
    _lit_belts(), _light_field(), _noise_bank(), _skin_texture(), _table_angles()


# -------------------------------------------------------------------- rendering


def _wobble_table(rng: np.random.Generator, amplitude: float, orders=(2, 3, 4, 5)) -> np.ndarray:
    """Radius multiplier R(φ) on `_TABLE` angles: low-frequency radial perturbation."""
    phi = _table_angles()
    weights = rng.uniform(0.4, 1.0, len(orders)) / np.arange(1, len(orders) + 1)
    weights *= amplitude / weights.sum()
    phases = rng.uniform(0, 2 * np.pi, len(orders))
    r = np.ones_like(phi)
    for k, wgt, ph in zip(orders, weights, phases):
        r += wgt * np.cos(k * phi + ph)
    return r.astype(np.float32)


def _lookup(table: np.ndarray, angle: np.ndarray) -> np.ndarray:
    idx = ((angle + np.pi) * (_TABLE / (2 * np.pi))).astype(np.intp)
    np.clip(idx, 0, _TABLE - 1, out=idx)
    return table[idx]


def _blob(dx: np.ndarray, dy: np.ndarray, radius: float, wobble: np.ndarray, soft: float) -> np.ndarray:
    """Mask of an irregular disc, 1 inside, falling to 0 over `soft` px at the edge."""
    dist = np.sqrt(dx * dx + dy * dy)
    edge = radius * _lookup(wobble, np.arctan2(dy, dx))
    return np.clip((edge - dist) / soft + 0.5, 0.0, 1.0)


def _local_to_image(u: float, v: float, cos_t: float, sin_t: float) -> tuple[float, float]:
    return u * cos_t - v * sin_t, u * sin_t + v * cos_t


def _patch_centre(rng, a, b, cos_t, sin_t, reach=(0.25, 0.55)) -> tuple[float, float]:
    """A patch centre inside the tuber, off-centre (defects sit towards an end or side)."""
    ang = rng.uniform(0, 2 * np.pi)
    rad = rng.uniform(*reach)
    return _local_to_image(rad * a * math.cos(ang), rad * b * math.sin(ang), cos_t, sin_t)


def _spot_centres(rng, count, radius, a, b, cos_t, sin_t) -> list[tuple[float, float]]:
    """Spot centres on the tuber's face, as far apart as a few tries allow."""
    centres: list[tuple[float, float]] = []
    limit = max(0.2, 0.8 - 0.5 * radius / b)  # keep most of each spot on the tuber
    for _ in range(count):
        best, best_gap = (0.0, 0.0), -1.0
        for _attempt in range(24):
            ang = rng.uniform(0, 2 * np.pi)
            rad = limit * math.sqrt(rng.uniform())
            c = _local_to_image(rad * a * math.cos(ang), rad * b * math.sin(ang), cos_t, sin_t)
            gap = min((math.hypot(c[0] - o[0], c[1] - o[1]) for o in centres), default=math.inf)
            if gap > best_gap:
                best, best_gap = c, gap
            if gap > 2.3 * radius:
                break
        centres.append(best)
    return centres


def render_tuber(factors: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """Draw one 640×480 photo (uint8, (480, 640, 3)) of a tuber with the given factors.

    `rng` supplies what the factors leave open (outline wobble, texture offsets,
    where the defects sit), so one factor row can be drawn many ways.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    f = _validate_factors(factors)
    belts, light, noise, skin = _lit_belts(), _light_field(), _noise_bank(), _skin_texture()

    # Draw every random number in a fixed order, so each layer is reproducible.
    belt_frame = int(rng.integers(0, _BELT_FRAMES))
    noise_dy, noise_dx = (int(v) for v in rng.integers(0, _NOISE_PAD + 1, 2))
    outline = _wobble_table(rng, _OUTLINE_MAX)
    a = 0.5 * f["size"] * CROP_SIDE  # semi-major axis, px
    b = a / f["elongation"]
    theta = math.radians(f["rotation"])
    cos_t, sin_t = math.cos(theta), math.sin(theta)
    cx, cy = WIDTH / 2 + f["x"], HEIGHT / 2 + f["y"]

    # The tuber, its defects and its shadow are drawn on a bounding box only,
    # channel-first so every per-pixel operation runs over long contiguous rows.
    half = int(math.ceil(a * (1 + _OUTLINE_MAX) * _SHADOW_REACH)) + max(_SHADOW_SHIFT) + _MARGIN
    x0, x1 = max(0, int(cx) - half), min(WIDTH, int(cx) + half + 1)
    y0, y1 = max(0, int(cy) - half), min(HEIGHT, int(cy) + half + 1)
    bh, bw = y1 - y0, x1 - x0
    tex_y, tex_x = (int(v) for v in rng.integers(0, _SKIN_TEX - 2 * half - 2, 2))

    # Unit-disc coordinates of the tuber (d < 1 inside).
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(cx))[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(cy))[:, None]
    p = dx * np.float32(cos_t / a) + dy * np.float32(sin_t / a)
    q = dy * np.float32(cos_t / b) - dx * np.float32(sin_t / b)
    wob = _lookup(outline, np.arctan2(q, p))
    X, Y = p / wob, q / wob
    d2 = X * X + Y * Y
    d = np.sqrt(d2)
    dist_px = np.sqrt(dx * dx + dy * dy)
    alpha = np.clip(0.5 + dist_px * (1.0 - d) / np.maximum(d, 1e-3), 0.0, 1.0)

    # Lambertian shading of a flattened ellipsoid, darker towards the rim.
    Z = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0))
    nxl, nyl, nz = X * np.float32(1 / a), Y * np.float32(1 / b), Z * np.float32(1 / (_THICKNESS * b))
    nx = nxl * np.float32(cos_t) - nyl * np.float32(sin_t)
    ny = nxl * np.float32(sin_t) + nyl * np.float32(cos_t)
    inv_norm = 1.0 / (np.sqrt(nx * nx + ny * ny + nz * nz) + 1e-12)
    lam = np.clip((nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]) * inv_norm, 0.0, 1.0)
    spec = np.clip((nx * _HALF[0] + ny * _HALF[1] + nz * _HALF[2]) * inv_norm, 0.0, 1.0)
    for _ in range(5):
        spec *= spec  # ^32: a faint, tight highlight on the waxy skin
    shade = (_AMBIENT + _DIFFUSE * lam + _SPECULAR * spec) * (0.78 + 0.22 * np.sqrt(Z))

    # Skin albedo, (3, bh, bw).
    skin_colour = _SKIN_PALE + np.float32(f["tone"]) * (_SKIN_RUSSET - _SKIN_PALE)
    tex = skin[tex_y : tex_y + bh, tex_x : tex_x + bw]
    albedo = skin_colour[:, None, None] * tex

    if f["greening"] > 0:
        gx, gy = _patch_centre(rng, a, b, cos_t, sin_t)
        radius = math.sqrt(f["greening"] * a * b)
        mask = _blob(dx - gx, dy - gy, radius, _wobble_table(rng, 0.18), 0.35 * radius)
        albedo += (_GREEN[:, None, None] * tex - albedo) * (0.80 * mask)

    if f["rot"] > 0:
        rx, ry = _patch_centre(rng, a, b, cos_t, sin_t)
        radius = math.sqrt(f["rot"] * a * b)
        ox, oy = (int(v) for v in rng.integers(0, _SKIN_TEX - 2 * half - 2, 2))
        rot_tex = skin[oy : oy + bh, ox : ox + bw]
        mask = _blob(dx - rx, dy - ry, radius, _wobble_table(rng, 0.22), 0.12 * radius)
        mottled = _ROT[:, None, None] * (0.55 + 0.45 * rot_tex * rot_tex)
        albedo += (mottled - albedo) * (0.92 * mask)
        # Sunken: the patch floor is shaded and its rim casts a dark ring.
        ring = mask * (1.0 - mask) * 4.0
        shade *= 1.0 - 0.22 * mask - 0.30 * ring

    count, spot_r = spot_layout(f["spot_area"])
    if count:
        radii = spot_r * rng.uniform(0.85, 1.15, count)
        for (sx, sy), r in zip(_spot_centres(rng, count, spot_r, a, b, cos_t, sin_t), radii):
            # Each spot is drawn only on its own small box.
            ext = r * 1.25 + 2
            i0 = max(0, int(cy + sy - ext) - y0)
            i1 = min(bh, int(cy + sy + ext) + 2 - y0)
            j0 = max(0, int(cx + sx - ext) - x0)
            j1 = min(bw, int(cx + sx + ext) + 2 - x0)
            if i0 >= i1 or j0 >= j1:
                continue
            mask = _blob(dx[:, j0:j1] - sx, dy[i0:i1] - sy, r, _wobble_table(rng, 0.2), 1.6)
            sub = albedo[:, i0:i1, j0:j1]
            sub += (_SPOT[:, None, None] * tex[i0:i1, j0:j1] - sub) * (0.95 * mask)

    # Compose: lit belt, soft contact shadow, lit tuber, sensor noise.
    brightness = np.float32(f["brightness"])
    frame = belts[belt_frame] * brightness
    sdy, sdx = _SHADOW_SHIFT
    shadow = np.zeros((bh, bw), dtype=np.float32)
    shadow[sdy:, sdx:] = np.clip((_SHADOW_REACH - d[: bh - sdy, : bw - sdx]) / 0.3, 0.0, 1.0)
    keep = (1.0 - 0.55 * shadow) * (1.0 - alpha)
    tuber = albedo * (shade * light[y0:y1, x0:x1] * brightness * alpha)
    region = frame[y0:y1, x0:x1]
    region *= keep[..., None]
    region += tuber.transpose(1, 2, 0)
    frame += noise[noise_dy : noise_dy + HEIGHT, noise_dx : noise_dx + WIDTH]
    np.clip(frame, 0.0, 255.0, out=frame)
    return frame.astype(np.uint8)


# ------------------------------------------------------------------ the data set


def _image_name(index: int, n_images: int) -> str:
    width = max(5, len(str(n_images - 1)))
    return f"images/tuber_{index:0{width}d}.jpg"


def _render_and_save(task: tuple) -> int:
    """Worker: draw image `index` from its own seed and write it (temp file, then rename)."""
    index, row, seed, path, quality = task
    rng = np.random.default_rng([seed, 1, index])
    image = render_tuber(row, rng)
    tmp = f"{path}.tmp{os.getpid()}"
    Image.fromarray(image, mode="RGB").save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)
    return index


def generate(
    out_dir: str | os.PathLike,
    n_images: int,
    *,
    seed: int = 0,
    good_fraction: float = GOOD_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    jpeg_quality: int = 90,
    fixed: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """Write a simulated data set: images/tuber_*.jpg, labels.csv and factors.csv (`fixed`: `sample_factors`).

    The CSVs are written last (temp file + rename) and any old ones are removed
    first, so an interrupted run never leaves a labels.csv describing missing or
    stale images. Images of an earlier, larger run that the new CSVs do not list
    are deleted, so the folder is exactly the data set. Returns the factors with
    `file` (relative to `out_dir`) first and `label` last.
    """
    n_images = check_int("n_images", n_images, 1)
    seed = check_int("seed", seed, 0)
    _check_fraction(good_fraction)
    jpeg_quality = check_int("jpeg_quality", jpeg_quality, 1, 95)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = check_int("workers", workers, 1)
    workers = min(workers, n_images)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir must be a directory, got the file {str(out)!r}")
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for name in ("labels.csv", "factors.csv"):
        (out / name).unlink(missing_ok=True)

    factors = sample_factors(n_images, np.random.default_rng([seed, 0]), good_fraction, fixed=fixed)
    files = [_image_name(i, n_images) for i in range(n_images)]
    records = factors.to_dict("records")
    tasks = [(i, records[i], seed, str(out / files[i]), jpeg_quality) for i in range(n_images)]

    warm_caches()  # forked workers inherit the textures instead of rebuilding them
    with tqdm(total=n_images, desc="simulating tubers", unit="img", disable=not progress) as bar:
        if workers == 1:
            for task in tasks:
                _render_and_save(task)
                bar.update()
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            chunk = max(1, min(16, n_images // (4 * workers)))
            with ctx.Pool(workers) as pool:
                for _ in pool.imap_unordered(_render_and_save, tasks, chunksize=chunk):
                    bar.update()

    keep = {Path(f).name for f in files}
    for stale in images_dir.glob("tuber_*.jpg"):
        if stale.name not in keep:
            stale.unlink()

    table = factors.copy()
    table.insert(0, "file", files)
    table["label"] = labels_from_factors(factors).to_numpy()
    write_csv(out / "factors.csv", table[["file", *FACTOR_NAMES]])
    write_csv(out / "labels.csv", table[["file", "label"]])
    return table


# ------------------------------------------------------------------ an evaluation set in memory

# Random streams: the raw data set draws factors from [seed, 0] and photo i from [seed, 1, i];
# an evaluation set draws from [seed, 2] and [seed, 3, i], so it never repeats a training photo.
_EVAL_FACTORS_STREAM, _EVAL_IMAGES_STREAM = 2, 3


def _render_model_input(task: tuple) -> np.ndarray:
    """Worker: photo `index` as the pipeline would store and preprocess it (JPEG, decode, crop, resize)."""
    index, row, seed, quality, crop_fraction, image_size = task
    image = render_tuber(row, np.random.default_rng([seed, _EVAL_IMAGES_STREAM, index]))
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return load_model_input(buffer, crop_fraction=crop_fraction, image_size=image_size)


def model_inputs(
    n_images: int,
    *,
    seed: int,
    crop_fraction: float,
    image_size: int,
    good_fraction: float = GOOD_FRACTION,
    workers: int | None = None,
    progress: bool = True,
    jpeg_quality: int = 90,
    fixed: Mapping[str, float] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """`n_images` simulated photos as the models see them, with their factors, written nowhere.

    Each photo takes the raw data's path (JPEG at `jpeg_quality`, then the preprocess
    stage's decode, centre crop and resize) without touching the disk, from random
    streams of its own: a held-out evaluation set of any size, never a training photo.
    Returns uint8 (n, size, size, 3) and the factors (`FACTOR_NAMES`, then `label`).
    `fixed` holds factors at constants (`sample_factors`).
    """
    n_images = check_int("n_images", n_images, 1)
    seed = check_int("seed", seed, 0)
    _check_fraction(good_fraction)
    jpeg_quality = check_int("jpeg_quality", jpeg_quality, 1, 95)
    workers = min(check_int("workers", workers or os.cpu_count() or 1, 1), n_images)
    factors = sample_factors(n_images, np.random.default_rng([seed, _EVAL_FACTORS_STREAM]), good_fraction, fixed=fixed)
    records = factors.to_dict("records")
    tasks = [(i, records[i], seed, jpeg_quality, crop_fraction, image_size) for i in range(n_images)]
    warm_caches()
    with tqdm(total=n_images, desc="simulating an evaluation set", unit="img", disable=not progress) as bar:
        if workers == 1:
            arrays = []
            for task in tasks:
                arrays.append(_render_model_input(task))
                bar.update()
        else:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            chunk = max(1, min(32, n_images // (4 * workers)))
            with ctx.Pool(workers) as pool:
                arrays = []
                for array in pool.imap(_render_model_input, tasks, chunksize=chunk):
                    arrays.append(array)
                    bar.update()
    table = factors[list(FACTOR_NAMES)].copy()
    table["label"] = labels_from_factors(factors).to_numpy()
    return np.stack(arrays), table


# ----------------------------------------------------------------- looking at it


def contact_sheet(out_dir: str | os.PathLike, png_path: str | os.PathLike, *, n: int = 24, seed: int = 0) -> Path:
    """Save a grid of `n` random photos from a generated folder, captioned with label and defects."""
    # A pyplot-free figure on the Agg canvas: no global backend switch, nothing left open.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = check_int("n", n, 1)
    seed = check_int("seed", seed, 0)
    out = Path(out_dir)
    labels_path = out / "labels.csv"
    if not labels_path.is_file():
        raise ValueError(f"out_dir must hold a generated data set with labels.csv, got {str(out)!r}")
    labels = pd.read_csv(labels_path, keep_default_na=False, dtype={"label": str})
    factors_path = out / "factors.csv"
    factors = pd.read_csv(factors_path) if factors_path.is_file() else None
    if factors is not None and not set(DEFECT_COLUMNS.values()) <= set(factors.columns):
        factors = None  # an older simulator's columns: caption the label only
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(labels), size=min(n, len(labels)), replace=False))

    cols = min(6, len(picks))
    rows = math.ceil(len(picks) / cols)
    fig = Figure(figsize=(2.6 * cols, 2.25 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picks):
        with Image.open(out / labels.loc[i, "file"]) as img:
            ax.imshow(np.asarray(img.convert("RGB")))
        caption = str(labels.loc[i, "label"]) or "unlabelled"
        if factors is not None:
            names = defect_names(factors.loc[i])
            if names:
                caption += ": " + ", ".join(names)
        colour = "tab:red" if labels.loc[i, "label"] == "bad" else "tab:blue"
        ax.set_title(caption, fontsize=8, color=colour)
    fig.tight_layout()
    png = Path(png_path)
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return png
