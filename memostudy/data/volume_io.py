"""Reading and writing single volumes, with the checks that turn bad input into one clear line.

Reading goes through MONAI's ``LoadImage`` (NIfTI via nibabel, NRRD via pynrrd, DICOM series via
pydicom, ``.npy``), so a user's own CT/MRI takes the same path as the demo data. Files are only
ever opened for reading. Writing uses nibabel.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from memostudy.errors import DataError

# MONAI's DICOM reader announces a missing optional GPU codec on every read; it is noise for users
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".npy", ".mha", ".mhd")


def volume_stem(file_name: str) -> str:
    """A file name without its volume suffix: ``1.2.826.0.1.nii.gz`` -> ``1.2.826.0.1``,
    ``patient.001.nrrd`` -> ``patient.001`` (only the suffixes of :data:`VOLUME_SUFFIXES` and ``.dcm``)."""
    lower = file_name.lower()
    for suffix in sorted((*VOLUME_SUFFIXES, ".dcm"), key=len, reverse=True):
        if lower.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return file_name


def is_volume_path(path: Path) -> bool:
    """True for a file with a volume suffix, or a folder holding a DICOM series (``*.dcm``)."""
    name = path.name.lower()
    if path.is_file():
        return any(name.endswith(s) for s in VOLUME_SUFFIXES) or name.endswith(".dcm")
    return path.is_dir() and any(path.glob("*.dcm"))


def _reader_for(path: Path) -> str | None:
    name = path.name.lower()
    if path.is_dir() or name.endswith(".dcm"):
        return "PydicomReader"
    if name.endswith((".nrrd", ".nhdr")):
        return "NrrdReader"
    if name.endswith(".npy"):
        return "NumpyReader"
    if name.endswith((".nii", ".nii.gz")):
        return "NibabelReader"
    return None


def _check_gzip(path: Path) -> None:
    """Read a gzip file to its end so a damaged stream or a CRC mismatch is caught before use
    (readers may stop at the voxels they need and never see the damage)."""
    import gzip
    import zlib

    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read as a volume (corrupt gzip: {e}); re-export or re-download it") from None


def _check_format(path: Path) -> None:
    """Check the first bytes of a NIfTI, NRRD or NumPy file match its suffix, so that a file of
    another kind (e.g. text named ``.nii``) is named as such instead of failing in a fallback reader."""
    import gzip

    name = path.name.lower()
    if name.endswith(".nii.gz"):
        with gzip.open(path, "rb") as fh:
            head, kind = fh.read(4), "NIfTI"
    else:
        with open(path, "rb") as fh:
            head = fh.read(6)
        kind = "NIfTI" if name.endswith(".nii") else "NRRD" if name.endswith((".nrrd", ".nhdr")) else "NumPy"
        if not name.endswith((".nii", ".nrrd", ".nhdr", ".npy")):
            return
    if kind == "NIfTI":  # sizeof_hdr: 348 (NIfTI-1) or 540 (NIfTI-2), either byte order
        ok = len(head) >= 4 and {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")} & {348, 540}
    elif kind == "NRRD":
        ok = head.startswith(b"NRRD")
    else:
        ok = head.startswith(b"\x93NUMPY")
    if not ok:
        looks = "text" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "another format"
        raise DataError(f"{path}: not a {kind} file (its first bytes look like {looks}); "
                        f"check the file or give it the suffix of its real format")


def check_volume(path: Path, arr: np.ndarray) -> np.ndarray:
    """Squeeze a trailing singleton axis and check a loaded array is a finite 3D volume.

    Raises:
        DataError: not 3D (e.g. 4D time series) or non-finite voxels, naming ``path``.
    """
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(arr.shape)}; extract one 3D volume first")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: {bad} voxels are NaN or infinite; fix or drop this volume")
    return arr


def load_image(path: str | Path):  # -> monai.data.MetaTensor
    """Load one volume with MONAI's ``LoadImage`` as a MetaTensor (1, X, Y, Z) float32 with its affine.

    Raises:
        DataError: missing, empty or unreadable file; not 3D; NaN/inf voxels.
    """
    from monai.transforms import LoadImage

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path or the manifest's `path` entry")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; re-export or re-download it")
    if path.is_file() and path.name.lower().endswith(".gz"):
        _check_gzip(path)
    if path.is_file():
        _check_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = LoadImage(reader=_reader_for(path), image_only=True, dtype=np.float32)(str(path))
    except Exception as e:  # MONAI wraps reader errors in many types; all mean "cannot read"
        msg = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read as a volume ({msg}); check the file is complete and not corrupt") from None
    arr = check_volume(path, np.asarray(img.detach().cpu().numpy(), dtype=np.float32))
    return img.__class__(torch.from_numpy(np.ascontiguousarray(arr))[None], meta=img.meta)


def read_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Read one 3D volume and check it.

    Args:
        path: a NIfTI/NRRD/NumPy file, or a folder holding one DICOM series.

    Returns:
        ``(array, spacing)``: array (X, Y, Z) float32 in the file's own units (HU for CT);
        spacing in mm per axis.

    Raises:
        DataError: missing or unreadable file, not 3D, non-finite voxels.
    """
    img = load_image(path)
    arr = img[0].detach().cpu().numpy()
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pd_ = [float(x) for x in torch.as_tensor(img.pixdim).flatten()[:3]]
    if len(pd_) == 3 and all(np.isfinite(pd_)) and all(p > 0 for p in pd_):
        spacing = (pd_[0], pd_[1], pd_[2])
    return arr, spacing


def write_nifti(path: str | Path, volume: np.ndarray | torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Write a (X, Y, Z) or (1, X, Y, Z) volume as NIfTI with a diagonal affine of ``spacing`` (mm)."""
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"write_nifti expects a 3D volume, got shape {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([float(spacing[0]), float(spacing[1]), float(spacing[2]), 1.0])
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def list_volumes(folder: str | Path) -> list[Path]:
    """Volume files (and DICOM-series folders) directly inside ``folder``, sorted by name.

    Raises:
        DataError: the folder is missing or holds no volume.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; pass a folder of NIfTI/NRRD volumes")
    items = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and is_volume_path(p)
                   and not (p.is_file() and p.name.lower().endswith(".dcm")))
    if not items and any(folder.glob("*.dcm")):
        items = [folder]
    if not items:
        raise DataError(f"{folder}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} or DICOM series)")
    return items


def read_volume_folder(folder: str | Path) -> tuple[torch.Tensor, list[str], tuple[float, float, float]]:
    """Read every volume in a folder; all must have the same shape.

    Returns:
        ``(volumes, ids, spacing)``: volumes (N, 1, X, Y, Z) float32 as stored in the files
        (no rescaling), ids the file names, spacing of the first volume.

    Raises:
        DataError: empty folder, unreadable file, or shapes that differ (the message names the
            first file of another shape and says to crop/resample to one shape).
    """
    paths = list_volumes(folder)
    arrays, ids, spacing, shape0 = [], [], (1.0, 1.0, 1.0), None
    for p in paths:
        arr, sp = read_volume(p)
        if shape0 is None:
            shape0, spacing = arr.shape, sp
        elif arr.shape != shape0:
            raise DataError(
                f"{p}: shape {arr.shape} differs from {paths[0].name} {shape0}; crop or resample all volumes "
                "of a folder to one shape (e.g. the patch size of the study)"
            )
        arrays.append(arr)
        ids.append(p.name)
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1), ids, spacing
