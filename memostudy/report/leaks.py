"""Leak check for shared reports: does an HTML report carry voxels of a training volume?

A report exported for collaborators in share-safe mode must hold no voxel of any training volume.
Plotly figures inline their data in the HTML, so a slice viewer of a training volume puts whole
slices in the file even when nobody looks at them. This module reads every numeric array out of the
HTML text (:func:`decoded_arrays`) and compares them with the training volumes
(:func:`find_volume_leaks`).

What counts as a leak:

- a 2D array (at least ``min_values`` finite values) equal, within ``atol`` at every value, to an
  axis-aligned slice of a volume under any of the 8 flips/transposes of a 2D array (viewers
  transpose and flip slices for display, see :func:`memostudy.report.viewer.plane_slice`). A 1D array whose
  length is a multiple of a slice's size is also read as flattened slices (``go.Volume`` values,
  hand-flattened images);
- a 1D array (at least ``min_run`` finite values) equal, within ``atol``, to a contiguous run of
  voxels along any axis of a volume, forward or reversed (a line profile through a volume). Only
  1D arrays are searched this way, not the rows of 2D arrays (that would be one search per row).

NaN entries (``null`` in JSON, masked backgrounds) are wildcards: only finite values are compared.

8-bit arrays (typed ``u1``, what :func:`memostudy.report.viewer.slice_viewer` writes: grey levels 0-255 of a
display window) are read back into voxel values through every display window the HTML declares
(``"display_window": [lo, hi]`` in a figure's ``layout.meta``) and the default window (-1, 1):
``lo + g * (hi - lo) / 255``, once as they are and once with the clipped levels 0 and 255 as wildcards
(a window narrower than the data clips voxels). ``atol`` is raised to half a grey step of the widest
window when such arrays are present.

Copies that are not voxel-exact (flipped, blurred, noisy, rescaled) are found by a second scan beside this
one, :func:`find_similar_slices` (normalised cross-correlation of every embedded image with the training
slices; see the comment above :data:`SLICE_NCC_THRESHOLD`).

Not detected by the exact scan: crops or zooms of a slice (a 2D array smaller than the slice), slices resampled, or
rescaled before display other than by a declared window, oblique slices, images encoded as PNG, and ipywidgets binary buffers.

Near-constant arrays are never leaks: an array or slice whose standard deviation is below
``min_std`` (an all -1.0 background slice) would match the air of any volume, synthetic ones
included, and says nothing about a patient. They are skipped on both sides.

Speed: slices are compared through a matrix product (GEMM) of squared distances
``||a||^2 + ||b||^2 - 2 a.b`` on a random orthonormal projection of the flattened arrays to
64 dimensions. An orthonormal projection never lengthens a vector, so a pair within
``atol`` everywhere (squared distance <= n * atol^2) always passes the projected test: the prefilter
can give false candidates, never miss a true one. Candidates then get the exact max-abs check.
Runs are found from the voxel values nearest the query's rarest value (a sorted index of all voxels),
then pruned one value at a time.
"""

from __future__ import annotations

import base64
import html as html_lib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# viewer plane (memostudy.report.viewer reads a volume as (X, Y, Z)) shown for a slice across each axis
_PLANE_OF_AXIS = {0: "sagittal", 1: "coronal", 2: "axial"}

# plotly typed arrays (plotly.py >= 6): little-endian, as plotly.js decodes them
_DTYPES = {"f4": "<f4", "f8": "<f8", "i1": "i1", "i2": "<i2", "i4": "<i4", "u1": "u1", "u1c": "u1",
           "u2": "<u2", "u4": "<u4"}

# the 8 symmetries of a 2D array; a leak's ``transform`` is the key ``t`` with slice == t(embedded)
TRANSFORMS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "a": lambda a: a,
    "a[::-1]": lambda a: a[::-1],
    "a[:, ::-1]": lambda a: a[:, ::-1],
    "a[::-1, ::-1]": lambda a: a[::-1, ::-1],
    "a.T": lambda a: a.T,
    "a.T[::-1]": lambda a: a.T[::-1],
    "a.T[:, ::-1]": lambda a: a.T[:, ::-1],
    "a.T[::-1, ::-1]": lambda a: a.T[::-1, ::-1],
}

_PROJ_DIM = 64          # projected length for the GEMM prefilter
_QUERY_CHUNK = 4096     # query rows per distance block
_LIB_ROWS = 4096        # library slices per block (bounds the copy of slices in memory)

_BDATA_OBJ = re.compile(r'\{[^{}]*"bdata"[^{}]*\}')
_NUM = r"(?:-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|null)"
_NUM_RE = re.compile(_NUM)
_LIST1 = rf"\[\s*{_NUM}(?:\s*,\s*{_NUM})*\s*\]"
_LIST1_RE = re.compile(_LIST1)
_LIST2_RE = re.compile(rf"\[\s*{_LIST1}(?:\s*,\s*{_LIST1})*\s*\]")
_MIN_LIST = 16
_WINDOW_RE = re.compile(rf'"display_window"\s*:\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*\]')
DEFAULT_WINDOW = (-1.0, 1.0)  # memostudy.report.viewer's default display window


@dataclass(frozen=True)
class Leak:
    """One embedded array that reproduces voxels of a training volume.

    Attributes:
        array: index of the array in :func:`decoded_arrays` of the same HTML.
        shape: that array's shape as embedded.
        volume: index of the training volume (first axis of ``volumes``).
        axis: volume axis (0, 1, 2 of (D, H, W)); for a slice the axis it cuts across, for a run the
            axis it runs along.
        index: for a slice ``(k,)``, its index along ``axis``; for a run ``(d, h, w)``, the voxel it
            starts at (lowest index along ``axis``).
        transform: for a slice, a key of :data:`TRANSFORMS` with ``slice == TRANSFORMS[t](embedded)``
            (e.g. ``"a.T"`` for an axial plane of :func:`memostudy.report.viewer.slice_viewer`); for a run,
            ``"forward"`` or ``"reversed"``.
        max_abs_diff: largest |embedded - voxel| over the compared (finite) values.
    """

    array: int
    shape: tuple[int, ...]
    volume: int
    axis: int
    index: tuple[int, ...]
    transform: str
    max_abs_diff: float

    @property
    def kind(self) -> str:
        """``"slice"`` or ``"run"``."""
        return "slice" if len(self.index) == 1 else "run"

    @property
    def plane(self) -> str:
        """Plane name of :mod:`memostudy.report.viewer` for a slice across :attr:`axis` (volume read as (X, Y, Z))."""
        return _PLANE_OF_AXIS[self.axis]


def decoded_arrays(html: str) -> list[np.ndarray]:
    """Every numeric array embedded in an HTML (or JSON) text, in document order.

    Reads plotly typed arrays (``{"dtype": "f4", "bdata": "<base64>", "shape": "32, 32"}``, keys in
    any order, shape absent = 1D; what plotly >= 6 writes for numpy data) and plain JSON lists of at
    least 16 numbers (``null`` read as NaN); a list of equal-length number lists is one 2D array, so
    a 3D nested list gives its 2D sub-lists. Typed arrays are also looked for in HTML-escaped text
    (an iframe ``srcdoc``) and in JSON escaped once more inside a string (``\\"bdata\\"``).

    Args:
        html: the report's text.

    Returns:
        Arrays as decoded: typed arrays keep their dtype, lists are float64.
    """
    found: list[tuple[int, np.ndarray]] = []
    seen: set[tuple[str, str, str]] = set()
    views = [html]
    if "&quot;bdata&quot;" in html:
        views.append(html_lib.unescape(html))
    if '\\"bdata\\"' in html:
        views.append(re.sub(r'\\(["\\/])', r"\1", html))
    for v, text in enumerate(views):
        for m in _BDATA_OBJ.finditer(text):
            arr = _decode_typed(m.group(), seen, skip_seen=v > 0)
            if arr is not None:
                found.append((m.start() + v * len(html), arr))
    taken: list[tuple[int, int]] = []
    for m in _LIST2_RE.finditer(html):
        if m.group().count(",") + 1 < _MIN_LIST:
            continue
        rows = [_numbers(r) for r in _LIST1_RE.findall(m.group())]
        if len({len(r) for r in rows}) == 1 and len(rows) * len(rows[0]) >= _MIN_LIST:
            found.append((m.start(), np.array(rows, dtype=np.float64)))
            taken.append(m.span())
        # ragged nested lists: their rows are read below as 1D lists
    taken_starts = np.array([s for s, _ in taken], dtype=np.int64)
    taken_ends = np.array([e for _, e in taken], dtype=np.int64)
    for m in _LIST1_RE.finditer(html):
        i = np.searchsorted(taken_starts, m.start(), side="right") - 1
        if i >= 0 and m.end() <= taken_ends[i]:
            continue
        if m.group().count(",") + 1 < _MIN_LIST:
            continue
        values = _numbers(m.group())
        if len(values) >= _MIN_LIST:
            found.append((m.start(), np.array(values, dtype=np.float64)))
    found.sort(key=lambda x: x[0])
    return [a for _, a in found]


def _numbers(text: str) -> list[float]:
    """The numbers of a matched list, ``null`` as NaN (tolerates JS literals such as ``01``)."""
    return [float("nan") if t == "null" else float(t) for t in _NUM_RE.findall(text)]


def _decode_typed(text: str, seen: set[tuple[str, str, str]], skip_seen: bool) -> np.ndarray | None:
    """One plotly typed-array object -> ndarray, or None if it is not one (or ``skip_seen`` and already read)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    dtype, data, shape = obj.get("dtype"), obj.get("bdata"), obj.get("shape")
    if dtype not in _DTYPES or not isinstance(data, str):
        return None
    key = (dtype, data, str(shape))
    if skip_seen and key in seen:  # the same array read again from an escaped view of the text
        return None
    seen.add(key)
    try:
        arr = np.frombuffer(base64.b64decode(data), dtype=_DTYPES[dtype])
        if shape is not None and shape != "":
            dims = [shape] if isinstance(shape, int) else shape
            if isinstance(dims, str):
                dims = [int(s) for s in dims.split(",")]
            arr = arr.reshape([int(d) for d in dims])
    except (ValueError, TypeError):
        return None
    return arr


def display_windows(html: str) -> list[tuple[float, float]]:
    """The display windows an HTML declares (``"display_window": [lo, hi]``, also HTML-escaped), plus
    :data:`DEFAULT_WINDOW`; the windows through which 8-bit arrays are read back (see the module docstring)."""
    found = {DEFAULT_WINDOW}
    for text in (html, html_lib.unescape(html) if "&quot;display_window&quot;" in html else ""):
        for lo, hi in _WINDOW_RE.findall(text):
            if lo != "null" and hi != "null" and float(hi) > float(lo):
                found.add((float(lo), float(hi)))
    return sorted(found)


def find_volume_leaks(html: str, volumes: np.ndarray | torch.Tensor, atol: float = 0.006, min_values: int = 64,
                      min_run: int = 16, min_std: float = 0.02) -> list[Leak]:
    """Training voxels embedded in an HTML report: slices and runs of ``volumes`` found in its arrays.

    Args:
        html: the report's text (e.g. an nbconvert export with plotly figures inlined).
        volumes: training volumes, (N, 1, D, H, W) or (N, D, H, W), e.g. float32 in [-1, 1].
        atol: largest |embedded - voxel| still counted as equal; the default covers values rounded to
            2 decimals plus float32 error (8-bit arrays raise it to half a grey step, see the module docstring).
        min_values: a 2D array needs at least this many finite values to count.
        min_run: a 1D array needs at least this many finite values to count as a run.
        min_std: arrays and slices with a standard deviation below this are skipped (a constant
            background slice matches the air of any volume and reveals nothing).

    Returns:
        One :class:`Leak` per (embedded array, volume, axis, position) match, best transform kept;
        empty if the report is share-safe by this test.
    """
    return find_array_leaks(decoded_arrays(html), volumes, atol, min_values, min_run, min_std,
                            windows=display_windows(html))


def find_array_leaks(arrays: list[np.ndarray], volumes: np.ndarray | torch.Tensor, atol: float = 0.006,
                     min_values: int = 64, min_run: int = 16, min_std: float = 0.02,
                     windows: list[tuple[float, float]] | None = None) -> list[Leak]:
    """:func:`find_volume_leaks` on arrays already decoded (``Leak.array`` indexes ``arrays``); ``windows``:
    display windows of 8-bit arrays (default :data:`DEFAULT_WINDOW`)."""
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    windows = list(windows or [DEFAULT_WINDOW])
    if any(np.asarray(a).dtype == np.uint8 for a in arrays):
        atol = max(atol, max(hi - lo for lo, hi in windows) / 510 * 1.001 + 1e-5)
    vols = _as_volumes(volumes)
    slice_shapes = {vols.shape[1:][:a] + vols.shape[1:][a + 1:] for a in range(3)}
    flat_shapes = slice_shapes | {s[::-1] for s in slice_shapes}
    planes: list[tuple[int, np.ndarray]] = []   # (array id, 2D float32)
    runs: list[tuple[int, np.ndarray]] = []     # (array id, 1D float32)
    for i, a in ((i, a) for i, arr in enumerate(arrays) for a in _as_values(np.asarray(arr), windows)):
        a = a.reshape([d for d in a.shape if d != 1]) if a.size else a
        if a.ndim == 1:
            runs.append((i, a))
            planes += [(i, sub) for r, c in flat_shapes if a.size % (r * c) == 0 for sub in a.reshape(-1, r, c)]
        elif a.ndim == 2:
            planes.append((i, a))
        elif a.ndim > 2:
            planes += [(i, sub) for sub in a.reshape(-1, *a.shape[-2:])]
    planes = [(i, p) for i, p in planes if _informative(p, min_values, min_std)]
    runs = [(i, r) for i, r in runs if _informative(r, min_run, min_std) and r.size <= max(vols.shape[1:])]
    shapes = [tuple(np.shape(a)) for a in arrays]
    best: dict[tuple, Leak] = {}
    for leak in _match_slices(planes, vols, atol, min_std, shapes) + _match_runs(runs, vols, atol, shapes):
        key = (leak.array, leak.volume, leak.axis, leak.index)
        if key not in best or leak.max_abs_diff < best[key].max_abs_diff:
            best[key] = leak
    return sorted(best.values(), key=lambda k: (k.array, k.volume, k.axis, k.index))


def describe(leaks: list[Leak]) -> str:
    """One line for logs and error messages: how many arrays leak, from which volumes, how closely."""
    if not leaks:
        return "no training voxels found in the report"
    vols = sorted({k.volume for k in leaks})
    n_slices = sum(k.kind == "slice" for k in leaks)
    shown = ", ".join(map(str, vols[:10])) + (", ..." if len(vols) > 10 else "")
    return (f"{len({k.array for k in leaks})} embedded arrays reproduce training voxels "
            f"({n_slices} slices, {len(leaks) - n_slices} runs) of {len(vols)} training volume(s): {shown}; "
            f"max |diff| {max(k.max_abs_diff for k in leaks):.4f}")


def _as_volumes(volumes: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, D, H, W) float32 from (N, 1, D, H, W) or (N, D, H, W). A batch of 2D images (N, 1, H, W) is read as
    volumes one slice thick, (N, D=1, H, W): the slice across axis 0 is the image itself, so every scan here
    works on 2D data sets unchanged."""
    v = volumes.detach().cpu().numpy() if isinstance(volumes, torch.Tensor) else np.asarray(volumes)
    if v.ndim == 5 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim != 4:
        raise ValueError(f"volumes must be (N, 1, D, H, W) or (N, D, H, W), got shape {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float32)


def _as_values(arr: np.ndarray, windows: list[tuple[float, float]]) -> list[np.ndarray]:
    """float32 readings of an embedded array: itself, or for 8-bit grey levels their voxel values in each
    window, as they are and with the clipped levels 0 and 255 as NaN wildcards."""
    if arr.dtype != np.uint8:
        return [np.asarray(arr, dtype=np.float32)]
    g = arr.astype(np.float32)
    clipped = (arr == 0) | (arr == 255)
    out = []
    for lo, hi in windows:
        v = (lo + g * ((hi - lo) / 255)).astype(np.float32)
        out += [v, np.where(clipped, np.float32(np.nan), v)] if clipped.any() else [v]
    return out


def _informative(a: np.ndarray, min_count: int, min_std: float) -> bool:
    finite = a[np.isfinite(a)]
    return finite.size >= min_count and float(finite.std()) >= min_std


def _projection(n: int) -> np.ndarray | None:
    """(n, k) matrix with orthonormal columns (fixed seed), or None when n is already small."""
    if n <= _PROJ_DIM:
        return None
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, _PROJ_DIM)))
    return q.astype(np.float32)


@dataclass
class _SliceQueries:
    """Every symmetry of every 2D array of one slice shape, flattened and ready for the GEMM prefilter."""

    ids: np.ndarray             # (m,) array id of each row
    names: list[str]            # transform of each row
    x: np.ndarray               # (m, n) float32 rows, NaN where the array has no value
    proj: np.ndarray | None     # (n, k) projection, None = compare unprojected
    dense: np.ndarray           # rows without NaN ...
    q: np.ndarray               # ... their projections (rows_dense, k)
    q_norm: np.ndarray          # ... and squared norms
    masked: np.ndarray          # rows with NaN ...
    x0: np.ndarray              # ... NaN set to 0
    mask: np.ndarray            # ... 1 where finite
    x0_norm: np.ndarray         # ... squared norms of x0

    @classmethod
    def build(cls, planes: list[tuple[int, np.ndarray]], shape: tuple[int, int]) -> _SliceQueries:
        ids, names, rows = [], [], []
        for i, p in planes:
            if p.shape != shape and p.shape != shape[::-1]:
                continue
            for name, t in TRANSFORMS.items():
                tp = t(p)
                if tp.shape == shape:
                    ids.append(i)
                    names.append(name)
                    rows.append(tp.ravel())
        n = shape[0] * shape[1]
        x = np.stack(rows).astype(np.float32) if rows else np.zeros((0, n), np.float32)
        proj = _projection(n)
        finite = np.isfinite(x).all(axis=1)
        dense, masked = np.nonzero(finite)[0], np.nonzero(~finite)[0]
        q = x[dense] @ proj if proj is not None else x[dense]
        x0 = np.nan_to_num(x[masked], nan=0.0)
        return cls(np.array(ids, dtype=np.int64), names, x, proj, dense, q, (q * q).sum(1), masked, x0,
                   np.isfinite(x[masked]).astype(np.float32), (x0 * x0).sum(1))


def _match_slices(planes: list[tuple[int, np.ndarray]], vols: np.ndarray, atol: float, min_std: float,
                  shapes: list[tuple[int, ...]]) -> list[Leak]:
    """2D arrays against every axis-aligned slice under the 8 symmetries (GEMM prefilter, exact check)."""
    leaks: list[Leak] = []
    if not planes:
        return leaks
    n_vol = vols.shape[0]
    by_shape: dict[tuple[int, int], _SliceQueries] = {}  # cubic volumes: one set of rows for all 3 axes
    for axis in range(3):
        per_vol = np.moveaxis(vols, axis + 1, 1)  # (N, L, r, c) view: slices across ``axis``
        n_slices, r, c = per_vol.shape[1:]
        n = r * c
        if (r, c) not in by_shape:
            by_shape[(r, c)] = _SliceQueries.build(planes, (r, c))
        qs = by_shape[(r, c)]
        if not len(qs.ids):
            continue
        vols_per_block = max(1, _LIB_ROWS // n_slices)
        for v0 in range(0, n_vol, vols_per_block):
            lib = per_vol[v0:v0 + vols_per_block].reshape(-1, n)  # copy of this block's slices
            keep = np.nonzero(lib.std(axis=1) >= min_std)[0]
            if not keep.size:
                continue
            lib = lib[keep]
            pairs = []
            if qs.dense.size:
                f = lib @ qs.proj if qs.proj is not None else lib
                f_norm = (f * f).sum(1)[None]
                for q0 in range(0, qs.dense.size, _QUERY_CHUNK):
                    s = slice(q0, q0 + _QUERY_CHUNK)
                    qn = qs.q_norm[s, None]
                    d2 = qn + f_norm - 2 * (qs.q[s] @ f.T)
                    # float32 GEMM error grows with the norms: a loose bound, false candidates are cheap
                    qi, li = np.nonzero(d2 <= n * atol**2 * 1.001 + 1e-4 * (qn + f_norm))
                    pairs.append((qs.dense[q0 + qi], li))
            if qs.masked.size:
                lib_sq = lib * lib
                for q0 in range(0, qs.masked.size, _QUERY_CHUNK):
                    s = slice(q0, q0 + _QUERY_CHUNK)
                    # squared distance over the finite entries only: ||m*x||^2 + m.(lib^2) - 2 (m*x).lib
                    lib_norm = qs.mask[s] @ lib_sq.T
                    d2 = qs.x0_norm[s, None] + lib_norm - 2 * (qs.x0[s] @ lib.T)
                    thr = qs.mask[s].sum(1, keepdims=True) * atol**2 * 1.001 + 1e-4 * (qs.x0_norm[s, None] + lib_norm)
                    qi, li = np.nonzero(d2 <= thr)
                    pairs.append((qs.masked[q0 + qi], li))
            for qi, li in pairs:
                for p0 in range(0, qi.size, 1024):
                    qb, lb = qi[p0:p0 + 1024], li[p0:p0 + 1024]
                    diff = np.nanmax(np.abs(qs.x[qb] - lib[lb]), axis=1)
                    ok = diff <= atol
                    for q, lrow, d in zip(qb[ok], lb[ok], diff[ok]):
                        vol, k = divmod(v0 * n_slices + int(keep[lrow]), n_slices)
                        a = int(qs.ids[q])
                        leaks.append(Leak(a, shapes[a], vol, axis, (k,), qs.names[q], float(d)))
    return leaks


def _match_runs(runs: list[tuple[int, np.ndarray]], vols: np.ndarray, atol: float,
                shapes: list[tuple[int, ...]]) -> list[Leak]:
    """1D arrays against contiguous runs of voxels along each axis, forward and reversed.

    Candidates are the voxels within ``atol`` of the query's rarest value (binary search in the
    sorted voxel values); each candidate run is then pruned value by value, rarest first.
    """
    leaks: list[Leak] = []
    if not runs:
        return leaks
    _, d_, h_, w_ = vols.shape
    sizes, strides, vol_size = (d_, h_, w_), (h_ * w_, w_, 1), d_ * h_ * w_
    flat = vols.reshape(-1)
    order = np.argsort(flat, kind="stable")
    sorted_vals = flat[order]
    for i, q in runs:
        n = q.size
        finite = np.isfinite(q)
        lo = np.searchsorted(sorted_vals, q - atol * 1.001, side="left")
        hi = np.searchsorted(sorted_vals, q + atol * 1.001, side="right")
        counts = np.where(finite, hi - lo, np.iinfo(np.int64).max)
        check = [int(k) for k in np.argsort(counts, kind="stable") if finite[k]]
        j = check.pop(0)
        if counts[j] == 0:
            continue
        cand = order[lo[j]:hi[j]].astype(np.int64)
        within = cand % vol_size
        for axis in range(3):
            if n > sizes[axis]:
                continue
            coord = (within // strides[axis]) % sizes[axis]
            for name, off in (("forward", np.arange(n)), ("reversed", np.arange(n)[::-1])):
                start = coord - off[j]
                base = cand[(start >= 0) & (start + n <= sizes[axis])] - off[j] * strides[axis]
                for k in check:
                    if not base.size:
                        break
                    base = base[np.abs(flat[base + off[k] * strides[axis]] - q[k]) <= atol]
                for b in base:
                    d = float(np.nanmax(np.abs(flat[b + off * strides[axis]] - q)))
                    if d <= atol:
                        vol, rem = divmod(int(b), vol_size)
                        pos = tuple(int(p) for p in np.unravel_index(rem, sizes))
                        leaks.append(Leak(i, shapes[i], vol, axis, pos, name, d))
    return leaks


# --- similarity scan: copies that are not voxel-exact ------------------------------------------------------
#
# Each embedded image (viewer frames are 8-bit grey levels) is matched to the training slice it resembles most
# (normalised cross-correlation, NCC, under the 8 flips/transposes and small in-plane shifts, the training slices
# clipped to the display window). One similar slice proves little: CT patches are smooth, and on demo-ct at
# 32^3 the slices of real held-out patches reach NCC 0.98-0.996 against some training slice. A copy shows
# *many* slices of *one* training volume: the scan counts, per training volume, the embedded images whose best
# match (NCC > ``SLICE_NCC_THRESHOLD``) is one of its slices, and fails a report where one training volume
# collects ``min_frames`` or more. :func:`calibrate_similarity` sets ``min_frames`` from real held-out volumes
# of the data set (each shown alone: the most any of them collects, plus a margin), so real non-copies pass.
# Measured on demo-ct (200 training patches, every slice of a 32^3 patch shown, 96 frames): held-out patches
# collect at most 30 frames on one training volume; flipped or rotated copies 96, noisy rotated ones 80-90,
# blurred (sigma 1) 53-76, copies shifted by 2 voxels along every axis 24-38 (often missed). This is the
# second line of defence: share-safe notebooks withhold every synthetic volume near the copy threshold
# (:func:`memostudy.study.candidates.shareable_synthetic`) by the detector's own similarity.

#: NCC above which an embedded image counts as showing a training slice
SLICE_NCC_THRESHOLD = 0.95


@dataclass(frozen=True)
class SimilarSlice:
    """An embedded 2D array that looks like a slice of a training volume (not necessarily voxel-exact).

    Attributes:
        array: index of the array in :func:`decoded_arrays` of the same HTML.
        volume: index of the training volume.
        axis: volume axis (0, 1, 2 of (D, H, W)) the slice cuts across.
        index: the slice's index along ``axis``.
        ncc: best normalised cross-correlation (1 = the same image up to brightness and contrast).
    """

    array: int
    volume: int
    axis: int
    index: int
    ncc: float


def _unit_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of (M, n) minus their mean, over their norm; and which rows vary at all."""
    x = x - x.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    ok = norm[:, 0] > 1e-6 * np.sqrt(x.shape[1])
    return np.where(ok[:, None], x / np.maximum(norm, 1e-12), 0.0).astype(np.float32), ok


def _shifted_ncc(q: np.ndarray, s: np.ndarray, max_shift: int) -> np.ndarray:
    """Best NCC of each pair of 2D images ``q[k]`` and ``s[k]`` ((K, h, w) each) over in-plane shifts up to
    ``max_shift`` voxels, on the overlap (at least 3/4 of each side); (K,)."""
    k, h, w = q.shape
    best = np.full(k, -1.0, dtype=np.float32)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if h - abs(dy) < 0.75 * h or w - abs(dx) < 0.75 * w:
                continue
            a = q[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)].reshape(k, -1)
            b = s[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)].reshape(k, -1)
            (ua, oka), (ub, okb) = _unit_rows(a), _unit_rows(b)
            best = np.maximum(best, np.where(oka & okb, (ua * ub).sum(axis=1), -1.0))
    return best


def best_slice_ncc(arrays: list[np.ndarray], volumes: np.ndarray | torch.Tensor,
                   windows: list[tuple[float, float]] | None = None, max_shift: int = 2, shortlist: int = 4,
                   min_grey_std: float = 2.0, search_shift: int = 1) -> list[SimilarSlice]:
    """For every informative 2D array, the training slice it resembles most and how much (NCC).

    Each 2D array (8-bit viewer frames are read as they are; NCC ignores brightness and contrast) is
    compared with every axis-aligned slice of ``volumes`` of its shape, clipped to each display window,
    under the 8 flips/transposes: first at zero shift for all slices (one matrix product), then with
    in-plane shifts up to ``max_shift`` for the ``shortlist`` best. Near-uniform arrays (grey-level standard
    deviation below ``min_grey_std`` of 255 of the window) are skipped: they show nothing of a patient.

    Args:
        arrays: decoded arrays (:func:`decoded_arrays`).
        volumes: training volumes, (N, 1, D, H, W) or (N, D, H, W).
        windows: display windows (default :data:`DEFAULT_WINDOW`).

    Returns:
        One :class:`SimilarSlice` per informative 2D array (its best match), in array order.
    """
    vols = _as_volumes(volumes)
    windows = list(windows or [DEFAULT_WINDOW])
    # library per slice shape: unit rows for the matrix product, the slices themselves, (volume, axis, index)
    parts: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for lo, hi in windows:
        for axis in range(3):
            sl = np.moveaxis(np.clip(vols, lo, hi), axis + 1, 1)  # (N, L, A, B)
            n, length = sl.shape[:2]
            flat = sl.reshape(n * length, *sl.shape[2:])
            unit, ok = _unit_rows(flat.reshape(n * length, -1))
            keys = np.stack([np.repeat(np.arange(n), length), np.full(n * length, axis), np.tile(np.arange(length), n)], 1)
            parts.setdefault(sl.shape[2:], []).append((unit[ok], flat[ok], keys[ok]))
    lib = {shape: tuple(np.concatenate([p[k] for p in ps]) for k in range(3)) for shape, ps in parts.items()}
    # queries: every symmetry of every informative 2D array, grouped by shape
    queries: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = {}
    for i, arr in enumerate(arrays):
        a = np.asarray(arr)
        a = a.reshape([d for d in a.shape if d != 1]) if a.size else a
        if a.ndim != 2 or not np.isfinite(a).all():
            continue
        span = 255.0 if a.dtype == np.uint8 else max(hi - lo for lo, hi in windows)
        if float(a.std()) < min_grey_std * span / 255:
            continue
        a = a.astype(np.float32)
        for f in TRANSFORMS.values():
            v = np.ascontiguousarray(f(a))
            if v.shape in lib and len(lib[v.shape][0]):
                queries.setdefault(v.shape, []).append((i, v))
    best: dict[int, SimilarSlice] = {}
    for shape, items in queries.items():
        unit, slices, keys = lib[shape]
        ids = np.array([i for i, _ in items])
        q = np.stack([v for _, v in items])
        h, w = shape
        for start in range(0, len(q), _QUERY_CHUNK // 8):
            part = slice(start, start + _QUERY_CHUNK // 8)
            # shortlist: the best library slices over shifts up to ``search_shift`` (crops, one product each)
            scores = np.full((len(q[part]), len(unit)), -1.0, dtype=np.float32)
            for dy in range(-search_shift, search_shift + 1):
                for dx in range(-search_shift, search_shift + 1):
                    a, _ = _unit_rows(q[part][:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)].reshape(len(q[part]), -1))
                    b, _ = _unit_rows(slices[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)].reshape(len(unit), -1))
                    np.maximum(scores, a @ b.T, out=scores)
            top = np.argsort(-scores, axis=1)[:, :shortlist]
            rows = np.repeat(np.arange(len(top)), top.shape[1])
            cols = top.ravel()
            ncc = np.maximum(scores[rows, cols], _shifted_ncc(q[part][rows], slices[cols], max_shift))
            for r, c, value in zip(ids[part][rows], cols, ncc):
                if int(r) not in best or value > best[int(r)].ncc:
                    best[int(r)] = SimilarSlice(int(r), int(keys[c, 0]), int(keys[c, 1]), int(keys[c, 2]), float(value))
    return [best[i] for i in sorted(best)]


def similar_counts(found: list[SimilarSlice], threshold: float = SLICE_NCC_THRESHOLD) -> dict[int, int]:
    """Training volume -> number of embedded images whose best match (NCC > ``threshold``) is one of its slices."""
    counts: dict[int, int] = {}
    for f in found:
        if f.ncc > threshold:
            counts[f.volume] = counts.get(f.volume, 0) + 1
    return counts


# where a figure starts: plotly's own HTML, the notebook's plotly mimetype, or memostudy.report.page.figure_html
_FIGURE_START = re.compile(r'Plotly\.newPlot\(|application/vnd\.plotly\.v1\+json|class="memostudy-figure"')


def figure_texts(text: str) -> list[str]:
    """The text of each plotly figure of an HTML report or notebook JSON (split where one starts), so each
    figure's images are counted apart; the whole text when no figure start is found."""
    starts = [m.start() for m in _FIGURE_START.finditer(text)]
    if not starts:
        return [text]
    return [text[a:b] for a, b in zip([0, *starts], [*starts, len(text)])]


def find_similar_slices(html: str | list[str], volumes: np.ndarray | torch.Tensor, min_frames: int,
                        threshold: float = SLICE_NCC_THRESHOLD) -> list[SimilarSlice]:
    """Embedded images of an HTML report (or notebook JSON) that show a training volume: within one figure
    (:func:`figure_texts`), the images matched to a training volume that collects ``min_frames`` or more of them
    (see the comment above :data:`SLICE_NCC_THRESHOLD`). Catches copies that are not voxel-exact (flipped,
    rotated, blurred, noisy, rescaled), which :func:`find_volume_leaks` cannot.

    Args:
        html: the text, or several (e.g. the HTML report and its executed notebook, which hold the same
            images: each distinct image is matched once).
        volumes: training volumes, (N, 1, D, H, W) or (N, D, H, W).
        min_frames: images of one training volume in one figure that fail the report
            (:func:`calibrate_similarity`).
        threshold: NCC above which an image counts as showing a training slice.

    Returns:
        Those images' matches (``array`` indexes the distinct arrays of all texts); empty when the report passes.
    """
    texts = [html] if isinstance(html, str) else list(html)
    windows = sorted({w for t in texts for w in display_windows(t)})
    figures, unique, index = [], [], {}
    for text in texts:
        for fig in figure_texts(text):
            ids = []
            for a in decoded_arrays(fig):
                a = np.asarray(a)
                key = (a.dtype.str, a.shape, a.tobytes())
                if key not in index:
                    index[key] = len(unique)
                    unique.append(a)
                ids.append(index[key])
            figures.append(sorted(set(ids)))  # an image repeated in a figure (its first frame) counts once
    best = {f.array: f for f in best_slice_ncc(unique, volumes, windows)}
    out: list[SimilarSlice] = []
    for ids in figures:
        found = [best[i] for i in ids if i in best]
        shown = {v for v, n in similar_counts(found, threshold).items() if n >= min_frames}
        out += [f for f in found if f.volume in shown and f.ncc > threshold]
    return out


def calibrate_similarity(reference: np.ndarray | torch.Tensor, train: np.ndarray | torch.Tensor,
                         window: tuple[float, float] = DEFAULT_WINDOW, threshold: float = SLICE_NCC_THRESHOLD) -> int:
    """``min_frames`` for :func:`find_similar_slices` on a data set: every slice of each real held-out volume of
    ``reference`` is shown alone, as the viewer shows it (8 bits, 3 planes); the most frames any of them
    collects on one training volume, times 1.25, plus 2 (at least 4), so real non-copies pass.

    2D images ((N, 1, H, W), :func:`_as_volumes`): a viewer shows an image once, so a copy is one frame, and the
    3D margin would let every single image through. ``min_frames`` is 1 when no held-out image (shown alone, as
    the viewer shows it) matches a training image above ``threshold``, else 2: then this NCC threshold cannot tell
    copies from real non-copies on this data set, and only an image shown twice in a figure fails."""
    from memostudy.report.viewer import PLANES, image_view, plane_slice, to_gray8

    ref = _as_volumes(reference)
    if ref.shape[1] == 1 and _as_volumes(train).shape[1] == 1:
        frames = [to_gray8(image_view(v[0]), window) for v in ref]
        return 2 if similar_counts(best_slice_ncc(frames, train, [window]), threshold) else 1
    most = 0
    for v in ref:
        frames = [to_gray8(plane_slice(v, p, k), window) for p in PLANES
                  for k in range(v.shape[{"axial": 2, "coronal": 1, "sagittal": 0}[p]])]
        most = max(most, max(similar_counts(best_slice_ncc(frames, train, [window]), threshold).values(), default=0))
    return max(4, int(np.ceil(1.25 * most)) + 2)


def describe_similar(found: list[SimilarSlice], min_frames: int) -> str:
    """One line: how many embedded images show which training volumes, how closely."""
    if not found:
        return f"no training volume is shown by {min_frames} or more similar embedded images"
    vols = sorted({s.volume for s in found})
    shown = ", ".join(map(str, vols[:10])) + (", ..." if len(vols) > 10 else "")
    return (f"{len(found)} embedded image(s) show slices of {len(vols)} training volume(s): {shown} "
            f"(NCC up to {max(s.ncc for s in found):.3f}; {min_frames} images of one volume fail)")
