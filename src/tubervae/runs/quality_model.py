"""`tuber-quality`: the grading rule served as a pyfunc model over the champion VAE.

Bad if any of a few latent components passes its threshold (`tubervae.classify.any_rule`); the
answer names every rule and which fired, so a verdict explains itself. The photo handling, input
limits and error guard are the VAE model's (`tubervae.runs.serving`); this module is apart so that
the stages that only train and rank VAEs do not depend on the classifier's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

from tubervae.classify.any_rule import AnyOfRule
from tubervae.classify.rules import ThresholdRule
from tubervae.models.encoding import encode
from tubervae.runs.serving import PHOTO_INPUT, _PhotoModel


def quality_model_artifacts(folder: Path, vae, vae_config: dict, rule: AnyOfRule | ThresholdRule) -> dict[str, str]:
    """Write what `TuberQualityModel` loads (weights, VAE config, rule) into `folder`; returns the artifact map.

    A single ThresholdRule is written as the one-rule AnyOfRule it is.
    """
    if isinstance(rule, ThresholdRule):
        rule = AnyOfRule.from_threshold_rule(rule)
    if not isinstance(rule, AnyOfRule):
        raise TypeError(f"rule must be an AnyOfRule or a ThresholdRule, got {type(rule).__name__}")
    paths = {"weights": folder / "model.pt", "config": folder / "vae_config.json", "rule": folder / "rule.json"}
    torch.save({k: v.detach().cpu() for k, v in vae.state_dict().items()}, paths["weights"])
    paths["config"].write_text(json.dumps(vae_config, indent=2))
    paths["rule"].write_text(json.dumps(rule.as_dict(), indent=2))
    return {name: str(path) for name, path in paths.items()}


def rule_from_artifact(fields: dict) -> AnyOfRule:
    """The served rule from rule.json: an AnyOfRule, or a model written before it held one rule only.

    The old file is a ThresholdRule's fields; it loads as the one-rule AnyOfRule with scale 1, whose
    verdicts and score are the old rule's.
    """
    if isinstance(fields, dict) and "rules" not in fields and "component" in fields:
        return AnyOfRule.from_threshold_rule(ThresholdRule.from_dict(fields))
    return AnyOfRule.from_dict(fields)


class TuberQualityModel(_PhotoModel):
    """Bad if any of a few latent components of the champion VAE passes its threshold; 'good' or 'bad' per photo.

    The answer names every rule and which fired (module docstring), so a verdict explains itself.
    """

    def load_context(self, context):
        super().load_context(context)
        self.rule = rule_from_artifact(json.loads(Path(context.artifacts["rule"]).read_text()))

    def _predict(self, model_input) -> pd.DataFrame:
        mu, _ = encode(self.vae, self._images(model_input))
        return quality_answer(self.rule, mu)


def quality_answer(rule: AnyOfRule, mu: np.ndarray) -> pd.DataFrame:
    """One row per photo from its encoder means: the verdict, the values the rule reads, and which rule fired.

    The first columns are those the one-rule model sent (label, z<c>, threshold), so its clients keep working.
    """
    n = len(mu)
    fired = rule.fired(mu) if n else np.zeros((0, len(rule.rules)), bool)
    score = rule.decision_function(mu) if n else np.zeros(0)
    first = rule.rules[0]
    columns = {
        "label": np.where(fired.any(axis=1), "bad", "good"),
        f"z{first.component}": mu[:, first.component],
        "threshold": np.full(n, first.threshold),
    }
    for r in rule.rules[1:]:
        columns[f"z{r.component}"] = mu[:, r.component]
    columns["score"] = score
    columns["fired"] = _objects([[r.component for r, hit in zip(rule.rules, row) if hit] for row in fired])
    columns["rules"] = _objects(
        [
            [
                {
                    "component": r.component,
                    "direction": r.direction,
                    "threshold": r.threshold,
                    "value": float(mu[i, r.component]),
                    "fired": bool(fired[i, j]),
                }
                for j, r in enumerate(rule.rules)
            ]
            for i in range(n)
        ]
    )
    return pd.DataFrame(columns)


def _objects(values: list) -> np.ndarray:
    """A 1-D object array of per-photo lists, which pandas keeps as one cell each."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def quality_signature(rule: AnyOfRule) -> ModelSignature:
    """Photos in; `quality_answer`'s columns out, so the model page shows what a verdict holds."""
    components = [r.component for r in rule.rules]
    rule_fields = Object(
        [
            Property("component", "long"),
            Property("direction", "string"),
            Property("threshold", "double"),
            Property("value", "double"),
            Property("fired", "boolean"),
        ]
    )
    outputs = [ColSpec("string", "label"), ColSpec("double", f"z{components[0]}"), ColSpec("double", "threshold")]
    outputs += [ColSpec("double", f"z{c}") for c in components[1:]]
    outputs += [ColSpec("double", "score"), ColSpec(Array("long"), "fired"), ColSpec(Array(rule_fields), "rules")]
    return ModelSignature(inputs=PHOTO_INPUT, outputs=Schema(outputs))
