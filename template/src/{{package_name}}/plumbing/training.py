"""What both engines share around the loop: the data loader that resumes mid-epoch, the
schedule over a larger budget, and the random state a checkpoint carries. With them the two
styles train on the same batches in the same order, and a resumed run goes on exactly.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from . import UserError

warnings.filterwarnings("ignore", ".*'set_vital' is deprecated.*")  # inside torchdata


def check_accelerator(accelerator: str) -> None:
    """Refuse in one line, before anything starts, a device this machine does not have."""
    missing = {"gpu": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}
    if missing.get(accelerator):
        raise UserError(
            f"--accelerator {accelerator} was asked for, but PyTorch sees no such device here; "
            "train on the CPU with --accelerator cpu"
        )


class ResumableSampler(StatefulDistributedSampler):
    """torchdata's sampler, whose place in the epoch StatefulDataLoader saves and restores,
    with the epoch in its state: a checkpoint taken at an epoch's last batch resumes with
    the next epoch whole (torchdata's alone would skip it). Each epoch's order comes from
    the seed and the epoch's number, the same on every process and after a resume."""

    resumed_epoch: int | None = None
    chunk = 2**16  # indices drawn at a time, when the dataset is too large for a permutation
    limit = 2**24  # (a permutation of a billion text windows would take gigabytes a epoch)

    def state_dict(self) -> dict[str, int]:
        return {**super().state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        super().load_state_dict(state)
        self.resumed_epoch = state["epoch"]

    def __iter__(self):
        if not self.shuffle or len(self.dataset) <= self.limit:
            return super().__iter__()
        return self.draws()

    def draws(self):
        """Indices drawn at random with replacement, a chunk at a time, from the epoch's
        seeded generator: the same order on every process and after a resume."""
        start, self.next_yielded = self.next_yielded or 0, None
        self.yielded, generator = start, torch.Generator().manual_seed(self.seed + self.epoch)
        for first in range(0, self.num_samples, self.chunk):  # this process's positions
            size = min(self.chunk, self.num_samples - first) * self.num_replicas
            mine = torch.randint(len(self.dataset), (size,), generator=generator)[
                self.rank :: self.num_replicas
            ]
            for index in mine[max(0, start - first) :].tolist():
                self.yielded += 1
                yield index

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.resumed_epoch is not None and epoch != self.resumed_epoch:
            self.next_yielded = None  # a later epoch than the saved one starts at its start


def make_loader(
    dataset: Dataset,
    batch_size: int,
    seed: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> StatefulDataLoader:
    """A loader of this process's share of the data, reshuffled each epoch when training."""
    sampler = ResumableSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
    )
    return StatefulDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=shuffle and len(dataset) >= batch_size * world_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # Under DDP, workers start from a clean server process: a fork of a process that runs
        # DDP's communication threads can hang on a lock it copied mid-use.
        multiprocessing_context="forkserver" if num_workers and world_size > 1 else None,
        pin_memory=pin_memory,  # page-locked memory for non-blocking copies to a GPU
        # Its own generator: starting an epoch then draws nothing from the global one, whose
        # state the checkpoint carries (dropout's), so a resumed run draws what the first did.
        generator=torch.Generator().manual_seed(seed),
    )


def spread(dataset: Dataset, count: int | None) -> Dataset:
    """`count` examples spread evenly over the dataset (all of it when None or fewer): the
    same ones at every evaluation, so that a large validation split costs what a small one does."""
    n = len(dataset)
    return (
        dataset
        if count is None or n <= count
        else Subset(dataset, [i * n // count for i in range(count)])
    )


def stretch_schedule(state: dict[str, Any], extra_steps: int) -> None:
    """A resumed run's larger budget, in its saved learning-rate schedule: the cosine decay
    (CosineAnnealingLR, in its recursive form) then goes on from the current rate down to
    its floor at the new last step."""
    for part in [state, *state.get("_schedulers", [])]:
        if "T_max" in part:
            part["T_max"] += extra_steps


def random_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
