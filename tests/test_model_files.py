"""A logged model's files by their SHA-256, less Python's compiled caches (`tubervae.runs.model_files`)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys

import pytest

from tubervae.runs.model_files import ModelFilesError, check_files, file_digests, no_compiled_caches


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "MLmodel").write_bytes(b"flavors: {}\n")
    (folder / "code.py").write_bytes(b"VALUE = 1\n")
    (folder / "artifacts" / "model.pt").write_bytes(b"weights")
    return folder


def test_digests_are_every_file_by_hand_less_the_compiled_caches(model_folder):
    for cache in (model_folder / "__pycache__", model_folder / "artifacts" / "__pycache__" / "deeper"):
        cache.mkdir(parents=True)
        (cache / "code.cpython-311.pyc").write_bytes(b"compiled")
    assert file_digests(model_folder) == {
        "MLmodel": sha(b"flavors: {}\n"),
        "artifacts/model.pt": sha(b"weights"),
        "code.py": sha(b"VALUE = 1\n"),
    }


def test_a_linked_compiled_cache_is_refused_like_any_link(model_folder, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (model_folder / "__pycache__").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ModelFilesError, match="^__pycache__: not a plain file"):
        file_digests(model_folder)


def test_a_checked_folder_loses_its_compiled_caches_whatever_was_recorded(model_folder):
    recorded = file_digests(model_folder)
    old_style = {**recorded, "__pycache__/code.cpython-311.pyc": sha(b"what was compiled at logging")}
    for cache in (model_folder / "__pycache__", model_folder / "artifacts" / "__pycache__"):
        cache.mkdir()
        (cache / "code.cpython-311.pyc").write_bytes(b"written later, by another import")
    check_files(model_folder, old_style, "model m")  # a cache counts on neither side
    assert not list(model_folder.rglob("__pycache__"))
    assert file_digests(model_folder) == recorded  # the model's own files stay


def test_other_changes_are_still_refused_and_nothing_is_removed_then(model_folder):
    recorded = file_digests(model_folder)
    (model_folder / "__pycache__").mkdir()
    (model_folder / "artifacts" / "extra.pyc").write_bytes(b"not in a cache folder")
    with pytest.raises(ModelFilesError, match=r"^model m: artifacts/extra.pyc was added"):
        check_files(model_folder, recorded, "model m")
    assert (model_folder / "__pycache__").is_dir()


def test_no_compiled_caches_writes_none_and_puts_the_setting_back(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)

    def import_from(folder):
        folder.mkdir()
        (folder / "code_here.py").write_text("VALUE = 2\n")
        spec = importlib.util.spec_from_file_location(f"code_here_{folder.name}", folder / "code_here.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.VALUE

    with no_compiled_caches():
        assert sys.dont_write_bytecode is True
        assert import_from(tmp_path / "inside") == 2
    assert sys.dont_write_bytecode is False
    assert not (tmp_path / "inside" / "__pycache__").exists()
    assert import_from(tmp_path / "outside") == 2
    assert (tmp_path / "outside" / "__pycache__").is_dir()  # what it prevents
