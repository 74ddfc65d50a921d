"""The memorization study, composed: train an LDM, sample from it, train (or reuse) the copy detector,
and assess which training volumes it copied (Dar et al., seed 000 sections 2-3).

One :class:`~memostudy.study.config.MemorizationConfig` flows from a notebook's parameters to
:func:`run_memorization`, which returns a :class:`MemorizationResult`; the experiment notebooks call it
once per setting. Trained models and samples come from the cache of :mod:`memostudy.study.cache`
(reused when finished, resumed when interrupted); this module only puts the steps in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from memostudy.data.patches import PatchSet, load_patches
from memostudy.detect.assessment import Assessment, assess
from memostudy.detect.detector import Detector
from memostudy.ldm.config import LDMConfig
from memostudy.ldm.run import evenly_spaced
from memostudy.study.cache import SampleSet, get_detector, ldm_training_patches, synthesize, train_or_resume
from memostudy.study.config import MemorizationConfig
from memostudy.study.log import say

__all__ = ["MemorizationResult", "SampleSet", "reference_patches", "run_memorization"]


@dataclass
class MemorizationResult:
    """What :func:`run_memorization` produced.

    Attributes:
        config: the study config.
        ldm_config: the LDM config of the run.
        run_dir: the LDM run folder (config.yaml, losses, checkpoints, samples).
        train: the LDM's training patches (the volumes whose copies are looked for).
        reference: real volumes never trained on, which calibrate the threshold (as they are; with
            ``calibrate_on="autoencoder"`` they were scored after the LDM's encode-decode).
        detector: the contrastive detector used.
        detector_path: its checkpoint.
        samples: checkpoint -> :class:`~memostudy.study.cache.SampleSet`.
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
        the rows of the study record (:class:`~memostudy.study.records.StudyRecord`) that sweeps aggregate."""
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
                "fdr": s["fdr"], "n_bh_copies": s["n_bh_copies"], "min_p_value": s["min_p_value"],
                "pixel_n_bh_copies": px.get("n_bh_copies"), "calibrate_on": self.config.calibrate_on,
                "reference_smoothness": s["smoothness"].get("reference_smoothness"),
                "reference_roughness": s["smoothness"].get("roughness", {}).get("reference"),
                "synthetic_roughness": s["smoothness"].get("roughness", {}).get("synthetic"),
            }
            out.append(row)
        return out


def reference_patches(cfg: MemorizationConfig, ldm_cfg: LDMConfig) -> PatchSet:
    """The reference volumes: the data set's validation split, at most ``cfg.max_reference`` of them
    (evenly spaced)."""
    ref = load_patches(ldm_cfg.data, "validation", ldm_cfg.cache)
    if cfg.max_reference is not None and cfg.max_reference < len(ref):
        ref = ref.subset(evenly_spaced(len(ref), cfg.max_reference))
    return ref


def autoencoded(run_dir: Path, volumes: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """``volumes`` (N, 1, D, H, W) in [-1, 1] passed through the LDM's own autoencoder: decoded from the
    posterior mean of their encoding (MONAI ``AutoencoderKL.reconstruct``), clipped to [-1, 1] as samples are.
    Real volumes rendered by the decoder are as smooth as its samples, and still novel: calibrating the
    threshold on them asks "does this sample score higher than a novel volume the decoder rendered?"."""
    from memostudy.ldm.run import load_run
    from memostudy.training import select_device

    device = select_device()
    net = load_run(run_dir, device=device).autoencoder
    with torch.no_grad():
        return torch.cat([net.reconstruct(volumes[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(volumes), batch_size)]).clamp(-1, 1)


def run_memorization(cfg: MemorizationConfig) -> MemorizationResult:
    """Train (or reuse) the LDM, sample ``num_samples`` volumes from each checkpoint, get the detector,
    and assess every checkpoint's samples against the LDM's training patches.

    Raises:
        ConfigError / DataError: bad settings or data (messages name the field or file).
    """
    cfg = cfg.validate()
    ldm_cfg = cfg.ldm_config()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    run_dir = train_or_resume(ldm_cfg, cfg.work_root(), progress=cfg.progress)
    seconds["ldm"] = time.perf_counter() - t
    train = ldm_training_patches(run_dir, ldm_cfg)
    reference = reference_patches(cfg, ldm_cfg)
    t = time.perf_counter()
    detector, det_path = get_detector(cfg, ldm_cfg, train, reference)
    seconds["detector"] = time.perf_counter() - t
    calibration = reference.volumes
    if cfg.calibrate_on == "autoencoder":
        say(f"calibration: {len(reference)} reference volumes through the LDM's autoencoder")
        calibration = autoencoded(run_dir, reference.volumes)
    plan = cfg.sampling_plan(ldm_cfg, len(train))
    samples, assessments = {}, {}
    seconds["sampling"] = seconds["assessment"] = 0.0
    for ck in cfg.checkpoints:
        key = str(ck)
        t = time.perf_counter()
        samples[key] = synthesize(run_dir, ldm_cfg, ck, plan.n, plan.sampler, plan.steps, cfg.seed,
                                  progress=cfg.progress, eta=plan.eta)
        seconds["sampling"] += time.perf_counter() - t
        t = time.perf_counter()
        s = samples[key]
        say(f"assessment: {len(train)} training, {len(reference)} reference, {len(s.volumes)} synthetic volumes")
        assessments[key] = assess(train.volumes, calibration, s.volumes, detector, train.ids, reference.ids,
                                  s.ids, cfg=cfg.assessment)
        seconds["assessment"] += time.perf_counter() - t
    return MemorizationResult(cfg, ldm_cfg, run_dir, train, reference, detector, det_path, samples, assessments,
                              {k: round(v, 1) for k, v in seconds.items()})
