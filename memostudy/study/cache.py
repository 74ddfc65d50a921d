"""The cache of trained models and drawn samples, content-addressed by config.

Trained models are kept in a work folder (``runs_dir``, default ``<cache>/runs``): the LDM of a config
lives in ``ldm/<data>-<hash>/`` and the detector of a data set and detector config in
``detectors/<hash>/``; the samples of a checkpoint in the LDM's ``samples/<tag>/``; a copy of each finished
autoencoder in ``autoencoders/<data>-<hash>/``, which an LDM that differs only after the autoencoder stage
(diffusion settings, augmentation) takes over instead of training the same autoencoder again. Running a study again
with the same settings therefore reuses finished models and samples and resumes interrupted training (a
killed ``make study`` picks up where it stopped), and every setting of a sweep is assessed with one and
the same detector.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memostudy.config import to_dict
from memostudy.data.patches import PatchSet, load_patches
from memostudy.detect.detector import Detector, load_detector, train_detector
from memostudy.errors import DataError
from memostudy.ldm.config import LDMConfig
from memostudy.ldm.run import load_run, train_ldm
from memostudy.ldm.sampling import default_tag, read_samples, sample_from, write_samples
from memostudy.locks import waiting_lock
from memostudy.study.config import MemorizationConfig
from memostudy.study.log import say
from memostudy.training import RunFolder

#: bump when a code change makes earlier cached models invalid
CACHE_VERSION = 1


def config_hash(obj: Any) -> str:
    """A short stable hash (10 hex digits) of a (nested) config or dict, naming cached models."""
    text = json.dumps({"v": CACHE_VERSION, "cfg": to_dict(obj) if not isinstance(obj, dict) else obj},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class SampleSet:
    """Synthetic volumes drawn from one checkpoint of a run.

    Attributes:
        checkpoint: "final" or a snapshot epoch.
        volumes: (N, 1, D, H, W) float32 in [-1, 1] ((N, 1, H, W) from a 2D LDM).
        ids: file names (``sample_XXXX.nii.gz``).
        folder: where they were written as NIfTI.
        epoch: training epoch of the checkpoint.
    """

    checkpoint: str | int
    volumes: torch.Tensor
    ids: list[str]
    folder: Path
    epoch: int


def ldm_run_dir(ldm_cfg: LDMConfig, root: Path, stop_key: dict[str, Any] | None = None) -> Path:
    """The cache folder of the LDM of ``ldm_cfg``: ``root/ldm/<data>-<hash>``, with ``-stop<hash>`` when its
    training stops by a rule (``stop_key``: everything the rule's decision depends on)."""
    name = f"{Path(str(ldm_cfg.data)).name}-{config_hash(ldm_cfg)}"
    if stop_key is not None:
        name += f"-stop{config_hash(stop_key)[:6]}"
    return root / "ldm" / name


def autoencoder_key(ldm_cfg: LDMConfig) -> dict[str, Any]:
    """Everything the autoencoder stage of ``ldm_cfg`` depends on: data, patches, seed, autoencoder and its loop.

    The autoencoder is trained before, and without, anything of the diffusion stage, the sampler or the
    augmentation (which acts on the diffusion stage only), so LDMs whose configs differ only there
    (the augmentation and model-size sweeps, a run stopped by a rule) train the same autoencoder.
    """
    return {"data": str(ldm_cfg.data), "cache": ldm_cfg.cache, "patch_size": list(ldm_cfg.patch_size),
            "max_train_patches": ldm_cfg.max_train_patches, "max_val_patches": ldm_cfg.max_val_patches,
            "seed": ldm_cfg.seed, "autoencoder": to_dict(ldm_cfg.autoencoder),
            "loop": to_dict(ldm_cfg.stage_loop("autoencoder"))}


def shared_autoencoder_dir(ldm_cfg: LDMConfig, root: Path) -> Path:
    """Where the finished autoencoder of :func:`autoencoder_key` is kept for other LDMs: ``root/autoencoders/<data>-<hash>``."""
    return root / "autoencoders" / f"{Path(str(ldm_cfg.data)).name}-{config_hash(autoencoder_key(ldm_cfg))}"


#: the files of a finished stage another run may take over (the done marker last, so a partial copy never counts)
_FINISHED_STAGE_FILES = ("final.pt", "losses.csv", "DONE")


def _copy_finished_stage(src: Path, dst: Path) -> None:
    """Copy a finished training stage's files from ``src`` into a new folder ``dst`` (written beside it, then renamed)."""
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in _FINISHED_STAGE_FILES:
        shutil.copy2(src / name, tmp / name)
    try:
        tmp.rename(dst)
    except OSError:  # another process got there first: its copy is the same autoencoder
        shutil.rmtree(tmp, ignore_errors=True)


def train_or_resume(ldm_cfg: LDMConfig, root: Path, progress: bool = True,
                    on_snapshot: Callable[[int], bool] | None = None, stop_key: dict[str, Any] | None = None) -> Path:
    """Train the LDM of ``ldm_cfg`` in :func:`ldm_run_dir`, resume it, or reuse it if finished.

    One process at a time trains a given LDM (a lock in ``root/ldm/.locks/``): a second one that wants the
    same LDM (sweep cells split over processes, a run started by hand beside a sweep) waits for it and then
    reuses it instead of writing the same checkpoints. ``on_snapshot`` (with its ``stop_key``) may stop the
    diffusion training at a snapshot (:func:`memostudy.training.fit`); such a run has a folder of its own."""
    run_dir = ldm_run_dir(ldm_cfg, root, stop_key)
    with waiting_lock(run_dir.parent / ".locks" / f"{run_dir.name}.lock", say,
                      f"LDM: another process is training {run_dir}; waiting for it to finish"):
        _train_or_resume_locked(ldm_cfg, root, run_dir, progress, on_snapshot)
    return run_dir


def _train_or_resume_locked(ldm_cfg: LDMConfig, root: Path, run_dir: Path, progress: bool,
                            on_snapshot: Callable[[int], bool] | None) -> None:
    ae_run, shared = RunFolder(run_dir / "autoencoder"), RunFolder(shared_autoencoder_dir(ldm_cfg, root))
    if RunFolder(run_dir / "diffusion").is_done():
        say(f"LDM: reusing the finished run {run_dir}")
    else:
        ae, dm = ldm_cfg.autoencoder.loop, ldm_cfg.diffusion.loop
        say(f"LDM: {'resuming' if run_dir.exists() else 'training'} {run_dir} (autoencoder "
            f"{f'{ae.steps} steps' if ae.steps else f'{ae.epochs} epochs'}, diffusion "
            f"{f'{dm.steps} steps' if dm.steps else f'{dm.epochs} epochs'})")
        if not ae_run.path.exists() and shared.is_done():
            say(f"LDM: taking over the autoencoder trained with the same data, seed and settings from {shared.path}")
            _copy_finished_stage(shared.path, ae_run.path)
        train_ldm(ldm_cfg, run_dir, progress=progress, on_snapshot=on_snapshot)
    if ae_run.is_done() and not shared.is_done():
        _copy_finished_stage(ae_run.path, shared.path)


def ldm_training_patches(run_dir: str | Path, ldm_cfg: LDMConfig) -> PatchSet:
    """The patches the LDM in ``run_dir`` was trained on (its ``data.json`` lists their ids)."""
    ids = json.loads((Path(run_dir) / "data.json").read_text())["train_ids"]
    split = load_patches(ldm_cfg.data, "train", ldm_cfg.cache)
    pos = {pid: i for i, pid in enumerate(split.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise DataError(f"{run_dir}/data.json names patches not in data set {ldm_cfg.data!r} (e.g. {missing[0]}); "
                        "was the data set rebuilt? retrain with --force")
    return split.subset([pos[i] for i in ids])


def get_detector(cfg: MemorizationConfig, ldm_cfg: LDMConfig, ldm_train: PatchSet,
                 reference: PatchSet) -> tuple[Detector, Path]:
    """The detector of the study: ``detector_path`` if given, else trained (once per data set and
    detector config, then reused from ``runs_dir/detectors/<hash>/``).

    The reference volumes give the detector's validation loss (choice of epoch) only; the detector
    never sees synthetic volumes. One process at a time trains a given detector (a lock in
    ``runs_dir/detectors/.locks/``): sweep cells started side by side wait for the first one's detector and
    reuse it instead of training the same one into the same folder.
    """
    if cfg.detector_path:
        return load_detector(cfg.detector_path), Path(cfg.detector_path)
    train = ldm_train if cfg.detector_train == "ldm" else load_patches(ldm_cfg.data, "train", ldm_cfg.cache)
    # the detector config holds architecture and training only: comparison settings (cfg.assessment.compare)
    # never retrain
    key = {"data": str(ldm_cfg.data), "train": cfg.detector_train, "detector": to_dict(cfg.detector),
           "train_ids": hashlib.sha256("\n".join(train.ids).encode()).hexdigest()}
    folder = cfg.work_root() / "detectors" / config_hash(key)
    path = folder / "detector.pt"
    with waiting_lock(folder.parent / ".locks" / f"{folder.name}.lock", say,
                      f"detector: another process is training {folder}; waiting for it to finish"):
        if path.exists():
            say(f"detector: reusing {path}")
            return load_detector(path), path
        say(f"detector: training on {len(train)} patches ({cfg.detector.epochs} epochs) into {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "key.json").write_text(json.dumps(key, indent=1, default=str))
        det = train_detector(train.volumes, reference.volumes, cfg.detector, out_dir=folder, progress=cfg.progress)
    return det, path


def synthesize(run_dir: Path, ldm_cfg: LDMConfig, checkpoint: str | int, n: int, sampler: str, steps: int,
               seed: int, progress: bool = True, eta: float | None = None) -> SampleSet:
    """Samples of one checkpoint: read back if this exact set was drawn before, else drawn and written
    as NIfTI under ``run_dir/samples/<tag>/`` (see :mod:`memostudy.ldm.sampling`). ``eta``: DDIM noise level,
    None = the LDM config's ``sampling.eta``."""
    ck = None if str(checkpoint) == "final" else checkpoint
    eta = ldm_cfg.sampling.eta if eta is None else float(eta)
    tag = f"{default_tag(ck, sampler, steps, seed, eta)}-n{n}"
    folder = run_dir / "samples" / tag
    run = load_run(run_dir, ck)
    if (folder / "samples.csv").exists():
        say(f"samples: reading {folder}")
        vols, ids = read_samples(folder, ldm_cfg.spatial_dims)
    else:
        how = f"{sampler}-{steps}" + (f" (eta {eta:g})" if sampler == "ddim" else "")
        say(f"samples: drawing {n} with {how} from checkpoint {checkpoint} (epoch {run.epoch})")
        vols = sample_from(run, n, sampler=sampler, steps=steps, seed=seed, batch_size=ldm_cfg.sampling.batch_size,
                           progress=progress, eta=eta)
        folder = write_samples(run_dir, vols, tag, ck, sampler=sampler, steps=steps, seed=seed,
                               batch_size=ldm_cfg.sampling.batch_size, eta=eta)
        ids = [f"sample_{i:04d}.nii.gz" for i in range(n)]
    return SampleSet(checkpoint=checkpoint, volumes=vols, ids=ids, folder=folder, epoch=run.epoch)
