"""The orchestration of one study run, in-process on the tiny data: what it returns, that a second run
reuses every cached model and gives the same figures, and the config it validates."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

import memostudy.study.cache as cache
from memostudy.errors import ConfigError
from memostudy.study.config import SamplingPlan, memorization_config
from memostudy.study.memorization import reference_patches, run_memorization


def test_a_run_assesses_the_ldm_training_patches_against_its_samples(tiny_result) -> None:
    r = tiny_result
    assert r.train.ids == json.loads((r.run_dir / "data.json").read_text())["train_ids"] and len(r.train) == 8
    assert len(r.reference) == 8 and not set(r.reference.ids) & set(r.train.ids)
    assert list(r.samples) == list(r.assessments) == ["final"]
    s, a = r.samples["final"], r.assessments["final"]
    assert s.volumes.shape == (4, 1, 16, 16, 16) and s.epoch == 3  # test-16: 0.5 samples per patch, 3 epochs
    assert s.volumes.min() >= -1 and s.volumes.max() <= 1
    assert sorted(a.train_table["train_id"]) == sorted(r.train.ids)
    assert sorted(a.synthetic_table["synthetic_id"]) == sorted(s.ids)
    (row,) = r.rows(setting="main")
    assert row["setting"] == "main" and row["checkpoint"] == "final" and row["epoch"] == 3
    assert (row["n_train"], row["n_reference"], row["n_synthetic"]) == (8, 8, 4)
    assert row["memorized_fraction"] == pytest.approx(a.train_table["memorized"].mean())
    assert row["copy_fraction"] == pytest.approx(a.synthetic_table["is_copy"].mean())
    assert row["memorized_lo"] <= row["memorized_fraction"] <= row["memorized_hi"]
    assert row["detector"] == str(r.detector_path) and r.detector_path.exists()
    assert list(r.losses("diffusion")["epoch"]) == [1, 2, 3]


@pytest.mark.slow
def test_a_second_run_reuses_the_cached_models_and_gives_the_same_figures(tiny_result, tiny_config,
                                                                          monkeypatch) -> None:
    for name in ("train_ldm", "train_detector", "sample_from"):
        monkeypatch.setattr(cache, name, lambda *a, **k: pytest.fail("retrained or resampled"))
    again = run_memorization(tiny_config)
    assert again.run_dir == tiny_result.run_dir and again.detector_path == tiny_result.detector_path
    assert again.samples["final"].folder == tiny_result.samples["final"].folder
    assert again.rows() == tiny_result.rows()


def test_reference_patches_are_capped_evenly(tiny_config) -> None:
    ldm_cfg = tiny_config.ldm_config()
    every = reference_patches(tiny_config, ldm_cfg)
    capped = reference_patches(replace(tiny_config, max_reference=3), ldm_cfg)
    assert capped.ids == [every.ids[0], every.ids[4], every.ids[7]] and capped.volumes.shape[0] == 3


def test_sampling_settings_come_from_the_preset_unless_given(tiny_config) -> None:
    ldm_cfg = tiny_config.ldm_config()
    plan = tiny_config.sampling_plan(ldm_cfg, n_train=8)
    assert plan == SamplingPlan(n=4, sampler=ldm_cfg.sampling.sampler, steps=ldm_cfg.sampling.steps,
                                eta=ldm_cfg.sampling.eta)
    given = replace(tiny_config, num_samples=7, sampler="ddim", steps=5, eta=0.5).sampling_plan(ldm_cfg, 8)
    assert given == SamplingPlan(n=7, sampler="ddim", steps=5, eta=0.5)
    ddpm = replace(tiny_config, sampler="ddpm", steps=5).sampling_plan(ldm_cfg, 8)
    assert ddpm.steps == ldm_cfg.diffusion.num_train_timesteps  # DDPM always runs every step


@pytest.mark.parametrize("params, message", [
    ({"detector_train": "all"}, "detector_train"),
    ({"checkpoints": []}, "checkpoints is empty"),
    ({"eta": 1.5}, "sampling.eta must be in"),
    ({"num_samples": 0}, "num_samples"),
    ({"preset": "no-such"}, "unknown preset"),
    ({"colour": "red"}, "colour"),
])
def test_bad_study_settings_are_config_errors_naming_the_field(params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        memorization_config(**params)


def test_dotted_notebook_parameters_reach_the_nested_configs() -> None:
    cfg = memorization_config(preset="test-16", detector={"epochs": 3}, **{"assessment.percentile": 90.0},
                              ldm={"augment": True})
    assert cfg.detector.epochs == 3 and cfg.assessment.percentile == 90.0
    assert cfg.ldm_config().augment is True and cfg.ldm_config().seed == cfg.seed


@pytest.mark.slow
def test_calibrating_on_autoencoded_reference_changes_only_the_reference_side(tiny_result, tiny_config) -> None:
    ae = run_memorization(replace(tiny_config, calibrate_on="autoencoder"))
    a, b = tiny_result.assessments["final"], ae.assessments["final"]
    assert ae.run_dir == tiny_result.run_dir  # the same LDM, detector and samples: only the calibration differs
    assert a.synthetic_table["similarity"].tolist() == b.synthetic_table["similarity"].tolist()
    assert a.reference_table["similarity"].tolist() != b.reference_table["similarity"].tolist()
    (row,) = ae.rows()
    assert row["calibrate_on"] == "autoencoder" and tiny_result.rows()[0]["calibrate_on"] == "as-is"
    assert row["fdr"] == 0.05 and row["n_bh_copies"] == b.synthetic_table["bh_copy"].sum()
    # the reference's measured smoothness is the autoencoded one (a 3-epoch autoencoder need not make it smoother)
    assert row["reference_roughness"] != tiny_result.rows()[0]["reference_roughness"]


def test_unknown_calibration_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="calibrate_on"):
        memorization_config(calibrate_on="blurred")
