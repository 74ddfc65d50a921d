"""Slice viewers: every slice is in the figure (static HTML), one shared window, planes oriented."""

from __future__ import annotations

import base64
import json

import numpy as np
import plotly.io as pio

from memostudy.report.viewer import load_labels, pair_viewer, plane_slice, save_labels, slice_viewer, to_gray8


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
    assert {(t.zmin, t.zmax) for t in fig.data} == {(0, 255)} and fig.layout.meta["display_window"] == [-0.5, 0.5]
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 8
    # step k shows slice k of the training volume's axial plane (row 0, col 0) and of the synthetic one
    np.testing.assert_array_equal(_decode(steps[3].args[0]["z"][0]), to_gray8(plane_slice(a, "axial", 3), (-0.5, 0.5)))
    np.testing.assert_array_equal(_decode(steps[3].args[0]["z"][3]), to_gray8(plane_slice(b, "axial", 3), (-0.5, 0.5)))
    assert "0.870" in fig.layout.title.text


def _decode(spec: dict) -> np.ndarray:
    assert spec["dtype"] == "u1"
    shape = [int(d) for d in spec["shape"].split(",")]
    return np.frombuffer(base64.b64decode(spec["bdata"]), np.uint8).reshape(shape)


def test_gray_levels_map_the_window_to_0_255() -> None:
    v = np.array([-2.0, -1.0, -0.999, 0.0, 0.5, 1.0, 3.0])
    np.testing.assert_array_equal(to_gray8(v, (-1.0, 1.0)), [0, 0, 0, 128, 191, 255, 255])
    # a level g stands for lo + g * (hi - lo) / 255, within half a step
    x = np.linspace(-1, 1, 1001)
    assert np.abs(-1 + to_gray8(x, (-1.0, 1.0)).astype(float) * 2 / 255 - x).max() <= 1 / 255 + 1e-12


def test_every_frame_is_one_byte_per_voxel_in_the_figure_json() -> None:
    """Bound on the viewer's encoding: a frame of an R x C plane costs at most base64 of R*C bytes plus a
    small fixed overhead in the JSON (it was ~20 characters per voxel as float text)."""
    rng = np.random.default_rng(1)
    vol = rng.uniform(-1, 1, (32, 32, 32)).astype(np.float32)
    text = pio.to_json(pair_viewer(vol, vol[::-1], "t", "s", 0.5))
    frames = 2 * 3 * (32 + 1)  # 6 panels, 32 slider steps plus the initial traces
    per_frame = (len(text) - len(pio.to_json(pair_viewer(vol[:1, :1, :1], vol[:1, :1, :1], "t", "s", 0.5)))) / frames
    assert per_frame <= 32 * 32 * 4 / 3 + 200, per_frame  # base64 of 1024 bytes, plus keys and slider steps
    assert json.loads(text)["layout"]["sliders"][0]["steps"][0]["args"][0]["z"][0]["dtype"] == "u1"


def test_single_volume_viewer_accepts_channel_first() -> None:
    fig = slice_viewer([np.zeros((1, 6, 6, 6))], ["v"])
    assert len(fig.data) == 3 and len(fig.layout.sliders[0].steps) == 6


def test_labels_roundtrip(tmp_path) -> None:
    labels = {("t2", "s9"): "novel", ("t1", "s3"): "copy"}
    p = save_labels(labels, tmp_path / "labels.csv")
    assert load_labels(p) == labels
    assert p.read_text().splitlines()[1].startswith("t1,s3,copy")


def test_2d_images_are_shown_side_by_side_without_a_slider() -> None:
    import pytest
    import torch

    rng = np.random.default_rng(2)
    a, b = rng.uniform(-1, 1, (5, 7)).astype(np.float32), rng.uniform(-1, 1, (5, 7)).astype(np.float32)
    fig = pair_viewer(torch.from_numpy(a)[None], b, "t1", "s1", 0.9, window=(-0.5, 0.5))  # (1, X, Y) as in a batch
    assert len(fig.data) == 2 and not fig.layout.sliders and fig.layout.meta["display_window"] == [-0.5, 0.5]
    # the figure's data are the images (training left), shown like an axial plane: (X, Y) -> rows are y
    np.testing.assert_array_equal(np.asarray(fig.data[0].z), to_gray8(a.T, (-0.5, 0.5)))
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), to_gray8(b.T, (-0.5, 0.5)))
    assert fig.data[0].xaxis == "x" and fig.data[1].xaxis == "x2" and fig.data[0].yaxis == "y" and fig.data[1].yaxis == "y2"
    assert fig.layout.xaxis.domain[1] <= fig.layout.xaxis2.domain[0]  # side by side, one row
    assert "0.900" in fig.layout.title.text
    vol = np.zeros((4, 4, 4), np.float32)
    a3 = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="not both"):
        slice_viewer([vol, a3])


def test_a_2d_image_is_the_axial_plane_of_a_volume_of_one_slice() -> None:
    img = np.random.default_rng(3).uniform(-1, 1, (6, 4)).astype(np.float32)
    fig2d, fig3d = slice_viewer([img]), slice_viewer([img[:, :, None]])
    np.testing.assert_array_equal(np.asarray(fig2d.data[0].z), np.asarray(fig3d.data[0].z))


def test_a_2d_viewer_is_self_contained_html() -> None:
    html = pair_viewer(np.zeros((6, 6)), np.ones((6, 6)), "t", "s").to_html(include_plotlyjs=True, full_html=True)
    assert "<script src=\"http" not in html and '"dtype":"u1"' in html.replace(" ", "")


def test_large_planes_are_shown_as_block_means_with_their_axes_in_voxels() -> None:
    rng = np.random.default_rng(2)
    vol = rng.uniform(-1, 1, (300, 260, 20)).astype(np.float32)  # (X, Y, Z): axial planes are 260 x 300
    fig = slice_viewer([vol], ["v"], max_side=128, max_steps=8)
    axial = fig.data[0]
    assert axial.dx == axial.dy == 3 and axial.x0 == axial.y0 == 1  # pixel i covers voxels 3i to 3i + 2
    want = plane_slice(vol, "axial", 10)
    want = np.pad(want, ((0, 1), (0, 0)), mode="edge").reshape(87, 3, 100, 3).mean(axis=(1, 3))
    np.testing.assert_array_equal(np.asarray(axial.z), to_gray8(want, (-1.0, 1.0)))
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 8  # 20 slices, at most 8 positions
    assert all(max(_decode(z).shape) <= 128 for step in steps for z in step.args[0]["z"])
    assert "(1:3)" in fig.layout.annotations[0].text
    # coronal planes are 20 x 300: reduced by 3 as well (the longer side decides); without max_side every voxel
    assert _decode(steps[0].args[0]["z"][1]).shape == (7, 100)
    assert np.asarray(slice_viewer([vol], ["v"]).data[0].z).shape == (260, 300)


def test_large_2d_images_are_reduced_the_same_way() -> None:
    img = np.random.default_rng(3).uniform(-1, 1, (512, 200)).astype(np.float32)
    fig = slice_viewer([img, img], ["a", "b"], max_side=128)
    assert np.asarray(fig.data[0].z).shape == (50, 128) and fig.data[0].dx == 4
    assert "(1:4)" in fig.layout.annotations[0].text
