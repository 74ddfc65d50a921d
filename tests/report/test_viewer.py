"""Slice viewers: every slice is in the figure (static HTML), one shared window, planes oriented."""

from __future__ import annotations

import numpy as np

from memostudy.report.viewer import load_labels, pair_viewer, plane_slice, save_labels, slice_viewer


def test_plane_slices_pick_the_right_axis() -> None:
    vol = np.zeros((4, 5, 6), np.float32)
    vol[1, 2, 3] = 1
    assert plane_slice(vol, "axial", 3).shape == (5, 4) and plane_slice(vol, "axial", 3).sum() == 1
    assert plane_slice(vol, "coronal", 2).shape == (6, 4) and plane_slice(vol, "coronal", 2).sum() == 1
    assert plane_slice(vol, "sagittal", 1).shape == (6, 5) and plane_slice(vol, "sagittal", 1).sum() == 1
    assert plane_slice(vol, "axial", 0).sum() == 0


def test_viewer_carries_every_slice_with_a_shared_window() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-1, 1, (8, 8, 8)), rng.uniform(-1, 1, (8, 8, 8))
    fig = pair_viewer(a, b, "t1", "s1", 0.87, window=(-0.5, 0.5))
    assert len(fig.data) == 6
    assert {(t.zmin, t.zmax) for t in fig.data} == {(-0.5, 0.5)}
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 8
    # step k shows slice k of the training volume's axial plane (row 0, col 0) and of the synthetic one
    np.testing.assert_allclose(steps[3].args[0]["z"][0], np.round(plane_slice(a, "axial", 3), 2))
    np.testing.assert_allclose(steps[3].args[0]["z"][3], np.round(plane_slice(b, "axial", 3), 2))
    assert "0.870" in fig.layout.title.text


def test_single_volume_viewer_accepts_channel_first() -> None:
    fig = slice_viewer([np.zeros((1, 6, 6, 6))], ["v"])
    assert len(fig.data) == 3 and len(fig.layout.sliders[0].steps) == 6


def test_labels_roundtrip(tmp_path) -> None:
    labels = {("t2", "s9"): "novel", ("t1", "s3"): "copy"}
    p = save_labels(labels, tmp_path / "labels.csv")
    assert load_labels(p) == labels
    assert p.read_text().splitlines()[1].startswith("t1,s3,copy")
