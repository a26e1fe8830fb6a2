def build_optimizer(model: nn.Module, cfg: Config):
    """AdamW, with weight decay on the weight matrices only (not on biases and norms), and
    the learning rate's schedule: a linear warm-up, then a cosine decay to a tenth of it."""
    t = cfg.train
    parameters = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": t.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    # Fused AdamW is one kernel per step instead of one per parameter, on CUDA only.
    fused = next(model.parameters()).is_cuda
    optimizer = torch.optim.AdamW(groups, lr=t.lr, fused=fused)
    warmup = int(t.warmup_ratio * t.max_steps)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, 1 / (warmup + 1), total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, t.max_steps - warmup, t.lr / 10),
        ],
        milestones=[warmup],
    )
    return optimizer, scheduler
