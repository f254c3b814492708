"""What the stages open alike: the tracker, the paths of their reports, and the label of a model.

Not a stage: the stages that log to MLflow import it (the stages never import each other).
"""

from __future__ import annotations

from pathlib import Path

from tubervae.io import under
from tubervae.runs.tracker import Tracker


def open_tracker(root: str | Path, run_id: str | None, *, create: bool = True) -> Tracker:
    """The project's tracker, with the runs of a killed earlier attempt marked KILLED (not left RUNNING).

    `create=False` for a stage whose runs come from earlier stages: it never makes a new store."""
    tracker = Tracker.open(root, run_id, create=create)
    tracker.mark_stale_runs_killed()
    return tracker


def project_paths(root: str | Path, *paths: str | Path) -> list[Path]:
    """Each of `paths` read from the project folder `root` (`tubervae.io.under`)."""
    return [under(root, p) for p in paths]


def beside(root: str | Path, path: str | Path | None, out_dir: Path, default: str) -> Path:
    """`path` in the project when given, else `default` (e.g. "metrics/udr.json", "plots") in the reports
    folder that holds `out_dir`: where DVC reads every stage's metrics and plot data."""
    return under(root, path) if path else Path(out_dir).parent / default


def model_label(family: str, setting, seed) -> str:
    """A model as the figures name it: family, setting, seed (`beta_vae 4 s0`)."""
    return f"{family} {setting} s{seed}"


def model_labels(models) -> list[str]:
    """`model_label` of every row of a models table (columns family, setting, seed)."""
    return [model_label(f, s, d) for f, s, d in zip(models.family, models.setting, models.seed)]


# What tells one setting from another (UDR's groups): a guided family's λ too.
SETTING_COLUMNS = ["family", "beta", "c_max", "guide_weight"]


def setting_groups(models) -> list[tuple]:
    """Each model's setting, as UDR groups them (a table without `guide_weight`, from before guidance: λ = 0)."""
    guide_weight = models["guide_weight"] if "guide_weight" in models else [0.0] * len(models)
    return list(zip(models.family, models.beta, models.c_max, guide_weight))


def excluded_components(models) -> list[tuple[int, ...]]:
    """Per model, the components UDR leaves out: a guided run's `guided_component` (its params), none otherwise."""
    guided = models["guided_component"] if "guided_component" in models else [-1] * len(models)
    return [(int(c),) if c >= 0 else () for c in guided]
