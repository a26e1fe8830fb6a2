"""Pretrained backbones (backbone=pretrained), offline: the projects fine-tune tiny Hugging
Face models that the tests build from configs (tests/tiny_models.py), loaded by the same
code as a hub model, with HF_HUB_OFFLINE=1 (conftest).

Every pretrained combination trains a few steps on the CPU and exports. The cpu projects of
each task, one per engine, fine-tune the tiny stand-in of the task's default model until it
has learned the built-in data, from a copy of its folder that is then deleted: evaluate,
predict, export, resume and the project's own tests run from the checkpoint alone. Both
engines give the same metrics, to the last digit. The loaded backbone equals the saved one
and the head is new; freeze_backbone leaves the backbone as it was; a killed run resumes
exactly; sweeps, folds and TensorBoard work; a model that is nowhere is one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    PRETRAINED,
    assert_learned,
    check_run,
    combination_id,
    command_env,
    read_baseline,
    read_metrics,
    run,
)
from test_distributed import ddp_train, free_port
from test_train import (
    assert_no_warnings,
    check_predictions,
    checkpoint_weights_and_place,
    parse_metrics,
    predict_inputs,
    readme_export_snippet,
)

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]
# The stand-in of each task's default model (tests/tiny_models.py), and a budget in which it
# learns the built-in data: tiny models with random weights want a higher rate than the
# defaults, which suit real pretrained models.
DEFAULT = {
    "image-classification": "resnet",
    "text-classification": "distilbert",
    "language-modeling": "llama",
}
BASE_MODEL = {"distilbert": "distilbert", "resnet": "resnet"}  # stand-ins' base_model_prefix
# Windows of 32 tokens: the default 128 costs four times as much, to learn the same grammar.
SHORT = {"language-modeling": ["--set", "data.block_size=32"]}
LEARN = {
    "image-classification": ["--max-steps", "60", "--set", "train.eval_every=20"]
    + ["--lr", "1e-2", "--set", "model.backbone_lr_scale=0.3"],
    "text-classification": ["--max-steps", "100", "--set", "train.eval_every=25"]
    + ["--lr", "1e-2", "--set", "model.backbone_lr_scale=0.3"],
    "language-modeling": ["--max-steps", "60", "--set", "train.eval_every=30", "--lr", "1e-2"]
    + SHORT["language-modeling"],
}
FEW = ["--max-steps", "4", "--set", "train.eval_every=2", "--set", "train.patience=0"]
TASKS = sorted({c["task"] for c in PRETRAINED})
# Tasks whose model has a new head (a language model's output layer is its own, tied to the
# input embeddings): freeze_backbone trains that head alone.
HEADED = [task for task in TASKS if task != "language-modeling"]
# The engines, checkpoints, sweeps, folds, trackers and distributed code are the same for
# every task; text classification proves them with a pretrained model, and the other tasks'
# pretrained projects, which differ in model.py and data.py only, fine-tune, evaluate,
# predict and export on the CPU in both engines (their other hardware answers render and
# lint in test_render.py). That keeps the suite's time.
PROVES_ALL = "text-classification"


def cpu_project(task: str, framework: str) -> dict[str, str]:
    return {"task": task, "framework": framework, "hardware": "cpu", "backbone": "pretrained"}


def cpu_group(task: str) -> pytest.MarkDecorator:
    """A task's two cpu pretrained projects are installed, and fine-tuned, in one process."""
    return pytest.mark.xdist_group(f"{task}-cpu-pretrained")


def group_of(combination: dict[str, str]) -> pytest.MarkDecorator:
    if combination["hardware"] == "cpu":
        return cpu_group(combination["task"])
    return pytest.mark.xdist_group(combination_id(combination))


def engines(tasks: list[str]) -> list:
    """The cpu pretrained projects of these tasks, by task and engine."""
    return [
        pytest.param(
            task, framework, marks=cpu_group(task), id=f"{task}-{framework}-cpu-pretrained"
        )
        for task in tasks
        for framework in ("raw", "lightning")
    ]


def pretrained(folder: Path) -> list[str]:
    return ["--set", f"model.pretrained={folder}"]


@pytest.fixture(scope="session")
def fine_tuned(installed_project, tiny_models, tmp_path_factory):
    """fine_tuned(task, framework): the cpu project fine-tuned until it learned, from a copy
    of the tiny default stand-in, deleted once trained. Once per test process."""
    done: dict[tuple[str, str], tuple] = {}

    def get(task: str, framework: str):
        if (task, framework) not in done:
            installed = installed_project(cpu_project(task, framework))
            work = tmp_path_factory.mktemp(f"fine-tuned-{framework}")
            copy = shutil.copytree(tiny_models(installed, task)[DEFAULT[task]], work / "model")
            runs = work / "runs"
            (trained,) = installed.drive(
                ["train", *CPU, *LEARN[task], *pretrained(copy)]
                + ["--output-dir", str(runs), "--name", "tuned"]
            )
            trained.check()
            shutil.rmtree(copy)  # from here on, the checkpoint alone
            done[task, framework] = installed, runs / "tuned", trained
        return done[task, framework]

    return get


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "combination",
    [
        pytest.param(c, id=combination_id(c), marks=group_of(c))
        for c in PRETRAINED
        if c["hardware"] == "cpu" or c["task"] == PROVES_ALL
    ],
)
def test_pretrained_combination_fine_tunes(
    combination, installed_project, fine_tuned, tiny_models, tmp_path
):
    task = combination["task"]
    installed = installed_project(combination)
    predict = ["predict", *predict_inputs(task, tmp_path)]
    if combination["hardware"] != "cpu":
        # The hardware answer changes defaults and the README; the code that fine-tunes is
        # the cpu projects'. A few steps on the CPU, and an export, prove the project.
        tiny = tiny_models(installed, task)[DEFAULT[task]]
        runs = tmp_path / "runs"
        best = str(runs / "few" / "checkpoints" / "best.ckpt")
        trained, exported = installed.drive(
            ["train", *CPU, *FEW, *pretrained(tiny), "--output-dir", str(runs), "--name", "few"]
            + ["--set", "train.num_workers=0"],
            ["export", "--checkpoint", best],
        )
        trained.check()
        exported.check()
        assert_no_warnings(trained.stderr)
        assert "stopped after step 4: the step budget is spent (4 steps)" in trained.stdout
        assert (runs / "few" / "checkpoints" / "best.pt2").is_file()
        return

    _, run_dir, trained = fine_tuned(task, combination["framework"])
    assert_no_warnings(trained.stderr)
    best, last = (str(run_dir / "checkpoints" / f"{name}.ckpt") for name in ("best", "last"))
    outcomes = installed.drive(
        ["evaluate", "--checkpoint", best],
        ["evaluate", "--checkpoint", last],
        [*predict, "--checkpoint", best],
        ["export", "--checkpoint", best],
        # The project's own tests, on its own tiny stand-in: their data tests are the same
        # in both engines, so one engine's run does for the tasks beside PROVES_ALL.
        pytest=task == PROVES_ALL or combination["framework"] == "raw",
    )
    evaluated_best, evaluated_last, predicted, exported = (o.check().stdout for o in outcomes)
    rows, best_row = check_run(task, run_dir, trained.stdout, exported=True)
    assert len(rows) >= 2
    evaluated = parse_metrics(evaluated_best)
    assert_learned(task, evaluated, read_baseline(run_dir))
    for key, value in evaluated.items():
        assert value == pytest.approx(best_row[key], rel=1e-3, abs=1e-4), key
    for key, value in parse_metrics(evaluated_last).items():
        assert value == pytest.approx(rows[-1][key], rel=1e-3, abs=1e-4), f"last.ckpt {key}"
    check_predictions(task, predicted)
    # The README's snippet runs the exported program without the project's code.
    if task == "image-classification":  # the snippet's image
        from PIL import Image

        Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "photo.jpg")
    snippet = readme_export_snippet(installed.project, run_dir / "checkpoints" / "best.pt2")
    assert run([sys.executable, "-c", snippet], cwd=tmp_path).stdout.strip()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", [pytest.param(t, marks=cpu_group(t)) for t in TASKS])
def test_both_engines_fine_tune_alike(task, fine_tuned):
    """Raw and Lightning, same settings and seed: the same metrics.csv, to the last digit."""
    _, raw, _ = fine_tuned(task, "raw")
    _, lightning, _ = fine_tuned(task, "lightning")
    assert (lightning / "metrics.csv").read_text() == (raw / "metrics.csv").read_text()


# What the loading check runs in a project's venv: each stand-in through the project's own
# data.py and model.py, against what was saved.
LOADING_CHECK = """
import json, sys, torch
from {package}.data import build_datasets
from {package}.model import build_model
from {package}.plumbing.settings import load_config

report = {{}}
for name, folder in json.loads(sys.argv[1]).items():
    cfg = load_config(overrides={{"model.pretrained": folder}})
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta)
    saved = torch.load(f"{{folder}}/base_model.pt", weights_only=True)
    loaded = model.hf.base_model.state_dict()
    backbone = {{id(p) for p in model.hf.base_model.parameters()}}
    # A language model's output layer is tied to its input embeddings: no head of its own.
    head = [p for p in model.parameters() if id(p) not in backbone] or [None]
    report[name] = {{
        "same_keys": sorted(saved) == sorted(loaded),
        "equal": all(torch.equal(saved[key], loaded[key]) for key in saved),
        "head_outputs": head[-1] is not None and head[-1].shape[0],
        "classes": "vocab_size" not in meta and len(meta.get("labels", meta.get("classes", []))),
        "training": all(module.training for module in model.modules()),
        "float32": all(p.dtype == torch.float32 for p in model.parameters()),
        "network": "network" in meta,
    }}
    if name == "bert":  # saved with a head of as many classes: it must not be kept
        kept = torch.load(f"{{folder}}/head.pt", weights_only=True)["weight"]
        report[name]["head_kept"] = torch.equal(kept, model.hf.classifier.weight)
print(json.dumps(report))
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task", [pytest.param(t, marks=cpu_group(t)) for t in TASKS])
def test_the_backbone_is_the_saved_one_and_the_head_is_new(
    task, installed_project, tiny_models, tmp_path
):
    """Every stand-in of the task (the default's architecture and others), through the Auto
    classes: the backbone's tensors equal the saved model's, buffers too; the head is new,
    with an output per class; the model is in training mode (from_pretrained returns one in
    eval mode) and in float32. Another architecture trains too, and a model that is neither
    in the cache nor a folder is one line, naming it and what to do."""
    installed = installed_project(cpu_project(task, "raw"))
    models = tiny_models(installed, task)
    code = LOADING_CHECK.format(package=installed.package)
    folders = json.dumps({name: str(folder) for name, folder in models.items()})
    result = run([str(installed.python), "-c", code, folders], cwd=installed.project)
    report = json.loads(result.stdout.splitlines()[-1])
    for name, facts in report.items():
        assert facts.pop("head_outputs") == facts.pop("classes"), name
        assert facts.pop("head_kept", False) is False, name
        assert all(facts.values()), (name, facts)

    other = next(name for name in models if name != DEFAULT[task])
    runs = ["--output-dir", str(tmp_path / "runs")]
    trained, hub_id, folder = installed.drive(
        ["train", *CPU, *FEW, *SHORT.get(task, []), *pretrained(models[other]), *runs]
        + ["--name", other],
        ["train", *CPU, *runs, "--set", "model.pretrained=nobody/no-such-model"],
        ["train", *CPU, *runs, *pretrained(tmp_path / "no-such-folder")],
    )
    trained.check()
    assert "stopped after step 4" in trained.stdout
    for outcome, says in (
        (hub_id, "model.pretrained=nobody/no-such-model is neither in the Hugging Face cache"),
        (folder, "not a folder written by save_pretrained"),
    ):
        message = outcome.stderr.strip()
        assert outcome.code == 2 and message.startswith("error: "), outcome.stderr
        assert "\n" not in message and says in message, message
    assert "`hf download nobody/no-such-model`" in hub_id.stderr


def backbone_of(weights: dict[str, torch.Tensor], stand_in: str) -> dict[str, torch.Tensor]:
    """The backbone's tensors in a checkpoint's weights (named as in model.py), named as in
    the base model: hf.distilbert.embeddings... -> embeddings..."""
    prefix = f"hf.{BASE_MODEL[stand_in]}."
    return {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", engines(HEADED))
def test_freeze_backbone_trains_the_head_alone(
    task, framework, installed_project, tiny_models, tmp_path
):
    """model.freeze_backbone: after training, every tensor of the backbone (batch norms'
    statistics too) is the saved one, while the head has learned."""
    installed = installed_project(cpu_project(task, framework))
    tiny = tiny_models(installed, task)[DEFAULT[task]]
    runs = tmp_path / "runs"
    (trained,) = installed.drive(
        ["train", *CPU, *FEW, *pretrained(tiny), "--output-dir", str(runs), "--name", "frozen"]
        + ["--set", "model.freeze_backbone=true", "--lr", "1e-2"]
    )
    trained.check()
    assert_no_warnings(trained.stderr)
    saved = torch.load(tiny / "base_model.pt", weights_only=True)
    weights, _ = checkpoint_weights_and_place(runs / "frozen" / "checkpoints" / "last.ckpt")
    backbone = backbone_of(weights, DEFAULT[task])
    assert backbone.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(backbone[key], value), key
    first, second = read_metrics(runs / "frozen")
    assert first["val/loss"] != second["val/loss"], "the head did not learn either"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", engines([PROVES_ALL]))
def test_a_killed_fine_tuning_resumes_exactly(
    task, framework, installed_project, tiny_models, tmp_path
):
    """SIGKILL the real `train` after its first checkpoint, mid-epoch, then `--resume last`
    with the stand-in's folder gone: the run ends as the uninterrupted one, row for row."""
    installed = installed_project(cpu_project(task, framework))
    copy = shutil.copytree(tiny_models(installed, task)[DEFAULT[task]], tmp_path / "model")
    runs = tmp_path / "runs"
    # Long enough that the kill comes before the end: a tiny model takes milliseconds a step.
    common = [*CPU, "--output-dir", str(runs), "--seed", "3", "--max-steps", "60"]
    common += ["--set", "train.eval_every=6", "--set", "train.patience=0", *pretrained(copy)]
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
    _, place = checkpoint_weights_and_place(last)
    assert place["served"] > 0, f"the checkpoint is at an epoch's end: {place}"
    (whole,) = installed.drive(["train", *common, "--name", "whole"])
    whole.check()
    shutil.rmtree(copy)  # resuming needs the checkpoint alone
    installed.run("train", *CPU, "--output-dir", str(runs), "--resume", "last", "--name", "killed")
    killed, uninterrupted = (runs / name / "metrics.csv" for name in ("killed", "whole"))
    assert killed.read_text() == uninterrupted.read_text()
    weights, _ = checkpoint_weights_and_place(runs / "whole" / "checkpoints" / "last.ckpt")
    resumed_weights, _ = checkpoint_weights_and_place(last)
    for key, value in weights.items():
        torch.testing.assert_close(resumed_weights[key], value, msg=key)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", engines([PROVES_ALL]))
def test_folds_sweeps_and_tensorboard_fine_tune_too(
    task, framework, installed_project, tiny_models, tmp_path
):
    installed = installed_project(cpu_project(task, framework))
    tiny = pretrained(tiny_models(installed, task)[DEFAULT[task]])
    space = tmp_path / "space.yaml"
    space.write_text("trials: 2\nparams:\n  train.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    out = ["--output-dir", str(tmp_path / "runs")]
    folds, sweep, tensorboard = installed.drive(
        ["train", *CPU, *FEW, *tiny, *out, "--folds", "2", "--name", "folds"],
        ["sweep", *FEW, *tiny, *out, "--accelerator", "cpu", "--space", str(space)]
        + ["--name", "sweep"],
        ["train", *CPU, *FEW, *tiny, *out, "--logger", "tensorboard", "--name", "tb"],
    )
    for outcome in (folds, sweep, tensorboard):
        outcome.check()
    summary = json.loads((tmp_path / "runs" / "folds" / "folds.json").read_text())
    assert summary["complete"] and len(summary["runs"]) == 2
    trials = list((tmp_path / "runs" / "sweeps" / "sweep").glob("trial-*/checkpoints/best.ckpt"))
    assert len(trials) == 2, sweep.stdout
    assert list((tmp_path / "runs" / "tb" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "combination",
    [
        pytest.param(c, id=combination_id(c), marks=group_of(c))
        for c in PRETRAINED
        if c["hardware"] == "multi-gpu" and c["task"] == PROVES_ALL
    ],
)
def test_ddp_and_fsdp_fine_tune_on_two_cpu_processes(
    combination, installed_project, tiny_models, tmp_path
):
    """Two processes with gloo (raw under torchrun, Lightning with --devices 2): DDP learns
    and rank 0 alone writes; FSDP (train.strategy=fsdp: the model sharded over the
    processes, fully_shard) takes the same steps to float precision, and its whole
    checkpoints resume under FSDP again and export."""
    task = combination["task"]
    installed = installed_project(combination)
    tiny = pretrained(tiny_models(installed, task)[DEFAULT[task]])
    runs = tmp_path / "runs"
    common = ["--accelerator", "cpu", "--output-dir", str(runs), "--set", "train.num_workers=0"]
    common += [*LEARN[task], *tiny]
    printed = ddp_train(installed, combination, *common, "--name", "ddp")
    assert [p.name for p in runs.iterdir()] == ["ddp"], "a second rank wrote a run folder"
    ddp, best = check_run(task, runs / "ddp", printed)
    assert_learned(task, best, read_baseline(runs / "ddp"))

    fsdp = ["--set", "train.strategy=fsdp"]
    check_run(
        task, runs / "fsdp", ddp_train(installed, combination, *common, *fsdp, "--name", "fsdp")
    )
    sharded = read_metrics(runs / "fsdp")
    assert [row["step"] for row in sharded] == [row["step"] for row in ddp]
    for row, same in zip(sharded, ddp, strict=True):
        for key, value in row.items():
            assert value == pytest.approx(same[key], rel=1e-4, abs=1e-5), (row["step"], key)
    steps = sharded[-1]["step"]
    more = ["--resume", "last", "--max-steps", str(steps + 25), "--set", "train.patience=0"]
    where = ["--accelerator", "cpu", "--output-dir", str(runs), "--name", "fsdp"]
    resumed, exported = installed.drive(
        ["train", *where, *more, "--devices", "2"],  # the checkpoint's settings: FSDP
        ["export", "--checkpoint", str(runs / "fsdp" / "checkpoints" / "last.ckpt")],
        env={"MASTER_PORT": str(free_port())},
    )
    resumed.check()
    exported.check()
    assert "Traceback" not in resumed.stderr, resumed.stderr[-5000:]
    rows = read_metrics(runs / "fsdp")
    assert rows[: len(sharded)] == sharded and rows[-1]["step"] == steps + 25


# What the LoRA check runs in a language-model project's venv: the checkpoint of a LoRA
# run, its export, and the stand-in's saved base model.
LORA_CHECK = """
import json, sys, torch
from {package}.plumbing.runs import load_model

model, _, meta = load_model(sys.argv[1])
saved = torch.load(sys.argv[2], weights_only=True)
weights = dict(model.hf.named_parameters())
adapters = {{name: p for name, p in weights.items() if "lora_" in name}}
# The frozen weights, named as in the plain model (peft keeps them as base_layer).
base = {{
    name.replace(".base_layer", ""): value
    for name, value in model.hf.base_model.model.base_model.state_dict().items()
    if "lora_" not in name
}}
program = torch.export.load(sys.argv[3])
tokens = torch.randint(meta["vocab_size"], (2, 8))
with torch.no_grad():
    unmerged = model(tokens)
    exported = program.module()(tokens)
print(json.dumps({{
    "adapters_trained": bool(adapters) and all(
        p.abs().sum() > 0 for name, p in adapters.items() if "lora_B" in name
    ),
    "only_adapters_train": all("lora_" in name for name, p in weights.items() if p.requires_grad),
    "base_frozen": base.keys() == saved.keys()
    and all(torch.equal(base[key], saved[key]) for key in saved),
    "export_merged": not any("lora" in name for name in program.state_dict),
    "export_equal": torch.allclose(exported, unmerged, atol=1e-4),
}}))
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=cpu_group(t)) for t in TASKS if t == "language-modeling"]
)
def test_lora_trains_adapters_and_exports_them_merged(
    task, installed_project, tiny_models, tmp_path
):
    """model.lora_rank: only the adapters train (they start at zero and move), the
    pretrained weights stay as saved, and export merges the adapters into the weights: a
    plain network, whose outputs are the LoRA model's."""
    installed = installed_project(cpu_project(task, "raw"))
    tiny = tiny_models(installed, task)[DEFAULT[task]]
    runs = tmp_path / "runs"
    best = runs / "lora" / "checkpoints" / "best.ckpt"
    trained, exported = installed.drive(
        ["train", *CPU, *FEW, *SHORT[task], *pretrained(tiny), "--output-dir", str(runs)]
        + ["--name", "lora", "--set", "model.lora_rank=4", "--lr", "1e-2"],
        ["export", "--checkpoint", str(best)],
    )
    trained.check()
    exported.check()
    assert_no_warnings(trained.stderr)
    code = LORA_CHECK.format(package=installed.package)
    args = [str(best), str(tiny / "base_model.pt"), str(best.with_suffix(".pt2"))]
    result = run([str(installed.python), "-c", code, *args], cwd=installed.project)
    report = json.loads(result.stdout.splitlines()[-1])
    assert all(report.values()), report
