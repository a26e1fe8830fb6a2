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
import subprocess
import time
from pathlib import Path

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
    result = installed.run("sweep", *SHORT, "--space", str(space), "--name", "s")
    print(f"\n{style}: a 4-trial sweep took {time.monotonic() - started:.0f} s")
    folder = installed.project / "runs" / "sweeps" / "s"
    assert "trial  state" in result.stdout, result.stdout
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
    result = installed.run("sweep", "--name", "p", "--trials", "4")
    assert "trial 2 pruned at step 20" in result.stdout, result.stdout
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
    # Each worker says "trial N: <values>" as it starts a trial.
    ran = [{int(n) for n in re.findall(r"^trial (\d+): ", out, re.M)} for out in outputs]
    assert ran[0] | ran[1] == {0, 1, 2, 3} and not ran[0] & ran[1], outputs
    trials = study_of(installed.project, "w").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow
@pytest.mark.parametrize("style", STYLES)
def test_mlflow_holds_the_run_and_a_resumed_run_continues_it(style, projects):
    import torch
    from mlflow import MlflowClient

    installed = projects(style)
    logged = ["--logger", "mlflow", "--set", "train.eval_every=10", "--name", "m"]
    installed.run("train", *logged, "--max-steps", "20")
    last = installed.project / "runs" / "m" / "checkpoints" / "last.ckpt"
    installed.run("train", "--resume", str(last), "--max-steps", "30")

    client = MlflowClient(f"sqlite:///{installed.project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"exp-{style}")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == torch.load(last, weights_only=True)["tracker_run_id"]
    assert found.info.run_name == "m" and found.info.status == "FINISHED"
    with (installed.project / "runs" / "m" / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert set(found.data.metrics) == set(rows[0]) - {"step"}
    history = client.get_metric_history(found.info.run_id, "val/mse")
    assert [(m.step, m.value) for m in history] == [
        (int(row["step"]), float(row["val/mse"])) for row in rows
    ]
    assert found.data.params["train.lr"] == "0.003"
    assert found.data.params["model.hidden"] == "128"


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
    data = (offline / f"run-{run_id}.wandb").read_bytes()
    assert b"val/mse" in data and b"train/loss" in data and b"model" in data


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
