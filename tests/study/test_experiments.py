"""The experiments as calls, in-process on the tiny data: one run per setting with one shared detector,
rows labelled by setting, over-training rows per snapshot with losses and sample quality, the figures."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from memostudy.study.cache import SampleSet
from memostudy.study.experiments import (
    _loss_at,
    comparison_figure,
    overtraining_rows,
    run_settings,
    settings_rows,
)
from memostudy.study.memorization import run_memorization
from memostudy.study.quality import reference_quality, sample_quality
from memostudy.study.tables import detector_table


@pytest.mark.slow
def test_each_setting_is_one_run_and_all_share_one_detector(tiny_result, tiny_config) -> None:
    results = run_settings(tiny_config, {"all": {}, "four": {"max_train_patches": 4}})
    assert list(results) == ["all", "four"]
    assert results["all"].run_dir == tiny_result.run_dir  # the setting without overrides is the cached run
    assert results["four"].run_dir != tiny_result.run_dir and len(results["four"].train) == 4
    assert set(results["four"].train.ids) < set(tiny_result.train.ids)
    assert results["all"].detector_path == results["four"].detector_path
    rows = settings_rows(results, "train_patches", {"all": 8, "four": 4})
    assert [(r["train_patches"], r["n_train"]) for r in rows] == [(8, 8), (4, 4)]
    assert [r["setting"] for r in settings_rows(results, "setting")] == ["all", "four"]


@pytest.mark.slow
def test_overtraining_rows_follow_the_snapshots(tiny_config) -> None:
    result = run_memorization(replace(tiny_config, checkpoints=["final", 2]))
    rows = overtraining_rows(result, n_pairs=8)
    assert [r["epoch"] for r in rows] == [2, 3] and [r["checkpoint"] for r in rows] == ["2", "final"]
    losses = result.losses("diffusion").set_index("epoch")
    for r in rows:
        assert r["train_loss"] == pytest.approx(losses.loc[r["epoch"], "train_loss"])
        assert set(r) >= {"val_loss", "ms_ssim", "ms_ssim_reference", "frechet_embedding"}


@pytest.mark.slow
def test_sample_quality_of_the_reference_itself_shows_no_difference(tiny_result) -> None:
    ref = tiny_result.reference
    as_samples = replace(tiny_result, samples={"final": SampleSet("final", ref.volumes, ref.ids, tiny_result.run_dir, 3)})
    q = sample_quality(as_samples, "final", n_pairs=8)
    assert q["ms_ssim"] == pytest.approx(q["ms_ssim_reference"])  # same volumes, same pairs (seed 0)
    assert q["frechet_embedding"] == pytest.approx(0.0, abs=1e-6)
    other = sample_quality(tiny_result, "final", n_pairs=8)
    assert other["frechet_embedding"] > 1e-3 and 0 <= other["ms_ssim"] <= 1
    # the reference part computed once per run gives the same figures as computing it per checkpoint
    once = reference_quality(tiny_result, n_pairs=8)
    assert sample_quality(tiny_result, "final", n_pairs=8, reference=once) == pytest.approx(other)


def test_loss_at_takes_the_last_recorded_value() -> None:
    losses = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_loss": [0.5, np.nan, 0.3, np.nan]})
    assert _loss_at(losses, 2, "val_loss") == 0.5 and _loss_at(losses, 4, "val_loss") == 0.3
    assert math.isnan(_loss_at(losses, 0, "val_loss"))


def test_comparison_figure_draws_the_confidence_intervals() -> None:
    rows = [{"augment": False, "memorized_fraction": 0.5, "memorized_lo": 0.4, "memorized_hi": 0.7,
             "copy_fraction": 0.2, "copy_lo": 0.1, "copy_hi": 0.25}]
    memorized, copies = comparison_figure(rows, "augment").data
    assert list(memorized.y) == [50.0] and list(memorized.x) == ["False"]
    assert memorized.error_y.array[0] == pytest.approx(20.0) and memorized.error_y.arrayminus[0] == pytest.approx(10.0)
    assert copies.error_y.array[0] == pytest.approx(5.0)


def test_fractions_with_their_interval_are_written_one_way(tiny_result) -> None:
    table = detector_table(tiny_result.assessments["final"])
    s = tiny_result.assessments["final"].summary.as_dict()
    assert list(table.index) == ["contrastive (this study)", "pixel correlation (Akbar et al.)",
                                 "block correlation (best half of 8^3 blocks)",
                                 "block correlation, plain or oriented (flips, 90-degree rotations)"]
    lo, hi = s["memorized_fraction_ci"]
    assert table.loc["contrastive (this study)", "training volumes memorized"] == \
        f"{100 * s['memorized_fraction']:.1f}% [{100 * lo:.1f}%, {100 * hi:.1f}%]"
    assert table.loc["pixel correlation (Akbar et al.)", "threshold"] == s["pixel_baseline"]["threshold"]
    assert table.loc["block correlation (best half of 8^3 blocks)", "threshold"] == s["blocks"]["threshold"]
    either = table.loc["block correlation, plain or oriented (flips, 90-degree rotations)"]
    assert either["synthetic volumes that are copies"].startswith(f"{100 * s['blocks_either']['copy_fraction']:.1f}%")
