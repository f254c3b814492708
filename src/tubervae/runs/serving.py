"""MLflow pyfunc models: the champion VAE (`tubervae-vae`) and the tuber classifier (`tuber-quality`).

Both take photos of any size, preprocess them exactly like the pipeline (centre crop,
resize), and answer a bad input (unreadable file, wrong shape) with an MlflowException
carrying INVALID_PARAMETER_VALUE, which `mlflow models serve` turns into HTTP 400
while it keeps serving.

Accepted inputs of `predict`:
- a pandas DataFrame with a `path` column (image files) or an `image_base64` column
  (encoded image bytes, e.g. a JPEG sent over HTTP);
- a numpy array of RGB images, n×H×W×3 (or one H×W×3 image), uint8 or floats in [0, 1].
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image, UnidentifiedImageError

from tubervae.classify.rules import ThresholdRule
from tubervae.data.images import load_model_input
from tubervae.runs.tracker import load_vae_files
from tubervae.training import encode


def bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _open(source, where: str) -> Image.Image:
    try:
        img = Image.open(source)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise bad_input(f"{where}: not a readable image ({exc})") from None
    if img.mode not in ("RGB", "RGBA", "P", "CMYK", "L"):
        raise bad_input(f"{where}: colour mode {img.mode} is not supported; send an 8-bit RGB image")
    return img.convert("RGB")


def images_from_input(model_input, *, crop_fraction: float, image_size: int) -> np.ndarray:
    """Any accepted input → uint8 n×s×s×3 as the encoder sees it."""
    prepare = lambda img: load_model_input(img, crop_fraction=crop_fraction, image_size=image_size)
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns:
            images = []
            for i, path in enumerate(model_input["path"]):
                if not isinstance(path, str) or not Path(path).is_file():
                    raise bad_input(f"row {i}: path {path!r} is not an existing file")
                images.append(prepare(_open(path, f"row {i} ({path})")))
            return np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
        if "image_base64" in model_input.columns:
            images = []
            for i, text in enumerate(model_input["image_base64"]):
                try:
                    raw = base64.b64decode(str(text), validate=True)
                except (binascii.Error, ValueError):
                    raise bad_input(f"row {i}: image_base64 is not valid base64") from None
                images.append(prepare(_open(io.BytesIO(raw), f"row {i}")))
            return np.stack(images) if images else np.zeros((0, image_size, image_size, 3), np.uint8)
        if (
            len(model_input.columns) == 1
            and model_input.shape[0]
            and isinstance(model_input.iloc[0, 0], (list, np.ndarray))
        ):
            model_input = np.asarray(model_input.iloc[:, 0].tolist())
        else:
            raise bad_input(f"expected a 'path' or 'image_base64' column, got columns {list(model_input.columns)}")
    array = np.asarray(model_input)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape[1:3], default=0) < 8:
        raise bad_input(f"expected RGB images shaped n×H×W×3 (H, W ≥ 8), got an array of shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise bad_input("image arrays must hold finite numbers")
    if array.dtype != np.uint8:
        if array.min() < 0 or array.max() > 255:
            raise bad_input(f"pixel values must lie in [0, 1] or [0, 255], got [{array.min()}, {array.max()}]")
        array = (array * 255.0 if array.max() <= 1.0 else array).round().astype(np.uint8)
    return np.stack([prepare(img) for img in array])


def quality_model_artifacts(folder: Path, vae, vae_config: dict, rule: ThresholdRule) -> dict[str, str]:
    """Write what `TuberQualityModel` loads (weights, VAE config, rule) into `folder`; returns the artifact map."""
    paths = {"weights": folder / "model.pt", "config": folder / "vae_config.json", "rule": folder / "rule.json"}
    torch.save({k: v.detach().cpu() for k, v in vae.state_dict().items()}, paths["weights"])
    paths["config"].write_text(json.dumps(vae_config, indent=2))
    paths["rule"].write_text(json.dumps(rule.as_dict(), indent=2))
    return {name: str(path) for name, path in paths.items()}


class VaeModel(mlflow.pyfunc.PythonModel):
    """The champion VAE. `predict` returns mu_0…, logvar_0… per image; `vae` is the torch module."""

    def load_context(self, context):
        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        self.vae = load_vae_files(context.artifacts["weights"], self.config)

    def predict(self, context, model_input, params=None):
        images = images_from_input(
            model_input, crop_fraction=self.config["crop_fraction"], image_size=self.config["image_size"]
        )
        mu, logvar = encode(self.vae, images)
        d = mu.shape[1]
        return pd.DataFrame(
            np.hstack([mu, logvar]), columns=[f"mu_{j}" for j in range(d)] + [f"logvar_{j}" for j in range(d)]
        )


class TuberQualityModel(mlflow.pyfunc.PythonModel):
    """Threshold on one latent component of the champion VAE: label 'good' or 'bad' per photo."""

    def load_context(self, context):
        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        self.vae = load_vae_files(context.artifacts["weights"], self.config)
        self.rule = ThresholdRule.from_dict(json.loads(Path(context.artifacts["rule"]).read_text()))

    def predict(self, context, model_input, params=None):
        images = images_from_input(
            model_input, crop_fraction=self.config["crop_fraction"], image_size=self.config["image_size"]
        )
        mu, _ = encode(self.vae, images)
        bad = self.rule.predict(mu) if len(mu) else np.zeros(0, bool)
        return pd.DataFrame(
            {
                "label": np.where(bad, "bad", "good"),
                f"z{self.rule.component}": mu[:, self.rule.component] if len(mu) else [],
                "threshold": self.rule.threshold,
            }
        )
