"""The project's one table of random streams.

Every random draw of training, sampling and detection comes from a :class:`torch.Generator` made here
from a run's seed and a :class:`Stream`, so that (a) the same seed gives the same numbers, (b) a killed
and resumed run repeats the uninterrupted run exactly (each step has its own stream), and (c) library
code never touches the caller's global random state: the only place where torch's global RNG must be
set (MONAI's nets draw their initial weights from it and take no generator) is :func:`initial_weights`,
which forks the global state and restores it afterwards.

How a stream's seed is made from the run seed ``s`` (fixed: changing a row changes every cached result)::

    stream                 seed                       used by
    STAGE_AUTOENCODER      s                          LDMConfig.stage_loop: the autoencoder's loop seed
    STAGE_DIFFUSION        s + 1                      LDMConfig.stage_loop: the diffusion model's loop seed
    BATCH_ORDER            derive(l, 1, epoch)        training.fit: order of the batches of one epoch
    STEP                   derive(l, 2, step)         training.fit: augmentation, views, noise, timesteps of a step
    VALIDATION             derive(l, 3)               training.fit: the same noise at every validation
    SAMPLING               derive(s, 4, batch)        ldm.sampling: initial noise and scheduler noise of a batch
    AUTOENCODER_INIT       derive(s, 10)              ldm.run: the autoencoder's initial weights
    DIFFUSION_INIT         derive(s, 11)              ldm.run: the diffusion UNet's initial weights
    LATENT_SCALE           s                          ldm.autoencoder.latent_scale_factor: posterior draws
    DETECTOR_INIT          s                          detect.detector: the encoder's initial weights
    HELD_OUT_SPLIT         s                          detect.validation: which volumes are held out
    VALIDATION_COPIES      s + 1                      detect.validation: parameters of the known copies (numpy)
    VALIDATION_VIEWS       s + 2                      detect.validation: the copies' random changes
    BOOTSTRAP              s                          detect.metrics: resampling of the confidence intervals
    INTENSITY_SUBSAMPLE    0                          detect.assessment: voxels used for the joint intensity map
    QUALITY                s                          study.quality: pairs drawn for MS-SSIM diversity

``l`` is the loop seed of the stage (``LoopConfig.seed``), ``derive`` is :func:`derive_seed`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum

import numpy as np
import torch


class Stream(Enum):
    """A named random stream. Its value says how its seed is made from the run seed: ("derived", id) mixes
    the stream id (and an index) into :func:`derive_seed`; ("offset", k) is the run seed plus k; ("fixed", v)
    ignores the run seed. The offsets are kept from earlier versions because changing any of them
    would change every cached model and published figure."""

    STAGE_AUTOENCODER = ("offset", 0)
    STAGE_DIFFUSION = ("offset", 1)
    BATCH_ORDER = ("derived", 1)
    STEP = ("derived", 2)
    VALIDATION = ("derived", 3)
    SAMPLING = ("derived", 4)
    AUTOENCODER_INIT = ("derived", 10)
    DIFFUSION_INIT = ("derived", 11)
    LATENT_SCALE = ("offset", 0)
    DETECTOR_INIT = ("offset", 0)
    HELD_OUT_SPLIT = ("offset", 0)
    VALIDATION_COPIES = ("offset", 1)
    VALIDATION_VIEWS = ("offset", 2)
    BOOTSTRAP = ("offset", 0)
    INTENSITY_SUBSAMPLE = ("fixed", 0)
    QUALITY = ("offset", 0)


def derive_seed(*xs: int) -> int:
    """A 63-bit seed derived from integers (so seeds of different steps and stages never collide)."""
    return int(np.random.SeedSequence([abs(int(x)) for x in xs]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def numpy_rng(stream: Stream, seed: int, *index: int) -> np.random.Generator:
    """A numpy generator seeded for ``stream`` (for draws made with numpy, e.g. bootstrap resampling)."""
    return np.random.default_rng(stream_seed(stream, seed, *index))


def stream_seed(stream: Stream, seed: int, *index: int) -> int:
    """The seed of ``stream`` for run seed ``seed`` (and the stream's index, e.g. the step), per the table above."""
    kind, value = stream.value
    if kind == "fixed":
        return value
    if kind == "offset":
        if index:
            raise ValueError(f"{stream.name} takes no index")
        return int(seed) + value
    return derive_seed(seed, value, *index)


def generator(stream: Stream, seed: int, *index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded for ``stream`` (see :func:`stream_seed`).

    A CPU generator seeded with ``k`` gives the same numbers as torch's global RNG after
    ``torch.manual_seed(k)``, so moving a draw from the global RNG to a generator keeps results.
    """
    return torch.Generator(device=device).manual_seed(stream_seed(stream, seed, *index))


@contextlib.contextmanager
def initial_weights(stream: Stream, seed: int) -> Iterator[None]:
    """Build nets inside this block to make their initial weights a function of ``(stream, seed)`` only.

    MONAI's and torch's layers draw their initial weights from torch's global CPU RNG and take no
    generator, so this block seeds that RNG inside :func:`torch.random.fork_rng` and restores the
    caller's state on exit.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(stream, seed))
        yield
