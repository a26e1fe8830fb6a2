"""Hyperparameter sweeps with Optuna: `sweep` searches the space of configs/sweep.yaml.

Each trial is one training run, in this process, written as a normal run folder in
runs/sweeps/<name>/trial-NNN/. The engine reports every evaluation to Optuna, whose pruner
stops a trial that lags behind the others. A trial prints one line when it ends (with
--verbose, its evaluations too). The study lives in a storage (SQLite in the
sweep's folder by default), so an interrupted sweep resumes where it stopped, and any number
of workers share its trials: each runs `sweep --name NAME`, with the same `--storage` when
it is not the default.

Workers keep to the number of trials through a lock file in the sweep's folder (filelock),
held while one counts the trials and asks Optuna for the next: Optuna's MaxTrialsCallback
counts only after a trial, so two workers could both start the last one. Workers on several
machines therefore share that folder (a shared disk), as they share the trials' run folders. A trial whose
worker was killed is failed and queued again: at once when the worker ran on this machine,
after the storage's heartbeat grace period otherwise (SQLite, PostgreSQL and MySQL).
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import socket
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import optuna
import torch
import yaml
from filelock import FileLock
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from ..config import PROJECT, Config
from ..engine import train
from ..model import MONITOR, MONITOR_MODE
from . import ConfigError, UserError
from .reporting import quiet
from .runs import check_output_dir, flatten, write_atomically
from .settings import coerce, load_config, read_yaml
from .training import Diverged, Interrupted

# A live worker marks its running trial every HEARTBEAT seconds; one silent for GRACE
# seconds was killed, and another worker fails it and queues it again, up to RETRIES times.
HEARTBEAT, GRACE, RETRIES = 60, 180, 3
WORKER = f"{socket.gethostname()}:{os.getpid()}"
# Failures that the user can read in one line; any other error of a trial shows its traceback.
EXPECTED_ERRORS = (UserError, Diverged, torch.cuda.OutOfMemoryError)
RANGE_KEYS = {"low", "high", "log", "step"}  # of a setting's range in the space
SPACE_KEYS = ("trials", "params", "pruner")  # of configs/sweep.yaml
PRUNER_KEYS = ("startup_trials", "warmup_evaluations")
# Settings that each trial gets from the sweep: searching them would change nothing.
SET_BY_THE_SWEEP = {
    "train.output_dir": "runs/sweeps/<name>/; give sweep --output-dir",
    "train.name": "trial-NNN",
    "train.group": "the sweep's name",
    "train.devices": "1: run a worker per device",
    "train.num_nodes": "1: run a worker per device",
}
# Per-machine settings that a worker may set for itself when it joins a sweep.
MACHINE_SETTINGS = ("train.accelerator", "train.num_workers")

# Optuna marks heartbeats and retries experimental: a warning with nothing to act on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
RETRY = RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)


class TrialFailed(Exception):
    """A trial's error: the trial is recorded as failed and the sweep goes on."""


@dataclass
class Space:
    """configs/sweep.yaml: the number of trials, the pruner and the settings to search."""

    trials: int
    params: dict[str, dict[str, Any]]
    pruner: dict[str, int] | None

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """This trial's value of each searched setting."""
        values = {}
        for key, spec in self.params.items():
            if "choices" in spec:
                values[key] = trial.suggest_categorical(key, spec["choices"])
            elif isinstance(spec["low"], int):
                values[key] = trial.suggest_int(key, **spec)
            else:
                values[key] = trial.suggest_float(key, **spec)
        return values

    def contains(self, key: str, value: Any) -> bool:
        """Whether `value` of the setting `key` is in the space (on its grid, if it has one)."""
        spec = self.params[key]
        if "choices" in spec:
            return value in spec["choices"]
        steps = (value - spec["low"]) / spec.get("step", 1)
        on_grid = "step" not in spec or abs(steps - round(steps)) < 1e-9
        return spec["low"] <= value <= spec["high"] and on_grid

    def to_dict(self) -> dict[str, Any]:
        return {"trials": self.trials, "params": self.params, "pruner": self.pruner}


def read_space(path: Path) -> Space:
    """The search space of a YAML file, each setting checked against the config's types."""
    values = read_yaml(path)
    unknown = [str(key) for key in values if key not in SPACE_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown key '{unknown[0]}'; a search space has {', '.join(SPACE_KEYS)}"
        )
    params = values.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path} needs a 'params:' mapping of settings to search")
    defaults = Config()
    sections = {name: get_type_hints(type(getattr(defaults, name))) for name in defaults.to_dict()}
    checked = {}
    for key, spec in params.items():
        section, _, name = str(key).partition(".")
        if name not in sections.get(section, {}):
            raise ConfigError(
                f"{path}: '{key}' is not a setting (section.key, as in default.yaml)"
            )
        if key in SET_BY_THE_SWEEP:
            raise ConfigError(
                f"{path}: {key} cannot be searched: the sweep sets it for each trial "
                f"({SET_BY_THE_SWEEP[key]})"
            )
        checked[key] = check_range(path, key, spec, sections[section][name])
    trials = values.get("trials", 20)
    if not whole(trials) or trials < 1:
        raise ConfigError(f"{path}: trials must be a whole number, 1 or more; got {trials!r}")
    pruner = values.get("pruner", {"startup_trials": 5, "warmup_evaluations": 3})
    if pruner is not None and not (
        isinstance(pruner, dict)
        and set(pruner) == set(PRUNER_KEYS)
        and all(whole(pruner[key]) and pruner[key] >= 0 for key in PRUNER_KEYS)
    ):
        raise ConfigError(
            f"{path}: pruner needs {' and '.join(PRUNER_KEYS)}, whole numbers, 0 or more "
            f"(or pruner: null, no pruning); got {pruner!r}"
        )
    return Space(trials, checked, pruner)


def whole(value: Any) -> bool:
    """An int, and not a bool (YAML's true is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_range(path: Path, key: str, spec: Any, kind: Any) -> dict[str, Any]:
    """{choices: [...]} or {low, high, log?, step?}, the values of the setting's type."""
    where = f"{path}: {key}"
    if isinstance(spec, dict) and "choices" in spec and len(spec) == 1:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: choices must be a list of values")
        return {"choices": [coerce(value, kind, key, str(path)) for value in choices]}
    target = getattr(kind, "__args__", (kind,))[0]
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) <= RANGE_KEYS:
        raise ConfigError(f"{where}: give low and high (and log: true, or a step), or choices")
    if target not in (int, float):
        raise ConfigError(f"{where} is not a number: give its choices instead of a range")
    low, high = (coerce(spec[bound], target, key, str(path)) for bound in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false; got {log!r}")
    checked = {"low": low, "high": high, "log": log}
    if spec.get("step") is not None:
        checked["step"] = coerce(spec["step"], target, key, str(path))
    if not all(math.isfinite(checked[k]) for k in ("low", "high", "step") if k in checked):
        raise ConfigError(f"{where}: low, high and step must be finite numbers")
    if checked.get("step", 1) <= 0:
        raise ConfigError(f"{where}: step must be above 0; got {checked['step']}")
    if not low < high:
        raise ConfigError(f"{where}: low must be below high")
    if checked["log"] and (low <= 0 or "step" in checked):
        raise ConfigError(f"{where}: a log scale needs low > 0 and no step")
    return checked


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A database URL (RDB: SQLite, PostgreSQL, MySQL; with heartbeats), or a journal file
    (no heartbeat; safe on a shared disk). The default: SQLite in the sweep's folder."""
    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(url, lock_obj=JournalFileOpenLock(url))
            return optuna.storages.JournalStorage(backend)
        return optuna.storages.RDBStorage(
            url,
            # SQLite: several workers wait for each other's writes rather than fail.
            engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
            heartbeat_interval=HEARTBEAT,
            grace_period=GRACE,
            heartbeat_stale_trial_callback=RETRY,
        )
    except Exception as error:  # a bad URL, a missing database driver, a server not found...
        raise UserError(f"cannot open the sweep's storage {url}: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


class Sweep:
    """One worker of a sweep: it runs trials until the sweep has its number of them."""

    def __init__(
        self,
        cfg: Config,
        space: Space,
        name: str,
        storage: str | None,
        trials: int | None,
        verbose: bool = False,
    ):
        if trials is not None and trials < 1:
            raise UserError(f"--trials must be 1 or more; got {trials}")
        self.name, self.cfg, self.verbose = name, cfg, verbose
        check_output_dir(cfg.train.output_dir)
        self.folder = Path(cfg.train.output_dir) / "sweeps" / name
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(
                f"cannot create the sweep's folder {self.folder}: {error.strerror}; "
                "pick another --output-dir"
            ) from None
        self.claim = FileLock(self.folder / "claim")  # see the module's docstring
        self.current: int | None = None  # the trial this worker runs
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial gets a line of ours
        url = storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"
        with self.claim:
            try:
                opened = open_storage(url)
                # A study of this name that the storage lacks: no trials known to it.
                if name not in {study.study_name for study in opened.get_all_studies()}:
                    self.check_storage(url, known=set())
                self.study = optuna.create_study(
                    storage=opened,
                    study_name=name,
                    direction="maximize" if MONITOR_MODE == "max" else "minimize",
                    # constant_liar: running trials count as bad ones, so workers spread out.
                    sampler=optuna.samplers.TPESampler(multivariate=True, constant_liar=True),
                    load_if_exists=True,
                )
                known = {trial.number for trial in self.study.get_trials(deepcopy=False)}
                self.check_storage(url, known)
            except UserError:
                raise
            except Exception as error:  # another schema, another Optuna's, not a database...
                cause = first_line(error.__cause__ or error)
                raise UserError(
                    f"cannot use the sweep's storage {url}: it is not a storage of Optuna "
                    f"{optuna.__version__} ({cause}); move it away, or give the sweep "
                    "another --name or --storage"
                ) from None
            self.take_settings(space, trials)
        self.study.pruner = self.pruner()

    def check_storage(self, url: str, known: set[int]) -> None:
        """Refuse a storage that lacks trials of this sweep's folder (emptied, replaced, or
        another sweep's): its next trials would be run in their folders, and its results
        written over theirs."""
        on_disk = sorted(
            int(folder.name.removeprefix("trial-"))
            for folder in self.folder.glob("trial-*")
            if folder.name.removeprefix("trial-").isdigit()
        )
        missing = [number for number in on_disk if number not in known]
        rows = len(table_rows(self.folder / "trials.csv"))
        if missing or rows > len(known):
            held = f"{max(len(on_disk), rows)} trials" + (
                f" (trial-{missing[0]:03d}...)" if missing else ""
            )
            raise UserError(
                f"{self.folder} holds {held} that the sweep's storage {url} does not know: it "
                "was emptied or replaced; put the original back, or give this sweep another "
                "--name"
            )

    def take_settings(self, space: Space, trials: int | None) -> None:
        """A new sweep records its settings, space and size; a joined one keeps its own."""
        attrs = self.study.user_attrs
        settings = self.cfg.to_dict()
        if "settings" not in attrs:
            self.study.set_user_attr("settings", settings)
            self.study.set_user_attr("space", space.to_dict())
            self.study.set_user_attr("trials", trials or space.trials)
            self.base, self.space = settings, space
            # The first trial tries the given settings, as far as the space holds them.
            given = {key: value_of(settings, key) for key in space.params}
            fixed = {k: v for k, v in given.items() if v is not None and space.contains(k, v)}
            if fixed:
                self.study.enqueue_trial(fixed, user_attrs={"note": "the given settings"})
            return
        self.base = attrs["settings"]
        self.space = Space(**attrs["space"])
        for key in MACHINE_SETTINGS:  # this worker's machine
            section, _, name = key.partition(".")
            self.base[section][name] = settings[section][name]
        mine, kept = flatten(settings), flatten(self.base)
        differing = [f"{k} {kept[k]} (here {mine[k]})" for k in kept if mine.get(k) != kept[k]]
        if differing:
            print(f"sweep {self.name} keeps its settings: {'; '.join(differing[:4])}", flush=True)
        if space.to_dict() != attrs["space"]:
            print(f"sweep {self.name} keeps the search space it started with", flush=True)
        if trials is not None and trials != attrs["trials"]:
            self.study.set_user_attr("trials", trials)

    def pruner(self) -> optuna.pruners.BasePruner:
        """Stop a trial whose evaluation is worse than the median of the others' at the same
        step, once a few trials have finished and it has had its warm-up evaluations."""
        settings = self.space.pruner
        if settings is None:
            return optuna.pruners.NopPruner()
        eval_every = self.base["train"]["eval_every"]
        return optuna.pruners.MedianPruner(
            n_startup_trials=settings["startup_trials"],
            n_warmup_steps=settings["warmup_evaluations"] * eval_every + 1,
        )

    def run(self) -> None:
        """Run trials until the sweep has its number of them (counting every worker's)."""
        while True:
            with self.claim:
                self.fail_killed_trials()
                trials = self.study.get_trials(deepcopy=False)
                waiting = any(t.state == TrialState.WAITING for t in trials)
                if not waiting and counted(trials) >= self.study.user_attrs["trials"]:
                    return
                self.current = None
                try:
                    # The objective releases the claim once Optuna has asked for the trial.
                    self.study.optimize(
                        self.objective,
                        n_trials=1,
                        catch=TrialFailed,
                        callbacks=[self.report],
                        gc_after_trial=True,
                    )
                except (Interrupted, KeyboardInterrupt):  # Optuna has failed the trial:
                    if self.current is not None:  # the next `sweep --name` runs it again
                        RETRY(self.study, self.study.get_trials(deepcopy=False)[self.current])
                    raise

    def objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)  # tells a killed worker's trial from a live one
        self.claim.release()  # the trial is in the storage: the others count it from now on
        self.current = trial.number
        params = self.space.suggest(trial)
        try:
            cfg = self.trial_config(trial.number, params)
            trial.set_user_attr("settings", cfg.to_dict())
            if self.verbose:  # else a line when it ends (report)
                print(f"trial {trial.number}: {describe(params)}", flush=True)
            with quiet(not self.verbose):  # its evaluations' lines
                outcome = train(cfg, trial=trial)
        except (Interrupted, optuna.TrialPruned):
            raise
        except Exception as error:  # a diverging loss, settings that cannot work, a bug...
            if not isinstance(error, EXPECTED_ERRORS):
                traceback.print_exc()
                error = f"{type(error).__name__}: {error}"
            trial.set_user_attr("error", str(error))
            raise TrialFailed(error) from None
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next trial's model may be larger
        return outcome.best[MONITOR]

    def trial_config(self, number: int, params: dict[str, Any]) -> Config:
        """The sweep's settings with this trial's values, one device, its own run folder."""
        values = copy.deepcopy(self.base)
        for key, value in params.items():
            section, _, name = key.partition(".")
            values[section][name] = value
        values["train"].update(
            output_dir=str(self.folder),
            name=run_name(number),
            group=self.name,
            # One trial, one process: run one worker per device to use several.
            devices=1,
            num_nodes=1,
        )
        return load_config(base=values)

    def fail_killed_trials(self) -> None:
        """Fail, and queue again, the running trials of this machine's killed workers; the
        storage's heartbeat does it for other machines (after GRACE seconds)."""
        host = socket.gethostname()
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker_host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
            if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
                RETRY(self.study, self.study.tell(trial.number, state=TrialState.FAIL))

    def report(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A line per ended trial: how it ended, and its values."""
        if trial.state == TrialState.COMPLETE:
            best = study.best_trial
            how = (
                f"finished: {MONITOR} {trial.value:.4f} "
                f"(best: trial {best.number}, {best.value:.4f})"
            )
        elif trial.state == TrialState.PRUNED:
            step = max(trial.intermediate_values, default=0)
            how = f"pruned at step {step}: it lagged behind"
        else:
            how = f"failed: {trial.user_attrs.get('error', 'see its run folder')}"
        print(f"trial {trial.number} {how}  [{describe(trial.params)}]", flush=True)

    # --- the results ---------------------------------------------------------------------

    def finish(self) -> list[str]:
        """Write trials.csv and best.yaml; returns the table and where things are."""
        trials = self.study.get_trials(deepcopy=False)
        held = len(table_rows(self.folder / "trials.csv"))
        if held > len(trials):  # the storage lost trials while this worker ran
            raise UserError(
                f"{self.folder / 'trials.csv'} holds {held} trials, the sweep's storage "
                f"{len(trials)}: it was emptied or replaced meanwhile; trials.csv and best.yaml "
                "are left as they were"
            )
        # A killed trial, by the trial that runs it again (retry_history ends with it).
        reruns = {retry_history(t)[-1]: t.number for t in trials if retry_history(t)}
        rows = [self.row(trial, reruns.get(trial.number)) for trial in trials]
        with io.StringIO() as text:
            writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial"])
            writer.writeheader()
            writer.writerows(rows)
            write_atomically(self.folder / "trials.csv", text.getvalue())
        lines = table(rows)
        if not any(trial.state == TrialState.COMPLETE for trial in trials):
            return [*lines, f"no trial has finished yet; see {self.folder / 'trials.csv'}"]
        best = self.study.best_trial
        path = self.folder / "best.yaml"
        settings = copy.deepcopy(best.user_attrs["settings"])
        # A new run of its own when trained again; as the trial was otherwise (one device).
        settings["train"].update(
            output_dir=self.base["train"]["output_dir"], name=None, group=None
        )
        header = (
            f"# The best trial of sweep {self.name}: trial {best.number}, "
            f"{MONITOR} {best.value:.6g}.\n# Train it again: {PROJECT} train --config {path}\n"
        )
        write_atomically(path, header + yaml.safe_dump(settings, sort_keys=False))
        return [
            *lines,
            f"best: trial {best.number}, {MONITOR} {best.value:.4f}, in {self.folder}",
            f"its config: {path} (train it with: {PROJECT} train --config {path})",
        ]

    def failed(self) -> bool:
        """Whether every trial has ended, and none of them with a result."""
        states = {trial.state for trial in self.study.get_trials(deepcopy=False)}
        return TrialState.COMPLETE not in states and all(s.is_finished() for s in states)

    def row(self, trial: FrozenTrial, rerun: int | None) -> dict[str, Any]:
        """A trial as the table shows it: its number, state, metric, values and a note."""
        value = trial.value
        if value is None and trial.intermediate_values:  # pruned or running: the latest
            value = trial.intermediate_values[max(trial.intermediate_values)]
        note = trial.user_attrs.get("error") or trial.user_attrs.get("note") or ""
        if rerun is not None:
            note = f"stopped; run again as trial {rerun}"
        return {
            "trial": trial.number,
            "state": trial.state.name.lower(),
            MONITOR: value,
            **{key: trial.params.get(key) for key in self.space.params},
            "note": note,
        }


def table_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a trials.csv (none when it is missing or unreadable)."""
    try:
        with path.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def counted(trials: list[FrozenTrial]) -> int:
    """The trials that count towards the sweep's number: all but those run again."""
    rerun = {number for trial in trials for number in retry_history(trial)}
    return sum(trial.number not in rerun for trial in trials)


def retry_history(trial: FrozenTrial) -> list[int]:
    """The trials that this one runs again: the first killed one, ..., the last killed one."""
    return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def run_name(number: int) -> str:
    return f"trial-{number:03d}"


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would stop it there: leave it to the heartbeat
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as aligned text columns; numbers with 4 significant digits."""
    if not rows:
        return ["no trials"]
    cells = [list(rows[0])] + [[cell(v) for v in row.values()] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def describe(params: dict[str, Any]) -> str:
    return "  ".join(f"{key}={cell(value)}" for key, value in params.items())


def value_of(settings: dict[str, Any], key: str) -> Any:
    section, _, name = key.partition(".")
    return settings[section][name]
