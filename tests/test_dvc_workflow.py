"""DVC's versioning workflow as the README shows it, on a tiny profile.

Kept whole: it tests no module of the package but the project's DVC files (dvc.yaml, .dvc/config, .gitignore
and the metrics and plots they declare) as a user drives them with dvc and git; its slow tests share the helpers
that copy the project and run those commands (`copy_project`, `env_for`, `sh`).

A git repository made of the project's files (what `git ls-files` would commit, with the
working tree's content) reproduces the data stages (raw, preprocess, evalset) with 40
simulated photos, commits `dvc.lock`, and `dvc push`es to the default remote of
`.dvc/config` (a folder beside the clone). A second `git clone` then runs `dvc pull` and
must hold byte-identical `data/raw`, `data/processed` and `data/evalset`, with nothing left
to reproduce for those stages.
"""

from __future__ import annotations

import configparser
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_command

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = {
    "data": {"n_images": 40, "workers": 1},
    "preprocess": {"image_size": 16, "probe_size": 10, "labelled_per_class": 4},
    "evaluate": {"set_size": 10},
}
DATA_STAGES = ("raw", "preprocess", "evalset")  # every stage whose outputs live in DVC's cache
# `make gpu-smoke-cpu` at test size: `-S` overrides after the two profiles' (OVERRIDES), the last value winning.
# Models are trained and scored in the stage's own process (workers 1): the pools are tested in test_pool.py,
# and starting two more processes per stage beside the other test worker costs seconds for nothing.
TINY_SMOKE = (
    "data.n_images=120 data.workers=1 train.workers=1 evaluate.workers=1 "
    "preprocess.image_size=16 preprocess.probe_size=20 "
    "preprocess.labelled_per_class=10 train.steps=20 train.batch_size=8 train.checkpoint_every=10 train.log_every=10 "
    "train.snapshot_every=0 train.latent_dim=3 search.min_active=0 classify.cnn_steps=5 classify.n_draws=1 "
    "classify.label_sizes=[5,10] evaluate.set_size=60 evaluate.n_points=60 evaluate.n_train=20 evaluate.n_test=20 "
    "evaluate.n_bootstrap=20 evaluate.dci_method=lasso evaluate.sap_method=correlation"
).split()


def project_files() -> list[str]:
    """The files a commit of the working tree would hold (tracked and not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (PROJECT / name).is_file()]


def copy_project(dest: Path) -> Path:
    """The working tree's files (`project_files`) copied under `dest`, without dvc.lock: each run writes its own."""
    for name in project_files():
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, dest / name)
    (dest / "dvc.lock").unlink(missing_ok=True)
    return dest


def env_for(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "GIT_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(tmp / "dvc_site_cache"),
        MPLBACKEND="Agg",
        GIT_AUTHOR_NAME="test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="test",
        GIT_COMMITTER_EMAIL="test@example.com",
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(tmp / "home"),
    )
    return env


def sh(args: list, cwd: Path, env: dict, timeout: float = 120) -> str:
    return run_command([str(a) for a in args], cwd, env=env, timeout=timeout, check=True).stdout


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_default_remote_is_a_folder_outside_the_clone():
    config = configparser.ConfigParser()
    config.read(PROJECT / ".dvc" / "config")
    name = config["core"]["remote"]
    url = config[f"'remote \"{name}\"'"]["url"]
    resolved = (PROJECT / ".dvc" / url).resolve()
    assert "://" not in url and not resolved.is_relative_to(PROJECT), resolved


def test_gitignore_keeps_dvc_lock_and_the_metrics_in_git():
    dvc = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    declared = ["dvc.lock", "reports/data/source.json"]  # the fingerprint of the photos the data came from
    for stage in dvc["stages"].values():
        body = stage.get("do", stage)
        for entry in body.get("metrics", []):
            (path,) = entry if isinstance(entry, dict) else [entry]
            declared.append(path.replace("${key}", "beta_vae"))
    for entry in dvc.get("plots", []):
        spec = next(iter(entry.values())) if isinstance(entry, dict) else {}
        y = (spec or {}).get("y", {})
        declared += list(y) if isinstance(y, dict) else []
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *declared], cwd=PROJECT, capture_output=True, text=True
    ).stdout.split()
    assert not ignored, f"git ignores files DVC compares between commits: {ignored}"
    data = subprocess.run(
        ["git", "check-ignore", "--no-index", "data/raw", "data/processed", "reports/udr/a2a.csv"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert data == ["data/raw", "data/processed", "reports/udr/a2a.csv"]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.slow
def test_commit_push_clone_pull_round_trip(tmp_path):
    env = env_for(tmp_path)
    (tmp_path / "home").mkdir()
    origin = tmp_path / "origin"
    copy_project(origin)
    params = yaml.safe_load((origin / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (origin / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], origin, env)
    sh(["git", "add", "-A"], origin, env)
    sh(["git", "commit", "-q", "-m", "project"], origin, env)

    # The README's workflow: run, commit the lock, push the data.
    sh([BIN / "dvc", "repro", *DATA_STAGES], origin, env, timeout=180)
    sh(["git", "add", "dvc.lock", "reports"], origin, env)  # as the README says
    sh(["git", "commit", "-q", "-m", "a run"], origin, env)
    assert "dvc.lock" in sh(["git", "ls-files"], origin, env).split()
    assert not sh(["git", "status", "--porcelain"], origin, env).strip()  # nothing left untracked
    sh([BIN / "dvc", "push"], origin, env)
    store = tmp_path / "tubervae-dvc-store"  # the default remote: beside the clone
    assert store.is_dir() and any(p.is_file() for p in store.rglob("*"))

    # Another clone gets exactly the same photos and arrays from the remote.
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", origin, clone], tmp_path, env)
    assert not (clone / "data" / "raw").exists()
    sh([BIN / "dvc", "pull"], clone, env)
    for folder in ("data/raw", "data/processed", "data/evalset", "reports/data"):
        theirs, ours = snapshot(origin / folder), snapshot(clone / folder)
        assert theirs and theirs.keys() == ours.keys(), folder
        assert all(theirs[k] == ours[k] for k in theirs), f"{folder} differs after dvc pull"
    status = sh([BIN / "dvc", "status", *DATA_STAGES], clone, env)
    assert "up to date" in status, status

    # An experiment with one setting changed (`dvc exp run -S`), compared beside the commit in `dvc exp show`.
    sh([BIN / "dvc", "exp", "run", "evalset", "-S", "evaluate.set_size=12", "-n", "bigger-set"], clone, env, 180)
    header, *rows = csv.reader(io.StringIO(sh([BIN / "dvc", "exp", "show", "--csv", "--no-pager"], clone, env)))
    names = ("params.yaml:evaluate.set_size", "evaluate.set_size")  # prefixed only when ambiguous
    assert any(n in header for n in names), header
    column = next(header.index(n) for n in names if n in header)
    sizes = {row[0]: row[column] for row in rows}
    assert sizes.get("bigger-set") == "12" and "10" in sizes.values(), sizes


# ------------------------------------------------------------------ metrics and plots are DVC-shaped


def leaves(obj, prefix=""):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from leaves(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), obj


def search_summary() -> dict:
    trial = {
        "state": "COMPLETE",
        "params": {"beta": 2.0, "c_max": 8.0},
        "beta_norm": 0.01,
        "n_active": 3.0,
        "infeasible_reason": "",
        "udr_per_seed": [0.5, 0.6],
        "mlflow_run_id": "abc",
        "seed_run_ids": ["a", "b"],
        "fail_reason": "",
    }
    trials = [
        {**trial, "number": 0, "value": 0.4, "feasible": True},
        {**trial, "number": 1, "value": 0.7, "feasible": False},
        {**trial, "number": 2, "state": "FAIL", "value": None, "feasible": None, "fail_reason": "boom"},
        {**trial, "number": 3, "value": 0.6, "feasible": True},
    ]
    return {
        "family": "cbeta_vae",
        "study": "cbeta_vae-2000steps-3seeds-lasso-0123456789",
        "objective": "median within-setting UDR (lasso, paper)",
        "pruner": "none",
        "n_complete": 3,
        "n_pruned": 0,
        "n_feasible": 2,
        "best_value": 0.6,
        "best_params": {"beta": 2.0, "c_max": 8.0},
        "best_trial": 3,
        "best_n_active": 3.0,
        "best_mlflow_run_id": "abc",
        "trials": trials,
    }


def test_metrics_files_hold_numbers_only():
    from tubervae.stages import evaluate, search, udr

    udr_summary = {
        "similarity": "lasso",
        "aggregate": "paper",
        "n_models": 4,
        "families": {
            "beta_vae": {
                "best_param": "2.61",
                "best_udr": 0.6,
                "best_n_top": 3.0,
                "mean_udr_within": 0.5,
                "mean_udr_a2a": 0.4,
            }
        },
    }
    rho = {"rho": 0.5, "low": 0.1, "high": 0.8, "n": 4}
    evaluate_summary = {
        "n_models": 4,
        "n_points": 100,
        "scored_on": "evaluation set",
        "factors": ["x", "spot_area"],
        "best_defect_rho": {"spot_area": 0.4},
        "most_captured": {"captured": 1, "captured_informative": 2},
        "correlations": {"udr_within_lasso": {m: rho for m in evaluate.SUPERVISED}},
        "champion": {
            "run_id": "abc",
            **{m: 0.1 for m in evaluate.SUPERVISED},
            "rank_by_mig": 2,
            "rank_by_dci_d": 1,
            "captured": 0,
            "captured_informative": 1,
            "mig_per_factor": {"x": 0.05, "spot_area": 0.01},
            "defects": {"spot_area": {"component": 3, "rho": 0.4}},
        },
    }
    written = {
        "search": search.search_metrics(search_summary()),
        "udr": udr.udr_metrics(udr_summary),
        "evaluate": evaluate.evaluate_metrics(evaluate_summary, "udr_within_lasso"),
    }
    for name, metrics in written.items():
        values = dict(leaves(metrics))
        assert values, name
        text = {k: v for k, v in values.items() if isinstance(v, (str, bool, list)) or v is None}
        assert not text, f"{name} metrics hold more than numbers: {text}"
    assert written["search"]["best_udr"] == 0.6 and written["search"]["best"]["best_c_max"] == 8.0
    assert written["udr"]["best"]["beta_vae"] == 0.6 and written["udr"]["mean_a2a"]["beta_vae"] == 0.4
    assert written["evaluate"]["rho_udr"]["mig"] == 0.5 and written["evaluate"]["champion_rank"]["rank_by_mig"] == 2
    assert written["evaluate"]["most_captured"] == {"captured": 1, "captured_informative": 2}
    assert written["evaluate"]["champion_rank"]["captured_informative"] == 1


def table_width(path: str, numbers: dict) -> int:
    """The width of `dvc metrics show <path>`'s table: the path, two spaces, then one column per flattened
    key as wide as its name or its value (rounded to 5 digits), four spaces apart (DVC 3's layout)."""
    cells = [max(len(k), len(str(round(v, 5)) if isinstance(v, float) else str(v))) for k, v in leaves(numbers)]
    return len(path) + 2 + sum(cells) + 4 * (len(cells) - 1)


def declared_metrics(stage: str) -> list[str]:
    body = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"][stage]
    return [next(iter(entry)) if isinstance(entry, dict) else entry for entry in body.get("do", body)["metrics"]]


def test_each_metrics_file_prints_within_120_columns_and_is_declared():
    """`dvc metrics show <file>` for every file a stage writes fits a 120-column terminal, with the longest
    family name, four families, every defect and every classifier's and the gate's numbers; the files are
    exactly those dvc.yaml declares (a folder for classify, whose files are one per method)."""
    from types import SimpleNamespace

    from tubervae.classify import grading
    from tubervae.data.synth_factors import FACTOR_NAMES
    from tubervae.io import metrics_files
    from tubervae.stages import evaluate, search, udr

    families = ["beta_vae", "beta_tcvae", "cbeta_vae", "guided_beta_vae"]
    value = -0.123456789  # as wide as a number gets once rounded
    best = {
        "best_param": "2.61",
        "best_udr": value,
        "best_n_top": 10.0,
        "mean_udr_within": value,
        "mean_udr_a2a": value,
    }
    udr_summary = {"n_models": 1000, "families": dict.fromkeys(families, best)}
    champion = {m: value for m in evaluate.SUPERVISED} | dict.fromkeys(evaluate.CHAMPION_RANK, 100)
    evaluate_summary = {
        "n_models": 1000,
        "correlations": {"udr_within_lasso": {m: {"rho": value} for m in evaluate.SUPERVISED}},
        "best_defect_rho": dict.fromkeys([f for f in FACTOR_NAMES if f in ("spot_area", "greening", "rot")], value),
        "most_captured": {"captured": 10, "captured_informative": 10},
        "champion": champion,
    }
    figures = {"balanced_accuracy": value, "accuracy": value, "roc_auc": value, "majority_accuracy": value}
    alternatives = {m: {"balanced_accuracy": value} for m in ("logistic", "gradient_boosting", "pixel_cnn")}
    fitted = SimpleNamespace(
        threshold_metrics=figures,
        any_rule_metrics=figures,
        alternatives=alternatives,
        any_rule=SimpleNamespace(rules=[None] * 3),
    )
    gate = {"promoted": 1.0, "balanced_accuracy": value, "low": value, "high": value}
    numbers = grading.headline_metrics(fitted, gate=gate | {"champion_balanced_accuracy": value})
    guided = {**search_summary(), "family": "guided_beta_vae", "best_params": {"beta": value, "guide_weight": value}}
    files = {}
    for family in families:
        summary = {**guided, "family": family}
        files |= {
            f"reports/metrics/{k}": v
            for k, v in metrics_files(search.search_metrics(summary), f"search_{family}").items()
        }
    files |= {f"reports/metrics/{k}": v for k, v in metrics_files(udr.udr_metrics(udr_summary), "udr").items()}
    headline = evaluate.evaluate_metrics(evaluate_summary, "udr_within_lasso")
    files |= {f"reports/metrics/{k}": v for k, v in metrics_files(headline, "evaluate").items()}
    classify_files = metrics_files(numbers, "classify", prefix="")
    files |= {f"reports/metrics/classify/{k}": v for k, v in classify_files.items()}
    widths = {path: table_width(path, values) for path, values in files.items()}
    assert max(widths.values()) <= 120, {p: w for p, w in widths.items() if w > 120}
    assert all(files.values()), [p for p, v in files.items() if not v]  # no empty table

    declared = {stage: declared_metrics(stage) for stage in ("search", "udr", "evaluate", "classify")}
    search_files = {p.replace("${key}", family) for p in declared["search"] for family in families}
    assert search_files == {p for p in files if p.startswith("reports/metrics/search_")}
    for stage in ("udr", "evaluate"):
        assert set(declared[stage]) == {p for p in files if p.startswith(f"reports/metrics/{stage}")}, stage
    assert declared["classify"] == ["reports/metrics/classify"]


def test_search_history_keeps_the_running_best_of_feasible_trials():
    from tubervae.stages import search

    table = search.history_table(search_summary())
    assert table.trial.tolist() == [0, 1, 3]  # complete trials only
    assert table.best_udr.tolist() == [0.4, 0.4, 0.6]  # the infeasible 0.7 never counts


def written_columns() -> dict[str, set[str]]:
    """The columns each stage writes into the plot data files (label efficiency: the classify stage's)."""
    import pandas as pd

    from tubervae.stages import evaluate, search, udr

    frame = pd.DataFrame(
        {
            "family": ["beta_vae"] * 2,
            "beta": [2.0, 2.0],
            "c_max": [0.0, 0.0],
            "guide_weight": [0.0, 0.0],
            "setting": ["2", "2"],
            "beta_norm": [0.01, 0.01],
            "udr_within": [0.5, 0.6],
            "udr_a2a": [0.4, 0.3],
            "n_active": [3, 4],
            "feasible": [True, True],
            "seed": [0, 1],
        }
    )
    history = set(search.history_table(search_summary()).columns)
    families = yaml.safe_load((PROJECT / "params.yaml").read_text())["search"]["spaces"]
    columns = {f"reports/plots/search_{family}.csv": history for family in families}
    columns["reports/plots/udr_vs_beta.csv"] = set(udr.settings_table(frame).columns)
    columns["reports/plots/herd.csv"] = set(udr.HERD_COLUMNS) - {"run_id"}
    columns["reports/plots/udr_vs_supervised.csv"] = set(evaluate.PLOT_COLUMNS)
    return columns


def stage_outputs(dvc: dict) -> set[str]:
    families = yaml.safe_load((PROJECT / "params.yaml").read_text())["search"]["spaces"]
    paths = set()
    for stage in dvc["stages"].values():
        keys = families if "foreach" in stage else [None]
        body = stage.get("do", stage)
        for key in keys:
            for section in ("outs", "metrics", "plots"):
                for entry in body.get(section, []):
                    path = next(iter(entry)) if isinstance(entry, dict) else entry
                    paths.add(path.replace("${key}", key) if key else path)
    return paths


def test_top_level_plots_draw_declared_outputs_with_their_columns():
    dvc = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    outputs, columns = stage_outputs(dvc), written_columns()
    assert len(dvc["plots"]) >= 5
    for entry in dvc["plots"]:
        ((title, spec),) = entry.items()
        template = PROJECT / ".dvc" / "plots" / f"{spec['template']}.json"
        assert template.is_file(), f"{title}: no template {template}"
        content = template.read_text()
        assert "<DVC_METRIC_DATA>" in content and "<DVC_METRIC_X>" in content and "<DVC_METRIC_Y>" in content
        group = yaml.safe_load(content)["encoding"]["color"]["field"]
        for path, y in spec["y"].items():
            assert path in outputs, f"{title}: {path} is no stage's output"
            if path in columns:  # the classify stage's table is checked by its own tests
                assert {spec["x"], y, group} <= columns[path], f"{title}: {path} lacks x, y or {group}"


# ------------------------------------------------------------------ the README's DVC commands, run


REFERENCE = PROJECT / "docs" / "results" / "default-profile"  # a make run's reports, kept in git


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.slow
def test_metrics_and_plots_commands_read_a_runs_reports_across_commits(tmp_path):
    """`dvc metrics show/diff`, `dvc plots show/diff` and `dvc exp show` as the README runs them, on the
    reference run's metrics and plot data committed, then one number changed as another run would."""
    env = env_for(tmp_path)
    (tmp_path / "home").mkdir()
    repo = tmp_path / "repo"
    for name in [n for n in project_files() if n in ("dvc.yaml", "params.yaml") or n.startswith(".dvc/")]:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, repo / name)
    shutil.copytree(REFERENCE / "metrics", repo / "reports" / "metrics")
    shutil.copytree(REFERENCE / "plots", repo / "reports" / "plots")
    (repo / "reports" / "classify").mkdir()
    shutil.copy2(REFERENCE / "classify" / "label_efficiency.csv", repo / "reports" / "classify")
    sh(["git", "init", "-q", "-b", "main"], repo, env)
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-q", "-m", "a run"], repo, env)

    shown = sh([BIN / "dvc", "metrics", "show", "--md"], repo, env)
    assert "reports/metrics/udr.json" in shown and "n_models" in shown
    assert max(len(line) for line in shown.splitlines()) < 2000, "metrics too wide to read"

    metrics_path = repo / "reports" / "metrics" / "udr.json"
    udr_metrics = json.loads(metrics_path.read_text())
    before = udr_metrics["n_models"]
    udr_metrics["n_models"] = before + 1
    metrics_path.write_text(json.dumps(udr_metrics))
    diff = sh([BIN / "dvc", "metrics", "diff", "HEAD", "--md"], repo, env)
    (row,) = [line for line in diff.splitlines() if "udr.json" in line and "n_models" in line]
    assert [cell.strip() for cell in row.strip("|").split("|")][2:5] == [str(before), str(before + 1), "1"]

    sh([BIN / "dvc", "plots", "show", "-o", tmp_path / "show"], repo, env)
    page = (tmp_path / "show" / "index.html").read_text()
    dvc = yaml.safe_load((PROJECT / "dvc.yaml").read_text())
    titles = [next(iter(entry)) for entry in dvc["plots"]]
    assert all(json.dumps(title)[1:-1] in page for title in titles), "a declared plot is missing from the page"
    sh([BIN / "dvc", "plots", "diff", "HEAD", "-o", tmp_path / "diff"], repo, env)
    assert (tmp_path / "diff" / "index.html").stat().st_size > 0

    table = sh([BIN / "dvc", "exp", "show", "--csv", "--no-pager"], repo, env)
    header = table.splitlines()[0].split(",")
    assert "reports/metrics/udr.json:n_models" in header or "n_models" in header, header
    assert "…" not in table


# ------------------------------------------------------------------ the photo folder is an input


def tiny_photos(folder: Path, names: list[str], value: int = 120) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (96, 72), (value, value // 2, 40)).save(folder / name)


@pytest.mark.slow
def test_dvc_reimports_exactly_when_the_photo_folder_changes(tmp_path):
    """data.source is a folder of photos: adding, changing or removing a photo or factors.csv makes raw stale
    (`dvc status` names it once the source stage ran) and `dvc repro` re-imports; `dvc add` of the folder,
    touching its files or nothing at all does not."""
    env = env_for(tmp_path)
    (tmp_path / "home").mkdir()
    root = tmp_path / "project"
    root.mkdir()
    shutil.copyfile(PROJECT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(PROJECT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"].update(source="photos", workers=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    photos = root / "photos"
    tiny_photos(photos / "good", ["a.png", "b.png"])
    tiny_photos(photos / "bad", ["c.png"], value=60)
    sh([BIN / "dvc", "init", "--no-scm", "-q"], root, env)
    dvc = BIN / "dvc"

    def imported() -> list[str]:
        return sorted(pd.read_csv(root / "reports/data/ingest.csv", keep_default_na=False).source)

    first = sh([dvc, "repro", "raw"], root, env, timeout=240)
    assert "Running stage 'source'" in first and "Running stage 'raw'" in first
    assert imported() == ["bad/c.png", "good/a.png", "good/b.png"]

    def unchanged(why: str) -> None:
        out = sh([dvc, "repro", "raw"], root, env, timeout=240)
        assert "Stage 'raw' didn't change, skipping" in out, f"{why}:\n{out}"
        assert "up to date" in sh([dvc, "status", "raw"], root, env), why

    unchanged("nothing changed")
    for path in photos.rglob("*"):
        os.utime(path)
    unchanged("files touched, not changed")
    sh([dvc, "add", "photos"], root, env)  # the folder versioned by DVC itself: the same photos
    unchanged("dvc add of the folder")

    changes = [
        ("a photo added", lambda: tiny_photos(photos / "good", ["d.png"]), 4),
        ("a photo changed", lambda: tiny_photos(photos / "good", ["d.png"], value=200), 4),
        ("a photo removed", lambda: (photos / "good" / "d.png").unlink(), 3),
        ("factors.csv added", lambda: (photos / "factors.csv").write_text(FACTORS.format(size=1)), 4),
        ("factors.csv changed", lambda: (photos / "factors.csv").write_text(FACTORS.format(size=2)), 4),
    ]
    for what, change, n_entries in changes:  # ingest.csv's lines: the photos, and factors.csv once there
        change()
        sh([dvc, "repro", "source"], root, env)
        status = sh([dvc, "status", "raw"], root, env)
        assert "raw:" in status and "reports/data/source.json" in status, f"{what}:\n{status}"
        out = sh([dvc, "repro", "raw"], root, env, timeout=240)
        # The photos of an earlier import come back from DVC's run cache instead of being imported again.
        assert "Running stage 'raw'" in out or "Stage 'raw' is cached" in out, f"{what}:\n{out}"
        assert len(imported()) == n_entries, what
    assert sorted(pd.read_csv(root / "data/raw/factors.csv")["size"]) == [1.0, 1.0, 2.0]
    unchanged("after the changes")


FACTORS = "file,size\ngood/a.png,{size}\ngood/b.png,1\nbad/c.png,1\n"
