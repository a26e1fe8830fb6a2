"""Experiments in generated projects, both styles: Optuna sweeps (resumed, shared, pruned),
MLflow and W&B tracking, k-fold runs, the record of what produced a run, optional extras.

Each style's project (tabular regression: the fastest to train) is installed once for this
module, made a git repository, and trains for a few steps at a time. The sweeps read their
studies back with Optuna, the MLflow runs with MLflow's client; W&B runs offline.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import command_env, git, install, render, run, run_files
from userdata import write_user_data

pytestmark = pytest.mark.slow

STYLES = [
    pytest.param(style, marks=pytest.mark.xdist_group(f"experiments-{style}"))
    for style in ("raw", "lightning")
]
SHORT = ["--max-steps", "30", "--set", "train.eval_every=10"]  # three evaluations
SPACE = {
    "trials": 4,
    "pruner": {"startup_trials": 2, "warmup_evaluations": 1},
    "params": {
        "train.lr": {"low": 2.0e-3, "high": 1.0e-2, "log": True},
        "model.dropout": {"low": 0.0, "high": 0.2},
    },
}
FINISHED = {"COMPLETE", "PRUNED"}


@pytest.fixture(scope="module")
def projects(template_copy, tmp_path_factory):
    """A project per style, installed on demand and committed to git."""
    made = {}

    def make(style: str):
        if style not in made:
            root = tmp_path_factory.mktemp(f"experiments-{style}")
            project = render(
                template_copy,
                root / "project",
                project_name=f"exp-{style}",
                task="tabular-regression",
                framework=style,
            )
            git("init", "--quiet", cwd=project)
            git("add", "--all", cwd=project)
            git("commit", "--quiet", "-m", "Generated", cwd=project)
            made[style] = install(project, root / "venv")
        return made[style]

    return make


def write_space(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SPACE, **changes}))
    return path


def study_of(project: Path, name: str):
    import optuna

    storage = f"sqlite:///{project / 'runs' / 'sweeps' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def best_metric(run_dir: Path, key: str = "val/mse") -> float:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return min(float(row[key]) for row in csv.DictReader(file))


def sweep_command(installed, *args: str) -> list[str]:
    return [str(installed.script), "sweep", *SHORT, *args]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("style", STYLES)
def test_a_sweep_runs_its_trials_and_its_best_config_trains_again(style, projects, tmp_path):
    installed = projects(style)
    space = write_space(tmp_path / "space.yaml")
    started = time.monotonic()
    # train's flags and SECTION.KEY=VALUE overrides: the settings every trial starts from.
    flags = ["--target", "target", "--batch-size", "48", "model.layers=3"]
    result = installed.run("sweep", *SHORT, *flags, "--space", str(space), "--name", "s")
    print(f"\n{style}: a 4-trial sweep took {time.monotonic() - started:.0f} s")
    folder = installed.project / "runs" / "sweeps" / "s"
    assert "trial  state" in result.stdout, result.stdout
    # A line per trial, when it ends; no evaluation lines (--verbose shows them).
    ended = re.findall(r"^trial (\d) (finished|pruned)", result.stdout, re.M)
    assert [number for number, _ in ended] == ["0", "1", "2", "3"], result.stdout
    assert not re.search(r"^step \d", result.stdout, re.M), result.stdout
    settings = yaml.safe_load((folder / "trial-003" / "config.yaml").read_text())
    assert (settings["train"]["batch_size"], settings["model"]["layers"]) == (48, 3)
    with (folder / "trials.csv").open(newline="") as file:
        assert [row["trial"] for row in csv.DictReader(file)] == ["0", "1", "2", "3"]
    study = study_of(installed.project, "s")
    assert [t.state.name in FINISHED for t in study.trials] == [True] * 4
    # The first trial tried the settings of default.yaml; each is a normal run folder.
    assert study.trials[0].params == {"train.lr": 0.003, "model.dropout": 0.0}
    assert {"config.yaml", "metrics.csv", "record.json"} <= run_files(folder / "trial-000")

    # best.yaml is a config that `train --config` takes as it is: the same run, to the bit.
    best = folder / "best.yaml"
    settings = yaml.safe_load(best.read_text())
    assert settings["train"]["lr"] == study.best_params["train.lr"]
    installed.run("train", "--config", str(best), "--name", "again")
    assert best_metric(installed.project / "runs" / "again") == study.best_value


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", STYLES)
def test_a_lagging_trial_is_pruned_and_a_failing_one_fails_alone(style, projects, tmp_path):
    installed = projects(style)
    space = write_space(tmp_path / "space.yaml", trials=4)
    installed.run("sweep", *SHORT, "--space", str(space), "--name", "p", "--trials", "2")
    # Queued by hand, as Optuna allows: a learning rate that cannot learn in 30 steps, then
    # a dropout that the model refuses.
    study = study_of(installed.project, "p")
    study.enqueue_trial({"train.lr": 1e-7, "model.dropout": 0.0})
    study.enqueue_trial({"train.lr": 0.003, "model.dropout": 1.5})
    result = installed.run("sweep", "--name", "p", "--trials", "4", "--verbose")
    assert "trial 2 pruned at step 20" in result.stdout, result.stdout
    assert "\nstep 10/30  epoch " in result.stdout, "--verbose shows the evaluations"
    assert "trial 3 failed: ValueError: dropout probability" in result.stdout, result.stdout
    trials = study_of(installed.project, "p").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    rows = (installed.project / "runs" / "sweeps" / "p" / "trial-002" / "metrics.csv").read_text()
    assert len(rows.splitlines()) == 1 + 2  # stopped at its second evaluation


@pytest.mark.timeout(900)
@pytest.mark.parametrize("style", STYLES[:1])
def test_a_killed_sweep_resumes_and_counts_the_killed_trial_once(style, projects, tmp_path):
    installed = projects(style)
    space = write_space(tmp_path / "space.yaml", trials=3, pruner=None)
    command = sweep_command(installed, "--space", str(space), "--name", "k")
    metrics = installed.project / "runs" / "sweeps" / "k" / "trial-001" / "metrics.csv"
    process = subprocess.Popen(command, cwd=installed.project, env=command_env())
    deadline = time.monotonic() + 300
    # Kill it in the middle of its second trial, once that has evaluated once.
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.kill()
    assert process.wait() != 0, "the sweep finished before it could be killed"
    assert study_of(installed.project, "k").trials[1].state.name == "RUNNING"

    result = installed.run("sweep", "--name", "k")
    trials = study_of(installed.project, "k").trials
    states = [t.state.name for t in trials]
    # The killed trial failed and ran again with its values; three trials count.
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    assert trials[2].params == trials[1].params
    assert trials[2].system_attrs["retry_history"] == [1]
    assert "run again as trial 2" in result.stdout


@pytest.mark.timeout(900)
@pytest.mark.parametrize("style", STYLES[1:])
def test_two_workers_share_a_sweep_without_running_a_trial_twice(style, projects, tmp_path):
    installed = projects(style)
    space = write_space(tmp_path / "space.yaml", trials=4, pruner=None)
    command = sweep_command(installed, "--space", str(space), "--name", "w")
    workers = [
        subprocess.Popen(
            command,
            cwd=installed.project,
            env=command_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    # Each worker says "trial N finished: ..." as a trial of its own ends.
    ran = [{int(n) for n in re.findall(r"^trial (\d+) finished", out, re.M)} for out in outputs]
    assert ran[0] | ran[1] == {0, 1, 2, 3} and not ran[0] & ran[1], outputs
    trials = study_of(installed.project, "w").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow
@pytest.mark.parametrize("style", STYLES)
def test_mlflow_holds_the_run_and_a_resumed_run_continues_it(style, projects, tmp_path):
    import torch
    from mlflow import MlflowClient

    installed = projects(style)
    logged = ["--logger", "mlflow", "--set", "train.eval_every=10", "--name", "m"]
    first = installed.run("train", *logged, "--max-steps", "20", "train.log_checkpoint=true")
    assert first.stderr == "", "MLflow's and alembic's INFO lines, or a warning"
    last = installed.project / "runs" / "m" / "checkpoints" / "last.ckpt"
    installed.run("train", "--resume", str(last), "--max-steps", "30")

    client = MlflowClient(f"sqlite:///{installed.project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"exp-{style}")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == torch.load(last, weights_only=True)["tracker_run_id"]
    assert found.info.run_name == "m" and found.info.status == "FINISHED"
    with (installed.project / "runs" / "m" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    best = min(rows, key=lambda row: float(row["val/mse"]))
    bests = {f"best/{key}" for key in rows[0] if key.startswith("val/")} | {"best/step"}
    assert set(found.data.metrics) == set(rows[0]) - {"step"} | bests
    history = client.get_metric_history(found.info.run_id, "val/mse")
    assert [(m.step, m.value) for m in history] == [
        (int(row["step"]), float(row["val/mse"])) for row in rows
    ]
    # The run's latest values of best/...: the best evaluation's, not the last one's.
    assert found.data.metrics["best/step"] == float(best["step"])
    assert found.data.metrics["best/val/mse"] == float(best["val/mse"])
    assert found.data.params["train.lr"] == "0.003"
    assert found.data.params["model.hidden"] == "128"
    head = git("rev-parse", "HEAD", cwd=installed.project).strip()
    tags = found.data.tags
    assert (tags["task"], tags["framework"]) == ("tabular-regression", style)
    assert (tags["run_folder"], tags["commit"]) == ("runs/m", head)
    assert tags["mlflow.source.git.commit"] == head
    assert tags["command"].endswith(
        f"train {' '.join(logged)} --max-steps 20 train.log_checkpoint=true"
    )
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert files == {"config.yaml", "metrics.csv", "curves.png", "record.json", "checkpoints"}
    (checkpoint,) = client.list_artifacts(found.info.run_id, "checkpoints")
    assert checkpoint.path == "checkpoints/best.ckpt"
    kept = Path(client.download_artifacts(found.info.run_id, "metrics.csv", str(tmp_path)))
    assert kept.read_text() == (installed.project / "runs" / "m" / "metrics.csv").read_text()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", STYLES)
def test_wandb_offline_writes_its_run(style, projects, tmp_path):
    import torch

    installed = projects(style)
    home = tmp_path / "wandb"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(home), "WANDB_SILENT": "true"}
    for name in ("CONFIG", "CACHE", "DATA"):
        env[f"WANDB_{name}_DIR"] = str(home / name.lower())
        (home / name.lower()).mkdir(parents=True)
    installed.run("train", "--logger", "wandb", *SHORT, "--name", "wb", env=env)
    last = installed.project / "runs" / "wb" / "checkpoints" / "last.ckpt"
    run_id = torch.load(last, weights_only=True)["tracker_run_id"]
    (offline,) = (home / "wandb").glob(f"offline-run-*-{run_id}")
    run, summary, artifacts = read_wandb_run(offline / f"run-{run_id}.wandb")
    assert list(run.tags) == ["tabular-regression", style]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["lr"] == 0.003 and config["model"]["hidden"] == 128
    assert config["run"]["run_folder"] == "runs/wb" and config["run"]["framework"] == style
    assert config["run"]["commit"] == git("rev-parse", "HEAD", cwd=installed.project).strip()
    with (installed.project / "runs" / "wb" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    best = min(rows, key=lambda row: float(row["val/mse"]))
    assert summary["best/step"] == int(best["step"])
    assert summary["best/val/mse"] == float(best["val/mse"])
    assert summary["val/mse"] == float(rows[-1]["val/mse"])  # the latest, beside the best
    assert artifacts == {
        f"run-{run_id}": ["config.yaml", "curves.png", "metrics.csv", "record.json"]
    }


def read_wandb_run(path: Path) -> tuple[Any, dict[str, Any], dict[str, list[str]]]:
    """An offline W&B run's records, read with W&B's own record definitions (the file is
    W&B's LevelDB-style log: 32 KiB blocks of records, each with a 7-byte header): the run
    record, its final summary and its artifacts' file names."""
    from wandb.proto import wandb_internal_pb2

    data, position, pieces = path.read_bytes(), 7, b""  # after the file's own header
    run, summary, artifacts = None, {}, {}
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # a block's tail too short for a header: padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            break
        pieces += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind not in (1, 4):  # the first or a middle piece of a record
            continue
        record = wandb_internal_pb2.Record.FromString(pieces)
        pieces = b""
        which = record.WhichOneof("record_type")
        if which == "run":
            run = record.run
        elif which == "summary":
            for item in record.summary.update:
                summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
        elif which == "artifact":
            contents = record.artifact.manifest.contents
            artifacts[record.artifact.name] = sorted(entry.path for entry in contents)
    return run, summary, artifacts


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", STYLES)
def test_tensorboard_holds_the_hyperparameters_with_the_best_metrics(style, projects):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    installed = projects(style)
    installed.run("train", "--logger", "tensorboard", *SHORT, "--name", "tb")
    run_dir = installed.project / "runs" / "tb"
    with (run_dir / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    best = min(rows, key=lambda row: float(row["val/mse"]))
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/mse", "best/val/mse", "best/step"} <= set(events.Tags()["scalars"])
    latest, *_ = reversed(events.Scalars("best/val/mse"))
    assert (latest.step, latest.value) == (int(best["step"]), pytest.approx(float(best["val/mse"])))
    plugin = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(content)
        for tag, content in events.PluginTagToContent("hparams").items()
    }
    experiment = plugin["_hparams_/experiment"].experiment
    assert {info.name.tag for info in experiment.metric_infos} >= {"best/val/mse", "best/step"}
    hparams = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["train.lr"].number_value == 0.003
    assert hparams["model.hidden"].number_value == 128
    assert hparams["train.logger"].string_value == "tensorboard"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", STYLES[:1])
def test_folds_train_one_run_per_fold_and_sum_them_up(style, projects, tmp_path):
    installed = projects(style)
    data = write_user_data("tabular-regression", tmp_path / "data")
    args = ["--data", str(data), "--target", "price", "--folds", "3", "--name", "cv"]
    result = installed.run("train", *args, "--max-steps", "20", "--set", "train.eval_every=10")
    parent = installed.project / "runs" / "cv"
    assert sorted(p.name for p in parent.iterdir()) == ["fold-1", "fold-2", "fold-3", "folds.json"]
    summary = json.loads((parent / "folds.json").read_text())
    bests = [run["best"]["val/mse"] for run in summary["runs"]]
    assert summary["mean"]["val/mse"] == pytest.approx(statistics.fmean(bests))
    assert summary["std"]["val/mse"] == pytest.approx(statistics.stdev(bests))
    mean, std = summary["mean"]["val/mse"], summary["std"]["val/mse"]
    assert f"val/mse over 3 folds: {mean:.4f} ± {std:.4f}" in result.stdout, result.stdout
    for fold in (1, 2, 3):
        config = yaml.safe_load((parent / f"fold-{fold}" / "config.yaml").read_text())
        assert (config["data"]["folds"], config["data"]["fold"]) == (3, fold)
    # The fold is in the checkpoint's config: evaluate rebuilds that fold's validation rows.
    checkpoint = parent / "fold-2" / "checkpoints" / "best.ckpt"
    shown = installed.run("evaluate", "--checkpoint", str(checkpoint)).stdout
    assert f"val/mse: {bests[1]:.4f}" in shown


@pytest.mark.timeout(300)
def test_folds_refuse_an_image_folder_split_already(template_copy, tmp_path):
    project = render(
        template_copy, tmp_path / "project", project_name="split", task="image-classification"
    )
    installed = install(project, tmp_path / "venv")
    images = write_user_data("image-classification", tmp_path / "data")
    (images / "train").mkdir()
    (images / "val").mkdir()
    for name in ("circle", "square"):
        (images / name).rename(images / "train" / name)
    result = installed.run("train", "--data", str(images), "--folds", "3", check=False)
    message = result.stderr.strip()
    assert result.returncode == 2 and "\n" not in message, message
    assert "split into train/ and val/ already" in message


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", STYLES[1:])
def test_the_run_record_names_the_commit_and_the_changes(style, projects):
    installed = projects(style)
    project = installed.project
    head = git("rev-parse", "HEAD", cwd=project).strip()
    installed.run("train", "--max-steps", "10", "--name", "clean")
    record = json.loads((project / "runs" / "clean" / "record.json").read_text())
    assert (record["commit"], record["dirty"]) == (head, False)
    assert record["command"].endswith("train --max-steps 10 --name clean")
    assert record["versions"]["torch"] and record["hardware"]["cpus"]
    packages = (project / "runs" / "clean" / "packages.txt").read_text().splitlines()
    assert any(line.startswith("torch==") for line in packages)
    assert not (project / "runs" / "clean" / "git.diff").exists()

    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\nA change not committed yet.\n")
    try:
        installed.run("train", "--max-steps", "10", "--name", "dirty")
    finally:
        git("checkout", "README.md", cwd=project)
    record = json.loads((project / "runs" / "dirty" / "record.json").read_text())
    assert (record["commit"], record["dirty"]) == (head, True)
    assert "+A change not committed yet." in (project / "runs" / "dirty" / "git.diff").read_text()
    checkpoint = project / "runs" / "dirty" / "checkpoints" / "best.ckpt"
    shown = installed.run("evaluate", "--checkpoint", str(checkpoint)).stderr
    assert f"trained at commit {head[:12]}, with uncommitted changes" in shown


@pytest.mark.timeout(300)
@pytest.mark.parametrize("style", STYLES[:1])
def test_a_missing_extra_is_one_line_naming_it(style, projects, tmp_path):
    installed = projects(style)
    # Python imports sitecustomize at start-up: here it hides the optional packages.
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.util\n"
        "found = importlib.util.find_spec\n"
        "def find_spec(name, package=None):\n"
        "    return None if name in ('optuna', 'mlflow', 'wandb') else found(name, package)\n"
        "importlib.util.find_spec = find_spec\n"
    )
    env = {"PYTHONPATH": str(tmp_path)}
    for command, extra in ((["sweep"], "sweep"), (["train", "--logger", "mlflow"], "mlflow")):
        result = installed.run(*command, check=False, env=env)
        message = result.stderr.strip()
        assert result.returncode == 2 and "\n" not in message, message
        assert f'pip install -e ".[{extra}]"' in message


@pytest.mark.timeout(300)
@pytest.mark.parametrize("style", STYLES[1:])
def test_a_plain_run_imports_no_tracker_and_no_optuna(style, projects, tmp_path):
    installed = projects(style)
    package = f"exp_{style}"
    overrides = {"train.max_steps": 5, "train.output_dir": str(tmp_path)}
    code = (
        "import sys\n"
        f"from {package}.plumbing.settings import load_config\n"
        f"from {package}.engine import train\n"
        f"train(load_config(overrides={overrides!r}))\n"
        "print(sorted({'mlflow', 'wandb', 'optuna'} & set(sys.modules)))\n"
    )
    result = run([str(installed.python), "-c", code], cwd=installed.project)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout
