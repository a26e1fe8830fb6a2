"""Every combination is generated, installed, trained on the CPU, and shown to have learned.

Each project is installed once per test process into its own light venv (a real `pip
install -e`) that shares this environment's torch and lightning, and its tests share it (the
`installed_project` fixture; an xdist_group keeps them in one test process). The 8 cpu
projects train with their default settings through their console script; every project
then evaluates, predicts, exports and runs its own tests in one more process
(tests/drive_project.py), where the other 24 combinations also train, on a short budget.
"""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    MONITOR,
    SCRATCH,
    SHORT,
    TASKS,
    assert_learned,
    check_run,
    combination_id,
    command_env,
    default_settings,
    evaluations,
    read_baseline,
    run,
    short,
)
from userdata import write_user_data

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]


def cpu_group(task: str) -> pytest.MarkDecorator:
    """The tests of a task's two cpu projects run in one test process, which installs each
    project once and trains each one once with its defaults (the `default_run` fixture)."""
    return pytest.mark.xdist_group(f"{task}-cpu")


def combination_param(combination: dict[str, str]):
    if combination["hardware"] == "cpu":
        group = cpu_group(combination["task"])
    else:  # shared with the DDP tests of the multi-gpu projects (test_distributed.py)
        group = pytest.mark.xdist_group(combination_id(combination))
    return pytest.param(combination, id=combination_id(combination), marks=group)


def predict_inputs(task: str, folder: Path) -> list[str]:
    if task == "image-classification":
        from PIL import Image, ImageDraw

        image = Image.new("RGB", (32, 32), (50, 50, 50))
        ImageDraw.Draw(image).ellipse([8, 8, 24, 24], fill=(230, 230, 230))
        image.save(folder / "disc.png")
        return [str(folder / "disc.png")]
    if task == "text-classification":
        return ["the coach saw the team score a late goal in the match"]
    if task == "tabular-regression":
        # The built-in table's columns; a blank number and category, a category never seen.
        rows = folder / "rows.csv"
        header = "x0,x1,x2,x3,x4,x5,colour,size"
        rows.write_text(f"{header}\n0.5,0.5,0.5,0.5,0.5,0.5,red,M\n-1,-1,-1,-1,-1,,violet,\n")
        return [str(rows)]
    return ["the cat "]


def check_predictions(task: str, output: str) -> None:
    lines = output.splitlines()
    if task in ("image-classification", "text-classification"):  # CSV: inputs, prediction
        (row,) = csv.DictReader(lines)
        expected = "disc" if task == "image-classification" else "sports"
        assert row["predicted"] == expected and 0 < float(row["probability"]) <= 1, lines
    elif task == "tabular-regression":  # CSV: the input columns as written, the prediction
        first, second = csv.DictReader(lines)
        assert first["colour"] == "red" and second["colour"] == "violet", lines
        assert all(math.isfinite(float(row["predicted_target"])) for row in (first, second))
    else:
        assert output.startswith("the cat ") and len(output) > 100, output


def parse_metrics(printed: str) -> dict[str, float]:
    """`evaluate`'s output, lines of "val/acc: 0.9312", as a dict."""
    return {key: float(value) for key, value in (line.split(": ") for line in printed.splitlines())}


def readme_export_snippet(project: Path, program: Path) -> str:
    """The README's example of running the exported model, with the run's real paths."""
    readme = (project / "README.md").read_text()
    section = readme.split("## Using the exported model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    return code.replace("runs/<name>/checkpoints/best.pt2", str(program)).replace(
        "runs/<name>/checkpoints/best.json", str(program.with_suffix(".json"))
    )


def assert_no_warnings(stderr: str) -> None:
    """No Python warning the project could have avoided (Lightning's own notes on its
    set-up, on stderr through its logging, are no warnings)."""
    assert "Warning" not in stderr and "warn(" not in stderr, stderr


def assert_alike(first: dict[str, float], second: dict[str, float], keys) -> None:
    """The two styles' metrics agree within 2% (or 0.005, for values near zero)."""
    for key in keys:
        a, b = first[key], second[key]
        assert abs(a - b) <= max(0.02 * max(abs(a), abs(b)), 0.005), (key, a, b)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", [combination_param(c) for c in SCRATCH])
def test_combination_installs_trains_and_learns(
    combination, installed_project, default_run, tmp_path
):
    task = combination["task"]
    installed = installed_project(combination)
    predict = ["predict", *predict_inputs(task, tmp_path)]
    if combination["hardware"] == "cpu":
        # The promise of the built-in data: the default settings learn, through the real
        # console script. evaluate, predict and export then find the run themselves.
        _, run_dir, trained = default_run(task, combination["framework"])
        default = default_settings(installed.project)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"] == {
            **default["train"],
            "name": run_dir.name,
        }
        commands = [["evaluate"], ["evaluate", "--checkpoint", "last"], predict, ["export"]]
    else:
        # The other hardware answers change defaults (accelerator, devices, precision,
        # loader processes) and the README; the code that trains is the cpu projects'. So a
        # short budget on the CPU proves them, in the same process as the rest.
        runs = tmp_path / "runs"
        # A gpu project's 4 loader processes are 2 here: torch warns of more than the cores.
        workers = ["train.num_workers=2"] if combination["hardware"] != "mps" else []
        train = [
            "train",
            *CPU,
            *workers,
            *short(task),
            "--output-dir",
            str(runs),
            "--name",
            "first",
        ]
        best = str(runs / "first" / "checkpoints" / "best.ckpt")
        last = str(runs / "first" / "checkpoints" / "last.ckpt")
        commands = [
            train,
            ["evaluate", "--checkpoint", best, "--accelerator", "cpu"],
            ["evaluate", "--checkpoint", last, "--accelerator", "cpu"],
            [*predict, "--checkpoint", best],
            ["export", "--checkpoint", best],
        ]
    # The project's own tests run in the same process, after the commands.
    outcomes = [outcome.check() for outcome in installed.drive(*commands, pytest=True)]
    if combination["hardware"] != "cpu":
        trained, outcomes = outcomes[0], outcomes[1:]
        run_dir = runs / "first"
        steps, _ = SHORT[task]
        # The budget, or a perfect score first (the stopping threshold).
        spent = f"stopped: the step budget is spent ({steps} steps)" in trained.stdout
        assert spent or "past its stopping threshold" in trained.stdout, trained.stdout
    evaluated_best, evaluated_last, predicted, exported = (o.stdout for o in outcomes)
    assert_no_warnings(trained.stderr)
    rows, best_row = check_run(task, run_dir, trained.stdout, exported=True, cwd=installed.project)
    assert len(rows) >= 2, "one evaluation only: the schedule was not exercised"

    evaluated = parse_metrics(evaluated_best)
    assert_learned(task, evaluated, read_baseline(run_dir))
    # best.ckpt holds the best evaluation and last.ckpt the last: evaluating them again
    # gives the metrics logged then.
    # (evaluate computes in float32: a gpu project's evaluations in training are bf16-mixed.)
    bf16 = default_settings(installed.project)["train"]["precision"] == "bf16-mixed"
    close = {"rel": 1e-2, "abs": 1e-3} if bf16 else {"rel": 1e-3, "abs": 1e-4}
    for key, value in evaluated.items():
        assert value == pytest.approx(best_row[key], **close), key
    for key, value in parse_metrics(evaluated_last).items():
        assert value == pytest.approx(rows[-1][key], **close), f"last.ckpt {key}"
    check_predictions(task, predicted)
    program = run_dir / "checkpoints" / "best.pt2"
    assert program.is_file() and program.with_suffix(".json").is_file(), exported

    if combination["hardware"] == "cpu":  # the README and the export are alike for all four
        # The README's snippet runs the exported program without the project's code.
        if task == "image-classification":
            from PIL import Image

            Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.jpg")
        snippet = readme_export_snippet(installed.project, program)
        shown = run([sys.executable, "-c", snippet], cwd=tmp_path).stdout.strip()
        assert shown, "the README's export example printed nothing"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", [pytest.param(t, marks=cpu_group(t)) for t in TASKS])
def test_both_engines_train_the_same_default_run(task, default_run):
    """Raw and Lightning, same defaults and seed: the same baseline, as many evaluations,
    and metrics that agree within 2% (both train the same model on the same batches in the
    same order; the float operations of the two loops differ in their last digits)."""
    _, raw_dir, raw = default_run(task, "raw")
    _, lightning_dir, lightning = default_run(task, "lightning")
    assert read_baseline(lightning_dir) == pytest.approx(read_baseline(raw_dir))
    raw_rows, lightning_rows = evaluations(raw_dir), evaluations(lightning_dir)
    assert len(raw_rows) == len(lightning_rows)
    keys = [key for key in raw_rows[-1] if key.startswith("val/")]
    for raw_row, lightning_row in zip(raw_rows, lightning_rows, strict=True):
        assert_alike(raw_row, lightning_row, keys)
    print(f"{task}: {len(raw_rows)} evaluations; raw {raw.stdout.splitlines()[-2]}")
    print(f"{task}: lightning {lightning.stdout.splitlines()[-2]}")


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", TASKS)
def test_trains_on_user_data_and_both_engines_agree(task, installed_project, tmp_path):
    """--data in the task's format; evaluate --data on a held-out set of the same kind,
    reported as test/ metrics; raw and Lightning agree within 2%."""
    data = write_user_data(task, tmp_path / "data")
    held_out = write_user_data(task, tmp_path / "held-out", seed=1, scale=0.25)
    extra = ["data.target=price"] if task == "tabular-regression" else []
    if task == "image-classification":
        # The short budget learns without augmentation; test_real_data proves the default.
        extra = ["data.augment=false"]
    results = {}
    for framework in ("raw", "lightning"):
        combination = {"task": task, "framework": framework, "hardware": "cpu"}
        installed = installed_project(combination)
        runs = tmp_path / f"runs-{framework}"
        best = runs / "mine" / "checkpoints" / "best.ckpt"
        trained, evaluated, exported = installed.drive(
            ["train", *CPU, "--data", str(data), *extra, *short(task), "--seed", "7"]
            + ["--batch-size", "32", "--output-dir", str(runs), "--name", "mine"],
            ["evaluate", "--checkpoint", str(best), "--data", str(held_out)],
            ["export", "--checkpoint", str(best)],
        )
        for outcome in (trained, evaluated, exported):
            outcome.check()
        assert_no_warnings(trained.stderr)
        run_dir = runs / "mine"
        rows, best_row = check_run(task, run_dir, trained.stdout, exported=True)
        baseline = read_baseline(run_dir)
        assert_learned(task, best_row, baseline)
        # evaluate --data: more data of the same kind, which the model has not seen.
        tested = parse_metrics(evaluated.stdout)
        assert all(key.startswith("test/") for key in tested), tested
        assert_learned(task, {k.replace("test/", "val/"): v for k, v in tested.items()}, baseline)
        results[framework] = rows[-1]
        key = MONITOR[task][0]
        print(f"{task} {framework}: best {key} {best_row[key]:.4f} ({baseline['name']} ", end="")
        print(f"{baseline[key]:.4f})")
    keys = [key for key in results["raw"] if key.startswith("val/")]
    assert_alike(results["raw"], results["lightning"], keys)


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "framework",
    [pytest.param(f, marks=cpu_group("image-classification")) for f in ("raw", "lightning")],
)
def test_a_killed_run_resumes_mid_epoch_exactly(framework, installed_project, tmp_path):
    """SIGKILL the real `train` process after its first checkpoint, which is mid-epoch, then
    `--resume last`: the run ends as the uninterrupted one with the same seed, line for line
    of metrics.csv, to the last digit."""
    combination = {"task": "image-classification", "framework": framework, "hardware": "cpu"}
    installed = installed_project(combination)  # dropout and batch norm: RNG and buffers count
    runs = tmp_path / "runs"
    # An evaluation, hence a checkpoint, every 6 steps; an epoch of the built-in set is 16
    # batches: the first checkpoints are mid-epoch, and one run crosses epochs.
    common = [*CPU, "--output-dir", str(runs), "--seed", "3", "--max-steps", "30"]
    common += ["train.eval_every=6", "train.patience=0"]

    last = runs / "killed" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [str(installed.script), "train", *common, "--name", "killed"],
        cwd=installed.project,
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    assert process.wait() != 0, "the run finished before it could be killed"

    (uninterrupted,) = installed.drive(["train", *common, "--name", "whole"])
    uninterrupted.check()
    # No --max-steps or --seed: a resumed run takes its settings from its checkpoint.
    resume = ["--output-dir", str(runs), "--resume", "last", "--name", "killed"]
    resumed = installed.run("train", *CPU, *resume)
    assert "run folder: " + str(runs / "killed") in resumed.stdout
    assert len(evaluations(runs / "whole")) == 5
    whole_csv = (runs / "whole" / "metrics.csv").read_text()
    assert (runs / "killed" / "metrics.csv").read_text() == whole_csv


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "framework",
    [pytest.param(f, marks=cpu_group("image-classification")) for f in ("raw", "lightning")],
)
def test_user_mistakes_are_one_line_errors(framework, installed_project, tmp_path):
    """Each mistake is one line on stderr, prefixed `error: `, exit code 2, and leaves the
    runs as they were. They run in one process through the console script's entry point,
    cli.main (one also through the real console script)."""
    combination = {"task": "image-classification", "framework": framework, "hardware": "cpu"}
    installed = installed_project(combination)
    runs = tmp_path / "runs"
    out = ["--output-dir", str(runs)]
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    empty = tmp_path / "empty-folder"
    (empty / "cat").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "copied.ckpt"
    done = runs / "done" / "checkpoints" / "last.ckpt"
    setup = [["train", *CPU, *out, "--max-steps", "20", "train.eval_every=10", "--name", "done"]]
    mistakes = [
        ("does not exist", ["train", *CPU, *out, "--data", str(tmp_path / "missing")]),
        ("has 1 class sub-folders", ["train", *CPU, *out, "--data", str(empty)]),
        ("exists already", ["train", *CPU, *out, "--name", "done"]),
        ("unknown setting train.epoch", ["train", *CPU, *out, "train.epoch=3"]),
        ("did you mean model.width?", ["train", *CPU, *out, "model.widht=3"]),
        ("train.max_steps must be at least 1", ["train", *CPU, *out, "--max-steps", "0"]),
        ("train.lr must be a positive number", ["train", *CPU, *out, "--lr", "nan"]),
        ("model.dropout must be in [0, 1)", ["train", *CPU, *out, "model.dropout=1.5"]),
        ("train.accelerator must be one of", ["train", *CPU, *out, "--accelerator", "tpu"]),
        ("no such device", ["train", *out, "--accelerator", "gpu", "--devices", "1"]),
        ("no such device", ["train", *out, "--accelerator", "mps", "--devices", "1"]),
        ("no option --max-step", ["train", *out, "--max-step", "3"]),
        ("Did you mean train?", ["trian"]),
        (
            "cannot change when a run resumes",
            ["train", *CPU, *out, "--resume", "last", "--name", "done", "model.width=32"],
        ),
        (
            "has trained its 20 steps; pass a larger --max-steps",
            ["train", *CPU, *out, "--resume", "last", "--name", "done"],
        ),
        (
            "is not in a run folder; add --name NEW",
            ["train", *CPU, *out, "--resume", str(outside), "--max-steps", "40"],
        ),
        (
            f"no {tmp_path / 'empty' / '*'}/checkpoints/last.ckpt; train first",
            ["train", *CPU, "--output-dir", str(tmp_path / "empty"), "--resume", "last"],
        ),
        ("cannot read checkpoint", ["evaluate", "--checkpoint", str(corrupt)]),
        ("does not exist", ["evaluate", "--checkpoint", str(tmp_path / "nope.ckpt")]),
        ("is the input", ["predict", str(tmp_path / "p.png"), "--output", str(tmp_path / "p.png")]),
    ]
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "p.png")
    outcomes = installed.drive(*setup)
    for outcome in outcomes:
        outcome.check()
    assert "stopped: the step budget is spent (20 steps)" in outcomes[0].stdout
    finished = (runs / "done" / "metrics.csv").read_text()
    outside.parent.mkdir()
    shutil.copy(done, outside)

    # A checkpoint outside a run folder starts a new run with --name: its rows go on.
    from_outside = ["train", *CPU, *out, "--resume", str(outside), "--name", "again"]
    outcomes = installed.drive(
        *(argv for _, argv in mistakes), [*from_outside, "--max-steps", "40"]
    )
    for (says, _), outcome in zip(mistakes, outcomes, strict=False):
        message = outcome.stderr.strip().splitlines()[-1] if outcome.stderr.strip() else ""
        assert outcome.code == 2, (outcome.argv, outcome.stderr)
        assert message.startswith("error: ") and says in message, (outcome.argv, message)
    outcomes[-1].check()
    assert len(evaluations(runs / "again")) == 2
    # The finished run was left as it was, and no mistake made a run folder.
    assert (runs / "done" / "metrics.csv").read_text() == finished
    assert sorted(p.name for p in runs.iterdir()) == ["again", "done"]
    assert (tmp_path / "p.png").stat().st_size > 0

    # The real console script says the same, in one line.
    result = installed.run("train", *mistakes[0][1][1:], check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "does not exist" in result.stderr
