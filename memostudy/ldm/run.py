"""Train a latent diffusion model (autoencoder, then diffusion model) into one run folder; 3D on volumes, 2D on
images (the config's ``spatial_dims``, from ``len(patch_size)``).

Run folder layout (read by the study notebooks)::

    runs/NAME/
        config.yaml           the LDMConfig of the run
        provenance.yaml       versions, git commit, host, time of the latest start
        data.json             data set, spacing, intensity mapping, patch shape, ids of the patches used
        autoencoder/          losses.csv, last.pt, final.pt, DONE (see memostudy.training.RunFolder)
        latent_scale.json     scale_factor = 1 / std of the training latents
        diffusion/            losses.csv, last.pt, final.pt, DONE, snapshots/epoch_XXXX.pt
        samples/<tag>/        sample_0000.nii.gz ..., samples.csv (written by memostudy.ldm.sampling; 2D NIfTI in 2D)

Started again with the same config, :func:`train_ldm` skips a finished autoencoder and resumes
whichever stage was interrupted from its ``last.pt``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

from memostudy import distributed
from memostudy.config import load_yaml, provenance, save_yaml, to_dict
from memostudy.data.augment import FlipRotate
from memostudy.data.patches import PatchSet, load_patches
from memostudy.errors import ConfigError, DataError, RunExistsError
from memostudy.ldm.autoencoder import (
    AutoencoderTask,
    PosteriorSampler,
    build_autoencoder,
    encode_stats,
    latent_scale_factor,
)
from memostudy.ldm.config import LDMConfig
from memostudy.ldm.diffusion import DiffusionTask, build_unet
from memostudy.seeds import Stream, initial_weights
from memostudy.training import RunFolder, config_differences, fit, load_checkpoint, select_device

#: memory kept for the posteriors of augmented images already encoded (:class:`PosteriorSampler`): 512 MiB holds
#: ~44,000 of the cpu-tiny preset's (3 x 8^3 latents), every orientation of ~900 patches
AUGMENT_MEMO_BYTES = 512 * 2**20


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """Indices of ``k`` items spread evenly over ``range(n)`` (all of them when k is None or >= n)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def _evenly(ps: PatchSet, k: int | None) -> PatchSet:
    return ps.subset(evenly_spaced(len(ps), k))


def training_data(cfg: LDMConfig) -> tuple[PatchSet, PatchSet | None]:
    """The training patches the LDM learns from (``max_train_patches`` of them) and its validation patches.

    Returns:
        (train, validation); volumes (N, 1, D, H, W) (or (N, 1, H, W)) float32 in [-1, 1]. Validation is None when the
        data set has no validation split.

    Raises:
        DataError: data set missing, or its patch shape differs from ``cfg.patch_size``.
    """
    train = _evenly(load_patches(cfg.data, "train", cfg.cache), cfg.max_train_patches)
    shape = tuple(train.volumes.shape[2:])
    if shape != tuple(cfg.patch_size):
        raise DataError(
            f"data set {cfg.data!r} has patches of shape {shape} but the config expects patch_size "
            f"{tuple(cfg.patch_size)}; prepare the data with that patch size or set patch_size={list(shape)}"
        )
    try:
        val: PatchSet | None = _evenly(load_patches(cfg.data, "validation", cfg.cache), cfg.max_val_patches)
    except DataError:
        val = None
    return train, val


def _check_run_config(out: Path, cfg: LDMConfig) -> None:
    path = out / "config.yaml"
    if path.exists():
        old = load_yaml(LDMConfig, path)
        diff = config_differences(to_dict(old), to_dict(cfg))
        if diff:
            raise ConfigError(
                f"{out} holds a run with a different config ({'; '.join(diff[:4])}{' ...' if len(diff) > 4 else ''}); "
                f"use another --out, the original settings, or --force to start over"
            )


def clear_ldm_run(out: Path) -> None:
    """Delete everything :func:`train_ldm` and sampling write in ``out`` (used by ``force``)."""
    for name in ("autoencoder", "diffusion", "samples"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("config.yaml", "provenance.yaml", "data.json", "latent_scale.json"):
        (out / name).unlink(missing_ok=True)


def train_ldm(cfg: LDMConfig, out_dir: str | Path, force: bool = False, progress: bool = True,
              on_snapshot: Callable[[int], bool] | None = None) -> Path:
    """Train the autoencoder, compute the latent scale factor, train the diffusion model.

    Args:
        cfg: the experiment config (validated here).
        out_dir: run folder (see the module docstring); resumed when it holds an unfinished run
            with the same config.
        force: delete a finished or different run in ``out_dir`` and start over.
        progress: show tqdm bars.
        on_snapshot: called with the epoch after each diffusion snapshot; True stops the diffusion training
            there (see :func:`memostudy.training.fit`).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        RunExistsError: ``out_dir`` holds a finished run and ``force`` is False.
        ConfigError: bad config, or ``out_dir`` holds a run with a different config.
        DataError: the data set is missing or does not fit the config.
    """
    cfg = cfg.validate()
    out = Path(out_dir)
    ae_dir, diffusion_dir = RunFolder(out / "autoencoder"), RunFolder(out / "diffusion")
    if diffusion_dir.is_done() and not force:
        raise RunExistsError(f"{out}: a finished LDM run is already there; use --force to train it again, or another --out")
    main = distributed.is_main()  # under torchrun only rank 0 writes; the others wait where they read
    if force and main:
        clear_ldm_run(out)
    distributed.barrier()
    _check_run_config(out, cfg)
    train, val = training_data(cfg)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        # torch.__version__ is a str subclass that yaml.safe_dump refuses: store plain values
        save_yaml({k: v if v is None or isinstance(v, (bool, int, float)) else str(v)
                   for k, v in provenance().items()}, out / "provenance.yaml")
        (out / "data.json").write_text(json.dumps({
            "data": str(cfg.data), "name": train.info.get("name", str(cfg.data)), "spacing": list(train.spacing),
            "intensity": train.info.get("intensity"), "patch_shape": list(train.volumes.shape[2:]),
            "train_ids": train.ids, "validation_ids": val.ids if val is not None else [],
        }, indent=1))
    distributed.barrier()
    meta = to_dict(cfg)
    device = select_device()

    with initial_weights(Stream.AUTOENCODER_INIT, cfg.seed):  # initial weights depend on the seed only
        ae_task = AutoencoderTask(build_autoencoder(cfg.autoencoder, cfg.spatial_dims), cfg.autoencoder.kl_weight,
                                  cfg.autoencoder.adversarial_weight, cfg.spatial_dims)
    ae = ae_task.net
    if not ae_dir.is_done():
        fit(ae_task, train.volumes, val.volumes if val is not None else None, cfg.stage_loop("autoencoder"),
            ae_dir.path, desc="autoencoder", progress=progress, meta=meta, device=device)
    ae.load_state_dict(load_checkpoint(ae_dir.final)["modules"]["autoencoder"])
    ae.to(device).eval()

    train_stats = encode_stats(ae, train.volumes, device=device)
    scale_path = out / "latent_scale.json"
    if not scale_path.exists() and main:
        scale = latent_scale_factor(train_stats, seed=cfg.seed)
        scale_path.write_text(json.dumps({"scale_factor": scale, "latent_std": 1.0 / scale,
                                          "n_train_patches": len(train), "latent_shape": list(cfg.latent_shape)}))
    distributed.barrier()
    scale = float(json.loads(scale_path.read_text())["scale_factor"])

    if cfg.augment:
        # flips and rotations act on the images, so latents are encoded at every step, each distinct image once
        encoder: torch.nn.Module = PosteriorSampler(ae, memo_bytes=AUGMENT_MEMO_BYTES)
        inputs, val_inputs, augment = train.volumes, (val.volumes if val is not None else None), FlipRotate(cfg.patch_size)
    else:
        # without augmentation each patch's posterior is fixed: encode once, sample z at every step
        encoder = PosteriorSampler()
        inputs, augment = train_stats, None
        val_inputs = encode_stats(ae, val.volumes, device=device) if val is not None else None
    with initial_weights(Stream.DIFFUSION_INIT, cfg.seed):
        unet = build_unet(cfg.diffusion, cfg.autoencoder.latent_channels, cfg.spatial_dims)
    fit(DiffusionTask(unet, encoder, scale, cfg.latent_shape, cfg.diffusion), inputs, val_inputs,
        cfg.stage_loop("diffusion"), diffusion_dir.path, desc="diffusion", augment=augment, progress=progress,
        meta=meta, device=device, on_snapshot=on_snapshot)
    return out


@dataclass
class LDMRun:
    """A trained run, ready to sample from.

    Attributes:
        run_dir: the run folder.
        cfg: its config.
        autoencoder: trained ``AutoencoderKL`` (eval mode).
        unet: diffusion UNet with the weights of ``checkpoint`` (the EMA weights when the run kept them).
        scale_factor: latent scale factor of the run.
        data: ``data.json`` of the run (spacing, intensity mapping lo/hi -> [-1, 1], ids used).
        checkpoint: path of the diffusion checkpoint loaded.
        epoch: training epoch of that checkpoint.
        weights: "ema" or "unet".
    """

    run_dir: Path
    cfg: LDMConfig
    autoencoder: AutoencoderKL
    unet: DiffusionModelUNet
    scale_factor: float
    data: dict
    checkpoint: Path
    epoch: int
    weights: str


def resolve_checkpoint(run_dir: str | Path, checkpoint: str | int | Path | None = None) -> Path:
    """The diffusion checkpoint to use: None or "final" -> final.pt, "last" -> last.pt, an epoch number
    -> ``snapshots/epoch_XXXX.pt``, otherwise a path."""
    d = RunFolder(Path(run_dir) / "diffusion")
    if checkpoint is None or str(checkpoint) == "final":
        path = d.final
    elif str(checkpoint) == "last":
        path = d.last
    elif str(checkpoint).isdigit():
        path = d.snapshot(int(checkpoint))
    else:
        path = Path(checkpoint)
    if not path.is_file():
        snaps = [str(e) for e in d.snapshot_epochs()]
        raise DataError(
            f"{path}: checkpoint not found; finish training (memostudy train ... --out {run_dir}) or pick one of: "
            f"final, last{''.join(', ' + s for s in snaps)}"
        )
    return path


def load_run(run_dir: str | Path, checkpoint: str | int | Path | None = None,
             device: torch.device | str = "cpu") -> LDMRun:
    """Load config, autoencoder, diffusion UNet (of ``checkpoint``, see :func:`resolve_checkpoint`)
    and scale factor of a trained run."""
    run = Path(run_dir)
    if not (run / "config.yaml").exists():
        raise DataError(f"{run}: not an LDM run folder (no config.yaml); train one with `memostudy train --out {run}`")
    cfg = load_yaml(LDMConfig, run / "config.yaml")
    ae_final = RunFolder(run / "autoencoder").final
    if not ae_final.exists() or not (run / "latent_scale.json").exists():
        raise DataError(f"{run}: the autoencoder has not finished training; rerun `memostudy train ... --out {run}`")
    ae = build_autoencoder(cfg.autoencoder, cfg.spatial_dims)
    ae.load_state_dict(load_checkpoint(ae_final)["modules"]["autoencoder"])
    path = resolve_checkpoint(run, checkpoint)
    ckpt = load_checkpoint(path)
    unet = build_unet(cfg.diffusion, cfg.autoencoder.latent_channels, cfg.spatial_dims)
    if "ema" in ckpt["modules"]:
        unet.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["modules"]["ema"].items()})
        weights = "ema"
    else:
        unet.load_state_dict(ckpt["modules"]["unet"])
        weights = "unet"
    epoch = int(ckpt.get("epoch") or (ckpt["history"][-1]["epoch"] if ckpt.get("history") else 0))
    return LDMRun(
        run_dir=run, cfg=cfg, autoencoder=ae.to(device).eval(), unet=unet.to(device).eval(),
        scale_factor=float(json.loads((run / "latent_scale.json").read_text())["scale_factor"]),
        data=json.loads((run / "data.json").read_text()), checkpoint=path, epoch=epoch, weights=weights,
    )
