"""Memorization-aware checkpoint choice: the rule on hand-made rows, and stopping a tiny run at a snapshot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from memostudy.study.checkpoints import choose_checkpoint
from memostudy.study.memorization import run_memorization

ROWS = [  # an over-training run: quality improves while memorization rises
    {"epoch": 100, "memorized_fraction": 0.00, "memorized_hi": 0.05, "frechet_embedding": 9.0, "val_loss": 0.20},
    {"epoch": 200, "memorized_fraction": 0.04, "memorized_hi": 0.12, "frechet_embedding": 6.0, "val_loss": 0.19},
    {"epoch": 400, "memorized_fraction": 0.10, "memorized_hi": 0.20, "frechet_embedding": 4.0, "val_loss": 0.21},
    {"epoch": 600, "memorized_fraction": 0.25, "memorized_hi": 0.40, "frechet_embedding": 3.0, "val_loss": 0.24},
]


def test_choice_is_the_best_quality_under_the_memorization_level() -> None:
    assert choose_checkpoint(ROWS, 0.10)["epoch"] == 400  # 600 has the best quality but memorizes 25 %
    assert choose_checkpoint(ROWS, 0.05)["epoch"] == 200
    assert choose_checkpoint(ROWS, 1.0)["epoch"] == 600
    assert choose_checkpoint(ROWS, 0.10, quality="val_loss")["epoch"] == 200
    # conservative: the upper bound of memorization's CI must stay under the level
    assert choose_checkpoint(ROWS, 0.10, memorization="memorized_hi")["epoch"] == 100
    assert choose_checkpoint(ROWS, 0.0, memorization="memorized_hi") is None
    assert choose_checkpoint(ROWS, 0.10, quality="frechet_embedding", lower_is_better=False)["epoch"] == 100
    with pytest.raises(ValueError, match="level"):
        choose_checkpoint(ROWS, 10)
    with pytest.raises(ValueError, match="unknown memorization measure 'copies'"):
        choose_checkpoint(ROWS, 0.1, memorization="copies")


def test_the_choice_can_bound_the_share_of_samples_that_are_copies() -> None:
    # four snapshots of the long run in the README: training volumes memorized fell while the share of copies rose
    rows = [{"epoch": 800, "memorized_fraction": 0.125, "copy_fraction": 0.219, "frechet_embedding": 0.210},
            {"epoch": 1000, "memorized_fraction": 0.104, "copy_fraction": 0.156, "frechet_embedding": 0.202},
            {"epoch": 1200, "memorized_fraction": 0.083, "copy_fraction": 0.250, "frechet_embedding": 0.173},
            {"epoch": 600, "memorized_fraction": 0.042, "copy_fraction": 0.063, "frechet_embedding": 0.264}]
    assert choose_checkpoint(rows, 0.1)["epoch"] == 1200
    assert choose_checkpoint(rows, 0.1, memorization="copy_fraction")["epoch"] == 600
    assert choose_checkpoint(rows, 0.2, memorization="copy_fraction")["epoch"] == 1000


@pytest.mark.slow
def test_training_stops_at_the_first_snapshot_over_the_level(tiny_config, monkeypatch) -> None:
    import memostudy.study.checkpoints as checkpoints

    ldm = {"diffusion.loop.epochs": 3, "diffusion.loop.snapshot_epochs": [1, 2]}
    cfg = replace(tiny_config, ldm=ldm, checkpoints=[1, 2, "final"], stop_memorization=1.0)
    # a level never exceeded: the hook samples and assesses every snapshot with the real detector, no stop
    res = run_memorization(cfg)
    assert res.stopped_at is None and list(res.stop_checks) == [1, 2] and res.samples["final"].epoch == 3
    assert all(0 <= v <= 1 for v in res.stop_checks.values()) and "-stop" in res.run_dir.name
    # a tiny model copies nothing, so the memorized fraction the rule sees is stubbed: 50 % at every snapshot
    real = checkpoints.assess

    def half_memorized(*args, **kwargs):
        a = real(*args, **kwargs)
        fig = replace(a.summary.contrastive, memorized=replace(a.summary.contrastive.memorized, value=0.5))
        return replace(a, summary=replace(a.summary, detectors=a.summary.detectors | {"contrastive": fig}))

    monkeypatch.setattr(checkpoints, "assess", half_memorized)
    res = run_memorization(replace(cfg, stop_memorization=0.3))
    assert res.stopped_at == 1 and res.stop_checks == {1: 0.5}
    assert list(res.assessments) == ["1", "final"]  # epoch 2 was never reached
    assert res.samples["final"].epoch == 1 and [r["steps"] for r in res.rows()] == [2, 2]  # 8 patches, batch 4
    assert (res.run_dir / "diffusion" / "DONE").read_text().startswith("stopped")
    # the same settings without the stop train to the end, in the plain cache folder
    full = run_memorization(replace(cfg, stop_memorization=None, checkpoints=["final"]))
    assert full.stopped_at is None and full.samples["final"].epoch == 3 and "-stop" not in full.run_dir.name
