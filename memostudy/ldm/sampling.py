"""Sample volumes from a trained LDM run (DDPM or DDIM) and write them as NIfTI.

Samples hold the same values as the training patches: [-1, 1], where the data set's intensity
mapping (``data.json`` / ``PatchSet.info['intensity']`` = {"lo", "hi"}) maps [lo, hi] to [-1, 1];
``hu = lo + (x + 1) / 2 * (hi - lo)`` undoes it. NIfTI files carry the training spacing. A 2D model's samples
are written as 2D NIfTI images (H, W) (:func:`write_image`) and read back by :func:`read_samples`.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import torch
from monai.inferers import LatentDiffusionInferer
from tqdm.auto import tqdm

from memostudy.data.volume_io import read_volume_folder, write_nifti
from memostudy.errors import ConfigError, DataError, RunExistsError
from memostudy.ldm.diffusion import build_scheduler
from memostudy.ldm.run import LDMRun, load_run
from memostudy.seeds import Stream, generator
from memostudy.training import autocast_context, select_device


@torch.no_grad()
def sample_from(run: LDMRun, n: int, sampler: str | None = None, steps: int | None = None, seed: int = 0,
                batch_size: int | None = None, progress: bool = True, device: torch.device | str | None = None,
                eta: float | None = None) -> torch.Tensor:
    """Draw ``n`` volumes from a loaded run.

    ``sampler``, ``steps``, ``eta`` (DDIM's noise level; ignored by DDPM) and ``batch_size`` override the
    run's ``sampling`` config when given (resolved and checked by :meth:`LDMConfig.sampling_for`).
    Batch ``k`` is seeded from ``(seed, k)``: the same (seed, batch_size) gives the same samples.

    Returns:
        (n, 1, D, H, W) float32 in [-1, 1] on the CPU; (n, 1, H, W) from a 2D run.
    """
    if n < 1:
        raise ConfigError(f"number of samples must be >= 1, got {n}")
    s = run.cfg.sampling_for(sampler, steps, eta, batch_size)
    sampler, steps, eta, batch_size = s.sampler, s.steps, s.eta, s.batch_size
    device = torch.device(device) if device is not None else select_device()
    ae, unet = run.autoencoder.to(device).eval(), run.unet.to(device).eval()
    scheduler = build_scheduler(run.cfg.diffusion, sampler, steps, eta)
    inferer = LatentDiffusionInferer(scheduler, scale_factor=run.scale_factor)
    out = []
    batches = range(0, n, batch_size)
    for k, start in enumerate(tqdm(batches, desc=f"sampling {sampler}", disable=not progress, dynamic_ncols=True)):
        g = generator(Stream.SAMPLING, seed, k, device=device)  # initial noise, then every step's noise
        scheduler.generator = g
        noise = torch.randn((min(batch_size, n - start), *run.cfg.latent_shape), generator=g, device=device)
        with autocast_context("auto", device):
            vol = inferer.sample(input_noise=noise, autoencoder_model=ae, diffusion_model=unet,
                                 scheduler=scheduler, verbose=False)
        out.append(vol.float().clamp(-1, 1).cpu())
    return torch.cat(out)


def sample_volumes(run_dir: str | Path, n: int, sampler: str = "ddim", steps: int = 50,
                   checkpoint: str | int | Path | None = None, seed: int = 0, batch_size: int = 8,
                   progress: bool = True, eta: float | None = None) -> torch.Tensor:
    """Draw ``n`` volumes from the run in ``run_dir``.

    Args:
        run_dir: an LDM run folder (see :mod:`memostudy.ldm.run`).
        n: number of volumes.
        sampler: "ddim" (``steps`` steps) or "ddpm" (all ``num_train_timesteps`` steps; ``steps`` ignored).
        checkpoint: None/"final", "last", a snapshot epoch number or a checkpoint path.
        seed: sampling seed.
        batch_size: volumes denoised together.
        eta: DDIM noise level; None = the run's ``sampling.eta``.

    Returns:
        (n, 1, D, H, W) (2D runs: (n, 1, H, W)) float32 in [-1, 1] (decoded, clipped), on the CPU.
    """
    run = load_run(run_dir, checkpoint, device=select_device())
    return sample_from(run, n, sampler=sampler, steps=steps, seed=seed, batch_size=batch_size, progress=progress,
                       eta=eta)


def default_tag(checkpoint: str | int | Path | None, sampler: str, steps: int, seed: int, eta: float = 0.0) -> str:
    """Folder name of a set of samples, e.g. ``final-ddim50-seed0``, ``final-ddim50-eta1-seed0`` (DDIM with
    eta != 0) or ``epoch0050-ddpm1000-seed0``."""
    c = "final" if checkpoint is None else (f"epoch{int(checkpoint):04d}" if str(checkpoint).isdigit() else Path(str(checkpoint)).stem)
    noise = f"-eta{eta:g}" if sampler == "ddim" and eta else ""
    return f"{c}-{sampler}{steps}{noise}-seed{seed}"


def write_samples(run_dir: str | Path, volumes: torch.Tensor, tag: str, checkpoint: str | int | Path | None = None,
                  sampler: str = "ddim", steps: int = 50, seed: int = 0, batch_size: int | None = None,
                  force: bool = False, eta: float = 0.0) -> Path:
    """Write volumes as ``samples/<tag>/sample_XXXX.nii.gz`` plus ``samples.csv``.

    Args:
        run_dir: the run they were sampled from (its ``data.json`` gives spacing and intensity mapping).
        volumes: (n, 1, D, H, W) float32 in [-1, 1], or images (n, 1, H, W) (written as 2D NIfTI).
        tag: sub-folder name (see :func:`default_tag`).
        checkpoint, sampler, steps, seed, batch_size, eta: how they were sampled, recorded in the CSV.
        force: replace an existing folder of that tag.

    Returns:
        The folder written.
    """
    run = load_run(run_dir, checkpoint)
    folder = Path(run_dir) / "samples" / tag
    if (folder / "samples.csv").exists() and not force:
        raise RunExistsError(f"{folder}: samples already written; use --force or another --tag")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spacing = run.data.get("spacing", [1.0, 1.0, 1.0])
    intensity = run.data.get("intensity") or {}
    rows = []
    for i, v in enumerate(volumes):
        name = f"sample_{i:04d}.nii.gz"
        write_image(folder / name, v.clamp(-1, 1), spacing)
        rows.append({"file": name, "index": i, "run": str(Path(run_dir)), "checkpoint": str(run.checkpoint),
                     "epoch": run.epoch, "weights": run.weights, "sampler": sampler,
                     "steps": run.cfg.diffusion.num_train_timesteps if sampler == "ddpm" else steps,
                     "eta": eta if sampler == "ddim" else None, "seed": seed, "batch_size": batch_size, "scale_factor": run.scale_factor,
                     "intensity_lo": intensity.get("lo"), "intensity_hi": intensity.get("hi")})
    pd.DataFrame(rows).to_csv(folder / "samples.csv", index=False)
    return folder


def write_image(path: Path, image: torch.Tensor, spacing: list[float] | tuple[float, ...]) -> Path:
    """Write one sample as NIfTI: a volume (1, D, H, W) as 3D, an image (1, H, W) as a 2D NIfTI of shape (H, W)
    with in-plane ``spacing`` (mm)."""
    return write_nifti(path, image, spacing)


def read_samples(folder: str | Path, spatial_dims: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Read back the samples :func:`write_samples` wrote in ``folder``, in ``samples.csv`` order.

    Returns:
        ``(volumes, ids)``: (N, 1, D, H, W) float32, or (N, 1, H, W) for ``spatial_dims`` 2; ids the file names.
    """
    folder = Path(folder)
    ids = [str(f) for f in pd.read_csv(folder / "samples.csv")["file"]]
    vols, read_ids, _ = read_volume_folder(folder)
    if vols.ndim != spatial_dims + 2 or list(read_ids) != ids:
        raise DataError(f"{folder}: expected the {spatial_dims}D samples listed in samples.csv, read {len(read_ids)} "
                        f"of shape {tuple(vols.shape[1:])}; draw them again (delete the folder)")
    return vols, ids
