"""How far can one component follow a defect? Reference figures from the photos themselves, no VAE.

The figure of `experiments/defect_probe.py` is the best |Spearman ρ| between a defect factor and
one latent component. This script computes the same figure for representations that need no
training, on the test split of a processed folder, to show what the photos allow:

- simple statistics of each photo: the mean grey level of the whole image and of the tuber
  (the pixels whose colour differs from the belt's by more than a fixed margin, so the tuber's
  contact shadow too; the belt's colour read on the top and bottom rows), and the tuber's mean
  divided by the belt's (lighting taken out);
- principal components of the pixels (fitted on the training split): the linear-Gaussian limit
  of a VAE, one component per direction of largest variance;
- principal and independent components of the tuber's mean colour (three numbers per photo);
- and, supervised, for scale: a ridge regression of the defect on all pixels and a linear
  regression on the tuber's mean colour, fitted on the training split's factors.

    python experiments/defect_ceiling.py data/processed
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from sklearn.decomposition import PCA, FastICA
from sklearn.linear_model import LinearRegression, RidgeCV

from tubervae.data.processed import load_split
from tubervae.evaluation.matching import best_components

DEFECTS = ("spot_area", "greening", "rot")
SHOWN = ("x", "y", "size", "tone", "brightness", *DEFECTS)
BELT_ROWS = 2  # top and bottom rows read as the belt
TUBER_DISTANCE = 0.15  # summed |RGB difference| to the belt's colour ([0, 1]) above which a pixel is tuber or shadow


def best_rho(representation: np.ndarray, factor: np.ndarray) -> float:
    """The largest |Spearman ρ| between the factor and one column of the representation."""
    columns = representation.reshape(len(representation), -1)
    _, rho = best_components(columns, np.asarray(factor)[:, None])
    return round(float(rho[0]), 3)


def belt_and_tuber_colour(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo, the belt's mean RGB and the tuber's mean RGB, in [0, 1]."""
    img = images.astype(np.float32) / 255.0
    n = len(img)
    belt = np.concatenate([img[:, :BELT_ROWS].reshape(n, -1, 3), img[:, -BELT_ROWS:].reshape(n, -1, 3)], 1).mean(1)
    tuber_mask = np.abs(img - belt[:, None, None, :]).sum(-1) > TUBER_DISTANCE
    tuber = np.stack([img[i][tuber_mask[i]].mean(0) if tuber_mask[i].any() else belt[i] for i in range(n)])
    return belt, tuber


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="a processed folder (data/processed)")
    parser.add_argument("--components", type=int, default=10, help="principal components of the pixels")
    args = parser.parse_args()
    train, test = load_split("train", args.dir), load_split("test", args.dir)
    names = list(train["factor_names"])

    def factor(split: dict, name: str) -> np.ndarray:
        return split["factors"][:, names.index(name)]

    pixels_train = train["images"].reshape(len(train["images"]), -1) / 255.0
    pixels_test = test["images"].reshape(len(test["images"]), -1) / 255.0
    belt_train, tuber_train = belt_and_tuber_colour(train["images"])
    belt_test, tuber_test = belt_and_tuber_colour(test["images"])
    colour_train = tuber_train / belt_train.mean(1, keepdims=True)  # the tuber's colour, lighting taken out
    colour_test = tuber_test / belt_test.mean(1, keepdims=True)

    unsupervised = {
        "image mean grey": pixels_test.mean(1),
        "tuber mean grey": tuber_test.mean(1),
        "tuber mean grey / belt": colour_test.mean(1),
        f"pixels, {args.components} principal components": PCA(args.components, random_state=0)
        .fit(pixels_train)
        .transform(pixels_test),
        "tuber colour / belt, 3 principal components": PCA(3).fit(colour_train).transform(colour_test),
        "tuber colour / belt, 3 independent components": FastICA(3, random_state=0, max_iter=2000)
        .fit(colour_train)
        .transform(colour_test),
    }
    rows = {label: {name: best_rho(rep, factor(test, name)) for name in SHOWN} for label, rep in unsupervised.items()}
    for name in DEFECTS:
        ridge = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(pixels_train, factor(train, name))
        rows.setdefault("supervised: ridge on all pixels", {})[name] = best_rho(
            ridge.predict(pixels_test), factor(test, name)
        )
        linear = LinearRegression().fit(colour_train, factor(train, name))
        rows.setdefault("supervised: linear on tuber colour / belt", {})[name] = best_rho(
            linear.predict(colour_test), factor(test, name)
        )
    for label, row in rows.items():
        print(json.dumps({"representation": label, "best_abs_rho": row}))


if __name__ == "__main__":
    main()
