"""The learning rate's schedule, as metrics.csv records it in both styles: a linear warm-up,
then a cosine decay to a tenth of --lr at the last step; and a run resumed with a larger
budget goes on from the rate it had reached, without a jump, down to the same floor at the
new last step (README "A run" and "Resuming").

The raw loop writes the rate in its `lr` column, Lightning's LearningRateMonitor in one
column per parameter group (`lr-AdamW/pg1`, ...). In both, a row's `step` is how many
optimizer steps the scheduler has taken when the rate shown is the one in force: the raw
loop counts from 1 and writes the rate after its step, Lightning counts from 0 and writes it
before (README "The two styles"). So one formula of the step column checks both.
"""

from __future__ import annotations

import math

import pytest
from conftest import read_rows

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]
PEAK = 3e-3  # tabular-regression's default --lr
WARMUP = ["train.warmup_ratio=0.25"]  # long enough to be seen: a quarter of the budget


def scheduled(steps: int, budget: int) -> float:
    """The documented rate after `steps` scheduler steps of a run of `budget` steps: from
    PEAK / (warm-up + 1) up to PEAK in a straight line, then a cosine down to PEAK / 10."""
    warmup, floor = int(0.25 * budget), PEAK / 10
    if steps <= warmup:
        return PEAK * (1 + steps) / (warmup + 1)
    return (
        floor + (PEAK - floor) * (1 + math.cos(math.pi * (steps - warmup) / (budget - warmup))) / 2
    )


def continued(steps: int, stopped: int, budget: int, new_budget: int) -> float:
    """The rate of a run that stopped after `stopped` steps of `budget` and resumed with
    `new_budget`: from the rate it had reached, a cosine down to the floor at `new_budget`."""
    warmup, floor = int(0.25 * budget), PEAK / 10
    reached = scheduled(stopped, budget)
    length = new_budget - warmup
    phase = (1 + math.cos(math.pi * (steps - warmup) / length)) / (
        1 + math.cos(math.pi * (stopped - warmup) / length)
    )
    return floor + (reached - floor) * phase


def rates(rows: list[dict[str, float]]) -> dict[int, float]:
    """{step: the learning rate logged there}, from either style's columns."""
    found = {}
    for row in rows:
        columns = [key for key in row if key == "lr" or key.startswith("lr-")]
        if columns:
            values = {row[key] for key in columns}
            assert len(values) == 1, f"the parameter groups' rates differ: {row}"
            found[int(row["step"])] = values.pop()
    return found


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "framework",
    [
        pytest.param(f, marks=pytest.mark.xdist_group("tabular-regression-cpu"))
        for f in ("raw", "lightning")
    ],
)
def test_warmup_then_cosine_and_a_larger_budget_continues_without_a_jump(
    framework, installed_project, tmp_path
):
    combination = {"task": "tabular-regression", "framework": framework, "hardware": "cpu"}
    installed = installed_project(combination)
    common = [*CPU, "--output-dir", str(tmp_path)]
    # A whole run of 40 steps, its rate seen every 4 steps (an evaluation each time).
    whole = ["train", *common, "--name", "whole", "--max-steps", "40", *WARMUP]
    whole += ["train.eval_every=4", "train.patience=0"]
    # The same run, stopped at its first evaluation (any finite val/mse is under the
    # threshold), mid-cosine; then resumed with twice the budget, to its end.
    stopped = ["train", *common, "--name", "resumed", "--max-steps", "40", *WARMUP]
    stopped += ["train.eval_every=20", "train.patience=0", "train.stopping_threshold=1e30"]
    more = ["train", *common, "--name", "resumed", "--resume", "last", "--max-steps", "80"]
    more += ["train.eval_every=10", "train.stopping_threshold=null"]
    outcomes = installed.drive(whole, stopped, more)
    for outcome in outcomes:
        outcome.check()
    assert "stopped: early stopping: val/mse is past its stopping threshold" in outcomes[1].stdout
    assert "stopped: the step budget is spent (80 steps)" in outcomes[2].stdout

    shown = rates(read_rows(tmp_path / "whole"))
    assert len(shown) >= 9, shown
    for step, lr in shown.items():
        assert lr == pytest.approx(scheduled(step, 40), rel=1e-5), (step, shown)
    warmup = [lr for step, lr in sorted(shown.items()) if step <= 10]
    assert len(warmup) >= 2 and warmup == sorted(warmup), shown  # up, then down
    assert max(shown.values()) == pytest.approx(PEAK, rel=0.05), shown

    shown = rates(read_rows(tmp_path / "resumed"))
    first = {step: lr for step, lr in shown.items() if step <= 20}
    after = {step: lr for step, lr in shown.items() if step > 20}
    assert first and len(after) >= 5, shown
    for step, lr in first.items():  # the stopped run's rows, kept as they were
        assert lr == pytest.approx(scheduled(step, 40), rel=1e-5), (step, shown)
    for step, lr in after.items():
        assert lr == pytest.approx(continued(step, 20, 40, 80), rel=1e-5), (step, shown)
    # No jump: from where it was, down every row, to the floor at the new end.
    ordered = [shown[step] for step in sorted(shown) if step >= 15]
    assert ordered == sorted(ordered, reverse=True), shown
    assert shown[max(shown)] == pytest.approx(PEAK / 10, rel=1e-2), shown
    # (Recomputing the schedule over the 80 steps instead would have sent the rate from
    # 0.78 x PEAK back up to PEAK at step 20, and the rows after it with it.)
