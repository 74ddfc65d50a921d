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
