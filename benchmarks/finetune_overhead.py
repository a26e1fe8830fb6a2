"""What each training engine costs beyond a hand-written fine-tuning loop, per task, for the
pretrained projects (backbone=pretrained) on tiny local stand-ins of hub models (CPU).

    python benchmarks/finetune_overhead.py [--repeat 3] [--tasks text-classification ...]
        [--accelerator gpu]

As benchmarks/train_overhead.py, with the raw and Lightning cpu projects of backbone
pretrained: model.pretrained names the task's tiny stand-in of the default model, built
from a config by tests/tiny_models.py (nothing is downloaded). The reference loop and
Lightning's floor of overhead_worker.py fine-tune with the project's model.py as the engines
do (its build_optimizer: the new head at train.lr, the backbone at model.backbone_lr_scale
times it, warm-up and cosine), evaluating every eval_every steps. The same two tables and
targets as train_overhead's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from train_overhead import HEADER, KINDS, generate, measure, print_row, summarize, write_results

HERE = Path(__file__).resolve().parent
# Steps per timed run: a few seconds of fine-tuning each, on a 2-core CPU.
STEPS = {"image-classification": 900, "text-classification": 1800, "language-modeling": 600}
# The stand-in of each task's default model: ResNet-18's, DistilBERT's, SmolLM2's.
DEFAULT = {"image-classification": "resnet", "text-classification": "distilbert"}
DEFAULT["language-modeling"] = "llama"
# Windows of 32 tokens, as the tests train the language model (the default is 128).
SETTINGS = {"language-modeling": ["--set=data.block_size=32"]}


def stand_in(project: Path, task: str, out: Path) -> Path:
    """The tiny stand-in of the task's default model (its vocabulary from the project's data)."""
    (package,) = [p.name for p in (project / "src").iterdir() if (p / "cli.py").is_file()]
    script = [sys.executable, str(HERE.parent / "tests" / "tiny_models.py"), package, task]
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([*script, str(out)], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"tiny_models.py failed:\n{result.stderr[-3000:]}")
    return Path(json.loads(result.stdout.splitlines()[-1])[DEFAULT[task]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=list(STEPS))
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    rows = []
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            projects = {
                "raw": generate(Path(tmp), task, "raw", backbone="pretrained"),
                "lightning": generate(Path(tmp), task, "lightning", backbone="pretrained"),
            }
            projects["reference"] = projects["floor"] = projects["raw"]
            folder = stand_in(projects["raw"], task, Path(tmp) / f"tiny-{task}")
            extra = ["--accelerator", args.accelerator, f"--set=model.pretrained={folder}"]
            extra += SETTINGS.get(task, [])
            runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
            for repeat in range(args.repeat):
                turn = repeat % len(KINDS)
                for kind in KINDS[turn:] + KINDS[:turn]:  # interleaved, rotating
                    runs[kind].append(measure(kind, projects[kind], STEPS[task], extra))
            rows.append(summarize(task, STEPS[task], runs))
            print_row(rows[-1])
    write_results(rows, "finetune_overhead")


if __name__ == "__main__":
    main()
