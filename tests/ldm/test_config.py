"""LDMConfig presets, overrides, YAML round trip and validation errors."""

from __future__ import annotations

import pytest

from memostudy.config import load_yaml, save_yaml
from memostudy.errors import ConfigError
from memostudy.ldm.config import PRESETS, LDMConfig, default_num_samples, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips_through_yaml(name, tmp_path):
    cfg = preset(name)
    assert load_yaml(LDMConfig, save_yaml(cfg, tmp_path / "c.yaml")) == cfg


def test_paper_presets_follow_the_paper():
    for name, shape in (("paper-pccta", (64, 64, 64)), ("paper-mrnet", (256, 256, 32))):
        cfg = preset(name)
        assert cfg.patch_size == shape
        assert cfg.diffusion.loop.batch_size == 10
        assert cfg.diffusion.num_train_timesteps == 1000


def test_cpu_tiny_trains_on_a_subset_with_8cubed_latents():
    cfg = preset("cpu-tiny")
    assert cfg.patch_size == (32, 32, 32) and cfg.latent_shape == (3, 8, 8, 8)
    assert 32 <= cfg.max_train_patches <= 64
    assert not cfg.augment
    assert default_num_samples(cfg, 48) == 192


def test_overrides_are_coerced_and_seeds_fill_stage_loops():
    cfg = preset("cpu-tiny", {"diffusion.loop.epochs": "7", "diffusion.loop.snapshot_epochs": "[2, 5]", "augment": "true", "seed": 5})
    assert cfg.diffusion.loop.epochs == 7 and cfg.diffusion.loop.snapshot_epochs == (2, 5) and cfg.augment is True
    assert cfg.stage_loop("autoencoder").seed == 5 and cfg.stage_loop("diffusion").seed == 6
    assert preset("cpu-tiny", {"diffusion.loop.seed": 3}).stage_loop("diffusion").seed == 3


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cpu-tiny.*paper-pccta.*paper-mrnet"):
        preset("gpu-huge")


def test_patch_size_not_divisible_by_autoencoder_downsampling():
    with pytest.raises(ConfigError, match=r"patch_size \(30, 32, 32\) is not divisible.*4"):
        preset("cpu-tiny", {"patch_size": [30, 32, 32]})


@pytest.mark.parametrize("override, field", [
    ({"autoencoder.norm_num_groups": 12}, "autoencoder.norm_num_groups"),
    ({"autoencoder.attention_levels": [False]}, "autoencoder.attention_levels"),
    ({"diffusion.channels": [32, 64, 64, 64, 64]}, "diffusion UNet's downsampling"),
    ({"diffusion.ema_decay": 1.5}, "diffusion.ema_decay"),
    ({"diffusion.loop.batch_size": 0}, "diffusion.loop: batch_size"),
    ({"autoencoder.loop.snapshot_epochs": [99]}, "autoencoder.loop: snapshot_epochs"),
    ({"sampling.sampler": "euler"}, "sampling.sampler"),
    ({"sampling.eta": 1.5}, "sampling.eta"),
    ({"nonsense": 1}, "unknown config key"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace("(", r"\(")):
        preset("cpu-tiny", override)


def test_sampling_for_resolves_overrides_once_and_checks_ranges():
    cfg = preset("test-16")
    s = cfg.sampling_for()
    assert (s.sampler, s.steps, s.eta, s.batch_size) == ("ddim", 10, 0.0, 4)
    s = cfg.sampling_for(steps=7, eta=1, batch_size=2)
    assert (s.steps, s.eta, s.batch_size) == (7, 1.0, 2) and isinstance(s.eta, float)
    assert cfg.sampling_for(sampler="ddpm", steps=7).steps == cfg.diffusion.num_train_timesteps
    assert cfg.sampling.steps == 10  # the run's own config is not changed
    for bad, field in (({"eta": 1.5}, "sampling.eta"), ({"steps": 0}, "sampling.steps"),
                       ({"sampler": "plms"}, "sampling.sampler"), ({"batch_size": -1}, "sampling.batch_size")):
        with pytest.raises(ConfigError, match=field):
            cfg.sampling_for(**bad)


def test_stage_loops_take_the_seed_streams_of_the_table():
    cfg = preset("test-16", {"seed": 5})
    assert cfg.stage_loop("autoencoder").seed == 5 and cfg.stage_loop("diffusion").seed == 6


def test_3d_configs_and_cache_hashes_are_unchanged_by_2d():
    # hashes of the 3D presets at main c5086fb, before 2D existed: a 3D config must name the same cached models
    from memostudy.config import to_dict
    from memostudy.study.cache import config_hash

    assert {n: config_hash(preset(n)) for n in ("cpu-tiny", "test-16", "paper-pccta", "paper-mrnet")} == {
        "cpu-tiny": "f57a63e979", "test-16": "4674a56699", "paper-pccta": "470e0f9e00", "paper-mrnet": "076ff2e78c"}
    assert "spatial_dims" not in to_dict(preset("cpu-tiny")) and preset("cpu-tiny").spatial_dims == 3


def test_2d_presets_are_2d_throughout():
    for name, shape, latent in (("cpu-tiny-2d", (64, 64), (3, 16, 16)), ("paper-2d", (256, 256), (8, 64, 64)),
                                ("test-32-2d", (32, 32), (2, 16, 16))):
        cfg = preset(name)
        assert cfg.patch_size == shape and cfg.spatial_dims == 2 and cfg.latent_shape == latent
    assert preset("cpu-tiny-2d").data == "demo-ct-2d"
    # the 2D paper preset is the 3D paper LDM in 2D: same nets and schedule, other batch sizes
    p2, p3 = preset("paper-2d"), preset("paper-pccta")
    assert (p2.autoencoder.channels, p2.diffusion.channels, p2.diffusion.loop.lr) == (
        p3.autoencoder.channels, p3.diffusion.channels, p3.diffusion.loop.lr)


@pytest.mark.parametrize("override, message", [
    ({"patch_size": [30, 32]}, r"patch_size \(30, 32\) is not divisible by the autoencoder's downsampling 4"),
    ({"autoencoder.channels": [8] * 6, "autoencoder.attention_levels": [False] * 6},
     r"latent size \(2, 2\) is not divisible by the diffusion UNet's downsampling 4"),
    ({"patch_size": [64]}, r"patch_size must be three positive sizes \(D, H, W\) for volumes or two \(H, W\)"),
    ({"patch_size": [32, 32, 32, 32]}, r"patch_size must be three"),
])
def test_2d_patch_sizes_that_do_not_fit_the_nets_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        preset("cpu-tiny-2d", override)
