"""Data manifests: which volumes make up a data set, their checksums, preprocessing and split rule.

A manifest is a small YAML file (``data_manifests/<name>.yaml``); it is the only place a data
location is written down. :func:`load_manifest` checks it against the schema of
:mod:`.manifest_schema` before anything runs, :func:`verify_checksums` refuses any
file whose sha256 differs from the manifest, and :func:`manifest_from_folder` writes one for a
user's own folder of volumes (bring-your-own data).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memostudy.data.manifest_schema import NAME_HINT, SPLITS, check_patch_size, is_safe_name, manifest_problems
from memostudy.data.volume_io import VOLUME_SUFFIXES, is_volume_path, volume_stem
from memostudy.errors import DataError

REPO_MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


@dataclass
class VolumeEntry:
    """One source volume: its subject, path (relative to the source root) and sha256."""

    subject: str
    path: str
    sha256: str


@dataclass
class Manifest:
    """A parsed manifest. ``root`` is the resolved folder the volume paths are relative to
    (``None`` for a registry source until it is fetched)."""

    name: str
    modality: str
    source: dict[str, Any]
    volumes: list[VolumeEntry]
    preprocessing: dict[str, Any]
    split: dict[str, Any]
    description: str = ""
    licence: str = ""
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Patch edge lengths in voxels: (D, H, W), or (H, W) for 2D patches cut from slices (a single
        number is a cube)."""
        ps = self.preprocessing.get("patch_size", 32)
        ps = [ps] * 3 if isinstance(ps, int | float) else list(ps)
        return tuple(int(s) for s in ps)

    @property
    def slices(self) -> dict[str, Any] | None:
        """The slicing rule of a 2D data set (``{"plane": "axial", "step_mm": 10}``), None for 3D."""
        return self.preprocessing.get("slices")

    def split_of(self) -> dict[str, str]:
        """Subject -> split, from the manifest's split rule (deterministic)."""
        subjects = sorted({v.subject for v in self.volumes})
        kind = self.split.get("kind", "by_subject")
        if kind == "by_subject":
            assign = {str(k): str(v) for k, v in (self.split.get("assign") or {}).items()}
            missing = [s for s in subjects if s not in assign]
            if missing:
                raise DataError(f"{self.path}: split.assign has no split for subject(s) {', '.join(missing)}; add them")
            return {s: assign[s] for s in subjects}
        if kind == "by_subject_fraction":
            fr = self.split.get("fractions", {"train": 0.7, "validation": 0.15, "test": 0.15})
            rng = random.Random(int(self.split.get("seed", 0)))
            order = subjects[:]
            rng.shuffle(order)
            n = len(order)
            # floor for the held-out splits, at least one subject each when there are >= 3 subjects
            counts = {k: int(float(fr.get(k, 0)) * n) for k in SPLITS}
            for k in ("validation", "test"):
                if n >= 3 and float(fr.get(k, 0)) > 0:
                    counts[k] = max(1, counts[k])
            counts["train"] = n - counts["validation"] - counts["test"]
            out, i = {}, 0
            for k in SPLITS:
                for s in order[i : i + counts[k]]:
                    out[s] = k
                i += counts[k]
            return out
        raise DataError(f"{self.path}: unknown split kind {kind!r}; use by_subject or by_subject_fraction")


def sha256_of(path: str | Path) -> str:
    """sha256 of a file, or of a DICOM-series folder (hash of its sorted files' names and hashes)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.iterdir() if p.is_file()):
            h.update(f.name.encode())
            h.update(sha256_of(f).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_manifest(name_or_path: str | Path) -> Path:
    """Resolve a manifest name (``demo-ct``) or path to an existing YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise DataError(f"{p}: manifest file not found")
        return p
    for folder in (Path.cwd() / "data_manifests", REPO_MANIFESTS):
        cand = folder / f"{name_or_path}.yaml"
        if cand.is_file():
            return cand
    known = sorted(q.stem for q in REPO_MANIFESTS.glob("*.yaml")) if REPO_MANIFESTS.is_dir() else []
    raise DataError(f"no manifest named {name_or_path!r}; known: {', '.join(known) or 'none'}; or pass a path to a YAML file")


def load_manifest(name_or_path: str | Path) -> Manifest:
    """Load a manifest and check it against :data:`~memostudy.data.manifest_schema.MANIFEST_SCHEMA`.

    Raises:
        DataError: unreadable YAML, or one line per problem (``<file>: <field>: got ...; what to do``).
    """
    path = find_manifest(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DataError(f"{path}: not valid YAML ({str(e).splitlines()[0]}); fix the manifest") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the manifest ({e}); pass a YAML manifest file") from None
    problems = manifest_problems(raw)
    if problems:
        raise DataError("\n".join(f"{path}: {p}" for p in problems))
    vols = [VolumeEntry(str(v["subject"]), str(v["path"]), str(v["sha256"]).lower()) for v in raw["volumes"]]
    return Manifest(
        name=str(raw["name"]), modality=str(raw.get("modality", "unknown")), source=dict(raw["source"]),
        volumes=vols, preprocessing=dict(raw["preprocessing"]), split=dict(raw["split"]),
        description=str(raw.get("description", "")), licence=str(raw.get("licence", "")), path=path, raw=raw,
    )


def source_root(m: Manifest) -> Path | None:
    """The folder that volume paths are relative to, for a ``folder`` source (else None)."""
    if m.source.get("kind") != "folder":
        return None
    root = Path(m.source.get("root", "."))
    if not root.is_absolute() and m.path is not None:
        root = (m.path.parent / root).resolve()
    return root


def verify_checksums(m: Manifest, root: Path) -> list[Path]:
    """Check that every volume exists under ``root`` with the manifest's sha256.

    Returns:
        The volume paths, in manifest order.

    Raises:
        DataError: naming the first missing or changed file and what to do.
    """
    paths = []
    for v in m.volumes:
        p = root / v.path
        if not p.exists():
            raise DataError(f"{p}: listed in manifest {m.name} but missing; restore it or regenerate the manifest")
        got = sha256_of(p)
        if got != v.sha256:
            raise DataError(
                f"{p}: sha256 {got[:12]}... does not match the manifest ({v.sha256[:12]}...); the file changed "
                "or is corrupt: restore the original, or regenerate the manifest with `memostudy data manifest`"
            )
        paths.append(p)
    return paths


def _volume_items(folder: Path) -> list[Path]:
    """Volume files and DICOM-series folders anywhere under ``folder`` (sorted, hidden skipped)."""
    items: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if any(f.lower().endswith(".dcm") for f in filenames):
            items.append(here)
        items.extend(here / f for f in sorted(filenames)
                     if not f.startswith(".") and f.lower().endswith(VOLUME_SUFFIXES) and is_volume_path(here / f))
    return sorted(items)


MRNET_SPLIT_DIRS = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}


def default_name(folder: Path) -> str:
    """A data set name from a folder's name: characters outside ``[A-Za-z0-9._-]`` become ``-``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip(".-_")[:100]
    return name or "dataset"


def manifest_from_folder(
    folder: str | Path, out: str | Path, name: str | None = None, modality: str = "MR",
    patch_size: int = 32, spacing: float | None = 1.0, seed: int = 0,
) -> Path:
    """Write a manifest for a user's folder of volumes, with a sha256 per file and a subject column.

    Subjects: a volume directly in ``folder`` is its own subject (its file name without the volume
    suffix, so ``patient.001.nii.gz`` and ``patient.002.nii.gz`` are two subjects); a volume inside a
    sub-folder belongs to the subject named by that sub-folder. The MRNet layout
    (``train|valid/<plane>/<case>.npy``) is recognised: the case number is the subject and the
    top folder its split. Otherwise subjects are split 70/15/15 by a seeded shuffle.

    The manifest is checked against the schema before it is written, and written atomically.

    Raises:
        DataError: missing or empty folder, an existing ``out`` file, an unsafe ``name``, or a bad
            ``patch_size`` / ``spacing``.
    """
    folder, out = Path(folder).resolve(), Path(out)
    if name is not None and not is_safe_name(name):
        raise DataError(f"--name {name!r}: not a valid data set name; {NAME_HINT}")
    check_patch_size(patch_size)
    if spacing is not None and not spacing > 0:
        raise DataError(f"--spacing {spacing}: must be a positive spacing in mm, or 0 to keep the native spacing")
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    if out.exists():
        raise DataError(f"{out}: already exists; choose another --out or delete it first")
    items = _volume_items(folder)
    if not items:
        raise DataError(f"{folder}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} and DICOM series)")
    entries, assign = [], {}
    mrnet = all(len(p.relative_to(folder).parts) == 3 and p.relative_to(folder).parts[0] in MRNET_SPLIT_DIRS
                and p.suffix == ".npy" for p in items)
    for p in items:
        rel = p.relative_to(folder)
        stem = volume_stem(rel.name)
        if mrnet:
            subject = f"case{stem}"
            assign[subject] = MRNET_SPLIT_DIRS[rel.parts[0]]
        else:
            subject = rel.parts[0] if len(rel.parts) > 1 else stem
        entries.append({"subject": subject, "path": rel.as_posix(), "sha256": sha256_of(p)})
    is_ct = modality.upper() == "CT"
    manifest = {
        "name": name or default_name(folder),
        "description": f"volumes under {folder.name} (manifest written by `memostudy data manifest`)",
        "modality": modality,
        "licence": "as the data owner states",
        "source": {"kind": "folder", "root": os.path.relpath(folder, out.resolve().parent)},
        "volumes": entries,
        "preprocessing": {
            "spacing": None if spacing is None else [spacing] * 3,
            "intensity": {"kind": "window", "lo": -1000, "hi": 1000} if is_ct
            else {"kind": "percentile", "lower": 0.5, "upper": 99.5},
            "foreground": {"kind": "threshold", "value": -500} if is_ct
            else {"kind": "fraction_of_percentile", "percentile": 99, "fraction": 0.1},
            "min_foreground": 0.5,
            "patch_size": [patch_size] * 3,
        },
        "split": {"kind": "by_subject", "assign": assign} if mrnet
        else {"kind": "by_subject_fraction", "fractions": {"train": 0.7, "validation": 0.15, "test": 0.15}, "seed": seed},
    }
    problems = manifest_problems(manifest)
    if problems:
        raise DataError("\n".join(f"{out}: {p}" for p in problems))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(yaml.safe_dump(manifest, sort_keys=False))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
