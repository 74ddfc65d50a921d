"""The contrastive detector: config checks, both losses learn, copies are nearest after training."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from memostudy.config import apply_overrides
from memostudy.data.phantom import phantom_volumes
from memostudy.detect.detector import (
    ContrastiveTask,
    Detector,
    DetectorConfig,
    DetectorNet,
    embed,
    load_detector,
    load_or_train_detector,
    save_detector,
    train_detector,
)
from memostudy.detect.similarity import nearest
from memostudy.detect.views import apply_family
from memostudy.errors import ConfigError, DataError

# 16^3 phantoms pooled to 8^3, one halving to the 4^3 x 8 latent: a step costs milliseconds
TINY = dict(channels=(8, 16), input_pool=2, latent_size=4, hidden=32, batch_size=8, lr=1e-2)


def test_config_validation():
    with pytest.raises(ConfigError, match="detector.loss"):
        DetectorConfig(loss="hinge").validate()
    with pytest.raises(ConfigError, match="norm_num_groups"):
        DetectorConfig(channels=(8, 12)).validate()
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(DetectorConfig(), {"batch_size": "1"})


def test_default_net_reaches_4x4x4x8_and_32d():
    cfg = DetectorConfig()
    net = DetectorNet(cfg)
    x = torch.zeros(2, 1, 32, 32, 32)
    assert net.encoder(net.input_pool(x)).shape == (2, 8, 4, 4, 4)
    assert net(x).shape == (2, 32)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ntxent", "triplet"])
def test_each_loss_decreases(loss):
    torch.manual_seed(0)
    x = phantom_volumes(8, 16, seed=0)
    cfg = DetectorConfig(loss=loss, view_strength=0.0, **TINY).validate()
    net = DetectorNet(cfg)
    task = ContrastiveTask(net, cfg)

    def fixed_loss() -> float:  # same views each time, so only the weights change (batch statistics in BatchNorm)
        net.train()
        with torch.no_grad():
            return float(task.loss(x, torch.Generator().manual_seed(99)))

    before = fixed_loss()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    net.train()
    for _ in range(60):
        opt.zero_grad()
        task.loss(x).backward()
        opt.step()
    assert fixed_loss() < 0.9 * before


@pytest.fixture(scope="module")
def trained():
    train = phantom_volumes(8, 16, seed=0)
    # orientations only: the tiny phantoms lose their identity under full-strength blur/shift/noise
    cfg = DetectorConfig(epochs=150, view_strength=0.0, select_best=False, standardise=False, **TINY)
    return train, train_detector(train, phantom_volumes(4, 16, seed=5), cfg)


@pytest.mark.slow
def test_flipped_and_rotated_copies_are_nearest(trained):
    # learned invariance only (no orientation pooling): the copies' nearest training volume is their source
    train, det = trained
    e_train = embed(det, train, orientation_pooling=False)
    for fam in ("flip", "rot90"):
        copies = apply_family(train, fam, torch.Generator().manual_seed(1))
        res = nearest(embed(det, copies, orientation_pooling=False), e_train)
        assert (res.indices == torch.arange(len(train))).float().mean() >= 0.75, fam
    assert det.best_epoch == 150 and len(det.history) == 150 and "val_loss" in det.history[0]


def test_orientation_pooling_is_exactly_invariant(trained):
    train, det = trained
    rotated = apply_family(train[:3], "rot90", torch.Generator().manual_seed(0))
    a, b = embed(det, train[:3]), embed(det, rotated)
    assert torch.allclose(a, b, atol=1e-5)
    # without pooling the same detector's embedding does move under rotation
    assert not torch.allclose(embed(det, train[:3], orientation_pooling=False),
                              embed(det, rotated, orientation_pooling=False), atol=1e-3)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)


def test_checkpoint_holds_architecture_and_weights_only(trained, tmp_path):
    _, det = trained
    ckpt = torch.load(save_detector(det, tmp_path / "detector.pt"), weights_only=True)
    # every field, but those marked OMIT_DEFAULT while at their default (view_families: the classic views)
    at_default = {f.name for f in dataclasses.fields(DetectorConfig) if f.metadata.get("omit_default")
                  and getattr(det.config, f.name) == getattr(DetectorConfig(), f.name)}
    assert at_default == {"view_families", "spatial_dims", "max_steps"}  # a 3D detector's config is that of before 2D and max_steps
    assert set(ckpt["config"]) == {f.name for f in dataclasses.fields(DetectorConfig)} - at_default
    assert load_detector(tmp_path / "detector.pt").config == det.config
    assert not set(ckpt["config"]) & {"representation", "search_shift", "orientation_pooling"}


def test_checkpoint_with_comparison_fields_still_loads(trained, tmp_path):
    # detector.pt files written before CompareConfig carried the comparison settings in their config
    train, det = trained
    path = save_detector(det, tmp_path / "old.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"].update(representation="embedding", search_shift=1.0, orientation_pooling=False)
    torch.save(ckpt, path)
    again = load_detector(path)
    assert again.config == det.config
    assert torch.equal(embed(again, train), embed(det, train))


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_load_or_train_loads_a_checkpoint_and_trains_otherwise(tmp_path):
    train = phantom_volumes(4, 16, seed=0)
    cfg = DetectorConfig(epochs=1, **TINY)
    trained = load_or_train_detector(train, None, cfg, out_dir=tmp_path / "run")
    assert (tmp_path / "run" / "detector.pt").exists() and trained.best_epoch == 1
    # a checkpoint brings its own architecture: the (different) config passed is not used
    loaded = load_or_train_detector(train, None, DetectorConfig(epochs=7), checkpoint=tmp_path / "run" / "detector.pt")
    assert loaded.config == cfg
    assert all(torch.equal(a, b) for a, b in zip(loaded.net.state_dict().values(), trained.net.state_dict().values()))


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_finished_training_is_reused_also_when_recorded_with_comparison_fields(tmp_path):
    from memostudy.training import load_checkpoint

    train = phantom_volumes(4, 16, seed=0)
    cfg = DetectorConfig(epochs=1, **TINY)
    first = train_detector(train, None, cfg, out_dir=tmp_path)
    final = tmp_path / "detector_training" / "final.pt"
    ckpt = load_checkpoint(final)
    # a training folder written before CompareConfig recorded orientation_pooling in its meta
    ckpt["config"]["meta"]["detector"]["orientation_pooling"] = True
    torch.save(ckpt, final)
    stamp = (tmp_path / "detector_training" / "losses.csv").stat().st_mtime_ns
    again = train_detector(train, None, cfg, out_dir=tmp_path)
    assert (tmp_path / "detector_training" / "losses.csv").stat().st_mtime_ns == stamp  # not retrained
    assert all(torch.equal(a, b) for a, b in zip(again.net.state_dict().values(), first.net.state_dict().values()))
    # another config: the folder is set aside (not deleted) and the detector trained again
    train_detector(train, None, DetectorConfig(epochs=1, **{**TINY, "hidden": 16}), out_dir=tmp_path)
    assert len(list(tmp_path.glob("detector_training.aside-*"))) == 1


@pytest.mark.slow  # trains or prepares a data set end to end: make test runs it
def test_a_training_folder_is_never_resumed_on_other_data(tmp_path, capsys):
    """Issue 18, defect 3: a run killed mid-training, rerun with another training set, resumed on it."""
    from memostudy.training import RunFolder

    cfg = DetectorConfig(epochs=2, **TINY)
    first = train_detector(phantom_volumes(4, 16, seed=0), None, cfg, out_dir=tmp_path)
    folder = RunFolder(tmp_path / "detector_training")
    folder.done.unlink()  # as if killed after its last checkpoint
    other = phantom_volumes(4, 16, seed=5)
    again = train_detector(other, None, cfg, out_dir=tmp_path)
    assert "other training data" in capsys.readouterr().err
    assert len(list(tmp_path.glob("detector_training.aside-*"))) == 1
    fresh = train_detector(other, None, cfg, out_dir=tmp_path / "fresh")
    for a, b in zip(again.net.state_dict().values(), fresh.net.state_dict().values()):
        assert torch.equal(a, b)  # trained on the new data only, from scratch
    assert not all(torch.equal(a, c) for a, c in zip(again.net.state_dict().values(), first.net.state_dict().values()))


def test_damaged_checkpoint_is_one_line_naming_the_file(trained, tmp_path):
    path = save_detector(trained[1], tmp_path / "detector.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"] = {"encoder.weight": torch.zeros(3)}
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(DataError, match="wrong.pt: detector checkpoint is damaged") as e:
        load_detector(tmp_path / "wrong.pt")
    assert "\n" not in str(e.value)


def test_save_load_roundtrip(trained, tmp_path):
    train, det = trained
    path = save_detector(det, tmp_path / "detector.pt")
    again = load_detector(path)
    assert again.config == det.config
    assert torch.allclose(embed(again, train), embed(det, train))
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        load_detector(tmp_path / "bad.pt")
    with pytest.raises(DataError, match="not found"):
        load_detector(tmp_path / "missing.pt")


def test_needs_two_volumes():
    with pytest.raises(DataError, match="at least 2"):
        train_detector(phantom_volumes(1, 16), None, DetectorConfig(**TINY))


def test_standardise_makes_the_embedding_intensity_invariant(tmp_path):
    torch.manual_seed(0)
    det_cfg = DetectorConfig(**TINY, standardise=True)
    net = DetectorNet(det_cfg).eval()
    x = phantom_volumes(3, 16, seed=2)
    assert torch.allclose(net(x), net(x * 0.7 + 0.2), atol=1e-4)
    plain = DetectorNet(DetectorConfig(**TINY, standardise=False)).eval()
    assert not torch.allclose(plain(x), plain(x * 0.7 + 0.2), atol=1e-4)
    # a checkpoint written before the option existed loads as trained: without it
    path = save_detector(Detector(plain, DetectorConfig(**TINY, standardise=False)), tmp_path / "old.pt")
    ckpt = torch.load(path, weights_only=True)
    del ckpt["config"]["standardise"]
    torch.save(ckpt, path)
    assert load_detector(path).config.standardise is False


def test_view_families_config_and_views():
    from memostudy.config import to_dict

    assert "view_families" not in to_dict(DetectorConfig())  # cached detectors of the classic views keep their hash
    with pytest.raises(ConfigError, match="view_families"):
        DetectorConfig(view_families=("flip",)).validate()
    with pytest.raises(ConfigError, match="combine"):
        DetectorConfig(view_families=("combined",)).validate()
    cfg = apply_overrides(DetectorConfig(**TINY), {"view_families": "noise"})
    assert cfg.view_families == ("noise",) and to_dict(cfg)["view_families"] == ["noise"]
    task = ContrastiveTask(DetectorNet(cfg), cfg)
    x = phantom_volumes(4, 16, seed=0)
    v = task.view(x, torch.Generator().manual_seed(0))
    # an orientation, then Gaussian noise of std 0.05 or 0.1: the voxel values differ from every orientation's
    # only by that noise (orientations permute values, so sorted values compare across them)
    d = (v.flatten(1).sort(1).values - x.flatten(1).sort(1).values).std(1)
    assert ((d > 0.005) & (d < 0.12)).all()
    assert torch.equal(v, task.view(x, torch.Generator().manual_seed(0)))


#: the dict of the default config before 2D images existed (main at c5086fb): the training folders and cached
#: detectors of 3D runs are keyed on it, so it must not change
CONFIG_3D = {"loss": "ntxent", "temperature": 0.1, "margin": 0.5, "embedding_dim": 32, "channels": [16, 32, 32],
             "latent_channels": 8, "latent_size": 4, "input_pool": 2, "standardise": True, "hidden": 256,
             "view_strength": 1.0, "num_res_blocks": 1, "norm_num_groups": 8, "epochs": 30, "lr": 0.003,
             "batch_size": 32, "seed": 0, "select_best": True}


def test_a_3d_config_dict_is_unchanged_by_2d_support():
    from memostudy.config import to_dict

    assert to_dict(DetectorConfig()) == CONFIG_3D and list(to_dict(DetectorConfig())) == list(CONFIG_3D)
    assert to_dict(DetectorConfig(spatial_dims=2)) == CONFIG_3D | {"spatial_dims": 2}
    with pytest.raises(ConfigError, match="spatial_dims"):
        DetectorConfig(spatial_dims=1).validate()


def test_2d_net_shapes_and_a_net_refuses_the_other_rank():
    net = DetectorNet(DetectorConfig(spatial_dims=2, **TINY)).eval()
    x = torch.zeros(3, 1, 16, 16)
    assert net.latent(x).shape == (3, 8, 4, 4) and net(x).shape == (3, 32)
    with pytest.raises(DataError, match="2D"):
        net(torch.zeros(3, 1, 16, 16, 16))
    with pytest.raises(DataError, match="3D"):
        DetectorNet(DetectorConfig(**TINY)).eval()(x)


@pytest.mark.slow
def test_a_2d_detector_trains_saves_loads_and_embeds(tmp_path):
    from memostudy.config import to_dict
    from memostudy.detect.matching import CompareConfig, base_vectors, query_vectors

    images = phantom_volumes(8, 16, seed=0)[:, :, 8].contiguous()  # (8, 1, 16, 16) slices
    cfg = DetectorConfig(epochs=2, view_strength=0.0, **TINY)  # spatial_dims comes from the data
    det = train_detector(images, None, cfg, out_dir=tmp_path)
    assert det.config.spatial_dims == 2 and det.net.spatial_dims == 2 and len(det.history) == 2
    ckpt = torch.load(tmp_path / "detector.pt", weights_only=True)
    assert ckpt["config"]["spatial_dims"] == 2 and ckpt["config"] == to_dict(det.config)
    back = load_detector(tmp_path / "detector.pt")
    assert back.config == det.config and back.net.spatial_dims == 2
    e = embed(back, images)
    assert e.shape == (8, 32) and torch.allclose(e, embed(det, images), atol=1e-6)
    # orientation pooling over the 8 orientations of a square: exactly invariant to D4
    turned = apply_family(images, "orientation", torch.Generator().manual_seed(0))
    assert torch.allclose(embed(back, turned), e, atol=1e-5)
    # the latent search: 8 orientations of each query, 9 shifts of each base image
    assert query_vectors(back, images).shape == (8, 8, 8 * 4 * 4)
    assert base_vectors(back, images, CompareConfig(search_shift=2.0)).shape == (9, 8, 8 * 4 * 4)
    # the 3D training of the same config keeps its config (and so its folder key) as before
    vols = phantom_volumes(4, 16, seed=1)
    assert train_detector(vols, None, dataclasses.replace(cfg, epochs=1)).config.spatial_dims == 3


def test_max_steps_caps_training_and_keeps_the_config_dict(tmp_path):
    from memostudy.config import to_dict

    assert "max_steps" not in to_dict(DetectorConfig())  # cached detectors keep their hashes
    assert to_dict(DetectorConfig(max_steps=5))["max_steps"] == 5
    assert apply_overrides(DetectorConfig(), {"max_steps": "7"}).max_steps == 7  # --set max_steps=7
    with pytest.raises(ConfigError, match="max_steps"):
        DetectorConfig(max_steps=0).validate()
    train = phantom_volumes(12, 16, seed=0)  # batch 8: 2 steps per epoch
    capped = train_detector(train, None, DetectorConfig(epochs=4, max_steps=3, **TINY), out_dir=tmp_path / "capped")
    assert len(capped.history) == 2  # 3 steps: one whole epoch and half of the next, not 4 epochs
    assert "3 steps" in (tmp_path / "capped" / "detector_training" / "DONE").read_text()
    # a cap above what the epochs take changes nothing
    loose = train_detector(train, None, DetectorConfig(epochs=2, max_steps=100, **TINY))
    plain = train_detector(train, None, DetectorConfig(epochs=2, **TINY))
    assert all(torch.equal(a, b) for a, b in zip(loose.net.state_dict().values(), plain.net.state_dict().values()))
