"""`tubervae <stage>`: one subcommand per DVC stage and MLproject entry point.

params.yaml is read and validated once, before a stage touches any file; command-line
options override single values. Heavy libraries are imported by the stage that needs
them, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import logging
import os
import sys
from pathlib import Path

from tubervae.config import FAMILIES, GOOD_FRACTION, ConfigError, Params, load_params, parse_params

log = logging.getLogger("tubervae")


def _override(params: Params, section: str, **values) -> Params:
    """Apply command-line overrides through the same validation as params.yaml."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return params
    raw = {f.name: dataclasses.asdict(getattr(params, f.name)) for f in dataclasses.fields(Params)}
    raw[section].update(values)
    return parse_params(raw)


def cmd_synth(args, params: Params | None) -> None:
    from tubervae.data import synth_dataset

    out = Path(args.out)
    sheet = Path(args.contact_sheet) if args.contact_sheet else None
    if sheet is not None and sheet.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"--contact-sheet {sheet} lies inside --out {out}: it would be imported as a photo")
    good_fraction = GOOD_FRACTION if args.good_fraction is None else args.good_fraction
    workers = args.workers or None
    frame = synth_dataset.generate(out, args.n_images, seed=args.seed, good_fraction=good_fraction, workers=workers)
    if sheet is not None:
        synth_dataset.contact_sheet(out, sheet, seed=args.seed)
    print(f"wrote {len(frame)} photos to {out}" + (f", a contact sheet to {sheet}" if sheet else ""))


def cmd_raw(args, params: Params) -> None:
    from tubervae.stages import raw

    params = _override(params, "data", source=args.source, n_images=args.n_images)
    raw.run(params, root=args.root)


def cmd_source(args, params: Params) -> None:
    from tubervae.stages import source

    found = source.run(params, root=args.root)
    if found["source"] == "synthetic":
        print("data.source: synthetic (simulated photos)")
    else:
        print(
            f"data.source {found['source']}: {found['entries']} entries, {found['files_read']} files read "
            f"({found['bytes'] / 1e6:.1f} MB), sha256 {found['sha256'][:12]}"
        )


def cmd_preprocess(args, params: Params) -> None:
    from tubervae.stages import preprocess

    meta = preprocess.run(params, root=args.root)
    print(f"data version {meta['data_version']}: " + ", ".join(f"{k} {v['n']}" for k, v in meta["splits"].items()))


def cmd_train(args, params: Params) -> None:
    from tubervae.runs.training_run import train_command

    params = _override(params, "train", steps=args.steps)
    result = train_command(
        params.train,
        family=args.family,
        beta=args.beta,
        c_max=args.c_max,
        guide_weight=args.guide_weight,
        seed=args.seed,
        kl_threshold=params.udr.kl_threshold,
        root=args.root,
        run_id=args.mlflow_run_id,
    )
    print(f"run {result['run_id']}: n_active {result['n_active']}, test reconstruction {result['test_rec']:.1f}")


def cmd_search(args, params: Params) -> None:
    from tubervae.stages import search

    params = _override(params, "search", enqueue_grid=True if args.enqueue_grid else None)
    summary = search.run(
        params, args.family, n_trials=args.n_trials, storage=args.storage, root=args.root, run_id=args.mlflow_run_id
    )
    best = summary["best_params"]
    print(
        f"{args.family}: {summary['n_complete']} complete trials ({summary['n_feasible']} feasible); "
        f"best {best} {summary['search_objective'].upper()} {summary['best_value']}"
        if best
        else f"{args.family}: {summary['n_complete']} complete trials, none feasible"
    )


def cmd_udr(args, params: Params) -> None:
    from tubervae.stages import udr

    summary = udr.run(params, root=args.root, all_runs=args.all_runs, run_id=args.mlflow_run_id)
    for family, best in summary["families"].items():
        print(f"{family}: best {best['best_param']} UDR {best['best_udr']:.3f} (#top {best['best_n_top']:g})")


def cmd_register(args, params: Params) -> None:
    from tubervae.stages import register

    s = register.run(params, root=args.root, run_id=args.mlflow_run_id)
    print(
        f"{s['model']}@{s['alias']} = version {s['version']}: {s['family']} {s['setting']} seed {s['seed']} "
        f"(UDR {s['udr_within']:.3f}, {s['n_active']} informative components)"
    )
    print(s["gate"]["line"])


def cmd_classify(args, params: Params) -> None:
    from tubervae.stages import classify

    m = classify.run(params, root=args.root, run_id=args.mlflow_run_id)
    if "skipped" in m:
        print(f"classify skipped, {params.classify.model_name} not registered: {m['skipped']}")
        return
    served = m["any_rule"]  # the rule the new version serves (the one-cut rule is in metrics.json beside it)
    t = served["test"]
    print(
        f"any_rule: {served['rule']}; test accuracy {t['accuracy']:.3f}, "
        f"balanced accuracy {t['balanced_accuracy']:.3f} (majority baseline accuracy {t['majority_accuracy']:.3f})"
    )
    print(m["gate"]["line"])


def cmd_evalset(args, params: Params) -> None:
    from tubervae.stages import evalset

    meta = evalset.run(params, root=args.root)
    print(f"evaluation set: {meta['n']} photos" + (f" ({meta['reason']})" if meta["n"] == 0 else ""))


def cmd_evaluate(args, params: Params) -> None:
    from tubervae.stages import evaluate

    summary = evaluate.run(params, root=args.root, run_id=args.mlflow_run_id)
    if summary.get("skipped"):
        print(f"evaluate skipped: {summary['skipped']}")
        return
    key = f"udr_within_{params.udr.similarity}"
    rhos = {m: v["rho"] for m, v in summary["correlations"][key].items()}
    print(
        f"Spearman correlation of {key} with supervised metrics over {summary['n_models']} models: "
        + ", ".join(f"{m} {'n/a' if r is None else f'{r:.2f}'}" for m, r in rhos.items())
    )


def cmd_serve(args, params: Params | None) -> None:
    from tubervae.runs.model_server import serve

    code = serve(args.model, root=args.root, host=args.host, port=args.port, workers=args.workers)
    if code:
        raise RuntimeError(f"the model server stopped with exit code {code}")


# The module each command runs, imported before it runs (and the objects it builds frozen, see `main`).
COMMAND_MODULES = {
    "synth": "tubervae.data.synth_dataset",
    "source": "tubervae.stages.source",
    "raw": "tubervae.stages.raw",
    "preprocess": "tubervae.stages.preprocess",
    "train": "tubervae.runs.training_run",
    "search": "tubervae.stages.search",
    "udr": "tubervae.stages.udr",
    "register": "tubervae.stages.register",
    "classify": "tubervae.stages.classify",
    "evalset": "tubervae.stages.evalset",
    "evaluate": "tubervae.stages.evaluate",
    "serve": "tubervae.runs.model_server",
}


def _whole(text: str) -> int:
    """An integer, also when written '3.0' (MLflow passes float parameters that way)."""
    value = float(text)
    if not value.is_integer() or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tubervae",
        description="Disentangled VAE representations of tuber photos: simulate or import photos, train "
        "β-VAE / β-TCVAE / Cβ-VAE models, rank them with UDR, search with Optuna, register the "
        "champion and classify tubers. Each subcommand is one DVC stage (see dvc.yaml).",
    )
    parser.add_argument(
        "--root",
        default=".",
        help="project folder: every stage reads and writes its data/, reports/, mlflow.db and optuna.db "
        "(default: the working folder)",
    )
    parser.add_argument("--params", help="settings file (default: params.yaml in the project folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")

    p = sub.add_parser(
        "synth",
        help="simulate tuber photos into a folder (standalone)",
        description="Write simulated 640×480 tuber photos, labels.csv and factors.csv into OUT. Needs no "
        "params.yaml; OUT imports as a photo folder (data.source: OUT), unlabelled, with its factors.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-images", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--good-fraction", type=float, help="share of tubers with no defect (default: the thesis's 0.183)")
    p.add_argument("--contact-sheet", help="also draw a contact sheet into this PNG file (outside OUT)")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser(
        "source",
        help="stage source: fingerprint the photos of data.source, for DVC",
        description="Scan the data.source folder as the import would and write a fingerprint of its "
        "photos and factors.csv (names, decisions, content hashes) to reports/data/source.json. The "
        "raw stage depends on it: dvc repro re-imports exactly when the photos changed.",
    )
    p.set_defaults(fn=cmd_source)

    p = sub.add_parser(
        "raw",
        help="stage raw: simulate photos or import a folder into data/raw",
        description="Fill data/raw/ from data.source: 'synthetic' runs the simulator; a folder "
        "path imports real photos (good/ and bad/ subfolders give labels). Every file "
        "is checked; reports/data/ingest.csv says what was kept and why.",
    )
    p.add_argument("--source", help="override data.source (a relative folder is read from the project folder)")
    p.add_argument("--n-images", type=int, help="override data.n_images")
    p.set_defaults(fn=cmd_raw)

    p = sub.add_parser(
        "preprocess",
        help="stage preprocess: crop, resize, split into data/processed",
        description="Centre-crop and resize every photo, then split into train, test, the "
        "labelled set and the UDR probe set (data/processed/*.npz).",
    )
    p.set_defaults(fn=cmd_preprocess)

    p = sub.add_parser(
        "train",
        help="train one VAE run (tracked in MLflow)",
        description="Train one model of a family at one setting and seed, with the train "
        "section of params.yaml; resumes from its checkpoint when killed.",
    )
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--beta", type=float, required=True)
    p.add_argument("--c-max", type=float, default=0.0, help="capacity C_max in nats (cbeta_vae only)")
    p.add_argument(
        "--guide-weight", type=float, default=0.0, help="λ of the logistic head on component 0 (guided_* families only)"
    )
    p.add_argument("--seed", type=_whole, default=0)
    p.add_argument("--steps", type=int, help="override train.steps")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser(
        "search",
        help="stage search@<family>: Optuna study with UDR as the objective",
        description="Run (or resume) the family's Optuna study until it has n_trials complete "
        "trials; each trial trains one setting on search.seeds seeds and scores the "
        "median within-setting UDR. Writes reports/search/<family>.json and plots, its numbers in "
        "reports/metrics/search_<family>.json and the plot data in reports/plots/search_<family>.csv.",
    )
    p.add_argument("--family", required=True, choices=FAMILIES)
    p.add_argument("--n-trials", type=_whole, help="total complete trials wanted (default, or 0: from params.yaml)")
    p.add_argument(
        "--storage",
        help="Optuna storage URL, e.g. postgresql+psycopg2://user:pw@host/db to share "
        "one study between machines (default: sqlite:///<project>/optuna.db)",
    )
    p.add_argument("--enqueue-grid", action="store_true", help="run the thesis's grid points first")
    p.set_defaults(fn=cmd_search)

    p = sub.add_parser(
        "udr",
        help="stage udr: UDR tables within families and all-against-all",
        description="Rank the trained models with UDR (udr section of params.yaml): the thesis's "
        "tables per family and A2A, the herd-effect table and similarity heat maps "
        "in reports/udr/, and udr (within-setting) / udr_a2a metrics on every model's run.",
    )
    p.add_argument(
        "--all-runs",
        action="store_true",
        help="rank every finished VAE run of the experiment, not only the search's trials",
    )
    p.set_defaults(fn=cmd_udr)

    p = sub.add_parser(
        "register",
        help="stage register: promote the champion VAE (alias 'champion')",
        description="Choose the champion from reports/udr/models.csv (feasible settings, best "
        "within-family UDR; among near-ties more informative components, or with register.select: job "
        "the best multi-defect rule in cross-validation on the labelled photos, or with centrality the "
        "feasible model of highest ModelCentrality in its family) and register it "
        "as a new version of register.model_name: alias 'champion' when its score is not below the current "
        "champion's on the same data version, else 'challenger' (register.force_promotion overrides).",
    )
    p.set_defaults(fn=cmd_register)

    p = sub.add_parser(
        "classify",
        help="stage classify: threshold rules on the champion's components, test metrics",
        description="Fit the good/bad rules on the labelled set with the champion's latents (one threshold, "
        "and 'bad if any of up to classify.max_rules cuts fires'), score the test set against learners on "
        "the latents and a pixel CNN, write reports/classify/ and register the served rule as a new version "
        "of classify.model_name: alias 'champion' when its cross-validated balanced accuracy on the labelled "
        "photos beats chance (interval above 0.5) and the current champion's, else 'challenger' "
        "(classify.force_promotion overrides).",
    )
    p.set_defaults(fn=cmd_classify)

    p = sub.add_parser(
        "evalset",
        help="stage evalset: a dedicated simulated evaluation set for the supervised metrics",
        description="Simulate evaluate.set_size photos from the simulator's own evaluation streams (never a "
        "training photo), preprocess them in memory like the pipeline, and keep the arrays and factors in "
        "data/evalset/. Records an empty set when the photos come from a folder.",
    )
    p.set_defaults(fn=cmd_evalset)

    p = sub.add_parser(
        "evaluate",
        help="stage evaluate: supervised metrics vs UDR (photos with known factors)",
        description="MIG, DCI, SAP and FactorVAE score of every ranked model on the evaluation set's "
        "scored factors (data/evalset/; for a folder of photos with its own factors.csv, the test split's), "
        "and how well UDR correlates with them (reports/evaluate/).",
    )
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser(
        "serve",
        help="serve a registered model (default tuber-quality@champion) after checking its files",
        description="Copy the model version's files out of the tracking store, check each against the SHA-256 "
        "recorded when it was registered (a changed, added or missing file is refused before any of its code "
        "runs), and serve that copy with `mlflow models serve` in this environment. Needs no params.yaml.",
    )
    p.add_argument(
        "--model", default="models:/tuber-quality@champion", help="models:/<name>@<alias> or models:/<name>/<version>"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--workers", type=int, default=1)
    p.set_defaults(fn=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.verbose:  # MLflow's own INFO lines (system metrics started and stopped, …) only when asked for
        logging.getLogger("mlflow").setLevel(logging.INFO)
    # `mlflow run` hands its run over in MLFLOW_RUN_ID: the entry point logs into that run.
    args.mlflow_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # progress bars of our own suffice
    try:
        # synth and serve need nothing but their options; every stage reads the project's settings.
        params = (
            None if args.command in ("synth", "serve") else load_params(args.params or Path(args.root) / "params.yaml")
        )
        # The libraries a stage imports (torch, MLflow, scikit-learn) leave a few million objects that live
        # as long as the process. Frozen, they are out of the garbage collector's reach: its full passes
        # during the stage and the several at exit no longer walk them, which saves a small stage a sixth to
        # a quarter of its time (benchmarks/bench_stage_start.py). Objects made later are collected as usual.
        importlib.import_module(COMMAND_MODULES[args.command])
        gc.freeze()
        args.fn(args, params)
    except ConfigError as exc:
        if args.debug:
            raise
        print(f"tubervae: invalid setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        print(f"tubervae {args.command}: stopped ({type(exc).__name__})", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _one_line(exc, args.root)
        if args.debug or message is None:
            raise
        print(f"tubervae {args.command}: error: {message}", file=sys.stderr)
        return 1
    finally:
        gc.freeze()  # the interpreter's exit walks none of what the stage built either
    return 0


def _one_line(exc: Exception, root: str) -> str | None:
    """The error as one line that says what to do; None for an error nobody foresaw (a bug: traceback).

    A stage's own errors (FileNotFoundError, RuntimeError, ValueError) are already written that way.
    MLflow's and its database's are not: they are recognised by their module, so that `--help` and the
    stages that never touch MLflow import none of it.
    """
    if any(c.__module__.split(".")[0] in ("mlflow", "sqlalchemy") for c in type(exc).__mro__):
        from tubervae.runs.tracker import explain_mlflow_error

        return explain_mlflow_error(exc, root)
    if isinstance(exc, FileNotFoundError | RuntimeError | ValueError):
        return str(exc) or type(exc).__name__
    return None


if __name__ == "__main__":
    sys.exit(main())
