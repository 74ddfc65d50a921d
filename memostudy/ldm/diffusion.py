"""Stage 2 of the LDM: MONAI's ``DiffusionModelUNet`` on scaled latents, the DDPM/DDIM noise schedules,
``LatentDiffusionInferer``, an optional EMA copy of the weights, and the diffusion training task.

The maths (noising, denoising steps) is MONAI's; this module only wires it to our configs.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from memostudy.ldm.autoencoder import PosteriorSampler
from memostudy.ldm.config import DiffusionConfig


def build_unet(cfg: DiffusionConfig, latent_channels: int, spatial_dims: int = 3) -> DiffusionModelUNet:
    """An unconditional ``DiffusionModelUNet`` predicting the noise of ``latent_channels`` latents, 3D (volumes'
    latents) or 2D (``spatial_dims`` 2, images' latents)."""
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=latent_channels,
        out_channels=latent_channels,
        channels=tuple(cfg.channels),
        attention_levels=tuple(cfg.attention_levels),
        num_res_blocks=cfg.num_res_blocks,
        num_head_channels=cfg.num_head_channels,
        norm_num_groups=cfg.norm_num_groups,
    )


class DDPMSampler(DDPMScheduler):
    """MONAI's ``DDPMScheduler`` whose steps draw their noise from :attr:`generator`.

    ``LatentDiffusionInferer.sample`` calls ``scheduler.step`` without a generator, which would draw from
    torch's global RNG; the sampler sets :attr:`generator` (on the sampling device) before each batch.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.generator: torch.Generator | None = None

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDPM step, its noise from ``generator`` or else :attr:`generator`."""
        return super().step(model_output, timestep, sample, generator or self.generator)


class DDIMSampler(DDIMScheduler):
    """MONAI's ``DDIMScheduler`` with its ``eta`` fixed at construction and its noise from :attr:`generator`.

    ``LatentDiffusionInferer.sample`` calls ``scheduler.step`` without ``eta`` or a generator, which leaves
    MONAI's default eta 0 (deterministic DDIM) and torch's global RNG. This subclass passes the chosen
    ``eta`` and :attr:`generator` instead; the maths stays MONAI's. eta = 1 adds, at each of the N steps,
    the noise of the DDPM posterior of that stride.
    """

    def __init__(self, eta: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eta = float(eta)
        self.generator: torch.Generator | None = None

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDIM step with ``self.eta`` unless ``eta`` is given."""
        return super().step(model_output, timestep, sample, self.eta if eta is None else eta,
                            generator or self.generator)


def build_scheduler(cfg: DiffusionConfig, sampler: str = "ddpm", steps: int | None = None,
                    eta: float = 0.0) -> DDPMSampler | DDIMSampler:
    """The training schedule (``"ddpm"``, all ``num_train_timesteps`` steps) or a DDIM sampler of ``steps``
    steps with noise level ``eta`` (0 = deterministic DDIM, 1 = DDPM-like; see :class:`DDIMSampler`).

    ``clip_sample`` is off: latents are scaled to unit variance, not to [-1, 1].
    """
    kw = {"num_train_timesteps": cfg.num_train_timesteps, "schedule": cfg.schedule,
          "beta_start": cfg.beta_start, "beta_end": cfg.beta_end, "clip_sample": False}
    if sampler == "ddpm":
        return DDPMSampler(**kw)
    if sampler == "ddim":
        sched = DDIMSampler(eta=eta, **kw)
        sched.set_timesteps(num_inference_steps=int(steps or 50))
        return sched
    raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")


class EMA(torch.nn.Module):
    """Exponential moving average of a module's weights: ``ema = decay * ema + (1 - decay) * weights``."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self, source: torch.nn.Module) -> None:
        """Move the average one step towards ``source``'s current weights (buffers are copied)."""
        for e, s in zip(self.module.parameters(), source.parameters()):
            e.lerp_(s.detach(), 1.0 - self.decay)
        for e, s in zip(self.module.buffers(), source.buffers()):
            e.copy_(s)


class DiffusionTask:
    """The latent diffusion model as a :class:`memostudy.training.Task` (epsilon prediction, MSE).

    Args:
        unet: the denoiser.
        encoder: what turns a training batch into latents via ``encode_stage_2_inputs``: the frozen
            ``AutoencoderKL`` when batches are images (B, 1, D, H, W), or
            :class:`memostudy.ldm.autoencoder.PosteriorSampler` when they are precomputed posterior
            statistics (B, 2C, d, h, w).
        scale_factor: multiplies latents before diffusion (1 / std of the training latents).
        latent_shape: (C, d, h, w) of one latent ((C, h, w) in 2D).
        cfg: noise schedule and EMA settings.
    """

    def __init__(self, unet: DiffusionModelUNet, encoder: torch.nn.Module, scale_factor: float,
                 latent_shape: tuple[int, ...], cfg: DiffusionConfig) -> None:
        self.unet = unet
        if not isinstance(encoder, PosteriorSampler):  # an AutoencoderKL: make its posterior draw explicit
            encoder = PosteriorSampler(encoder)
        self.encoder = encoder.requires_grad_(False).eval()
        self.latent_shape = tuple(latent_shape)
        self.scheduler = build_scheduler(cfg, "ddpm")
        self.inferer = LatentDiffusionInferer(self.scheduler, scale_factor=scale_factor)
        self.ema = EMA(unet, cfg.ema_decay) if cfg.ema_decay > 0 else None

    def modules(self) -> dict[str, torch.nn.Module]:
        """``unet`` (trained) and ``ema`` (averaged, not trained) when EMA is on; the autoencoder stays frozen."""
        mods: dict[str, torch.nn.Module] = {"unet": self.unet}
        if self.ema is not None:
            mods["ema"] = self.ema
        return mods

    def to(self, device: torch.device) -> None:
        """Move the nets to ``device``."""
        self.unet.to(device)
        self.encoder.to(device)
        if self.ema is not None:
            self.ema.to(device)

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE between true and predicted noise at random timesteps, for a batch of images or statistics;
        noise, timesteps and the posterior draw come from the CPU ``generator``, in that order."""
        self.encoder.eval()
        noise = torch.randn((len(batch), *self.latent_shape), generator=generator).to(batch.device)
        t = torch.randint(0, self.scheduler.num_train_timesteps, (len(batch),), generator=generator).to(batch.device)
        self.encoder.generator = generator
        pred = self.inferer(inputs=batch, autoencoder_model=self.encoder, diffusion_model=self.unet,
                            noise=noise, timesteps=t)
        return F.mse_loss(pred.float(), noise.float())

    def after_step(self) -> None:
        """Update the EMA copy."""
        if self.ema is not None:
            self.ema.update(self.unet)
