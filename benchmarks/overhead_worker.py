"""Two timed training runs in a fresh process, for train_overhead.py and gpu_check.sh.

    python benchmarks/overhead_worker.py KIND PROJECT STEPS [--accelerator cpu] [--set K=V ...]

KIND is `reference` (the hand-written loop, written here), `raw` or `lightning` (the
generated project's engine, run as its `train` command runs it), or `floor` (the shortest
Lightning module in a Trainer with Lightning's defaults, written here: what any Lightning
project costs at least). Imports are done, then one short warm-up run in this process, then
a timed run of STEPS optimizer steps and one of 2 x STEPS. Prints one JSON line: the seconds
of each (wall, and CPU: user + system of all this process's threads), the steps, and the
process's peak resident memory. The difference of the two runs
is the cost of STEPS steps with their evaluations, without what a run costs once (its
set-up, the baseline's evaluation, curves.png, the summary).

Every kind trains the project's model (model.py's build_model, step, build_metrics and
build_optimizer: AdamW's groups, warm-up + cosine) on its data (data.py's build_datasets)
with its settings (config.py, read by plumbing/settings.py's load_config), with gradient
clipping, and evaluates every `train.eval_every` steps (at least once an epoch), over
`train.eval_batches` batches when set. Early stopping is off (train.patience=0,
train.stopping_threshold=null), so that every run takes its STEPS.

- reference: a plain loop over plain DataLoaders: forward, backward, clip, step; at each
  evaluation a no-grad pass with the loss and the task's metrics, and a torch.save of the
  model and optimizer. What the engines add beyond it is their own overhead.
- raw, lightning: the project's `cli.run_training(cfg)` and the summary, as `train` does.
- floor: a LightningModule of training_step (logs the loss), validation_step (the loss and
  the task's metrics, logged) and configure_optimizers (model.py's build_optimizer), over
  plain DataLoaders, in a Trainer with Lightning's defaults on (its default logger, progress
  bar, model summary, sanity check and ModelCheckpoint), evaluating at the project's interval.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
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
    settings = importlib.import_module(f"{package}.plumbing.settings")
    config = importlib.import_module(f"{package}.config")
    overrides = [f"train.accelerator={args.accelerator}", "train.patience=0"]
    overrides += ["train.stopping_threshold=null", *args.settings]
    run = {"reference": reference_loop, "floor": lightning_floor}.get(args.kind, project_train)
    run = run(package)

    with tempfile.TemporaryDirectory() as tmp:

        def cfg(name: str, steps: int):
            flags = {"train.max_steps": steps, "train.output_dir": tmp, "train.name": name}
            return settings.load_config(config.Config, [], overrides, flags)

        with contextlib.redirect_stdout(sys.stderr):  # the engines print their progress
            run(cfg("warm-up", 10))
            seconds, cpu = [], []
            for steps in (args.steps, 2 * args.steps):
                start, start_cpu = time.perf_counter(), time.process_time()
                run(cfg(f"timed-{steps}", steps))
                seconds.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result = {"seconds": seconds[0], "seconds_double": seconds[1], "steps": args.steps}
    result |= {"cpu_seconds": cpu[0], "cpu_seconds_double": cpu[1]}
    print(json.dumps(result | {"rss_mb": peak}))


def project_train(package: str):
    """What the project's `train` command does once it has the settings."""
    cli = importlib.import_module(f"{package}.cli")
    model = importlib.import_module(f"{package}.model")
    reporting = importlib.import_module(f"{package}.plumbing.reporting")

    def train(cfg) -> None:
        run_dir, reason = cli.run_training(cfg)
        for line in reporting.summary(
            run_dir, model.MONITOR, model.MONITOR_MODE, reason, cfg.train
        ):
            print(line)

    return train


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
        optimizer, scheduler = model_code.build_optimizer(model, cfg)
        autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=t.precision == "bf16-mixed"
        )
        if t.compile:
            model.compile()
        interval = min(t.eval_every, len(loader))
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

    @torch.no_grad()
    def validate(model, loader, metrics, device, autocast) -> dict[str, float]:
        model.eval()
        metrics.reset()
        total, count = torch.zeros((), device=device), 0
        for batch in loader:
            with autocast:
                loss, outputs, targets = model_code.step(model, to_device(batch, device))
            total += loss.float() * len(targets)
            count += len(targets)
            metrics.update(outputs.float(), targets)
        scores = {key: value.item() for key, value in metrics.compute().items()}
        model.train()
        return {"loss": total.item() / count, **scores}

    return train


def lightning_floor(package: str):
    """The shortest Lightning project over the same data and model, with Lightning's defaults."""
    import lightning as L

    data = importlib.import_module(f"{package}.data")
    model_code = importlib.import_module(f"{package}.model")

    class Module(L.LightningModule):
        def __init__(self, cfg, meta):
            super().__init__()
            self.cfg = cfg
            self.model = model_code.build_model(cfg, meta)
            self.metrics = model_code.build_metrics(meta).clone(prefix="val/")

        def training_step(self, batch, batch_idx):
            loss, _, _ = model_code.step(self.model, batch)
            self.log("train/loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            loss, outputs, targets = model_code.step(self.model, batch)
            self.metrics.update(outputs.float(), targets)
            self.log("val/loss", loss, batch_size=len(targets))
            self.log_dict(self.metrics)

        def configure_optimizers(self):
            optimizer, scheduler = model_code.build_optimizer(self.model, self.cfg)
            scheduler = {"scheduler": scheduler, "interval": "step"}
            return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def train(cfg) -> None:
        t = cfg.train
        L.seed_everything(t.seed, verbose=False)
        loader, val_loader, meta = plain_loaders(data, cfg)
        module = Module(cfg, meta)
        if t.compile:
            module.model.compile()
        trainer = L.Trainer(
            accelerator=t.accelerator,
            devices=1,
            precision=t.precision,
            max_steps=t.max_steps,
            val_check_interval=min(t.eval_every, len(loader)),  # the project's interval
            check_val_every_n_epoch=None,
            gradient_clip_val=t.grad_clip or None,
            default_root_dir=Path(t.output_dir) / t.name,
        )
        trainer.fit(module, loader, val_loader)

    return train


def plain_loaders(data, cfg):
    """The project's training and validation sets in plain DataLoaders (the validation set
    cut to train.eval_batches batches, spread over it, when set), and their metadata."""
    import torch
    from torch.utils.data import DataLoader, Subset

    t = cfg.train
    train_set, val_set, meta = data.build_datasets(cfg)
    if t.eval_batches and len(val_set) > t.eval_batches * t.batch_size:
        count, n = t.eval_batches * t.batch_size, len(val_set)
        val_set = Subset(val_set, [i * n // count for i in range(count)])
    generator = torch.Generator().manual_seed(t.seed)
    drop_last = len(train_set) >= t.batch_size
    loader = DataLoader(
        train_set, t.batch_size, shuffle=True, drop_last=drop_last, generator=generator
    )
    return loader, DataLoader(val_set, t.batch_size), meta


def to_device(batch, device):
    """A batch of tensors, nested in lists, tuples or dicts."""
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(part, device) for part in batch)
    return batch.to(device, non_blocking=True)


if __name__ == "__main__":
    main()
