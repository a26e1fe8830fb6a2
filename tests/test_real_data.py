"""Default settings learn small real data as well as a classical baseline, in both engines.

A user's first run is `train --data PATH` with every other setting at its default. On
small real datasets (tests/realdata.py: scikit-learn's digits, saved at varied sizes and in
varied modes, and its diabetes study, the standard library's docstrings, 4 MB of its
source), that run must reach what a classical model reaches on the same split: logistic
regression on the digits' original pixels or on TF-IDF, linear regression, a character
bigram model (in bits per byte, so that the BPE run compares too). Tables with categories
and blank cells (ggplot2's diamonds, the Vega datasets' cars, as plotnine and vega_datasets
ship them) must reach 90% of gradient-boosted trees on the same columns. Both engines train
the same model on the same batches: as many evaluations, and metrics within 2% of each
other at each (the float operations of the two loops differ in their last digits).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import evaluations, install, render
from realdata import DATASETS, TABLES, boosted_trees_r2

pytestmark = pytest.mark.slow

# The metric each task is judged on, how the best evaluation is chosen, and the bar.
BARS = {
    "image-classification": ("val/acc", "val/acc", max, lambda value, base: value >= base - 0.03),
    "text-classification": ("val/acc", "val/acc", max, lambda value, base: value >= base - 0.03),
    "tabular-regression": ("val/r2", "val/mse", min, lambda value, base: value >= base - 0.05),
    "language-modeling": ("val/bpb", "val/loss", min, lambda value, base: value <= base),
}
# Each task with its defaults; the language model also with its other tokenizer.
CASES = [pytest.param(task, [], id=task) for task in sorted(DATASETS)] + [
    pytest.param("language-modeling", ["data.tokenizer=bpe"], id="language-modeling-bpe")
]


def validation(run_dir) -> list[dict[str, float]]:
    """The run's evaluations, their validation metrics only (Lightning numbers its steps
    from 0, the raw loop from 1)."""
    return [
        {key: value for key, value in row.items() if key.startswith("val/")}
        for row in evaluations(run_dir)
    ]


def assert_alike(raw: list[dict[str, float]], lightning: list[dict[str, float]]) -> None:
    """The two engines' evaluations: as many, each metric within 2% (or 0.005 near zero)."""
    assert len(raw) == len(lightning), (len(raw), len(lightning))
    for a, b in zip(raw, lightning, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert abs(a[key] - b[key]) <= max(0.02 * max(abs(a[key]), abs(b[key])), 0.005), (
                key,
                a,
                b,
            )


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("task, options", CASES)
def test_defaults_learn_real_data_as_well_as_a_classical_baseline(
    task, options, template_copy, tmp_path
):
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
        where = ["--accelerator", "cpu", "--output-dir", str(runs)]
        result = installed.run("train", "--data", str(data), *options, *where)
        (run_dir,) = (path for path in runs.iterdir() if path.name != ".token-cache")
        history = evaluations(run_dir)
        histories[framework] = validation(run_dir)
        best = pick(history, key=lambda row: row[monitor])
        trivial = json.loads((run_dir / "baseline.json").read_text())
        stopped = result.stdout.split("stopped: ", 1)[1].splitlines()[0]
        print(
            f"{task} {' '.join(options)} {framework}: best {key} {best[key]:.4f} at step "
            f"{best['step']:.0f} "
            f"(stopped: {stopped}); classical baseline {baseline:.4f}; "
            f"{trivial['name']} {trivial[key]:.4f}"
        )
        assert good_enough(best[key], baseline), (best, baseline)
        assert f"({trivial['name']} " in result.stdout  # the summary shows the trivial baseline
    assert_alike(histories["raw"], histories["lightning"])


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("table", sorted(TABLES))
def test_defaults_learn_real_tables_with_categories_and_blanks(table, template_copy, tmp_path):
    """Tables as users have them, with text columns, blank cells and a column of names
    (tests/realdata.py: ggplot2's diamonds, the Vega datasets' cars): `train --data PATH
    data.target=NAME` at every default reaches 90% of the R2 of gradient-boosted trees that
    take the same columns, with their categories and blanks, on the same split; both
    engines give the same numbers, within 2%."""
    name, write, target = TABLES[table]
    data = write(tmp_path / name)
    histories, schemas = {}, {}
    for framework in ("raw", "lightning"):
        project = render(
            template_copy,
            tmp_path / framework,
            project_name=f"table-{framework}",
            task="tabular-regression",
            framework=framework,
        )
        installed = install(project, tmp_path / f"venv-{framework}")
        runs = tmp_path / f"runs-{framework}"
        flags = ["--data", str(data), f"data.target={target}", "--accelerator", "cpu"]
        result = installed.run("train", *flags, "--output-dir", str(runs))
        (run_dir,) = runs.iterdir()
        histories[framework] = validation(run_dir)
        schemas[framework] = [x for x in result.stdout.splitlines() if x.startswith("inputs: ")]
        if framework == "raw":  # the schema the run saved: the columns the baseline takes
            raw_dir, checkpoint = run_dir, run_dir / "checkpoints" / "best.ckpt"
            meta = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["meta"]
    baseline = boosted_trees_r2(data, target, meta["numeric"], list(meta["categorical"]))
    best = min(evaluations(raw_dir), key=lambda row: row["val/mse"])
    print(
        f"{table}: {schemas['raw'][0]}; best val/r2 {best['val/r2']:.4f} at step "
        f"{best['step']:.0f}; boosted trees {baseline:.4f} "
        f"({best['val/r2'] / baseline:.1%} of it)"
    )
    assert best["val/r2"] >= 0.9 * baseline, (best, baseline)
    assert schemas["raw"] == schemas["lightning"]
    assert_alike(histories["raw"], histories["lightning"])
