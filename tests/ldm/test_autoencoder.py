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


def test_posterior_memo_encodes_each_distinct_image_once_and_draws_as_without_it():
    torch.manual_seed(0)
    ae = build_autoencoder(preset("test-16").autoencoder).eval().requires_grad_(False)
    x = phantom_volumes(3, size=16)
    flipped = torch.flip(x, dims=[-1])
    plain, memo = PosteriorSampler(ae), PosteriorSampler(ae, memo_bytes=2**20)
    batches = [torch.cat([x[:2], flipped[:1]]), torch.cat([x[1:], flipped[:1], x[:1]]), x[[2, 2]]]
    for batch in batches:
        plain.generator, memo.generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(memo.encode_stage_2_inputs(batch), plain.encode_stage_2_inputs(batch),
                                   rtol=1e-4, atol=1e-5)
    assert plain.encoded == 3 + 4 + 2 and memo.encoded == 4  # x[0], x[1], x[2], flipped[0]
    # a memo too small for one more posterior keeps only the newest ones, and still answers every image
    per_image = 2 * 2 * 8**3 * 4  # (mu, sigma) of 2 x 8^3 float32 latents
    small = PosteriorSampler(ae, memo_bytes=2 * per_image)
    for batch in batches:
        small.encode_stage_2_inputs(batch)
    assert len(small._memo) <= 2 and small._memo_size <= 2 * per_image and small.encoded > 4


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
