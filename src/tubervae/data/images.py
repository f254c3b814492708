"""Reading, checking and shrinking tuber photos.

Every photo goes through `inspect_image` once, at ingestion. The rules, also listed in
the README, are:

| what is found                         | rule                                              |
|---------------------------------------|---------------------------------------------------|
| not an image, unreadable, truncated   | reject                                            |
| grayscale / 1-bit / 16-bit / float    | reject: colour carries skin tone and greening     |
| RGBA, LA-free palette (P), CMYK       | convert to RGB (alpha composited on black)        |
| RGB 8-bit, 640×480                    | accept as is                                      |
| another size, at least `MIN_SIDE` px  | `wrong_size: resize`: centre-crop to 4:3, resize  |
|                                       | `wrong_size: reject`: reject                      |
| smaller than `MIN_SIDE` px            | reject                                            |
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

PHOTO_SIZE = (640, 480)  # (width, height) of the thesis's photos
MIN_SIDE = 64
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
CONVERTIBLE_MODES = {"RGBA", "P", "PA", "CMYK", "RGBX", "YCbCr"}
REJECTED_MODES = {"L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class Inspection:
    """What ingestion decided about one file."""

    status: str  # "accepted", "converted" or "rejected"
    reason: str
    image: Image.Image | None = None  # the RGB 640×480 image to store, None when rejected


def _reject(reason: str) -> Inspection:
    return Inspection("rejected", reason)


def crop_to_aspect(img: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop `img` to the aspect ratio width:height (the tuber is usually central)."""
    w, h = img.size
    target = width / height
    if w / h > target:
        new_w = round(h * target)
        left = (w - new_w) // 2
        return img.crop((left, 0, left + new_w, h))
    new_h = round(w / target)
    top = (h - new_h) // 2
    return img.crop((0, top, w, top + new_h))


def inspect_image(path: str | Path, *, wrong_size: str = "resize") -> Inspection:
    """Open a photo and apply the ingestion rules in the module docstring."""
    if wrong_size not in ("resize", "reject"):
        raise ValueError(f"wrong_size must be 'resize' or 'reject', got {wrong_size!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decodes everything: truncated files fail here, not later
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return _reject(f"not an image: {type(exc).__name__}")
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc).lower()
        kind = "truncated" if "truncat" in message or "broken" in message else "unreadable"
        return _reject(f"{kind}: {exc}")
    notes = []
    if img.mode in REJECTED_MODES:
        return _reject(f"colour mode {img.mode}: single-channel or 16-bit images carry no colour")
    if img.mode in CONVERTIBLE_MODES:
        notes.append(f"converted {img.mode} to RGB")
        if img.mode in ("RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
        else:
            img = img.convert("RGB")
    elif img.mode != "RGB":
        return _reject(f"colour mode {img.mode} is not supported")
    if img.size != PHOTO_SIZE:
        if min(img.size) < MIN_SIDE:
            return _reject(f"too small: {img.size[0]}x{img.size[1]} (need at least {MIN_SIDE} px a side)")
        if wrong_size == "reject":
            return _reject(f"wrong size: {img.size[0]}x{img.size[1]}, expected {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}")
        notes.append(f"resized from {img.size[0]}x{img.size[1]}")
        img = crop_to_aspect(img, *PHOTO_SIZE).resize(PHOTO_SIZE, Image.Resampling.LANCZOS)
    if notes:
        return Inspection("converted", "; ".join(notes), img)
    return Inspection("accepted", "", img)


def centre_square(img: Image.Image, crop_fraction: float) -> Image.Image:
    """The central square whose side is `crop_fraction` of the photo's shorter side."""
    if not 0 < crop_fraction <= 1:
        raise ValueError(f"crop_fraction must be in (0, 1], got {crop_fraction!r}")
    w, h = img.size
    side = max(1, round(min(w, h) * crop_fraction))
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def load_model_input(path_or_image, *, crop_fraction: float, image_size: int) -> np.ndarray:
    """A photo (path, PIL image or H×W×3 array) as the models see it: uint8 (size, size, 3).

    Centre crop then area-averaging resize (thesis §3.2): the model's capacity goes to
    the tuber, not the tray.
    """
    if isinstance(path_or_image, np.ndarray):
        array = path_or_image
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"an image array must be H×W×3 RGB, got shape {array.shape}")
        if array.dtype != np.uint8:
            if np.issubdtype(array.dtype, np.floating) and np.nanmax(array) <= 1.0:
                array = np.clip(np.nan_to_num(array) * 255.0 + 0.5, 0, 255)
            array = array.astype(np.uint8)
        img = Image.fromarray(array, "RGB")
    elif isinstance(path_or_image, Image.Image):
        img = path_or_image.convert("RGB")
    else:
        with Image.open(path_or_image) as opened:
            if opened.format == "JPEG":
                # Decode at a reduced scale when the crop stays at least twice the target size.
                scale = 1
                while scale < 8 and min(opened.size) * crop_fraction / (2 * scale) >= 2 * image_size:
                    scale *= 2
                opened.draft("RGB", (opened.size[0] // scale, opened.size[1] // scale))
            img = opened.convert("RGB")
    square = centre_square(img, crop_fraction)
    return np.asarray(square.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.uint8)


def list_images(folder: str | Path) -> list[Path]:
    """All files under `folder` with an image suffix, in a stable order."""
    folder = Path(folder)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
