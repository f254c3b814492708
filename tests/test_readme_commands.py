"""Every command in the documentation's shell blocks runs as written: a cheap smoke form of each.

The ```bash blocks of README.md and of every page under docs/ are split into simple commands
(continuation lines joined, comments dropped, `&&`, `;` and `|` split). Each is checked without
running it:

- `make T …`: `make -n T …` succeeds (the target exists, its recipe expands);
- `tubervae …`, `dvc …`, `mlflow …`: the program is in the environment and its own parser
  accepts the arguments (subcommands, options, values);
- those programs only after the block activated the environment (`source .venv/bin/activate`),
  never as `.venv/bin/dvc`: `dvc repro` runs the stages' `tubervae` from PATH, which only the
  activation sets;
- anything else (`git`, `curl`, `ls`, …) is a program found on PATH or a shell builtin.

Inline `tubervae …` commands in the text of those pages go through the same parser. The quick
read-only commands of the README (`dvc metrics show`, `dvc status`) run as written, in a new
shell whose PATH lacks the environment until the block activates it. Every relative link of
README.md, docs/ and benchmarks/README.md leads to a file or folder of the project.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

PROJECT = Path(__file__).resolve().parents[1]
README = PROJECT / "README.md"
# The pages whose commands are checked: the README and every page of docs/ (results/ included).
PAGES = [README, *sorted((PROJECT / "docs").rglob("*.md"))]
# The pages whose links are checked.
LINKED_PAGES = [*PAGES, PROJECT / "benchmarks" / "README.md"]
BIN = Path(sys.executable).parent
VENV_PROGRAMS = ("tubervae", "dvc", "mlflow")
BUILTINS = {"cd", "export", "source", ".", "echo", "test"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def simple_commands(block: str) -> list[list[str]]:
    """The block's simple commands as word lists, environment assignments in front removed."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|"):
                while words and ASSIGNMENT.match(words[0]):
                    words.pop(0)
                if words:
                    commands.append(words)
                words = []
            else:
                words.append(token)
    return commands


def page_name(page: Path) -> str:
    return page.relative_to(PROJECT).as_posix()


def page_commands(page: Path) -> list[tuple[int, list[str], bool]]:
    """(block number, words, environment activated earlier in the block) for every command of a page."""
    found = []
    for number, block in enumerate(bash_blocks(page.read_text())):
        activated = False
        for words in simple_commands(block):
            found.append((number, words, activated))
            if words[0] in ("source", ".") and words[1:] == [".venv/bin/activate"]:
                activated = True
    return found


def readme_commands() -> list[tuple[int, list[str], bool]]:
    return page_commands(README)


def all_commands() -> list:
    """Every page's commands as test parameters, each named by its page, block and words."""
    return [
        pytest.param(page_name(page), block, words, activated, id=f"{page_name(page)}:{block}:{' '.join(words)[:60]}")
        for page in PAGES
        for block, words, activated in page_commands(page)
    ]


def inline_tubervae_commands() -> list:
    """`tubervae …` spans of every page, the family placeholder `F` filled in.

    `tubervae …` itself and spans with an `<angle>` placeholder are not commands."""
    params = []
    for page in PAGES:
        spans = sorted(set(re.findall(r"`(tubervae [^`…<]+)`", page.read_text())))
        for span in spans:
            words = ["beta_vae" if w == "F" else w for w in shlex.split(span)]
            params.append(pytest.param(page_name(page), words, id=f"{page_name(page)}:{span}"))
    return params


LINK = re.compile(r"\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links() -> list:
    """Every relative `[text](path)` link of the linked pages; web, mail and in-page links left out."""
    params = []
    for page in LINKED_PAGES:
        text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # links in code blocks are text
        for target in sorted(set(LINK.findall(text))):
            if target.startswith(("http://", "https://", "mailto:", "#")):
                continue
            params.append(pytest.param(page_name(page), target, id=f"{page_name(page)}:{target}"))
    return params


def check_click(group: click.Group, args: list[str]) -> None:
    """Resolve subcommands and parse the arguments as click would, without invoking anything."""
    command, name = group, group.name
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        command = command.get_command(click.Context(group), name)
        assert command is not None, f"no command {name!r}"
    command.make_context(name, list(args), resilient_parsing=False)


def check_venv_program(program: str, args: list[str]) -> None:
    assert (BIN / program).is_file(), f"{program} is not installed in {BIN}"
    if program == "tubervae":
        from tubervae import cli

        cli.build_parser().parse_args(args)
    elif program == "dvc":
        from dvc.cli.parser import get_main_parser

        get_main_parser().parse_args(args)
    else:
        from mlflow.cli import cli as mlflow_cli

        check_click(mlflow_cli, args)


QUICK = {("dvc", "metrics", "show"), ("dvc", "status")}


def test_the_readme_has_commands_to_check():
    programs = {words[0] for _, words, _ in readme_commands()}
    assert {"make", "dvc", "tubervae"} <= programs, programs
    everywhere = {words[0] for page in PAGES for _, words, _ in page_commands(page)}
    assert {"make", "dvc", "tubervae", "mlflow"} <= everywhere, everywhere
    assert len(PAGES) > 3 and all(page.is_file() for page in LINKED_PAGES)


def test_quick_readme_commands_run_as_written_in_a_new_shell():
    """A new shell: PATH without the environment's bin folder, the block's own activation, the command."""
    if not (PROJECT / ".venv" / "bin" / "activate").is_file():
        pytest.skip("the project has no .venv (make install makes it)")
    venv_bins = {(PROJECT / ".venv" / "bin").resolve(), BIN.resolve()}
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p).resolve() not in venv_bins
    )
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env.update(PATH=path, DVC_NO_ANALYTICS="1")
    quick = [
        words for _, words, activated in readme_commands() if activated and QUICK & {tuple(words[:2]), tuple(words[:3])}
    ]
    assert quick, "the README has none of the quick commands"
    for words in quick:
        script = f"source .venv/bin/activate && command -v tubervae >/dev/null && {shlex.join(words)}"
        done = subprocess.run(["bash", "-c", script], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{shlex.join(words)}: exit {done.returncode}\n{done.stderr[-2000:]}"
    # Without the activation, as before: the stages' program is not found.
    bare = subprocess.run(["bash", "-c", "command -v tubervae"], cwd=PROJECT, env=env, capture_output=True)
    assert bare.returncode != 0


@pytest.mark.parametrize("page, block, words, activated", all_commands())
def test_documented_command_runs_as_written(page, block, words, activated):
    program, args = words[0], words[1:]
    if program == "make":
        make = subprocess.run(["make", "-n", *args], cwd=PROJECT, capture_output=True, text=True, timeout=60)
        assert make.returncode == 0, f"make -n {' '.join(args)}: {make.stderr}"
        return
    if program in ("source", "."):
        assert (PROJECT / args[0]).is_file(), f"{args[0]} does not exist"
        return
    name = Path(program).name
    if name in VENV_PROGRAMS:
        assert program == name, f"`{program}`: activate the environment and call `{name}` ({page}, block {block})"
        assert activated, f"`{program}` runs only with the environment activated ({page}, block {block})"
        try:
            check_venv_program(name, args)
        except SystemExit as exc:
            assert exc.code == 0 and "--help" in args, f"{' '.join(words)}: the arguments do not parse ({exc.code})"
        return
    assert program in BUILTINS or shutil.which(program), f"{program} is neither a shell builtin nor on PATH"


@pytest.mark.parametrize("page, words", inline_tubervae_commands())
def test_inline_tubervae_commands_parse(page, words):
    from tubervae import cli

    parser = cli.build_parser()
    try:
        parser.parse_args(words[1:])
    except SystemExit as exc:
        if exc.code != 0 and len(words) == 2:
            # `tubervae train` names a subcommand in the text (its options are given elsewhere): it must exist.
            subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
            assert words[1] in subcommands, f"{page}: `{' '.join(words)}` names no subcommand"
            return
        assert exc.code == 0 and "--help" in words, f"{page}: {' '.join(words)} does not parse (exit {exc.code})"


SERVED_PATH = re.compile(r'"path":\s*"([^"]+)"')


def test_the_serving_examples_name_a_photo_of_the_default_data():
    """The `path` of every serving example is a photo that the default raw stage writes (data/raw/images/)."""
    from tubervae.config import load_params
    from tubervae.data import synth_dataset

    n_images = load_params(PROJECT / "params.yaml").data.n_images
    written = {Path(synth_dataset._image_name(i, n_images)).name for i in range(n_images)}
    examples = [(page_name(page), name) for page in PAGES for name in SERVED_PATH.findall(page.read_text())]
    assert examples, "no serving example names a photo"
    for page, name in examples:
        assert name in written, f"{page}: {name!r} is not a photo of the default data ({sorted(written)[:2]} …)"


def test_the_readme_shows_metrics_per_declared_file():
    """`dvc metrics show` alone prints every file in one table, over 1000 columns: the README names files."""
    import yaml

    dvc = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    declared = set()
    for stage in dvc["stages"].values():
        for entry in stage.get("do", stage).get("metrics", []):
            path = next(iter(entry)) if isinstance(entry, dict) else entry
            declared |= {path.replace("${key}", family) for family in ("beta_vae", "beta_tcvae", "cbeta_vae")}
    shown = [words[3:] for _, words, _ in readme_commands() if words[:3] == ["dvc", "metrics", "show"]]
    assert shown and all(len(targets) == 1 for targets in shown), shown
    # a file, or a file in a declared folder (the classify stage's, one file per method)
    assert all(targets[0] in declared or str(Path(targets[0]).parent) in declared for targets in shown), (
        shown,
        declared,
    )


def test_make_plots_and_dvc_plots_show_write_different_pages():
    recipe = subprocess.run(["make", "-n", "plots"], cwd=PROJECT, capture_output=True, text=True, timeout=60).stdout
    (show,) = [line for line in recipe.splitlines() if "dvc plots show" in line]
    out = shlex.split(show)[shlex.split(show).index("--out") + 1]
    assert Path(out).resolve() != (PROJECT / "dvc_plots").resolve()
    text = README.read_text()
    assert f"{out}/index.html" in text and "dvc_plots/index.html" in text


@pytest.mark.parametrize("page, target", relative_links())
def test_relative_links_lead_somewhere(page, target):
    resolved = ((PROJECT / page).parent / target.split("#", 1)[0]).resolve()
    assert resolved.is_relative_to(PROJECT), f"{page}: the link ({target}) leads out of the project"
    assert resolved.exists(), f"{page}: the link ({target}) leads to nothing ({resolved.relative_to(PROJECT)})"
