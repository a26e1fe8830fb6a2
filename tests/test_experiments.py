"""The extras, rendered only when chosen: Optuna sweeps (`sweep`), k-fold runs (`train
--folds K`) and the trackers beside metrics.csv (TensorBoard, MLflow, W&B), in both styles.

Each style's project with sweeps and folds (tabular regression: the fastest to train; raw
with TensorBoard, Lightning with MLflow) is installed once per test process and shared by
its tests (xdist_group), as is each project with one tracker and no extra. Every run
trains a few steps of the built-in table: these tests prove what the extras do, not that
the model learns (test_train does). The studies are read back with Optuna, the MLflow runs
with MLflow's client, the TensorBoard events with TensorBoard's reader, W&B's offline files
with its own record definitions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import command_env, evaluations, render

pytestmark = pytest.mark.slow

TASK = "tabular-regression"
EXTRAS = ["sweeps", "folds"]
# The tracker of each style's project with the extras; the others each have a project of
# their own, with no extra.
EXTRAS_TRACKER = {"raw": "tensorboard", "lightning": "mlflow"}
STYLES = ["raw", "lightning"]
SHORT = ["--max-steps", "20", "train.eval_every=10", "train.patience=0"]  # two evaluations
SPACE = {
    "trials": 3,
    "pruner": None,
    "params": {
        "train.lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "model.dropout": {"low": 0.0, "high": 0.2},
    },
}


def extras_param(style: str):
    return pytest.param(style, marks=pytest.mark.xdist_group(f"extras-{style}"))


def tracker_param(style: str, logger: str):
    group = f"extras-{style}" if EXTRAS_TRACKER[style] == logger else f"{logger}-{style}"
    return pytest.param(style, logger, marks=pytest.mark.xdist_group(group), id=f"{style}-{logger}")


@pytest.fixture
def extras_project(installed_project):
    """extras_project(style): the tabular project with sweeps and folds, and its tracker."""

    def get(style: str):
        combination = {"task": TASK, "framework": style, "hardware": "cpu"}
        return installed_project(combination, extras=EXTRAS, logger=EXTRAS_TRACKER[style])

    return get


def tracked_project(installed_project, style: str, logger: str):
    combination = {"task": TASK, "framework": style, "hardware": "cpu"}
    if EXTRAS_TRACKER[style] == logger:
        return installed_project(combination, extras=EXTRAS, logger=logger)
    return installed_project(combination, logger=logger)


def write_space(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**SPACE, **changes}))
    return path


def load_study(folder: Path):
    import optuna

    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


def trial_lines(printed: str) -> list[str]:
    """The sweep's line per ended trial: "trial 2: val/mse 1.36 (best: ...)", "trial 3:
    pruned at step 10", ..."""
    return re.findall(r"^trial \d+: .*$", printed, re.M)


def start(installed, *args: str, argv: list[str] | None = None) -> subprocess.Popen:
    """The project's console script (or `argv`), started in a process of its own (to be
    killed), its output into a file that `output` reads (a pipe left unread could fill)."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        argv or [str(installed.script), *args],
        cwd=installed.project,
        env=command_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    process.log = log
    return process


def output(process: subprocess.Popen, timeout: float = 500) -> str:
    """What a process of `start` printed, once it has ended."""
    process.wait(timeout)
    process.log.seek(0)
    return process.log.read()


def wait_for_evaluation(process: subprocess.Popen, run_dir: Path, timeout: float = 300) -> None:
    """Until the run in `run_dir` has logged an evaluation (its process still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if (run_dir / "metrics.csv").is_file() and evaluations(run_dir):
                return
        except (KeyError, ValueError):  # a line being written
            pass
        time.sleep(0.05)
    printed = output(process) if process.poll() is not None else ""
    raise AssertionError(f"no evaluation in {run_dir} while the process ran:\n{printed[-4000:]}")


# --- sweeps --------------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", [extras_param(s) for s in STYLES])
def test_a_sweep_runs_its_trials_and_its_best_config_trains_again(style, extras_project, tmp_path):
    installed = extras_project(style)
    space = write_space(tmp_path / "space.yaml")
    runs = tmp_path / "runs"
    # train's flags and SECTION.KEY=VALUE overrides: the settings every trial starts from.
    given = ["--space", str(space), "--name", "s", "--output-dir", str(runs), "model.layers=1"]
    sweep, again = installed.drive(
        ["sweep", *SHORT, *given],
        ["train", "--config", str(runs / "sweeps" / "s" / "best.yaml"), "--name", "again"],
    )
    sweep.check()
    folder = runs / "sweeps" / "s"
    assert len(trial_lines(sweep.stdout)) == 3, sweep.stdout
    assert sorted(p.name for p in folder.glob("trial-*")) == ["trial-000", "trial-001", "trial-002"]
    study = load_study(folder)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 3
    for trial in study.trials:  # each a run of its own, with the sweep's settings and its values
        run_dir = folder / f"trial-{trial.number:03d}"
        settings = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert settings["model"]["layers"] == 1 and settings["train"]["max_steps"] == 20
        assert settings["train"]["lr"] == trial.params["train.lr"]
        assert min(row["val/mse"] for row in evaluations(run_dir)) == pytest.approx(trial.value)
    # trials.csv: Optuna's table of the trials.
    table = (folder / "trials.csv").read_text().splitlines()
    assert table[0].startswith("number,value,") and len(table) == 1 + 3, table
    assert f"best: trial {study.best_trial.number}, val/mse {study.best_value:.4f}" in sweep.stdout

    # best.yaml is a config that `train --config` takes as it is: the same run, to the bit.
    settings = yaml.safe_load((folder / "best.yaml").read_text())
    assert settings["train"]["lr"] == study.best_params["train.lr"]
    assert settings["model"]["dropout"] == study.best_params["model.dropout"]
    again.check()
    rerun = evaluations(runs / "again")  # best.yaml keeps the sweep's --output-dir
    assert min(row["val/mse"] for row in rerun) == study.best_value


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", [extras_param(s) for s in STYLES])
def test_the_pruner_stops_a_lagging_trial_and_a_failing_one_fails_alone(
    style, extras_project, tmp_path
):
    installed = extras_project(style)
    # Pruning from the first evaluation on, once two trials have finished.
    space = write_space(tmp_path / "space.yaml", pruner={"startup_trials": 2, "warmup_steps": 0})
    runs = tmp_path / "runs"
    common = ["--name", "p", "--output-dir", str(runs)]
    steps = ["--max-steps", "30", "train.eval_every=10", "train.patience=0"]
    installed.drive(["sweep", *steps, *common, "--space", str(space), "--trials", "2"])[0].check()
    # Queued by hand, as Optuna allows: a learning rate that learns nothing in 30 steps, then
    # a dropout that config.py refuses.
    folder = runs / "sweeps" / "p"
    study = load_study(folder)
    study.enqueue_trial({"train.lr": 1e-7, "model.dropout": 0.0})
    study.enqueue_trial({"train.lr": 3e-3, "model.dropout": 1.5})
    (resumed,) = installed.drive(["sweep", *common, "--trials", "4"])
    resumed.check()
    lines = trial_lines(resumed.stdout)
    assert lines[0].startswith("trial 2: pruned at step 10"), resumed.stdout
    assert lines[1].startswith("trial 3: failed: ") and "model.dropout" in lines[1], lines
    assert [t.state.name for t in load_study(folder).trials] == [
        "COMPLETE",
        "COMPLETE",
        "PRUNED",
        "FAIL",
    ]
    # The pruned run stopped at its first evaluation; the others trained their 30 steps.
    assert len(evaluations(folder / "trial-002")) == 1
    assert len(evaluations(folder / "trial-001")) == 3
    assert "4 trials: " in resumed.stdout


def with_short_heartbeat(installed, *args: str) -> list[str]:
    """The console script's command, with the sweep's heartbeat every second and a trial
    silent for 3 s stale (30 s in the project): the same code, sooner."""
    code = (
        "import sys\n"
        f"from {installed.package}.plumbing import sweep\n"
        "sweep.HEARTBEAT, sweep.GRACE = 1, 3\n"
        f"from {installed.package}.cli import main\n"
        f"sys.argv = [{str(installed.script)!r}, *sys.argv[1:]]\n"
        "main()\n"
    )
    return [str(installed.python), "-c", code, *args]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", [extras_param("raw")])
def test_a_killed_trial_runs_again_and_counts_once(style, extras_project, tmp_path):
    installed = extras_project(style)
    space = write_space(tmp_path / "space.yaml")
    runs = tmp_path / "runs"
    command = with_short_heartbeat(installed, "sweep", "--name", "k", "--output-dir", str(runs))
    folder = runs / "sweeps" / "k"
    steps = ["--max-steps", "60", "train.eval_every=10", "train.patience=0"]
    worker = start(installed, argv=[*command, *steps, "--space", str(space)])
    # Killed (no chance to clean up) in the middle of its second trial.
    wait_for_evaluation(worker, folder / "trial-001")
    worker.kill()
    output(worker)
    assert load_study(folder).trials[1].state.name == "RUNNING"

    again = subprocess.run(
        command, cwd=installed.project, env=command_env(), capture_output=True, text=True
    )
    assert again.returncode == 0, again.stdout + again.stderr
    trials = load_study(folder).trials
    # The killed trial failed once stale, ran again with its values, and counted once.
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].params == trials[1].params
    assert trials[2].system_attrs["retry_history"] == [1]
    assert len((folder / "trials.csv").read_text().splitlines()) == 1 + 4
    assert (folder / "best.yaml").is_file()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", [extras_param("raw")])
def test_a_trial_stopped_by_sigterm_runs_again_at_once(style, extras_project, tmp_path):
    installed = extras_project(style)
    space = write_space(tmp_path / "space.yaml", trials=2)
    runs = tmp_path / "runs"
    steps = ["--max-steps", "60", "train.eval_every=10", "train.patience=0"]
    given = ["sweep", "--name", "t", "--output-dir", str(runs)]
    folder = runs / "sweeps" / "t"
    worker = start(installed, *given, *steps, "--space", str(space))
    wait_for_evaluation(worker, folder / "trial-000")
    worker.send_signal(signal.SIGTERM)
    printed = output(worker, timeout=120)
    assert worker.returncode == 128 + signal.SIGTERM, printed
    assert f"go on: {installed.script.name} sweep --name t" in printed, printed
    # Failed and queued again at once: the next worker runs it first, with no heartbeat to
    # wait for.
    assert [t.state.name for t in load_study(folder).trials] == ["FAIL", "WAITING"]
    installed.run(*given)
    trials = load_study(folder).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].params == trials[0].params


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", [extras_param("lightning")])
def test_two_workers_share_a_sweep_and_run_its_trials_once(style, extras_project, tmp_path):
    installed = extras_project(style)
    space = write_space(tmp_path / "space.yaml", trials=4)
    runs = tmp_path / "runs"
    args = ["sweep", *SHORT, "--space", str(space), "--name", "w", "--output-dir", str(runs)]
    workers = [start(installed, *args) for _ in range(2)]
    outputs = [output(worker) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    # Each worker prints a line as a trial of its own ends.
    ran = [{int(n) for n in re.findall(r"^trial (\d+): ", out, re.M)} for out in outputs]
    assert ran[0] | ran[1] == {0, 1, 2, 3} and not ran[0] & ran[1], outputs
    trials = load_study(runs / "sweeps" / "w").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4


# --- folds ---------------------------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style", [extras_param(s) for s in STYLES])
def test_folds_train_a_run_per_fold_and_resume_where_they_stopped(style, extras_project, tmp_path):
    installed = extras_project(style)
    runs = tmp_path / "runs"
    args = ["train", "--folds", "3", "--name", "cv", "--output-dir", str(runs)]
    steps = ["--max-steps", "40", "train.eval_every=10", "train.patience=0"]
    parent = runs / "cv"
    # SIGTERM in the middle of the second fold.
    first = start(installed, *args, *steps)
    wait_for_evaluation(first, parent / "fold-2")
    first.send_signal(signal.SIGTERM)
    printed = output(first, timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, printed
    assert "go on: " in printed and "--folds 3" in printed, printed
    kept = (parent / "fold-1" / "metrics.csv").read_text()
    assert not (parent / "fold-3").exists()

    # The same command again: fold-1 kept, fold-2 resumed from its last.ckpt, fold-3 trained.
    result = installed.run(*args, *steps)
    assert "fold-1" not in result.stdout.split("resuming from")[0], result.stdout
    assert f"resuming from {parent / 'fold-2' / 'checkpoints' / 'last.ckpt'}" in result.stdout
    assert (parent / "fold-1" / "metrics.csv").read_text() == kept
    assert sorted(p.name for p in parent.iterdir()) == [
        ".lock",
        "fold-1",
        "fold-2",
        "fold-3",
        "folds.json",
    ]
    summary = json.loads((parent / "folds.json").read_text())
    bests = []
    for fold in (1, 2, 3):
        run_dir = parent / f"fold-{fold}"
        config = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
        assert (config["folds"], config["fold"]) == (3, fold)
        rows = evaluations(run_dir)
        assert len(rows) == 4, f"fold-{fold} did not train to its end"
        bests.append(min(row["val/mse"] for row in rows))
        assert summary["best"][f"fold-{fold}"]["val/mse"] == pytest.approx(bests[-1])
    assert summary["mean"]["val/mse"] == pytest.approx(statistics.fmean(bests))
    assert summary["std"]["val/mse"] == pytest.approx(statistics.stdev(bests))
    mean, std = summary["mean"]["val/mse"], summary["std"]["val/mse"]
    assert f"val/mse: {mean:.4f} ± {std:.4f}" in result.stdout, result.stdout
    # Each fold holds out its own third of the rows: their trivial baselines differ.
    baselines = {(parent / f"fold-{k}" / "baseline.json").read_text() for k in (1, 2, 3)}
    assert len(baselines) == 3


@pytest.mark.xdist_group("extras-raw")
def test_folds_hold_out_each_example_once(extras_project):
    """split_indices, as data.py takes it: the folds' validation sets partition the rows."""
    installed = extras_project("raw")
    code = (
        f"from {installed.package}.config import Config\n"
        f"from {installed.package}.data import split_indices\n"
        "held = []\n"
        "for fold in (1, 2, 3):\n"
        "    cfg = Config()\n"
        "    cfg.train.folds, cfg.train.fold = 3, fold\n"
        "    train, val = split_indices(100, cfg)\n"
        "    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)\n"
        "    held += val\n"
        "print(sorted(held) == list(range(100)))\n"
    )
    result = subprocess.run(
        [str(installed.python), "-c", code], cwd=installed.project, capture_output=True, text=True
    )
    assert result.stdout.startswith("True"), result.stdout + result.stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize("style", [extras_param("raw")])
def test_folds_refuse_what_they_cannot_do(style, extras_project, template_copy, tmp_path):
    installed = extras_project(style)
    runs = tmp_path / "runs"
    where = ["--output-dir", str(runs), "--max-steps", "10", "train.eval_every=10"]
    outcomes = installed.drive(
        ["train", "--folds", "1", "--name", "one", *where],
        ["train", *where, "--name", "single"],
        ["train", "--folds", "2", "--name", "single", *where],
        ["train", "--folds", "2", "--name", "cv", *where],
        ["train", "--folds", "2", "--name", "cv", *where, "--lr", "0.01"],
        [
            "train",
            "--folds",
            "2",
            "--resume",
            str(runs / "cv" / "fold-1" / "checkpoints" / "last.ckpt"),
        ],
    )
    one, single, over_single, cv, other_settings, resumed = outcomes
    single.check()
    cv.check()
    for outcome, words in [
        (one, "train.folds"),
        (over_single, "holds a single run"),
        (other_settings, "holds folds trained with other settings (train.lr: 0.003 -> 0.01)"),
        (resumed, "--folds resumes by itself"),
    ]:
        message = outcome.stderr.strip().splitlines()[-1]
        assert outcome.code == 2 and message.startswith("error: "), (outcome.argv, outcome.stderr)
        assert words in message, message
    # A language model holds out the end of its text: no folds there, refused when rendered.
    with pytest.raises(Exception, match="folds are for the image, text and tabular tasks"):
        render(template_copy, tmp_path / "lm", task="language-modeling", extras=["folds"])
    assert not (tmp_path / "lm" / "pyproject.toml").exists()


# --- trackers ------------------------------------------------------------------------------

# Each tracker once, each style at least once: TensorBoard and MLflow in the extras
# projects (no other install), W&B in a project of its own. (A tracker's code is the same in
# both styles: Lightning's logger, or the same one called by the raw loop.)
TRACKERS = [tracker_param(style, logger) for style, logger in EXTRAS_TRACKER.items()]
TRACKERS += [tracker_param("raw", "wandb")]


def train_then_resume(installed, runs: Path, env: dict[str, str] | None = None) -> Path:
    """20 steps, then resumed from last.ckpt to 30, each in a process of its own: the run
    folder (three evaluations: Lightning numbers their steps 9, 19, 29, the raw loop 10,
    20, 30)."""
    args = ["--output-dir", str(runs), "train.eval_every=10", "train.patience=0"]
    installed.run("train", *args, "--max-steps", "20", "--name", "r", env=env)
    last = runs / "r" / "checkpoints" / "last.ckpt"
    resumed = installed.run("train", "--resume", str(last), "--max-steps", "30", env=env)
    assert "resuming from" in resumed.stdout
    run_dir = runs / "r"
    assert len(evaluations(run_dir)) == 3
    return run_dir


def val_mse(run_dir: Path) -> list[tuple[int, float]]:
    return [(int(row["step"]), row["val/mse"]) for row in evaluations(run_dir)]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style, logger", [p for p in TRACKERS if "tensorboard" in p.id])
def test_tensorboard_holds_each_evaluation_and_the_settings(
    style, logger, installed_project, tmp_path
):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    installed = tracked_project(installed_project, style, logger)
    run_dir = train_then_resume(installed, tmp_path / "runs")
    assert not {"mlflow-run.txt", "wandb-run.txt", "wandb"} & {p.name for p in run_dir.iterdir()}
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) >= 2
    logged = [(s.step, s.value) for s in events.Scalars("val/mse")]
    expected = val_mse(run_dir)
    # The resumed run goes on in the same folder: its evaluations follow the first run's.
    assert [step for step, _ in logged] == [step for step, _ in expected], logged
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected])
    # The settings in the HPARAMS tab, written as the run ended.
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


@pytest.mark.timeout(600)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow
@pytest.mark.parametrize("style, logger", [p for p in TRACKERS if "mlflow" in p.id])
def test_mlflow_holds_the_run_and_a_resumed_run_continues_it(
    style, logger, installed_project, tmp_path
):
    from mlflow import MlflowClient

    installed = tracked_project(installed_project, style, logger)
    # The default store: mlflow.db where the command runs (here, its own).
    store = tmp_path / "mlflow.db"
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    run_dir = train_then_resume(installed, tmp_path / "runs", env=env)
    assert not {"wandb-run.txt", "wandb", "tensorboard"} & {p.name for p in run_dir.iterdir()}
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(installed.package)
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_id == (run_dir / "mlflow-run.txt").read_text().strip()
    assert found.info.run_name == "r" and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "val/mse")
    logged = sorted((m.step, m.value) for m in history)
    expected = val_mse(run_dir)  # the same steps (each style's own count)
    assert [step for step, _ in logged] == [step for step, _ in expected]
    assert [value for _, value in logged] == pytest.approx([value for _, value in expected])
    assert found.data.params["train.lr"] == "0.003"
    assert found.data.params["train.max_steps"] == "20"  # its settings when it started
    assert found.data.tags["run_folder"] == str(run_dir)
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.yaml", "metrics.csv", "curves.png", "record.json"} <= files


@pytest.mark.xdist_group("extras-lightning")
def test_mlflow_keeps_its_store_where_the_command_runs(installed_project, tmp_path):
    """No MLFLOW_TRACKING_URI: the SQLite file mlflow.db in the working folder."""
    installed = tracked_project(installed_project, "lightning", "mlflow")
    args = ["--max-steps", "10", "train.eval_every=10", "--output-dir", str(tmp_path / "runs")]
    installed.drive(["train", *args], cwd=tmp_path)[0].check()
    assert (tmp_path / "mlflow.db").is_file()


def wandb_env(home: Path) -> dict[str, str]:
    """W&B with no credentials and its files in `home`: offline, as for a new user."""
    env = {"WANDB_SILENT": "true", "NETRC": str(home / "netrc"), "WANDB_API_KEY": ""}
    for name in ("CONFIG", "CACHE", "DATA"):
        env[f"WANDB_{name}_DIR"] = str(home / name.lower())
        (home / name.lower()).mkdir(parents=True)
    return env


@pytest.mark.timeout(600)
@pytest.mark.parametrize("style, logger", [p for p in TRACKERS if "wandb" in p.id])
def test_wandb_runs_offline_and_a_resumed_run_continues_it(
    style, logger, installed_project, tmp_path
):
    installed = tracked_project(installed_project, style, logger)
    assert "WANDB_MODE" not in os.environ
    run_dir = train_then_resume(installed, tmp_path / "runs", env=wandb_env(tmp_path / "home"))
    assert not {"mlflow-run.txt", "tensorboard"} & {p.name for p in run_dir.iterdir()}
    run_id = (run_dir / "wandb-run.txt").read_text().strip()
    # Two offline runs (a process each), both of the one W&B run; `wandb sync` joins them.
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert [path.name.rsplit("-", 1)[1] for path in offline] == [run_id, run_id], offline
    steps, config = [], None
    for folder in offline:
        run, history = read_wandb_run(folder / f"run-{run_id}.wandb")
        config = config or {item.key: json.loads(item.value_json) for item in run.config.update}
        steps += [step for step, values in history if "val/mse" in values]
        assert run.run_id == run_id and run.project == installed.package
    assert steps == [step for step, _ in val_mse(run_dir)]
    assert config["train"]["lr"] == 0.003


def read_wandb_run(path: Path) -> tuple[Any, list[tuple[int, dict[str, Any]]]]:
    """An offline W&B run's records, read with W&B's own record definitions (the file is
    W&B's LevelDB-style log: 32 KiB blocks of records, each with a 7-byte header): the run
    record and its history, (step, values) by step."""
    from wandb.proto import wandb_internal_pb2

    data, position, pieces = path.read_bytes(), 7, b""  # after the file's own header
    run, history = None, []
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
        elif which == "history":
            values = {
                "/".join(item.nested_key) or item.key: json.loads(item.value_json)
                for item in record.history.item
            }
            # Lightning's WandbLogger gives the step as a value; the raw loop as W&B's step.
            history.append((values.get("trainer/global_step", values.get("_step")), values))
    return run, history


# --- what is not chosen is not there -------------------------------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("style", [pytest.param("raw", marks=pytest.mark.xdist_group("wandb-raw"))])
def test_a_project_without_extras_has_no_sweep_and_no_folds(style, installed_project):
    installed = tracked_project(installed_project, style, "wandb")
    sweep, folds = installed.drive(["sweep"], ["train", "--folds", "2"])
    assert sweep.code == 2 and "No such command 'sweep'" in sweep.stderr, sweep.stderr
    assert folds.code == 2 and "No such option: --folds" in folds.stderr, folds.stderr
    source = installed.project / "src" / installed.package
    assert not list(source.rglob("*sweep*")) and not list(source.rglob("*fold*"))


EXTRA_FILES = {
    "sweeps": {"src/x/plumbing/sweep.py", "configs/sweep.yaml"},
    "folds": {"src/x/plumbing/folds.py"},
    "slurm": {"scripts/slurm.sbatch"},
}
TRACKER_DEPENDENCIES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}


@pytest.mark.parametrize(
    "answers",
    [
        {"extras": ["sweeps"], "logger": "wandb"},
        {"extras": ["folds"], "logger": "tensorboard"},
        {"extras": ["slurm", "sweeps"], "logger": "csv"},
    ],
    ids=["sweeps-wandb", "folds-tensorboard", "slurm-sweeps"],
)
def test_only_the_chosen_extras_and_tracker_are_rendered(answers, template_copy, tmp_path):
    import tomllib

    project = render(template_copy, tmp_path / "x", task=TASK, **answers)
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    chosen, logger = answers["extras"], answers["logger"]
    for extra, paths in EXTRA_FILES.items():
        assert paths <= files if extra in chosen else not paths & files, (extra, files)
    assert ("scripts/sweep.sbatch" in files) == ({"slurm", "sweeps"} <= set(chosen))
    assert ("src/x/plumbing/tracker.py" in files) == (logger != "csv")
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    names = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0] for d in dependencies}
    assert ("optuna" in names) == ("sweeps" in chosen)
    for tracker, name in TRACKER_DEPENDENCIES.items():
        assert (name in names) == (tracker == logger), (tracker, names)
    # No code path of what is not chosen: not a word of it in the package.
    source = "\n".join(p.read_text() for p in (project / "src").rglob("*.py"))
    assert ("optuna" in source) == ("sweeps" in chosen)
    assert ("train.folds" in source) == ("folds" in chosen)
    for tracker in TRACKER_DEPENDENCIES:
        assert (tracker in source.lower()) == (tracker == logger), tracker
