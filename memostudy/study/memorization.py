"""The memorization study, composed: train an LDM, sample from it, train (or reuse) the copy detector,
and assess which training volumes it copied (Dar et al., seed 000 sections 2-3).

One :class:`~memostudy.study.config.MemorizationConfig` flows from a notebook's parameters to
:func:`run_memorization`, which returns a :class:`MemorizationResult`; the experiment notebooks call it
once per setting. Trained models and samples come from the cache of :mod:`memostudy.study.cache`
(reused when finished, resumed when interrupted); this module only puts the steps in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from memostudy.data.patches import PatchSet, load_patches
from memostudy.detect.assessment import Assessment, assess
from memostudy.detect.detector import Detector
from memostudy.ldm.config import LDMConfig
from memostudy.ldm.run import evenly_spaced
from memostudy.study.cache import (
    SampleSet,
    get_detector,
    ldm_run_dir,
    ldm_training_patches,
    synthesize,
    train_or_resume,
)
from memostudy.study.config import MemorizationConfig
from memostudy.study.copying import copying_statistics
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
        statistics: checkpoint -> continuous copying statistics (:func:`memostudy.study.copying.copying_statistics`).
        stopped_at: with ``stop_memorization``, the snapshot epoch where training stopped (None: it ran to the end).
        stop_checks: with ``stop_memorization``, snapshot epoch -> memorized fraction seen by the stopping rule.
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
    statistics: dict[str, dict[str, float]] = field(default_factory=dict)
    stopped_at: int | None = None
    stop_checks: dict[int, float] = field(default_factory=dict)

    def losses(self, stage: str = "diffusion") -> pd.DataFrame:
        """Per-epoch train/validation losses of ``stage`` ("autoencoder" or "diffusion")."""
        return pd.read_csv(self.run_dir / stage / "losses.csv")

    def steps(self, stage: str, epoch: int | None = None) -> int:
        """Optimizer steps ``stage`` ("autoencoder" or "diffusion") had taken after ``epoch`` (None = the end),
        from its ``losses.csv``: the compute a setting got, which a sweep keeps equal across settings."""
        losses = self.losses(stage)
        if epoch is not None:
            losses = losses[losses["epoch"] <= epoch]
        return int(losses["step"].iloc[-1]) if len(losses) else 0

    def rows(self, **labels: Any) -> list[dict[str, Any]]:
        """One flat result row per assessed checkpoint, with ``labels`` (e.g. the setting) prepended;
        the rows of the study record (:class:`~memostudy.study.records.StudyRecord`) that sweeps aggregate.

        Besides the thresholded fractions, a row holds the compute (``steps`` of the diffusion model at that
        checkpoint, ``autoencoder_steps``) and the continuous statistics of :mod:`memostudy.study.copying`
        (``similarity_delta`` with ``_lo`` / ``_hi``, ``c_t``, ``authenticity``, ``authenticity_reference``)."""
        out = []
        for ck, a in self.assessments.items():
            s = a.summary.as_dict()
            px = s["pixel_baseline"] or {}
            bl, be = s.get("blocks") or {}, s.get("blocks_either") or {}
            row = dict(labels) | {
                "seed": self.config.seed, "checkpoint": str(ck), "epoch": self.samples[ck].epoch,
                "n_train": s["n_train"], "n_reference": s["n_reference"], "n_synthetic": s["n_synthetic"],
                "augment": self.ldm_config.augment, "threshold": s["threshold"],
                "memorized_fraction": s["memorized_fraction"], "memorized_lo": s["memorized_fraction_ci"][0],
                "memorized_hi": s["memorized_fraction_ci"][1], "copy_fraction": s["copy_fraction"],
                "copy_lo": s["copy_fraction_ci"][0], "copy_hi": s["copy_fraction_ci"][1],
                "pixel_memorized_fraction": px.get("memorized_fraction"), "pixel_copy_fraction": px.get("copy_fraction"),
                "blocks_memorized_fraction": bl.get("memorized_fraction"), "blocks_copy_fraction": bl.get("copy_fraction"),
                "blocks_either_memorized_fraction": be.get("memorized_fraction"),
                "blocks_either_copy_fraction": be.get("copy_fraction"),
                "detector": str(self.detector_path), "percentile": s["percentile"], "metric": s["metric"],
                "fdr": s["fdr"], "n_bh_copies": s["n_bh_copies"], "min_p_value": s["min_p_value"],
                "pixel_n_bh_copies": px.get("n_bh_copies"), "calibrate_on": self.config.calibrate_on,
                "reference_smoothness": s["smoothness"].get("reference_smoothness"),
                "reference_roughness": s["smoothness"].get("roughness", {}).get("reference"),
                "synthetic_roughness": s["smoothness"].get("roughness", {}).get("synthetic"),
                "steps": self.steps("diffusion", self.samples[ck].epoch),
                "autoencoder_steps": self.steps("autoencoder"),
            } | self.statistics.get(ck, {})
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

    With ``cfg.stop_memorization``, the detector comes first and the diffusion training stops at the first
    snapshot whose memorized fraction exceeds that level (:func:`memostudy.study.checkpoints.memorization_stop`);
    checkpoints after the stop are not assessed, "final" is the stopped model.

    Raises:
        ConfigError / DataError: bad settings or data (messages name the field or file).
    """
    from memostudy.config import to_dict
    from memostudy.ldm.run import training_data
    from memostudy.study.checkpoints import memorization_stop
    from memostudy.training import RunFolder, load_checkpoint

    cfg = cfg.validate()
    ldm_cfg = cfg.ldm_config()
    seconds: dict[str, float] = {}
    reference = reference_patches(cfg, ldm_cfg)
    hook, stop_key, checks = None, None, {}
    if cfg.stop_memorization is not None:
        train = training_data(ldm_cfg)[0]
        t = time.perf_counter()
        detector, det_path = get_detector(cfg, ldm_cfg, train, reference)
        seconds["detector"] = time.perf_counter() - t
        plan = cfg.sampling_plan(ldm_cfg, len(train))
        stop_key = {"level": cfg.stop_memorization, "detector": str(det_path), "plan": plan.__dict__,
                    "seed": cfg.seed, "assessment": to_dict(cfg.assessment), "max_reference": cfg.max_reference}
        run_dir = ldm_run_dir(ldm_cfg, cfg.work_root(), stop_key)
        hook = memorization_stop(cfg, ldm_cfg, run_dir, train, reference, detector, plan, cfg.stop_memorization,
                                 checks)
    t = time.perf_counter()
    run_dir = train_or_resume(ldm_cfg, cfg.work_root(), progress=cfg.progress, on_snapshot=hook, stop_key=stop_key)
    seconds["ldm"] = time.perf_counter() - t
    train = ldm_training_patches(run_dir, ldm_cfg)
    if cfg.stop_memorization is None:
        t = time.perf_counter()
        detector, det_path = get_detector(cfg, ldm_cfg, train, reference)
        seconds["detector"] = time.perf_counter() - t
    calibration = reference.volumes
    if cfg.calibrate_on == "autoencoder":
        say(f"calibration: {len(reference)} reference volumes through the LDM's autoencoder")
        calibration = autoencoded(run_dir, reference.volumes)
    plan = cfg.sampling_plan(ldm_cfg, len(train))
    final = load_checkpoint(RunFolder(run_dir / "diffusion").final)
    stopped_at = int(final["epoch"]) if final.get("stopped") else None
    samples, assessments = {}, {}
    seconds["sampling"] = seconds["assessment"] = 0.0
    for ck in cfg.checkpoints:
        key = str(ck)
        if stopped_at is not None and key != "final" and int(ck) > stopped_at:
            say(f"checkpoint {key}: not reached (training stopped at epoch {stopped_at})")
            continue
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
    result = MemorizationResult(cfg, ldm_cfg, run_dir, train, reference, detector, det_path, samples, assessments,
                                {}, stopped_at=stopped_at, stop_checks=dict(checks))
    t = time.perf_counter()
    result.statistics = {key: copying_statistics(a, detector, train.volumes, reference.volumes, samples[key].volumes)
                         for key, a in assessments.items()}
    seconds["statistics"] = time.perf_counter() - t
    result.seconds = {k: round(v, 1) for k, v in seconds.items()}
    return result
