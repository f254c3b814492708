"""The tuber photo simulator's factors of variation: what each photo's ground truth is, and its draw.

No real potato photos are reachable, so the project's default raw data is
simulated: 640×480 RGB JPEG photos of one tuber on a conveyor belt, like the
thesis's data (drawn by :mod:`.synth_render`, written as a data set by
:mod:`.synth_dataset`), plus the ground truth a real data set lacks
(`factors.csv`), which lets the supervised disentanglement metrics be checked
against UDR. This module holds that ground truth: the factors, their ranges,
their independent draw and the label that follows from them.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from tubervae.checks import check_int
from tubervae.config import GOOD_FRACTION

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


def check_good_fraction(good_fraction: float) -> None:
    if not (isinstance(good_fraction, (int, float)) and 0.0 < good_fraction < 1.0):
        raise ValueError(f"good_fraction must be a number in (0, 1), got {good_fraction!r}")


def defect_probability(good_fraction: float = GOOD_FRACTION) -> float:
    """Presence probability q of each defect type, so that P(no defect) = good_fraction."""
    check_good_fraction(good_fraction)
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


def validate_factors(factors: Mapping[str, float]) -> dict[str, float]:
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
