"""Slice viewers: plotly figures that work in exported static HTML, plus an ipywidgets labeller for JupyterLab.

A 3D volume is shown as three planes with a slider; a 2D image (X, Y) as itself (no slider), several side by
side, oriented like the axial plane of a volume.

The plotly viewers carry every slice in the figure itself (a slider that restyles the heatmaps),
so they page through slices in an HTML report opened offline with no kernel. Slices are stored as
8-bit grey levels of the display window (plotly typed arrays, ``{"dtype": "u1", "bdata": ...}``): one
byte per voxel instead of a float written out as text, which is what keeps a report of a few 32^3
pairs at a few hundred kB instead of megabytes. 8 bits are what a screen shows of a grey colour scale
anyway. The labelling widget needs a running kernel (JupyterLab) and is not part of the HTML.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

PLANES = ("axial", "coronal", "sagittal")


def _as_array(v: np.ndarray | torch.Tensor) -> np.ndarray:
    """A volume (X, Y, Z) or a 2D image (X, Y) from an array with leading singleton axes ((1, X, Y, Z),
    (1, 1, X, Y, Z), (1, X, Y): a 2D image with its channel axis, as in a batch (N, 1, X, Y))."""
    arr = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    arr = np.asarray(arr, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 1 and min(arr.shape[1:]) > 1:  # (1, X, Y): not a volume one voxel thick
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"a viewer needs a 2D image or a 3D volume, got shape {arr.shape}")
    return arr


def image_view(img: np.ndarray) -> np.ndarray:
    """A 2D image (X, Y) oriented for display like the axial plane of a volume (rows are y)."""
    return np.ascontiguousarray(img.T)


def plane_slice(vol: np.ndarray, plane: str, index: int) -> np.ndarray:
    """A 2D cross-section of a (X, Y, Z) volume, oriented for display (rows top to bottom)."""
    if plane == "axial":
        s = vol[:, :, index].T
    elif plane == "coronal":
        s = vol[:, index, :].T[::-1]
    elif plane == "sagittal":
        s = vol[index, :, :].T[::-1]
    else:
        raise ValueError(f"unknown plane {plane!r}; use one of {PLANES}")
    return np.ascontiguousarray(s)


def display_plane(s: np.ndarray, step: int) -> np.ndarray:
    """A plane reduced for display by ``step``: the mean of each ``step`` x ``step`` block of pixels (blocks at
    the far edges padded by repeating the edge). ``step`` 1 returns the plane as it is."""
    if step <= 1:
        return s
    p = np.pad(s, [(0, -n % step) for n in s.shape], mode="edge")
    return p.reshape(p.shape[0] // step, step, p.shape[1] // step, step).mean(axis=(1, 3))


def display_step(shape: Sequence[int], max_side: int | None) -> int:
    """The reduction of :func:`display_plane` that brings a plane of ``shape`` within ``max_side`` pixels
    per side (1: none, or no ``max_side``)."""
    return 1 if not max_side else max(1, -(-max(shape) // max_side))


def _axis_len(vol: np.ndarray, plane: str) -> int:
    return vol.shape[{"axial": 2, "coronal": 1, "sagittal": 0}[plane]]


def to_gray8(s: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Grey levels of ``s`` in a display window: ``window[0]`` -> 0, ``window[1]`` -> 255, clipped, rounded.

    A value ``g`` shown stands for ``window[0] + g * (window[1] - window[0]) / 255`` (within half a step).
    """
    lo, hi = window
    if not hi > lo:
        raise ValueError(f"window must be (min, max) with min < max, got {window}")
    g = np.rint((np.clip(s, lo, hi) - lo) * (255.0 / (hi - lo)))
    return g.astype(np.uint8)


def typed_array(a: np.ndarray) -> dict:
    """A plotly typed-array spec of a uint8 array (``{"dtype": "u1", "bdata": base64, "shape": "r, c"}``).

    plotly.py writes numpy arrays of traces this way itself, but not values inside slider steps; plotly.js
    decodes the spec wherever a data array is expected, restyle arguments included.
    """
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return {"dtype": "u1", "bdata": base64.b64encode(a.tobytes()).decode("ascii"),
            "shape": ", ".join(str(d) for d in a.shape)}


def slice_viewer(
    volumes: Sequence[np.ndarray | torch.Tensor],
    titles: Sequence[str] | None = None,
    window: tuple[float, float] = (-1.0, 1.0),
    height_per_row: int = 260,
    max_side: int | None = None,
    max_steps: int | None = None,
) -> go.Figure:
    """Three orthogonal planes per volume, one row per volume, one slider over the slice position; for 2D
    images, the images side by side in one row (no slider).

    All volumes share the same intensity window so a training volume and its synthetic copy candidate
    are compared on equal terms. The slider moves every plane of every row to the same relative
    position, and works in static HTML (no kernel). Each slice is stored as 8-bit grey levels of the
    window (:func:`to_gray8`), as uint8 typed arrays: 1 byte per voxel in the figure's JSON.

    Args:
        volumes: each (X, Y, Z) or (1, X, Y, Z), e.g. float32 in [-1, 1]; or each a 2D image (X, Y) or
            (1, X, Y) (all of one kind).
        titles: one label per volume (row; per image: column).
        window: display range (min, max) shared by every panel; values outside it show as black / white.
        max_side: show a plane with a side longer than this many voxels averaged over blocks
            (:func:`display_plane`) to at most ``max_side`` pixels per side, its axes still in voxels (the
            panel's title says "1:k"). None: every voxel (the study's reports; the share-safe scan of
            :mod:`memostudy.report.leaks` compares voxels). Why: the audit shows whole volumes of a user's
            folders, and six pairs of 256 x 256 x 32 volumes at every voxel made a 67 MB report.
        max_steps: at most this many slider positions, spread evenly over the slices (None: every slice).

    Returns:
        A plotly Figure; ``layout.meta["display_window"]`` records ``window`` (the share-safe scan reads it).
    """
    vols = [_as_array(v) for v in volumes]
    titles = list(titles) if titles is not None else [f"volume {i}" for i in range(len(vols))]
    lo, hi = float(window[0]), float(window[1])
    if {v.ndim for v in vols} == {2}:
        return image_row(vols, titles, (lo, hi), height_per_row, max_side=max_side)
    if {v.ndim for v in vols} != {3}:
        raise ValueError(f"a viewer shows 2D images or 3D volumes, not both; got shapes {[v.shape for v in vols]}")
    red = {(r, p): display_step(plane_slice(v, p, 0).shape, max_side) for r, v in enumerate(vols) for p in PLANES}
    fig = make_subplots(rows=len(vols), cols=3, horizontal_spacing=0.02, vertical_spacing=0.06,
                        subplot_titles=[f"{t} — {p}" + (f" (1:{red[r, p]})" if red[r, p] > 1 else "")
                                        for r, t in enumerate(titles) for p in PLANES])
    n_steps = min(_axis_len(v, p) for v in vols for p in PLANES)
    if max_steps:
        n_steps = min(n_steps, max_steps)
    mids = {(r, p): _axis_len(v, p) // 2 for r, v in enumerate(vols) for p in PLANES}

    def gray(r: int, p: str, index: int) -> np.ndarray:
        return to_gray8(display_plane(plane_slice(vols[r], p, index), red[r, p]), (lo, hi))

    for r in range(len(vols)):
        for c, p in enumerate(PLANES):
            k = red[r, p]  # x and y in voxels: pixel i of a reduced plane covers voxels k*i to k*i + k - 1
            fig.add_trace(go.Heatmap(z=gray(r, p, mids[(r, p)]), x0=(k - 1) / 2, dx=k, y0=(k - 1) / 2, dy=k,
                                     colorscale="gray", zmin=0, zmax=255, showscale=False,
                                     hovertemplate=f"{titles[r]} {p}<br>x=%{{x}} y=%{{y}}<br>grey level %{{z}} of 255 "
                                                   f"(window {lo:g} to {hi:g})<extra></extra>"),
                          row=r + 1, col=c + 1)
    steps = []
    for k in range(n_steps):
        frac = (k + 0.5) / n_steps
        zs = [typed_array(gray(r, p, min(int(frac * _axis_len(v, p)), _axis_len(v, p) - 1)))
              for r, v in enumerate(vols) for p in PLANES]
        steps.append({"method": "restyle", "label": str(k), "args": [{"z": zs}]})
    fig.update_layout(
        height=height_per_row * len(vols) + 120, margin={"l": 10, "r": 10, "t": 40, "b": 10},
        sliders=[{"active": n_steps // 2, "currentvalue": {"prefix": "slice position "}, "steps": steps,
                  "pad": {"t": 10}}],
        meta={"display_window": [lo, hi]},
    )
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False, scaleanchor=None)
    for i in range(1, len(vols) * 3 + 1):
        fig.update_yaxes(scaleanchor=f"x{i if i > 1 else ''}", row=(i - 1) // 3 + 1, col=(i - 1) % 3 + 1)
    return fig


def image_row(images: Sequence[np.ndarray | torch.Tensor], titles: Sequence[str] | None = None,
              window: tuple[float, float] = (-1.0, 1.0), height: int = 260, max_side: int | None = None) -> go.Figure:
    """2D images side by side in one row, one shared window, as 8-bit grey levels (:func:`to_gray8`).

    Args:
        images: each (X, Y) or (1, X, Y), e.g. float32 in [-1, 1]; shown y upwards like an axial plane.
        titles: one label per image.
        window: display range (min, max) shared by every image.
        height: the row's height in pixels.
        max_side: images with a side longer than this shown averaged to at most this many pixels per side
            (as in :func:`slice_viewer`); None: every pixel.

    Returns:
        A plotly Figure, one heatmap per image; ``layout.meta["display_window"]`` records ``window``.
    """
    imgs = [_as_array(v) for v in images]
    if any(v.ndim != 2 for v in imgs):
        raise ValueError(f"image_row shows 2D images, got shapes {[v.shape for v in imgs]}")
    titles = list(titles) if titles is not None else [f"image {i}" for i in range(len(imgs))]
    lo, hi = float(window[0]), float(window[1])
    red = [display_step(image_view(v).shape, max_side) for v in imgs]
    fig = make_subplots(rows=1, cols=len(imgs), horizontal_spacing=0.02,
                        subplot_titles=[t + (f" (1:{k})" if k > 1 else "") for t, k in zip(titles, red)])
    for c, v in enumerate(imgs):
        k = red[c]
        fig.add_trace(go.Heatmap(z=to_gray8(display_plane(image_view(v), k), (lo, hi)), x0=(k - 1) / 2, dx=k,
                                 y0=(k - 1) / 2, dy=k, colorscale="gray", zmin=0, zmax=255, showscale=False,
                                 hovertemplate=f"{titles[c]}<br>x=%{{x}} y=%{{y}}<br>grey level %{{z}} of 255 "
                                               f"(window {lo:g} to {hi:g})<extra></extra>"),
                      row=1, col=c + 1)
    fig.update_layout(height=height + 80, margin={"l": 10, "r": 10, "t": 40, "b": 10}, meta={"display_window": [lo, hi]})
    fig.update_annotations(font_size=11)  # the titles of narrow side-by-side panels
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    for i in range(1, len(imgs) + 1):
        fig.update_yaxes(scaleanchor=f"x{i if i > 1 else ''}", row=1, col=i)
    return fig


def pair_viewer(train: np.ndarray | torch.Tensor, synthetic: np.ndarray | torch.Tensor, train_id: str,
                synthetic_id: str, similarity: float | None = None, window: tuple[float, float] = (-1.0, 1.0)) -> go.Figure:
    """A training volume above its synthetic copy candidate, same window, one slider (seed 000 Fig. 4); two 2D
    images side by side, training image left."""
    fig = slice_viewer([train, synthetic], [f"train {train_id}", f"synthetic {synthetic_id}"], window=window)
    if similarity is not None:
        fig.update_layout(title=f"{synthetic_id} vs {train_id}: similarity {similarity:.3f}")
    return fig


class LabellingWidget:
    """JupyterLab widget to mark each copy candidate as copy / novel / unsure, saved to a CSV.

    The CSV has columns ``train_id, synthetic_id, label`` and is re-read on start, so labelling
    can stop and resume. :func:`memostudy.detect.metrics` functions compare these labels with the
    detector's decisions (sensitivity / specificity), as the seed papers did with manual annotation.
    """

    LABELS = ("copy", "novel", "unsure")

    def __init__(self, candidates: pd.DataFrame, volumes: dict[str, tuple[np.ndarray, np.ndarray]],
                 path: str | Path, window: tuple[float, float] = (-1.0, 1.0)) -> None:
        import ipywidgets as widgets

        self.candidates = candidates.reset_index(drop=True)
        self.volumes, self.path, self.window = volumes, Path(path), window
        self.labels = load_labels(self.path)
        self.index = widgets.IntSlider(min=0, max=max(len(self.candidates) - 1, 0), description="candidate")
        self.choice = widgets.ToggleButtons(options=self.LABELS, value=None, description="label")
        self.status = widgets.Label()
        self.out = widgets.Output()
        self.index.observe(lambda _: self._show(), names="value")
        self.choice.observe(self._record, names="value")
        self.widget = widgets.VBox([self.index, self.choice, self.status, self.out])
        self._show()

    def _key(self) -> tuple[str, str]:
        row = self.candidates.iloc[self.index.value]
        return str(row["train_id"]), str(row["synthetic_id"])

    def _show(self) -> None:
        from IPython.display import display

        if self.candidates.empty:
            return
        key = self._key()
        self.choice.unobserve(self._record, names="value")
        self.choice.value = self.labels.get(key)
        self.choice.observe(self._record, names="value")
        self.status.value = f"{len(self.labels)} of {len(self.candidates)} labelled; saved to {self.path}"
        self.out.clear_output(wait=True)
        t, s = self.volumes[key[0] + "|" + key[1]]
        with self.out:
            display(pair_viewer(t, s, key[0], key[1], None, self.window))

    def _record(self, change: dict) -> None:
        if change["new"] is None:
            return
        self.labels[self._key()] = change["new"]
        save_labels(self.labels, self.path)
        self.status.value = f"{len(self.labels)} of {len(self.candidates)} labelled; saved to {self.path}"

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def load_labels(path: str | Path) -> dict[tuple[str, str], str]:
    """Read a labels CSV (train_id, synthetic_id, label) into a dict; empty if absent."""
    path = Path(path)
    if not path.exists():
        return {}
    df = pd.read_csv(path, dtype=str)
    return {(r.train_id, r.synthetic_id): r.label for r in df.itertuples()}


def save_labels(labels: dict[tuple[str, str], str], path: str | Path) -> Path:
    """Write labels as CSV (train_id, synthetic_id, label), sorted for stable diffs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"train_id": t, "synthetic_id": s, "label": lab} for (t, s), lab in sorted(labels.items())]
    pd.DataFrame(rows, columns=["train_id", "synthetic_id", "label"]).to_csv(path, index=False)
    return path
