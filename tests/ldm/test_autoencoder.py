"""Autoencoder stage: KL term, posterior caching, latent scale factor, optional adversarial term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.data.phantom import phantom_volume, phantom_volumes
from memostudy.ldm.autoencoder import (
    AutoencoderTask,
    PosteriorSampler,
    build_autoencoder,
    encode_stats,
    kl_loss,
    latent_scale_factor,
)
from memostudy.ldm.config import preset


def test_kl_is_zero_for_the_prior_and_matches_the_closed_form():
    mu, sigma = torch.zeros(2, 3, 2, 2, 2), torch.ones(2, 3, 2, 2, 2)
    assert float(kl_loss(mu, sigma)) == 0.0
    # one latent voxel: KL(N(1, 2^2) || N(0, 1)) = 0.5 * (1 + 4 - ln 4 - 1)
    got = kl_loss(torch.ones(1, 1, 1, 1, 1), torch.full((1, 1, 1, 1, 1), 2.0))
    assert abs(float(got) - 0.5 * (4 - torch.log(torch.tensor(4.0)).item())) < 1e-6


def test_encode_stats_and_posterior_sampler_shapes():
    torch.manual_seed(0)
    cfg = preset("test-16")
    ae = build_autoencoder(cfg.autoencoder)
    stats = encode_stats(ae, phantom_volumes(3, size=16), batch_size=2)
    assert stats.shape == (3, 2 * cfg.autoencoder.latent_channels, 8, 8, 8)
    assert (stats[:, 2:] > 0).all()  # sigma half
    z = PosteriorSampler().encode_stage_2_inputs(stats)
    assert z.shape == (3, 2, 8, 8, 8)


def test_latent_scale_factor_gives_unit_std():
    torch.manual_seed(0)
    stats = torch.cat([3 * torch.randn(50, 2, 4, 4, 4), torch.full((50, 2, 4, 4, 4), 1e-3)], 1)
    s = latent_scale_factor(stats)
    assert abs(s - 1 / 3) < 0.01


@pytest.mark.slow
def test_adversarial_term_trains_both_nets_and_is_off_by_default():
    torch.manual_seed(0)
    cfg = preset("test-16")
    assert cfg.autoencoder.adversarial_weight == 0 and set(AutoencoderTask(build_autoencoder(cfg.autoencoder)).modules()) == {"autoencoder"}
    task = AutoencoderTask(build_autoencoder(cfg.autoencoder), adversarial_weight=0.1)
    task.loss(phantom_volumes(1, size=32)).backward()  # the 3-layer PatchGAN needs 32^3
    for name, m in task.modules().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters()), name


def test_2d_autoencoder_and_discriminator_take_images():
    torch.manual_seed(0)
    cfg = preset("test-32-2d")
    task = AutoencoderTask(build_autoencoder(cfg.autoencoder, 2), adversarial_weight=0.1, spatial_dims=2)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([phantom_volume((16, 16), rng) for _ in range(2)])).unsqueeze(1)  # (2, 1, 16, 16)
    mu, sigma = task.net.encode(x)
    assert mu.shape == (2, cfg.autoencoder.latent_channels, 8, 8) and sigma.shape == mu.shape
    assert task.net.reconstruct(x).shape == x.shape
    task.loss(x.repeat(1, 1, 2, 2)).backward()  # the 3-layer PatchGAN needs 32 x 32
    assert all(any(p.grad is not None for p in m.parameters()) for m in task.modules().values())
    assert encode_stats(task.net, x).shape == (2, 2 * cfg.autoencoder.latent_channels, 8, 8)
