"""What a new user meets in a generated project's first hour, both engines: a terminal that
shows the progress bar and the expected lines only, checkpoints that the other engine reads,
the best checkpoint of tied evaluations, configs that layer, and predictions of real inputs.

The projects are the cpu projects of tests/test_train.py, in its xdist groups: each is
installed once per test process, and the default runs (`default_run`) are shared.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pexpect
import pytest
import torch
import yaml
from conftest import best_row, command_env, read_metrics, run

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]
FRAMEWORKS = ("raw", "lightning")


def cpu_group(task: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"{task}-cpu")  # as tests/test_train.py's


def in_groups(task: str) -> list:
    return [pytest.param(task, f, marks=cpu_group(task), id=f"{task}-{f}") for f in FRAMEWORKS]


def project_of(installed_project, task: str, framework: str):
    return installed_project({"task": task, "framework": framework, "hardware": "cpu"})


# --- 19.3, 19.11: a terminal ---------------------------------------------------------------

BAR = re.compile(r"^\s*\d+%\|.*\| (\d+)/(\d+) \[[^\]]*\]$")


def in_a_terminal(script: Path, args: list[str], cwd: Path) -> tuple[int, str]:
    """The command run in a pseudo-terminal, as a user runs it: its exit code and output."""
    child = pexpect.spawn(
        str(script),
        args,
        cwd=str(cwd),
        env=command_env(),
        encoding="utf-8",
        timeout=600,
        dimensions=(24, 160),
    )
    output = child.read()
    child.close()
    return child.exitstatus, output


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "task, framework", [*in_groups("image-classification"), *in_groups("tabular-regression")]
)
def test_a_terminal_shows_a_progress_bar_and_only_the_expected_lines(
    task, framework, installed_project, tmp_path
):
    """Under a pseudo-terminal (where piped output hides it), a short run prints its lines
    and the progress bar, and nothing else: no warning through the bar. The bar counts the
    steps of the budget, and shows the epoch that each step is in."""
    installed = project_of(installed_project, task, framework)
    # An evaluation an epoch (eval_every above an epoch's batches): its step is the epoch's
    # length. A budget of more than one epoch.
    steps, batch = (6, 256) if task == "image-classification" else (40, 64)
    args = ["train", *CPU, "--max-steps", str(steps), "--batch-size", str(batch)]
    args += ["--set", "train.eval_every=1000", "--output-dir", str(tmp_path), "--name", "tty"]
    code, output = in_a_terminal(installed.script, args, installed.project)
    assert code == 0, output

    pieces = [p.strip() for p in re.split(r"[\r\n]+", output) if p.strip()]
    bars = [piece for piece in pieces if BAR.match(piece)]
    lines = [piece for piece in pieces if not BAR.match(piece)]
    assert bars, output
    if task == "tabular-regression":  # the table's schema, inferred from its columns
        schema, *lines = lines
        assert schema.startswith("inputs: "), lines
    model, *evaluations, stopped, best, folder = lines
    assert re.fullmatch(r"\w+: [\d,]+ parameters", model), lines
    assert evaluations and all(line.startswith("step ") for line in evaluations), lines
    assert stopped.startswith(f"stopped after step {steps}: "), lines
    assert best.startswith("best (step ") and folder == f"run folder: {tmp_path / 'tty'}", lines

    per_epoch = int(re.match(r"step (\d+)/", evaluations[0])[1])
    assert per_epoch < steps, "one epoch only: the epoch shown never changes"
    shown = set()
    for bar in bars:
        step, total = (int(x) for x in BAR.match(bar).groups())
        assert total == steps, bar
        if step == 0:
            continue
        epoch = re.search(r"epoch=(\d+)", bar)
        assert epoch, f"step {step} without its epoch: {bar}"
        assert int(epoch[1]) == math.ceil(step / per_epoch), bar
        shown.add(step)
    assert steps in shown, bars


# --- 19.4: either engine's checkpoints ---------------------------------------------------


@pytest.mark.timeout(900)
@cpu_group("image-classification")
def test_each_engine_evaluates_predicts_and_exports_the_others_checkpoints(
    installed_project, default_run, tmp_path
):
    """A framework switch keeps the runs usable: a raw project reads a Lightning run's
    checkpoints and the reverse, giving what the engine that wrote them gives. Resuming
    training is refused, naming the engine that can."""
    task = "image-classification"
    image = tmp_path / "disc.png"
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (32, 32), (50, 50, 50))
    ImageDraw.Draw(picture).ellipse([8, 8, 24, 24], fill=(230, 230, 230))
    picture.save(image)
    runs = {framework: default_run(task, framework) for framework in FRAMEWORKS}
    results = {}
    for reader in FRAMEWORKS:  # its project reads both engines' runs, in one process
        other = "raw" if reader == "lightning" else "lightning"
        best = {writer: runs[writer][1] / "checkpoints" / "best.ckpt" for writer in FRAMEWORKS}
        last = runs[other][1] / "checkpoints" / "last.ckpt"
        program = tmp_path / f"{other}-read-by-{reader}.pt2"
        commands = [
            command
            for writer in (reader, other)
            for command in (
                ["evaluate", "--checkpoint", str(best[writer]), "--accelerator", "cpu"],
                ["predict", str(image), "--checkpoint", str(best[writer])],
            )
        ]
        # The other engine's checkpoint exports (test_train exports each engine's own),
        # and its training cannot be resumed here.
        commands.append(["export", "--checkpoint", str(best[other]), "--output", str(program)])
        commands.append(["train", *CPU, "--resume", str(last), "--max-steps", "5000"])
        *outcomes, exported, resumed = runs[reader][0].drive(*commands)
        for outcome in (*outcomes, exported):
            outcome.check()
        results[reader, reader] = outcomes[0].stdout, outcomes[1].stdout
        results[reader, other] = outcomes[2].stdout, outcomes[3].stdout
        assert program.is_file(), exported.stdout
        assert resumed.code == 2, resumed.stderr
        assert resumed.stderr.strip() == (
            f"error: {last} was written by the {other} engine, and this project trains "
            f"with {reader}: evaluate, predict and export read it, but only the {other} "
            "engine can resume its training (their optimizer and loop states differ)"
        )
    for writer in FRAMEWORKS:  # the same numbers, whichever engine reads them
        other = "raw" if writer == "lightning" else "lightning"
        assert results[other, writer] == results[writer, writer]


# --- 19.1: the best of tied evaluations ----------------------------------------------------


@pytest.mark.timeout(900)
@cpu_group("text-classification")
def test_best_checkpoint_of_tied_accuracies_is_the_surer_model_in_both_engines(default_run):
    """The built-in sentences are classified perfectly early, and the validation loss falls
    on: best.ckpt is the evaluation of equal accuracy with the lower validation loss (by
    more than train.tie_delta), not the first; both engines choose it and stop alike."""
    task = "text-classification"
    chosen = {}
    for framework in FRAMEWORKS:
        _, run_dir, trained = default_run(task, framework)
        rows = read_metrics(run_dir)
        settings = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
        best = best_row(task, rows, settings["tie_delta"])
        tied = [row for row in rows if row["val/acc"] == best["val/acc"]]
        assert len(tied) >= 2 and tied[0] is not best, f"no tie broken: {rows}"
        assert best["val/loss"] < tied[0]["val/loss"] - settings["tie_delta"]
        checkpoint = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
        assert checkpoint["progress"]["step"] == best["step"]
        assert f"best (step {best['step']:.0f}, best.ckpt)" in trained.stdout
        chosen[framework] = best["step"], trained.stdout.strip().splitlines()[-3]
    assert chosen["raw"] == chosen["lightning"]


# --- 19.6, 19.11: configs that layer, the run folder as it was given -------------------------


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", in_groups("tabular-regression"))
def test_config_files_layer_and_key_value_overrides_win_through_the_cli(
    task, framework, installed_project, tmp_path
):
    """configs/default.yaml <- --config a.yaml <- --config b.yaml <- flags and key=value, as
    the console script reads them in the working directory; a resumed run prints its run
    folder as the new run did (relative), and the step it resumes from."""
    installed = project_of(installed_project, task, framework)
    (tmp_path / "configs").mkdir()
    defaults = (installed.project / "configs" / "default.yaml").read_text()
    assert "  # batch_size: 64" in defaults, "config.py's default, commented out"
    (tmp_path / "configs" / "default.yaml").write_text(
        defaults.replace("  # batch_size: 64", "  batch_size: 48")
    )
    (tmp_path / "a.yaml").write_text("train: {lr: 0.02, seed: 5}\n")
    (tmp_path / "b.yaml").write_text("train: {lr: 0.01}\nmodel: {hidden: 32}\n")
    first = ["train", *CPU, "--config", "a.yaml", "--config", "b.yaml", "--max-steps", "2"]
    first += ["model.hidden=16", "train.eval_every=1", "--name", "layered"]
    again = ["train", *CPU, "--resume", "last", "--name", "layered", "--max-steps", "3"]
    trained, resumed = (
        run([str(installed.script), *args], cwd=tmp_path) for args in (first, again)
    )
    settings = yaml.safe_load((tmp_path / "runs" / "layered" / "config.yaml").read_text())
    assert settings["train"]["batch_size"] == 48  # default.yaml, under the --config files
    assert settings["train"]["seed"] == 5  # a.yaml
    assert settings["train"]["lr"] == 0.01  # b.yaml, over a.yaml
    assert settings["model"]["hidden"] == 16  # key=value, over b.yaml
    assert settings["train"]["max_steps"] == 3  # the resumed run's flag
    assert settings["train"]["weight_decay"] == 0.01  # config.py's default
    assert trained.stdout.strip().endswith("run folder: runs/layered")
    assert resumed.stdout.startswith("resuming from runs/layered/checkpoints/last.ckpt at step 2")
    assert resumed.stdout.strip().endswith("run folder: runs/layered")


# --- 19.10: predict for real inputs ---------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", in_groups("image-classification"))
def test_predict_takes_image_files_and_folders(task, framework, default_run, tmp_path):
    from PIL import Image, ImageDraw

    installed, run_dir, _ = default_run(task, framework)
    folder = tmp_path / "shapes"
    for name, box in (("disc", [8, 8, 24, 24]), ("bar", [4, 14, 28, 18])):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            picture = Image.new("RGB", (32, 32), (40, 40, 40))
            draw = ImageDraw.Draw(picture)
            (draw.ellipse if name == "disc" else draw.rectangle)(box, fill=(230, 230, 230))
            picture.save(folder / name / f"{i}.png")
    (tmp_path / "empty").mkdir()
    best = run_dir / "checkpoints" / "best.ckpt"
    table = tmp_path / "predictions.csv"
    one, many, written, empty = installed.drive(
        ["predict", str(folder / "disc" / "0.png")],
        ["predict", str(folder), str(folder / "disc" / "1.png")],
        ["predict", str(folder), "--output", str(table)],
        ["predict", str(tmp_path / "empty")],
    )
    (row,) = read_csv(one.check().stdout)
    assert row["path"] == str(folder / "disc" / "0.png") and row["predicted"] == "disc"
    assert 0 < float(row["probability"]) <= 1
    # Every predict names the checkpoint it used (the latest run's best.ckpt here).
    assert one.stderr.startswith(f"{best.relative_to(installed.project)}: "), one.stderr
    rows = read_csv(many.check().stdout)
    assert [row["path"] for row in rows] == [
        *(str(folder / name / f"{i}.png") for name in ("bar", "disc") for i in range(2)),
        str(folder / "disc" / "1.png"),
    ]
    assert [row["predicted"] for row in rows[2:]] == ["disc"] * 3
    assert written.check().stdout.strip() == f"wrote 4 predictions to {table}"
    assert read_csv(table.read_text()) == rows[:4]
    assert empty.code == 2 and empty.stderr.strip() == (
        f"error: {tmp_path / 'empty'} is a folder without images (.bmp, .gif, .jpeg, .jpg, "
        ".png, .tif, .tiff, .webp); predict takes image files, or folders that hold them"
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", in_groups("text-classification"))
def test_predict_takes_texts_csv_files_and_text_files(task, framework, default_run, tmp_path):
    installed, run_dir, _ = default_run(task, framework)
    reviews = tmp_path / "reviews.csv"
    reviews.write_text(
        'id,text,label\n1,"the chef baked bread, then a soup",food\n2,rain and a storm,weather\n'
    )
    lines = tmp_path / "lines.txt"
    lines.write_text("the coach saw the team score a goal\n\nthe laptop chip and its battery\n")
    table = tmp_path / "predictions.csv"
    typed, files, written, folder = installed.drive(
        ["predict", "the coach saw the team score a late goal"],
        ["predict", str(reviews), str(lines)],
        ["predict", str(reviews), "--output", str(table)],
        ["predict", str(tmp_path)],
    )
    (row,) = read_csv(typed.check().stdout)
    assert row["text"] == "the coach saw the team score a late goal"
    assert row["predicted"] == "sports"
    best = run_dir / "checkpoints" / "best.ckpt"
    assert typed.stderr.startswith(f"{best.relative_to(installed.project)}: "), typed.stderr
    rows = read_csv(files.check().stdout)
    assert [(row["id"], row["label"], row["predicted"]) for row in rows] == [
        ("1", "food", "food"),
        ("2", "weather", "weather"),
        ("", "", "sports"),
        ("", "", "tech"),
    ]
    assert rows[0]["text"] == "the chef baked bread, then a soup"
    assert written.check().stdout.strip() == f"wrote 2 predictions to {table}"
    assert read_csv(table.read_text()) == [
        {key: row[key] for key in ("id", "text", "label", "predicted", "probability")}
        for row in rows[:2]
    ]
    assert folder.code == 2 and f"error: {tmp_path} is a folder; predict takes texts" in (
        folder.stderr
    )
