"""The one training loop: any model, any stage, resumable, seeded.

A model plugs in as a :class:`Task` (its modules and a loss on a batch); :func:`fit` owns the rest:
shuffling, augmentation, optimizer, autocast, gradient clipping, validation, progress, the loss CSV,
checkpoints, snapshots and resuming. The autoencoder, the diffusion model and the copy detector's
contrastive encoder are all trained by :func:`fit`.

Output folder of one :func:`fit` call::

    out_dir/
        losses.csv               epoch, step, train_loss, val_loss, seconds (one row per epoch; with a
                                 ``steps`` budget the last epoch may be cut short)
        last.pt                  modules + optimizer + step + epoch statistics; written every
                                 ``checkpoint_every`` steps and at the end
        snapshots/epoch_XXXX.pt  module weights at the epochs in ``snapshot_epochs``
        final.pt                 module weights, config and loss history of the finished run (or of the
                                 run stopped by ``on_snapshot``: ``"stopped": True``)
        DONE                     written last

The file names are :class:`RunFolder`'s: every other module asks it rather than spelling them.

Randomness of step ``k`` (batch order, augmentation, noise, timesteps) is a pure function of
``(seed, k)``: each epoch's order and each step's draws come from their own generators
(:mod:`memostudy.seeds`), handed to the task and the augmentation, so a run killed and resumed from
``last.pt`` repeats the uninterrupted run's losses exactly, and the caller's global RNG is never touched.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from tqdm.auto import tqdm

from memostudy import distributed
from memostudy.config import OMIT_DEFAULT, to_dict
from memostudy.errors import ConfigError, RunExistsError
from memostudy.seeds import Stream, generator

DONE_MARKER = "DONE"
LOSS_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "seconds"]


@dataclass(frozen=True)
class RunFolder:
    """The files :func:`fit` writes in one stage's folder; the one place their names are spelled.

    Attributes:
        path: the stage folder (e.g. ``<ldm run>/diffusion`` or ``<audit out>/detector_training``).
    """

    path: Path

    @property
    def done(self) -> Path:
        """Marker written last: the run finished."""
        return self.path / DONE_MARKER

    @property
    def last(self) -> Path:
        """Resumable checkpoint (modules, optimizer, step, statistics)."""
        return self.path / "last.pt"

    @property
    def final(self) -> Path:
        """Weights, config and loss history of the finished run."""
        return self.path / "final.pt"

    @property
    def losses(self) -> Path:
        """One row per epoch, columns :data:`LOSS_COLUMNS`."""
        return self.path / "losses.csv"

    @property
    def snapshots(self) -> Path:
        """Folder of the weights kept at ``LoopConfig.snapshot_epochs``."""
        return self.path / "snapshots"

    def snapshot(self, epoch: int) -> Path:
        """The snapshot file of ``epoch``."""
        return self.snapshots / f"epoch_{int(epoch):04d}.pt"

    def snapshot_epochs(self) -> list[int]:
        """Epochs whose snapshots are on disk, ascending."""
        return sorted(int(p.stem.split("_")[-1]) for p in self.snapshots.glob("epoch_*.pt"))

    def is_done(self) -> bool:
        """True when the run finished (``DONE`` is there)."""
        return self.done.exists()

    def clear(self) -> None:
        """Remove what :func:`fit` writes here (used by ``force``); other files stay."""
        for p in (self.last, self.final, self.done, self.losses):
            p.unlink(missing_ok=True)
            p.with_suffix(p.suffix + ".tmp").unlink(missing_ok=True)
        shutil.rmtree(self.snapshots, ignore_errors=True)


@dataclass
class LoopConfig:
    """Settings of one training loop.

    Attributes:
        epochs: passes over the training set (ignored when ``steps`` is set).
        steps: a budget of optimizer steps instead of epochs: the loop runs ``ceil(steps / steps per epoch)``
            epochs and stops after exactly ``steps`` steps (the last epoch cut short). Experiments that compare
            training sets of different sizes set it, so that every setting gets the same compute (with a fixed
            number of epochs a smaller set gets proportionally fewer steps). None = ``epochs`` whole epochs.
        batch_size: patches per optimizer step (the last batch of an epoch may be smaller).
        lr: Adam learning rate.
        checkpoint_every: write ``last.pt`` every this many optimizer steps (and always at the end).
        snapshot_epochs: keep the weights after these epochs in ``snapshots/epoch_XXXX.pt`` (with ``steps``,
            an epoch past the budget's last epoch is an error when :func:`fit` starts).
        seed: seed of the run; None means "set by the owner" (e.g. ``LDMConfig.seed``), 0 if used alone.
        grad_clip: clip the gradient norm to this value; 0 = no clipping.
        amp: "auto" (bf16 autocast on CUDA, fp32 on CPU, where bf16 is much slower), "bf16" or "off".
        val_every: compute the validation loss every this many epochs (and after the last one).
        weight_decay: Adam weight decay.
    """

    epochs: int = 10
    # left out of saved configs while None, so models cached before the field existed keep their hash
    steps: int | None = field(default=None, metadata=OMIT_DEFAULT)
    batch_size: int = 4
    lr: float = 1e-4
    checkpoint_every: int = 100
    snapshot_epochs: tuple[int, ...] = ()
    seed: int | None = None
    grad_clip: float = 0.0
    amp: str = "auto"
    val_every: int = 1
    weight_decay: float = 0.0

    def validate(self) -> LoopConfig:
        """Raise ConfigError naming the first bad field."""
        for name in ("epochs", "batch_size", "checkpoint_every", "val_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("grad_clip and weight_decay must be >= 0")
        if self.amp not in ("auto", "bf16", "off"):
            raise ConfigError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1 or None (train for `epochs`), got {self.steps}")
        last = self.epochs if self.steps is None else self.steps  # with a step budget fit() checks the epochs
        bad = [e for e in self.snapshot_epochs if not 1 <= e <= last]
        if bad:
            raise ConfigError(f"snapshot_epochs {bad} are outside 1..epochs={self.epochs}; set snapshot_epochs too "
                              f"(e.g. --set diffusion.loop.snapshot_epochs=[] for none)")
        return self


class Task(Protocol):
    """What :func:`fit` needs from a model.

    Optional methods, used when present:
        ``val_loss(batch, generator) -> Tensor``: validation loss (default: ``loss`` under ``no_grad``).
        ``after_step() -> None``: called after each optimizer step (e.g. to update an EMA copy).
        ``to(device) -> None``: move everything the task holds (default: move ``modules()``).
    """

    def modules(self) -> dict[str, torch.nn.Module]:
        """The modules to checkpoint; their parameters with ``requires_grad`` are optimized."""
        ...

    def loss(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scalar training loss of ``batch`` (B, C, D, H, W) already on the training device; every random
        draw (noise, timesteps, views) comes from the CPU ``generator``."""
        ...


def select_device() -> torch.device:
    """CUDA if present (this rank's GPU under torchrun), else CPU."""
    return distributed.device()


def autocast_context(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA for amp "auto"/"bf16"; nothing on CPU unless amp == "bf16"."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with torch's fused kernel where the parameters' device supports it (CPU and CUDA do).

    The fused kernel updates all parameters in one pass instead of a Python loop of small ops: on
    one CPU thread it takes ~2 ms per step of the cpu-tiny diffusion UNet (2.9 M parameters) instead of ~10 ms
    (``benchmarks/bench_ldm.py`` shows the effect on whole steps). Same update rule, same state dict.
    """
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_differences(old: dict, new: dict) -> list[str]:
    """Human-readable ``key: old -> new`` lines for two (nested) config dicts."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '<missing>')} -> {b.get(k, '<missing>')}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _save(obj: dict, path: Path) -> None:
    """Write atomically, so a kill during the write never leaves a truncated checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _states(task: Task) -> dict[str, dict]:
    return {k: m.state_dict() for k, m in task.modules().items()}


class _TaskLoss(torch.nn.Module):
    """A task's loss as one module, so that ``DistributedDataParallel`` can wrap every trained module at
    once and average their gradients whatever the task calls inside ``loss`` (``encode``, an inferer ...)."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task
        self.trained = torch.nn.ModuleDict({k: m for k, m in task.modules().items()
                                            if any(p.requires_grad for p in m.parameters())})

    def forward(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.task.loss(batch, generator=generator)


def _loss_fn(task: Task, device: torch.device) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """``task.loss``, or its DistributedDataParallel wrapper when running under torchrun."""
    if distributed.world_size() == 1:
        return lambda batch, g: task.loss(batch, generator=g)
    ddp = torch.nn.parallel.DistributedDataParallel(
        _TaskLoss(task), device_ids=[device.index] if device.type == "cuda" else None)
    return lambda batch, g: ddp(batch, g)


def _share(indices: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    """This rank's share of one global batch of indices (near-equal consecutive parts)."""
    return torch.tensor_split(indices, world)[rank]


def _takes_generator(fn: Callable) -> bool:
    return "generator" in inspect.signature(fn).parameters


@torch.no_grad()
def _evaluate(task: Task, val: torch.Tensor, batch_size: int, device: torch.device, amp: str,
              g: torch.Generator) -> float:
    fn = getattr(task, "val_loss", None) or task.loss
    kw = {"generator": g} if _takes_generator(fn) else {}
    total, count = 0.0, 0
    for i in range(0, len(val), batch_size):
        batch = val[i : i + batch_size].to(device)
        with autocast_context(amp, device):
            total += float(fn(batch, **kw)) * len(batch)
        count += len(batch)
    return total / max(count, 1)


def fit(
    task: Task,
    train: torch.Tensor,
    val: torch.Tensor | None,
    cfg: LoopConfig,
    out_dir: str | Path,
    desc: str = "train",
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    force: bool = False,
    progress: bool = True,
    meta: dict | None = None,
    device: torch.device | str | None = None,
    on_snapshot: Callable[[int], bool] | None = None,
) -> pd.DataFrame:
    """Train ``task`` on ``train``, resuming from ``out_dir/last.pt`` when it is there.

    Args:
        task: the model and its loss (see :class:`Task`).
        train: (N, C, D, H, W) training inputs, kept on the CPU; batches are moved to the device.
        val: (M, C, D, H, W) validation inputs, or None.
        cfg: loop settings; ``cfg.seed`` None means 0.
        out_dir: folder of this stage (see the module docstring for what goes in it).
        desc: progress bar label.
        augment: ``augment(batch, generator)`` is applied to each CPU batch (B, C, D, H, W) before it goes
            to the device; it draws its randomness from ``generator`` (the step's stream), which keeps
            resuming exact.
        force: start over even if the folder holds a finished or different run.
        progress: show a tqdm progress bar.
        meta: extra config (e.g. the whole experiment config) stored in checkpoints and compared on resume.
        device: where to train; default :func:`select_device`.
        on_snapshot: called with the epoch after each snapshot of ``cfg.snapshot_epochs`` is written; returning
            True stops training there: ``last.pt``, ``final.pt`` (with ``"stopped": True`` and that epoch) and
            ``DONE`` are written as for a finished run. Used to stop when memorization at a snapshot exceeds a
            level (:mod:`memostudy.study.checkpoints`). A run killed while the hook runs resumes from the last
            checkpoint before it and calls the hook again. Single process only (not under torchrun).

    Under torchrun (:mod:`memostudy.distributed`) each of the N ranks trains on its share of every global
    batch of N x ``cfg.batch_size`` volumes, gradients are averaged by DistributedDataParallel, the
    recorded losses are means over all ranks, and only rank 0 writes files. A last global batch too small
    to give every rank a volume is skipped.

    Returns:
        The loss table (columns :data:`LOSS_COLUMNS`, one row per epoch), also in ``losses.csv``.

    Raises:
        RunExistsError: ``out_dir`` holds a finished run and ``force`` is False.
        ConfigError: ``last.pt`` was written with a different config (and ``force`` is False).
    """
    cfg = cfg.validate()
    out = Path(out_dir)
    folder = RunFolder(out)
    seed = 0 if cfg.seed is None else int(cfg.seed)
    if folder.is_done() and not force:
        raise RunExistsError(f"{out}: a finished run is already there; use --force (force=True) to train it again")
    main, world, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
    if on_snapshot is not None and world > 1:
        raise ConfigError("on_snapshot (stopping at a snapshot) runs in one process only; train without torchrun")
    if force and main:
        folder.clear()
    out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    if len(train) == 0:
        raise ConfigError("no training inputs: the training set is empty")

    device = torch.device(device) if device is not None else select_device()
    if hasattr(task, "to"):
        task.to(device)
    else:
        for m in task.modules().values():
            m.to(device)
    params = [p for m in task.modules().values() for p in m.parameters() if p.requires_grad]
    optimizer = adam(params, cfg.lr, cfg.weight_decay)
    config = {"loop": to_dict(cfg), "meta": meta or {}}

    n = len(train)
    global_batch = cfg.batch_size * world
    per_epoch = _batches(n, global_batch) if n % global_batch == 0 or n % global_batch >= world else n // global_batch
    if per_epoch == 0:
        raise ConfigError(f"{n} training inputs cannot be shared by {world} processes; use fewer processes")
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    n_epochs = math.ceil(total / per_epoch)
    late = [e for e in cfg.snapshot_epochs if e > n_epochs]
    if late:
        raise ConfigError(f"snapshot_epochs {late} lie beyond the {n_epochs} epochs that steps={cfg.steps} make with "
                          f"{n} training inputs ({per_epoch} steps per epoch); choose earlier snapshots or more steps")
    stopped = False
    step, history, epoch_sum, epoch_count, seconds = 0, [], 0.0, 0, 0.0
    ckpt_path = folder.last
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        diff = config_differences(ckpt["config"], config)
        if diff:
            raise ConfigError(
                f"{ckpt_path} was written with a different config ({'; '.join(diff[:4])}"
                f"{' ...' if len(diff) > 4 else ''}); rerun with the original settings, or use --force to start over"
            )
        for k, m in task.modules().items():
            m.load_state_dict(ckpt["modules"][k])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history = int(ckpt["step"]), list(ckpt["history"])
        epoch_sum, epoch_count, seconds = float(ckpt["epoch_sum"]), int(ckpt["epoch_count"]), float(ckpt["seconds"])

    loss_fn = _loss_fn(task, device)

    def checkpoint() -> None:
        if not main:
            return
        _save({"modules": _states(task), "optimizer": optimizer.state_dict(), "step": step, "history": history,
               "epoch_sum": epoch_sum, "epoch_count": epoch_count, "seconds": seconds, "config": config}, ckpt_path)

    def write_losses() -> pd.DataFrame:
        df = pd.DataFrame(history, columns=LOSS_COLUMNS)
        if main:
            df.to_csv(folder.losses, index=False)
        return df

    bar = tqdm(total=total, initial=step, desc=desc, disable=not (progress and main), dynamic_ncols=True)
    t0 = time.perf_counter() - seconds
    # one history row per finished epoch: a run resumed after its (cut-short) last epoch ended does not redo it
    for epoch in range(len(history), n_epochs):
        order = torch.randperm(n, generator=generator(Stream.BATCH_ORDER, seed, epoch))
        epoch_end = min((epoch + 1) * per_epoch, total)
        for b in range(step - epoch * per_epoch, epoch_end - epoch * per_epoch):
            g = generator(Stream.STEP, seed, step)  # augmentation then the task draw from it, in this order
            batch = train[_share(order[b * global_batch : (b + 1) * global_batch], world, rank)]
            if augment is not None:
                batch = augment(batch, g)
            batch = batch.to(device, non_blocking=True)
            for m in task.modules().values():
                m.train()
            with autocast_context(cfg.amp, device):
                loss = loss_fn(batch, g)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{desc}: loss became {float(loss)} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            if hasattr(task, "after_step"):
                task.after_step()
            step += 1
            loss_sum, count = distributed.sum_over_ranks([float(loss.detach()) * len(batch), len(batch)], device)
            epoch_sum += loss_sum
            epoch_count += int(count)
            seconds = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}")
            if step % cfg.checkpoint_every == 0 and step < epoch_end:
                checkpoint()
        last = epoch + 1 == n_epochs
        val_loss = float("nan")
        if val is not None and len(val) and ((epoch + 1) % cfg.val_every == 0 or last):
            for m in task.modules().values():
                m.eval()
            # the same draws at every validation, so epochs are comparable
            val_loss = _evaluate(task, val, cfg.batch_size, device, cfg.amp, generator(Stream.VALIDATION, seed))
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch + 1, "step": step, "train_loss": epoch_sum / max(epoch_count, 1),
                        "val_loss": val_loss, "seconds": round(seconds, 3)})
        epoch_sum, epoch_count = 0.0, 0
        write_losses()
        if epoch + 1 in cfg.snapshot_epochs and main:
            folder.snapshots.mkdir(exist_ok=True)
            _save({"modules": _states(task), "epoch": epoch + 1, "step": step, "config": config},
                  folder.snapshot(epoch + 1))
        if on_snapshot is not None and epoch + 1 in cfg.snapshot_epochs and on_snapshot(epoch + 1):
            stopped = not last
            break
        if step % cfg.checkpoint_every == 0 and not last:  # at an epoch's end: after its row and snapshot
            checkpoint()
    bar.close()
    checkpoint()
    if main:
        final_epoch = len(history)
        _save({"modules": _states(task), "epoch": final_epoch, "step": step, "config": config, "history": history,
               "stopped": stopped}, folder.final)
        why = f"stopped by on_snapshot after epoch {final_epoch}, " if stopped else "finished "
        folder.done.write_text(f"{why}{step} steps in {seconds:.1f} s\n")
    df = write_losses()
    distributed.barrier()  # the other ranks may read final.pt next
    return df


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by :func:`fit` (``last.pt``, ``final.pt`` or a snapshot)."""
    return torch.load(Path(path), map_location=map_location, weights_only=False)
