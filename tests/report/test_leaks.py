"""Leak check: training slices and runs are found in exported plotly HTML, other volumes and constants are not."""

from __future__ import annotations

import base64
import html as html_lib
import json

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from scipy.ndimage import gaussian_filter

from memostudy.report.leaks import TRANSFORMS, decoded_arrays, describe, find_array_leaks, find_volume_leaks
from memostudy.report.viewer import pair_viewer, plane_slice, slice_viewer


def smooth_volumes(n: int, seed: int, size: int = 16) -> np.ndarray:
    """(n, size, size, size) float32 in [-1, 1]: smoothed noise, so neighbouring slices look alike."""
    rng = np.random.default_rng(seed)
    v = np.stack([gaussian_filter(rng.standard_normal((size, size, size)), 2.0) for _ in range(n)])
    return (v / np.abs(v).max(axis=(1, 2, 3), keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    vols = smooth_volumes(4, seed=0)
    vols[0, :, :, :3] = -1.0  # air: axial slices 0-2 of volume 0 are constant
    return vols


def test_slice_viewer_of_a_training_volume_is_found(train) -> None:
    html = slice_viewer([train[2]], ["train 2"]).to_html(include_plotlyjs=False)
    leaks = find_volume_leaks(html, torch.from_numpy(train)[:, None])  # (N, 1, D, H, W) tensor
    assert {k.volume for k in leaks} == {2}
    assert {k.axis for k in leaks} == {0, 1, 2}
    # trace 0 is the axial plane at the middle: vol[:, :, 8].T, so slice == a.T
    first = [k for k in leaks if k.array == 0]
    assert [(k.axis, k.index, k.transform, k.plane) for k in first] == [(2, (8,), "a.T", "axial")]
    assert max(k.max_abs_diff for k in leaks) <= 1 / 255 + 1e-5  # half a grey step of the window (-1, 1)
    # every slider step (8-bit typed arrays inside the slider's restyle arguments) leaks too:
    # 3 traces + 16 steps x 3 planes
    assert len({k.array for k in leaks}) == 3 + 16 * 3
    assert "training volume(s): 2;" in describe(leaks)


def test_synthetic_volume_is_not_a_leak(train) -> None:
    synthetic = smooth_volumes(1, seed=1)[0]
    html = slice_viewer([synthetic]).to_html(include_plotlyjs=False)
    arrays = decoded_arrays(html)
    assert len(arrays) == 3 + 16 * 3 and {a.dtype for a in arrays} == {np.dtype(np.uint8)}
    assert find_volume_leaks(html, train) == []
    assert describe([]) == "no training voxels found in the report"
    # a pair figure leaks its training row only, and plotly.js inlined in the page adds no false alarm
    html = pair_viewer(train[1], synthetic, "t1", "s1").to_html(include_plotlyjs=True)
    leaks = find_volume_leaks(html, train)
    frames = [i for i, a in enumerate(decoded_arrays(html)) if a.dtype == np.uint8]  # plotly.js has number lists
    assert len(frames) == 6 + 16 * 6 and {k.volume for k in leaks} == {1}
    # frames come trace by trace, then step by step: the first 3 of every 6 are the training row
    assert {k.array for k in leaks} == {i for j, i in enumerate(frames) if j % 6 < 3}


def test_training_slice_shown_at_8_bits_in_a_narrow_window_is_found(train) -> None:
    from memostudy.report.leaks import display_windows
    from memostudy.report.viewer import to_gray8

    html = slice_viewer([train[3]], window=(-0.3, 0.3)).to_html(include_plotlyjs=False)
    assert display_windows(html) == [(-1.0, 1.0), (-0.3, 0.3)]
    assert np.mean(np.abs(train[3]) > 0.3) > 0.1  # the window clips voxels: read as wildcards
    leaks = find_volume_leaks(html, train)
    assert {k.volume for k in leaks} == {3} and len({k.array for k in leaks}) == 3 + 16 * 3
    # a plain 8-bit heatmap (default window, no declaration) of a training slice is found too
    g = to_gray8(plane_slice(train[0], "sagittal", 9), (-1.0, 1.0))
    leaks = find_volume_leaks(go.Figure(go.Heatmap(z=g)).to_html(include_plotlyjs=False), train)
    assert [(k.volume, k.axis, k.index, k.transform) for k in leaks] == [(0, 0, (9,), "a.T[:, ::-1]")]
    # and the same grey levels read through the wrong window are no leak
    assert find_array_leaks([g], train, windows=[(-0.5, 2.0)]) == []


def test_transposed_and_flipped_slice_in_a_plain_heatmap_is_found(train) -> None:
    s = train[1][:, 5, :]
    shown = np.round(s.T[::-1, ::-1], 2)
    html = go.Figure(go.Heatmap(z=shown)).to_html(include_plotlyjs=False)
    leaks = find_volume_leaks(html, train)
    assert [(k.volume, k.axis, k.index, k.shape) for k in leaks] == [(1, 1, (5,), (16, 16))]
    np.testing.assert_allclose(TRANSFORMS[leaks[0].transform](shown), s, atol=0.006)


def test_masked_slice_is_found_on_its_finite_values(train) -> None:
    shown = np.round(plane_slice(train[3], "coronal", 6), 2).astype(np.float64)
    shown[:5] = np.nan  # masked background, written as NaN in the typed array
    leaks = find_volume_leaks(go.Figure(go.Heatmap(z=shown)).to_html(include_plotlyjs=False), train)
    assert [(k.volume, k.axis, k.index) for k in leaks] == [(3, 1, (6,))]


def test_constant_background_slice_is_not_a_leak(train) -> None:
    air = np.round(train[0][:, :, 1], 2)
    assert np.all(air == -1.0)
    html = go.Figure(go.Heatmap(z=air)).to_html(include_plotlyjs=False)
    assert find_volume_leaks(html, train) == []
    # only the std rule keeps it out: without it the air matches volume 0's constant slices
    assert {(k.volume, k.axis) for k in find_volume_leaks(html, train, min_std=0.0)} == {(0, 2)}


def test_plain_json_lists_are_decoded_and_checked(train) -> None:
    s = np.round(train[2][7], 2)
    profile = [round(0.05 * i - 0.5, 2) for i in range(20)]
    text = (f'<script>Plotly.newPlot("d", [{{"z": {json.dumps(s.tolist())}, "y": {json.dumps(profile)}, '
            f'"x": [1, 2, 3]}}])</script>')
    arrays = decoded_arrays(text)
    assert [a.shape for a in arrays] == [(16, 16), (20,)]  # [1, 2, 3] is too short to be an array
    np.testing.assert_array_equal(arrays[0], s)
    np.testing.assert_allclose(arrays[1], profile)
    leaks = find_volume_leaks(text, train)
    assert [(k.array, k.volume, k.axis, k.index, k.transform) for k in leaks] == [(0, 2, 0, (7,), "a")]


def test_typed_arrays_in_any_key_order_and_escaped() -> None:
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    b = np.array([0.27, -0.46, -0.92, -0.97])  # its base64 holds "/"
    a64 = base64.b64encode(a.tobytes()).decode()
    b64 = base64.b64encode(b.tobytes()).decode().replace("/", "\\u002f")  # plotly escapes "/" in its JSON
    obj_a = '{"shape":"2, 3","bdata":"' + a64 + '","dtype":"i2"}'
    obj_b = '{"dtype":"f8","bdata":"' + b64 + '"}'
    assert "\\u002f" in obj_b
    arrays = decoded_arrays(f"<p>{obj_a}</p><iframe srcdoc='{html_lib.escape(obj_b)}'></iframe>")
    assert len(arrays) == 2
    np.testing.assert_array_equal(arrays[0], a)
    assert arrays[0].dtype == np.int16
    np.testing.assert_array_equal(arrays[1], b)


def test_line_profile_along_a_row_is_found_reversed(train) -> None:
    row = np.round(train[3][4, 7, ::-1], 2)  # 16 values along axis 2, shown last voxel first
    leaks = find_volume_leaks(go.Figure(go.Scatter(y=row)).to_html(include_plotlyjs=False), train)
    assert [(k.kind, k.volume, k.axis, k.index, k.transform) for k in leaks] == [("run", 3, 2, (4, 7, 0), "reversed")]


def test_volumes_must_be_4d_or_channel_first(train) -> None:
    with pytest.raises(ValueError, match="N, 1, D, H, W"):
        find_volume_leaks("", train[0])


def test_each_figure_of_a_page_is_scanned_apart():
    import plotly.graph_objects as go

    from memostudy.report.leaks import figure_texts
    from memostudy.report.page import html_page

    figs = [go.Figure(go.Heatmap(z=[[i, 1], [2, 3]])) for i in range(3)]
    page = html_page("p", [(f"f{i}", f) for i, f in enumerate(figs)])
    with_arrays = [t for t in figure_texts(page) if '"z"' in t]
    assert len(with_arrays) == 3  # one text per figure, so images of different figures are not pooled


def smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 1, size, size) float32 in [-1, 1]: smoothed noise, 2D images as in a 2D data set."""
    rng = np.random.default_rng(seed)
    v = np.stack([gaussian_filter(rng.standard_normal((size, size)), 2.0) for _ in range(n)])
    return torch.from_numpy((v / np.abs(v).max(axis=(1, 2), keepdims=True)).astype(np.float32))[:, None]


def test_2d_training_images_in_a_pair_viewer_are_found_exactly() -> None:
    train, synthetic = smooth_images(4, seed=0), smooth_images(1, seed=1)[0]
    html = pair_viewer(train[1], synthetic, "t1", "s1").to_html(include_plotlyjs=False)
    leaks = find_volume_leaks(html, train)  # (N, 1, H, W): images one slice thick
    assert [(k.array, k.volume, k.axis, k.transform) for k in leaks] == [(0, 1, 0, "a.T")]
    assert find_volume_leaks(slice_viewer([synthetic]).to_html(include_plotlyjs=False), train) == []


def test_a_2d_near_copy_shown_once_fails_the_similarity_scan() -> None:
    from memostudy.report.leaks import calibrate_similarity, find_similar_slices

    train, held = smooth_images(4, seed=0), smooth_images(3, seed=5)
    min_frames = calibrate_similarity(held, train)
    assert min_frames == 1  # no held-out image looks like a training image: one similar image is enough
    near_copy = train[2, 0].flip(0) * 0.8 + 0.05  # flipped, contrast and brightness changed: not voxel-exact
    html = slice_viewer([near_copy]).to_html(include_plotlyjs=False)
    assert find_volume_leaks(html, train) == []
    found = find_similar_slices(html, train, min_frames)
    assert [f.volume for f in found] == [2] and found[0].ncc > 0.99
    assert find_similar_slices(slice_viewer([held[0]]).to_html(include_plotlyjs=False), train, min_frames) == []
