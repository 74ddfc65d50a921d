"""Speed and peak memory of the LDM code on one config (default: the cpu-tiny preset).

Prints, in one run:
  1. train step time of our loop (:func:`memostudy.training.fit`) vs a plain MONAI-tutorial-style loop
     over the same nets and batches, per stage; ratio = tutorial / ours (goal >= 1.0). The two loops
     are timed in turns, ``--repeats`` times each, and the medians compared. For the
     diffusion stage the tutorial encodes every batch with the autoencoder through
     ``LatentDiffusionInferer``; ours samples from posteriors encoded once (what ``train_ldm`` does
     without augmentation), so it is also timed encoding every step (what it does with ``augment``).
  2. seconds per volume of DDIM-``--steps`` vs DDPM-1000 sampling (goal: DDIM >= 15x faster).
  3. peak memory (RSS on CPU, allocated on CUDA).

Weights are random (speed does not depend on them); the data are the config's training patches,
or phantoms with ``--phantom``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_ldm.py [--preset cpu-tiny] [--steps 50]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.inferers import LatentDiffusionInferer

from memostudy.data.phantom import phantom_volumes
from memostudy.ldm.autoencoder import AutoencoderTask, PosteriorSampler, build_autoencoder, encode_stats, kl_loss
from memostudy.ldm.config import preset
from memostudy.ldm.diffusion import DiffusionTask, build_scheduler, build_unet
from memostudy.ldm.run import LDMRun, training_data
from memostudy.ldm.sampling import sample_from
from memostudy.training import LoopConfig, fit, select_device


def peak_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocated on GPU, process max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tutorial_loop(step_fn, batches: list[torch.Tensor], device: torch.device) -> list[float]:
    """Seconds of each step of a plain loop: to device, zero_grad, forward, backward, step."""
    times = []
    for x in batches:
        t = time.perf_counter()
        step_fn(x.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def our_loop(task, data: torch.Tensor, loop: LoopConfig, device: torch.device) -> float:
    """Wall seconds per step of ``fit`` (no validation; final checkpoint included), after a 1-step warm-up."""
    with tempfile.TemporaryDirectory() as d:
        fit(task, data[: loop.batch_size], None, loop, Path(d) / "warm-up", progress=False, device=device)
        t = time.perf_counter()
        df = fit(task, data, None, loop, Path(d), progress=False, device=device)
        return (time.perf_counter() - t) / int(df["step"].iloc[-1])


def alternate(loops: list, repeats: int) -> list[float]:
    """Median seconds per step of each loop (callables returning seconds per step), timed in turns
    (first, second, ..., first, second, ...) so that a drift of the machine's speed during the run
    affects every loop alike."""
    times: list[list[float]] = [[] for _ in loops]
    for _ in range(repeats):
        for t, loop in zip(times, loops):
            t.append(loop())
    return [statistics.median(t) for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--ae-steps", type=int, default=40,
                    help="timed autoencoder steps per loop (enough to amortise the end-of-run checkpoint as a real run does)")
    ap.add_argument("--dm-steps", type=int, default=40, help="timed diffusion steps per loop")
    ap.add_argument("--repeats", type=int, default=3, help="timings of each loop, taken in turns; medians reported")
    ap.add_argument("--sample-batch", type=int, default=8, help="volumes per sampling batch")
    ap.add_argument("--phantom", action="store_true", help="use phantoms instead of the config's data")
    args = ap.parse_args()

    cfg = preset(args.preset)
    device = select_device()
    torch.manual_seed(0)
    if args.phantom:
        vols = phantom_volumes(64, size=cfg.patch_size[0])
    else:
        vols = training_data(cfg)[0].volumes
    print(f"config {args.preset}: patches {tuple(vols.shape[1:])} x {len(vols)}, latent {cfg.latent_shape}, "
          f"device {device}, threads {torch.get_num_threads()}")

    # 1a. autoencoder: same nets, same batches, one warm-up step each
    ab = cfg.autoencoder.loop.batch_size
    ae = build_autoencoder(cfg.autoencoder).to(device)
    opt = torch.optim.Adam(ae.parameters(), lr=cfg.autoencoder.loop.lr)

    def ae_step(x: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        recon, mu, sigma = ae(x)
        loss = F.l1_loss(recon, x) + cfg.autoencoder.kl_weight * kl_loss(mu, sigma)
        loss.backward()
        opt.step()

    n_ae = args.ae_steps * ab
    batches = [vols[i % len(vols) : i % len(vols) + ab] for i in range(0, n_ae + ab, ab)]
    ours_task = AutoencoderTask(build_autoencoder(cfg.autoencoder), cfg.autoencoder.kl_weight)
    ae_loop = LoopConfig(epochs=1, batch_size=ab, lr=cfg.autoencoder.loop.lr, checkpoint_every=10**9, seed=0)
    # as many steps as the tutorial loop: the patches repeated when there are fewer than n_ae
    ae_data = vols.repeat(-(-n_ae // len(vols)), 1, 1, 1, 1)[:n_ae]
    tut, ours = alternate([lambda: statistics.mean(tutorial_loop(ae_step, batches, device)[1:]),
                           lambda: our_loop(ours_task, ae_data, ae_loop, device)], args.repeats)
    print(f"autoencoder step: ours {ours:.3f} s, tutorial {tut:.3f} s, ratio tutorial/ours {tut / ours:.2f}")

    # 1b. diffusion: tutorial encodes every batch; ours samples cached posteriors (and, with augment, encodes)
    db = cfg.diffusion.loop.batch_size
    ae.eval()
    stats = encode_stats(ae, vols, device=device)
    scale = 1.0
    unet = build_unet(cfg.diffusion, cfg.autoencoder.latent_channels).to(device)
    dopt = torch.optim.Adam(unet.parameters(), lr=cfg.diffusion.loop.lr)
    sched = build_scheduler(cfg.diffusion, "ddpm")
    inferer = LatentDiffusionInferer(sched, scale_factor=scale)

    def dm_step(x: torch.Tensor) -> None:
        dopt.zero_grad(set_to_none=True)
        noise = torch.randn((len(x), *cfg.latent_shape), device=device)
        t = torch.randint(0, sched.num_train_timesteps, (len(x),), device=device)
        pred = inferer(inputs=x, autoencoder_model=ae, diffusion_model=unet, noise=noise, timesteps=t)
        F.mse_loss(pred, noise).backward()
        dopt.step()

    n_dm = args.dm_steps * db
    idx = [torch.arange(i, i + db) % len(vols) for i in range(0, n_dm + db, db)]
    reps = -(-n_dm // len(vols))
    dm_loop = LoopConfig(epochs=1, batch_size=db, lr=cfg.diffusion.loop.lr, checkpoint_every=10**9, seed=0)

    def dm_ours(encoder: torch.nn.Module | PosteriorSampler, data: torch.Tensor) -> float:
        task = DiffusionTask(build_unet(cfg.diffusion, cfg.autoencoder.latent_channels), encoder, scale,
                             cfg.latent_shape, cfg.diffusion)
        return our_loop(task, data, dm_loop, device)

    tut, cached, encoding = alternate(
        [lambda: statistics.mean(tutorial_loop(dm_step, [vols[i] for i in idx], device)[1:]),
         lambda: dm_ours(PosteriorSampler(), stats.repeat(reps, 1, 1, 1, 1)[:n_dm]),
         lambda: dm_ours(ae, vols.repeat(reps, 1, 1, 1, 1)[:n_dm])], args.repeats)
    print(f"diffusion step: ours {cached:.3f} s (cached posteriors), {encoding:.3f} s (encoding each step, "
          f"as with --augment); tutorial {tut:.3f} s; ratio tutorial/ours {tut / cached:.2f} and {tut / encoding:.2f}")

    # 2. sampling speed, seconds per volume
    run = LDMRun(run_dir=Path("."), cfg=cfg, autoencoder=ae.eval(), unet=unet.eval(), scale_factor=scale, data={},
                 checkpoint=Path("random-weights"), epoch=0, weights="unet")
    per_vol = {}
    sample_from(run, 1, sampler="ddim", steps=2, batch_size=1, progress=False)  # warm-up
    for sampler, steps in (("ddim", args.steps), ("ddpm", cfg.diffusion.num_train_timesteps)):
        t = time.perf_counter()
        sample_from(run, args.sample_batch, sampler=sampler, steps=steps, batch_size=args.sample_batch, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_vol[sampler] = (time.perf_counter() - t) / args.sample_batch
    print(f"sampling, batch {args.sample_batch}: DDIM-{args.steps} {per_vol['ddim']:.3f} s/volume, "
          f"DDPM-{cfg.diffusion.num_train_timesteps} {per_vol['ddpm']:.3f} s/volume, "
          f"speed-up {per_vol['ddpm'] / per_vol['ddim']:.1f}x")

    # 3. peak memory
    print(f"peak memory: {peak_mb(device):.0f} MB ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")


if __name__ == "__main__":
    main()
