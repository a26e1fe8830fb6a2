"""Every combination is generated, installed, trained on the CPU, and shown to have learned.

Each case installs the project into its own light venv (a real `pip install -e`) that
shares this environment's torch and lightning, trains it through its console script, then
evaluates, predicts and exports in one more process, and runs the project's own tests.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    COMBINATIONS,
    REPO,
    RUN_FILES,
    assert_learned,
    combination_id,
    command_env,
    install,
    package_of,
    read_metrics,
    render,
    render_combination,
    run,
    run_files,
)
from userdata import write_user_data

pytestmark = pytest.mark.slow

TASKS = sorted({c["task"] for c in COMBINATIONS})
# The metric each task is judged on, and how close raw and Lightning must come on it.
PARITY = {
    "image-classification": ("val/acc", 0.1),
    "text-classification": ("val/acc", 0.1),
    "tabular-regression": ("val/r2", 0.1),
    "language-modeling": ("val/loss", 0.25),  # relative
}
CPU = ["--accelerator", "cpu", "--devices", "1"]


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
        rows = folder / "rows.csv"
        header = ",".join(f"x{i}" for i in range(8))
        rows.write_text(f"{header}\n{','.join(['0.5'] * 8)}\n{','.join(['-1'] * 8)}\n")
        return [str(rows)]
    return ["the cat "]


def check_predictions(task: str, output: str, meta: dict) -> None:
    lines = output.splitlines()
    if task == "image-classification":
        assert re.search(r"disc\.png: disc \(\d\.\d\d\)", lines[0]), lines
    elif task == "text-classification":
        assert lines[0].rsplit(": ", 1)[1].startswith("sports"), lines
    elif task == "tabular-regression":
        assert len(lines) == 2 and all(math.isfinite(float(x.rsplit("= ", 1)[1])) for x in lines)
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


@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_combination_installs_trains_and_learns(combination, template_copy, tmp_path):
    task = combination["task"]
    project = render_combination(template_copy, tmp_path / "project", combination)
    installed = install(project, tmp_path / "venv")
    runs = tmp_path / "runs"

    result = installed.run("train", *CPU, "--output-dir", str(runs), "--name", "first")
    run_dir = runs / "first"
    # No warnings the project could have avoided (Lightning's included).
    assert "warn" not in result.stderr.lower(), result.stderr
    assert run_files(run_dir) == RUN_FILES
    assert f"run folder: {run_dir}" in result.stdout
    history = read_metrics(run_dir)
    assert history[-1]["val/loss"] < history[0]["val/loss"]

    best, last = run_dir / "checkpoints" / "best.ckpt", run_dir / "checkpoints" / "last.ckpt"
    commands = [
        ["evaluate", "--checkpoint", str(best), "--accelerator", "cpu"],
        ["evaluate", "--checkpoint", str(last), "--accelerator", "cpu"],
        ["predict", "--checkpoint", str(best), *predict_inputs(task, tmp_path)],
        ["export", "--checkpoint", str(best)],
    ]
    drive = [str(installed.python), str(REPO / "tests" / "drive_project.py")]
    # Then the project's own tests, in the same process.
    result = run(drive + [package_of(combination), json.dumps(commands)], cwd=project)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["pytest"] == 0, f"the project's own tests failed:\n{result.stdout[-5000:]}"
    evaluated_best, evaluated_last, predicted, _ = report["outputs"]
    meta = json.loads(best.with_suffix(".json").read_text())
    evaluated = parse_metrics(evaluated_best)
    assert_learned(task, evaluated, meta)
    # best.ckpt holds the best epoch and last.ckpt the last: evaluating them gives those
    # epochs' logged metrics.
    best_epoch = min(history, key=lambda row: abs(row["val/loss"] - evaluated["val/loss"]))
    for key, value in evaluated.items():
        assert value == pytest.approx(best_epoch[key], rel=1e-3, abs=1e-4)
    for key, value in parse_metrics(evaluated_last).items():
        assert value == pytest.approx(history[-1][key], rel=1e-3, abs=1e-4), "last.ckpt"
    check_predictions(task, predicted, meta)

    if combination["hardware"] == "cpu":  # the README and the export are alike for all four
        # The README's snippet runs the exported program without the project's code.
        if task == "image-classification":
            from PIL import Image

            Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.jpg")
        snippet = readme_export_snippet(project, best.with_suffix(".pt2"))
        shown = run([sys.executable, "-c", snippet], cwd=tmp_path).stdout.strip()
        assert shown, "the README's export example printed nothing"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", TASKS)
def test_trains_on_user_data_and_both_engines_agree(task, template_copy, tmp_path):
    """--data in the task's format, with TensorBoard logging; raw and Lightning agree."""
    data = write_user_data(task, tmp_path / "data")
    key, tolerance = PARITY[task]
    finals = {}
    for framework in ("raw", "lightning"):
        project = render(
            template_copy,
            tmp_path / framework,
            project_name=f"mine-{framework}",
            task=task,
            framework=framework,
            logger="tensorboard",
        )
        installed = install(project, tmp_path / f"venv-{framework}")
        extra = ["--target", "price"] if task == "tabular-regression" else []
        runs = tmp_path / f"runs-{framework}"
        args = ["--data", str(data), "--seed", "7", "--batch-size", "32"]
        args += ["--output-dir", str(runs), "--name", "mine"]
        installed.run("train", *CPU, *args, *extra)
        checkpoint = runs / "mine" / "checkpoints" / "best.ckpt"
        installed.run("export", "--checkpoint", str(checkpoint))
        meta = json.loads(checkpoint.with_suffix(".json").read_text())
        finals[framework] = read_metrics(runs / "mine")[-1]
        assert list((runs / "mine" / "tensorboard").glob("events.out.tfevents.*"))
        assert_learned(task, finals[framework], meta)
    raw, lightning = finals["raw"][key], finals["lightning"][key]
    gap = abs(raw - lightning) / (abs(raw) if key == "val/loss" else 1)
    print(f"{task}: {key} raw {raw:.4f}, lightning {lightning:.4f}")
    assert gap <= tolerance, f"{key}: raw {raw:.4f} vs lightning {lightning:.4f}"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_same_seed_same_run_and_a_killed_run_resumes_exactly(framework, template_copy, tmp_path):
    project = render(
        template_copy,
        tmp_path / "project",
        project_name=f"again-{framework}",
        task="image-classification",  # dropout and batch norm: the RNG and buffers matter
        framework=framework,
    )
    installed = install(project, tmp_path / "venv")
    runs = tmp_path / "runs"
    common = [*CPU, "--output-dir", str(runs), "--seed", "3", "--epochs", "5"]
    common += ["--set", "train.patience=0"]
    installed.run("train", *common, "--name", "a")
    installed.run("train", *common, "--name", "b")
    a, b = read_metrics(runs / "a"), read_metrics(runs / "b")
    assert a == b, "two runs with the same seed differ"

    # Kill a third run as soon as it has written a checkpoint, then resume it.
    last = runs / "c" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [str(installed.script), "train", *common, "--name", "c"],
        cwd=project,
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.kill()
    assert process.wait() != 0, "the run finished before it could be interrupted"
    # No --epochs: a resumed run takes its settings from the checkpoint.
    installed.run("train", *CPU, "--output-dir", str(runs), "--resume", str(last))
    c = read_metrics(runs / "c")
    assert [row["epoch"] for row in c] == [0, 1, 2, 3, 4]
    for uninterrupted, resumed in zip(a, c, strict=True):
        for key in ("step", "train/loss", "val/loss", "val/acc"):
            assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-5), key


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_user_mistakes_are_one_line_errors(framework, template_copy, tmp_path):
    project = render(
        template_copy,
        tmp_path / "project",
        project_name=f"oops-{framework}",
        task="tabular-regression",
        framework=framework,
    )
    installed = install(project, tmp_path / "venv")
    runs = tmp_path / "runs"
    out = ["--output-dir", str(runs)]
    installed.run("train", *CPU, *out, "--epochs", "2", "--name", "done")
    finished = (runs / "done" / "metrics.csv").read_text()
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\n")

    def fails(*args: str, says: str) -> None:
        result = installed.run(*args, check=False)
        assert result.returncode == 2, result.stderr
        message = result.stderr.strip()
        assert message.startswith("error: ") and "\n" not in message, message
        assert says in message, message

    fails("train", *CPU, *out, "--data", str(tmp_path / "missing.csv"), says="does not exist")
    fails("train", *CPU, *out, "--data", str(bad_csv), says="expected a CSV with a 'target'")
    fails("train", *CPU, *out, "--name", "done", says="exists already")
    fails("train", *CPU, *out, "--set", "train.epoch=3", says="unknown key 'train.epoch'")
    fails("train", *CPU, *out, "--accelerator", "tpu", says="train.accelerator must be one of")
    fails("train", *out, "--accelerator", "gpu", says="no CUDA GPU")
    fails("train", *out, "--accelerator", "mps", says="MPS backend is not available")
    last = str(runs / "done" / "checkpoints" / "last.ckpt")
    fails("train", *CPU, *out, "--resume", last, "--set", "model.hidden=32", says="other model")
    fails("train", *CPU, *out, "--resume", last, says="trained its 2 epochs already")
    fails("evaluate", "--checkpoint", str(corrupt), says="cannot read checkpoint")
    fails("evaluate", "--checkpoint", str(tmp_path / "nope.ckpt"), says="does not exist")
    # The finished run was left as it was.
    assert (runs / "done" / "metrics.csv").read_text() == finished
    assert [p.name for p in runs.iterdir()] == ["done"]
