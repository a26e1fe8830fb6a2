"""The machine: which device, which precision, how many processes and loader workers.

torch is imported inside the functions, so that `--help` starts quickly.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import TYPE_CHECKING, Any

from . import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(accelerator: str) -> torch.device:
    """The device for --accelerator, with a clear error when that hardware is absent."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if accelerator == "auto":
        accelerator = "gpu" if cuda else "mps" if mps else "cpu"
    if accelerator == "gpu" and not cuda:
        raise ConfigError(
            "--accelerator gpu was asked for, but PyTorch sees no CUDA GPU; "
            "train on the CPU with --accelerator cpu"
        )
    if accelerator == "mps" and not mps:
        raise ConfigError(
            "--accelerator mps was asked for, but Apple's MPS backend is not available; "
            "train on the CPU with --accelerator cpu"
        )
    if accelerator == "gpu":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    return torch.device("cuda" if accelerator == "gpu" else accelerator)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' is bf16 mixed precision on GPUs that have it, fp16 on older ones, else fp32."""
    import torch

    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32"


def resolve_devices(devices: int, device: torch.device) -> int:
    """Processes per node: -1 means one per GPU (one process on CPU and MPS)."""
    import torch

    if devices != -1:
        return devices
    return torch.cuda.device_count() if device.type == "cuda" else 1


def loader_processes(num_workers: int, world_size: int) -> dict[str, Any]:
    """The DataLoader's worker-process settings, for one of `world_size` processes per node.

    Never more loader processes than this process's share of the cores. Under DDP they
    start from a forkserver, not by forking: a DDP process runs communication threads, and
    a fork of a threaded process can leave the child stuck on a lock it copied mid-use (seen
    with gloo on the CPU). The server imports the data code once, for all of them.
    """
    workers = min(num_workers, (os.cpu_count() or 1) // world_size)
    settings: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    if workers and world_size > 1 and "forkserver" in multiprocessing.get_all_start_methods():
        multiprocessing.set_forkserver_preload([f"{__package__.split('.')[0]}.data"])
        settings["multiprocessing_context"] = "forkserver"
    return settings


def global_rank() -> int:
    """This process's rank, as set by torchrun, Lightning or SLURM (0 when alone)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) + int(os.environ.get("LOCAL_RANK", 0))
