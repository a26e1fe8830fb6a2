"""How a dataset is split into training and validation: one seeded hold-out, or k folds.

Every task splits through `split_indices`, so that `--folds K` means the same for all of
them. The fold is a setting (data.folds, data.fold) saved with the run's config, so that
`evaluate` of a fold's checkpoint rebuilds that fold's validation split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..config import Config
from . import UserError


def split_indices(
    n: int,
    cfg: Config,
    labels: Sequence | None = None,
    *,
    shuffle: bool = True,
    val_last: bool = False,
    min_val: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of n examples.

    Without folds, the validation set is data.val_split of the examples (at least min_val):
    the first of a permutation seeded by train.seed, or its last with val_last, or the last
    examples in order when shuffle is False (the end of a text).

    With data.folds = K, the validation set is fold data.fold (1 to K) of K: stratified by
    `labels` when given (each fold has every class in proportion), otherwise K contiguous
    blocks of the permutation, or of the examples in order when shuffle is False.
    """
    seed = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(n, generator=seed) if shuffle else torch.arange(n)
    folds, fold = cfg.data.folds, cfg.data.fold
    if folds is None:
        n_val = min(n, max(min_val, math.floor(n * cfg.data.val_split)))
        if val_last:
            return order[: n - n_val], order[n - n_val :]
        return order[n_val:], order[:n_val]
    if n < folds:
        raise UserError(f"{n} examples cannot make {folds} folds; use fewer --folds")
    if n // folds < min_val:  # the smallest fold, which one of the runs validates on
        raise UserError(
            f"{n} examples make folds of {n // folds}, and a validation split needs "
            f"{min_val} at least; use --folds {max(2, n // min_val)} or fewer"
        )
    if labels is None:
        val = torch.tensor_split(order, folds)[fold - 1]
    else:
        # Deal each class's examples round-robin over the folds, one class after another:
        # every fold gets its share of each class, and the folds differ in size by one at most.
        fold_of = torch.empty(n, dtype=torch.long)
        dealt = 0
        for label in sorted(set(labels)):
            members = [i for i in order.tolist() if labels[i] == label]
            fold_of[members] = (dealt + torch.arange(len(members))) % folds
            dealt += len(members)
        val = order[fold_of[order] == fold - 1]
    held_out = torch.zeros(n, dtype=torch.bool)
    held_out[val] = True
    return order[~held_out[order]], val
