"""``memostudy data prepare``: manifest -> resampled, scaled, non-overlapping patches with a split.

Steps per volume (MONAI transforms): orient to RAS, resample to the manifest's isotropic spacing,
compute the foreground mask on the resampled intensities, map intensities to [-1, 1], cut a
non-overlapping grid of cubic patches (``GridPatch``) and keep those with enough foreground.
The build goes to a temporary folder that is renamed into place only when complete, so an error
or an interrupt never leaves a half-written data set in the cache. Preparation is deterministic:
the same inputs give byte-identical ``.npy`` patches (sha256 in ``patches.csv``).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from memostudy.data.manifest import SPLITS, load_manifest, sha256_of
from memostudy.data.patches import COMPLETE_MARKER, default_cache
from memostudy.data.sources import obtain
from memostudy.data.volume_io import load_image
from memostudy.errors import DataError


@dataclass
class PrepareSummary:
    """What a prepared data set holds."""

    name: str
    path: Path
    modality: str
    patch_size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None
    subjects: dict[str, list[str]]
    patches: dict[str, int]
    reused: bool = False

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        out = [f"data set   {self.name} ({self.modality}) at {self.path}" + ("  [already prepared]" if self.reused else ""),
               f"patch      {' x '.join(map(str, self.patch_size))} voxels"
               + (f" at {' x '.join(f'{s:g}' for s in self.spacing)} mm" if self.spacing else " at native spacing")]
        for split in SPLITS:
            if self.patches.get(split):
                out.append(f"{split:<10} {self.patches[split]:>5} patches from {len(self.subjects[split])} subject(s): "
                           f"{', '.join(self.subjects[split])}")
        out.append(f"total      {sum(self.patches.values()):>5} patches")
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


def cut_patches(volume: torch.Tensor, mask: torch.Tensor, patch_size: tuple[int, int, int],
                min_foreground: float) -> list[tuple[tuple[int, int, int], np.ndarray]]:
    """Non-overlapping grid patches of ``volume`` whose foreground fraction is >= ``min_foreground``.

    Args:
        volume: (1, X, Y, Z) float32 in [-1, 1].
        mask: (1, X, Y, Z) in {0, 1}.

    Returns:
        ``[(origin, patch)]`` with origin the voxel index of the patch corner and patch (D, H, W) float32.
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


def _preprocess(path: Path, pre: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float] | None]:
    """Load, orient, resample; return ([-1,1] volume, foreground mask, (lo, hi) of the mapping)."""
    from monai.transforms import Orientation, Spacing

    img = load_image(path)
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    spacing = pre.get("spacing")
    if spacing:
        img = Spacing(pixdim=tuple(float(s) for s in spacing), mode="bilinear")(img)
    raw = torch.as_tensor(img).float()
    mask = foreground_mask(raw, pre.get("foreground", {"kind": "threshold", "value": -500}))
    rule = pre.get("intensity", {"kind": "window", "lo": -1000, "hi": 1000})
    scaled = intensity_transform(rule)(raw)
    if rule.get("kind", "window") == "window":
        lohi = (float(rule["lo"]), float(rule["hi"]))
    else:
        flat = raw.flatten()[::7]
        lohi = (float(torch.quantile(flat, float(rule.get("lower", 0.5)) / 100)),
                float(torch.quantile(flat, float(rule.get("upper", 99.5)) / 100)))
    return torch.as_tensor(scaled).float().clamp(-1, 1), mask, lohi


def prepare(name_or_path: str | Path, cache: str | Path | None = None, force: bool = False,
            progress: bool = True, patch_size: int | None = None) -> PrepareSummary:
    """Build (or reuse) the patch data set of a manifest in ``cache``.

    Args:
        name_or_path: manifest name (``demo-ct``) or YAML path.
        cache: cache root (default ``$MEMOSTUDY_CACHE`` or ``~/.cache/memostudy``).
        force: rebuild even if a complete data set with another manifest is there.
        patch_size: override the manifest's cubic patch size (the data set is then named
            ``<name>-p<size>``).

    Returns:
        A :class:`PrepareSummary`.
    """
    m = load_manifest(name_or_path)
    if patch_size is not None:
        m.preprocessing["patch_size"] = [int(patch_size)] * 3
        m.name = f"{m.name}-p{int(patch_size)}"
        m.raw = {**m.raw, "name": m.name, "preprocessing": m.preprocessing}
    root = Path(cache) if cache is not None else default_cache()
    root.mkdir(parents=True, exist_ok=True)
    target = root / m.name
    manifest_text = yaml.safe_dump(m.raw, sort_keys=True)
    if (target / COMPLETE_MARKER).exists():
        same = (target / "manifest.yaml").exists() and (target / "manifest.yaml").read_text() == manifest_text
        if same and not force:
            return _summary_from_disk(target, reused=True)
        if not force:
            raise DataError(f"{target}: a data set built from a different manifest is there; pass --force to rebuild it")
    paths = obtain(m, root)
    split_of = m.split_of()
    tmp = root / f".building-{m.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "patches").mkdir(parents=True)
    try:
        rows = []
        per_subject_count: dict[str, int] = {}
        for v in m.volumes:
            per_subject_count[v.subject] = per_subject_count.get(v.subject, 0) + 1
        los, his = [], []
        for k, (v, p) in enumerate(tqdm(list(zip(m.volumes, paths)), desc=f"prepare {m.name}", disable=not progress,
                                        unit="vol", file=sys.stderr)):
            vol, mask, (lo, hi) = _preprocess(p, m.preprocessing)
            los.append(lo)
            his.append(hi)
            try:
                kept = cut_patches(vol, mask, m.patch_size, float(m.preprocessing.get("min_foreground", 0.5)))
            except DataError as e:
                raise DataError(f"{p}: {e}; choose a smaller patch_size in the manifest") from None
            prefix = v.subject if per_subject_count[v.subject] == 1 else f"{v.subject}-v{k:03d}"
            for origin, arr in kept:
                pid = f"{prefix}-{origin[0]:03d}-{origin[1]:03d}-{origin[2]:03d}"
                f = tmp / "patches" / f"{pid}.npy"
                np.save(f, arr, allow_pickle=False)
                rows.append({"patch_id": pid, "subject": v.subject, "split": split_of[v.subject], "source": v.path,
                             "origin_0": origin[0], "origin_1": origin[1], "origin_2": origin[2],
                             "foreground_lo": lo, "foreground_hi": hi,
                             "sha256": sha256_of(f), "file": f"patches/{pid}.npy"})
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
        }
        (tmp / "dataset.json").write_text(json.dumps(info, indent=2))
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _summary_from_disk(target, reused=False)


def _summary_from_disk(d: Path, reused: bool) -> PrepareSummary:
    info = json.loads((d / "dataset.json").read_text())
    sp = info.get("spacing")
    return PrepareSummary(
        name=info["name"], path=d, modality=info.get("modality", ""), patch_size=tuple(info["patch_size"]),
        spacing=tuple(sp) if sp else None, subjects=info["subjects"], patches=info["patches"], reused=reused,
    )
