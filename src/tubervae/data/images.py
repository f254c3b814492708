"""Reading, checking and shrinking tuber photos.

Every photo goes through `inspect_image` once, at ingestion. The rules, also listed in
docs/your-photos.md, are:

| what is found                         | rule                                              |
|---------------------------------------|---------------------------------------------------|
| not an image, unreadable, truncated   | reject                                            |
| more than `Image.MAX_IMAGE_PIXELS`    | reject: decompression bomb guard                  |
| grayscale / 1-bit / 16-bit / float    | reject: colour carries skin tone and greening     |
| colour with more than 8 bits a channel| reject: 8-bit colour photos only                  |
| RGBA, LA-free palette (P), CMYK       | convert to RGB (alpha composited on black)        |
| RGB 8-bit, 640×480                    | accept as is                                      |
| another size, at least `MIN_SIDE` px  | `wrong_size: keep`: accept at its own size (the   |
|                                       | square crop is later taken from it as it is)      |
|                                       | `wrong_size: reject`: reject                      |
| smaller than `MIN_SIDE` px            | reject                                            |

Which entries of a folder reach `inspect_image` is decided by `scan_folder`, which gives
every entry under the folder a decision (its docstring lists the rules); nothing outside
the folder is ever opened.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
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
    image: Image.Image | None = None  # the RGB image to store, None when rejected


def _reject(reason: str) -> Inspection:
    return Inspection("rejected", reason)


def more_than_8_bits(img: Image.Image) -> bool:
    """Whether an opened image, before `load()`, stores more than 8 bits per channel.

    Pillow shows a 16-bit-per-channel colour PNG as mode RGB (or RGBA) and drops the low byte on
    decoding; only the raw mode of its tiles ('RGB;16B') tells. Read before `load()`, which empties them.
    """
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else "")
        if isinstance(rawmode, str) and (";16" in rawmode or ";32" in rawmode):
            return True
    return False


def inspect_image(path: str | Path, *, wrong_size: str = "keep") -> Inspection:
    """Open a photo and apply the ingestion rules in the module docstring."""
    if wrong_size not in ("keep", "reject"):
        raise ValueError(f"wrong_size must be 'keep' or 'reject', got {wrong_size!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            deep = more_than_8_bits(img)
            img.load()  # decodes everything: truncated files fail here, not later
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return _reject(_bomb_reason(path))
    except UnidentifiedImageError as exc:
        return _reject(f"not an image: {type(exc).__name__}")
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc).lower()
        kind = "truncated" if "truncat" in message or "broken" in message else "unreadable"
        return _reject(f"{kind}: {exc}")
    notes = []
    if deep:
        return _reject(f"colour mode {img.mode} with more than 8 bits per channel: 8-bit colour photos only")
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
    converted = bool(notes)  # a size of its own is kept, not converted: the file is copied as it is
    if img.size != PHOTO_SIZE:
        if min(img.size) < MIN_SIDE:
            return _reject(f"too small: {img.size[0]}x{img.size[1]} (need at least {MIN_SIDE} px a side)")
        if wrong_size == "reject":
            return _reject(f"wrong size: {img.size[0]}x{img.size[1]}, expected {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}")
        notes.append(f"kept at {img.size[0]}x{img.size[1]}")
    return Inspection("converted" if converted else "accepted", "; ".join(notes), img)


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


def _bomb_reason(path: str | Path) -> str:
    size = _header_size(path)
    what = f"{size[0]}×{size[1]} pixels" if size else "more pixels than allowed"
    return f"image of {what} exceeds the limit of {Image.MAX_IMAGE_PIXELS} pixels (decompression bomb guard)"


def _header_size(path: str | Path) -> tuple[int, int] | None:
    """Width and height read from the header alone, without Pillow's pixel-count guard.

    Pillow's `DecompressionBombError` keeps only the pixel count, so the header is read
    again the way `Image.open` identifies a file (same plugin registry), minus the check;
    no pixel data is decoded. None when no plugin reads it.
    """
    Image.init()
    try:
        with open(path, "rb") as fp:
            prefix = fp.read(16)
            for fmt in Image.ID:
                factory, accept = Image.OPEN[fmt]
                verdict = not accept or accept(prefix)
                if not verdict or isinstance(verdict, str):
                    continue
                fp.seek(0)
                try:
                    return tuple(factory(fp, str(path)).size)
                except Exception:  # any plugin failure means "try the next one"
                    continue
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class FolderEntry:
    """One entry found under a photo folder, and what ingestion does with it."""

    source: Path  # where it was found: the folder's resolved root / relative path (not resolved further)
    read_from: Path | None  # the file to open: inside the root, links resolved; None when it is not read
    status: str  # "" = a candidate photo for `inspect_image`; else "skipped" or "rejected"
    reason: str = ""

    @property
    def has_image_suffix(self) -> bool:
        return self.source.suffix.lower() in IMAGE_SUFFIXES


def _inside(path: str | Path, root: Path) -> bool:
    return Path(path).is_relative_to(root)


def _classify(path: Path, root: Path) -> FolderEntry:
    """The decision for one non-directory entry (or a link to a directory) under `root`."""
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError as exc:  # vanished or unreadable while walking
        return FolderEntry(path, None, "rejected", f"unreadable: {exc.strerror}")
    real = Path(os.path.realpath(path))  # resolves links without opening anything
    if not _inside(real, root):
        return FolderEntry(path, None, "rejected", "link leads outside the folder: not followed")
    try:
        info = os.stat(real)  # `real` has no link left in it, except in a loop
    except FileNotFoundError:
        return FolderEntry(path, None, "rejected", "broken link" if is_link else "unreadable: vanished")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return FolderEntry(path, None, "rejected", "link loop")
        return FolderEntry(path, None, "rejected", f"unreadable: {exc.strerror}")
    if stat.S_ISDIR(info.st_mode):  # only a link can get here: real folders are walked
        return FolderEntry(path, None, "skipped", "link to a folder inside the folder: not walked")
    if not stat.S_ISREG(info.st_mode):
        return FolderEntry(path, None, "rejected", "not a regular file (fifo, socket or device)")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return FolderEntry(path, None, "skipped", "not an image suffix")
    return FolderEntry(path, real, "")


def scan_folder(folder: str | Path) -> list[FolderEntry]:
    """Every entry under `folder` with its decision, sorted by path; nothing is opened.

    Real sub-folders are walked, not listed; every other entry gets one `FolderEntry`:

    | entry                                            | status     | reason                                     |
    |--------------------------------------------------|------------|--------------------------------------------|
    | file with an image suffix, inside the folder     | "" (read)  | `inspect_image` decides                    |
    | link to such a file inside the folder            | "" (read)  | the target is read; the link's path labels |
    | file without an image suffix (README.txt)        | skipped    | not an image suffix                        |
    | link to a folder inside the folder               | skipped    | not walked (its photos are read where they |
    |                                                  |            | are; walking it would count them twice)    |
    | link leading outside (file or folder)            | rejected   | link leads outside the folder: not followed|
    | broken link / link loop                          | rejected   | broken link / link loop                    |
    | fifo, socket, device                             | rejected   | not a regular file                         |
    | folder that cannot be listed                     | rejected   | unreadable folder: ...                     |

    "Outside" is decided on `os.path.realpath` of the entry against the folder's resolved
    root, before anything is opened, and `read_from` is that resolved path, so no link is
    followed out of the folder, neither to read nor to copy. Links to folders are never
    walked (`os.walk(followlinks=False)`), whichever way they point.
    """
    root = Path(os.path.realpath(folder))
    entries: list[FolderEntry] = []

    def unreadable_folder(exc: OSError) -> None:
        entries.append(FolderEntry(Path(exc.filename or root), None, "rejected", f"unreadable folder: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder, followlinks=False):
        for name in dirnames:  # real folders are walked next; links to folders are entries
            if os.path.islink(os.path.join(dirpath, name)):
                entries.append(_classify(Path(dirpath, name), root))
        entries.extend(_classify(Path(dirpath, name), root) for name in filenames)
    return sorted(entries, key=lambda e: e.source)


def shown_name(path: str | Path) -> str:
    """A file name as reports print it: valid UTF-8 as it is, any other byte escaped (`gro\\xdf.jpg` for
    a Latin-1 'ß'). Python reads such a name with lone surrogates, which no UTF-8 file can hold."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def source_folder(source: str, root: str | Path = ".") -> Path:
    """The folder a `data.source` setting names, resolved: a relative path is read from the project folder
    `root`, never from the working folder, and `~` is the user's home."""
    return (Path(root) / Path(source).expanduser()).resolve()


def folder_fingerprint(folder: str | Path, extra_files: tuple[str, ...] = ("factors.csv",)) -> dict:
    """What an import of `folder` would read, condensed: every entry's name and decision (`scan_folder`),
    the content of every file it would inspect, and of `extra_files` at the top (the photos' factors).

    Adding, removing, renaming or changing a photo or factors.csv changes `sha256`; touching a file
    without changing it, or reading the folder from another place, does not.
    """
    root = Path(os.path.realpath(folder))
    digest = hashlib.sha256()
    n_read = n_bytes = 0
    entries = scan_folder(root)
    for entry in entries:
        digest.update(f"{shown_name(entry.source.relative_to(root))}\0{entry.status}\0{entry.reason}\0".encode())
        read = entry.read_from
        if read is None and entry.source.parent == root and entry.source.name in extra_files:
            read = entry.source if entry.source.is_file() and not entry.source.is_symlink() else None
        if read is not None:
            with open(read, "rb") as fh:
                content = hashlib.file_digest(fh, "sha256")
            digest.update(content.digest())
            n_read += 1
            n_bytes += read.stat().st_size
    return {"entries": len(entries), "files_read": n_read, "bytes": n_bytes, "sha256": digest.hexdigest()}


def list_images(folder: str | Path) -> list[Path]:
    """The files under `folder` that ingestion inspects (image suffix, inside the folder), in a stable order."""
    return [e.source for e in scan_folder(folder) if e.read_from is not None]
