"""The `tubervae` command (`tubervae.cli`): what it does around every stage it runs."""

from __future__ import annotations

import importlib.util

import pytest

from tubervae import cli


def test_every_command_names_the_module_it_runs():
    commands = {name.removeprefix("cmd_") for name in vars(cli) if name.startswith("cmd_")}
    assert set(cli.COMMAND_MODULES) == commands
    for module in cli.COMMAND_MODULES.values():
        assert importlib.util.find_spec(module) is not None, module


@pytest.mark.parametrize("fails", [False, True])
def test_a_command_runs_with_its_libraries_frozen_and_freezes_again_on_the_way_out(tmp_path, monkeypatch, fails):
    """The command's module is imported, then `gc.freeze()`, then the command runs; on the way out, whether it
    succeeded or not, `gc.freeze()` again, so the interpreter's exit walks none of it."""
    events = []
    import_module = cli.importlib.import_module
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: events.append(name) or import_module(name))
    monkeypatch.setattr(cli.gc, "freeze", lambda: events.append("freeze"))

    def source(args, params):
        events.append("run")
        if fails:
            raise ValueError("the photos folder is gone")

    monkeypatch.setattr(cli, "cmd_source", source)
    (tmp_path / "params.yaml").write_text("data:\n  source: synthetic\n")
    assert cli.main(["--root", str(tmp_path), "source"]) == (1 if fails else 0)
    assert events == ["tubervae.stages.source", "freeze", "run", "freeze"]
