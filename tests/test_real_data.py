"""Default settings learn small real data as well as a classical baseline, in both engines.

A user's first run is `train --data PATH` with every other setting at its default. On a
few hundred real examples per task (tests/realdata.py: scikit-learn's digits and diabetes
study, the standard library's docstrings, the Python documentation's help topics), that run
must reach what a classical model reaches on the same split: logistic regression on pixels
or on TF-IDF, linear regression, a character bigram model. Both engines must give the same
numbers, to the last digit.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import install, render
from realdata import DATASETS

pytestmark = pytest.mark.slow

# The metric each task is judged on, how the best evaluation is chosen, and the bar.
BARS = {
    "image-classification": ("val/acc", "val/acc", max, lambda value, base: value >= base - 0.03),
    "text-classification": ("val/acc", "val/acc", max, lambda value, base: value >= base - 0.03),
    "tabular-regression": ("val/r2", "val/mse", min, lambda value, base: value >= base - 0.05),
    "language-modeling": ("val/loss", "val/loss", min, lambda value, base: value <= base),
}


def rows(run_dir):
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("task", sorted(DATASETS))
def test_defaults_learn_real_data_as_well_as_a_classical_baseline(task, template_copy, tmp_path):
    name, write, classical = DATASETS[task]
    data = write(tmp_path / name)
    baseline = classical(data)
    key, monitor, pick, good_enough = BARS[task]
    histories = {}
    for framework in ("raw", "lightning"):
        project = render(
            template_copy,
            tmp_path / framework,
            project_name=f"real-{framework}",
            task=task,
            framework=framework,
        )
        installed = install(project, tmp_path / f"venv-{framework}")
        runs = tmp_path / f"runs-{framework}"
        # Only the data and where to write: every training setting at its default.
        result = installed.run(
            "train", "--data", str(data), "--accelerator", "cpu", "--output-dir", str(runs)
        )
        (run_dir,) = runs.iterdir()
        history = histories[framework] = rows(run_dir)
        best = pick(history, key=lambda row: row[monitor])
        trivial = json.loads((run_dir / "baseline.json").read_text())
        stopped = result.stdout.split("stopped after ", 1)[1].splitlines()[0]
        print(
            f"{task} {framework}: best {key} {best[key]:.4f} at step {best['step']:.0f} "
            f"(stopped after {stopped}); classical baseline {baseline:.4f}; "
            f"{trivial['name']} {trivial[key]:.4f}"
        )
        assert good_enough(best[key], baseline), (best, baseline)
        assert f"({trivial['name']} " in result.stdout  # the summary shows the trivial baseline
    assert histories["raw"] == histories["lightning"], "the engines trained differently"
