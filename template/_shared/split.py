def split_indices(n: int, cfg: Config, labels: list | None = None, shuffle: bool = True):
    """(training indices, validation indices) of n examples: data.val_split of them held
    out (at least one), drawn at random with train.seed, or the last ones in order when
    shuffle is False (the end of a text). `labels` (one per example, for classification)
    keep a split's classes in proportion when folds are split."""
    generator = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
{% if "folds" in extras %}
    folds, fold = cfg.train.folds, cfg.train.fold
    if folds:  # cross-validation: every folds-th example held out, class by class with labels
        if labels is not None:
            order.sort(key=lambda i: labels[i])  # stable: each class's examples stay shuffled
        start, end = (fold - 1) * n // folds, fold * n // folds  # in order: a block of it
        held_out = order[fold - 1 :: folds] if shuffle else order[start:end]
        held = set(held_out)
        return [i for i in order if i not in held], held_out
{% endif %}
    held_out = min(n - 1, max(1, math.floor(n * cfg.data.val_split)))
    return order[: n - held_out], order[n - held_out :]
