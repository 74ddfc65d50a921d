"""Registered correlation (memostudy.detect.registration) on tiny smooth random volumes."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from memostudy.detect.registration import Change, RegisterConfig, local_ncc_score, registered_nearest
from memostudy.errors import ConfigError

pytest.importorskip("SimpleITK")

N = 20
CFG = RegisterConfig(iterations=40, starts=2, shortlist=3)


def _blobs(n: int, seed: int) -> torch.Tensor:
    """(n, 1, N, N, N) smooth random volumes in [-1, 1] (anatomy-like texture, no flat regions)."""
    rng = np.random.default_rng(seed)
    v = np.stack([ndimage.gaussian_filter(rng.normal(size=(N, N, N)), 1.5) for _ in range(n)])
    v = v / np.abs(v).max(axis=(1, 2, 3), keepdims=True)
    return torch.from_numpy(v[:, None]).float()


def _moved(volume: torch.Tensor, angle_deg: float, shift_dhw: tuple[float, float, float]) -> torch.Tensor:
    """The volume turned by ``angle_deg`` about the D axis through its centre, then moved by ``shift_dhw``."""
    r = Rotation.from_rotvec(np.deg2rad(angle_deg) * np.array([1.0, 0, 0])).as_matrix()  # (d, h, w) index space
    c = (np.array(volume.shape[-3:]) - 1) / 2
    s = np.array(shift_dhw)
    # output[o] = input[r^T (o - c - s) + c]
    out = ndimage.affine_transform(volume[0].numpy(), r.T, offset=c - r.T @ (c + s), order=1, mode="nearest")
    return torch.from_numpy(out)[None].float()


@pytest.mark.slow  # ~2-8 s: registrations on shared cores
def test_rotated_and_shifted_copy_is_found_with_its_angle_and_shift() -> None:
    base = _blobs(4, 0)
    copy = _moved(base[2], 35.0, (2.0, -1.0, 0.0))
    res = registered_nearest(copy[None], base, None, CFG)
    ch = res.changes[0]
    assert int(res.nearest.indices[0]) == 2
    assert res.nearest.values[0] > 0.8
    assert not ch.mirrored
    assert abs(ch.rotation_deg - 35.0) < 5.0
    assert abs(abs(ch.rotation_axis[0]) - 1.0) < 0.1  # about the D axis
    assert np.allclose(ch.shift_voxels, (2.0, -1.0, 0.0), atol=1.0)
    assert set(res.shortlists[0].tolist()) >= {2}


@pytest.mark.slow  # ~2-6 s
def test_partial_and_contrast_copies_score_above_novel() -> None:
    base = _blobs(4, 1)
    other = _blobs(2, 2)
    partial = base[1].clone()
    partial[..., : N // 2 - 2, :] = other[0][..., : N // 2 - 2, :]  # ~40 % replaced by new content
    curved = ((base[3] + 1) / 2) ** 2.0 * 2 - 1  # gamma 2 on [0, 1]
    novel = other[1]
    res = registered_nearest(torch.stack([partial, curved, novel]), base, None, CFG)
    v = res.nearest.values
    assert res.nearest.indices[:2].tolist() == [1, 3]
    assert v[1] > 0.8  # contrast curve: locally affine, so the local correlation stays high
    assert v[0] > v[2] + 0.3 and v[1] > v[2] + 0.3
    assert v[2] < 0.5  # a novel volume


def test_local_ncc_score_counts_only_the_overlap() -> None:
    x = _blobs(2, 3)
    full = torch.ones(N, N, N)
    assert local_ncc_score(x[0, 0], x[0, 0], full, CFG) == pytest.approx(1.0)
    assert local_ncc_score(x[0, 0], -x[0, 0], full, CFG) == pytest.approx(-1.0)
    half = full.clone()
    half[: N // 2 + 2] = 0  # the registered volume covers less than half: the median falls to 0
    assert local_ncc_score(x[0, 0], x[0, 0], half, CFG) == 0.0


def test_change_as_dict_and_config_checks() -> None:
    d = Change(True, 12.345, (1.0, 0.0, 0.0), (1.234, 0.0, -2.0)).as_dict()
    assert d["mirrored"] is True and d["rotation_deg"] == 12.3 and d["shift_voxels"] == [1.23, 0.0, -2.0]
    assert d["deformation_voxels"] is None and d["stage"] == "rigid"
    with pytest.raises(ConfigError, match="stages"):
        RegisterConfig(stages=("affine",)).validate()
    with pytest.raises(ConfigError, match="window"):
        RegisterConfig(window=4).validate()


def test_the_registered_detector_is_3d_only() -> None:
    images = torch.zeros(2, 1, 16, 16)
    with pytest.raises(ConfigError, match="3D only"):
        registered_nearest(images, images)


@pytest.mark.slow  # registrations on shared cores
def test_the_block_score_can_score_registered_pairs() -> None:
    # a copy turned by 90 degrees about D and rescaled in intensity: the coarse start (the cube's rotations) is exact
    base = _blobs(3, 0)
    copy = base[[1]].rot90(1, (3, 4)) * 0.8 + 0.1
    cfg = RegisterConfig(shortlist=3, starts=1, extra_rotations=0, stages=("rigid",), iterations=5, score="blocks")
    res = registered_nearest(copy, base, cfg=cfg)
    assert res.nearest.indices.item() == 1
    assert res.nearest.values.item() > 0.9
    novel = registered_nearest(_blobs(1, 7), base, cfg=cfg).nearest.values.item()
    assert novel < res.nearest.values.item() - 0.2
    with pytest.raises(ConfigError, match="registration score"):
        RegisterConfig(score="nope").validate()
