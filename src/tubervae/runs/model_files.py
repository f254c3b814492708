"""The files of a logged model, by their SHA-256: what was logged is what loads, or nothing does.

A logged model is a folder (MLmodel, the model code file, the weights, the config and rule, the
environment files). Its digests are a manifest {relative path: SHA-256}, kept as one JSON tag
(`DIGESTS_TAG`) on the logged model when it is logged and on each registered version. Before any
of a model's code runs, a local copy of its folder is checked against the manifest: a changed,
missing or added file, or anything that is not a plain file, is refused in one line naming it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DIGESTS_TAG = "sha256_files"  # the manifest's tag on a logged model and on a registered version
MAX_TAG_LENGTH = 8000  # MLflow's limit on a logged model's tag value (a version's is larger)
PICKLES = (".pkl", ".pickle")


class ModelFilesError(RuntimeError):
    """A model whose files do not match their recorded digests, or that carries none: never loaded."""


def file_digests(folder: str | Path) -> dict[str, str]:
    """{path relative to `folder` (POSIX): SHA-256 hex} of every file under `folder`, sorted by path.

    A link or anything else that is not a regular file or a folder is refused (ModelFilesError).
    """
    folder = Path(folder)
    digests = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ModelFilesError(f"{name}: not a plain file; a model folder holds plain files only")
        if path.is_file():
            digests[name] = _sha256(path)
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(digests: dict[str, str]) -> str:
    """The tag value of `digests`: compact JSON, sorted by path."""
    text = json.dumps(dict(sorted(digests.items())), separators=(",", ":"))
    if len(text) > MAX_TAG_LENGTH:
        raise ModelFilesError(
            f"the model's {len(digests)} files need {len(text)} characters of digests, over the "
            f"{MAX_TAG_LENGTH} a tag holds"
        )
    return text


def parse_manifest(text: str | None, what: str) -> dict[str, str]:
    """The digests a manifest tag holds; ModelFilesError when it is missing or malformed."""
    if text is None:
        raise ModelFilesError(f"{what} carries no file digests ({DIGESTS_TAG} tag), so it is not loaded")
    try:
        digests = json.loads(text)
    except ValueError:
        digests = None
    if not (
        isinstance(digests, dict)
        and digests
        and all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in digests.items())
    ):
        raise ModelFilesError(
            f"{what}: its {DIGESTS_TAG} tag is not a manifest of SHA-256 digests, so it is not loaded"
        )
    return digests


def check_files(folder: str | Path, expected: dict[str, str], what: str) -> None:
    """Refuse `folder` unless its files are exactly `expected` (path: SHA-256): one line naming the first
    file that differs, is missing or was added. A pickle is refused even where the digests match."""
    actual = file_digests(folder)
    for name in sorted(set(actual) | set(expected)):
        if name not in expected:
            raise ModelFilesError(f"{what}: {name} was added after the model was logged: refused, nothing loaded")
        if name not in actual:
            raise ModelFilesError(f"{what}: {name} is missing from the model's files: refused, nothing loaded")
        if actual[name] != expected[name]:
            raise ModelFilesError(
                f"{what}: {name} was changed after the model was logged (SHA-256 {actual[name][:16]}…, "
                f"recorded {expected[name][:16]}…): refused, nothing loaded"
            )
    pickled = [name for name in actual if name.endswith(PICKLES)]
    if pickled:
        raise ModelFilesError(
            f"{what}: {pickled[0]} is a pickled Python object, which tubervae never loads: register the model "
            f"again (it is logged from code now)"
        )
