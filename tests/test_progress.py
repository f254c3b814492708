"""The progress lines of the long commands: how often they come and what they say."""

from __future__ import annotations

import io

from tubervae.runs.progress import SearchProgress, StepEvent, count, steps_line


def test_count_says_every_nth_item_and_the_last():
    stream = io.StringIO()
    assert list(count(range(7), 7, "udr: model", every=3, stream=stream)) == list(range(7))
    assert stream.getvalue().splitlines() == ["udr: model 3 of 7", "udr: model 6 of 7", "udr: model 7 of 7"]


def test_steps_line_speaks_once_per_tenth_and_at_the_end():
    stream = io.StringIO()
    on_step = steps_line("classify: the pixel CNN", 95, stream=stream)
    for step in range(1, 96):
        on_step(step, 1.0 / step)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # steps 10, 19, 29, …, 86 pass a tenth; 95 ends
    assert lines[0] == "classify: the pixel CNN: step 10 of 95, loss 0.1"
    assert lines[-1].startswith("classify: the pixel CNN: step 95 of 95, loss ")


def test_search_lines_name_the_trial_and_thin_each_seeds_steps():
    stream = io.StringIO()
    lines = SearchProgress("beta_vae", 3, stream=stream)
    lines.study("beta_vae-x", 1)
    lines.trial_started("run-a", 2, 5, "β 2.61", 3, 1000)
    for step in range(50, 1001, 50):  # logged every 50 steps: a line at each tenth only
        lines.step(StepEvent("run-a", 1, step, 1000, 100.0 - step / 100))
    lines.step(StepEvent("run-b", 0, 1000, 1000, 3.0))  # a trial it was not told of still prints
    lines.judged("run-a", 500, 0.41, feasible=False)
    lines.scored("run-a", 0.523, 4.0, feasible=True)
    got = stream.getvalue().splitlines()
    assert got[0] == "search beta_vae: study beta_vae-x holds 1 of 3 finished trials: 2 more to finish"
    assert got[1] == "search beta_vae: trial 2 of 3 (Optuna #5, β 2.61): 3 seeds of 1000 steps"
    seed_lines = [line for line in got if ", seed 1: " in line]
    assert [line.split("step ")[1].split(" of")[0] for line in seed_lines] == [str(s) for s in range(100, 1001, 100)]
    assert seed_lines[0] == "search beta_vae: trial 2 of 3, seed 1: step 100 of 1000, loss 99"
    assert "search beta_vae: training, seed 0: step 1000 of 1000, loss 3" in got
    assert "search beta_vae: trial 2 of 3: median UDR 0.410 at step 500 (infeasible: judged 0)" in got
    assert got[-1] == "search beta_vae: trial 2 of 3 scored: median UDR 0.523, 4 informative components"
