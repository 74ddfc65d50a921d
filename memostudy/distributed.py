"""Training on several processes (GPUs) with PyTorch's own launcher and DistributedDataParallel.

``torchrun --nproc_per_node N -m memostudy train ...`` starts N processes; each finds its rank in the
environment variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). :func:`setup` joins them
into one process group (NCCL on CUDA, gloo on the CPU) and :func:`memostudy.training.fit` then:

- cuts every global batch of ``world x batch_size`` volumes into one share per rank (the global batch
  order is the same on every rank: it comes from the run's seed);
- wraps the task's trainable modules in ``DistributedDataParallel``, which averages the gradients;
- records the mean loss over all ranks; only rank 0 writes checkpoints, snapshots, ``losses.csv`` and
  ``DONE``, and the others wait for it (:func:`barrier`) wherever they read what it wrote.

So with a loss that depends only on the batch, N processes with ``batch_size`` B train exactly like one
process with ``batch_size`` N x B (tested with gloo on the CPU). Losses that draw noise (diffusion
timesteps, posterior samples) draw each rank's share from that rank's stream, so they agree in
distribution rather than value. Without torchrun (``WORLD_SIZE`` unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes of the run (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0)."""
    return rank() == 0


def setup() -> bool:
    """Join the process group torchrun described in the environment; True when running distributed.

    Picks NCCL when CUDA is available (and selects this rank's GPU, ``LOCAL_RANK``), gloo otherwise.
    Does nothing, and returns False, when ``WORLD_SIZE`` is unset or 1.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return True


def teardown(wait: bool = True) -> None:
    """Leave the process group, after a last barrier when ``wait`` (not after a failure: the other
    ranks may never reach it)."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` under torchrun with CUDA, else CUDA if present, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world_size() > 1 else 0)
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if world_size() > 1:
        dist.barrier()


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """The element-wise sum of ``values`` over all ranks (``values`` itself when not distributed)."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
