"""Optuna at the edge: where a family's study lives, its name, its sampler, and dead workers' trials.

A study's name carries a fingerprint of everything that makes its models comparable (data
version, training settings, seeds, UDR settings), so changed settings start a new study. The
storage is an Optuna RDB (SQLite by default, PostgreSQL for several machines) whose heartbeat
re-queues the trials of workers that stopped beating; `fail_dead_local_trials` does it at once
for workers on this host that are known dead. `TrialSeededSampler` seeds TPE from each trial's
number, so a resumed study does not repeat its first suggestions, two workers never share a seed,
and a study run by one worker stays reproducible. `describe_study` records the settings behind the
fingerprint on the study; `enqueue_grid` queues a family's grid points as its first trials.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import random
import socket
import threading
import time
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import SQLAlchemyError

from tubervae.config import Params, SearchSpace
from tubervae.runs.tracker import process_alive
from tubervae.training.checkpoints import weight_identity

log = logging.getLogger(__name__)


def storage_url(root: str | Path = ".") -> str:
    return f"sqlite:///{Path(root).resolve() / 'optuna.db'}"


def study_identity(params: Params, data_version: str) -> dict:
    """What makes a study's models and scores comparable: the settings behind its fingerprint."""
    return {
        "train": weight_identity(params.train),
        "seeds": params.search.seeds,
        "data_version": data_version,
        "min_active": params.search.min_active,
        "udr": dataclasses.asdict(params.udr),
    }


def fingerprint(params: Params, data_version: str) -> str:
    return hashlib.sha256(json.dumps(study_identity(params, data_version), sort_keys=True).encode()).hexdigest()[:10]


def study_name(family: str, params: Params, data_version: str) -> str:
    """Family, a few readable settings, and the fingerprint of everything that makes the models comparable.

    e.g. `beta_vae-2000steps-3seeds-lasso-32f9c81004`: the fingerprint alone decides, so two
    settings that differ anywhere never share a study; the words are for people (the study's
    user attributes spell out every setting behind the fingerprint).
    """
    train, udr = params.train, params.udr
    readable = f"{train.steps}steps-{params.search.seeds}seeds-{udr.similarity}"
    return f"{family}-{readable}-{fingerprint(params, data_version)}"


def legacy_study_name(family: str, params: Params, data_version: str) -> str:
    """The name studies had before the readable part (`beta_vae-32f9c81004`): such a study is resumed."""
    return f"{family}-{fingerprint(params, data_version)}"


def describe_study(study: optuna.Study, family: str, params: Params, data_version: str) -> None:
    """Name the objective (optuna-dashboard shows "udr", not "Objective 0") and record, as the study's
    user attributes, the settings its fingerprint stands for. Written once; a worker that finds them
    written (or loses the race to write them on a shared database) leaves them."""
    wanted = {
        "family": family,
        "search_objective": params.search.objective,
        "objective": objective_text(params),
        "fingerprint": fingerprint(params, data_version),
        **study_identity(params, data_version),
    }
    try:
        if study.metric_names is None:
            study.set_metric_names([params.search.objective])
        present = study.user_attrs
        for key, value in wanted.items():
            if key not in present:
                study.set_user_attr(key, value)
    except (SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        log.debug("study attributes already being written by another worker (%s)", type(exc).__name__)


def objective_text(params: Params) -> str:
    """What a trial's value is, in words (`search.objective`)."""
    if params.search.objective == "elbo":
        return f"median held-out ELBO (nats per test photo) over {params.search.seeds} seeds"
    if params.search.objective == "measured_mig":
        return (
            f"median MIG over {params.search.seeds} seeds on the photos with measured factors "
            f"(up to {params.search.measured_photos or 'all'})"
        )
    if params.search.objective == "job":
        return (
            f"median job score over {params.search.seeds} seeds (cross-validated balanced accuracy of the "
            f"multi-defect rule on the labelled photos)"
        )
    return (
        f"median within-setting UDR over {params.search.seeds} seeds "
        f"({params.udr.similarity} similarity, {params.udr.aggregate} aggregation)"
    )


def study_objective(study: optuna.Study) -> str | None:
    """The `search.objective` a study optimised: recorded on it, or "udr" for a study begun before the
    setting existed (its metric is named "udr"); None for a study that records none and has no trial."""
    recorded = study.user_attrs.get("search_objective")
    if recorded is None and (study.metric_names is not None or study.get_trials(deepcopy=False)):
        recorded = (study.metric_names or ["udr"])[0]
    return recorded


def check_objective(study: optuna.Study, objective: str, storage_url: str = "") -> None:
    """Refuse to go on with a study that optimised another objective: its trials' values would mix two
    scales, and the best trial would be meaningless. The objective is not part of the study's fingerprint,
    so that a changed `search.objective` meets its old study here instead of silently starting a new one."""
    recorded = study_objective(study)
    if recorded is None or recorded == objective:
        return
    where = f" --storage {storage_url}" if storage_url else ""
    raise ValueError(
        f"the study {study.study_name!r} optimised search.objective {recorded!r}; it cannot be resumed with "
        f"search.objective {objective!r}, whose values are not comparable with its trials'. Set search.objective: "
        f"{recorded} to resume it, or delete it (optuna delete-study --study-name {study.study_name}{where}) to "
        f"search again by {objective!r}; the seeds' finished runs are reused either way"
    )


class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
    """Re-queue a dead worker's trial with its parameters but nothing it had recorded.

    The copy must not carry the dead worker's host and pid (another worker on that host
    would take the retry for the dead trial), its MLflow run ids and scores, its failure
    reason, a constraint value (Optuna keeps the first one set and would ignore the
    retry's own), or the rungs successive halving recorded for it (the retry would start
    judged at a later rung than the steps it reports).
    """

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        clean = copy.deepcopy(trial)
        clean.user_attrs = {}
        clean.system_attrs = {
            k: v
            for k, v in clean.system_attrs.items()
            if k != "fail_reason" and not k.startswith(("constraints", "completed_rung_"))
        }
        super().__call__(study, clean)


def make_storage(url: str, params: Params, attempts: int = 5) -> RDBStorage:
    """The study's storage; workers creating the tables of a fresh database at once retry.

    On PostgreSQL two processes creating Optuna's schema together collide (duplicate
    type names); the loser finds the tables made once it tries again.
    """
    for attempt in range(1, attempts + 1):
        try:
            return RDBStorage(
                url,
                heartbeat_interval=params.search.heartbeat_interval,
                grace_period=params.search.grace_period,
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=params.search.max_retry),
            )
        except SQLAlchemyError as exc:
            if attempt == attempts:
                raise
            log.warning("opening the study storage failed (%s); retrying", type(exc).__name__)
            time.sleep(random.uniform(0.2, 1.0) * attempt)
    raise AssertionError("unreachable")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE whose random state is set from the trial's number when the trial starts.

    Optuna keeps no sampler state in the storage: a sampler seeded once per process
    repeats its first suggestions in every resumed run, and two workers seeded alike
    suggest the same points. The trial number is unique in the study and grows with the
    history, so neither happens, and a study run by one worker stays reproducible.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self._tpe = self._make(seed)
        self._by_trial: dict[int, optuna.samplers.TPESampler] = {}  # trials sampled at once, in threads
        self._lock = threading.Lock()

    @staticmethod
    def _make(seed: int) -> optuna.samplers.TPESampler:
        # constant_liar: trials running on other workers count as pending, not as unknown
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def _of(self, trial) -> optuna.samplers.TPESampler:
        with self._lock:
            return self._by_trial.get(trial.number, self._tpe)

    def before_trial(self, study, trial) -> None:
        tpe = self._make(self.seed + trial.number)
        with self._lock:
            self._by_trial[trial.number] = tpe
        tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._of(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._of(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._of(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._of(trial).after_trial(study, trial, state, values)
        with self._lock:
            self._by_trial.pop(trial.number, None)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


def fail_dead_local_trials(
    study: optuna.Study, storage: optuna.storages.BaseStorage, max_retry: int | None = None
) -> list[int]:
    """Trials left RUNNING by a killed worker on this host fail now and are re-queued.

    The heartbeat does the same for other machines after the grace period; on this host
    we know the worker is dead without waiting. `storage` is the study's own storage:
    Optuna's public API has no call to fail a trial of another process, the storage does.
    """
    host = socket.gethostname()
    retry = RetryStaleTrial(max_retry=max_retry)
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") != host or not str(attrs.get("pid", "")).isdigit():
            continue
        if process_alive(int(attrs["pid"])):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            # The reason first: a finished trial accepts no more attributes.
            storage.set_trial_system_attr(trial_id, "fail_reason", "worker killed")
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker on this host got there first
        retry(study, storage.get_trial(trial_id))
        failed.append(trial.number)
    if failed:
        log.warning("re-queued trial(s) %s of a killed worker", failed)
    return failed


def enqueue_grid(study: optuna.Study, space: SearchSpace) -> None:
    for point in space.grid:
        study.enqueue_trial(dict(point), skip_if_exists=True)
