"""Train a tiny LDM on phantoms (test-16 preset), resume it, sample from it, and the CLI around both."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from memostudy.cli import main
from memostudy.data.phantom import write_phantom_dataset
from memostudy.errors import ConfigError, DataError, RunExistsError
from memostudy.ldm.config import preset
from memostudy.ldm.diffusion import DiffusionTask
from memostudy.ldm.run import load_run, train_ldm
from memostudy.ldm.sampling import default_tag, sample_volumes, write_samples


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_train=8, n_validation=4, size=16)


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    return train_ldm(preset("test-16", {"data": str(data_dir)}), tmp_path_factory.mktemp("run") / "r", progress=False)


@pytest.mark.slow
def test_run_folder_layout(run_dir):
    for rel in ("config.yaml", "provenance.yaml", "data.json", "latent_scale.json", "autoencoder/losses.csv",
                "autoencoder/final.pt", "autoencoder/DONE", "diffusion/losses.csv", "diffusion/last.pt",
                "diffusion/final.pt", "diffusion/DONE", "diffusion/snapshots/epoch_0002.pt"):
        assert (run_dir / rel).exists(), rel
    assert len(pd.read_csv(run_dir / "diffusion" / "losses.csv")) == 3
    assert len(json.loads((run_dir / "data.json").read_text())["train_ids"]) == 8
    assert json.loads((run_dir / "latent_scale.json").read_text())["scale_factor"] > 0


def test_sampling_writes_n_nifti_files_of_the_right_shape_range_and_spacing(run_dir):
    vols = sample_volumes(run_dir, 3, sampler="ddim", steps=5, batch_size=2, progress=False)
    assert vols.shape == (3, 1, 16, 16, 16) and vols.dtype == torch.float32
    assert vols.min() >= -1 and vols.max() <= 1 and vols.std() > 0
    folder = write_samples(run_dir, vols, "t", sampler="ddim", steps=5, seed=0)
    files = sorted(folder.glob("sample_*.nii.gz"))
    assert [f.name for f in files] == ["sample_0000.nii.gz", "sample_0001.nii.gz", "sample_0002.nii.gz"]
    img = nib.load(files[1])
    assert img.shape == (16, 16, 16)
    np.testing.assert_allclose(img.get_fdata(), vols[1, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0))
    table = pd.read_csv(folder / "samples.csv")
    assert table["file"].tolist() == [f.name for f in files]
    assert set(table["sampler"]) == {"ddim"} and set(table["epoch"]) == {3}
    with pytest.raises(RunExistsError):
        write_samples(run_dir, vols, "t")


@pytest.mark.slow
def test_sampling_is_seeded_and_checkpoints_select_weights(run_dir):
    a = sample_volumes(run_dir, 2, steps=3, seed=1, progress=False)
    b = sample_volumes(run_dir, 2, steps=3, seed=1, progress=False)
    c = sample_volumes(run_dir, 2, steps=3, seed=2, progress=False)
    snap = sample_volumes(run_dir, 2, steps=3, seed=1, checkpoint=2, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, snap)
    assert load_run(run_dir, checkpoint=2).epoch == 2
    with pytest.raises(DataError, match="final, last, 2"):
        load_run(run_dir, checkpoint=7)


@pytest.mark.slow
def test_ddim_eta_adds_seeded_noise_and_is_recorded(run_dir, capsys):
    det = sample_volumes(run_dir, 2, steps=3, seed=1, progress=False, eta=0.0)
    noisy = sample_volumes(run_dir, 2, steps=3, seed=1, progress=False, eta=1.0)
    again = sample_volumes(run_dir, 2, steps=3, seed=1, progress=False, eta=1.0)
    assert torch.equal(noisy, again) and not torch.equal(det, noisy)
    assert torch.equal(det, sample_volumes(run_dir, 2, steps=3, seed=1, progress=False))  # test-16 keeps eta 0
    with pytest.raises(ConfigError, match="eta"):
        sample_volumes(run_dir, 1, steps=3, progress=False, eta=2.0)
    assert main(["sample", "--run", str(run_dir), "-n", "1", "--steps", "3", "--eta", "1", "--no-progress"]) == 0
    table = pd.read_csv(run_dir / "samples" / "final-ddim3-eta1-seed0" / "samples.csv")
    assert table["eta"].tolist() == [1.0]
    assert default_tag(None, "ddpm", 1000, 0, eta=1.0) == "final-ddpm1000-seed0"  # eta is DDIM's only


@pytest.mark.slow
def test_ddpm_uses_all_training_timesteps(run_dir, monkeypatch):
    cfg = preset("test-16", {"diffusion.num_train_timesteps": 20, "data": "unused"})
    run = load_run(run_dir)
    run.cfg = cfg  # a 20-step schedule keeps DDPM cheap; the count is what is tested
    calls = []
    unet_forward = run.unet.forward
    monkeypatch.setattr(run.unet, "forward", lambda *a, **k: calls.append(1) or unet_forward(*a, **k))
    from memostudy.ldm.sampling import sample_from
    v = sample_from(run, 2, sampler="ddpm", batch_size=2, progress=False)
    assert len(calls) == 20 and v.shape == (2, 1, 16, 16, 16)


@pytest.mark.slow
def test_killed_ldm_run_resumes_with_the_same_losses(data_dir, run_dir, tmp_path, monkeypatch):
    cfg = preset("test-16", {"data": str(data_dir)})
    original = DiffusionTask.loss
    calls = {"n": 0}

    def dying(self, batch, generator=None):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 5:  # killed during diffusion step 6; its last checkpoint is step 4
                raise KeyboardInterrupt
        return original(self, batch, generator)

    monkeypatch.setattr(DiffusionTask, "loss", dying)
    with pytest.raises(KeyboardInterrupt):
        train_ldm(cfg, tmp_path / "r", progress=False)
    monkeypatch.setattr(DiffusionTask, "loss", original)
    assert torch.load(tmp_path / "r" / "diffusion" / "last.pt", weights_only=False)["step"] == 4
    train_ldm(cfg, tmp_path / "r", progress=False)
    for stage in ("autoencoder", "diffusion"):
        a = pd.read_csv(run_dir / stage / "losses.csv").drop(columns="seconds")
        b = pd.read_csv(tmp_path / "r" / stage / "losses.csv").drop(columns="seconds")
        pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "r" / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()


def test_cli_train_refuses_finished_runs_bad_presets_and_missing_data(data_dir, run_dir, tmp_path, capsys):
    assert main(["train", "--preset", "test-16", "--data", str(data_dir), "--out", str(run_dir), "--no-progress"]) == 2
    assert "finished LDM run" in capsys.readouterr().err
    assert main(["train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "known presets: cpu-tiny" in capsys.readouterr().err
    assert main(["train", "--preset", "test-16", "--data", "no-such-data", "--cache", str(tmp_path),
                 "--out", str(tmp_path / "x")]) == 2
    assert "memostudy data prepare no-such-data" in capsys.readouterr().err
    assert main(["train", "--preset", "test-16", "--data", str(data_dir), "--set", "patch_size=[32,32,32]",
                 "--out", str(tmp_path / "x")]) == 2
    assert "patches of shape (16, 16, 16)" in capsys.readouterr().err


def test_cli_sample_writes_the_default_tag(run_dir, capsys):
    assert main(["sample", "--run", str(run_dir), "-n", "2", "--steps", "4", "--no-progress"]) == 0
    folder = run_dir / "samples" / "final-ddim4-seed0"
    assert len(list(folder.glob("*.nii.gz"))) == 2 and str(folder) in capsys.readouterr().out
    assert main(["sample", "--run", str(run_dir), "--checkpoint", "99", "--no-progress"]) == 2


@pytest.fixture(scope="module")
def run_dir_2d(tmp_path_factory) -> Path:
    data = write_phantom_dataset(tmp_path_factory.mktemp("phantoms2d"), n_train=8, n_validation=4, size=32,
                                 spatial_dims=2)
    return train_ldm(preset("test-32-2d", {"data": str(data), "augment": True}), tmp_path_factory.mktemp("run2d") / "r",
                     progress=False)


@pytest.mark.slow
def test_2d_ldm_trains_samples_images_and_writes_2d_nifti(run_dir_2d):
    from memostudy.ldm.sampling import read_samples

    run = load_run(run_dir_2d)
    assert run.cfg.spatial_dims == 2 and json.loads((run_dir_2d / "data.json").read_text())["patch_shape"] == [32, 32]
    for net in (run.autoencoder, run.unet):  # 2D nets throughout
        assert {type(m) for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))} == {torch.nn.Conv2d}
    losses = pd.read_csv(run_dir_2d / "diffusion" / "losses.csv")
    assert len(losses) == 3 and np.isfinite(losses["train_loss"]).all()
    vols = sample_volumes(run_dir_2d, 3, steps=5, batch_size=2, progress=False)
    assert vols.shape == (3, 1, 32, 32) and vols.min() >= -1 and vols.max() <= 1 and vols.std() > 0
    assert torch.equal(vols, sample_volumes(run_dir_2d, 3, steps=5, batch_size=2, progress=False))  # seeded
    folder = write_samples(run_dir_2d, vols, "t2d", sampler="ddim", steps=5, seed=0)
    img = nib.load(folder / "sample_0002.nii.gz")
    assert img.shape == (32, 32) and img.header["dim"][0] == 2  # a 2D NIfTI, not a volume of depth 1
    np.testing.assert_allclose(img.get_fdata(), vols[2, 0].numpy(), atol=1e-6)
    back, ids = read_samples(folder, spatial_dims=2)
    assert ids == [f"sample_{i:04d}.nii.gz" for i in range(3)] and torch.allclose(back, vols, atol=1e-6)
