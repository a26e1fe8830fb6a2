"""Two timed training runs in a fresh process, for train_overhead.py and gpu_check.sh.

    python benchmarks/overhead_worker.py KIND PROJECT STEPS [--accelerator cpu] [--set K=V ...]

KIND is `reference` (the leanest honest loop, written here), `raw` or `lightning` (the
generated project's engine), or `floor` (the reference's work as the shortest Lightning
module, written here: what any Lightning engine costs at least). Imports are done, then one
short warm-up run in this process, then a timed run of STEPS optimizer steps and one of
2 x STEPS. Prints one JSON line: the seconds of each, the steps, and the process's peak
resident memory. The difference of the two runs is the cost of STEPS steps with their
evaluations, without what a run costs once (its set-up, curves.png, the summary).

The reference does what the engines do by default, no more: the same data, model, batch
size, AdamW with the same weight-decay groups, gradient clipping, warm-up + cosine learning
rate, and every `eval_every` steps (at least once an epoch) a no-grad validation pass with
the task's metrics and a torch.save of the model and optimizer. What the engines add beyond
it is their own overhead: bookkeeping, logging, checkpoint files, hooks. The floor is a
LightningModule with a training_step, a validation_step and configure_optimizers (the
engines' AdamW and schedule), a Trainer with its logger, progress bar and model summary
off, and trainer.save_checkpoint after each evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["reference", "raw", "lightning", "floor"])
    parser.add_argument("project", type=Path)
    parser.add_argument("steps", type=int)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--set", action="append", default=[], dest="settings")
    args = parser.parse_args()
    sys.path.insert(0, str(args.project / "src"))
    (package,) = [p.name for p in (args.project / "src").iterdir() if (p / "cli.py").is_file()]
    config = importlib.import_module(f"{package}.plumbing.settings")
    overrides = {"train.accelerator": args.accelerator, "train.patience": 0, "train.logger": "csv"}
    overrides.update(config.parse_assignment(item) for item in args.settings)
    if args.kind == "reference":
        run = reference_loop(package)
    elif args.kind == "floor":
        run = lightning_floor(package)
    else:
        run = importlib.import_module(f"{package}.engine").train

    with tempfile.TemporaryDirectory() as tmp:

        def settings(name: str, steps: int):
            values = {**overrides, "train.max_steps": steps, "train.output_dir": tmp}
            return config.load_config(overrides={**values, "train.name": name})

        with contextlib.redirect_stdout(sys.stderr):  # the engines print their progress
            run(settings("warm-up", 10))
            seconds = []
            for steps in (args.steps, 2 * args.steps):
                start = time.perf_counter()
                run(settings(f"timed-{steps}", steps))
                seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {"seconds": seconds[0], "seconds_double": seconds[1], "steps": args.steps}
    print(json.dumps(result | {"rss_mb": peak}))


def reference_loop(package: str):
    """A training function over the project's data and model, with nothing but the loop."""
    import torch

    data = importlib.import_module(f"{package}.data")
    model_code = importlib.import_module(f"{package}.model")

    def train(cfg) -> None:
        t = cfg.train
        torch.manual_seed(t.seed)
        device = torch.device("cuda" if t.accelerator == "gpu" else "cpu")
        loader, val_loader, meta = plain_loaders(data, cfg)
        model = model_code.build_model(cfg, meta).to(device)
        metrics = model_code.build_metrics(meta).to(device)
        optimizer = torch.optim.AdamW(groups_of(model, cfg), lr=t.lr, fused=device.type == "cuda")
        warmup = int(t.warmup_ratio * t.max_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, t.max_steps - warmup))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        bf16 = t.precision == "bf16-mixed" or (t.precision == "auto" and device.type == "cuda")
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        if t.compile:
            model.compile()
        interval = max(1, min(t.eval_every, len(loader)))
        step = 0
        while step < t.max_steps:
            for batch in loader:
                batch = to_device(batch, device)
                with autocast:
                    loss, _, _ = model_code.step(model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                if step % interval == 0 or step == t.max_steps:
                    validate(model, val_loader, metrics, device, autocast)
                    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
                    torch.save(state, Path(t.output_dir) / f"{t.name}.pt")
                if step == t.max_steps:
                    break

    def groups_of(model, cfg) -> list[dict]:
        """AdamW's groups as the engines make them: decay on the weights, not on biases and
        norms; a pretrained model's backbone at model.backbone_lr_scale times the rate."""
        t = cfg.train
        scale = getattr(cfg.model, "backbone_lr_scale", 1.0)
        backbone = {id(p) for p in getattr(model, "backbone", torch.nn.Module()).parameters()}
        trained = [p for p in model.parameters() if p.requires_grad]
        groups = []
        for lr, params in (
            (t.lr, [p for p in trained if id(p) not in backbone]),
            (t.lr * scale, [p for p in trained if id(p) in backbone]),
        ):
            weights = [p for p in params if p.dim() >= 2]
            groups.append({"params": weights, "lr": lr, "weight_decay": t.weight_decay})
            others = [p for p in params if p.dim() < 2]
            groups.append({"params": others, "lr": lr, "weight_decay": 0.0})
        return [group for group in groups if group["params"]]

    @torch.no_grad()
    def validate(model, loader, metrics, device, autocast) -> None:
        model.eval()
        metrics.reset()
        for batch in loader:
            with autocast:
                _, outputs, targets = model_code.step(model, to_device(batch, device))
            metrics.update(outputs.float(), targets)
        metrics.compute()
        model.train()

    return train


def lightning_floor(package: str):
    """The reference loop's work in the shortest Lightning: what Lightning's own loop costs."""
    import lightning as L
    import torch

    data = importlib.import_module(f"{package}.data")
    model_code = importlib.import_module(f"{package}.model")
    training = importlib.import_module(f"{package}.plumbing.training")
    hardware = importlib.import_module(f"{package}.plumbing.hardware")

    class Module(L.LightningModule):
        def __init__(self, cfg, meta):
            super().__init__()
            self.cfg = cfg
            self.model = model_code.build_model(cfg, meta)
            self.metrics = model_code.build_metrics(meta)

        def training_step(self, batch, batch_idx):
            loss, _, _ = model_code.step(self.model, batch)
            return loss

        def validation_step(self, batch, batch_idx):
            _, outputs, targets = model_code.step(self.model, batch)
            self.metrics.update(outputs.float(), targets)

        def on_validation_epoch_end(self):
            self.metrics.compute()
            self.metrics.reset()

        def configure_optimizers(self):
            optimizer, scheduler = training.build_optimizer(self.model, self.cfg, self.device)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }

    class SaveAfterEvaluation(L.Callback):
        def __init__(self, path: Path):
            self.path = path

        def on_validation_end(self, trainer, module):
            trainer.save_checkpoint(self.path)

    def train(cfg) -> None:
        t = cfg.train
        L.seed_everything(t.seed, verbose=False)
        device = torch.device("cuda" if t.accelerator == "gpu" else "cpu")
        loader, val_loader, meta = plain_loaders(data, cfg)
        module = Module(cfg, meta)
        if t.compile:
            module.model.compile()
        trainer = L.Trainer(
            accelerator=t.accelerator,
            devices=1,
            precision=hardware.resolve_precision(t.precision, device),
            max_steps=t.max_steps,
            val_check_interval=training.eval_interval(cfg, len(loader)),
            check_val_every_n_epoch=None,
            num_sanity_val_steps=0,
            gradient_clip_val=t.grad_clip,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[SaveAfterEvaluation(Path(t.output_dir) / f"{t.name}.ckpt")],
        )
        trainer.fit(module, loader, val_loader)

    return train


def plain_loaders(data, cfg):
    """The project's training and validation sets in plain DataLoaders, and their metadata."""
    import torch
    from torch.utils.data import DataLoader

    t = cfg.train
    train_set, val_set, meta = data.build_datasets(cfg)
    generator = torch.Generator().manual_seed(t.seed)
    drop_last = len(train_set) >= t.batch_size
    loader = DataLoader(
        train_set, t.batch_size, shuffle=True, drop_last=drop_last, generator=generator
    )
    return loader, DataLoader(val_set, t.batch_size), meta


def to_device(batch, device):
    """A batch of tensors, nested in lists or tuples (a table's numbers and categories)."""
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(part, device) for part in batch)
    return batch.to(device, non_blocking=True)


if __name__ == "__main__":
    main()
