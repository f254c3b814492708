"""`tuber-quality` as MLflow loads it ("models from code"): the installed package's `TuberQualityModel`.

This file is what a logged classifier holds instead of a pickled object: readable Python that MLflow
runs when the model loads, building the model from the installed tubervae (never from a copy of the
package in the artifact store). Imported as a module it only names itself (`CODE`).
"""

from __future__ import annotations

from pathlib import Path

from mlflow.models import set_model

from tubervae.runs.quality_model import TuberQualityModel

CODE = Path(__file__)  # what the classify stage logs as the model's code

if __name__ != "tubervae.runs.quality_model_code":  # run by MLflow as a model's code, not imported
    set_model(TuberQualityModel())
