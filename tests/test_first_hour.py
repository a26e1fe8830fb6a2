"""What a new user meets in a generated project's first hour (its README), both styles: a
terminal that shows the progress bar and no warning, checkpoints that the other style reads,
configs that layer, and predictions of real inputs.

The projects are the cpu projects of tests/test_train.py, in its xdist groups: each is
installed once per test process, and the default runs (`default_run`) are shared.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pexpect
import pytest
import yaml
from conftest import command_env, run

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]
FRAMEWORKS = ("raw", "lightning")


def cpu_group(task: str) -> pytest.MarkDecorator:
    return pytest.mark.xdist_group(f"{task}-cpu")  # as tests/test_train.py's


def in_groups(task: str) -> list:
    return [pytest.param(task, f, marks=cpu_group(task), id=f"{task}-{f}") for f in FRAMEWORKS]


def project_of(installed_project, task: str, framework: str):
    return installed_project({"task": task, "framework": framework, "hardware": "cpu"})


# --- a terminal --------------------------------------------------------------------------

BAR = re.compile(r"^\s*\d+%\|.*\| (\d+)/(\d+) \[[^\]]*\]$")  # tqdm's, in the raw loop


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
@pytest.mark.parametrize("task, framework", in_groups("tabular-regression"))
def test_a_terminal_shows_a_progress_bar_and_no_warning(
    task, framework, installed_project, tmp_path
):
    """Under a pseudo-terminal (where piped output hides it), a short run shows a progress
    bar (raw: of the steps of the budget; Lightning: its own, with the training loss), no
    warning, and ends with its three closing lines."""
    installed = project_of(installed_project, task, framework)
    steps = 40
    args = ["train", *CPU, "--max-steps", str(steps), "train.eval_every=20"]
    args += ["--output-dir", str(tmp_path), "--name", "tty"]
    code, output = in_a_terminal(installed.script, args, installed.project)
    assert code == 0, output
    assert "Warning" not in output and "warn(" not in output, output

    output = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)  # the terminal's colours, cursor
    pieces = [p.strip() for p in re.split(r"[\r\n]+", output) if p.strip()]
    if framework == "raw":
        bars = [BAR.match(piece) for piece in pieces if BAR.match(piece)]
        assert bars and {int(bar[2]) for bar in bars} == {steps}, output
        assert int(bars[-1][1]) == steps, bars[-1][0]
    else:
        assert any(re.search(r"Epoch \d+.*train/loss", piece) for piece in pieces), output
    stopped, best, folder = pieces[-3:]
    assert stopped == f"stopped: the step budget is spent ({steps} steps)", pieces[-6:]
    assert best.startswith("best (step "), pieces[-6:]
    assert folder == f"run folder: {tmp_path / 'tty'}", pieces[-6:]


# --- either style's checkpoints ------------------------------------------------------------


@pytest.mark.timeout(900)
@cpu_group("tabular-regression")
def test_each_style_evaluates_predicts_and_exports_the_others_checkpoints(default_run, tmp_path):
    """A framework switch keeps the runs usable: a raw project reads a Lightning run's
    checkpoints and the reverse, giving what the style that wrote them gives. Resuming
    training is refused in one line, naming the style that can."""
    task = "tabular-regression"
    rows = tmp_path / "rows.csv"
    rows.write_text("x0,x1,x2,x3,x4,x5,colour,size\n0.5,0.5,0.5,0.5,0.5,0.5,red,M\n")
    runs = {framework: default_run(task, framework) for framework in FRAMEWORKS}
    results = {}
    for reader in FRAMEWORKS:  # its project reads both styles' runs, in one process
        other = "raw" if reader == "lightning" else "lightning"
        best = {writer: runs[writer][1] / "checkpoints" / "best.ckpt" for writer in FRAMEWORKS}
        last = runs[other][1] / "checkpoints" / "last.ckpt"
        program = tmp_path / f"{other}-read-by-{reader}.pt2"
        commands = [
            command
            for writer in (reader, other)
            for command in (
                ["evaluate", "--checkpoint", str(best[writer])],
                ["predict", str(rows), "--checkpoint", str(best[writer])],
            )
        ]
        commands.append(["export", "--checkpoint", str(best[other]), "--output", str(program)])
        commands.append(["train", *CPU, "--resume", str(last), "--max-steps", "5000"])
        *outcomes, exported, resumed = runs[reader][0].drive(*commands)
        for outcome in (*outcomes, exported):
            outcome.check()
        results[reader, reader] = outcomes[0].stdout, outcomes[1].stdout
        results[reader, other] = outcomes[2].stdout, outcomes[3].stdout
        assert program.is_file(), exported.stderr
        assert resumed.code == 2, resumed.stderr
        assert resumed.stderr.strip() == (
            f"error: {last} was written by the {other} engine, this project trains with "
            f"{reader}: evaluate, predict and export read it, but only its own engine resumes it"
        )
    for writer in FRAMEWORKS:  # the same numbers, whichever style reads them
        other = "raw" if writer == "lightning" else "lightning"
        assert results[other, writer] == results[writer, writer]
        assert "val/mse: " in results[writer, writer][0]


# --- configs that layer, the run folder as it was given ----------------------------------


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


# --- predict for real inputs -------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(text.splitlines()))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", in_groups("image-classification"))
def test_predict_takes_image_files_and_folders(task, framework, default_run, tmp_path):
    from PIL import Image, ImageDraw

    installed, _, _ = default_run(task, framework)
    folder = tmp_path / "shapes"
    for name, box in (("disc", [8, 8, 24, 24]), ("bar", [4, 14, 28, 18])):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            picture = Image.new("RGB", (32, 32), (40, 40, 40))
            draw = ImageDraw.Draw(picture)
            (draw.ellipse if name == "disc" else draw.rectangle)(box, fill=(230, 230, 230))
            picture.save(folder / name / f"{i}.png")
    (tmp_path / "empty").mkdir()
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
    rows = read_csv(many.check().stdout)
    assert [row["path"] for row in rows] == [
        *(str(folder / name / f"{i}.png") for name in ("bar", "disc") for i in range(2)),
        str(folder / "disc" / "1.png"),
    ]
    assert [row["predicted"] for row in rows[2:]] == ["disc"] * 3
    assert written.check().stderr.strip() == f"wrote 4 predictions to {table}"
    assert read_csv(table.read_text()) == rows[:4]
    assert empty.code == 2 and empty.stderr.strip() == (
        f"error: {tmp_path / 'empty'} is a folder without images (.bmp, .gif, .jpeg, .jpg, "
        ".png, .tif, .tiff, .webp); predict takes image files, or folders that hold them"
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", in_groups("text-classification"))
def test_predict_takes_texts_csv_files_and_text_files(task, framework, default_run, tmp_path):
    installed, _, _ = default_run(task, framework)
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
    rows = read_csv(files.check().stdout)
    assert [(row["id"], row["label"], row["predicted"]) for row in rows] == [
        ("1", "food", "food"),
        ("2", "weather", "weather"),
        ("", "", "sports"),
        ("", "", "tech"),
    ]
    assert rows[0]["text"] == "the chef baked bread, then a soup"
    assert written.check().stderr.strip() == f"wrote 2 predictions to {table}"
    assert read_csv(table.read_text()) == [
        {key: row[key] for key in ("id", "text", "label", "predicted", "probability")}
        for row in rows[:2]
    ]
    assert folder.code == 2 and f"error: {tmp_path} is a folder; predict takes texts" in (
        folder.stderr
    )
