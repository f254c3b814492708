"""MLflow pyfunc models: the champion VAE (`tubervae-vae`) and the photo handling it shares with
`tuber-quality` (`tubervae.runs.quality_model`).

Both take photos of any size, preprocess them exactly like the pipeline (centre crop,
resize), and answer a bad input (unreadable file, wrong shape, too large) with an
MlflowException carrying INVALID_PARAMETER_VALUE, which `mlflow models serve` turns into
HTTP 400 while it keeps serving. Error bodies hold one plain message (what was wrong,
which row, the limit): never a stack trace, a server path or a path from the request.

Accepted inputs of `predict`:
- a pandas DataFrame with an `image_base64` column (encoded image bytes, e.g. a JPEG
  sent over HTTP) or, only where an input folder is configured, a `path` column (never
  both: such a request is refused, naming both): what
  the models' MLflow signature declares (`PHOTO_INPUT`), so what a loaded or served
  model takes;
- a numpy array of RGB images, n×H×W×3 (or one H×W×3 image), uint8 or floats in [0, 1],
  only when the Python model is called directly (`unwrap_python_model()`): MLflow checks
  a loaded model's input against its signature, and no signature admits both a table
  and a 4-D array.

Encoded images follow the ingestion rules of `tubervae.data.images`: JPEG, PNG, BMP,
TIFF or WebP; grayscale, 1-bit, 16-bit and float images are refused (colour carries skin
tone and greening); RGBA, palette and CMYK images are converted to RGB (alpha composited
on black). Unlike ingestion, any size is accepted up to the pixel limit.

Limits, read from environment variables when the model loads (`mlflow models serve`
start-up; `images_from_input` called directly reads them at each call):

| variable                  | default                 | meaning                                           |
|---------------------------|-------------------------|---------------------------------------------------|
| TUBERVAE_MAX_PIXELS       | 16777216 (4096×4096)    | most pixels (width × height) of one image,        |
|                           |                         | checked on the header before anything is decoded; |
|                           |                         | at most Pillow's own guard, Image.MAX_IMAGE_PIXELS|
| TUBERVAE_MAX_IMAGES       | 64                      | most images in one request (rows or array images) |
| TUBERVAE_MAX_BASE64_BYTES | 67108864 (64 MiB)       | most characters of `image_base64` in one request  |
| TUBERVAE_INPUT_FOLDER     | unset: `path` input off | the one folder `path` rows may read; a path       |
|                           |                         | (relative ones start in that folder) must resolve,|
|                           |                         | links resolved, to a file inside it               |

A `path` row that is not a string, does not exist, is not a regular file or lies
outside the input folder gets one and the same answer, so that requests cannot probe
which files the server has. A bad setting (not a positive integer, a missing folder)
stops the model from loading with a message naming the variable.

`tuber-quality` answers one row per photo: `label` ("good"/"bad"), `z<c>` for each
component of its rule, `threshold` (the first rule's, as the one-rule model always
sent), `score` (> 0 exactly when bad), `fired` (the components whose rule called the
photo bad) and `rules` (each rule's component, direction, threshold, the photo's value
and whether it fired), so that every verdict can be read off the rule.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.types.schema import ColSpec, Schema
from PIL import Image

from tubervae.data.images import CONVERTIBLE_MODES, REJECTED_MODES, load_model_input, more_than_8_bits
from tubervae.models.encoding import encode
from tubervae.models.nets import load_vae_files

log = logging.getLogger(__name__)

MAX_PIXELS_ENV = "TUBERVAE_MAX_PIXELS"
MAX_IMAGES_ENV = "TUBERVAE_MAX_IMAGES"
MAX_BASE64_ENV = "TUBERVAE_MAX_BASE64_BYTES"
INPUT_FOLDER_ENV = "TUBERVAE_INPUT_FOLDER"
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_IMAGES = 64
DEFAULT_MAX_BASE64_BYTES = 64 * 2**20
# The formats ingestion reads (its image suffixes); no other Pillow plugin ever sees a request.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP")
_FORMAT_NAMES = "JPEG, PNG, BMP, TIFF or WebP"


class BadRequest(MlflowException):
    """An MlflowException whose HTTP body is exactly its own message.

    MLflow's scoring server rewrites the message of an MlflowException raised by `predict`
    to "Failed to predict data '<the whole input>' ..." (echoing the request's paths) and
    sends any other exception with its stack trace; this one serialises like any
    MlflowException (error code, sqlstate, error class) but with the message written here.
    """

    def __init__(self, message: str, error_code=INVALID_PARAMETER_VALUE):
        super().__init__(message, error_code=error_code)
        self.public_message = message

    def serialize_as_json(self) -> str:
        body = json.loads(super().serialize_as_json())  # error_code, sqlstate, error_class as MLflow sends them
        body.pop("stack_trace", None)
        return json.dumps({**body, "message": self.public_message})


def bad_input(message: str) -> BadRequest:
    return BadRequest(message)


def _positive_int(environ, name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


@dataclass(frozen=True)
class InputLimits:
    """What one request may hold; `from_env` reads the variables in the module docstring."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES
    max_base64_bytes: int = DEFAULT_MAX_BASE64_BYTES
    input_folder: Path | None = None  # resolved; None: the `path` input is off

    def __post_init__(self) -> None:
        if Image.MAX_IMAGE_PIXELS and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise ValueError(
                f"{MAX_PIXELS_ENV} is {self.max_pixels}, above Pillow's decompression bomb guard "
                f"of {Image.MAX_IMAGE_PIXELS} pixels"
            )

    @classmethod
    def from_env(cls, environ=None) -> InputLimits:
        environ = os.environ if environ is None else environ
        folder = environ.get(INPUT_FOLDER_ENV, "").strip()
        if folder:
            resolved = Path(folder).expanduser().resolve()
            if not resolved.is_dir():
                raise ValueError(f"{INPUT_FOLDER_ENV} must name an existing folder, got {folder!r}")
        return cls(
            max_pixels=_positive_int(environ, MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS),
            max_images=_positive_int(environ, MAX_IMAGES_ENV, DEFAULT_MAX_IMAGES),
            max_base64_bytes=_positive_int(environ, MAX_BASE64_ENV, DEFAULT_MAX_BASE64_BYTES),
            input_folder=resolved if folder else None,
        )


def _too_many_pixels(where: str, limits: InputLimits, size: tuple[int, int] | None = None) -> BadRequest:
    # Without a size, Pillow's hard guard (twice MAX_IMAGE_PIXELS) stopped the header.
    found = f"{size[0]}×{size[1]} = {size[0] * size[1]} pixels" if size else f"over {2 * Image.MAX_IMAGE_PIXELS} pixels"
    return bad_input(
        f"{where}: image too large: {found}; the limit is {limits.max_pixels} pixels (width × height) per image"
    )


def _check_mode(img: Image.Image, where: str) -> None:
    """The ingestion rules for colour modes (tubervae.data.images.inspect_image), applied to the header."""
    if img.mode in REJECTED_MODES:
        raise bad_input(
            f"{where}: colour mode {img.mode} is refused: grayscale, 1-bit, 16-bit and float images carry "
            f"no colour; send an 8-bit colour (RGB) photo"
        )
    if img.mode not in CONVERTIBLE_MODES and img.mode != "RGB":
        raise bad_input(f"{where}: colour mode {img.mode} is not supported; send an 8-bit colour (RGB) photo")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGBA, palette and CMYK to RGB as ingestion converts them: alpha composited on black."""
    if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _decode(fp, where: str, limits: InputLimits) -> Image.Image:
    """An RGB image from an open binary file; its size and mode are checked on the header, before decoding.

    No message carries Pillow's text: it can hold the file's name.
    """
    try:
        with warnings.catch_warnings():
            # Pillow's warning comes above MAX_IMAGE_PIXELS, never below our own limit, checked next with the size.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=IMAGE_FORMATS)  # reads the header only
        if img.size[0] * img.size[1] > limits.max_pixels:
            raise _too_many_pixels(where, limits, img.size)
        _check_mode(img, where)
        if more_than_8_bits(img):  # shown as RGB by Pillow, which would drop the low byte: refused, as at ingestion
            raise bad_input(
                f"{where}: colour mode {img.mode} with more than 8 bits per channel is refused; "
                f"send an 8-bit colour (RGB) photo"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except BadRequest:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise _too_many_pixels(where, limits) from None
    except Exception as exc:  # Pillow's plugins raise many kinds of errors on hostile bytes
        if any(word in str(exc).lower() for word in ("truncat", "broken")):
            raise bad_input(f"{where}: not a readable image: the data is truncated or broken") from None
        raise bad_input(f"{where}: not a readable image: expected {_FORMAT_NAMES} data") from None
    if img.size[0] * img.size[1] > limits.max_pixels:  # a plugin may change the size while loading
        raise _too_many_pixels(where, limits, img.size)
    _check_mode(img, where)
    return _to_rgb(img)


def _path_refused(i: int) -> BadRequest:
    return bad_input(f"row {i}: path refused: it must name an existing image file inside the server's input folder")


def _read_path(value, i: int, limits: InputLimits) -> Image.Image:
    """The image at a `path` row, only inside the input folder; one answer for every refusal."""
    folder = limits.input_folder
    try:
        if not isinstance(value, str) or not value:
            raise _path_refused(i)
        resolved = (folder / value).resolve()  # an absolute path replaces the folder; links are resolved
        if not (resolved.is_relative_to(folder) and resolved.is_file()):
            raise _path_refused(i)
        fp = open(resolved, "rb")
    except (OSError, ValueError, RuntimeError):  # unreadable, a NUL byte, a link loop
        raise _path_refused(i) from None
    with fp:
        return _decode(fp, f"row {i}", limits)


def _too_many_images(n: int, limits: InputLimits) -> BadRequest:
    return bad_input(f"too many images: {n} in one request; the limit is {limits.max_images} per request")


def images_from_input(
    model_input, *, crop_fraction: float, image_size: int, limits: InputLimits | None = None
) -> np.ndarray:
    """Any accepted input → uint8 n×s×s×3 as the encoder sees it; `limits` default to the environment's."""
    limits = InputLimits.from_env() if limits is None else limits
    prepare = lambda img: load_model_input(img, crop_fraction=crop_fraction, image_size=image_size)
    empty = np.zeros((0, image_size, image_size, 3), np.uint8)
    if isinstance(model_input, pd.DataFrame):
        if "path" in model_input.columns and "image_base64" in model_input.columns:
            raise bad_input(
                "the request has both a 'path' and an 'image_base64' column: send the photos in one of them"
            )
        if "path" in model_input.columns or "image_base64" in model_input.columns:
            if len(model_input) > limits.max_images:
                raise _too_many_images(len(model_input), limits)
        if "path" in model_input.columns:
            if limits.input_folder is None:
                raise bad_input(
                    "the 'path' input is turned off on this server: send the photos in an 'image_base64' "
                    f"column (the server's operator can allow one folder with {INPUT_FOLDER_ENV})"
                )
            images = [prepare(_read_path(value, i, limits)) for i, value in enumerate(model_input["path"])]
            return np.stack(images) if images else empty
        if "image_base64" in model_input.columns:
            texts = list(model_input["image_base64"])
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise bad_input(f"row {i}: image_base64 must be a string of base64 text")
            total = sum(len(text) for text in texts)
            if total > limits.max_base64_bytes:
                raise bad_input(
                    f"request too large: {total} characters of image_base64; the limit is "
                    f"{limits.max_base64_bytes} per request"
                )
            images = []
            for i, text in enumerate(texts):
                try:
                    raw = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError):
                    raise bad_input(f"row {i}: image_base64 is not valid base64") from None
                images.append(prepare(_decode(io.BytesIO(raw), f"row {i}", limits)))
                del raw
            return np.stack(images) if images else empty
        if (
            len(model_input.columns) == 1
            and model_input.shape[0]
            and isinstance(model_input.iloc[0, 0], (list, np.ndarray))
        ):
            model_input = np.asarray(model_input.iloc[:, 0].tolist())
        else:
            raise _no_photo_column(model_input)
    array = np.asarray(model_input)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3 or min(array.shape[1:3], default=0) < 8:
        raise bad_input(f"expected RGB images shaped n×H×W×3 (H, W ≥ 8), got an array of shape {array.shape}")
    if array.shape[0] > limits.max_images:
        raise _too_many_images(array.shape[0], limits)
    if array.shape[1] * array.shape[2] > limits.max_pixels:
        raise _too_many_pixels("array", limits, (array.shape[2], array.shape[1]))
    if not np.issubdtype(array.dtype, np.number) or (array.size and not np.isfinite(array).all()):
        raise bad_input("image arrays must hold finite numbers")
    if array.dtype != np.uint8 and array.size:
        if array.min() < 0 or array.max() > 255:
            raise bad_input(f"pixel values must lie in [0, 1] or [0, 255], got [{array.min()}, {array.max()}]")
        array = (array * 255.0 if array.max() <= 1.0 else array).round().astype(np.uint8)
    return np.stack([prepare(img) for img in array]) if len(array) else empty


class _DroppedColumns(logging.Filter):
    """Remembers, per thread, the columns MLflow dropped from the last request.

    MLflow checks a request against the signature before `predict` sees it, and drops the columns
    the signature does not declare, only logging their names. A request with a wrong column (`img`)
    then arrives with none at all; this filter keeps the names so that the error can say them.
    """

    _PATTERN = re.compile(r"not defined in the model signature: `(.*)`")

    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        found = self._PATTERN.search(record.getMessage())
        if found:
            self.seen.columns = found.group(1)
        return True

    def take(self) -> str | None:
        columns, self.seen.columns = getattr(self.seen, "columns", None), None
        return columns


DROPPED_COLUMNS = _DroppedColumns()


def _install_dropped_columns_filter() -> None:
    logger = logging.getLogger("mlflow.models.utils")
    if DROPPED_COLUMNS not in logger.filters:
        logger.addFilter(DROPPED_COLUMNS)


def _no_photo_column(model_input: pd.DataFrame) -> BadRequest:
    columns = [str(c)[:40] for c in model_input.columns]
    dropped = DROPPED_COLUMNS.take()
    if dropped and not columns:
        what = f"the request's columns {dropped[:200]} are not among them"
    else:
        what = f"got columns {columns}"
    return bad_input(f"expected a 'path' or 'image_base64' column: {what}")


def _guarded(compute):
    """`compute()`, with any failure but a BadRequest logged here and answered without its traceback."""
    try:
        return compute()
    except BadRequest:
        raise
    except Exception as exc:
        log.exception("scoring a request failed")
        raise BadRequest(
            "internal error while scoring the request; the server's log has the details", error_code=INTERNAL_ERROR
        ) from exc
    finally:
        DROPPED_COLUMNS.take()  # the names belong to this request alone


class _PhotoModel(mlflow.pyfunc.PythonModel):
    """What both served models share: the VAE, its preprocessing, the input limits and the error guard."""

    def load_context(self, context):
        self.config = json.loads(Path(context.artifacts["config"]).read_text())
        self.vae = load_vae_files(context.artifacts["weights"], self.config)
        self.limits = InputLimits.from_env()
        _install_dropped_columns_filter()

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """The answer for each photo; any failure but a bad input is a clean 500 (`_guarded`).

        Typed as the table the signature declares: the one annotation of an input MLflow accepts
        without a warning and without wrapping `predict` in its own validation (which would refuse
        the arrays a direct call may pass, module docstring).
        """
        return _guarded(lambda: self._predict(model_input))

    def _images(self, model_input) -> np.ndarray:
        return images_from_input(
            model_input,
            crop_fraction=self.config["crop_fraction"],
            image_size=self.config["image_size"],
            limits=getattr(self, "limits", None),
        )


class VaeModel(_PhotoModel):
    """The champion VAE. `predict` returns mu_0…, logvar_0… per image; `vae` is the torch module."""

    def _predict(self, model_input) -> pd.DataFrame:
        mu, logvar = encode(self.vae, self._images(model_input))
        d = mu.shape[1]
        return pd.DataFrame(
            np.hstack([mu, logvar]), columns=[f"mu_{j}" for j in range(d)] + [f"logvar_{j}" for j in range(d)]
        )


# ------------------------------------------------------------------ signatures and input examples

# Both columns optional: a request sends one of them. Strings, so that a table of anything else is
# MLflow's to refuse; `images_from_input` checks every value again for a direct call.
PHOTO_INPUT = Schema([ColSpec("string", "image_base64", required=False), ColSpec("string", "path", required=False)])


def vae_signature(latent_dim: int) -> ModelSignature:
    """Photos in; each component's encoder mean and log-variance out (the columns of `VaeModel`)."""
    outputs = [ColSpec("double", f"{kind}_{j}") for kind in ("mu", "logvar") for j in range(latent_dim)]
    return ModelSignature(inputs=PHOTO_INPUT, outputs=Schema(outputs))


def photo_example(images: np.ndarray | None, image_size: int) -> pd.DataFrame:
    """One photo as a request sends it: the first of `images` (uint8 n×s×s×3) PNG-encoded, or a grey square.

    PNG is lossless, so the example encodes to exactly what the model saw in training.
    """
    photo = np.full((image_size, image_size, 3), 128, np.uint8) if images is None or not len(images) else images[0]
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(photo, np.uint8)).save(buffer, "PNG")
    return pd.DataFrame({"image_base64": [base64.b64encode(buffer.getvalue()).decode()]})
