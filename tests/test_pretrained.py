"""Pretrained backbones (backbone=pretrained), offline: the projects fine-tune tiny Hugging
Face models that the tests build from configs (tests/tiny_models.py), loaded by the same
code as a hub model, with HF_HUB_OFFLINE=1 (conftest).

The cpu project of each task, in each engine, fine-tunes the tiny stand-in of the task's
default model until it has learned the built-in data (beats the baseline), from a copy of
its folder that is then deleted: evaluate, predict, export and resume run from the
checkpoint alone. LoRA trains its adapters alone; a folder without its tokenizer or image
processor, a damaged or foreign model and model.lora_rank=-1 are each one line.
The other hardware answers differ in defaults and words only (test_render lints them).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
from conftest import (
    PRETRAINED,
    assert_learned,
    best_row,
    check_run,
    evaluations,
    read_baseline,
    run,
)
from test_train import assert_no_warnings, check_predictions, parse_metrics, predict_inputs

pytestmark = pytest.mark.slow

CPU = ["--accelerator", "cpu", "--devices", "1"]
TASKS = sorted({c["task"] for c in PRETRAINED})
# The stand-in of each task's default model (tests/tiny_models.py).
DEFAULT = {
    "image-classification": "resnet",
    "text-classification": "distilbert",
    "language-modeling": "llama",
}
# A budget in which a stand-in learns the built-in data: tiny models with random weights
# want a higher rate than the defaults, which suit real pretrained models. No early stop,
# so that a resumed run has steps left to take.
LEARN = {  # max_steps, eval_every, --lr and more
    "image-classification": (60, 20, ["--lr", "1e-2"]),
    "text-classification": (150, 50, ["--lr", "3e-3"]),
    # Windows of 32 tokens: the default 128 costs four times as much to learn the grammar.
    "language-modeling": (60, 30, ["--lr", "1e-2", "data.block_size=32"]),
}
UNSTOPPED = ["train.patience=0", "train.stopping_threshold=null"]
FEW = ["--max-steps", "4", "train.eval_every=2", "train.patience=0"]


def cpu_project(task: str, framework: str) -> dict[str, str]:
    return {"task": task, "framework": framework, "hardware": "cpu", "backbone": "pretrained"}


def cpu_group(task: str) -> pytest.MarkDecorator:
    """A task's two cpu pretrained projects are installed, and fine-tuned, in one process."""
    return pytest.mark.xdist_group(f"{task}-cpu-pretrained")


def engines(tasks: list[str]) -> list:
    return [
        pytest.param(task, framework, marks=cpu_group(task), id=f"{task}-{framework}")
        for task in tasks
        for framework in ("raw", "lightning")
    ]


def single_line_error(outcome, says: str) -> None:
    message = outcome.stderr.strip()
    assert outcome.code == 2 and message.startswith("error: "), outcome.stderr[-3000:]
    assert "\n" not in message and says in message, message


@pytest.mark.timeout(900)
@pytest.mark.parametrize("task, framework", engines(TASKS))
def test_fine_tunes_learns_and_needs_the_checkpoint_alone(
    task, framework, installed_project, tiny_models, tmp_path
):
    installed = installed_project(cpu_project(task, framework))
    copy = shutil.copytree(tiny_models(installed, task)[DEFAULT[task]], tmp_path / "model")
    runs = tmp_path / "runs"
    where = ["--output-dir", str(runs), "--name", "tuned"]
    steps, every, settings = LEARN[task]
    (trained,) = installed.drive(
        ["train", *CPU, "--max-steps", str(steps), f"train.eval_every={every}", *settings]
        + [*UNSTOPPED, f"model.pretrained={copy}", *where]
    )
    trained.check()
    assert_no_warnings(trained.stderr)
    run_dir = runs / "tuned"
    assert f"stopped: the step budget is spent ({steps} steps)" in trained.stdout
    shutil.rmtree(copy)  # from here on, the checkpoint alone: no folder, no hub

    best, last = (str(run_dir / "checkpoints" / f"{name}.ckpt") for name in ("best", "last"))
    more = steps + every  # one evaluation more
    outcomes = installed.drive(
        ["evaluate", "--checkpoint", best],
        ["predict", *predict_inputs(task, tmp_path), "--checkpoint", best],
        ["export", "--checkpoint", best],
        ["train", *CPU, "--resume", last, "--max-steps", str(more), *where],
        # The project's own tests (its tiny stand-in, test_data's checks), in one engine.
        pytest=framework == "raw",
    )
    evaluated, predicted, exported, resumed = (outcome.check() for outcome in outcomes)
    rows, _ = check_run(task, run_dir, resumed.stdout, exported=True)
    # One evaluation more (Lightning logs an evaluation at the step before the count).
    assert len(rows) == steps // every + 1 and rows[-1]["step"] > steps, rows
    evaluated_best = parse_metrics(evaluated.stdout)
    assert_learned(task, evaluated_best, read_baseline(run_dir))
    # best.ckpt as it was before the resume: the best of the first run's evaluations.
    best_before = best_row(task, [row for row in rows if row["step"] <= steps])
    for key, value in evaluated_best.items():
        assert value == pytest.approx(best_before[key], rel=1e-3, abs=1e-4), key
    check_predictions(task, predicted.stdout)
    assert (run_dir / "checkpoints" / "best.pt2").is_file(), exported.stderr


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "task, folder, missing",
    [
        pytest.param(
            "text-classification",
            "distilbert",
            "tokenizer.json",
            marks=cpu_group("text-classification"),
        ),
        pytest.param(
            "image-classification",
            "resnet",
            "preprocessor_config.json",
            marks=cpu_group("image-classification"),
        ),
        pytest.param(
            "language-modeling", "llama", "tokenizer.json", marks=cpu_group("language-modeling")
        ),
    ],
)
def test_an_incomplete_or_damaged_model_is_one_line(
    task, folder, missing, installed_project, tiny_models, tmp_path
):
    """A folder without its tokenizer or image processor (transformers would make up a
    tokenizer of 5 tokens), a config.json without model_type, a truncated weights file and
    a model of another kind: each one line naming what is wrong, exit 2, nothing trained."""
    installed = installed_project(cpu_project(task, "raw"))
    models = tiny_models(installed, task)
    bad = {}
    for name in ("incomplete", "untyped", "truncated"):
        bad[name] = shutil.copytree(models[folder], tmp_path / name)
    for file in bad["incomplete"].glob(missing.split(".")[0] + "*"):
        file.unlink()
    config = json.loads((bad["untyped"] / "config.json").read_text())
    del config["model_type"]
    (bad["untyped"] / "config.json").write_text(json.dumps(config))
    weights = bad["truncated"] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    runs = ["--output-dir", str(tmp_path / "runs")]
    commands = [["train", *CPU, *FEW, *runs, f"model.pretrained={path}"] for path in bad.values()]
    if task == "language-modeling":  # a negative rank is no LoRA: refused, not full training
        commands.append(["train", *CPU, *FEW, *runs, "model.lora_rank=-1"])
    outcomes = installed.drive(*commands)
    single_line_error(outcomes[0], f"model.pretrained={bad['incomplete']} has no {missing}")
    single_line_error(outcomes[1], "Should have a `model_type` key in its config.json")
    single_line_error(outcomes[2], f"model.pretrained={bad['truncated']} cannot be loaded")
    if task == "language-modeling":
        single_line_error(outcomes[3], "model.lora_rank must be 0 (off) or a rank in 1..4096")
    # No checkpoint anywhere: nothing trained.
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=cpu_group(t)) for t in ("text-classification",)]
)
def test_a_model_of_another_kind_or_nowhere_is_one_line(
    task, installed_project, tiny_models, tmp_path
):
    """A text classifier given a causal language model that its Auto class does not take
    (GPT-2's stand-in loads as a classifier; a ResNet is not a text model), a hub id that
    is nowhere, and a folder that is not there."""
    installed = installed_project(cpu_project(task, "raw"))
    text = tiny_models(installed, task)["distilbert"]
    # A ResNet's weights and config beside a text tokenizer: the tokenizer loads, the model not.
    foreign = shutil.copytree(text, tmp_path / "foreign")
    (foreign / "config.json").write_text(
        json.dumps({"model_type": "resnet", "num_channels": 3, "embedding_size": 8})
    )
    runs = ["--output-dir", str(tmp_path / "runs")]
    kind, hub, nowhere = installed.drive(
        ["train", *CPU, *FEW, *runs, f"model.pretrained={foreign}"],
        ["train", *CPU, *FEW, *runs, "model.pretrained=nobody/no-such-model"],
        ["train", *CPU, *FEW, *runs, f"model.pretrained={tmp_path / 'no-such-folder'}"],
    )
    single_line_error(kind, "a ResNet model, which AutoModelForSequenceClassification does not")
    single_line_error(hub, "model.pretrained=nobody/no-such-model is neither in the Hugging Face")
    assert "`hf download nobody/no-such-model`" in hub.stderr
    single_line_error(nowhere, "not a folder written by save_pretrained")


# What the LoRA check runs in a language-model project's venv: a LoRA run's checkpoint
# against the stand-in's saved base model.
LORA_CHECK = """
import json, sys, torch

weights = torch.load(sys.argv[1], weights_only=False)["state_dict"]
saved = torch.load(sys.argv[2], weights_only=True)
prefix = "model.hf.base_model.model.model."
# The frozen weights, named as in the plain base model (peft keeps them as base_layer).
frozen = {
    key.removeprefix(prefix).replace(".base_layer", ""): value
    for key, value in weights.items()
    if key.startswith(prefix) and "lora_" not in key
}
print(json.dumps({
    "adapters": sorted({key.split("lora_")[1].split(".")[0] for key in weights if "lora_" in key}),
    "moved": all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k),
    "frozen": frozen.keys() == saved.keys()
    and all(torch.equal(frozen[key], saved[key]) for key in saved),
}))
"""


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "framework",
    [pytest.param(f, marks=cpu_group("language-modeling")) for f in ("raw", "lightning")],
)
def test_lora_trains_the_adapters_alone(framework, installed_project, tiny_models, tmp_path):
    """model.lora_rank: the adapters (A and B, B starting at zero) move, the pretrained
    weights stay as saved; the checkpoint evaluates and exports from itself."""
    task = "language-modeling"
    installed = installed_project(cpu_project(task, framework))
    tiny = tiny_models(installed, task)[DEFAULT[task]]
    runs = tmp_path / "runs"
    last = runs / "lora" / "checkpoints" / "last.ckpt"
    outcomes = installed.drive(
        ["train", *CPU, *FEW, "data.block_size=32", f"model.pretrained={tiny}"]
        + ["model.lora_rank=4", "--lr", "1e-2", "--output-dir", str(runs), "--name", "lora"],
        ["evaluate", "--checkpoint", str(last)],
        ["export", "--checkpoint", str(last)],
    )
    trained, evaluated, _ = (outcome.check() for outcome in outcomes)
    assert_no_warnings(trained.stderr)
    loss = parse_metrics(evaluated.stdout)["val/loss"]
    assert loss == pytest.approx(evaluations(runs / "lora")[-1]["val/loss"], rel=1e-3)
    code = [str(installed.python), "-c", LORA_CHECK, str(last), str(Path(tiny, "base_model.pt"))]
    report = json.loads(run(code, cwd=installed.project).stdout.splitlines()[-1])
    assert report == {"adapters": ["A", "B"], "moved": True, "frozen": True}, report


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "framework",
    [
        pytest.param(f, marks=pytest.mark.xdist_group(f"text-{f}-multi-gpu-pretrained"))
        for f in ("raw", "lightning")
    ],
)
def test_several_processes_fine_tune_with_ddp(framework, installed_project, tiny_models, tmp_path):
    """multi-gpu, pretrained: DDP (no FSDP), run for real in two processes on the CPU with
    gloo: each loads the stand-in, they learn together, and the first alone writes."""
    task = "text-classification"
    combination = {**cpu_project(task, framework), "hardware": "multi-gpu"}
    installed = installed_project(combination)
    tiny = tiny_models(installed, task)[DEFAULT[task]]
    runs = tmp_path / "runs"
    steps, every, settings = LEARN[task]
    args = ["train", "--accelerator", "cpu", "--precision", "32", "--output-dir", str(runs)]
    args += ["--name", "ddp"]
    args += ["--max-steps", str(steps), f"train.eval_every={every}", *settings]
    args += ["train.num_workers=0", f"model.pretrained={tiny}"]
    if framework == "raw":  # torchrun starts the processes
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        launch += ["--nproc-per-node=2", "-m", installed.package]
        src = {"PYTHONPATH": str(installed.project / "src")}
        result = run([*launch, *args], cwd=installed.project, timeout=600, env=src)
    else:  # Lightning starts the second process itself
        port = {"MASTER_PORT": str(free_port())}
        result = installed.run(*args, "--devices", "2", env=port, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    printed = result.stdout
    assert [path.name for path in runs.iterdir()] == ["ddp"], "a second process wrote a run"
    _, best = check_run(task, runs / "ddp", printed)
    assert_learned(task, best, read_baseline(runs / "ddp"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
