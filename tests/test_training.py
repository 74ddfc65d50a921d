"""The generic loop: learning, seeding, exact resume, refusal to overwrite or to resume a different config."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from memostudy.data.augment import FlipRotate
from memostudy.data.phantom import phantom_volumes
from memostudy.errors import ConfigError, RunExistsError
from memostudy.ldm.autoencoder import AutoencoderTask, build_autoencoder
from memostudy.ldm.config import preset
from memostudy.training import LoopConfig, RunFolder, adam, fit


class NoisyDenoiser:
    """A toy task whose loss draws noise from the step's generator (like diffusion noise), to test seeding and resuming."""

    def __init__(self, kill_after: int | None = None) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv3d(4, 1, 3, padding=1))
        self.calls, self.kill_after = 0, kill_after

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}

    def loss(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        self.calls += torch.is_grad_enabled()  # training calls only, not validation
        if self.kill_after is not None and self.calls > self.kill_after:
            raise KeyboardInterrupt  # stands in for a killed process
        return (self.net(batch + 0.3 * torch.randn(batch.shape, generator=generator)) - batch).pow(2).mean()


@pytest.fixture(scope="module")
def vols() -> torch.Tensor:
    return phantom_volumes(6, size=8, seed=1)


def loop(**kw) -> LoopConfig:
    return LoopConfig(**{"epochs": 3, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "seed": 0, **kw})


@pytest.mark.slow
def test_a_few_steps_reduce_the_autoencoder_loss_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    task = AutoencoderTask(build_autoencoder(preset("test-16").autoencoder))
    batch = phantom_volumes(4, size=16)
    with torch.no_grad():
        before = float(task.val_loss(batch))
    df = fit(task, batch, batch, LoopConfig(epochs=10, batch_size=4, lr=3e-3, seed=0), tmp_path, progress=False)
    assert len(df) == 10 and df["step"].iloc[-1] == 10
    assert df["val_loss"].iloc[-1] < 0.7 * before
    assert df["train_loss"].iloc[-1] < df["train_loss"].iloc[0]


def test_outputs_snapshots_and_done(tmp_path, vols):
    df = fit(NoisyDenoiser(), vols, vols[:2], loop(snapshot_epochs=(1, 3)), tmp_path, progress=False)
    assert list(df.columns) == ["epoch", "step", "train_loss", "val_loss", "seconds"]
    assert df["step"].tolist() == [3, 6, 9]
    assert pd.read_csv(tmp_path / "losses.csv")["train_loss"].tolist() == pytest.approx(df["train_loss"].tolist())
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["epoch_0001.pt", "epoch_0003.pt"]
    assert (tmp_path / "final.pt").exists() and (tmp_path / "DONE").exists()
    assert torch.load(tmp_path / "snapshots" / "epoch_0001.pt", weights_only=False)["step"] == 3


@pytest.mark.parametrize("augment, kill_after, last_step", [
    (False, 5, 4),  # killed during step 6; last checkpoint mid-epoch 2 at step 4
    (True, 5, 4),
    (False, 7, 6),  # killed during step 8; last checkpoint at the end of epoch 2 (step 6)
])
@pytest.mark.slow
def test_killed_run_resumes_at_its_last_checkpoint_with_identical_losses(tmp_path, vols, augment, kill_after, last_step):
    aug = FlipRotate((8, 8, 8)) if augment else None
    whole = fit(NoisyDenoiser(), vols, vols[:2], loop(), tmp_path / "a", augment=aug, progress=False)
    with pytest.raises(KeyboardInterrupt):
        fit(NoisyDenoiser(kill_after=kill_after), vols, vols[:2], loop(), tmp_path / "b", augment=aug, progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["step"] == last_step
    resumed_task = NoisyDenoiser()
    resumed = fit(resumed_task, vols, vols[:2], loop(), tmp_path / "b", augment=aug, progress=False)
    assert resumed_task.calls == 9 - last_step  # only the missing steps were trained
    pd.testing.assert_frame_equal(whole.drop(columns="seconds"), resumed.drop(columns="seconds"))
    wa = torch.load(tmp_path / "a" / "final.pt", weights_only=False)["modules"]["net"]
    wb = torch.load(tmp_path / "b" / "final.pt", weights_only=False)["modules"]["net"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_same_seed_same_losses_other_seed_other_losses(tmp_path, vols):
    runs = [fit(NoisyDenoiser(), vols, None, loop(seed=s), tmp_path / str(i), progress=False)
            for i, s in enumerate((7, 7, 8))]
    assert runs[0]["train_loss"].tolist() == runs[1]["train_loss"].tolist()
    assert runs[0]["train_loss"].tolist() != runs[2]["train_loss"].tolist()


def test_finished_run_is_not_overwritten_without_force(tmp_path, vols):
    fit(NoisyDenoiser(), vols, None, loop(epochs=1), tmp_path, progress=False)
    stamp = (tmp_path / "final.pt").stat().st_mtime_ns
    with pytest.raises(RunExistsError, match="force"):
        fit(NoisyDenoiser(), vols, None, loop(epochs=1), tmp_path, progress=False)
    assert (tmp_path / "final.pt").stat().st_mtime_ns == stamp
    df = fit(NoisyDenoiser(), vols, None, loop(epochs=2), tmp_path, force=True, progress=False)
    assert df["epoch"].tolist() == [1, 2]


def test_resuming_with_a_different_config_is_refused(tmp_path, vols):
    with pytest.raises(KeyboardInterrupt):
        fit(NoisyDenoiser(kill_after=3), vols, None, loop(), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"different config \(loop.lr: 0.01 -> 0.02"):
        fit(NoisyDenoiser(), vols, None, loop(lr=2e-2), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="meta.data"):
        fit(NoisyDenoiser(), vols, None, loop(), tmp_path, progress=False, meta={"data": "other"})


def test_fit_leaves_the_global_rng_alone(tmp_path, vols):
    state = torch.get_rng_state()
    fit(NoisyDenoiser(), vols, vols[:2], loop(epochs=1), tmp_path, progress=False)
    assert torch.equal(torch.get_rng_state(), state)


def test_run_folder_names_what_fit_wrote(tmp_path, vols):
    fit(NoisyDenoiser(), vols, None, loop(snapshot_epochs=(1, 3)), tmp_path, progress=False)
    folder = RunFolder(tmp_path)
    assert folder.is_done() and folder.final.is_file() and folder.last.is_file() and folder.losses.is_file()
    assert folder.snapshot_epochs() == [1, 3] and folder.snapshot(3).is_file()
    (tmp_path / "keep.txt").write_text("not the loop's")
    folder.clear()
    assert not folder.is_done() and folder.snapshot_epochs() == [] and not folder.final.exists()
    assert (tmp_path / "keep.txt").exists()


def test_flip_rotate_only_permutes_voxels(vols):
    out = FlipRotate((8, 8, 8), prob=1.0)(vols, torch.Generator().manual_seed(3))
    assert out.shape == vols.shape and type(out) is torch.Tensor
    assert not torch.equal(out, vols)
    assert torch.equal(out.flatten(1).sort(1).values, vols.flatten(1).sort(1).values)


def test_empty_training_set_is_a_clear_error(tmp_path: Path, vols):
    with pytest.raises(ConfigError, match="empty"):
        fit(NoisyDenoiser(), vols[:0], None, loop(), tmp_path, progress=False)


def test_adam_uses_the_fused_kernel_on_cpu_with_the_plain_update_rule():
    torch.manual_seed(0)
    a = torch.nn.Linear(16, 8)
    b = torch.nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    fused, plain = adam(list(a.parameters()), 1e-2, 1e-3), torch.optim.Adam(b.parameters(), lr=1e-2, weight_decay=1e-3)
    assert fused.defaults["fused"] is True
    x = torch.randn(32, 16)
    for _ in range(5):
        for net, opt in ((a, fused), (b, plain)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert (a.weight - start).abs().max() > 1e-3  # it did move the weights


def test_a_step_budget_trains_exactly_that_many_steps_whatever_the_set_size(tmp_path, vols):
    # 6 volumes, batch 2: 3 steps per epoch; 7 steps = two whole epochs and one step of a third
    df = fit(NoisyDenoiser(), vols, None, loop(epochs=99, steps=7), tmp_path / "six", progress=False)
    assert df["step"].tolist() == [3, 6, 7] and df["epoch"].tolist() == [1, 2, 3]
    # 2 volumes: one step per epoch, so the same budget is 7 epochs
    df = fit(NoisyDenoiser(), vols[:2], None, loop(epochs=1, steps=7), tmp_path / "two", progress=False)
    assert df["step"].tolist() == list(range(1, 8))
    ckpt = torch.load(tmp_path / "two" / "final.pt", weights_only=False)
    assert ckpt["step"] == 7 and ckpt["epoch"] == 7 and ckpt["stopped"] is False
    with pytest.raises(ConfigError, match="beyond the 3 epochs"):
        fit(NoisyDenoiser(), vols, None, loop(steps=7, snapshot_epochs=(4,)), tmp_path / "late", progress=False)
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        loop(steps=0).validate()


def test_a_step_budget_resumes_exactly(tmp_path, vols):
    whole = fit(NoisyDenoiser(), vols, None, loop(steps=8), tmp_path / "a", progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed during step 8, in the cut-short last epoch
        fit(NoisyDenoiser(kill_after=7), vols, None, loop(steps=8), tmp_path / "b", progress=False)
    task = NoisyDenoiser()
    resumed = fit(task, vols, None, loop(steps=8), tmp_path / "b", progress=False)
    assert task.calls == 2  # from the checkpoint at step 6
    pd.testing.assert_frame_equal(whole.drop(columns="seconds"), resumed.drop(columns="seconds"))


def test_a_loop_config_without_steps_saves_as_before():
    from memostudy.config import to_dict

    assert "steps" not in to_dict(loop()) and to_dict(loop(steps=5))["steps"] == 5


def test_on_snapshot_can_stop_training_at_a_snapshot(tmp_path, vols):
    seen = []
    df = fit(NoisyDenoiser(), vols, None, loop(epochs=5, snapshot_epochs=(1, 2, 4)), tmp_path, progress=False,
             on_snapshot=lambda epoch: seen.append(epoch) or epoch >= 2)
    assert seen == [1, 2] and df["epoch"].tolist() == [1, 2]
    final = torch.load(tmp_path / "final.pt", weights_only=False)
    assert final["stopped"] is True and final["epoch"] == 2 and final["step"] == 6
    assert "stopped" in (tmp_path / "DONE").read_text() and RunFolder(tmp_path).snapshot_epochs() == [1, 2]
