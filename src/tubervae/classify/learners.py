"""The learned yardsticks a one-component threshold has to beat per labelled image.

Logistic regression and gradient boosting on the latents (the alternatives the
thesis names) show what a hand-picked single component leaves out; a small CNN
trained on the pixels shows whether the VAE representation helps at all. Each
fit returns a small wrapper with the same ``decision_function`` (the bad-score
that ROC curves read; here P(bad), where the rules give a signed distance) and
``predict`` (boolean, True = bad) interface as the threshold rule. sklearn and
torch are imported inside the functions, so importing the package stays cheap
for callers that only need the threshold rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from tubervae.checks import check_array, check_int, check_real, check_seed
from tubervae.classify._inputs import (
    as_components,
    as_images,
    as_labels,
    check_width,
    require_both_classes,
)

__all__ = [
    "GRADIENT_BOOSTING_SETTINGS",
    "LatentClassifier",
    "PixelCNNClassifier",
    "fit_gradient_boosting",
    "fit_logistic",
    "fit_pixel_cnn",
]

# Gradient-boosting settings: shallow trees and few rounds, because the
# labelled sets are 20-200 images; min_samples_leaf is small so that a
# 10 + 10 draw can still split at all (sklearn's default of 20 cannot).
GRADIENT_BOOSTING_SETTINGS = {
    "max_iter": 100,
    "learning_rate": 0.1,
    "max_depth": 3,
    "min_samples_leaf": 5,
    "l2_regularization": 1.0,
    "early_stopping": False,
}


# --------------------------------------------------------------------------- learned classifiers on latents


class LatentClassifier:
    """A fitted sklearn estimator restricted to chosen components.

    ``decision_function`` is the probability of bad (a bad-score, as the rules' is;
    unlike scikit-learn's, its cut is 0.5, not 0); ``predict`` thresholds it at
    0.5, which with balanced class weights is the balanced decision.
    """

    def __init__(self, estimator: Any, components: Sequence[int], n_features: int) -> None:
        self.estimator = estimator
        self.components = list(components)
        self.n_features = n_features

    def decision_function(self, latents: Any) -> np.ndarray:
        array = check_array("latents", latents)
        check_width(array, self.n_features)
        bad_column = list(self.estimator.classes_).index(True)
        return self.estimator.predict_proba(array[:, self.components])[:, bad_column]

    def predict(self, latents: Any) -> np.ndarray:
        return self.decision_function(latents) > 0.5


def _prepare_fit(latents: Any, bad: Any, components: Iterable[int] | None, random_state: Any):
    array = check_array("latents", latents)
    labels = as_labels(bad, n=array.shape[0])
    require_both_classes(labels)
    return array, labels, as_components(components, array.shape[1]), check_seed(random_state)


def fit_logistic(
    latents: Any, bad: Any, *, components: Iterable[int] | None = None, random_state: int = 0
) -> LatentClassifier:
    """Standardised logistic regression with balanced class weights.

    The linear learned counterpart of the threshold: it may combine
    components, so it shows what a hand-picked single component leaves out.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    array, labels, chosen, seed = _prepare_fit(latents, bad, components, random_state)
    model = make_pipeline(
        StandardScaler(),
        LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed),
    )
    model.fit(array[:, chosen], labels)
    return LatentClassifier(model, chosen, array.shape[1])


def fit_gradient_boosting(
    latents: Any, bad: Any, *, components: Iterable[int] | None = None, random_state: int = 0
) -> LatentClassifier:
    """Histogram gradient boosting with balanced class weights.

    The non-linear learner the thesis names; the small settings in
    ``GRADIENT_BOOSTING_SETTINGS`` suit 20-200 labels.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    array, labels, chosen, seed = _prepare_fit(latents, bad, components, random_state)
    model = HistGradientBoostingClassifier(class_weight="balanced", random_state=seed, **GRADIENT_BOOSTING_SETTINGS)
    model.fit(array[:, chosen], labels)
    return LatentClassifier(model, chosen, array.shape[1])


# --------------------------------------------------------------------------- supervised pixel baseline


def _images_to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


class PixelCNNClassifier:
    """A fitted small CNN on raw pixels; ``decision_function`` is P(bad)."""

    def __init__(self, network: Any, side: int, batch_size: int = 256) -> None:
        self.network = network
        self.side = side
        self.batch_size = batch_size

    def decision_function(self, images: Any) -> np.ndarray:
        import torch

        array = as_images(images)
        if array.shape[1] != self.side:
            raise ValueError(
                f"images are {array.shape[1]}x{array.shape[2]} but the CNN was trained on {self.side}x{self.side}"
            )
        self.network.eval()
        scores = []
        with torch.no_grad():
            for start in range(0, array.shape[0], self.batch_size):
                batch = _images_to_tensor(array[start : start + self.batch_size]) - 0.5
                scores.append(torch.sigmoid(self.network(batch)).squeeze(1).numpy())
        return np.concatenate(scores).astype(np.float64)

    def predict(self, images: Any) -> np.ndarray:
        return self.decision_function(images) > 0.5


def fit_pixel_cnn(
    images: Any,
    bad: Any,
    *,
    random_state: int = 0,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    on_step: Callable[[int, float], None] | None = None,
) -> PixelCNNClassifier:
    """A supervised baseline that sees pixels instead of latents.

    The network is :func:`tubervae.models.pixel_cnn.pixel_cnn` (three stride-2
    convolutions, global average pooling and a linear head), trained with Adam
    on class-balanced BCE (each class carries half the loss) on the CPU.
    Initial weights and minibatches come from ``random_state`` only; the
    global torch RNG is left as found. ``on_step(step, loss)`` hears every step
    (a stage's progress line).
    """
    import torch

    from tubervae.models.pixel_cnn import pixel_cnn

    array = as_images(images)
    labels = as_labels(bad, n=array.shape[0])
    require_both_classes(labels)
    seed = check_seed(random_state)
    steps = check_int("steps", steps, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    lr = check_real("lr", lr, minimum=0, strict=True)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = pixel_cnn()
    generator = torch.Generator().manual_seed(seed)

    inputs = _images_to_tensor(array) - 0.5
    targets = torch.from_numpy(labels.astype(np.float32))
    n_bad = int(labels.sum())
    n_good = labels.size - n_bad
    sample_weight = torch.where(
        targets > 0.5, torch.tensor(labels.size / (2.0 * n_bad)), torch.tensor(labels.size / (2.0 * n_good))
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    size = min(batch_size, labels.size)
    order = torch.randperm(labels.size, generator=generator)
    position = 0
    network.train()
    for step in range(1, steps + 1):
        if position + size > labels.size:
            order = torch.randperm(labels.size, generator=generator)
            position = 0
        index = order[position : position + size]
        position += size
        logits = network(inputs[index]).squeeze(1)
        weights = sample_weight[index]
        loss = (loss_fn(logits, targets[index]) * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step, float(loss.detach()))
    network.eval()
    return PixelCNNClassifier(network, array.shape[1])
