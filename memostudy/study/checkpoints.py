"""Memorization-aware checkpoint choice: pick the snapshot with the best sample quality whose memorization
stays under a level, or stop training when a snapshot's memorization exceeds it.

The seeds (Dar et al.) leave this as future work: early stopping on validation loss alone does not bound
memorization, and memorization can rise while the loss still falls. Two tools:

- :func:`choose_checkpoint` -- a rule over the over-training rows (one per snapshot: memorization with
  :mod:`memostudy.study.quality`'s quality figures): the best quality among snapshots at or under the level.
- :func:`memorization_stop` -- an ``on_snapshot`` hook for :func:`memostudy.training.fit`: at each diffusion
  snapshot it samples, assesses with the study's detector and returns True (stop) when the memorized fraction
  exceeds the level. :func:`memostudy.study.memorization.run_memorization` uses it when the config's
  ``stop_memorization`` is set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from memostudy.data.patches import PatchSet
from memostudy.detect.assessment import assess
from memostudy.detect.detector import Detector
from memostudy.ldm.config import LDMConfig
from memostudy.study.cache import synthesize
from memostudy.study.config import MemorizationConfig, SamplingPlan
from memostudy.study.log import say

#: quality columns of :func:`memostudy.study.experiments.overtraining_rows` and whether lower is better
QUALITY_LOWER_IS_BETTER = {"frechet_embedding": True, "val_loss": True, "ms_ssim": True}


def choose_checkpoint(rows: list[dict[str, Any]], level: float, quality: str = "frechet_embedding",
                      memorization: str = "memorized_fraction",
                      lower_is_better: bool | None = None) -> dict[str, Any] | None:
    """The checkpoint with the best ``quality`` among those whose ``memorization`` is at most ``level``.

    Args:
        rows: one row per checkpoint (e.g. :func:`memostudy.study.experiments.overtraining_rows`).
        level: the highest acceptable memorization, a fraction in [0, 1].
        quality: the quality column to optimise (Fréchet distance of detector embeddings by default;
            ``val_loss``; ``ms_ssim``, the mean similarity between samples: lower = more diverse).
        memorization: the memorization column; ``memorized_hi`` (the upper bound of its bootstrap CI) makes
            the rule conservative; ``copy_fraction`` bounds the share of samples that are copies instead of
            training volumes memorized (they can disagree: on the long run of the README the snapshot with
            8.3 % memorized had 25 % of its samples copies).
        lower_is_better: direction of ``quality``; None = from :data:`QUALITY_LOWER_IS_BETTER`.

    Returns:
        The chosen row (ties: the earliest in ``rows``), or None when no checkpoint is under the level
        or none has a finite quality.
    """
    if not 0 <= level <= 1:
        raise ValueError(f"level must be a fraction in [0, 1], got {level}")
    if rows and memorization not in rows[0]:
        raise ValueError(f"unknown memorization measure {memorization!r}; use memorized_fraction, memorized_hi "
                         "(the upper bound of its CI) or copy_fraction (samples that are copies)")
    lower = QUALITY_LOWER_IS_BETTER.get(quality, True) if lower_is_better is None else lower_is_better
    ok = [r for r in rows if r[memorization] <= level and r.get(quality) is not None and math.isfinite(r[quality])]
    if not ok:
        return None
    return (min if lower else max)(ok, key=lambda r: r[quality])


def memorization_stop(cfg: MemorizationConfig, ldm_cfg: LDMConfig, run_dir: Any, train: PatchSet,
                      reference: PatchSet, detector: Detector, plan: SamplingPlan, level: float,
                      seen: dict[int, float] | None = None) -> Callable[[int], bool]:
    """An ``on_snapshot`` hook: at each diffusion snapshot, draw ``plan.n`` samples from it (cached like any
    study samples, so the later assessment reuses them), assess them against ``train`` and stop when the
    memorized fraction exceeds ``level``.

    Args:
        seen: filled with epoch -> memorized fraction of every snapshot checked.
    """
    seen = {} if seen is None else seen

    def hook(epoch: int) -> bool:
        s = synthesize(run_dir, ldm_cfg, epoch, plan.n, plan.sampler, plan.steps, cfg.seed, progress=cfg.progress,
                       eta=plan.eta)
        a = assess(train.volumes, reference.volumes, s.volumes, detector, train.ids, reference.ids, s.ids,
                   cfg=cfg.assessment)
        seen[epoch] = frac = a.summary.contrastive.memorized.value
        stop = frac > level
        say(f"snapshot epoch {epoch}: {100 * frac:.1f} % of training volumes memorized "
            f"({'over' if stop else 'within'} the {100 * level:.1f} % level{'; stopping' if stop else ''})")
        return stop

    return hook
