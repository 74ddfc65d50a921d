"""Reading and writing single volumes: round trip, stems, formats named by their first bytes, folder checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memostudy.data.volume_io import list_volumes, read_volume, read_volume_folder, volume_stem, write_nifti
from memostudy.errors import DataError


def test_nifti_round_trip_keeps_values_and_spacing(tmp_path):
    vol = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    path = write_nifti(tmp_path / "v.nii.gz", vol, spacing=(0.5, 1.0, 2.5))
    arr, spacing = read_volume(path)
    np.testing.assert_allclose(arr, vol, atol=1e-6)
    assert spacing == pytest.approx((0.5, 1.0, 2.5))


@pytest.mark.parametrize("name, stem", [("1.2.826.0.1.nii.gz", "1.2.826.0.1"), ("patient.001.nrrd", "patient.001"),
                                        ("scan.npy", "scan"), ("a.b.mha", "a.b")])
def test_only_the_volume_suffix_is_stripped(name, stem):
    assert volume_stem(name) == stem


def test_a_text_file_named_nii_is_reported_as_not_nifti(tmp_path):
    bad = tmp_path / "x.nii"
    bad.write_text("hello, not an image\n")
    with pytest.raises(DataError, match=r"x.nii: not a NIfTI file"):
        read_volume(bad)


def test_nan_voxels_are_refused_naming_the_file(tmp_path):
    vol = np.zeros((4, 4, 4), np.float32)
    vol[1, 1, 1] = np.nan
    np.save(tmp_path / "n.npy", vol)
    with pytest.raises(DataError, match="n.npy"):
        read_volume(tmp_path / "n.npy")


def test_a_folder_is_read_in_name_order_and_shapes_must_agree(tmp_path):
    for i in (2, 0, 1):
        write_nifti(tmp_path / f"v{i}.nii.gz", np.full((4, 4, 4), i, np.float32))
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in list_volumes(tmp_path)] == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"]
    vols, ids, _ = read_volume_folder(tmp_path)
    assert ids == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz"] and vols.shape == (3, 1, 4, 4, 4)
    assert torch.equal(vols[:, 0, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    write_nifti(tmp_path / "v3.nii.gz", np.zeros((4, 4, 5), np.float32))
    with pytest.raises(DataError, match="v3.nii.gz"):
        read_volume_folder(tmp_path)


def test_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        read_volume_folder(tmp_path)


# --- 2D images (issue 21): PNG, 2D NIfTI, single-frame DICOM; (X, Y) = the transpose of the (rows, columns) grid

IMAGE = (np.arange(6 * 5).reshape(6, 5) * 7 % 31).astype(np.uint16)  # 6 rows, 5 columns: read as (X, Y) = (5, 6)
UPRIGHT = IMAGE[::-1].T  # (X, Y), y upwards: the top row of the file has the largest y


def _write_2d(kind: str, path, grid: np.ndarray = IMAGE):
    """Write ``grid`` (rows, columns) in one 2D format; returns the file."""
    import SimpleITK as sitk

    if kind == "png8":
        sitk.WriteImage(sitk.GetImageFromArray(grid.astype(np.uint8)), str(path / "a.png"))
        return path / "a.png"
    if kind == "png16":
        sitk.WriteImage(sitk.GetImageFromArray(grid.astype(np.uint16) * 1000), str(path / "a.png"))
        return path / "a.png"
    if kind == "png-grey-rgb":
        rgb = np.repeat(grid.astype(np.uint8)[..., None], 3, axis=-1)
        sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(path / "a.png"))
        return path / "a.png"
    if kind == "nifti2d":
        return write_nifti(path / "a.nii.gz", grid.T.astype(np.float32))
    if kind == "nifti-one-slice":
        import nibabel as nib

        nib.save(nib.Nifti1Image(grid.T[:, :, None].astype(np.float32), np.eye(4)), str(path / "a.nii.gz"))
        return path / "a.nii.gz"
    if kind == "dicom":
        sitk.WriteImage(sitk.GetImageFromArray(grid.astype(np.int16)), str(path / "a.dcm"))
        return path / "a.dcm"
    raise ValueError(kind)


@pytest.mark.parametrize("kind, scale", [("png8", 1), ("png16", 1000), ("png-grey-rgb", 1), ("nifti2d", 1),
                                         ("nifti-one-slice", 1), ("dicom", 1)])
def test_each_2d_format_is_read_as_an_x_y_image_of_its_stored_values(tmp_path, kind, scale):
    _write_2d(kind, tmp_path)
    vols, ids, spacing = read_volume_folder(tmp_path)
    assert vols.shape == (1, 1, 5, 6) and len(spacing) == 2 and ids[0].startswith("a.")
    # NIfTI stores (X, Y) as written (here IMAGE.T); PNG and DICOM store rows top to bottom and are read y upwards
    expected = IMAGE.T if kind.startswith("nifti") else UPRIGHT
    np.testing.assert_array_equal(vols[0, 0].numpy(), expected.astype(np.float32) * scale)


def test_a_colour_png_is_refused_naming_the_file(tmp_path):
    import SimpleITK as sitk

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200  # red: the channels differ
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "red.png"))
    with pytest.raises(DataError, match=r"red.png: a colour image .*convert it to grayscale"):
        read_volume_folder(tmp_path)


def test_2d_images_and_3d_volumes_in_one_folder_are_refused_naming_the_file(tmp_path):
    _write_2d("png8", tmp_path)
    write_nifti(tmp_path / "b.nii.gz", np.zeros((5, 6, 4), np.float32))
    with pytest.raises(DataError, match=r"b.nii.gz: a 3D volume .* a.png is a 2D image .*only 2D images or only 3D"):
        read_volume_folder(tmp_path)


def test_2d_images_of_different_shapes_are_refused_naming_the_file(tmp_path):
    _write_2d("png8", tmp_path)
    write_nifti(tmp_path / "b.nii.gz", np.zeros((5, 7), np.float32))
    with pytest.raises(DataError, match=r"b.nii.gz: shape \(5, 7\) differs from a.png \(5, 6\).*images"):
        read_volume_folder(tmp_path)


def test_nan_pixels_of_a_2d_image_are_refused_naming_the_file(tmp_path):
    img = np.zeros((5, 6), np.float32)
    img[2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", img)
    with pytest.raises(DataError, match=r"nan.nii.gz: 1 voxels are NaN"):
        read_volume_folder(tmp_path)


def test_corrupt_pngs_give_one_line_naming_the_file(tmp_path):
    (tmp_path / "text.png").write_text("not an image at all\n")
    with pytest.raises(DataError, match=r"text.png: not a PNG file") as e:
        read_volume_folder(tmp_path)
    assert "\n" not in str(e.value)
    (tmp_path / "text.png").unlink()
    good = _write_2d("png8", tmp_path).read_bytes()
    (tmp_path / "a.png").write_bytes(good[:30])  # the header survives, the pixels do not
    with pytest.raises(DataError, match=r"a.png: cannot read as a PNG image") as e:
        read_volume_folder(tmp_path)
    assert "\n" not in str(e.value)


def test_a_png_is_refused_where_a_3d_volume_is_needed(tmp_path):
    with pytest.raises(DataError, match=r"a.png: a PNG holds a 2D image"):
        read_volume(_write_2d("png8", tmp_path))


def test_write_nifti_writes_a_2d_sample_as_a_2d_nifti(tmp_path):
    import nibabel as nib

    img = np.random.default_rng(0).normal(size=(1, 5, 6)).astype(np.float32)  # (1, X, Y): a 2D sample
    path = write_nifti(tmp_path / "s.nii.gz", torch.from_numpy(img), spacing=(0.5, 2.0, 9.0))
    assert nib.load(path).shape == (5, 6)
    arr, spacing = read_volume(path, dims=(2, 3))
    np.testing.assert_allclose(arr, img[0], atol=1e-6)
    assert spacing == pytest.approx((0.5, 2.0))


def test_dicom_files_of_one_series_stay_one_volume_and_of_several_series_are_images(tmp_path):
    import pydicom

    for name in ("s1.dcm", "s2.dcm"):
        _write_2d("dicom", tmp_path).rename(tmp_path / name)
    assert [p.name for p in list_volumes(tmp_path, images=True)] == ["s1.dcm", "s2.dcm"]  # two series: two images
    uid = pydicom.dcmread(tmp_path / "s1.dcm").SeriesInstanceUID
    ds = pydicom.dcmread(tmp_path / "s2.dcm")
    ds.SeriesInstanceUID = uid
    ds.save_as(tmp_path / "s2.dcm")
    assert list_volumes(tmp_path, images=True) == [tmp_path]  # one series: one volume, as for 3D
