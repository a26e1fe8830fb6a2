"""Signals, kills and divergence in the middle of a run, in both styles: whatever stops a
run, the checkpoints left are whole, and `--resume last` ends with the metrics of a run
that was never stopped.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import command_env, run
from test_robust import CPU, FEW_STEPS, Case, check_all, checkpoint_step, installer

pytestmark = pytest.mark.slow

# Tabular regression: 1600 training rows in batches of 64, 25 steps an epoch.
RUN = [*CPU, "--max-steps", "15", "--set", "train.eval_every=5", "--seed", "3"]
STEPS_PER_EPOCH = 25

# The process signals itself during the 7th training step (mid-epoch, between two
# evaluations), as Ctrl-C or a `kill` would; the engine's handler takes it from there.
SIGNAL_AT_STEP = """
import importlib, os, signal, torch
engine = importlib.import_module(package + ".engine")
step = engine.step
steps = []

def signalling_step(model, batch):
    if torch.is_grad_enabled():
        steps.append(1)
        if len(steps) == {at}:
            os.kill(os.getpid(), signal.{name})
    return step(model, batch)

engine.step = signalling_step
"""


def metrics_text(run_dir: Path) -> str:
    return (run_dir / "metrics.csv").read_text()


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted writes."""
    return sorted(run_dir.rglob(".*.tmp"))


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    return installer(tmp_path_factory)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_signal_mid_epoch_saves_and_the_printed_command_resumes_exactly(
    framework, signum, installed, tmp_path
):
    project = installed("tabular-regression", framework)
    area = tmp_path / "area"
    runs = area / "my runs"  # a space: the printed command must quote the path
    train = ["train", *RUN, "--output-dir", str(runs)]
    name = signal.Signals(signum).name
    cases = [
        Case("uninterrupted", [*train, "--name", "ref"], area, 0, may_write=[runs]),
        Case(
            name,
            [*train, "--name", "stopped"],
            area,
            128 + signum,
            says=f"interrupted ({name} after step 7): saved ",
            starts="interrupted",
            setup=SIGNAL_AT_STEP.format(at=7, name=name),
            may_write=[runs],
        ),
    ]
    check_all(project.drive(cases, tmp_path / "driver"))
    run_dir = runs / "stopped"
    last = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint_step(last) == 7 and 7 % STEPS_PER_EPOCH  # mid-epoch, mid-interval
    command = cases[1].result["stderr"].strip().split("continue with: ")[1]
    assert command.startswith(f"{project.slug} train --resume "), command

    # The command as printed, in a shell, finishes the run as if it had never stopped.
    path = f"{project.script.parent}{os.pathsep}{os.environ['PATH']}"
    run(["bash", "-c", command], cwd=area, env={"PATH": path})
    assert metrics_text(run_dir) == metrics_text(runs / "ref")
    assert checkpoint_step(last) == 15
    assert not leftovers(run_dir)


# Sends a signal to the process itself during the first evaluation after step `at`.
SIGNAL_DURING_EVALUATION = """
import importlib, os, signal
engine = importlib.import_module(package + ".engine")
fired = []

def signal_once(step):
    if step >= {at} and not fired:
        fired.append(step)
        os.kill(os.getpid(), signal.{name})

if hasattr(engine, "TaskModule"):  # Lightning: in its validation loop
    validation_step = engine.TaskModule.validation_step

    def patched(self, batch, batch_idx):
        signal_once(self.global_step)
        return validation_step(self, batch, batch_idx)

    engine.TaskModule.validation_step = patched
else:  # raw: in the loop's evaluation
    evaluate = engine.evaluate

    def patched(run, trial=None):
        signal_once(run.state.step)
        return evaluate(run, trial)

    engine.evaluate = patched
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_sigterm_during_an_evaluation_stops_after_that_evaluation(framework, installed, tmp_path):
    """The evaluation ends, and its checkpoint is written, then the run stops. (Lightning's
    own SIGTERM handling ended such a run with exit code 0 and no checkpoint.)"""
    project = installed("text-classification", framework)  # 7 validation batches
    area = tmp_path / "area"
    runs = area / "runs"
    common = ["train", *CPU, "--max-steps", "6", "--set", "train.eval_every=2"]
    common += ["--output-dir", str(runs)]
    setup = SIGNAL_DURING_EVALUATION.format(at=2, name="SIGTERM")
    last = runs / "stopped" / "checkpoints" / "last.ckpt"
    cases = [
        Case("reference", [*common, "--name", "ref"], area, 0, may_write=[runs]),
        Case(
            "stopped",
            [*common, "--name", "stopped"],
            area,
            128 + signal.SIGTERM,
            says="interrupted (SIGTERM after step 2): saved",
            starts="interrupted",
            setup=setup,
            may_write=[runs],
        ),
        Case("resumed", ["train", "--resume", str(last)], area, 0, may_write=[runs]),
    ]
    check_all(project.drive(cases, tmp_path / "driver"))
    assert metrics_text(runs / "stopped") == metrics_text(runs / "ref")


# Kills the process when it starts writing the temporary file of last.ckpt's next version
# (its second opening: the first creates it), or when it opens last.ckpt itself for
# writing, as Lightning's own writer did when copying across filesystems.
KILL_DURING_SAVE = """
import os, signal, sys

opened = {}

def hook(event, args):
    if event != "open" or not isinstance(args[0], str):
        return
    path, mode, flags = args
    folder, name = os.path.split(path)
    if not os.path.exists(os.path.join(folder, "last.ckpt")):
        return  # no good checkpoint to lose yet
    writing = "w" in (mode or "") or (flags or 0) & (os.O_WRONLY | os.O_RDWR)
    if name.startswith(".last.ckpt.") and name.endswith(".tmp"):
        opened[path] = opened.get(path, 0) + 1
        if opened[path] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    elif name == "last.ckpt" and writing:
        os.kill(os.getpid(), signal.SIGKILL)

sys.addaudithook(hook)
"""


def files_in(folder: Path) -> list[Path]:
    """The files under folder (torch may leave an empty cache folder in TMPDIR)."""
    return [p for p in folder.rglob("*") if not p.is_dir()]


def other_filesystem(tmp_path: Path) -> Path:
    """A temporary folder on another filesystem than tmp_path (/dev/shm, a tmpfs)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        if shm.stat().st_dev != tmp_path.stat().st_dev:
            return Path(tempfile.mkdtemp(dir=shm, prefix="robust-"))
    pytest.skip("no writable /dev/shm on another filesystem than the test's folder")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_kill_during_a_save_leaves_a_loadable_checkpoint(framework, installed, tmp_path):
    project = installed("tabular-regression", framework)
    tmpdir = other_filesystem(tmp_path)
    try:
        env = {"TMPDIR": str(tmpdir), "MPLCONFIGDIR": str(tmp_path / "mpl")}
        runs = tmp_path / "runs"
        common = ["train", *CPU, "--max-steps", "6", "--set", "train.eval_every=2"]
        common += ["--output-dir", str(runs)]
        run([str(project.script), *common, "--name", "ref"], cwd=tmp_path, env=env)
        argv = [project.slug, *common, "--name", "killed"]
        script = KILL_DURING_SAVE + (
            f"from {project.package}.cli import main\nsys.argv = {argv!r}\nmain()\n"
        )
        killed = run([str(project.python), "-c", script], cwd=tmp_path, env=env, check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        checkpoints = runs / "killed" / "checkpoints"
        # The kill came as step 4's last.ckpt was being written: step 2's is whole.
        assert checkpoint_step(checkpoints / "last.ckpt") == 2
        assert leftovers(checkpoints), "the killed write left no temporary file"
        assert not files_in(tmpdir), "a checkpoint was staged in TMPDIR"

        resume = [str(project.script), "train", "--resume", "last", "--name", "killed"]
        run([*resume, "--output-dir", str(runs)], cwd=tmp_path, env=env)
        assert not leftovers(runs / "killed"), "the next start left the stale temporary file"
        assert not files_in(tmpdir), "a checkpoint was staged in TMPDIR"
        assert metrics_text(runs / "killed") == metrics_text(runs / "ref")
    finally:
        subprocess.run(["rm", "-rf", str(tmpdir)])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_run_killed_before_its_first_checkpoint_starts_again(framework, installed, tmp_path):
    project = installed("image-classification", framework)
    runs = tmp_path / "runs"
    # Image classification: its first evaluation comes seconds after config.yaml.
    image_run = [*CPU, "--max-steps", "30", "--set", "train.eval_every=10"]
    process = subprocess.Popen(
        [str(project.script), "train", *image_run, "--output-dir", str(runs), "--name", "k"],
        cwd=tmp_path,
        env=command_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for(runs / "k" / "config.yaml", process)
    process.kill()
    assert process.wait() == -signal.SIGKILL
    assert not list((runs / "k" / "checkpoints").glob("*.ckpt")), "too late: it had one"
    area = tmp_path / "area"
    train = ["train", *CPU, "--output-dir", str(runs)]
    cases = [
        Case(
            "resume-it",
            [*train, "--resume", "last", "--name", "k"],
            area,
            says="has no checkpoint yet",
            watch=[runs],
        ),
        Case(
            "start-it-again",
            [*train, *FEW_STEPS, "--name", "k"],
            area,
            0,
            watch=[runs],
            may_write=[runs / "k"],
        ),
    ]
    check_all(project.drive(cases, tmp_path / "driver"))
    assert checkpoint_step(runs / "k" / "checkpoints" / "last.ckpt") == 3


# A nan loss at the first training step of this process.
NAN_LOSS = """
import importlib, torch
engine = importlib.import_module(package + ".engine")
step = engine.step

def nan_step(model, batch):
    loss, outputs, targets = step(model, batch)
    return (loss * float("nan") if torch.is_grad_enabled() else loss), outputs, targets

engine.step = nan_step
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_nan_loss_leaves_the_previous_checkpoints_as_they_were(framework, installed, tmp_path):
    project = installed("tabular-regression", framework)
    area = tmp_path / "area"
    runs = area / "runs"
    checkpoints = runs / "good" / "checkpoints"
    train = ["train", *CPU, "--output-dir", str(runs), "--name", "good"]
    cases = [
        Case(
            "two-good-steps",
            [*train, "--max-steps", "2", "--set", "train.eval_every=1"],
            area,
            0,
            may_write=[runs],
        ),
        # Resumed, its first step's loss is nan: exit 1, and last.ckpt and best.ckpt are
        # not touched (metrics.csv and config.yaml are rewritten by any resume).
        Case(
            "then-nan",
            [
                "train",
                "--resume",
                "last",
                "--name",
                "good",
                "--output-dir",
                str(runs),
                "--max-steps",
                "6",
            ],
            area,
            1,
            says="training diverged at step 3: the loss is nan; lower the learning rate "
            "(--lr, now ",
            setup=NAN_LOSS,
            watch=[checkpoints],
        ),
    ]
    check_all(project.drive(cases, tmp_path / "driver"))
    message = cases[1].result["stderr"]
    assert f"the last good checkpoint is {checkpoints / 'last.ckpt'}" in message
    assert checkpoint_step(checkpoints / "last.ckpt") == 2
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


# --- one process per run folder ----------------------------------------------------------

# A run that holds still in its first training step (having claimed its folder, written its
# config) until the file `release` appears; it says so by creating `marker`.
HOLD = """
import importlib, os, sys, time, torch
package, marker, release = sys.argv[1:4]
engine = importlib.import_module(package + ".engine")
step = engine.step

def held_step(model, batch):
    if torch.is_grad_enabled() and not os.path.exists(release):
        open(marker, "w").close()
        while not os.path.exists(release):
            time.sleep(0.05)
    return step(model, batch)

engine.step = held_step
sys.argv = sys.argv[4:]
importlib.import_module(package + ".cli").main()
"""

# Kills a holder (kill -9: its claim stays written, its lock goes with the process).
KILL = """
import fcntl, os, signal, time
os.kill({pid}, signal.SIGKILL)
with open({claim!r}) as file:
    while True:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            time.sleep(0.05)
    fcntl.flock(file, fcntl.LOCK_UN)
"""


def hold(project, folder: Path, argv: list[str]) -> tuple[subprocess.Popen, Path]:
    """A process of the project that trains `argv` and holds in its first step; returns it
    and the file whose creation releases it."""
    folder.mkdir(parents=True)
    marker, release = folder / "holding", folder / "release"
    process = subprocess.Popen(
        [str(project.python), "-c", HOLD, project.package, str(marker), str(release)]
        + [project.slug, *argv],
        cwd=folder,
        env=command_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for(marker, process)
    return process, release


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_run_folder_is_claimed_by_one_process_at_a_time(framework, installed, tmp_path):
    """Two processes, one run name: the second is refused, naming the first; --folds claim
    their folder too; a claim whose process was killed (kill -9) is taken over, with a note."""
    project = installed("tabular-regression", framework)
    area, runs = tmp_path / "area", tmp_path / "runs"
    train = ["train", *CPU, "--max-steps", "4", "--set", "train.eval_every=2"]
    first, _ = hold(
        project, tmp_path / "first", [*train, "--output-dir", str(runs), "--name", "same"]
    )
    folds = [*train, "--output-dir", str(runs), "--folds", "2", "--name", "cv"]
    k_fold, release = hold(project, tmp_path / "folds", folds)
    try:
        in_use = "is in use by process {} on "
        cases = [
            Case(
                "same-name",
                [*train, "--output-dir", str(runs), "--name", "same"],
                area,
                says=f"run folder {runs / 'same'} {in_use.format(first.pid)}",
                watch=[runs],
            ),
            Case(
                "same-folds",
                folds,
                area,
                says=f"run folder {runs / 'cv'} {in_use.format(k_fold.pid)}",
                watch=[runs],
            ),
            Case(
                "one-of-its-folds",
                [*train, "--output-dir", str(runs / "cv"), "--name", "fold-1"],
                area,
                says=f"run folder {runs / 'cv' / 'fold-1'} {in_use.format(k_fold.pid)}",
                watch=[runs],
            ),
            # The first one killed before its first checkpoint: its folder is taken over.
            Case(
                "after-a-kill",
                [*train, "--output-dir", str(runs), "--name", "same"],
                area,
                0,
                setup=KILL.format(pid=first.pid, claim=str(runs / "same" / ".claim")),
                may_write=[runs / "same"],
            ),
        ]
        check_all(project.drive(cases, tmp_path / "driver"))
    finally:
        first.kill()
        release.touch()
    output = k_fold.communicate(timeout=300)[0]
    assert first.wait() == -signal.SIGKILL
    assert k_fold.returncode == 0, output
    note = f"note: taking over {runs / 'same'} from process {first.pid} on "
    assert note in cases[-1].result["stdout"], cases[-1].result["stdout"]
    assert checkpoint_step(runs / "same" / "checkpoints" / "last.ckpt") == 4
    steps = [line.split(",")[0] for line in metrics_text(runs / "same").splitlines()[1:]]
    assert steps == ["2", "4"], steps  # one run's rows, once each
    assert "folds: " in output, output
    assert not list(runs.rglob(".claim")), "a claim was left behind"


# --- an interrupt after a step that was due an evaluation; settings given on resume -------

# A nan loss at the {at}th training step of this process (once).
NAN_AT_STEP = """
import importlib, torch
engine = importlib.import_module(package + ".engine")
step = engine.step
calls = []

def nan_once(model, batch):
    loss, outputs, targets = step(model, batch)
    if torch.is_grad_enabled():
        calls.append(1)
        if len(calls) == {at}:
            loss = loss * float("nan")
    return loss, outputs, targets

engine.step = nan_once
"""

# Writes the learning rate of each training step of this process to `path` (JSON), as the
# optimizer has it when the step runs.
RECORD_LR = """
import importlib, json, torch
made = []
init = torch.optim.AdamW.__init__

def recording_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    made.append(self)

torch.optim.AdamW.__init__ = recording_init
engine = importlib.import_module(package + ".engine")
step = engine.step
rates = []

def recording_step(model, batch):
    if torch.is_grad_enabled():
        rates.append(made[-1].param_groups[0]["lr"])
        open({path!r}, "w").write(json.dumps(rates))
    return step(model, batch)

engine.step = recording_step
"""

# Two SIGINTs in the 7th training step: the second one stops at once.
TWO_SIGINTS = SIGNAL_AT_STEP.replace(
    "os.kill(os.getpid(), signal.{name})",
    "os.kill(os.getpid(), signal.{name})\n            os.kill(os.getpid(), signal.{name})",
)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_an_interrupt_and_settings_given_on_resume(framework, installed, tmp_path):
    """Ctrl-C after a step that is due an evaluation: it evaluates before it stops, and the
    resumed run has every row of an uninterrupted one. A second Ctrl-C stops at once, in one
    line. On resume, a new learning rate applies from the next step (it used to diverge
    again at the old one), a new budget and patience apply, and the settings that decide
    the data, the batches or the model are refused."""
    project = installed("tabular-regression", framework)
    area = tmp_path / "area"
    runs = area / "runs"
    every = ["train", *CPU, "--max-steps", "30", "--seed", "7", "--output-dir", str(runs)]
    every += ["--set", "train.eval_every=1", "--set", "train.patience=0"]
    resume = ["train", "--output-dir", str(runs), "--resume", "last", "--name"]
    interrupted = {"code": 128 + signal.SIGINT, "starts": "interrupted", "may_write": [runs]}
    # At --lr 1, a nan loss at step 3 (what too high a rate does): last.ckpt holds step 2.
    diverging = ["train", *CPU, "--lr", "1", "--max-steps", "10", "--set", "train.eval_every=1"]
    rates = tmp_path / "rates.json"
    cases = [
        Case("uninterrupted", [*every, "--name", "ref"], area, 0, may_write=[runs]),
        Case(
            "sigint-after-a-due-step",
            [*every, "--name", "stopped"],
            area,
            says=f"interrupted (SIGINT after step 16): saved {runs / 'stopped'}",
            setup=SIGNAL_AT_STEP.format(at=16, name="SIGINT"),
            **interrupted,
        ),
        Case("resumed", [*resume, "stopped"], area, 0, may_write=[runs]),
        Case(
            "sigint-twice",
            [*every, "--name", "twice", "--set", "train.eval_every=5"],
            area,
            says="interrupted (SIGINT again, stopped at once): last checkpoint "
            f"{runs / 'twice' / 'checkpoints' / 'last.ckpt'}; continue with: ",
            setup=TWO_SIGINTS.format(at=7, name="SIGINT"),
            **interrupted,
        ),
        Case(
            "diverges-at-step-3",
            [*diverging, "--output-dir", str(runs), "--name", "lr"],
            area,
            1,
            says="training diverged at step 3: the loss is nan; lower the learning rate",
            setup=NAN_AT_STEP.format(at=3),
            may_write=[runs],
        ),
        Case(
            "resume-another-batch-size",
            [*resume, "lr", "--lr", "1e-3", "--batch-size", "32"],
            area,
            says="-> 32: cannot change when a run resumes",
            watch=[runs / "lr"],
        ),
        Case(
            "resume-another-model",
            [*resume, "lr", "--lr", "1e-3", "--set", "model.hidden=32"],
            area,
            says="was trained with other model settings (model.hidden: 128 -> 32)",
            watch=[runs / "lr"],
        ),
        Case(
            "resume-a-new-lr",
            [*resume, "lr", "--lr", "1e-3"],
            area,
            0,
            setup=RECORD_LR.format(path=str(rates)),
            may_write=[runs],
        ),
        # No warning (Lightning's early stopping callback is there, with or without patience).
        Case(
            "resume-more-steps-no-patience",
            [*resume, "lr", "--max-steps", "12", "--set", "train.patience=0"],
            area,
            0,
            may_write=[runs],
        ),
    ]
    check_all(project.drive(cases, tmp_path / "driver"))
    assert metrics_text(runs / "stopped") == metrics_text(runs / "ref")
    assert checkpoint_step(runs / "twice" / "checkpoints" / "last.ckpt") == 5
    # The resumed steps trained at the new rate from the first one on (they took the old
    # one for a step, and diverged again), decaying from it; metrics.csv shows the same.
    trained_at = json.loads(rates.read_text())
    assert trained_at[0] == pytest.approx(1e-3) and max(trained_at) <= 1e-3 * (1 + 1e-9)
    rows = read_rows(runs / "lr")
    assert [row["step"] for row in rows] == [str(step) for step in range(1, 13)]
    assert all(float(row["lr"]) > 0.5 for row in rows[:2]), rows  # --lr 1, decaying
    assert all(0 < float(row["lr"]) <= 1e-3 for row in rows[2:]), rows
    settings = yaml.safe_load((runs / "lr" / "config.yaml").read_text())["train"]
    assert (settings["lr"], settings["max_steps"], settings["patience"]) == (1e-3, 12, 0)
    assert not cases[-1].result["stderr"].strip()  # Lightning missed no callback's state


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))
