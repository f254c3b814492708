"""`search.objective: measured_mig`: models valued by MIG on the few photos whose factors were measured.

Locatello et al. (ICLR 2020) select models with a supervised metric computed on a small share of
the photos. In the UDR trial (docs/results/udr-validity.md), MIG on 100 photos with measured
factors picked the best β-VAE where within-family UDR did no better than a random pick. A grading
line can weigh and measure 100 tubers: their rows of the folder's factors.csv are all this needs.

The measured photos are taken in a fixed order, so every model of a study is valued on the same
ones: the labelled split, then test, then train, each split's measured rows (every factor finite)
in file order, up to `search.measured_photos` (0 = every measured photo).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tubervae.data.factors import measured_rows
from tubervae.data.processed import load_split
from tubervae.evaluation.mig import mig
from tubervae.models.encoding import encode
from tubervae.models.nets import VAE

MEASURED_SPLITS = ("labelled", "test", "train")  # the graded photos first: a grading line measures what it grades
MIN_MEASURED = 20  # fewer photos cannot fill MIG's 20 bins of a component with anything but noise


def measured_photos(processed_dir: str | Path, limit: int = 100) -> dict:
    """The photos `search.objective: measured_mig` values models on: `images`, `factors`, `factor_names`,
    and `sources` (how many came from each split). Refused at once when fewer than MIN_MEASURED are measured."""
    if limit < 0:
        raise ValueError(f"search.measured_photos must be 0 (every measured photo) or positive, got {limit}")
    images, factors, sources, names = [], [], {}, None
    for split in MEASURED_SPLITS:
        wanted = limit - sum(len(f) for f in factors) if limit else None
        if wanted == 0:
            break
        arrays = load_split(split, processed_dir)
        if "factors" not in arrays:
            continue
        names = [str(n) for n in arrays["factor_names"]]
        rows = np.flatnonzero(measured_rows(arrays["factors"]))[:wanted]
        if len(rows):
            images.append(arrays["images"][rows])
            factors.append(arrays["factors"][rows])
            sources[split] = len(rows)
    n = sum(sources.values())
    if n < MIN_MEASURED:
        raise ValueError(
            f"search.objective is 'measured_mig', but {n} photo(s) of {processed_dir} have measured factors "
            f"(at least {MIN_MEASURED} are needed): put a factors.csv with a row per measured photo at the top of "
            f"the photo folder (docs/your-photos.md), or use search.objective: udr, elbo or job"
        )
    return {
        "images": np.concatenate(images),
        "factors": np.concatenate(factors).astype(np.float64),
        "factor_names": names,
        "sources": sources,
    }


def measured_mig(vae: VAE, photos: dict) -> float:
    """MIG (published estimator, `tubervae.evaluation.mig`) of the model's encoder means on the measured photos."""
    mu, _ = encode(vae, photos["images"])
    return float(mig(mu, photos["factors"])["mig"])
