"""The study config: one :class:`MemorizationConfig` per memorization assessment, built from the
notebooks' flat parameters, and the sampling settings it resolves against the LDM preset."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memostudy.config import apply_overrides
from memostudy.data.patches import default_cache
from memostudy.detect.assessment import AssessConfig
from memostudy.detect.detector import DetectorConfig
from memostudy.errors import ConfigError
from memostudy.ldm.config import LDMConfig, default_num_samples, preset

#: the reference volumes a study calibrates on (see :attr:`MemorizationConfig.calibrate_on`)
CALIBRATE_ON = ("as-is", "autoencoder")


@dataclass(frozen=True)
class SamplingPlan:
    """How many volumes to draw from each checkpoint, and how.

    Attributes:
        n: synthetic volumes per checkpoint.
        sampler: "ddim" or "ddpm".
        steps: sampler steps.
        eta: DDIM noise level in [0, 1].
    """

    n: int
    sampler: str
    steps: int
    eta: float | None


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
        calibrate_on: the reference volumes the threshold and p-values are calibrated on: "as-is" (the real
            validation patches) or "autoencoder" (the same patches passed through the LDM's own autoencoder,
            encode then decode, so they are rendered as smoothly as its samples are; the detector still trains
            and validates on the patches as they are). ``assessment.reference_smoothness="matched"`` is the
            model-free alternative (applied after this one).
        assessment: threshold percentile, similarity, bootstrap.
        runs_dir: work folder of trained models; None = ``<cache>/runs``.
        progress: progress bars.
        stop_memorization: stop the diffusion training at the first snapshot (``ldm``'s
            ``diffusion.loop.snapshot_epochs``) whose memorized fraction exceeds this level in [0, 1]; None =
            train to the end (:func:`memostudy.study.checkpoints.memorization_stop`).
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
    calibrate_on: str = "as-is"
    assessment: AssessConfig = field(default_factory=AssessConfig)
    runs_dir: str | None = None
    progress: bool = True
    stop_memorization: float | None = None

    def ldm_config(self) -> LDMConfig:
        """The LDM config: the preset, then ``data`` and ``seed``, then the ``ldm`` overrides."""
        base = {"seed": self.seed} | ({"data": self.data} if self.data else {})
        return preset(self.preset, base | dict(self.ldm or {}))

    def sampling_plan(self, ldm_cfg: LDMConfig, n_train: int) -> SamplingPlan:
        """This config's sampling settings, the LDM config's where this one says None (resolved and
        range-checked by :meth:`memostudy.ldm.config.LDMConfig.sampling_for`)."""
        s = ldm_cfg.sampling_for(self.sampler, self.steps, self.eta)
        return SamplingPlan(n=self.num_samples or default_num_samples(ldm_cfg, n_train),
                            sampler=s.sampler, steps=s.steps, eta=s.eta)

    def validate(self) -> MemorizationConfig:
        """Raise :class:`ConfigError` naming the first bad field; return self."""
        if self.calibrate_on not in CALIBRATE_ON:
            raise ConfigError(f"calibrate_on must be one of {', '.join(CALIBRATE_ON)}, got {self.calibrate_on!r}")
        if self.detector_train not in ("split", "ldm"):
            raise ConfigError(f"detector_train must be 'split' or 'ldm', got {self.detector_train!r}")
        if not self.checkpoints:
            raise ConfigError("checkpoints is empty; use ['final'] or snapshot epochs such as [100, 200, 'final']")
        if self.stop_memorization is not None and not 0 <= self.stop_memorization <= 1:
            raise ConfigError(f"stop_memorization must be a fraction in [0, 1] or None, got {self.stop_memorization}")
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        self.detector.validate()
        self.assessment.validate()
        self.ldm_config().sampling_for(self.sampler, self.steps, self.eta)
        return self

    def work_root(self) -> Path:
        """Where trained models are kept (``runs_dir`` or ``<cache>/runs``)."""
        return Path(self.runs_dir).expanduser() if self.runs_dir else default_cache() / "runs"


def memorization_config(**params: Any) -> MemorizationConfig:
    """Build a config from flat notebook parameters: dataclass fields plus dotted keys such as
    ``detector.epochs`` or ``assessment.percentile``; unknown keys are a :class:`ConfigError`."""
    return apply_overrides(MemorizationConfig(), params).validate()
