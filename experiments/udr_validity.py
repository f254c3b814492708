"""Does UDR order the settings of one family the way their disentanglement does? (issue 33)

Kept whole: the training half and the `--analyse` half read one results folder through the same helpers
(`results_folder`, `read_rows`), and every file in experiments/ is a script with its own main() and --help
(tests/test_scripts.py), so the report cannot move into an importable module beside it.

Trains, family by family, a grid of settings spanning the search range in `params.yaml`
(β-VAE and β-TCVAE: 6 log-spaced β; Cβ-VAE: 3 β × 2 C_max) × 3 seeds, each setting's seeds fused
as one model (`tubervae.training.fused.train_fused`), on the `geometry` simulator at 32×32 with the
`disentangle` profile's training settings (10 000 photos, 5000 steps, batch 32, lr 1e-3). Every
model is scored on a held-out evaluation set simulated apart from the training photos (another
seed), and what each selection rule needs is saved as soon as a setting finishes:

- `models.csv`: one row per model: KL per component on the UDR probe, the held-out ELBO, the
  published MIG (mean and per factor), DCI (`gbt_fast`, as the evaluate stage), the FactorVAE
  score, and MIG and DCI-d from 100 and 1000 labelled photos (5 draws each, the same photos for
  every model, as a user's labelled set would be);
- `probe/<family>_<setting>_s<seed>.npz`: the encoder means, log-variances and mean KL of the
  1000 UDR probe photos (drawn from the training photos, as the preprocess stage draws them):
  what within-family, all-against-all UDR and ModelCentrality are computed from;
- `latents/` (not committed): the evaluation set's means and log-variances, to rescore;
- `checkpoints/` (not committed): each model's checkpoint every 1000 steps, so a stopped run
  resumes where it stood. A setting whose seeds are all in `models.csv` is skipped, and so is one that
  another process on the same folder is training (a lock per setting): two processes, one per core,
  share one plan.

    python experiments/udr_validity.py                 # trains what is missing, family by family
    python experiments/udr_validity.py --analyse       # docs/results/udr-validity.md from what finished

One torch thread by default (`--threads`). The analysis computes UDR (within family: Lasso and
Spearman, paper and reference aggregation; all-against-all), ModelCentrality, the few-label,
ELBO and random rules and their regret (`tubervae.evaluation.selection`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import fcntl
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

from tubervae.classify.any_rule import RuleSettings, job_score
from tubervae.config import INFORMATIVE_KL, Params, TrainConfig, parse_params, read_settings_file
from tubervae.data import synth_dataset, synth_factors
from tubervae.data.factors import measured_rows
from tubervae.data.images import folder_fingerprint
from tubervae.data.processed import load_meta, load_split
from tubervae.evaluation.dci import dci
from tubervae.evaluation.factor_vae import factor_vae_score
from tubervae.evaluation.metric_utils import train_test_indices
from tubervae.evaluation.mig import mig
from tubervae.evaluation.selection import (
    bootstrap_regret,
    bootstrap_spearman,
    model_centrality,
    setting_medians,
)
from tubervae.evaluation.udr import udr_scores
from tubervae.models.encoding import as_input, encode, images_to_tensor
from tubervae.models.losses import kl_per_component, reconstruction_loss
from tubervae.stages import preprocess as preprocess_stage
from tubervae.stages import raw as raw_stage
from tubervae.training.device import resolve_precision, select_device
from tubervae.training.fused import FusedJob, train_fused
from tubervae.training.setting import Setting

FAMILY_ORDER = ("beta_vae", "beta_tcvae", "cbeta_vae")
FEW_LABELS = (100, 1000)  # photos with measured factors (a grading line can weigh and measure 100)
LABEL_DRAWS = 5  # draws of the few labelled photos
ELBO_PHOTOS = 2000  # held-out photos the ELBO is estimated on
CBETA_BETAS = 3  # Cβ-VAE grid: β values (linear over the range) × every C_max below
CBETA_C_MAX = (6.0, 12.0)
OUT = Path("experiments/runs/udr-validity")
REPORT = "docs/results/udr-validity.md"  # the simulator's report


def log_grid(low: float, high: float, n: int) -> list[float]:
    """`n` log-spaced values from `low` to `high`, to 3 significant digits."""
    return [float(f"{v:.3g}") for v in np.geomspace(low, high, n)]


def plan(spaces: dict, n_settings: int = 6) -> list[Setting]:
    """The whole grid, β-VAE first, then β-TCVAE, then Cβ-VAE, from params.yaml's search ranges."""
    settings = []
    for family in FAMILY_ORDER:
        space = spaces[family]
        low, high = (float(v) for v in space["beta"])
        if family == "cbeta_vae":
            betas = [float(f"{v:.3g}") for v in np.linspace(low, high, CBETA_BETAS)]
            settings += [Setting(family, b, c) for b in betas for c in CBETA_C_MAX]
        else:
            settings += [Setting(family, b) for b in log_grid(low, high, n_settings)]
    return settings


def model_key(setting: Setting, seed: int) -> str:
    return f"{setting.family}_{setting.label}_s{seed}"


@torch.no_grad()
def heldout_elbo(model, images: np.ndarray, rec_kind: str, seed: int = 0, batch_size: int = 500) -> dict:
    """Mean per-photo ELBO (nats, one posterior sample per photo), its reconstruction and KL terms."""
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    rec_total = kl_total = 0.0
    for start in range(0, len(images), batch_size):
        x = as_input(images_to_tensor(images[start : start + batch_size], device))
        mu, logvar = model.encode(x)
        mu, logvar = mu.float(), logvar.float()
        noise = torch.randn(mu.shape, generator=gen).to(device)
        z = mu + torch.exp(0.5 * logvar) * noise
        rec_total += float(reconstruction_loss(x, model.decode(z).float(), kind=rec_kind)) * len(x)
        kl_total += float(kl_per_component(mu, logvar).sum(1).sum())
    rec, kl = rec_total / len(images), kl_total / len(images)
    return {"elbo_heldout": -(rec + kl), "rec_heldout": rec, "kl_heldout": kl}


def mean_kl(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    return kl_per_component(torch.from_numpy(mu), torch.from_numpy(logvar)).mean(0).numpy()


def label_draws(n_eval: int, seed: int) -> dict[int, list[np.ndarray]]:
    """The few labelled photos' indices in the evaluation set: the same draws for every model.

    An evaluation set of fewer photos than a draw asks for gives all of its photos to that draw."""
    rng = np.random.default_rng([seed, 33])
    return {
        n: [np.sort(rng.choice(n_eval, size=min(n, n_eval), replace=False)) for _ in range(LABEL_DRAWS)]
        for n in FEW_LABELS
    }


def score_model(model, data: dict, rec_kind: str) -> tuple[dict, dict, dict]:
    """The models-table row, the probe arrays and the evaluation latents of one trained model."""
    mu_p, logvar_p = encode(model, data["probe"])
    kl_p = mean_kl(mu_p, logvar_p)
    mu, logvar = encode(model, data["eval"])
    kl_e = mean_kl(mu, logvar)
    truth, names = data["truth"], data["names"]
    row: dict = {"n_informative": int((kl_p > INFORMATIVE_KL).sum())}
    row.update({f"kl_{i}": f"{v:.5f}" for i, v in enumerate(kl_p)})
    row["kl_probe_total"] = f"{kl_p.sum():.4f}"
    row["kl_eval_total"] = f"{kl_e.sum():.4f}"
    row.update({k: f"{v:.3f}" for k, v in heldout_elbo(model, data["eval"][:ELBO_PHOTOS], rec_kind).items()})
    published = mig(mu, truth)
    row["mig"] = f"{published['mig']:.4f}"
    row.update({f"mig_{f}": f"{v:.4f}" for f, v in zip(names, published["mig_per_factor"])})
    found = dci(mu, truth, random_state=0, method="gbt_fast")
    row.update(
        dci_d=f"{found['dci_disentanglement']:.4f}",
        dci_c=f"{found['dci_completeness']:.4f}",
        dci_i=f"{found['dci_informativeness']:.4f}",
    )
    row["factorvae"] = f"{factor_vae_score(mu, truth, random_state=0)['factorvae_eval_accuracy']:.4f}"
    if "job" in data:  # the register stage's `job` score: its rule on the labelled split, the probe's KL
        job = data["job"]
        z, _ = encode(model, job["images"])
        rules = job["settings"]
        value = job_score(
            z,
            job["bad"],
            kl_p,
            kl_threshold=rules.kl_threshold,
            max_rules=rules.max_rules,
            n_folds=rules.n_folds,
            random_state=rules.random_state,
        )
        row["job_cv"] = f"{value:.4f}"
    for n, draws in data["labels"].items():
        for k, idx in enumerate(draws):
            row[f"mig_l{n}_d{k}"] = f"{mig(mu[idx], truth[idx])['mig']:.4f}"
            few = dci(mu[idx], truth[idx], random_state=k, method="gbt_fast")
            row[f"dci_l{n}_d{k}"] = f"{few['dci_disentanglement']:.4f}"
    probe = {"mu": mu_p.astype(np.float32), "logvar": logvar_p.astype(np.float32), "kl": kl_p.astype(np.float64)}
    latents = {"mu": mu.astype(np.float16), "logvar": logvar.astype(np.float16)}
    return row, probe, latents


def fields(names: list[str], latent_dim: int, job: bool = False) -> list[str]:
    """The models table's columns; `job_cv` (the job score on the labelled photos) where the data has labels."""
    few = [f"{m}_l{n}_d{k}" for n in FEW_LABELS for m in ("mig", "dci") for k in range(LABEL_DRAWS)]
    return [
        "data",
        "image_size",
        "steps",
        "family",
        "beta",
        "c_max",
        "setting",
        "seed",
        "train_s",
        "n_informative",
        *[f"kl_{i}" for i in range(latent_dim)],
        "kl_probe_total",
        "kl_eval_total",
        "elbo_heldout",
        "rec_heldout",
        "kl_heldout",
        "mig",
        *[f"mig_{f}" for f in names],
        "dci_d",
        "dci_c",
        "dci_i",
        "factorvae",
        *(["job_cv"] if job else []),
        *few,
    ]


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict], header: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def append_rows(path: Path, new_rows: list[dict], header: list[str]) -> None:
    """Add rows to the table under a lock, so that one process per family can share the folder."""
    with (path.parent / "models.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_rows(path, read_rows(path) + new_rows, header)


def data_name(args) -> str:
    """The data's name in the results: the simulator's, or the photo folder's own name."""
    return Path(args.folder).resolve().name if args.folder else args.simulator


def results_folder(args) -> Path:
    """Where one data set's results go: `--out`/<data>-<image size> (`geometry-32`, `idsprites-64`)."""
    return Path(args.out) / f"{data_name(args)}-{args.image_size}"


def import_photo_folder(
    source: str | Path,
    work: Path,
    *,
    params_path: str | Path,
    image_size: int,
    crop_fraction: float,
    probe_size: int,
    seed: int,
) -> Params:
    """A user's photo folder through the project's raw and preprocess stages, into the project folder `work`.

    The stages run with `params_path`'s settings (the split's test fraction, the labelled photos per class,
    the rules' settings), one worker, and the folder, image size, crop, UDR probe size and split seed
    given here. Cached: `work/import.json` records the folder's fingerprint (`folder_fingerprint`: every
    photo's and factors.csv's content) and the settings, and the stages run again only when one changed.
    Under a lock, so that one process per family can start at once. Returns the settings they ran with;
    the splits are in `work/data/processed`.
    """
    source = Path(source).resolve()
    if not source.is_dir():
        raise SystemExit(f"--folder {source} is not a folder of photos")
    raw = read_settings_file(params_path)
    raw["data"] = {**(raw.get("data") or {}), "source": str(source), "workers": 1}
    raw["preprocess"] = {
        **(raw.get("preprocess") or {}),
        "image_size": image_size,
        "crop_fraction": crop_fraction,
        "probe_size": probe_size,
        "seed": seed,
    }
    params = parse_params(raw)
    stamp = {
        "source": str(source),
        "photos": folder_fingerprint(source)["sha256"],
        "data": dataclasses.asdict(params.data),
        "preprocess": dataclasses.asdict(params.preprocess),
    }
    done = work / "import.json"
    work.mkdir(parents=True, exist_ok=True)
    with (work / "import.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists() and json.loads(done.read_text()) == stamp:
            return params
        began = time.perf_counter()
        done.unlink(missing_ok=True)
        raw_stage.run(params, root=work)
        preprocess_stage.run(params, root=work)
        done.write_text(json.dumps(stamp, indent=1) + "\n")
    print(f"{source} imported and preprocessed in {time.perf_counter() - began:.0f} s", flush=True)
    return params


def folder_splits(processed: Path) -> dict:
    """The arrays of an imported folder's splits (`data/processed`): training photos, UDR probe, evaluation set
    (the test split's photos with measured factors), its factors that vary, and the labelled photos."""
    test = load_split("test", processed)
    if "factors" not in test:
        raise SystemExit(f"{processed}: the photo folder has no factors.csv, so there is nothing to score models on")
    measured = measured_rows(test["factors"])
    if measured.sum() < 4:
        raise SystemExit(f"{processed}: only {measured.sum()} photos of the test split have measured factors")
    factors = test["factors"][measured].astype(np.float64)
    varying = np.ptp(factors, axis=0) > 0
    labelled = load_split("labelled", processed)
    return {
        "train": load_split("train", processed)["images"],
        "probe": load_split("udr_probe", processed)["images"],
        "eval": test["images"][measured],
        "truth": factors[:, varying],
        "names": [str(n) for n, keep in zip(test["factor_names"], varying) if keep],
        "labelled_images": labelled["images"],
        "labelled_bad": labelled["labels"] == 1,
        "labelled_good": labelled["labels"] == 0,
        "version": load_meta(processed)["data_version"],
    }


def folder_photos(args, folder: Path) -> dict:
    """`photos` for `--folder`: the folder imported by the project's stages into `folder/import` (cached)."""
    params = import_photo_folder(
        args.folder,
        folder / "import",
        params_path=args.params,
        image_size=args.image_size,
        crop_fraction=args.crop_fraction,
        probe_size=args.probe,
        seed=args.data_seed,
    )
    split = folder_splits(folder / "import" / "data" / "processed")
    data = {k: split[k] for k in ("train", "probe", "eval", "truth", "names", "version")}
    data["labels"] = label_draws(len(split["eval"]), args.data_seed)
    data["labelled"] = {"good": int(split["labelled_good"].sum()), "bad": int(split["labelled_bad"].sum())}
    if split["labelled_bad"].any() and split["labelled_good"].any():
        data["job"] = {
            "images": split["labelled_images"],
            "bad": split["labelled_bad"],
            "settings": RuleSettings.from_params(params),
        }
    return data


def photos(args, folder: Path) -> dict:
    """Training photos, the UDR probe drawn from them, the held-out evaluation set and its factors (cached)."""
    if args.folder:
        return folder_photos(args, folder)
    cache = folder / "photos" / f"n{args.n_train}-e{args.n_eval}-seed{args.data_seed}.npz"
    fixed = synth_factors.SIMULATORS[args.simulator]
    if cache.exists():
        stored = np.load(cache, allow_pickle=False)
        train, test, truth = stored["train"], stored["eval"], stored["truth"]
        names = [str(n) for n in stored["names"]]
    else:
        began = time.perf_counter()
        simulate = dict(crop_fraction=0.6, image_size=args.image_size, workers=1, progress=False, fixed=fixed)
        train, _ = synth_dataset.model_inputs(args.n_train, seed=args.data_seed, **simulate)
        test, factors = synth_dataset.model_inputs(args.n_eval, seed=args.data_seed + 1, **simulate)
        names = [f for f in synth_factors.SCORED_FACTORS if np.ptp(factors[f].to_numpy()) > 0]
        truth = factors[names].to_numpy(dtype=np.float64)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache.with_suffix(".tmp.npz"), train=train, eval=test, truth=truth, names=np.array(names))
        cache.with_suffix(".tmp.npz").replace(cache)
        print(f"{len(train) + len(test)} photos simulated in {time.perf_counter() - began:.0f} s", flush=True)
    probe_idx = np.sort(np.random.default_rng(args.data_seed).choice(len(train), size=args.probe, replace=False))
    return {
        "train": train,
        "probe": train[probe_idx],
        "eval": test,
        "truth": truth,
        "names": names,
        "labels": label_draws(len(test), args.data_seed),
    }


def host() -> str:
    model = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model
        )
        info = Path("/proc/cpuinfo").read_text().splitlines()
        family = next((line.split(":")[1].strip() for line in info if line.startswith("cpu family")), "?")
        number = next((line.split(":")[1].strip() for line in info if line.startswith("model\t")), "?")
        model = f"{model} (family {family} model {number}), {os.cpu_count()} cores"
    except OSError:
        pass
    return model


def train(args) -> None:
    torch.set_num_threads(args.threads)
    folder = results_folder(args)
    for sub in ("probe", "latents", "checkpoints"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    spaces = yaml.safe_load(Path(args.params).read_text())["search"]["spaces"]
    full_plan = plan(spaces, args.settings)
    settings = full_plan
    if args.families:
        wanted = args.families.split(",")
        settings = [s for s in settings if s.family in wanted]
    seeds = list(range(args.seeds))
    data = photos(args, folder)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        log_every=args.steps,
        checkpoint_every=min(1000, args.steps),
        snapshot_every=0,
        figures=False,
        precision=args.precision,
        threads=args.threads,
        device="cpu",
    )
    precision = resolve_precision(cfg.precision, select_device(cfg.device))
    header = fields(data["names"], cfg.latent_dim, job="job" in data)
    run_info = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": host(),
        "precision": precision,
        "threads": args.threads,
        "plan": [{"family": s.family, "beta": s.beta, "c_max": s.c_max, "setting": s.label} for s in full_plan],
        "seeds": seeds,
        "steps": args.steps,
        "n_train": args.n_train,
        "n_eval": args.n_eval,
        "probe": args.probe,
        "factors": data["names"],
    }
    if args.folder:
        run_info.update(
            folder=args.folder,
            n_train=len(data["train"]),
            n_eval=len(data["eval"]),
            probe=len(data["probe"]),
            image_size=args.image_size,
            crop_fraction=args.crop_fraction,
            labelled=data["labelled"],
        )
    (folder / "run.json").write_text(json.dumps(run_info, indent=1) + "\n")
    version = data.get("version") or f"{args.simulator}-{args.image_size}-n{args.n_train}-seed{args.data_seed}"
    print(f"{len(settings)} settings x {len(seeds)} seeds, {args.steps} steps, {precision}, host {run_info['host']}")
    for setting in settings:
        with claim(folder, setting) as held:
            if not held:
                print(f"{setting.family} {setting.label}: trained by another process, skipped", flush=True)
                continue
            train_setting(setting, seeds, folder, data, cfg, version, header, args)
    print("plan finished", flush=True)


@contextlib.contextmanager
def claim(folder: Path, setting: Setting):
    """Hold `checkpoints/<family>_<setting>.lock` while a setting trains, so that a second process on the same
    results folder (one per core) moves on to the next setting; the lock goes with its process, killed or not."""
    with (folder / "checkpoints" / f"{setting.family}_{setting.label}.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def train_setting(setting: Setting, seeds: list[int], folder: Path, data: dict, cfg, version: str, header, args):
    """Train the seeds of `setting` that `models.csv` lacks (fused, resuming their checkpoints), score and record
    them."""
    table = folder / "models.csv"
    done = {(r["family"], r["setting"], int(r["seed"])) for r in read_rows(table)}
    todo = [s for s in seeds if (setting.family, setting.label, s) not in done]
    if not todo:
        return
    jobs = [
        FusedJob(setting, seed, checkpoint_path=folder / "checkpoints" / f"{model_key(setting, seed)}.pt")
        for seed in todo
    ]
    began = time.perf_counter()
    print(f"{time.strftime('%H:%M:%S')} training {setting.family} {setting.label} seeds {todo}", flush=True)
    outcomes = train_fused(
        jobs,
        cfg,
        train_images=data["train"],
        probe_images=data["probe"][:10],
        test_images=data["eval"][:10],
        data_version=version,
    )
    train_s = time.perf_counter() - began
    rows = []
    for job, outcome in zip(jobs, outcomes):
        row, probe, latents = score_model(outcome.model, data, cfg.rec_kind)
        key = model_key(setting, job.seed)
        np.savez(folder / "probe" / f"{key}.npz", **probe)
        np.savez_compressed(folder / "latents" / f"{key}.npz", **latents)
        row.update(
            data=data_name(args),
            image_size=args.image_size,
            steps=outcome.step,
            family=setting.family,
            beta=f"{setting.beta:g}",
            c_max=f"{setting.c_max:g}",
            setting=setting.label,
            seed=job.seed,
            train_s=f"{train_s:.0f}",
        )
        rows.append(row)
        print(
            f"  seed {job.seed}: informative {row['n_informative']}, MIG {row['mig']}, DCI-d {row['dci_d']}, "
            f"FactorVAE {row['factorvae']}, ELBO {row['elbo_heldout']}",
            flush=True,
        )
    append_rows(table, rows, header)
    print(f"{time.strftime('%H:%M:%S')} {setting.family} {setting.label}: {train_s:.0f} s training", flush=True)


FAMILY_NAMES = {"beta_vae": "β-VAE", "beta_tcvae": "β-TCVAE", "cbeta_vae": "Cβ-VAE"}
TEXT_FIELDS = ("data", "family", "setting")  # the models table's columns that are not numbers
UDR_VARIANTS = (("lasso", "paper"), ("lasso", "reference"), ("spearman", "paper"), ("spearman", "reference"))


def load_models(folder: Path) -> tuple[list[dict], list[np.ndarray], list[np.ndarray]]:
    """The finished models' rows (numbers as floats), probe means and probe KL vectors."""
    rows, reps, kls = [], [], []
    for row in read_rows(folder / "models.csv"):
        probe = np.load(folder / "probe" / f"{row['family']}_{row['setting']}_s{row['seed']}.npz")
        parsed = {k: v if k in TEXT_FIELDS else float(v) for k, v in row.items()}
        rows.append(parsed)
        reps.append(probe["mu"].astype(np.float64))
        kls.append(probe["kl"].astype(np.float64))
    return rows, reps, kls


def rule_scores(
    rows: list[dict], reps: list[np.ndarray], kls: list[np.ndarray], min_active: int = 2
) -> dict[str, np.ndarray]:
    """Every rule's score of every model (higher is better); few-label rules as (draws, models).

    `udr_search` is the search's own rule: within-family UDR (Lasso, paper), where a setting whose
    median number of informative components is below `min_active` (`search.min_active`) cannot win.
    """
    m = len(rows)
    family = np.array([r["family"] for r in rows])
    groups = [(r["family"], r["setting"]) for r in rows]
    scores: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # collapsed models score 0, said in the report
        for sim, agg in UDR_VARIANTS:
            scores[f"udr_{sim}_{agg}"] = udr_scores(reps, kls, groups=groups, similarity=sim, aggregate=agg).scores
        scores["udr_a2a"] = udr_scores(reps, kls, groups=None).scores
        centrality = np.full(m, np.nan)
        for fam in np.unique(family):
            idx = np.flatnonzero(family == fam)
            if idx.size > 1:
                pairs = udr_scores([reps[i] for i in idx], [kls[i] for i in idx], groups=None).pair_scores
                centrality[idx] = model_centrality(pairs)
        scores["centrality"] = centrality
    active = np.array([r["n_informative"] for r in rows])
    feasible = np.array([np.median(active[[g == h for h in groups]]) >= min_active for g in groups])
    scores["udr_search"] = np.where(feasible, scores["udr_lasso_paper"], np.nan)
    scores["elbo"] = np.array([r["elbo_heldout"] for r in rows])
    for n in FEW_LABELS:
        for metric in ("mig", "dci"):
            scores[f"{metric}_l{n}"] = np.array([[r[f"{metric}_l{n}_d{k}"] for r in rows] for k in range(LABEL_DRAWS)])
    if rows and all("job_cv" in r for r in rows):  # data with good/bad labels
        scores["job"] = np.array([r["job_cv"] for r in rows])
    return scores


RULES = (
    ("udr_search", "the search's rule: within-family UDR (Lasso, paper) of the feasible settings"),
    ("udr_lasso_paper", "within-family UDR, Lasso, paper aggregation (the search's objective)"),
    ("udr_lasso_reference", "within-family UDR, Lasso, reference aggregation"),
    ("udr_spearman_paper", "within-family UDR, Spearman, paper aggregation"),
    ("udr_spearman_reference", "within-family UDR, Spearman, reference aggregation"),
    ("udr_a2a", "all-against-all UDR (Lasso, paper; every finished model a partner)"),
    ("centrality", "ModelCentrality (medoid of the family's pool by UDR's Lasso pair score)"),
    ("mig_l100", "MIG from 100 photos with measured factors"),
    ("mig_l1000", "MIG from 1000 photos with measured factors"),
    ("dci_l100", "DCI-d from 100 photos with measured factors"),
    ("dci_l1000", "DCI-d from 1000 photos with measured factors"),
    ("job", "job score on the labelled photos (`register.select: job`)"),  # only where the data has labels
    ("elbo", "held-out ELBO"),
    ("random", "a random pick (expected regret)"),
)


def fmt(value: float, digits: int = 2) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def figure_cell(fig) -> str:
    if not np.isfinite(fig.value):
        return "–"
    return f"{fig.value:.2f} ({fmt(fig.low)} to {fmt(fig.high)})"


def family_regrets(scores: dict, quality: np.ndarray, groups: list, n_boot: int) -> list[dict]:
    """Per rule: model- and setting-level regret (few-label rules: averaged over the label draws)."""
    out = []
    for rule, text in RULES:
        if rule != "random" and rule not in scores:
            continue  # the job score, on data without labels
        entry = {"rule": rule, "text": text}
        for level in ("model", "setting"):
            if rule == "random":
                figs = [bootstrap_regret(None, quality, groups, level=level, n_boot=n_boot)]
            else:
                table = scores[rule]
                draws = table if table.ndim == 2 else table[None]
                figs = [bootstrap_regret(d, quality, groups, level=level, n_boot=n_boot) for d in draws]
            entry[level] = (
                float(np.mean([f.value for f in figs])),
                float(np.mean([f.mean for f in figs])),
                float(np.mean([f.low for f in figs])),
                float(np.mean([f.high for f in figs])),
            )
        out.append(entry)
    return out


def report_path(args) -> Path:
    """`--report`, else the simulator's docs/results/udr-validity.md or, for `--folder`, a page of its own."""
    if args.report:
        return Path(args.report)
    return Path(REPORT if not args.folder else f"docs/results/udr-validity-{data_name(args)}-{args.image_size}.md")


def analyse(args) -> None:
    """Write the report from the models that have finished."""
    folder = results_folder(args)
    args.report = report_path(args)
    if not (folder / "run.json").exists():
        raise SystemExit(f"{folder / 'run.json'} is missing: start the training first")
    rows, reps, kls = load_models(folder)
    info = json.loads((folder / "run.json").read_text())
    if not rows:
        lines = report_head(info, rows, folder, args) + ["No setting has finished yet.", ""] + report_tail(info)
        Path(args.report).write_text("\n".join(lines) + "\n")
        print(f"no model has finished; report in {args.report}")
        return
    min_active = int(yaml.safe_load(Path(args.params).read_text())["search"]["min_active"])
    scores = rule_scores(rows, reps, kls, min_active)
    names = info["factors"]
    family = np.array([r["family"] for r in rows])
    lines = report_head(info, rows, folder, args)
    lines += models_table(rows, scores, names)
    for fam in FAMILY_ORDER:
        idx = np.flatnonzero(family == fam)
        if idx.size == 0:
            continue
        lines += family_section(fam, idx, rows, scores, args.n_boot)
    lines += report_tail(info)
    Path(args.report).write_text("\n".join(lines) + "\n")
    print(f"{len(rows)} models; report in {args.report}")


def report_head(info: dict, rows: list[dict], folder: Path, args) -> list[str]:
    planned = len(info["plan"])
    done = sorted({(r["family"], r["setting"]) for r in rows}, key=lambda k: FAMILY_ORDER.index(k[0]))
    per_family = {f: sum(1 for d in done if d[0] == f) for f in FAMILY_ORDER}
    plan_text = "; ".join(
        f"{FAMILY_NAMES[f]}: "
        + ", ".join(p["setting"] for p in info["plan"] if p["family"] == f)
        + f" ({per_family[f]} finished)"
        for f in FAMILY_ORDER
        if any(p["family"] == f for p in info["plan"])
    )
    train_s = sorted({(r["family"], r["setting"], r["train_s"]) for r in rows})
    timing = f" (about {np.mean([t[2] for t in train_s]) / 60:.0f} min per setting of 3 models)" if train_s else ""
    n_eval = int(info["n_eval"])
    few = [min(n, n_eval) for n in FEW_LABELS]
    dci_train, dci_test = (len(rows) for rows in train_test_indices(n_eval, random_state=0))  # as dci splits them
    if info.get("folder"):
        size = f"{info['image_size']}×{info['image_size']}"
        data = [
            f"- **Data**: the photo folder `{info['folder']}`, imported by the project's raw and preprocess stages",
            f"  at {size}, centre crop {info['crop_fraction']:g}; its factors.csv's factors that vary:",
            f"  {', '.join(info['factors'])}. The train split's {info['n_train']} photos train the models, the",
            f"  `udr_probe` split's {info['probe']} photos are the UDR probe, and the evaluation set is the test",
            f"  split's {n_eval} photos with measured factors.",
        ]
        labelled = info.get("labelled") or {}
        job = (
            [
                "- **Job score** (`register.select: job`): each model's served rule",
                "  (`tubervae.classify.any_rule.job_score`: up to `classify.max_rules` cuts on its informative",
                f"  components) on its encoder means of the labelled split ({labelled['good']} good and "
                f"{labelled['bad']} bad photos of",
                "  the folder's good/ and bad/), scored by its best cross-validated balanced accuracy; the rule",
                "  *job score on the labelled photos* picks the model of top score.",
            ]
            if rows and "job_cv" in rows[0]
            else [
                "- **Job score** (`register.select: job`): not measured: the folder's labelled split has no good",
                "  and bad photos to score a rule on.",
            ]
        )
    else:
        data = [
            f"- **Data**: the `{args.simulator}` simulator (no defects, one skin tone: x, y, size, elongation,",
            f"  brightness and the unscored rotation vary), {info['n_train']} training photos (seed 0) at",
            f"  {args.image_size}×{args.image_size}, centre crop 0.6; a held-out evaluation set of {info['n_eval']}",
            f"  photos simulated from another seed, with their factors; the UDR probe is {info['probe']} training "
            "photos,",
            "  drawn as the preprocess stage draws `udr_probe`.",
        ]
        job = [
            "- **Job score** (`register.select: job`): not measured: every photo of this simulator is good, so",
            "  there are no good/bad labels to score a rule on.",
        ]
    return [
        "# UDR on trial: does it order the settings of one family, and what should pick the model?",
        "",
        "The search ranks the settings of each family by their median within-family UDR (Duan et al., ICLR",
        "2020). This page measures, per family, how well UDR orders models and settings by their",
        "disentanglement, and how much MIG each selection rule gives up against the best model of the",
        "family (its *regret*), on the same models. Written by `python experiments/udr_validity.py --analyse`",
        "from the models that had finished; the models table and the probe latents are committed in",
        f"[{folder.as_posix()}/]({os.path.relpath(folder, Path(args.report).parent)}/).",
        "",
        "## Coverage",
        "",
        f"**{len(done)} of the {planned} planned settings, {len(rows)} models** ({plan_text}; 3 seeds each).",
        "",
        "## How it is measured",
        "",
        "    " + info["command"],
        "",
        *data,
        f"- **Training**: the `disentangle` profile's settings: {info['steps']} steps, batch 32, Adam lr 1e-3,",
        "  10 components, Bernoulli reconstruction, Cβ-VAE's capacity over all the steps; a setting's 3 seeds",
        f"  (0, 1, 2) trained as one fused model (`tubervae.training.fused.train_fused`), {info['precision']}, "
        f"{info['threads']} torch thread.",
        "- **Grid**: the search ranges of `params.yaml`: β-VAE and β-TCVAE 6 log-spaced β from the low",
        "  to the high end; Cβ-VAE 3 β (linear) × C_max 6 and 12.",
        "- **Scores** on the evaluation set: the published MIG over all 10 components (mean over the "
        f"{len(info['factors'])} factors",
        "  that vary; the yardstick of every regret), DCI disentanglement (`gbt_fast` on "
        f"{dci_train} + {dci_test} photos,",
        f"  as the evaluate stage), the FactorVAE score. The *few-label* rules score MIG and DCI-d on {few[0]} or",
        f"  {few[1]} photos of the evaluation set with their factors, {LABEL_DRAWS} draws of those photos "
        "(the same for",
        "  every model); their regrets are the mean over the draws.",
        "- **UDR** on the probe's encoder means: informative components KL > 0.01, Lasso α 0.1, within",
        "  family = the other two seeds of the setting as partners (the search's objective is the median",
        "  over a setting's seeds); all-against-all = every finished model of every family a partner.",
        "  *The search's rule* is UDR as the search and the register stage use it: a setting whose median",
        "  number of informative components is below `search.min_active` (2) cannot be picked.",
        "  ModelCentrality (Lin et al., ICML 2020): the mean of the symmetrised Lasso pair score",
        "  ((UDR_ij + UDR_ji)/2) to the other models of the family's pool; its top model is the medoid.",
        "- **Regret** of a rule: the best MIG in the family minus the MIG of the model it picks",
        "  (*model* level: the top-scored model; *setting* level: the setting of top median score, judged",
        "  by its median MIG against the best median MIG); as measured on all the models and, in brackets,",
        f"  the 95 % interval over {args.n_boot} bootstrap resamples of each setting's seeds. Scores are",
        "  computed once on all models; a resample changes which models are there to pick. Ties pick each",
        "  tied model with equal chance. Spearman intervals: the same resamples (percentile).",
        *job,
        f"- **Host**: {info['host']}; training shared the 2 cores with other work at a low priority, so its "
        f"times{timing} are those of a busy machine.",
        "",
    ]


def models_table(rows: list[dict], scores: dict, names: list[str]) -> list[str]:
    lines = [
        "## The models",
        "",
        "UDR: within family, Lasso, paper aggregation; A2A: all-against-all; *inf.*: informative",
        "components on the probe; MIG₁₀₀, MIG₁₀₀₀: mean over the label draws."
        + (" job: the job score on the labelled photos." if "job" in scores else ""),
        "",
        "| family | setting | seed | inf. | UDR | A2A | centrality | ELBO | MIG | "
        + " | ".join(names)
        + " | DCI-d | FactorVAE | MIG₁₀₀ | MIG₁₀₀₀ |"
        + (" job |" if "job" in scores else ""),
        "|---|---|---|---|---|---|---|---|---|" + "---|" * len(names) + "---|---|---|---|" + "---|" * ("job" in scores),
    ]
    for i, r in enumerate(rows):
        cells = [
            FAMILY_NAMES[r["family"]],
            str(r["setting"]),
            f"{r['seed']:.0f}",
            f"{r['n_informative']:.0f}",
            fmt(scores["udr_lasso_paper"][i]),
            fmt(scores["udr_a2a"][i]),
            fmt(scores["centrality"][i]),
            f"{r['elbo_heldout']:.0f}",
            fmt(r["mig"]),
            *[fmt(r[f"mig_{f}"]) for f in names],
            fmt(r["dci_d"]),
            fmt(r["factorvae"]),
            fmt(float(np.mean(scores["mig_l100"][:, i]))),
            fmt(float(np.mean(scores["mig_l1000"][:, i]))),
            *([fmt(scores["job"][i])] if "job" in scores else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def family_section(fam: str, idx: np.ndarray, rows: list[dict], scores: dict, n_boot: int) -> list[str]:
    sub = {k: (v[:, idx] if v.ndim == 2 else v[idx]) for k, v in scores.items()}
    groups = [rows[i]["setting"] for i in idx]
    mig_q = np.array([rows[i]["mig"] for i in idx])
    dci_q = np.array([rows[i]["dci_d"] for i in idx])
    n_settings = len(set(groups))
    name = FAMILY_NAMES[fam]
    plural = "s" if n_settings != 1 else ""
    lines = [f"## {name}: {n_settings} setting{plural}, {idx.size} models", ""]
    med_udr = setting_medians(sub["udr_lasso_paper"], groups)
    med_mig = setting_medians(mig_q, groups)
    med_dci = setting_medians(dci_q, groups)
    settings = list(dict.fromkeys(groups))
    lines += [
        "Per setting (medians over seeds):",
        "",
        "| setting | UDR | MIG | DCI-d |",
        "|---|---|---|---|",
        *[f"| {s} | {fmt(u)} | {fmt(m)} | {fmt(d)} |" for s, u, m, d in zip(settings, med_udr, med_mig, med_dci)],
        "",
        "Spearman's ρ with its 95 % bootstrap interval over seeds (per model: over the models; per setting:",
        "over the settings' medians):",
        "",
        "| UDR | ρ with MIG, per model | per setting | ρ with DCI-d, per model | per setting |",
        "|---|---|---|---|---|",
    ]
    verdicts = {}
    for rule, text in RULES[1:7]:
        cells = []
        for quality in (mig_q, dci_q):
            for level in ("model", "setting"):
                fig = bootstrap_spearman(sub[rule], quality, groups, level=level, n_boot=n_boot)
                # Below three settings a ρ ranks a setting's seeds alone: not shown, not judged.
                cells.append(figure_cell(fig) if n_settings >= 3 else "–")
                if rule == "udr_lasso_paper" and quality is mig_q:
                    verdicts[level] = fig
        lines.append(f"| {text} | " + " | ".join(cells) + " |")
    lines.append("")
    if n_settings < 3:
        lines += [
            f"**{name} has {n_settings} finished setting{plural}: too few to judge ρ** (a setting's seeds alone "
            "say nothing about how UDR orders settings).",
            "",
        ]
    for level, over in (("model", "the models"), ("setting", "the settings' medians")):
        fig = verdicts.get(level)
        if n_settings < 3 or fig is None or not np.isfinite(fig.value):
            continue
        judged = (
            "above 0.6 with an interval clear of 0."
            if fig.value > 0.6 and fig.low > 0
            else "its interval is clear of 0, but ρ is not above 0.6."
            if fig.low > 0
            else "negative, with an interval clear of 0: UDR ranks against MIG here."
            if fig.high < 0
            else "its interval includes 0."
        )
        lines += [
            f"**Within {name}, ρ(UDR, MIG) over {over} is {fig.value:.2f} ({fmt(fig.low)} to {fmt(fig.high)})**: "
            + judged,
            "",
        ]
    best = int(np.argmax(mig_q))
    lines += [
        f"Regret in MIG (best model: setting {groups[best]}, seed {rows[idx[best]]['seed']:.0f}, MIG "
        f"{mig_q[best]:.3f}; best setting by median MIG: {settings[int(np.nanargmax(med_mig))]}, "
        f"{np.nanmax(med_mig):.3f}):",
        "",
        "| rule | regret, model | bootstrap mean | setting | bootstrap mean | picks (all models) |",
        "|---|---|---|---|---|---|",
    ]
    for entry in family_regrets(sub, mig_q, groups, n_boot):
        rule = entry["rule"]
        if rule == "random":
            pick = "–"
        elif np.all(np.isnan(sub[rule])):
            pick = "no feasible setting: a random pick"
        else:
            table = sub[rule]
            first = table[0] if table.ndim == 2 else table
            top = np.flatnonzero(first == np.nanmax(first))
            pick = ", ".join(f"{groups[t]} s{rows[idx[t]]['seed']:.0f}" for t in top[:3])
            pick += " (draw 1)" if table.ndim == 2 else ""
        mv, mm, ml, mh = entry["model"]
        sv, sm, sl, sh = entry["setting"]
        lines.append(
            f"| {entry['text']} | {mv:.3f} | {mm:.3f} ({ml:.3f} to {mh:.3f}) | {sv:.3f} | "
            f"{sm:.3f} ({sl:.3f} to {sh:.3f}) | {pick} |"
        )
    return [*lines, ""]


def report_tail(info: dict) -> list[str]:
    data = (
        f"- One data set, the photo folder `{info['folder']}`; the simulator's trial has a report of its own"
        f" ({REPORT})."
        if info.get("folder")
        else "- One data set, simulated by this project; each photo folder's trial has a report of its own"
        f" ({', '.join(sorted(p.as_posix() for p in Path(REPORT).parent.glob('udr-validity-*.md'))) or 'none yet'})."
    )
    return [
        "## What it does not cover",
        "",
        data,
        "- Settings not yet finished are absent from every figure above; a family with fewer than three",
        "  settings has no per-setting ρ.",
        "- One run, one host: three seeds per setting make the intervals wide.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--analyse", action="store_true", help="write the report from what has finished")
    parser.add_argument("--out", default=str(OUT), help="results folder (one subfolder per data set)")
    parser.add_argument(
        "--report",
        default=None,
        help=f"the report's file (default {REPORT}; for --folder docs/results/udr-validity-<folder>-<size>.md)",
    )
    parser.add_argument("--params", default="params.yaml", help="where the search ranges are read")
    parser.add_argument("--families", default="", help="comma-separated families to train (default: all, in order)")
    parser.add_argument("--settings", type=int, default=6, help="β values per β-VAE / β-TCVAE grid")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--simulator", default="geometry", choices=sorted(synth_factors.SIMULATORS))
    parser.add_argument(
        "--folder",
        default="",
        help="a photo folder with factors.csv (docs/your-photos.md) instead of the simulator: imported by the raw "
        "and preprocess stages into <out>/<folder name>-<size>/import; its train, udr_probe and test splits "
        "replace --n-train, --n-eval and the simulated photos",
    )
    parser.add_argument("--image-size", type=int, default=32, choices=(16, 32, 64))
    parser.add_argument(
        "--crop-fraction",
        type=float,
        default=1.0,
        help="--folder: the preprocess stage's centre crop (square photos: 1)",
    )
    parser.add_argument("--steps", type=int, default=5000, help="the disentangle profile's train.steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=10000, help="training photos (the disentangle profile's)")
    parser.add_argument("--n-eval", type=int, default=10000, help="held-out photos with factors, another seed")
    parser.add_argument("--probe", type=int, default=1000, help="UDR probe photos, drawn from the training photos")
    parser.add_argument("--data-seed", type=int, default=0, help="training photos' seed; held-out: this + 1")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the seeds (analysis)")
    args = parser.parse_args()
    if args.analyse:
        analyse(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
