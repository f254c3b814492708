"""Typed settings read from params.yaml, validated before a stage does any work.

Each top-level section of params.yaml maps to one frozen dataclass below. A field's
`metadata` says what is allowed (`choices`, `min`, `max`, `open_min`), so a bad value
stops the stage with a message naming the key, the value and the rule, before any
output is touched.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The vocabulary of the settings: every module that needs one of these lists imports it from here.
# The thesis's order: β-VAE, β-TCVAE, Cβ-VAE; then the label-guided variants (`guided_<family>`): the family's
# loss plus a logistic head that ties latent component GUIDED_COMPONENT to good/bad (models/losses.py).
FAMILIES = ("beta_vae", "beta_tcvae", "cbeta_vae", "guided_beta_vae", "guided_beta_tcvae")
GUIDED_PREFIX = "guided_"
GUIDED_COMPONENT = 0  # the latent component a guided family's head reads (its traversal: what makes a tuber bad)
REC_KINDS = ("bernoulli", "gaussian")
TC_ESTIMATORS = ("stratified", "weighted")
SIMILARITIES = ("lasso", "spearman")
AGGREGATES = ("paper", "reference")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16")
SELECTIONS = ("udr", "job", "centrality")  # register.select: by UDR alone, for the grading job, or the medoid
# search.objective: a trial's value, the median over its seeds of within-setting UDR, of the held-out ELBO
# (photos alone), of the job score (the multi-defect rule on the labelled photos, cross-validated), or of
# MIG on the few photos with measured factors (runs/measured.py)
SEARCH_OBJECTIVES = ("udr", "elbo", "job", "measured_mig")
FUSE_MODES = ("auto", "always", "never")  # auto: a trial's seeds train as one fused model on CUDA
PRUNERS = ("none", "median", "successive_halving", "hyperband")  # Optuna's, judging trials part-way (search.pruner)
IMAGE_SIZES = (16, 32, 64, 128)
SIMULATORS = ("full", "geometry")  # data.simulator: geometry has no defects and one skin tone (data/synth_factors.py)
WRONG_SIZE_POLICIES = ("keep", "reject")  # keep: the square crop is taken from the photo as it is
DCI_METHODS = ("gbt", "gbt_fast", "gbt_regressor", "lasso")  # gbt: the published classifier (evaluation/dci.py)
SAP_METHODS = ("svm", "correlation", "mixed")  # svm: the published LinearSVC(C=0.01) on factor classes
GOOD_FRACTION = 1554 / 8498  # data.good_fraction's default: the thesis's training set, 1554 good, 6944 bad
# Labels per class below which the classify stage and register.select: job warn that their figures are rough.
FEW_LABELS = 20
# Thesis §2.3.1: a component is informative when its KL to the prior exceeds this. The default
# of `udr.kl_threshold`, the one value that UDR, n_active, classify and the plots all read.
INFORMATIVE_KL = 0.01
# Training settings that change how a run is watched, never its weights.
OBSERVATION_ONLY_KEYS = (
    "checkpoint_every",
    "log_every",
    "snapshot_every",
    "device",
    "threads",
    "workers",
    "keep_checkpoints",
    "fuse",  # a fused model equals its separately trained twin (tests/test_fused.py)
    "figures",
)


def normalised_beta(beta: float, latent_dim: int, image_size: int, channels: int = 3) -> float:
    """β·d/N with N = channels·image_size² input values (Higgins et al. 2017): the thesis's β = 4 at 64×64
    equals β = 1 at 32×32, since under the losses' reduction (models/losses.py) the summed reconstruction
    term grows with the N input values while the KL grows with the d components. Here, apart from the
    losses, so that a stage reading runs' settings (udr) needs no torch."""
    return float(beta) * latent_dim / (channels * image_size * image_size)


def is_guided(family: str) -> bool:
    """Whether `family` is a label-guided variant (`guided_<family>`)."""
    return family.startswith(GUIDED_PREFIX)


def base_family(family: str) -> str:
    """The unsupervised family a guided variant adds its head to (the family itself when unguided)."""
    return family.removeprefix(GUIDED_PREFIX)


class ConfigError(ValueError):
    """A value in params.yaml (or on the command line) is not allowed."""


def _rule(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, **rules):
    kwargs = {"metadata": rules}
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    else:
        kwargs["default"] = default
    return field(**kwargs)


@dataclass(frozen=True)
class DataConfig:
    """The `raw` stage: where the photos come from."""

    source: str = _rule("synthetic")  # "synthetic" or a folder of real photos
    n_images: int = _rule(2000, min=1)
    seed: int = _rule(0, min=0)
    good_fraction: float = _rule(GOOD_FRACTION, open_min=0.0, open_max=1.0)
    simulator: str = _rule("full", choices=SIMULATORS)  # geometry: no defects, one skin tone
    workers: int = _rule(0, min=0)  # 0 = all cores
    max_rejected_fraction: float = _rule(0.2, min=0.0, max=1.0)
    wrong_size: str = _rule("keep", choices=WRONG_SIZE_POLICIES)


@dataclass(frozen=True)
class PreprocessConfig:
    """The `preprocess` stage: crop, resize, split."""

    crop_fraction: float = _rule(0.6, open_min=0.0, max=1.0)
    image_size: int = _rule(32, choices=IMAGE_SIZES)
    test_fraction: float = _rule(0.2, open_min=0.0, open_max=1.0)
    labelled_per_class: int = _rule(100, min=1)
    probe_size: int = _rule(1000, min=2)
    seed: int = _rule(0, min=0)
    # Share of each class of the labelled split that a guided family's head may train on (the rest, the
    # holdout labels, alone place a guided component's threshold and estimate it).
    guide_fraction: float = _rule(0.5, min=0.0, open_max=1.0)


@dataclass(frozen=True)
class TrainConfig:
    """One VAE training run (thesis tables 4.2 and 4.3 at the thesis profile)."""

    latent_dim: int = _rule(10, min=1, max=256)
    steps: int = _rule(2000, min=1)
    batch_size: int = _rule(32, min=2)
    lr: float = _rule(1e-3, open_min=0.0, max=1.0)
    adam_beta1: float = _rule(0.9, min=0.0, open_max=1.0)
    adam_beta2: float = _rule(0.999, min=0.0, open_max=1.0)
    adam_eps: float = _rule(1e-8, open_min=0.0)
    rec_kind: str = _rule("bernoulli", choices=REC_KINDS)
    anneal_fraction: float = _rule(1.0, open_min=0.0, max=1.0)  # Cβ-VAE: share of steps for C: 0 → C_max (thesis: all)
    tc_estimator: str = _rule("stratified", choices=TC_ESTIMATORS)
    checkpoint_every: int = _rule(500, min=1)
    keep_checkpoints: bool = _rule(False)  # false: a run's checkpoint goes once its model is safely in MLflow
    log_every: int = _rule(50, min=1)
    snapshot_every: int = _rule(1000, min=0)  # traversal/reconstruction pictures during training; 0 = end only
    figures: bool = _rule(True)  # false: no pictures at all (a benchmark timing the training alone)
    device: str = _rule("auto", choices=DEVICES)
    precision: str = _rule("auto", choices=PRECISIONS)  # bfloat16: autocast forward pass; auto: where it is native
    threads: int = _rule(0, min=0)  # CPU threads for torch; 0 = all cores
    workers: int = _rule(0, min=0)  # models trained at once, one process and one thread each; 0 = one per core
    fuse: str = _rule("auto", choices=FUSE_MODES)  # a trial's seeds as one fused model (tubervae.training.fused)
    compile: bool = _rule(False)  # torch.compile the network of a separately trained model (not a fused one)

    def weight_identity(self) -> dict:
        """The settings that decide the trained weights (what a checkpoint or a reused run must match)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OBSERVATION_ONLY_KEYS}


@dataclass(frozen=True)
class SearchSpace:
    """The search space of one family. Ranges are [low, high]; `grid` is the thesis's points."""

    n_trials: int = _rule(2, min=1)
    beta: list = _rule(default_factory=lambda: [1.0, 18.0])
    beta_log: bool = _rule(True)
    c_max: list = _rule(default_factory=list)
    guide_weight: list = _rule(default_factory=list)  # guided families: [low, high] of λ, searched on a log scale
    grid: list = _rule(default_factory=list)  # list of {beta: .., c_max: ..} points (guided: .., guide_weight: ..)


@dataclass(frozen=True)
class SearchConfig:
    """Optuna studies, one per family, with the within-setting UDR as objective."""

    seeds: int = _rule(3, min=2)
    min_active: int = _rule(2, min=0)
    enqueue_grid: bool = _rule(False)
    parallel_trials: int = _rule(0, min=0)  # trials run at once (their seeds share train.workers); 0 = workers
    sampler_seed: int = _rule(0, min=0)
    heartbeat_interval: int = _rule(60, min=1)
    grace_period: int = _rule(180, min=2)
    max_retry: int = _rule(3, min=0)
    objective: str = _rule("udr", choices=SEARCH_OBJECTIVES)  # a trial's value (median over seeds); register follows
    measured_photos: int = _rule(100, min=0)  # measured_mig: photos with measured factors it uses; 0 = all
    pruner: str = _rule("none", choices=PRUNERS)  # stops settings that cannot win part-way; none: train every trial
    prune_at: list = _rule(default_factory=lambda: [0.25, 0.5])  # fractions of train.steps where trials are judged
    prune_startup_trials: int = _rule(1, min=0)  # median: complete trials before it prunes
    reduction_factor: int = _rule(2, min=2)  # successive halving, Hyperband: 1 in this many trials goes on at a rung
    spaces: dict = _rule(default_factory=dict)


@dataclass(frozen=True)
class UdrConfig:
    """UDR settings (Duan et al. 2020; thesis §2.3.3)."""

    similarity: str = _rule("lasso", choices=SIMILARITIES)
    aggregate: str = _rule("paper", choices=AGGREGATES)
    kl_threshold: float = _rule(INFORMATIVE_KL, min=0.0)  # the informative cut-off everywhere
    lasso_alpha: float = _rule(0.1, open_min=0.0)
    n_partners: int = _rule(0, min=0)  # 0 = every other seed of the setting
    partner_seed: int = _rule(0, min=0)
    heatmap_pairs: int = _rule(2, min=0)


@dataclass(frozen=True)
class RegisterConfig:
    """Champion choice: best within-family UDR among feasible settings, more active components when close."""

    model_name: str = _rule("tubervae-vae")
    udr_tolerance: float = _rule(0.05, min=0.0, max=1.0)
    select: str = _rule("udr", choices=SELECTIONS)  # job: the UDR ties' best rule on the labels; centrality: medoid
    force_promotion: bool = _rule(False)  # true: the chosen VAE becomes champion even where the gate refuses it


@dataclass(frozen=True)
class ClassifyConfig:
    """Threshold classifier and its learned alternatives."""

    model_name: str = _rule("tuber-quality")
    label_sizes: list = _rule(default_factory=lambda: [20, 50, 100, 200])
    n_draws: int = _rule(3, min=1)
    cnn_steps: int = _rule(300, min=1)
    gallery_size: int = _rule(16, min=0)
    seed: int = _rule(0, min=0)
    max_rules: int = _rule(3, min=1, max=10)  # the served rule: bad if any of up to this many cuts fires
    cv_folds: int = _rule(5, min=2)  # cross-validation on the labelled set picks how many cuts
    gate_repeats: int = _rule(5, min=1)  # the gate: repeats of cv_folds-fold CV of the rule on the holdout labels
    gate_bootstrap: int = _rule(1000, min=10)  # the gate: bootstrap resamples of its interval
    force_promotion: bool = _rule(False)  # true: the new rule becomes champion even where the gate refuses it


@dataclass(frozen=True)
class EvaluateConfig:
    """Supervised disentanglement metrics on a dedicated simulated evaluation set (stage evalset)."""

    set_size: int = _rule(10000, min=10)  # photos simulated for the evaluation set (stage evalset)
    set_seed: int = _rule(0, min=0)  # its own random streams: never a training photo, whatever the seeds
    n_points: int = _rule(10000, min=10)  # photos of the set each model is scored on (all when larger)
    dci_method: str = _rule("gbt", choices=DCI_METHODS)
    sap_method: str = _rule("svm", choices=SAP_METHODS)
    n_train: int = _rule(1000, min=10)  # DCI and SAP fit on this many of the photos
    n_test: int = _rule(1000, min=10)  # and score on this many others
    n_bootstrap: int = _rule(1000, min=10)
    seed: int = _rule(0, min=0)
    workers: int = _rule(0, min=0)  # models scored at once, one process each; 0 = one per core


@dataclass(frozen=True)
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    udr: UdrConfig = field(default_factory=UdrConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Params)}


def _check_value(where: str, value: Any, expected: type, rules: dict) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {expected.__name__}, got {value!r} ({type(value).__name__})")
    if expected is float and not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {list(rules['choices'])}")
    if "min" in rules and value < rules["min"]:
        raise ConfigError(f"{where}: {value!r} is below the minimum {rules['min']}")
    if "max" in rules and value > rules["max"]:
        raise ConfigError(f"{where}: {value!r} is above the maximum {rules['max']}")
    if "open_min" in rules and value <= rules["open_min"]:
        raise ConfigError(f"{where}: {value!r} must be greater than {rules['open_min']}")
    if "open_max" in rules and value >= rules["open_max"]:
        raise ConfigError(f"{where}: {value!r} must be less than {rules['open_max']}")
    return value


def build(cls: type, values: dict | None, where: str):
    """Build dataclass `cls` from a mapping, rejecting unknown keys and bad values."""
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        expected = hints[name]
        kwargs[name] = _check_value(f"{where}.{name}", value, expected, dict(known[name].metadata))
    return cls(**kwargs)


def _range(where: str, value: Any, *, positive: bool) -> list:
    if not (isinstance(value, list) and len(value) == 2):
        raise ConfigError(f"{where}: expected [low, high], got {value!r}")
    low, high = (_check_value(f"{where}[{i}]", v, float, {}) for i, v in enumerate(value))
    if positive and low <= 0:
        raise ConfigError(f"{where}: the low end must be > 0, got {low!r}")
    if low > high:
        raise ConfigError(f"{where}: low {low!r} is above high {high!r}")
    return [low, high]


def _fractions(where: str, value: Any) -> list:
    """Fractions strictly between 0 and 1, strictly increasing (the points where a search judges its trials)."""
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of fractions of train.steps, e.g. [0.25, 0.5], got {value!r}")
    fractions = [
        _check_value(f"{where}[{i}]", v, float, {"open_min": 0.0, "open_max": 1.0}) for i, v in enumerate(value)
    ]
    if any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ConfigError(f"{where}: the fractions must increase, got {fractions!r}")
    return fractions


def validate_space(family: str, space: SearchSpace, where: str) -> SearchSpace:
    """Check that a family's search space has exactly the hyperparameters the family uses."""
    beta = _range(f"{where}.beta", space.beta, positive=True)
    if is_guided(family):
        if not space.guide_weight:
            raise ConfigError(
                f"{where}.guide_weight: {family} searches the head's weight λ: give [low, high], e.g. [30, 1000]"
            )
        guide_weight = _range(f"{where}.guide_weight", space.guide_weight, positive=True)  # log scale: low > 0
    elif space.guide_weight:
        raise ConfigError(f"{where}.guide_weight: only guided families search it; remove it from {family}")
    else:
        guide_weight = []
    if base_family(family) == "cbeta_vae":
        c_max = _range(f"{where}.c_max", space.c_max, positive=False)
        if c_max[0] < 0:
            raise ConfigError(f"{where}.c_max: capacity must be >= 0, got {c_max!r}")
    elif space.c_max:
        raise ConfigError(f"{where}.c_max: only cbeta_vae searches C_max; remove it from {family}")
    else:
        c_max = []
    grid = []
    for i, point in enumerate(space.grid):
        if not isinstance(point, dict) or "beta" not in point:
            raise ConfigError(f"{where}.grid[{i}]: expected a mapping with 'beta', got {point!r}")
        wanted = {"beta", "c_max"} if base_family(family) == "cbeta_vae" else {"beta"}
        wanted |= {"guide_weight"} if is_guided(family) else set()
        if set(point) != wanted:
            raise ConfigError(f"{where}.grid[{i}]: expected keys {sorted(wanted)}, got {sorted(point)}")
        grid.append(
            {
                k: _check_value(f"{where}.grid[{i}].{k}", v, float, {"open_min": 0.0} if k == "beta" else {"min": 0.0})
                for k, v in point.items()
            }
        )
    return dataclasses.replace(space, beta=beta, c_max=c_max, guide_weight=guide_weight, grid=grid)


def parse_params(raw: dict | None) -> Params:
    """Validate a whole params.yaml mapping; missing sections and keys take defaults."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"params.yaml: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"params.yaml: unknown section(s) {unknown}; allowed: {sorted(SECTIONS)}")
    sections = {name: build(typing.get_type_hints(Params)[name], raw.get(name), name) for name in SECTIONS}
    search = sections["search"]
    spaces = {}
    for family, space in (search.spaces or {}).items():
        if family not in FAMILIES:
            raise ConfigError(f"search.spaces: unknown family {family!r}; allowed: {list(FAMILIES)}")
        where = f"search.spaces.{family}"
        spaces[family] = validate_space(family, build(SearchSpace, space, where), where)
    sections["search"] = dataclasses.replace(
        search, spaces=spaces, prune_at=_fractions("search.prune_at", search.prune_at)
    )
    if search.pruner != "none" and not search.prune_at:
        raise ConfigError(
            f"search.prune_at is empty, so search.pruner {search.pruner!r} has no point to judge trials at: "
            "give fractions of train.steps (e.g. [0.25, 0.5]) or set search.pruner: none"
        )
    if search.objective != "udr" and search.pruner != "none":
        raise ConfigError(
            f"search.pruner {search.pruner!r} judges trials part-way by their UDR, but search.objective is "
            f"{search.objective!r}: set search.pruner: none, or search.objective: udr"
        )
    if sections["udr"].n_partners and sections["udr"].n_partners > sections["search"].seeds - 1:
        raise ConfigError(
            f"udr.n_partners: {sections['udr'].n_partners} partners need at least {sections['udr'].n_partners + 1} "
            f"seeds, but search.seeds is {sections['search'].seeds}; use 0 for all other seeds"
        )
    prep = sections["preprocess"]
    if prep.probe_size > sections["data"].n_images and sections["data"].source == "synthetic":
        raise ConfigError(
            f"preprocess.probe_size: {prep.probe_size} probe images need at least as many photos, "
            f"but data.n_images is {sections['data'].n_images}"
        )
    return Params(**sections)


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            continue  # an unhashable key: construct_mapping refuses it in its own words
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} (lines {seen[key] + 1} and {key_node.start_mark.line + 1}): "
                "keep one, since only the last would count"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def read_settings_file(path: str | Path) -> dict:
    """A settings file (params.yaml, or a file in its shape) as a mapping, strictly: a duplicate key, an
    empty file or a file that is not a mapping is a ConfigError naming the file (and the key)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found; run from the project root or pass --params")
    try:
        raw = yaml.load(path.read_text(), Loader=_StrictLoader)  # a SafeLoader
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; write the settings to change, or `{{}}` for every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, train:, ...), got a {type(raw).__name__}")
    return raw


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read (`read_settings_file`) and validate params.yaml."""
    path = Path(path)
    return parse_params(read_settings_file(path))


def worker_count(requested: int) -> int:
    """Processes to use for a `workers` setting: 0 means one per core."""
    return requested or os.cpu_count() or 1
