"""Pruning a study's trials part-way: the judging steps and Optuna's pruners, shown feasible trials only.

The objective reports each trial's median UDR at `search.prune_at` × `train.steps`; the pruner
chosen by `search.pruner` decides whether the trial goes on. UDR rewards collapsed models, so
trials that ended infeasible are hidden from every pruner (`FeasibleView`).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from tubervae.config import Params


def prune_steps(params: Params) -> list[int]:
    """The training steps where a trial is judged (`search.prune_at` × `train.steps`); none without a pruner."""
    if params.search.pruner == "none":
        return []
    steps = params.train.steps
    return sorted({s for s in (round(f * steps) for f in params.search.prune_at) if 1 <= s < steps})


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    """Optuna's pruner for `search.pruner`, with its rungs on the judging steps, judging against feasible trials.

    Successive halving and Hyperband start at the first judging step and let one trial in
    `search.reduction_factor` go on at each rung (rungs at first step × factor^k: with the
    default [0.25, 0.5] and factor 2, at ¼ and ½ of training). The median pruner stops a trial
    whose UDR falls below the median of the complete trials at the same step, once
    `search.prune_startup_trials` trials are complete. Either way only feasible trials compete
    (`FeasibleCompetitors`).
    """
    search, stops = params.search, prune_steps(params)
    if not stops:
        return optuna.pruners.NopPruner()
    if search.pruner == "median":
        inner = optuna.pruners.MedianPruner(n_startup_trials=search.prune_startup_trials, n_warmup_steps=0)
    elif search.pruner == "successive_halving":
        inner = optuna.pruners.SuccessiveHalvingPruner(min_resource=stops[0], reduction_factor=search.reduction_factor)
    else:
        inner = _FeasibleHyperband(
            min_resource=stops[0], max_resource=params.train.steps, reduction_factor=search.reduction_factor
        )
    return FeasibleCompetitors(inner)


class FeasibleView:
    """A study as a pruner should see it: complete trials that ended infeasible are no competition.

    UDR rewards collapsed models, so a setting that ends infeasible (below `search.min_active`)
    often leads part-way: in `benchmarks/bench_pruning.py` β = 1 and 2 lead at ¼ and ½ of
    training and end with one informative component, and judged against them the median pruner
    stopped every setting that would have ended feasible. Everything but those trials is the study's.
    """

    def __init__(self, study: optuna.Study):
        self._viewed = study

    def get_trials(self, deepcopy: bool = True, states=None) -> list[FrozenTrial]:
        return [t for t in self._viewed.get_trials(deepcopy=deepcopy, states=states) if not _ended_infeasible(t)]

    def __getattr__(self, name: str):
        return getattr(self._viewed, name)


def _ended_infeasible(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.COMPLETE and trial.user_attrs.get("feasible") is False


class FeasibleCompetitors(optuna.pruners.BasePruner):
    """Optuna's `pruner`, shown the study through `FeasibleView`."""

    def __init__(self, pruner: optuna.pruners.BasePruner):
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return self.pruner.prune(FeasibleView(study), trial)


class _FeasibleHyperband(optuna.pruners.HyperbandPruner):
    """Hyperband whose brackets are seen through `FeasibleView` too (it builds them from the study's storage)."""

    def _create_bracket_study(self, study, bracket_id):
        return FeasibleView(super()._create_bracket_study(study, bracket_id))
