"""Reading and writing single volumes and 2D images, with the checks that turn bad input into one clear line.

Reading goes through MONAI's ``LoadImage`` (NIfTI via nibabel, NRRD via pynrrd, DICOM series and single
DICOM files via pydicom, ``.npy``), so a user's own CT/MRI takes the same path as the demo data; PNG
(which MONAI reads only with Pillow or ITK, neither installed) goes through SimpleITK. Files are only ever
opened for reading. Writing uses nibabel.

Axis order: a 3D volume is an (X, Y, Z) array and a 2D image an (X, Y) array, the order of MONAI's readers
(a PNG of ``H`` rows and ``W`` columns is read as (W, H)), so a 2D image is laid out like an axial slice
``volume[:, :, k]`` of a volume and the viewers show both the same way (y upwards). PNG and DICOM files store
their rows top to bottom, so their rows are reversed on reading (y upwards, as in a 2D NIfTI slice of a RAS
volume): every 2D image then shows upright. Detectors that search flips are not affected either way.

2D or 3D: the data decide. ``read_volume_folder`` reads 2D images (PNG, 2D NIfTI, single-frame DICOM) as
well as 3D volumes; a file whose third axis has length 1 (e.g. a NIfTI of shape (X, Y, 1), or what some
tools write for one slice) is a 2D image. A folder holds one or the other, never both.
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
#: formats that only hold 2D images, read by :func:`read_volume_folder` (not by data manifests, which list 3D volumes)
IMAGE_SUFFIXES = (".png",)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def volume_stem(file_name: str) -> str:
    """A file name without its volume suffix: ``1.2.826.0.1.nii.gz`` -> ``1.2.826.0.1``,
    ``patient.001.nrrd`` -> ``patient.001`` (only the suffixes of :data:`VOLUME_SUFFIXES`, :data:`IMAGE_SUFFIXES`
    and ``.dcm``)."""
    lower = file_name.lower()
    for suffix in sorted((*VOLUME_SUFFIXES, *IMAGE_SUFFIXES, ".dcm"), key=len, reverse=True):
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
    """Check the first bytes of a NIfTI, NRRD, NumPy or PNG file match its suffix, so that a file of
    another kind (e.g. text named ``.nii``) is named as such instead of failing in a fallback reader."""
    import gzip

    name = path.name.lower()
    if name.endswith(".nii.gz"):
        with gzip.open(path, "rb") as fh:
            head, kind = fh.read(4), "NIfTI"
    else:
        with open(path, "rb") as fh:
            head = fh.read(8)
        kind = ("NIfTI" if name.endswith(".nii") else "NRRD" if name.endswith((".nrrd", ".nhdr"))
                else "PNG" if name.endswith(".png") else "NumPy")
        if not name.endswith((".nii", ".nrrd", ".nhdr", ".npy", ".png")):
            return
    if kind == "NIfTI":  # sizeof_hdr: 348 (NIfTI-1) or 540 (NIfTI-2), either byte order
        ok = len(head) >= 4 and {int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big")} & {348, 540}
    elif kind == "NRRD":
        ok = head.startswith(b"NRRD")
    elif kind == "PNG":
        ok = head.startswith(_PNG_MAGIC)
    else:
        ok = head.startswith(b"\x93NUMPY")
    if not ok:
        looks = "text" if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "another format"
        raise DataError(f"{path}: not a {kind} file (its first bytes look like {looks}); "
                        f"check the file or give it the suffix of its real format")


def check_volume(path: Path, arr: np.ndarray, dims: tuple[int, ...] = (3,)) -> np.ndarray:
    """Squeeze trailing singleton axes and check a loaded array is a finite volume (or image) of ``dims``.

    Trailing axes of length 1 go while the array has more axes than the fewest allowed: (X, Y, Z, 1) is a
    3D volume; with ``dims=(2, 3)``, (X, Y, 1) is a 2D image (one slice stored as a 3D file).

    Args:
        path: the file, named in errors.
        arr: the array as read.
        dims: the allowed numbers of spatial axes: (3,) for the study's volumes, (2, 3) for an audit folder.

    Raises:
        DataError: another number of axes (e.g. a 4D time series) or non-finite voxels, naming ``path``.
    """
    while arr.ndim > min(dims) and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in dims:
        want = " or ".join(_KIND[d] for d in sorted(dims))
        raise DataError(f"{path}: expected {want}, got shape {tuple(arr.shape)}; "
                        f"extract one {' or one '.join(_KIND[d].split(' ', 1)[1] for d in sorted(dims))} first")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path}: {bad} voxels are NaN or infinite; fix or drop this {_KIND[arr.ndim].split(' ', 1)[1]}")
    return arr


_KIND = {2: "a 2D image", 3: "a 3D volume"}


def _check_file(path: Path) -> None:
    """The checks before any reader: exists, not empty, gzip complete, first bytes match the suffix."""
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path or the manifest's `path` entry")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty; re-export or re-download it")
    if path.is_file() and path.name.lower().endswith(".gz"):
        _check_gzip(path)
    if path.is_file():
        _check_format(path)


def load_image(path: str | Path, dims: tuple[int, ...] = (3,)):  # -> monai.data.MetaTensor
    """Load one volume with MONAI's ``LoadImage`` as a MetaTensor (1, X, Y, Z) float32 with its affine
    (with ``dims=(2, 3)`` also a 2D image, (1, X, Y)).

    Raises:
        DataError: missing, empty or unreadable file; not of ``dims``; NaN/inf voxels.
    """
    from monai.transforms import LoadImage

    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = LoadImage(reader=_reader_for(path), image_only=True, dtype=np.float32)(str(path))
    except Exception as e:  # MONAI wraps reader errors in many types; all mean "cannot read"
        msg = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read as a volume ({msg}); check the file is complete and not corrupt") from None
    arr = check_volume(path, np.asarray(img.detach().cpu().numpy(), dtype=np.float32), dims)
    return img.__class__(torch.from_numpy(np.ascontiguousarray(arr))[None], meta=img.meta)


def read_png(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a grayscale PNG (8- or 16-bit) with SimpleITK as an (X, Y) = (W, H) float32 array of its stored
    values (0-255 or 0-65535; the audit maps intensities to [-1, 1] as for any folder), y upwards (the
    last row of the file is y = 0; see the module docstring).

    Colour: a PNG stored as RGB(A) whose three channels are equal (grey saved as colour, common in exports)
    is read as grey; a colour image with differing channels is refused rather than converted, since no one
    grey conversion is right for medical images (an overlay or a screenshot is not an image to audit); an
    alpha channel must be opaque.

    Returns:
        ``(array, spacing)``: spacing in mm from the PNG's pHYs chunk, (1, 1) when absent.

    Raises:
        DataError: missing, empty, not a PNG, corrupt, colour, or transparent; naming ``path``.
    """
    import SimpleITK as sitk

    path = Path(path)
    _check_file(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        msg = str(e).strip().splitlines()[-1][:160] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot read as a PNG image ({msg}); check the file is complete and not corrupt") from None
    arr = sitk.GetArrayFromImage(img)  # (H, W) or (H, W, channels)
    if arr.ndim == 3:
        n = arr.shape[-1]
        if n in (2, 4) and (arr[..., -1] < np.iinfo(arr.dtype).max).any():
            raise DataError(f"{path}: has transparent pixels (alpha channel); save it as an opaque grayscale PNG")
        grey = arr[..., : 3 if n >= 3 else 1]
        if (grey != grey[..., :1]).any():
            raise DataError(f"{path}: a colour image ({n} channels that differ); convert it to grayscale first "
                            "(e.g. SimpleITK or ImageMagick `-colorspace Gray`), knowing which grey it should be")
        arr = grey[..., 0]
    arr = check_volume(path, np.ascontiguousarray(arr[::-1].T, dtype=np.float32), (2,))  # rows reversed: y upwards
    sx, sy = (float(v) for v in img.GetSpacing()[:2])
    return arr, (sx, sy) if sx > 0 and sy > 0 else (1.0, 1.0)


def read_volume(path: str | Path, dims: tuple[int, ...] = (3,)) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read one 3D volume (or, with ``dims=(2, 3)``, a 2D image) and check it.

    Args:
        path: a NIfTI/NRRD/NumPy file, a folder holding one DICOM series, a DICOM file; with 2 in ``dims``
            also a PNG.
        dims: the allowed numbers of spatial axes.

    Returns:
        ``(array, spacing)``: array (X, Y, Z) (or (X, Y)) float32 in the file's own units (HU for CT);
        spacing in mm per axis.

    Raises:
        DataError: missing or unreadable file, not of ``dims``, non-finite voxels.
    """
    path = Path(path)
    if path.name.lower().endswith(IMAGE_SUFFIXES):
        if 2 not in dims:
            raise DataError(f"{path}: a PNG holds a 2D image, but a 3D volume is needed here; pass NIfTI/NRRD/DICOM volumes")
        return read_png(path)
    img = load_image(path, dims)
    arr = img[0].detach().cpu().numpy()
    n = arr.ndim
    if n == 2 and _reader_for(path) == "PydicomReader":  # a .dcm file, or a folder holding one frame
        arr = np.ascontiguousarray(arr[:, ::-1])  # DICOM rows run top to bottom: y upwards, as for PNG
    pd_ = [float(x) for x in torch.as_tensor(img.pixdim).flatten()[:n]]
    ok = len(pd_) == n and all(np.isfinite(pd_)) and all(p > 0 for p in pd_)
    return arr, tuple(pd_) if ok else (1.0,) * n


def write_nifti(path: str | Path, volume: np.ndarray | torch.Tensor, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> Path:
    """Write a volume (X, Y, Z) or (1, X, Y, Z), or a 2D image (X, Y) or (1, X, Y), as NIfTI with a diagonal
    affine of ``spacing`` (mm; its first 2 values for an image, so a volume's spacing may be passed).

    A (1, X, Y) array is a 2D image with its channel axis (what a 2D sample is), not a volume of one voxel in x.
    """
    arr = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"write_nifti expects a 2D image or a 3D volume, got shape {arr.shape}")
    if len(spacing) < arr.ndim:
        raise ValueError(f"write_nifti: {len(spacing)} spacing values for a {arr.ndim}D array")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*(float(s) for s in spacing[: arr.ndim]), *([1.0] * (4 - arr.ndim))])
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def _one_dicom_series(files: list[Path]) -> bool:
    """True when the ``.dcm`` files are the slices of one series (two or more files sharing one
    SeriesInstanceUID): they are one 3D volume. Otherwise each file is an image of its own.

    Raises:
        DataError: a file whose DICOM header cannot be read, naming it.
    """
    import pydicom

    if len(files) < 2:
        return False
    uids = set()
    for f in files:
        try:
            uids.add(str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).get(
                "SeriesInstanceUID", "")))
        except Exception as e:  # pydicom raises several types for a damaged header
            raise DataError(f"{f}: cannot read its DICOM header ({str(e)[:120] or type(e).__name__}); "
                            "re-export it or remove it") from None
    return len(uids) == 1 and "" not in uids


def list_volumes(folder: str | Path, images: bool = False) -> list[Path]:
    """Volume files (and DICOM-series folders) directly inside ``folder``, sorted by name.

    ``.dcm`` files directly inside ``folder``: with ``images``, each file is one image (2D, or a multi-frame
    volume) unless they are one series (:func:`_one_dicom_series`); one series, when nothing else is there,
    makes ``folder`` itself one volume (as without ``images``).

    Args:
        folder: the folder.
        images: also list 2D-only formats (:data:`IMAGE_SUFFIXES`) and single DICOM files (an audit folder).

    Raises:
        DataError: the folder is missing or holds no volume.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; pass a folder of NIfTI/NRRD volumes"
                        + (" or PNG/NIfTI/DICOM images" if images else ""))
    items = sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                   and (is_volume_path(p) or (images and p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)))
                   and not (p.is_file() and p.name.lower().endswith(".dcm")))
    dcm = sorted(p for p in folder.glob("*.dcm") if not p.name.startswith("."))
    if dcm and images and not _one_dicom_series(dcm):
        items = sorted(items + dcm)
    elif dcm and not items:
        items = [folder]
    if not items:
        raise DataError(f"{folder}: no volumes found (looked for {', '.join(VOLUME_SUFFIXES)} or DICOM series"
                        + (f"; images {', '.join(IMAGE_SUFFIXES)}, .dcm)" if images else ")"))
    return items


def read_volume_folder(folder: str | Path, progress: bool = False) -> tuple[torch.Tensor, list[str], tuple[float, ...]]:
    """Read every volume, or every 2D image, in a folder; all must have the same shape.

    3D volumes: NIfTI/NRRD/NumPy/MetaImage files and DICOM-series folders. 2D images: PNG (8/16-bit grey),
    2D NIfTI (also (X, Y, 1)), single-frame DICOM files, 2D ``.npy``. See :func:`list_volumes` for a folder
    of ``.dcm`` files.

    The volumes are read into one array allocated after the first file (no list of copies to stack: a folder
    of 800 volumes of 256 x 256 x 32 holds 6.7 GB, once).

    Args:
        folder: the folder.
        progress: a progress bar (with ETA) on stderr, shown once reading has taken 2 s.

    Returns:
        ``(volumes, ids, spacing)``: volumes (N, 1, X, Y, Z) or, for 2D images, (N, 1, X, Y) float32 as
        stored in the files (no rescaling), ids the file names, spacing of the first volume (3 or 2 values).

    Raises:
        DataError: empty folder, unreadable file, 2D images and 3D volumes mixed, or shapes that differ
            (the message names the first file of another shape and says to crop/resample to one shape).
    """
    from tqdm.auto import tqdm

    paths = list_volumes(folder, images=True)
    out, ids, spacing, shape0 = None, [], (1.0, 1.0, 1.0), None
    for k, p in enumerate(tqdm(paths, desc=f"reading {Path(folder).name}", delay=2, disable=not progress)):
        arr, sp = read_volume(p, dims=(2, 3))
        if shape0 is None:
            shape0, spacing = arr.shape, sp
            out = np.empty((len(paths), *shape0), dtype=np.float32)
        elif arr.ndim != len(shape0):
            raise DataError(
                f"{p}: {_KIND[arr.ndim]} of shape {arr.shape}, but {paths[0].name} is {_KIND[len(shape0)]} {shape0}; "
                "a folder holds only 2D images or only 3D volumes: move the others out"
            )
        elif arr.shape != shape0:
            raise DataError(
                f"{p}: shape {arr.shape} differs from {paths[0].name} {shape0}; crop or resample all "
                f"{'images' if arr.ndim == 2 else 'volumes'} of a folder to one shape (e.g. the patch size of the study)"
            )
        out[k] = arr
        ids.append(p.name)
    return torch.from_numpy(out).unsqueeze(1), ids, spacing
