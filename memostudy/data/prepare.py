"""``memostudy data prepare``: manifest -> resampled, scaled, non-overlapping patches with a split.

Steps per volume (MONAI transforms): orient to RAS, resample to the manifest's isotropic spacing,
compute the foreground mask on the resampled intensities, map intensities to [-1, 1], cut a
non-overlapping grid of cubic patches (``GridPatch``) and keep those with enough foreground.

2D data sets (``patch_size`` of two entries and a ``slices`` rule, e.g. ``data_manifests/demo-ct-2d.yaml``)
take the same steps with the resampling in-plane only (the native slice spacing is kept), then cut the
same non-overlapping grid of (H, W) patches from every slice ``slices.step_mm`` apart
(:func:`slice_indices`); a patch's ``origin_2`` is its slice index.
Preparation is deterministic: the same inputs give byte-identical ``.npy`` patches (sha256 in
``patches.csv``).

How the cache stays whole:

- a data set is keyed on its inputs (:func:`inputs_sha256`: the manifest with its volumes' sha256,
  preprocessing, split and any ``--patch-size`` override); it is reused only when the key matches;
  one built from other inputs is set aside (renamed to ``<name>.stale-<time>``, never deleted) and
  rebuilt;
- the build goes to a private temporary folder beside the target (``.building-<name>~*``) and is
  renamed into place only when complete (``COMPLETE`` is its last file), so an error or a kill never
  leaves a half-written data set; leftovers of a killed build are removed by the next run;
- ``force`` replaces: the old data set stays in place until the new one is complete; if a run is
  killed between the two renames, the next run puts the old one back;
- one ``prepare`` per data set at a time: a second waits on a lock (``filelock``) and then reuses;
- nothing is ever deleted outside the cache root, and only folders this module names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from memostudy.data.manifest import SPLITS, Manifest, load_manifest, sha256_of
from memostudy.data.manifest_schema import NAME_HINT, check_patch_size, is_safe_name
from memostudy.data.patches import COMPLETE_MARKER, default_cache
from memostudy.data.sources import obtain
from memostudy.data.volume_io import load_image
from memostudy.errors import DataError
from memostudy.locks import waiting_lock

#: bump when a change to this module changes the patches it writes (a data set built by an older
#: format is then set aside and rebuilt)
PREPARE_FORMAT = 1
LOCKS_DIR = ".locks"
BUILDING_PREFIX = ".building-"
REPLACED_PREFIX = ".replaced-"
STALE_INFIX = ".stale-"
# "~" cannot occur in a data set name, so "<prefix><name>~" matches one data set's leftovers only
SEP = "~"


@dataclass
class PrepareSummary:
    """What a prepared data set holds."""

    name: str
    path: Path
    modality: str
    patch_size: tuple[int, ...]
    spacing: tuple[float, ...] | None
    subjects: dict[str, list[str]]
    patches: dict[str, int]
    reused: bool = False
    set_aside: Path | None = None
    skipped: list[str] = field(default_factory=list)
    slices: dict[str, Any] | None = None

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = []
        if self.set_aside is not None:
            out.append(f"set aside  the data set there was built from other inputs (manifest, --patch-size or "
                       f"preparation code): moved to {self.set_aside} and rebuilt; delete it when no longer needed")
        out += [f"data set   {self.name} ({self.modality}) at {self.path}" + ("  [already prepared]" if self.reused else ""),
               f"patch      {' x '.join(map(str, self.patch_size))} {'pixels' if len(self.patch_size) == 2 else 'voxels'}"
               + (f" at {' x '.join(f'{s:g}' for s in self.spacing)} mm" if self.spacing else " at native spacing")
               + (f", from {self.slices['plane']} slices every {self.slices['step_mm']:g} mm (rounded to whole slices)"
                  if self.slices else "")]
        for split in SPLITS:
            if self.patches.get(split):
                out.append(f"{split:<10} {self.patches[split]:>5} patches from {len(self.subjects[split])} subject(s): "
                           f"{', '.join(self.subjects[split])}")
        out.append(f"total      {sum(self.patches.values()):>5} patches")
        out += [f"skipped    {s}" for s in self.skipped]
        return out


def foreground_mask(raw: torch.Tensor, rule: dict[str, Any]) -> torch.Tensor:
    """Foreground mask of a volume in its own units (e.g. HU).

    Args:
        raw: (1, X, Y, Z) intensities before scaling.
        rule: ``{"kind": "threshold", "value": v}`` (CT: voxels > v HU) or
            ``{"kind": "fraction_of_percentile", "percentile": p, "fraction": f}`` (MR: voxels above
            f times the p-th percentile).

    Returns:
        (1, X, Y, Z) float32 in {0, 1}.
    """
    kind = rule.get("kind", "threshold")
    if kind == "threshold":
        thr = float(rule["value"])
    elif kind == "fraction_of_percentile":
        thr = float(rule.get("fraction", 0.1)) * float(torch.quantile(raw.flatten().float()[::7],
                                                                     float(rule.get("percentile", 99)) / 100))
    else:
        raise DataError(f"unknown foreground kind {kind!r}; use threshold or fraction_of_percentile")
    return (raw > thr).float()


def intensity_transform(rule: dict[str, Any]):
    """The MONAI transform mapping raw intensities to [-1, 1] (clipped) for a manifest rule."""
    from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

    kind = rule.get("kind", "window")
    if kind == "window":
        return ScaleIntensityRange(a_min=float(rule["lo"]), a_max=float(rule["hi"]), b_min=-1.0, b_max=1.0, clip=True)
    if kind == "percentile":
        return ScaleIntensityRangePercentiles(lower=float(rule.get("lower", 0.5)), upper=float(rule.get("upper", 99.5)),
                                              b_min=-1.0, b_max=1.0, clip=True)
    raise DataError(f"unknown intensity kind {kind!r}; use window or percentile")


def cut_patches(volume: torch.Tensor, mask: torch.Tensor, patch_size: tuple[int, ...],
                min_foreground: float) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Non-overlapping grid patches of ``volume`` whose foreground fraction is >= ``min_foreground``.

    Args:
        volume: (1, X, Y, Z) float32 in [-1, 1], or a slice (1, X, Y) with a 2D ``patch_size``.
        mask: foreground in {0, 1}, shaped like ``volume``.

    Returns:
        ``[(origin, patch)]`` with origin the voxel index of the patch corner and patch (D, H, W)
        (or (H, W)) float32.
    """
    from monai.transforms import GridPatch

    if any(p > s for p, s in zip(patch_size, volume.shape[1:])):
        raise DataError(f"patch size {patch_size} is larger than the volume {tuple(volume.shape[1:])}")
    both = torch.cat([torch.as_tensor(volume), torch.as_tensor(mask)], 0)
    patches = GridPatch(patch_size=patch_size)(both)
    locs = np.asarray(patches.meta["location"])
    out = []
    for i in range(patches.shape[0]):
        if float(patches[i, 1].float().mean()) >= min_foreground:
            origin = tuple(int(x) for x in locs[:, i])
            out.append((origin, np.ascontiguousarray(patches[i, 0].numpy().astype(np.float32))))
    return out


def slice_indices(n_slices: int, slice_mm: float, step_mm: float) -> list[int]:
    """The slices 2D patches are cut from: every ``k``-th of ``n_slices`` slices ``slice_mm`` apart, with
    ``k = max(1, round(step_mm / slice_mm))``, the set centred in the volume (the leftover is split
    between both ends), so a scan's first and last slices, often partial, are used no more than others.

    >>> slice_indices(10, 5.0, 10.0)
    [0, 2, 4, 6, 8]
    """
    k = max(1, round(step_mm / slice_mm))
    first = ((n_slices - 1) % k) // 2
    return list(range(first, n_slices, k))


def _preprocess(path: Path, pre: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float] | None, tuple[float, ...]]:
    """Load, orient, resample; return ([-1,1] volume, foreground mask, (lo, hi) of the mapping, voxel
    spacing in mm after resampling). A two-entry ``spacing`` (2D data sets) resamples in-plane only."""
    from monai.transforms import Orientation, Spacing

    img = load_image(path)
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    spacing = pre.get("spacing")
    if spacing:
        # MONAI's Spacing keeps the native spacing of an axis given a non-positive pixdim: for 2D, the slices
        pixdim = tuple(float(s) for s in spacing) + ((0.0,) if len(spacing) == 2 else ())
        img = Spacing(pixdim=pixdim, mode="bilinear")(img)
    voxel_mm = tuple(float(x) for x in torch.as_tensor(img.pixdim).flatten()[:3])
    raw = torch.as_tensor(img).float()
    lo_raw, hi_raw = float(raw.min()), float(raw.max())
    if lo_raw == hi_raw:
        raise DataError(f"{path}: every voxel is {lo_raw:g} (a constant volume holds no image); "
                        "remove it from the manifest or replace it")
    rule = pre.get("intensity", {"kind": "window", "lo": -1000, "hi": 1000})
    if rule.get("kind") == "percentile":
        # MONAI maps a zero-width percentile range with a "Divide by zero" warning and no clipping
        q = np.percentile(raw.numpy(), [float(rule.get("lower", 0.5)), float(rule.get("upper", 99.5))])
        if not q[1] > q[0]:
            raise DataError(f"{path}: the intensity percentiles {rule.get('lower', 0.5)} and {rule.get('upper', 99.5)} "
                            f"are both {q[0]:g} (the volume is nearly constant); drop it or use a window intensity rule")
    mask = foreground_mask(raw, pre.get("foreground", {"kind": "threshold", "value": -500}))
    scaled = intensity_transform(rule)(raw)
    if rule.get("kind", "window") == "window":
        lohi = (float(rule["lo"]), float(rule["hi"]))
    else:
        flat = raw.flatten()[::7]
        lohi = (float(torch.quantile(flat, float(rule.get("lower", 0.5)) / 100)),
                float(torch.quantile(flat, float(rule.get("upper", 99.5)) / 100)))
    return torch.as_tensor(scaled).float().clamp(-1, 1), mask, lohi, voxel_mm


def _kept_patches(m: Manifest, vol: torch.Tensor, mask: torch.Tensor, voxel_mm: tuple[float, ...],
                  min_fg: float) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """The patches of one preprocessed volume (1, X, Y, Z): 3D grid patches with their (x, y, z) origin, or
    for a 2D data set the (H, W) grid patches of every slice of :func:`slice_indices`, origin (x, y, slice)."""
    if m.slices is None:
        return cut_patches(vol, mask, m.patch_size, min_fg)
    kept = []
    for z in slice_indices(vol.shape[-1], voxel_mm[2], float(m.slices["step_mm"])):
        kept += [((*origin, z), arr) for origin, arr in cut_patches(vol[..., z], mask[..., z], m.patch_size, min_fg)]
    return kept


def inputs_sha256(manifest_text: str) -> str:
    """The key a prepared data set is reused on: sha256 of the preparation format and the manifest
    as prepared (YAML with sorted keys: volumes with their sha256, preprocessing, split, name)."""
    return hashlib.sha256(f"memostudy prepare format {PREPARE_FORMAT}\n{manifest_text}".encode()).hexdigest()


def _stored_inputs(d: Path) -> str | None:
    """The input key of a complete data set folder (sets built before keys were recorded: from
    the manifest they store)."""
    try:
        info = json.loads((d / "dataset.json").read_text())
        if "inputs_sha256" in info:
            return str(info["inputs_sha256"])
        return inputs_sha256((d / "manifest.yaml").read_text())
    except (OSError, ValueError):
        return None


def dataset_folder(root: Path, name: str) -> Path:
    """``root/name``, refusing a name that is not a single safe folder name (``../x``, ``a/b``)."""
    if not is_safe_name(name):
        raise DataError(f"data set name {name!r} is not a valid folder name; {NAME_HINT}")
    return root / name


def _remove_own(path: Path, root: Path) -> None:
    """Delete a folder this module created in ``root`` (a build or a replaced data set), nothing else."""
    if path.parent.resolve() != root.resolve() or not path.name.startswith((BUILDING_PREFIX, REPLACED_PREFIX)):
        raise RuntimeError(f"refusing to delete {path}: not a build folder of the cache {root}")
    shutil.rmtree(path, ignore_errors=True)


def _aside_path(root: Path, stem: str) -> Path:
    """A free name ``<stem><time>`` (with ``-<n>`` when taken) in ``root``."""
    base = f"{stem}{time.strftime('%Y%m%d-%H%M%S')}"
    cand, n = root / base, 1
    while cand.exists() or cand.is_symlink():
        cand, n = root / f"{base}-{n}", n + 1
    return cand


def _locked(root: Path, name: str) -> AbstractContextManager[None]:
    """Hold the lock of data set ``name``; say so on stderr when another process holds it."""
    lock_file = root / LOCKS_DIR / f"{name}.lock"
    return waiting_lock(lock_file, lambda msg: print(msg, file=sys.stderr, flush=True),
                        f"memostudy: waiting for another `data prepare` of {name} to finish (lock {lock_file})")


def _leftovers(root: Path, name: str) -> list[Path]:
    """Build folders and replaced data sets of ``name`` in ``root`` (a killed run's, or a live one's)."""
    return sorted([*root.glob(f"{BUILDING_PREFIX}{name}{SEP}*"), *root.glob(f"{REPLACED_PREFIX}{name}{SEP}*")])


def _tidy_leftovers(root: Path, target: Path) -> None:
    """Remove what a killed run of this data set left (call with the lock held): its build folders;
    a replaced data set goes back into place if the replacement never arrived, else away."""
    for d in _leftovers(root, target.name):
        if d.name.startswith(REPLACED_PREFIX) and not target.exists() and (d / COMPLETE_MARKER).exists():
            d.rename(target)
        else:
            _remove_own(d, root)


def pause_point(point: str) -> None:
    """Test hook for fault tests: with ``MEMOSTUDY_PAUSE_AT=<point>``, announce the point on stderr
    and wait there (until the file ``$MEMOSTUDY_PAUSE_UNTIL`` exists, else until killed)."""
    if os.environ.get("MEMOSTUDY_PAUSE_AT") != point:
        return
    print(f"memostudy: paused at {point}", file=sys.stderr, flush=True)
    until = os.environ.get("MEMOSTUDY_PAUSE_UNTIL")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not (until and Path(until).exists()):
        time.sleep(0.05)


def prepare(name_or_path: str | Path, cache: str | Path | None = None, force: bool = False,
            progress: bool = True, patch_size: int | None = None) -> PrepareSummary:
    """Build (or reuse) the patch data set of a manifest in ``cache``.

    Args:
        name_or_path: manifest name (``demo-ct``) or YAML path.
        cache: cache root (default ``$MEMOSTUDY_CACHE`` or ``~/.cache/memostudy``).
        force: rebuild and replace the data set even when one with the same inputs is there (the old
            one stays in place until the new one is complete).
        patch_size: override the manifest's cubic (square, for 2D) patch size (the data set is then named
            ``<name>-p<size>``).

    Returns:
        A :class:`PrepareSummary` (``reused``: the cached set matched; ``set_aside``: where a set
        built from other inputs was moved).

    Raises:
        DataError: a bad manifest or volume (one line per problem, naming the file and field).
    """
    m = load_manifest(name_or_path)
    if patch_size is not None:
        size = check_patch_size(patch_size)
        m.preprocessing["patch_size"] = [size] * len(m.patch_size)
        m.name = f"{m.name}-p{size}"
        m.raw = {**m.raw, "name": m.name, "preprocessing": m.preprocessing}
    root = Path(cache) if cache is not None else default_cache()
    target = dataset_folder(root, m.name)
    manifest_text = yaml.safe_dump(m.raw, sort_keys=True)
    key = inputs_sha256(manifest_text)
    # a complete set only ever appears by a rename, so reuse needs no lock (unless a killed run left things)
    if (not force and (target / COMPLETE_MARKER).exists() and _stored_inputs(target) == key
            and not _leftovers(root, m.name)):
        return _summary_from_disk(target, reused=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot use as the cache folder ({e.strerror}); pass another --cache") from None
    with _locked(root, m.name):
        _tidy_leftovers(root, target)
        complete = (target / COMPLETE_MARKER).exists()
        if complete and not force and _stored_inputs(target) == key:
            return _summary_from_disk(target, reused=True)
        paths = obtain(m, root)
        tmp = Path(tempfile.mkdtemp(prefix=f"{BUILDING_PREFIX}{m.name}{SEP}", dir=root))
        try:
            skipped = _build(m, paths, tmp, manifest_text, key, progress)
            pause_point("before-rename")
            set_aside = _move_into_place(tmp, target, root, replace=force and complete)
        except BaseException:
            _remove_own(tmp, root)
            raise
    return _summary_from_disk(target, reused=False, set_aside=set_aside, skipped=skipped)


def _move_into_place(tmp: Path, target: Path, root: Path, replace: bool) -> Path | None:
    """Rename the complete build ``tmp`` to ``target``.

    An existing ``target`` is replaced (``replace``: moved to ``.replaced-<name>~<time>`` and deleted
    once the new one is in place) or else set aside as ``<name>.stale-<time>`` and kept.

    Returns:
        Where an existing data set was set aside, or None.
    """
    if not (target.exists() or target.is_symlink()):
        tmp.rename(target)
        return None
    if replace:
        old = _aside_path(root, f"{REPLACED_PREFIX}{target.name}{SEP}")
        target.rename(old)
        pause_point("between-renames")
        tmp.rename(target)
        _remove_own(old, root)
        return None
    aside = _aside_path(root, f"{target.name}{STALE_INFIX}")
    target.rename(aside)
    tmp.rename(target)
    return aside


def _build(m: Manifest, paths: list[Path], tmp: Path, manifest_text: str, key: str, progress: bool) -> list[str]:
    """Write the patches, ``patches.csv``, ``manifest.yaml``, ``dataset.json`` and, last, ``COMPLETE``
    into ``tmp``.

    Returns:
        One line per volume that gave no patch (file, subject and why).
    """
    split_of = m.split_of()
    (tmp / "patches").mkdir()
    rows, skipped = [], []
    per_subject_count: dict[str, int] = {}
    for v in m.volumes:
        per_subject_count[v.subject] = per_subject_count.get(v.subject, 0) + 1
    los, his = [], []
    min_fg = float(m.preprocessing.get("min_foreground", 0.5))
    for k, (v, p) in enumerate(tqdm(list(zip(m.volumes, paths)), desc=f"prepare {m.name}", disable=not progress,
                                    unit="vol", file=sys.stderr)):
        vol, mask, (lo, hi), voxel_mm = _preprocess(p, m.preprocessing)
        los.append(lo)
        his.append(hi)
        try:
            kept = _kept_patches(m, vol, mask, voxel_mm, min_fg)
        except DataError as e:
            raise DataError(f"{p}: {e}; choose a smaller patch_size in the manifest") from None
        if not kept:
            skipped.append(f"{v.path}: no patch passed the foreground rule (min_foreground {min_fg:g}); "
                           f"subject {v.subject} has no patches from it")
        prefix = v.subject if per_subject_count[v.subject] == 1 else f"{v.subject}-v{k:03d}"
        for origin, arr in kept:
            pid = f"{prefix}-{origin[0]:03d}-{origin[1]:03d}-{origin[2]:03d}"
            f = tmp / "patches" / f"{pid}.npy"
            np.save(f, arr, allow_pickle=False)
            rows.append({"patch_id": pid, "subject": v.subject, "split": split_of[v.subject], "source": v.path,
                         "origin_0": origin[0], "origin_1": origin[1], "origin_2": origin[2],
                         "foreground_lo": lo, "foreground_hi": hi,
                         "sha256": sha256_of(f), "file": f"patches/{pid}.npy"})
        pause_point(f"volume-{k + 1}")
    if not rows:
        raise DataError(f"{m.path}: no patch passed the foreground rule; lower min_foreground or the patch size")
    table = pd.DataFrame(rows).rename(columns={"foreground_lo": "intensity_lo", "foreground_hi": "intensity_hi"})
    table.to_csv(tmp / "patches.csv", index=False)
    (tmp / "manifest.yaml").write_text(manifest_text)
    spacing = m.preprocessing.get("spacing")
    info = {
        "name": m.name, "modality": m.modality, "licence": m.licence, "description": m.description,
        "patch_size": list(m.patch_size), "spacing": list(spacing) if spacing else None,
        "intensity": {"kind": m.preprocessing.get("intensity", {}).get("kind", "window"),
                      "lo": float(np.mean(los)), "hi": float(np.mean(his))},
        "patches": {s: int((table["split"] == s).sum()) for s in SPLITS},
        "subjects": {s: sorted(set(table.loc[table["split"] == s, "subject"])) for s in SPLITS},
        "skipped": skipped,
        "inputs_sha256": key,
    }
    if m.slices is not None:  # 3D data sets keep the dataset.json they always had
        info["slices"] = dict(m.slices)
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
    (tmp / COMPLETE_MARKER).write_text("ok\n")
    return skipped


def _summary_from_disk(d: Path, reused: bool, set_aside: Path | None = None,
                       skipped: list[str] | None = None) -> PrepareSummary:
    info = json.loads((d / "dataset.json").read_text())
    sp = info.get("spacing")
    return PrepareSummary(
        name=info["name"], path=d, modality=info.get("modality", ""), patch_size=tuple(info["patch_size"]),
        spacing=tuple(sp) if sp else None, subjects=info["subjects"], patches=info["patches"], reused=reused,
        set_aside=set_aside, skipped=list(info.get("skipped", []) if skipped is None else skipped),
        slices=info.get("slices"),
    )
