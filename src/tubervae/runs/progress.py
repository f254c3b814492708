"""Progress of the long commands, one line per event on stderr: the same in a terminal and under `dvc repro`.

- the search (`SearchProgress`): a trial's start (k of n, its setting), each seed every tenth of its
  steps (step of steps, the latest loss), the trial's median UDR when it is judged part-way and when it
  is scored. Seeds trained in the training pool's worker processes send their steps back through a
  queue that the pool reads in the search's process (`runs.pool`), so they print like the others;
- the stages that score many models (`count`): "evaluate: model 3 of 18 scored", and the like; a
  network trained in a stage (`steps_line`): the classify stage's pixel CNN.

Lines, not bars: several seeds train at once, and `dvc repro` is read from a log as often as live.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO, TypeVar

T = TypeVar("T")
PARTS = 10  # a seed's line every tenth of its steps


@dataclass(frozen=True)
class StepEvent:
    """A seed's training reached `step` of `steps` with the mean `loss` of its last logging window."""

    parent_id: str | None  # the trial's run: which trial the seed belongs to
    seed: int
    step: int
    steps: int
    loss: float


StepCallback = Callable[[StepEvent], None]


def say(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stderr, flush=True)


def count(items: Iterable[T], total: int, what: str, *, every: int = 1, stream: TextIO | None = None) -> Iterator[T]:
    """`items`, with a line "<what> k of <total>" after each `every`-th one and after the last."""
    k = 0
    for k, item in enumerate(items, 1):
        yield item
        if k % every == 0 or k == total:
            say(f"{what} {k} of {total}", stream)


def steps_line(
    what: str, total: int, *, parts: int = PARTS, stream: TextIO | None = None
) -> Callable[[int, float], None]:
    """A callback `(step, loss)` that prints "<what>: step k of <total>, loss x" every `parts`-th of the steps."""
    shown = [0]

    def on_step(step: int, loss: float) -> None:
        part = step * parts // max(total, 1)
        if part > shown[0] or step == total:
            shown[0] = part
            say(f"{what}: step {step} of {total}, loss {loss:.4g}", stream)

    return on_step


class SearchProgress:
    """The lines of one family's search (module docstring); thread-safe, as trials run in threads."""

    def __init__(self, family: str, n_trials: int, *, stream: TextIO | None = None, parts: int = PARTS):
        self.family, self.n_trials, self.stream, self.parts = family, n_trials, stream, parts
        self._trials: dict[str | None, str] = {}  # trial run id -> "trial k of n"
        self._shown: dict[tuple[str | None, int], int] = {}  # (trial run, seed) -> the last tenth shown
        self._lock = threading.Lock()

    def _say(self, text: str) -> None:
        say(f"search {self.family}: {text}", self.stream)

    def study(self, name: str, finished: int) -> None:
        todo = max(self.n_trials - finished, 0)
        more = f"{todo} more to finish" if todo else "nothing to train"
        self._say(f"study {name} holds {finished} of {self.n_trials} finished trials: {more}")

    def trial_started(self, parent_id: str, position: int, number: int, setting: str, seeds: int, steps: int) -> None:
        name = f"trial {position} of {self.n_trials}"
        with self._lock:
            self._trials[parent_id] = name
        self._say(f"{name} (Optuna #{number}, {setting}): {seeds} seeds of {steps} steps")

    def step(self, event: StepEvent) -> None:
        """A seed's line when its training passes the next tenth of its steps (and at its last step)."""
        part = event.step * self.parts // max(event.steps, 1)
        key = (event.parent_id, event.seed)
        with self._lock:
            if part <= self._shown.get(key, 0) and event.step != event.steps:
                return
            self._shown[key] = part
            name = self._trials.get(event.parent_id, "training")
        self._say(f"{name}, seed {event.seed}: step {event.step} of {event.steps}, loss {event.loss:.4g}")

    def judged(self, parent_id: str, step: int, udr: float, feasible: bool) -> None:
        verdict = "" if feasible else " (infeasible: judged 0)"
        self._say(f"{self._name(parent_id)}: median UDR {udr:.3f} at step {step}{verdict}")

    def scored(self, parent_id: str, udr: float, n_active: float, feasible: bool) -> None:
        verdict = "" if feasible else ", infeasible"
        self._say(f"{self._name(parent_id)} scored: median UDR {udr:.3f}, {n_active:g} informative components{verdict}")

    def pruned(self, parent_id: str, reason: str) -> None:
        self._say(f"{self._name(parent_id)} pruned: {reason}")

    def _name(self, parent_id: str) -> str:
        with self._lock:
            return self._trials.get(parent_id, "trial")
