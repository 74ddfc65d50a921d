"""The cache of trained models: config hashes name the folders, finished models and samples are reused,
unfinished ones resumed, and a changed setting gets its own folder."""

from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from filelock import FileLock

import memostudy.study.cache as cache
from memostudy.errors import DataError
from memostudy.ldm.config import preset
from memostudy.study.cache import (
    autoencoder_key,
    config_hash,
    get_detector,
    ldm_training_patches,
    shared_autoencoder_dir,
    synthesize,
    train_or_resume,
)
from memostudy.training import RunFolder


def _refuse(*args, **kwargs):
    raise AssertionError("the cache should have been used")


def test_config_hash_is_stable_and_follows_every_field(monkeypatch) -> None:
    a, b = preset("test-16"), preset("test-16")
    assert config_hash(a) == config_hash(b) and len(config_hash(a)) == 10
    assert config_hash(a) != config_hash(preset("test-16", {"diffusion.loop.epochs": 4}))
    assert config_hash(a) != config_hash(preset("test-16", {"seed": 1}))
    assert config_hash({"x": 1, "y": [1, 2]}) == config_hash({"y": [1, 2], "x": 1})  # key order does not matter
    before = config_hash(a)
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)  # a code change that invalidates models
    assert config_hash(a) != before


@pytest.mark.slow
def test_a_finished_ldm_is_reused_and_an_unfinished_one_resumed(tiny_result, tmp_path: Path, monkeypatch) -> None:
    root = tiny_result.run_dir.parent.parent
    monkeypatch.setattr(cache, "train_ldm", _refuse)
    assert train_or_resume(tiny_result.ldm_config, root, progress=False) == tiny_result.run_dir
    # the same config in another work folder: trained there (the call is recorded, not run)
    calls = []
    monkeypatch.setattr(cache, "train_ldm", lambda cfg, run_dir, progress, on_snapshot=None: calls.append(run_dir))
    other = train_or_resume(tiny_result.ldm_config, tmp_path, progress=False)
    assert calls == [other] and other.name == tiny_result.run_dir.name and other.parent == tmp_path / "ldm"
    # interrupted there (the folder exists, no DONE marker): resumed in the same folder
    (other / "diffusion").mkdir(parents=True)
    assert train_or_resume(tiny_result.ldm_config, tmp_path, progress=False) == other and calls == [other, other]
    # another config: another folder
    changed = preset("test-16", {"data": str(tiny_result.ldm_config.data), "diffusion.loop.epochs": 4})
    assert train_or_resume(changed, tmp_path, progress=False) != other and len(calls) == 3


def test_the_autoencoder_key_holds_what_the_autoencoder_stage_depends_on_and_nothing_after_it() -> None:
    base = preset("test-16")
    key = autoencoder_key(base)
    for later in ({"augment": True}, {"diffusion.loop.steps": 7}, {"diffusion.ema_decay": 0.9},
                  {"sampling.steps": 3}):
        assert autoencoder_key(preset("test-16", later)) == key, later
    for earlier in ({"seed": 1}, {"max_train_patches": 3}, {"autoencoder.loop.steps": 7},
                    {"autoencoder.kl_weight": 1e-3}, {"data": "elsewhere"}):
        assert autoencoder_key(preset("test-16", earlier)) != key, earlier


@pytest.mark.slow
def test_an_ldm_differing_after_the_autoencoder_takes_over_the_finished_autoencoder(tiny_result, tmp_path: Path,
                                                                                   monkeypatch) -> None:
    cfg = tiny_result.ldm_config
    shared = shared_autoencoder_dir(cfg, tiny_result.run_dir.parent.parent)
    assert RunFolder(shared).is_done()  # the study's run left a copy of its finished autoencoder
    assert (shared / "final.pt").read_bytes() == (tiny_result.run_dir / "autoencoder" / "final.pt").read_bytes()
    root = tmp_path / "runs"
    shutil.copytree(shared, shared_autoencoder_dir(cfg, root))
    seen = {}

    def record(c, run_dir, progress, on_snapshot=None):  # what train_ldm finds when it starts
        ae = RunFolder(run_dir / "autoencoder")
        seen[c.seed, c.augment] = ae.is_done() and ae.final.read_bytes() == (shared / "final.pt").read_bytes()

    monkeypatch.setattr(cache, "train_ldm", record)
    train_or_resume(replace(cfg, augment=True), root, progress=False)
    train_or_resume(replace(cfg, seed=cfg.seed + 1), root, progress=False)  # another seed: its own autoencoder
    assert seen == {(cfg.seed, True): True, (cfg.seed + 1, False): False}


@pytest.mark.slow
def test_a_second_process_wanting_an_ldm_being_trained_waits_and_then_reuses_it(tiny_result, tmp_path: Path,
                                                                               monkeypatch) -> None:
    cfg = tiny_result.ldm_config
    root = tmp_path / "runs"
    run_dir = cache.ldm_run_dir(cfg, root)
    (root / "ldm" / ".locks").mkdir(parents=True)
    holding = threading.Event()

    def other() -> None:  # "another process" is training this LDM and finishes it a moment later
        with FileLock(str(root / "ldm" / ".locks" / f"{run_dir.name}.lock")):
            holding.set()
            time.sleep(0.5)
            shutil.copytree(tiny_result.run_dir, run_dir)

    monkeypatch.setattr(cache, "train_ldm", _refuse)
    waiter = threading.Thread(target=other)
    waiter.start()
    holding.wait()
    t = time.monotonic()
    assert train_or_resume(cfg, root, progress=False) == run_dir
    waiter.join()
    assert time.monotonic() - t >= 0.4  # it waited, then reused the finished run instead of training


def test_ldm_training_patches_are_those_data_json_names(tiny_result, tmp_path: Path) -> None:
    ids = json.loads((tiny_result.run_dir / "data.json").read_text())["train_ids"]
    got = ldm_training_patches(tiny_result.run_dir, tiny_result.ldm_config)
    assert got.ids == ids and got.volumes.shape == (len(ids), 1, 16, 16, 16)
    bad = tmp_path / "run"
    bad.mkdir()
    (bad / "data.json").write_text(json.dumps({"train_ids": ids[:1] + ["no_such_patch.nii.gz"]}))
    with pytest.raises(DataError, match="no_such_patch.nii.gz.*retrain"):
        ldm_training_patches(bad, tiny_result.ldm_config)


def test_the_detector_is_trained_once_per_data_set_and_training_config(tiny_result, tiny_config, monkeypatch) -> None:
    monkeypatch.setattr(cache, "train_detector", _refuse)
    det, path = get_detector(tiny_config, tiny_result.ldm_config, tiny_result.train, tiny_result.reference)
    assert path == tiny_result.detector_path and det.best_epoch == tiny_result.detector.best_epoch
    trained = []
    monkeypatch.setattr(cache, "train_detector", lambda *a, out_dir, **k: trained.append(out_dir) or "new")
    longer = replace(tiny_config, detector=replace(tiny_config.detector, epochs=3))
    det, path = get_detector(longer, tiny_result.ldm_config, tiny_result.train, tiny_result.reference)
    assert det == "new" and path.parent == trained[0] and path != tiny_result.detector_path
    assert (trained[0] / "key.json").exists()  # what the folder's hash was made of
    shutil.rmtree(trained[0])


def test_a_second_process_wanting_a_detector_being_trained_waits_and_then_reuses_it(tiny_result, tiny_config,
                                                                                   tmp_path: Path, monkeypatch) -> None:
    cfg = replace(tiny_config, runs_dir=str(tmp_path / "runs"))
    folder = tiny_result.detector_path.parent
    mine = cfg.work_root() / "detectors" / folder.name  # the same data and detector config: the same folder name
    holding = threading.Event()

    def other() -> None:  # "another process" is training this detector and finishes it a moment later
        (mine.parent / ".locks").mkdir(parents=True)
        with FileLock(str(mine.parent / ".locks" / f"{mine.name}.lock")):
            holding.set()
            time.sleep(0.5)
            shutil.copytree(folder, mine)

    monkeypatch.setattr(cache, "train_detector", _refuse)
    waiter = threading.Thread(target=other)
    waiter.start()
    holding.wait()
    t = time.monotonic()
    det, path = get_detector(cfg, tiny_result.ldm_config, tiny_result.train, tiny_result.reference)
    waiter.join()
    assert time.monotonic() - t >= 0.4 and path == mine / "detector.pt"  # it waited, then reused it
    assert det.best_epoch == tiny_result.detector.best_epoch


def test_samples_are_read_back_as_drawn(tiny_result, monkeypatch) -> None:
    s = tiny_result.samples["final"]
    assert (s.folder / "samples.csv").exists() and len(s.ids) == s.volumes.shape[0]
    monkeypatch.setattr(cache, "sample_from", _refuse)
    cfg = tiny_result.ldm_config
    again = synthesize(tiny_result.run_dir, cfg, "final", len(s.ids), cfg.sampling.sampler, cfg.sampling.steps,
                       tiny_result.config.seed, progress=False)
    assert again.folder == s.folder and again.ids == s.ids and again.epoch == s.epoch
    assert torch.allclose(again.volumes, s.volumes, atol=1e-6)


@pytest.mark.slow  # trains a tiny 2D LDM
def test_2d_ldm_is_trained_in_the_cache_and_its_samples_read_back_as_images(tmp_path: Path, monkeypatch) -> None:
    from memostudy.data.phantom import write_phantom_dataset

    data = write_phantom_dataset(tmp_path / "p2d", n_train=8, n_validation=4, size=32, spatial_dims=2)
    cfg = preset("test-32-2d", {"data": str(data)})
    run_dir = train_or_resume(cfg, tmp_path / "runs", progress=False)
    assert run_dir.name.startswith("p2d-") and ldm_training_patches(run_dir, cfg).volumes.shape == (8, 1, 32, 32)
    s = synthesize(run_dir, cfg, "final", 3, "ddim", 5, seed=0, progress=False)
    assert s.volumes.shape == (3, 1, 32, 32) and s.ids == [f"sample_{i:04d}.nii.gz" for i in range(3)]
    monkeypatch.setattr(cache, "sample_from", _refuse)
    again = synthesize(run_dir, cfg, "final", 3, "ddim", 5, seed=0, progress=False)
    assert again.folder == s.folder and again.ids == s.ids and torch.allclose(again.volumes, s.volumes, atol=1e-6)
