"""Stage 1 of the LDM: MONAI's ``AutoencoderKL``, its training loss, and the latent scale factor.

The loss is L1 reconstruction + ``kl_weight`` x KL (Dar et al. eq. 1 plus the KL term of a
variational autoencoder), with an optional PatchGAN term. Trained by :func:`memostudy.training.fit`
through :class:`AutoencoderTask`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch.func import functional_call

from memostudy.ldm.config import AutoencoderConfig
from memostudy.seeds import Stream, generator


def build_autoencoder(cfg: AutoencoderConfig, spatial_dims: int = 3) -> AutoencoderKL:
    """A single-channel ``AutoencoderKL`` as configured, for volumes (``spatial_dims`` 3) or images (2)."""
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=tuple(cfg.channels),
        latent_channels=cfg.latent_channels,
        num_res_blocks=cfg.num_res_blocks,
        attention_levels=tuple(cfg.attention_levels),
        norm_num_groups=cfg.norm_num_groups,
        with_encoder_nonlocal_attn=cfg.with_nonlocal_attn,
        with_decoder_nonlocal_attn=cfg.with_nonlocal_attn,
    )


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(z_mu, z_sigma^2) from N(0, I), summed over latent voxels, mean over the batch.

    Args:
        z_mu, z_sigma: (B, C, d, h, w) encoder outputs ((B, C, h, w) in 2D).
    """
    kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
    return kl.flatten(1).sum(1).mean()


class AutoencoderTask:
    """The autoencoder as a :class:`memostudy.training.Task`.

    Training loss: ``|x - D(z)|_1 + kl_weight * KL`` with ``z`` sampled from the encoder's posterior
    (+ ``adversarial_weight`` x the least-squares PatchGAN generator term, and the discriminator's own
    loss, when that weight is > 0). Validation loss: the L1 of the mean reconstruction ``D(mu)``,
    i.e. the reconstruction error in [-1, 1] units (x1000 HU for demo-ct's window of 2000 HU / 2).
    Batches are (B, 1, D, H, W), or (B, 1, H, W) with ``spatial_dims`` 2 (the discriminator's dimensions).
    """

    def __init__(self, net: AutoencoderKL, kl_weight: float = 1e-6, adversarial_weight: float = 0.0,
                 spatial_dims: int = 3) -> None:
        self.net = net
        self.kl_weight = kl_weight
        self.adversarial_weight = adversarial_weight
        self.discriminator: PatchDiscriminator | None = None
        if adversarial_weight > 0:
            self.discriminator = PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=3, channels=32, in_channels=1,
                                                    out_channels=1)
            self.adv = PatchAdversarialLoss(criterion="least_squares")

    def modules(self) -> dict[str, torch.nn.Module]:
        """``autoencoder`` (and ``discriminator`` when the adversarial term is on)."""
        mods: dict[str, torch.nn.Module] = {"autoencoder": self.net}
        if self.discriminator is not None:
            mods["discriminator"] = self.discriminator
        return mods

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss of ``batch`` (B, 1, D, H, W) in [-1, 1]; the posterior draw comes from the CPU
        ``generator`` (what ``AutoencoderKL.forward`` does, with the draw made explicit)."""
        z_mu, z_sigma = self.net.encode(batch)
        recon = self.net.decode(z_mu + posterior_noise(z_sigma, generator) * z_sigma)
        loss = F.l1_loss(recon.float(), batch.float()) + self.kl_weight * kl_loss(z_mu.float(), z_sigma.float())
        if self.discriminator is not None:
            # One optimizer for both nets: the generator term sees the discriminator through detached
            # weights (so it only moves the autoencoder); the discriminator term sees detached images.
            d = self.discriminator
            frozen = {k: v.detach() for k, v in d.named_parameters()}
            fake_logits = functional_call(d, frozen, (recon,))[-1]
            g_adv = self.adv(fake_logits, target_is_real=True, for_discriminator=False)
            d_loss = 0.5 * (self.adv(d(recon.detach())[-1], target_is_real=False, for_discriminator=True)
                            + self.adv(d(batch)[-1], target_is_real=True, for_discriminator=True))
            loss = loss + self.adversarial_weight * (g_adv + d_loss)
        return loss

    def val_loss(self, batch: torch.Tensor) -> torch.Tensor:
        """Mean L1 of the mean reconstruction ``D(mu)`` of ``batch`` (B, 1, D, H, W)."""
        return (self.net.reconstruct(batch).float() - batch.float()).abs().mean()


@torch.no_grad()
def encode_stats(net: AutoencoderKL, volumes: torch.Tensor, batch_size: int = 16,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Posterior mean and sigma of every volume, concatenated along channels.

    Args:
        volumes: (N, 1, D, H, W) float32 in [-1, 1] (or images (N, 1, H, W)).

    Returns:
        (N, 2C, d, h, w) (2D: (N, 2C, h, w)) float32 on the CPU: channels [:C] are ``z_mu``, [C:] are ``z_sigma``.
    """
    net.eval()
    out = []
    for i in range(0, len(volumes), batch_size):
        mu, sigma = net.encode(volumes[i : i + batch_size].to(device))
        out.append(torch.cat([mu, sigma], 1).float().cpu())
    return torch.cat(out)


def posterior_noise(sigma: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``sigma``, drawn on the CPU from ``generator`` (None: torch's
    global RNG) and moved to ``sigma``'s device."""
    return torch.randn(sigma.shape, generator=generator, dtype=sigma.dtype).to(sigma.device)


class PosteriorSampler(torch.nn.Module):
    """The encoder as the latent diffusion inferer sees it: ``encode_stage_2_inputs`` draws
    ``z = mu + sigma * eps`` with ``eps`` from :attr:`generator`.

    Two sources of ``(mu, sigma)``: with ``autoencoder`` None, the inputs are (B, 2C, d, h, w) statistics
    from :func:`encode_stats` (the posteriors are precomputed, so the encoder does not run at every
    diffusion step); with an ``AutoencoderKL``, the inputs are images and are encoded (as with
    augmentation). Either way the draw is what ``AutoencoderKL.encode_stage_2_inputs`` does, with its
    randomness made explicit; the owner sets :attr:`generator` before each use.

    With augmentation by flips and 90-degree rotations a training set of N patches yields at most 48 N distinct
    images (voxels permuted, values unchanged), and the frozen encoder maps each to the same posterior every
    time it is drawn. ``memo_bytes`` > 0 therefore keeps the posteriors of images already encoded, keyed by a
    digest of their exact bytes, up to that many bytes (oldest dropped first), so that an augmented diffusion
    step encodes only images it has not met before. The draw is the same as without the memo up to float
    rounding (an image encoded alone or in another batch).
    """

    def __init__(self, autoencoder: AutoencoderKL | None = None, memo_bytes: int = 0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.generator: torch.Generator | None = None
        self.memo_bytes = int(memo_bytes)
        self._memo: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._memo_size = 0
        self.encoded = 0  # images passed through the encoder so far (what the memo saves is visible here)

    def _encode(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.autoencoder is not None
        if self.memo_bytes <= 0:
            self.encoded += len(inputs)
            return self.autoencoder.encode(inputs)
        keys = [hashlib.blake2b(v.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).digest()
                for v in inputs]
        new = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._memo}.items())
        if new:
            with torch.no_grad():
                mu, sigma = self.autoencoder.encode(inputs[[i for _, i in new]])
            self.encoded += len(new)
            for j, (k, _) in enumerate(new):
                stats = torch.cat([mu[j], sigma[j]]).detach()
                self._memo[k] = stats
                self._memo_size += stats.numel() * stats.element_size()
        stats = torch.stack([self._memo[k] for k in keys])
        while self._memo_size > self.memo_bytes and self._memo:
            _, old = self._memo.popitem(last=False)
            self._memo_size -= old.numel() * old.element_size()
        return stats.chunk(2, dim=1)

    def encode_stage_2_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, 2C, d, h, w) statistics, or (B, 1, D, H, W) images with an autoencoder -> (B, C, d, h, w) latents."""
        if self.autoencoder is None:
            mu, sigma = inputs.chunk(2, dim=1)
        else:
            mu, sigma = self._encode(inputs)
        return mu + posterior_noise(sigma, self.generator) * sigma


@torch.no_grad()
def latent_scale_factor(stats: torch.Tensor, seed: int = 0) -> float:
    """1 / std of training latents sampled from their posteriors, so the diffusion model sees unit variance.

    Args:
        stats: (N, 2C, d, h, w) from :func:`encode_stats` on the training volumes.
    """
    g = generator(Stream.LATENT_SCALE, seed)
    mu, sigma = stats.chunk(2, dim=1)
    z = mu + torch.randn(mu.shape, generator=g) * sigma
    return float(1.0 / z.std())
