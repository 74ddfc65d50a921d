"""Speed of augmented diffusion training with and without the posterior memo (``PosteriorSampler(memo_bytes=...)``).

With augmentation (random flips and 90-degree rotations, :class:`memostudy.data.augment.FlipRotate`) every
diffusion step encodes its batch with the frozen autoencoder. A training set of N patches has at most 48 N
distinct augmented images, so once the memo has met them the step costs what an unaugmented one does.
This script trains the augmentation sweep's diffusion stage (default: the cpu-tiny preset on 16 demo-ct
patches) for ``--steps`` steps with the memo off and on, and without augmentation (posteriors encoded once,
what ``train_ldm`` does then: the floor), in turns (off, on, none, off, on, none, ...), and prints the median
seconds per step of each, the ratio off / on, how many images each encoded, and the largest difference of the
final losses of off and on (the two draw the same batches, augmentations and noise).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_augment.py [--steps 400] [--patches 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from memostudy.data.augment import FlipRotate
from memostudy.ldm.autoencoder import PosteriorSampler, build_autoencoder, encode_stats
from memostudy.ldm.config import preset
from memostudy.ldm.diffusion import DiffusionTask, build_unet
from memostudy.ldm.run import AUGMENT_MEMO_BYTES, training_data
from memostudy.training import LoopConfig, fit, select_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-tiny")
    ap.add_argument("--patches", type=int, default=16, help="training patches (the augmentation sweep's 16)")
    ap.add_argument("--steps", type=int, default=400, help="diffusion steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each variant, taken in turns; medians reported")
    args = ap.parse_args()

    cfg = preset(args.preset, {"max_train_patches": args.patches})
    device = select_device()
    vols = training_data(cfg)[0].volumes
    torch.manual_seed(0)
    ae = build_autoencoder(cfg.autoencoder).to(device).eval().requires_grad_(False)  # random weights: speed only
    loop = LoopConfig(steps=args.steps, batch_size=cfg.diffusion.loop.batch_size, lr=cfg.diffusion.loop.lr,
                      checkpoint_every=10**9, seed=0)
    print(f"config {args.preset}: {len(vols)} patches {tuple(vols.shape[2:])}, {args.steps} diffusion steps of batch "
          f"{loop.batch_size}, device {device}, threads {torch.get_num_threads()}")

    stats = encode_stats(ae, vols, device=device)

    def run(memo_bytes: int | None) -> tuple[float, int, float]:
        """memo_bytes None: no augmentation, posteriors encoded once (not counted)."""
        sampler = PosteriorSampler() if memo_bytes is None else PosteriorSampler(ae, memo_bytes=memo_bytes)
        torch.manual_seed(1)
        task = DiffusionTask(build_unet(cfg.diffusion, cfg.autoencoder.latent_channels), sampler, 1.0,
                             cfg.latent_shape, cfg.diffusion)
        data, augment = (stats, None) if memo_bytes is None else (vols, FlipRotate(cfg.patch_size))
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            df = fit(task, data, None, loop, Path(d), augment=augment, progress=False, device=device)
            seconds = (time.perf_counter() - t) / int(df["step"].iloc[-1])
        return seconds, sampler.encoded, float(df["train_loss"].iloc[-1])

    results: dict[str, list[tuple[float, int, float]]] = {"off": [], "on": [], "none": []}
    for _ in range(args.repeats):
        results["off"].append(run(0))
        results["on"].append(run(AUGMENT_MEMO_BYTES))
        results["none"].append(run(None))
    med = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    for k, v in results.items():
        name = "no augmentation" if k == "none" else f"augmented, memo {k}"
        print(f"{name:>20}: {med[k]:.3f} s/step (median of {len(v)}), {v[0][1]} images encoded, "
              f"final epoch loss {v[0][2]:.5f}")
    loss_diff = max(abs(a[2] - b[2]) for a, b in zip(results["off"], results["on"]))
    print(f"ratio off/on {med['off'] / med['on']:.2f}; largest difference of the final epoch losses {loss_diff:.2e}")


if __name__ == "__main__":
    main()
