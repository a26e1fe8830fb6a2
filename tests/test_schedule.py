"""Resuming with a larger budget continues the learning-rate schedule without a jump, in both
engines alike.

The rule (README "How training runs"): a resumed run with a larger --max-steps keeps the rate
it had reached and decays it along a new cosine to the same floor, a tenth of --lr, by the
new last step. Recomputing the old schedule over the new budget instead would send the rate
back up: at step 50 of a warm-up + cosine over 80 steps the factor is 0.40; over 120 it
would be 0.69.
"""

from __future__ import annotations

import pytest
from conftest import read_metrics

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]


@pytest.mark.timeout(600)
@pytest.mark.xdist_group("tabular-regression-cpu")
def test_a_larger_budget_continues_the_rate_from_where_it_was(installed_project, tmp_path):
    histories = {}
    for framework in ("raw", "lightning"):
        combination = {"task": "tabular-regression", "framework": framework, "hardware": "cpu"}
        installed = installed_project(combination)
        runs = tmp_path / framework
        common = [*CPU, "--output-dir", str(runs), "--name", "run"]
        # The built-in table has 25 batches an epoch: the epoch cap stops this run at step 50,
        # in the middle of its 80-step schedule.
        first = ["train", *common, "--max-steps", "80", "--epochs", "2"]
        first += ["--set", "train.eval_every=10", "--set", "train.patience=0"]
        more = ["train", *common, "--resume", "last", "--max-steps", "120", "--epochs", "10"]
        stopped, resumed = installed.drive(first, more)
        stopped.check()
        assert "the epoch cap is reached (2 epochs)" in stopped.stdout
        resumed.check()
        assert "the step budget is spent (120 steps)" in resumed.stdout
        histories[framework] = read_metrics(runs / "run")

    assert histories["raw"] == histories["lightning"], "the engines resumed differently"
    rows = histories["raw"]
    assert [row["step"] for row in rows] == list(range(10, 130, 10)), "rows missing or twice"
    lr = {int(row["step"]): row["lr"] for row in rows}
    peak = 3e-3  # tabular-regression's default --lr
    assert 0.35 * peak < lr[50] < 0.45 * peak, lr  # mid-cosine when the cap stopped it
    after = [lr[step] for step in range(60, 130, 10)]
    assert all(a >= b for a, b in zip([lr[50], *after], after, strict=False)), lr
    assert lr[120] == pytest.approx(0.1 * peak), "the new schedule ends at the same floor"
