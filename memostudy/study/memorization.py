"""The memorization study, composed: train an LDM, sample from it, train (or reuse) the copy detector,
and assess which training volumes it copied (Dar et al., seed 000 sections 2-3).

One :class:`MemorizationConfig` flows from a notebook's parameters to :func:`run_memorization`,
which returns a :class:`MemorizationResult`; the experiment notebooks call it once per setting.

Trained models are kept in a content-addressed work folder (``runs_dir``, default
``<cache>/runs``): the LDM of a config lives in ``ldm/<preset>-<hash>/`` and the detector of a data
set and detector config in ``detectors/<hash>/``. Running a study again with the same settings
therefore reuses finished models and resumes interrupted ones (a killed ``make study`` picks up
where it stopped), and every setting of a sweep is assessed with one and the same detector.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from memostudy.config import apply_overrides, provenance, to_dict
from memostudy.data.patches import PatchSet, default_cache, load_patches
from memostudy.data.volume_io import read_volume_folder
from memostudy.detect.assessment import AssessConfig, Assessment, assess
from memostudy.detect.detector import (
    Detector,
    DetectorConfig,
    embed,
    load_detector,
    train_detector,
)
from memostudy.errors import ConfigError, DataError
from memostudy.ldm.config import LDMConfig, default_num_samples, preset
from memostudy.ldm.run import evenly_spaced, load_run, train_ldm
from memostudy.ldm.sampling import default_tag, sample_from, write_samples
from memostudy.study.quality import frechet_distance, ms_ssim_diversity
from memostudy.training import RunFolder

#: bump when a code change makes earlier cached models invalid
CACHE_VERSION = 1


@dataclass
class MemorizationConfig:
    """One memorization assessment (the parameters of the study notebooks).

    Attributes:
        preset: LDM preset (``cpu-tiny`` on a CPU; ``paper-pccta`` / ``paper-mrnet`` on a GPU).
        data: prepared data set name or folder; None keeps the preset's.
        seed: seed of the LDM (training and sampling); the detector keeps its own seed so that
            every seed and setting of a sweep is measured with the same detector.
        ldm: dotted overrides of the LDM config, e.g. ``{"augment": True, "max_train_patches": 16}``.
        num_samples: synthetic volumes to draw; None = ``samples_per_training_patch`` x training set (4x).
        sampler: "ddim" or "ddpm"; None keeps the preset's.
        steps: DDIM steps; None keeps the preset's.
        eta: DDIM noise level, 0 (deterministic) to 1 (DDPM-like); None keeps the preset's.
        checkpoints: diffusion checkpoints to sample from and assess: "final" and/or snapshot epochs.
        detector: the contrastive detector's config.
        detector_path: a trained ``detector.pt`` to use instead of training one.
        detector_train: "split": train the detector on the data set's whole training split (default;
            self-supervised, training data only); "ldm": only on the LDM's training patches.
        max_reference: use at most this many validation patches as the reference (evenly spaced); None = all.
        assessment: threshold percentile, similarity, bootstrap.
        runs_dir: work folder of trained models; None = ``<cache>/runs``.
        progress: progress bars.
    """

    preset: str = "cpu-tiny"
    data: str | None = None
    seed: int = 0
    ldm: dict[str, Any] = field(default_factory=dict)
    num_samples: int | None = None
    sampler: str | None = None
    steps: int | None = None
    eta: float | None = None
    checkpoints: list[str | int] = field(default_factory=lambda: ["final"])
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    detector_path: str | None = None
    detector_train: str = "split"
    max_reference: int | None = None
    assessment: AssessConfig = field(default_factory=AssessConfig)
    runs_dir: str | None = None
    progress: bool = True

    def ldm_config(self) -> LDMConfig:
        """The LDM config: the preset, then ``data`` and ``seed``, then the ``ldm`` overrides."""
        base = {"seed": self.seed} | ({"data": self.data} if self.data else {})
        return preset(self.preset, base | dict(self.ldm or {}))

    def validate(self) -> MemorizationConfig:
        """Raise :class:`ConfigError` naming the first bad field; return self."""
        if self.detector_train not in ("split", "ldm"):
            raise ConfigError(f"detector_train must be 'split' or 'ldm', got {self.detector_train!r}")
        if not self.checkpoints:
            raise ConfigError("checkpoints is empty; use ['final'] or snapshot epochs such as [100, 200, 'final']")
        if self.eta is not None and not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1] (0 = deterministic DDIM) or None, got {self.eta}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        self.detector.validate()
        self.assessment.validate()
        self.ldm_config()
        return self

    def work_root(self) -> Path:
        """Where trained models are kept (``runs_dir`` or ``<cache>/runs``)."""
        return Path(self.runs_dir).expanduser() if self.runs_dir else default_cache() / "runs"


def memorization_config(**params: Any) -> MemorizationConfig:
    """Build a config from flat notebook parameters: dataclass fields plus dotted keys such as
    ``detector.epochs`` or ``assessment.percentile``; unknown keys are a :class:`ConfigError`."""
    return apply_overrides(MemorizationConfig(), params).validate()


def config_hash(obj: Any) -> str:
    """A short stable hash of a (nested) config, naming cached models."""
    text = json.dumps({"v": CACHE_VERSION, "cfg": to_dict(obj) if not isinstance(obj, dict) else obj},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


@dataclass
class SampleSet:
    """Synthetic volumes drawn from one checkpoint of a run.

    Attributes:
        checkpoint: "final" or a snapshot epoch.
        volumes: (N, 1, D, H, W) float32 in [-1, 1].
        ids: file names (``sample_XXXX.nii.gz``).
        folder: where they were written as NIfTI.
        epoch: training epoch of the checkpoint.
    """

    checkpoint: str | int
    volumes: torch.Tensor
    ids: list[str]
    folder: Path
    epoch: int


@dataclass
class MemorizationResult:
    """What :func:`run_memorization` produced.

    Attributes:
        config: the study config.
        ldm_config: the LDM config of the run.
        run_dir: the LDM run folder (config.yaml, losses, checkpoints, samples).
        train: the LDM's training patches (the volumes whose copies are looked for).
        reference: real volumes never trained on, which calibrate the threshold.
        detector: the contrastive detector used.
        detector_path: its checkpoint.
        samples: checkpoint -> :class:`SampleSet`.
        assessments: checkpoint -> :class:`~memostudy.detect.assessment.Assessment`.
        seconds: wall time per stage.
    """

    config: MemorizationConfig
    ldm_config: LDMConfig
    run_dir: Path
    train: PatchSet
    reference: PatchSet
    detector: Detector
    detector_path: Path
    samples: dict[str, SampleSet]
    assessments: dict[str, Assessment]
    seconds: dict[str, float]

    def losses(self, stage: str = "diffusion") -> pd.DataFrame:
        """Per-epoch train/validation losses of ``stage`` ("autoencoder" or "diffusion")."""
        return pd.read_csv(self.run_dir / stage / "losses.csv")

    def rows(self, **labels: Any) -> list[dict[str, Any]]:
        """One flat result row per assessed checkpoint, with ``labels`` (e.g. the setting) prepended;
        the rows notebooks put in ``summary.json`` and sweeps aggregate."""
        out = []
        for ck, a in self.assessments.items():
            s = a.summary.as_dict()
            px = s["pixel_baseline"] or {}
            row = dict(labels) | {
                "seed": self.config.seed, "checkpoint": str(ck), "epoch": self.samples[ck].epoch,
                "n_train": s["n_train"], "n_reference": s["n_reference"], "n_synthetic": s["n_synthetic"],
                "augment": self.ldm_config.augment, "threshold": s["threshold"],
                "memorized_fraction": s["memorized_fraction"], "memorized_lo": s["memorized_fraction_ci"][0],
                "memorized_hi": s["memorized_fraction_ci"][1], "copy_fraction": s["copy_fraction"],
                "copy_lo": s["copy_fraction_ci"][0], "copy_hi": s["copy_fraction_ci"][1],
                "pixel_memorized_fraction": px.get("memorized_fraction"), "pixel_copy_fraction": px.get("copy_fraction"),
                "detector": str(self.detector_path), "percentile": s["percentile"], "metric": s["metric"],
            }
            out.append(row)
        return out


def _reference(cfg: MemorizationConfig, ldm_cfg: LDMConfig) -> PatchSet:
    ref = load_patches(ldm_cfg.data, "validation", ldm_cfg.cache)
    if cfg.max_reference is not None and cfg.max_reference < len(ref):
        idx = evenly_spaced(len(ref), cfg.max_reference)
        ref = PatchSet(ref.volumes[torch.as_tensor(idx)], [ref.ids[i] for i in idx],
                       ref.table.iloc[idx].reset_index(drop=True), ref.info)
    return ref


def ldm_training_patches(run_dir: str | Path, ldm_cfg: LDMConfig) -> PatchSet:
    """The patches the LDM in ``run_dir`` was trained on (its ``data.json`` lists their ids)."""
    ids = json.loads((Path(run_dir) / "data.json").read_text())["train_ids"]
    split = load_patches(ldm_cfg.data, "train", ldm_cfg.cache)
    pos = {pid: i for i, pid in enumerate(split.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise DataError(f"{run_dir}/data.json names patches not in data set {ldm_cfg.data!r} (e.g. {missing[0]}); "
                        "was the data set rebuilt? retrain with --force")
    idx = np.array([pos[i] for i in ids])
    return PatchSet(split.volumes[torch.as_tensor(idx)], list(ids), split.table.iloc[idx].reset_index(drop=True),
                    split.info)


def get_detector(cfg: MemorizationConfig, ldm_cfg: LDMConfig, ldm_train: PatchSet,
                 reference: PatchSet) -> tuple[Detector, Path]:
    """The detector of the study: ``detector_path`` if given, else trained (once per data set and
    detector config, then reused from ``runs_dir/detectors/<hash>/``).

    The reference volumes give the detector's validation loss (choice of epoch) only; the detector
    never sees synthetic volumes.
    """
    if cfg.detector_path:
        return load_detector(cfg.detector_path), Path(cfg.detector_path)
    train = ldm_train if cfg.detector_train == "ldm" else load_patches(ldm_cfg.data, "train", ldm_cfg.cache)
    # the comparison settings are not part of the key: changing them reuses the trained weights
    key = {"data": str(ldm_cfg.data), "train": cfg.detector_train, "detector": to_dict(cfg.detector),
           "train_ids": hashlib.sha256("\n".join(train.ids).encode()).hexdigest()}
    folder = cfg.work_root() / "detectors" / config_hash(key)
    path = folder / "detector.pt"
    if path.exists():
        _say(f"detector: reusing {path}")
        return load_detector(path), path
    _say(f"detector: training on {len(train)} patches ({cfg.detector.epochs} epochs) into {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key.json").write_text(json.dumps(key, indent=1, default=str))
    det = train_detector(train.volumes, reference.volumes, cfg.detector, out_dir=folder, progress=cfg.progress)
    return det, path


def train_or_resume(ldm_cfg: LDMConfig, root: Path, progress: bool = True) -> Path:
    """Train the LDM of ``ldm_cfg`` in ``root/ldm/<data>-<hash>``, resume it, or reuse it if finished."""
    name = f"{Path(str(ldm_cfg.data)).name}-{config_hash(ldm_cfg)}"
    run_dir = root / "ldm" / name
    if RunFolder(run_dir / "diffusion").is_done():
        _say(f"LDM: reusing the finished run {run_dir}")
    else:
        _say(f"LDM: {'resuming' if run_dir.exists() else 'training'} {run_dir} (autoencoder "
             f"{ldm_cfg.autoencoder.loop.epochs} epochs, diffusion {ldm_cfg.diffusion.loop.epochs} epochs)")
        train_ldm(ldm_cfg, run_dir, progress=progress)
    return run_dir


def _say(message: str) -> None:
    """One progress line (a study runs in a papermill kernel, where progress bars do not reach the terminal)."""
    print(f"[memostudy {time.strftime('%H:%M:%S')}] {message}", flush=True)


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
        _say(f"samples: reading {folder}")
        vols, ids, _ = read_volume_folder(folder)
    else:
        how = f"{sampler}-{steps}" + (f" (eta {eta:g})" if sampler == "ddim" else "")
        _say(f"samples: drawing {n} with {how} from checkpoint {checkpoint} (epoch {run.epoch})")
        vols = sample_from(run, n, sampler=sampler, steps=steps, seed=seed, batch_size=ldm_cfg.sampling.batch_size,
                           progress=progress, eta=eta)
        folder = write_samples(run_dir, vols, tag, ck, sampler=sampler, steps=steps, seed=seed,
                               batch_size=ldm_cfg.sampling.batch_size, eta=eta)
        ids = [f"sample_{i:04d}.nii.gz" for i in range(n)]
    return SampleSet(checkpoint=checkpoint, volumes=vols, ids=ids, folder=folder, epoch=run.epoch)


def run_memorization(cfg: MemorizationConfig) -> MemorizationResult:
    """Train (or reuse) the LDM, sample ``num_samples`` volumes from each checkpoint, get the detector,
    and assess every checkpoint's samples against the LDM's training patches.

    Raises:
        ConfigError / DataError: bad settings or data (messages name the field or file).
    """
    cfg = cfg.validate()
    ldm_cfg = cfg.ldm_config()
    root = cfg.work_root()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    run_dir = train_or_resume(ldm_cfg, root, progress=cfg.progress)
    seconds["ldm"] = time.perf_counter() - t
    train = ldm_training_patches(run_dir, ldm_cfg)
    reference = _reference(cfg, ldm_cfg)
    t = time.perf_counter()
    detector, det_path = get_detector(cfg, ldm_cfg, train, reference)
    seconds["detector"] = time.perf_counter() - t
    n = cfg.num_samples or default_num_samples(ldm_cfg, len(train))
    sampler = cfg.sampler or ldm_cfg.sampling.sampler
    steps = cfg.steps or ldm_cfg.sampling.steps
    samples, assessments = {}, {}
    seconds["sampling"] = seconds["assessment"] = 0.0
    for ck in cfg.checkpoints:
        key = str(ck)
        t = time.perf_counter()
        samples[key] = synthesize(run_dir, ldm_cfg, ck, n, sampler, steps, cfg.seed, progress=cfg.progress, eta=cfg.eta)
        seconds["sampling"] += time.perf_counter() - t
        t = time.perf_counter()
        s = samples[key]
        _say(f"assessment: {len(train)} training, {len(reference)} reference, {len(s.volumes)} synthetic volumes")
        assessments[key] = assess(train.volumes, reference.volumes, s.volumes, detector, train.ids, reference.ids,
                                  s.ids, cfg=cfg.assessment)
        seconds["assessment"] += time.perf_counter() - t
    return MemorizationResult(cfg, ldm_cfg, run_dir, train, reference, detector, det_path, samples, assessments,
                              {k: round(v, 1) for k, v in seconds.items()})


def quality(result: MemorizationResult, checkpoint: str | int, n_pairs: int = 64) -> dict[str, float]:
    """Sample quality of one checkpoint: MS-SSIM diversity of the samples (lower = more diverse; the
    real reference's value beside it) and the Fréchet distance between detector embeddings of
    samples and reference volumes (an FID stand-in: pretrained FID networks cannot be downloaded)."""
    s = result.samples[str(checkpoint)]
    e_s = embed(result.detector, s.volumes)
    e_r = embed(result.detector, result.reference.volumes)
    return {"ms_ssim": ms_ssim_diversity(s.volumes, n_pairs=n_pairs, seed=result.config.seed),
            "ms_ssim_reference": ms_ssim_diversity(result.reference.volumes, n_pairs=n_pairs, seed=0),
            "frechet_embedding": frechet_distance(e_s, e_r)}


def top_candidates(assessment: Assessment, k: int = 4) -> pd.DataFrame:
    """The ``k`` training volumes with the most similar synthetic volume (copy candidates), most similar first."""
    return assessment.train_table.sort_values("similarity", ascending=False).head(k).reset_index(drop=True)


def volume_of(ids: list[str], volumes: torch.Tensor, name: str) -> torch.Tensor:
    """The volume of id ``name`` in an (ids, volumes) pair."""
    return volumes[ids.index(name)]


def write_summary(run_dir: str | Path, rows: list[dict[str, Any]], key_figures: dict[str, Any],
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``summary.json`` (``rows``, ``key_figures`` and provenance) for the study runner and sweeps."""
    path = Path(run_dir) / "summary.json"
    body = {"rows": rows, "key_figures": key_figures, **(extra or {}), "provenance": provenance()}
    path.write_text(json.dumps(body, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path


def study_record(result: MemorizationResult) -> dict[str, Any]:
    """What produced a result, for ``summary.json``: configs, folders, detector, timings."""
    return {"config": to_dict(result.config), "ldm_config": to_dict(result.ldm_config), "ldm_run": str(result.run_dir),
            "detector": {"path": str(result.detector_path), "best_epoch": result.detector.best_epoch,
                         "config": to_dict(result.detector.config)},
            "train_data": {"data": str(result.ldm_config.data), "ids": result.train.ids},
            "samples": {k: str(s.folder) for k, s in result.samples.items()}, "seconds": result.seconds}


def label_agreement(assessment: Assessment, labels_path: str | Path) -> dict[str, Any] | None:
    """Sensitivity / specificity of the detector's memorized calls against manual labels (the CSV of
    :class:`~memostudy.report.viewer.LabellingWidget`: train_id, synthetic_id, label), as the seeds did with
    their manual annotation. Pairs labelled "unsure" and pairs no longer the detector's candidates are
    left out. None when no usable label exists."""
    from memostudy.detect.metrics import sensitivity_specificity
    from memostudy.report.viewer import load_labels

    labels = {k: v for k, v in load_labels(labels_path).items() if v in ("copy", "novel")}
    t = assessment.train_table
    keyed = t.assign(key=list(zip(t["train_id"].astype(str), t["nearest_synthetic_id"].astype(str))))
    rows = keyed[keyed["key"].isin(labels)]
    if rows.empty:
        return None
    agreement = sensitivity_specificity(rows["memorized"].to_numpy(), [labels[k] for k in rows["key"]])
    return agreement.as_dict() | {"n_labelled": len(rows)}
