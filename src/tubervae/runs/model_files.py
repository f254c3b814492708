"""The files of a logged model, by their SHA-256: what was logged is what loads, or nothing does.

A logged model is a folder (MLmodel, the model code file, the weights, the config and rule, the
environment files). Its digests are a manifest {relative path: SHA-256}, kept as one JSON tag
(`DIGESTS_TAG`) on the logged model when it is logged and on each registered version. Before any
of a model's code runs, a local copy of its folder is checked against the manifest: a changed,
missing or added file, or anything that is not a plain file, is refused in one line naming it.

Compiled caches (`__pycache__` folders) are not the model's files: Python writes one beside the model
code whenever the code is imported with bytecode writing on (MLflow imports it while logging, and a
user's own `mlflow.pyfunc.load_model` of a store folder imports it in place), and the cache it writes
depends on the moment. So they are left out of the digests, and removed from the local copy after the
check: Python then compiles the checked source, and a cache planted in the store never runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

DIGESTS_TAG = "sha256_files"  # the manifest's tag on a logged model and on a registered version
MAX_TAG_LENGTH = 8000  # MLflow's limit on a logged model's tag value (a version's is larger)
PICKLES = (".pkl", ".pickle")
COMPILED = "__pycache__"  # Python's compiled caches: never a model's file, never loaded from a copy


class ModelFilesError(RuntimeError):
    """A model whose files do not match their recorded digests, or that carries none: never loaded."""


@contextmanager
def no_compiled_caches():
    """Imports within write no compiled cache (`sys.dont_write_bytecode`), so logging a model from code
    leaves none in its folder; the setting is put back after."""
    before = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = before


def file_digests(folder: str | Path) -> dict[str, str]:
    """{path relative to `folder` (POSIX): SHA-256 hex} of every file under `folder`, sorted by path,
    less the compiled caches (`__pycache__`).

    A link or anything else that is not a regular file or a folder is refused (ModelFilesError).
    """
    folder = Path(folder)
    digests = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise ModelFilesError(f"{name}: not a plain file; a model folder holds plain files only")
        if _compiled(name):
            continue
        if path.is_file():
            digests[name] = _sha256(path)
    return digests


def _compiled(name: str) -> bool:
    """Whether the relative POSIX path `name` lies in a compiled cache (or is one)."""
    return COMPILED in name.split("/")


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
    file that differs, is missing or was added. A pickle is refused even where the digests match.

    Compiled caches count on neither side (models logged before they were left out recorded one) and are
    removed from `folder` once it has passed, so what loads from it is compiled from the checked source."""
    actual = file_digests(folder)
    expected = {name: digest for name, digest in expected.items() if not _compiled(name)}
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
    _remove_compiled(Path(folder))


def _remove_compiled(folder: Path) -> None:
    """Every compiled cache under `folder` deleted (links are not followed: `file_digests` refused them)."""
    for parent, folders, _ in os.walk(folder):
        if COMPILED in folders:
            shutil.rmtree(Path(parent) / COMPILED)
            folders.remove(COMPILED)
