"""The configuration of one latent-diffusion experiment, and its named presets.

One :class:`LDMConfig` describes a whole LDM run (data, autoencoder, diffusion model, the two
training loops, sampling defaults). It is built from a preset plus dotted overrides::

    cfg = preset("cpu-tiny", {"diffusion.loop.epochs": 300, "augment": True})

and saved as ``config.yaml`` in the run folder, so every result says what produced it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from memostudy.config import apply_overrides
from memostudy.errors import ConfigError
from memostudy.seeds import Stream, stream_seed
from memostudy.training import LoopConfig


@dataclass
class AutoencoderConfig:
    """Stage 1: MONAI ``AutoencoderKL`` and its L1 + KL (+ optional adversarial) loss.

    The encoder halves each spatial size ``len(channels) - 1`` times.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    latent_channels: int = 3
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    norm_num_groups: int = 16
    with_nonlocal_attn: bool = False  # MONAI's with_encoder_nonlocal_attn and with_decoder_nonlocal_attn
    kl_weight: float = 1e-6
    # PatchGAN term (MONAI PatchDiscriminator, least squares); 0 = off. A perceptual term is not offered:
    # its pretrained weights cannot be downloaded offline (see STACK.md).
    adversarial_weight: float = 0.0
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=12, batch_size=4, lr=1e-3))

    @property
    def downsampling(self) -> int:
        """Factor by which the encoder shrinks each spatial axis."""
        return 2 ** (len(self.channels) - 1)


@dataclass
class DiffusionConfig:
    """Stage 2: MONAI ``DiffusionModelUNet`` on the scaled latents, DDPM noise schedule, optional EMA."""

    channels: tuple[int, ...] = (32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 32
    norm_num_groups: int = 32
    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"  # MONAI's latent-diffusion tutorial schedule
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    ema_decay: float = 0.0  # 0 = no EMA; e.g. 0.999 keeps an EMA copy that sampling then uses
    loop: LoopConfig = field(default_factory=lambda: LoopConfig(epochs=150, batch_size=8, lr=1e-3))


@dataclass
class SamplingConfig:
    """Defaults of ``memostudy sample`` for this run (the CLI can override each; see
    :meth:`LDMConfig.sampling_for`, the one place where overrides are resolved and checked)."""

    sampler: str = "ddim"  # "ddim" or "ddpm" (always num_train_timesteps steps)
    steps: int = 50
    eta: float = 0.0  # DDIM noise: 0 = deterministic DDIM (MONAI's default), 1 = as stochastic as DDPM
    samples_per_training_patch: float = 4.0  # the paper sampled about 4x the training set
    batch_size: int = 32

    def check(self, num_train_timesteps: int) -> SamplingConfig:
        """Raise ConfigError naming the first value out of range (the only place these ranges are checked)."""
        if self.sampler not in ("ddim", "ddpm"):
            raise ConfigError(f"sampling.sampler must be 'ddim' or 'ddpm', got {self.sampler!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"sampling.eta must be in [0, 1] (0 = deterministic DDIM), got {self.eta}")
        if not 1 <= self.steps <= num_train_timesteps:
            raise ConfigError(f"sampling.steps must be in [1, {num_train_timesteps}], got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"sampling.batch_size must be >= 1, got {self.batch_size}")
        if not self.samples_per_training_patch > 0:
            raise ConfigError(f"sampling.samples_per_training_patch must be > 0, got {self.samples_per_training_patch}")
        return self


@dataclass
class LDMConfig:
    """Everything that defines one LDM training run.

    Attributes:
        data: prepared data set name (looked up in the cache) or its folder.
        cache: cache root for ``data`` (None: ``$MEMOSTUDY_CACHE`` or ``~/.cache/memostudy``).
        patch_size: (D, H, W) the nets are built for, or (H, W) for a 2D data set; must match the data set's
            patches. Its length is the nets' ``spatial_dims`` (:attr:`spatial_dims`), so 2D and 3D share one code
            path and no other field says which it is.
        max_train_patches: train on this many training patches (evenly spaced over the split's
            order, so every region of the scans is represented); None = all.
        max_val_patches: validation patches used for the per-epoch validation loss; None = all.
        augment: random flips and 90-degree rotations of training patches (the augmentation experiment).
        seed: seeds everything; stage loops whose own ``seed`` is None use ``seed`` (autoencoder)
            and ``seed + 1`` (diffusion).
    """

    data: str = "demo-ct"
    cache: str | None = None
    patch_size: tuple[int, ...] = (32, 32, 32)
    max_train_patches: int | None = None
    max_val_patches: int | None = None
    augment: bool = False
    seed: int = 0
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    @property
    def spatial_dims(self) -> int:
        """2 for images (H, W), 3 for volumes (D, H, W): ``len(patch_size)``."""
        return len(self.patch_size)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, d, h, w) of one latent; (C, h, w) in 2D."""
        f = self.autoencoder.downsampling
        return (self.autoencoder.latent_channels, *(s // f for s in self.patch_size))

    def stage_loop(self, stage: str) -> LoopConfig:
        """The loop config of ``stage`` ("autoencoder" or "diffusion") with its seed filled in."""
        loop = getattr(self, stage).loop
        if loop.seed is None:
            stream = Stream.STAGE_AUTOENCODER if stage == "autoencoder" else Stream.STAGE_DIFFUSION
            loop = replace(loop, seed=stream_seed(stream, self.seed))
        return loop

    def sampling_for(self, sampler: str | None = None, steps: int | None = None, eta: float | None = None,
                     batch_size: int | None = None) -> SamplingConfig:
        """The sampling settings of one draw: each argument overrides this config's ``sampling`` when not None.

        DDPM always runs all ``num_train_timesteps`` steps, so ``steps`` is set to that for it.

        Raises:
            ConfigError: a value out of range (named).
        """
        s = replace(self.sampling, **{k: v for k, v in
                                      (("sampler", sampler), ("steps", steps), ("eta", eta), ("batch_size", batch_size))
                                      if v is not None})
        if s.sampler == "ddpm":
            s = replace(s, steps=self.diffusion.num_train_timesteps)
        return replace(s, eta=float(s.eta), steps=int(s.steps)).check(self.diffusion.num_train_timesteps)

    def validate(self) -> LDMConfig:
        """Check values that would otherwise fail deep inside MONAI; raise ConfigError naming the field."""
        if not str(self.data).strip():
            raise ConfigError("data is empty; pass --data NAME_OR_FOLDER (e.g. demo-ct)")
        if len(self.patch_size) not in (2, 3) or any(s <= 0 for s in self.patch_size):
            raise ConfigError(f"patch_size must be three positive sizes (D, H, W) for volumes or two (H, W) for "
                              f"images, got {self.patch_size}")
        ae, dm = self.autoencoder, self.diffusion
        f = ae.downsampling
        if any(s % f for s in self.patch_size):
            raise ConfigError(
                f"patch_size {tuple(self.patch_size)} is not divisible by the autoencoder's downsampling {f} "
                f"(2^(len(autoencoder.channels)-1)); choose a patch size that is a multiple of {f} or fewer levels"
            )
        if len(ae.attention_levels) != len(ae.channels):
            raise ConfigError(f"autoencoder.attention_levels needs {len(ae.channels)} entries (one per channels level)")
        if any(c % ae.norm_num_groups for c in ae.channels):
            raise ConfigError(f"autoencoder.channels {ae.channels} must all be divisible by autoencoder.norm_num_groups={ae.norm_num_groups}")
        if ae.latent_channels < 1 or ae.num_res_blocks < 1:
            raise ConfigError("autoencoder.latent_channels and autoencoder.num_res_blocks must be >= 1")
        if ae.kl_weight < 0 or ae.adversarial_weight < 0:
            raise ConfigError("autoencoder.kl_weight and autoencoder.adversarial_weight must be >= 0")
        fd = 2 ** (len(dm.channels) - 1)
        latent = self.latent_shape[1:]
        if any(s % fd for s in latent):
            raise ConfigError(
                f"latent size {latent} is not divisible by the diffusion UNet's downsampling {fd}; "
                f"use fewer diffusion.channels levels or a larger patch_size"
            )
        if len(dm.attention_levels) != len(dm.channels):
            raise ConfigError(f"diffusion.attention_levels needs {len(dm.channels)} entries (one per channels level)")
        if any(c % dm.norm_num_groups for c in dm.channels):
            raise ConfigError(f"diffusion.channels {dm.channels} must all be divisible by diffusion.norm_num_groups={dm.norm_num_groups}")
        for c, a in zip(dm.channels, dm.attention_levels):
            if a and c % dm.num_head_channels:
                raise ConfigError(f"diffusion.num_head_channels={dm.num_head_channels} must divide channels {c} of attention levels")
        if dm.num_train_timesteps < 2:
            raise ConfigError("diffusion.num_train_timesteps must be >= 2")
        if not 0.0 <= dm.ema_decay < 1.0:
            raise ConfigError(f"diffusion.ema_decay must be in [0, 1) (0 = off), got {dm.ema_decay}")
        self.sampling.check(dm.num_train_timesteps)
        for name, n in (("max_train_patches", self.max_train_patches), ("max_val_patches", self.max_val_patches)):
            if n is not None and n < 1:
                raise ConfigError(f"{name} must be >= 1 or None (all), got {n}")
        for stage in ("autoencoder", "diffusion"):
            try:
                getattr(self, stage).loop.validate()
            except ConfigError as e:
                raise ConfigError(f"{stage}.loop: {e}") from None
        return self


def _cpu_tiny() -> LDMConfig:
    # Sized for ~6 minutes of LDM work on 2 CPU cores (~0.17 s per step of the small autoencoder at
    # batch 4 of 32^3, ~0.05 s per UNet step on 8^3 latents at batch 8). 48 training patches: the memorization
    # question needs a model that can actually fit its training set within the budget -- the autoencoder
    # sees each patch 60 times (720 steps), the diffusion model 600 times (3600 steps) -- and sampling 4x
    # the training set (192 DDIM-50 samples) stays under a minute. The detector still uses the full splits.
    return LDMConfig(
        data="demo-ct",
        patch_size=(32, 32, 32),
        max_train_patches=48,
        max_val_patches=32,
        autoencoder=AutoencoderConfig(
            # (8, 16, 32) steps ~6x faster than (16, 32, 64) here (~0.2 vs ~1.2 s); many steps of the
            # smaller net reconstruct 48 patches better in the same minutes than a few of the larger one
            channels=(8, 16, 32), latent_channels=3, num_res_blocks=1, attention_levels=(False, False, False),
            norm_num_groups=8, with_nonlocal_attn=False, kl_weight=1e-6,
            # lr 1e-3 beat 3e-3 (and 8 latent channels did not help) over the first 84 steps on demo-ct
            loop=LoopConfig(epochs=60, batch_size=4, lr=1e-3, checkpoint_every=120, val_every=2),
        ),
        diffusion=DiffusionConfig(
            channels=(32, 64, 64), attention_levels=(False, False, True), num_res_blocks=1,
            num_head_channels=32, norm_num_groups=32, ema_decay=0.0,
            # 3600 steps (~3 min). Of 48 DDIM-50 samples, 2 % were near copies (correlation > 0.9 with a training
            # patch) after 1800 steps and 19 % after 3600; 900 steps gave blotchy samples. lr 1e-3 was worse than
            # 3e-4 at both lengths, and an EMA of 0.999 was worse than the raw weights at this few steps.
            loop=LoopConfig(epochs=600, batch_size=8, lr=3e-4, checkpoint_every=300, val_every=20,
                            snapshot_epochs=(100, 200, 400)),
        ),
        # eta 1: of 48 DDIM-50 samples of the default run, deterministic DDIM (eta 0) gave a blotchy, high-contrast
        # texture in about a third; eta 1 gave smooth tissue and body outlines like DDPM-1000 does, at DDIM-50's cost
        # (median correlation with the nearest training patch 0.79 at eta 1, 0.64 at eta 0, 0.72 for DDPM-1000)
        sampling=SamplingConfig(sampler="ddim", steps=50, eta=1.0, samples_per_training_patch=4.0, batch_size=32),
    )


def _paper(data: str, patch_size: tuple[int, ...]) -> LDMConfig:
    # Dar et al. adopt Khader et al.'s LDM (4x compression per axis, 8 latent channels, lr 1e-4 for
    # the diffusion model, 1000 DDPM steps) with diffusion batch size 10. Meant for a GPU.
    return LDMConfig(
        data=data,
        patch_size=patch_size,
        autoencoder=AutoencoderConfig(
            channels=(64, 128, 256), latent_channels=8, num_res_blocks=2, attention_levels=(False, False, False),
            norm_num_groups=32, with_nonlocal_attn=True, kl_weight=1e-6,
            loop=LoopConfig(epochs=200, batch_size=2, lr=3e-4, checkpoint_every=1000, val_every=5),
        ),
        diffusion=DiffusionConfig(
            channels=(64, 128, 256, 512), attention_levels=(False, False, True, True), num_res_blocks=2,
            num_head_channels=64, norm_num_groups=32, ema_decay=0.995,
            loop=LoopConfig(epochs=2000, batch_size=10, lr=1e-4, checkpoint_every=2000, val_every=20,
                            snapshot_epochs=(250, 500, 1000, 1500), grad_clip=1.0),
        ),
        sampling=SamplingConfig(sampler="ddim", steps=50, samples_per_training_patch=4.0, batch_size=16),
    )


def _cpu_tiny_2d() -> LDMConfig:
    # The 2D study on a CPU: 64 x 64 patches from axial slices of demo-ct (data_manifests/demo-ct-2d.yaml). The
    # nets and schedules are cpu-tiny's, in 2D (larger batches): the autoencoder halves 64 twice to 16 x 16 latents, the UNet works on those.
    # cpu-tiny's budget per training image: 48 images (of 306), each seen 60 times by the autoencoder (360 steps
    # at batch 8) and 600 times by the diffusion model (1800 steps at batch 16); 192 DDIM-50 samples (4x).
    # On 2 CPU cores shared with other jobs: autoencoder 52 s, diffusion 541 s, sampling 37 s. Its samples are
    # blurrier than the training images and many have a bright or dark rim at the border and a grid-like texture
    # (with DDPM-1000 too); 64 images with 1000 diffusion steps looked the same or worse.
    base = _cpu_tiny()
    ae, dm = base.autoencoder, base.diffusion
    return replace(
        base, data="demo-ct-2d", patch_size=(64, 64),
        autoencoder=replace(ae, loop=replace(ae.loop, batch_size=8, val_every=4)),
        diffusion=replace(dm, loop=replace(dm.loop, batch_size=16)),
        sampling=replace(base.sampling, batch_size=64),
    )


def _paper_2d(data: str, patch_size: tuple[int, int]) -> LDMConfig:
    # The journal version (seeds 001 and 003: "latent diffusion models on 2D and 3D medical imaging datasets - CT,
    # MRI and X-ray", "2D/3D VAE ... encoder-decoder") trains the same kind of LDM on 2D images; the seeds give no
    # 2D image size or 2D hyperparameters, so this is _paper's LDM in 2D (4x compression per axis, 8 latent
    # channels, lr 1e-4, DDPM 1000, EMA) at 256 x 256, a common radiograph size -- our choice, not the papers'.
    # Meant for a GPU; not run here.
    cfg = _paper(data, patch_size)
    return replace(cfg, diffusion=replace(cfg.diffusion, loop=replace(cfg.diffusion.loop, batch_size=32)),
                   autoencoder=replace(cfg.autoencoder, loop=replace(cfg.autoencoder.loop, batch_size=16)),
                   sampling=replace(cfg.sampling, batch_size=64))


def _test_16() -> LDMConfig:
    # For tests and notebook smoke runs only (seconds on one core): 16^3 patches, two-level nets.
    return LDMConfig(
        data="demo-ct",
        patch_size=(16, 16, 16),
        max_train_patches=8,
        max_val_patches=4,
        autoencoder=AutoencoderConfig(
            channels=(8, 16), latent_channels=2, num_res_blocks=1, attention_levels=(False, False),
            norm_num_groups=8, loop=LoopConfig(epochs=2, batch_size=4, lr=1e-3, checkpoint_every=2),
        ),
        diffusion=DiffusionConfig(
            channels=(16, 32), attention_levels=(False, True), num_res_blocks=1, num_head_channels=16,
            norm_num_groups=8, loop=LoopConfig(epochs=3, batch_size=4, lr=1e-3, checkpoint_every=2,
                                               snapshot_epochs=(2,)),
        ),
        sampling=SamplingConfig(sampler="ddim", steps=10, samples_per_training_patch=0.5, batch_size=4),
    )


PRESETS = {
    "cpu-tiny": _cpu_tiny,
    "test-16": _test_16,
    "paper-pccta": lambda: _paper("pccta", (64, 64, 64)),
    "paper-mrnet": lambda: _paper("mrnet", (256, 256, 32)),
    "cpu-tiny-2d": _cpu_tiny_2d,
    "paper-2d": lambda: _paper_2d("chest-xray-2d", (256, 256)),
    "test-32-2d": lambda: _test_32_2d(),
}


def _test_32_2d() -> LDMConfig:
    # For tests only (seconds on one core): test-16's nets in 2D on 32 x 32 images.
    cfg = _test_16()
    return replace(cfg, data="demo-ct-2d", patch_size=(32, 32))


def preset(name: str, overrides: dict | None = None) -> LDMConfig:
    """A named preset with dotted overrides applied, validated.

    Args:
        name: one of :data:`PRESETS` ("cpu-tiny", "paper-pccta", "paper-mrnet"; 2D: "cpu-tiny-2d", "paper-2d";
            "test-16" and "test-32-2d" for tests).
        overrides: e.g. ``{"diffusion.loop.epochs": 300, "augment": True}``; values may be strings.

    Raises:
        ConfigError: unknown preset, unknown key, or a value that does not fit.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    cfg = apply_overrides(PRESETS[name](), overrides)
    return cfg.validate()


def default_num_samples(cfg: LDMConfig, n_train: int) -> int:
    """How many samples ``memostudy sample`` draws by default: ``samples_per_training_patch`` x training set."""
    return max(1, math.ceil(cfg.sampling.samples_per_training_patch * n_train))
