"""The contrastive copy detector: an encoder that maps a volume to a 32-d embedding in which views
of one volume (flips, 90-degree rotations, shifts, blur, intensity changes, noise — see
:mod:`memostudy.detect.views`; or, with ``DetectorConfig.view_families``, changes of the broad copy
definition of :mod:`memostudy.detect.families`) lie close together and different volumes lie apart.

Architecture as in the papers: the autoencoder's encoder design (MONAI ``AutoencoderKL``'s
``Encoder``: residual blocks, GroupNorm, strided downsampling) down to 4 x 4 x 4 x 8, flatten, two
dense layers to 32-d. Inputs whose shape does not reduce to 4^3 (e.g. 64^3, or 256 x 256 x 32) are
average-pooled to 4^3 after the encoder, so one detector works for any volume shape.

Losses (string choice ``DetectorConfig.loss``):
- ``"ntxent"``: NT-Xent (SimCLR) with temperature, MONAI's ``ContrastiveLoss``; the positives are
  the two views of each volume, the negatives every other view in the batch (journal version).
- ``"triplet"``: triplet margin loss (torch's ``TripletMarginLoss``) on L2-normalised embeddings,
  anchor = view 1, positive = view 2 of the same volume, negative = the hardest view 2 of another
  volume in the batch (conference version, eq. 3).

Self-supervised on the training volumes only; the validation volumes give a validation loss after
every epoch and the epoch with the lowest one is kept (the papers tune epochs and learning rate on
held-out data).

:class:`DetectorConfig` holds what decides the trained weights (architecture and training); how a
trained detector compares two volumes is :class:`memostudy.detect.matching.CompareConfig`, chosen by
the assessment or validation, so changing it never retrains. A checkpoint (``detector.pt``) holds the
architecture and the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from memostudy.config import OMIT_DEFAULT, from_dict, provenance, to_dict
from memostudy.detect.similarity import normalise
from memostudy.detect.views import (
    ViewParams,
    orient,
    orientations,
    random_orientation,
    random_view,
    shape_preserving,
)
from memostudy.errors import ConfigError, DataError
from memostudy.seeds import Stream, initial_weights

LOSSES = ("ntxent", "triplet")
#: comparison settings that checkpoints and training folders written before
#: :class:`~memostudy.detect.matching.CompareConfig` existed carry in their detector config; dropped on load
_FORMER_COMPARISON_FIELDS = ("representation", "search_shift", "orientation_pooling")


@dataclass
class DetectorConfig:
    """Architecture and training of the contrastive detector: everything that decides its weights. Defaults: about 2.3 min of training on 2 CPU cores
    for the 494 training patches of demo-ct at 32^3 (30 epochs of ~4.5 s), and ~45 ms per volume
    to embed with orientation pooling.

    Attributes:
        loss: "ntxent" or "triplet".
        temperature: NT-Xent temperature (> 0); lower = sharper.
        margin: triplet margin on L2-normalised embeddings (distances in [0, 2]).
        embedding_dim: size of the embedding (32 in the papers).
        channels: encoder channels per level; len(channels) - 1 halvings (after ``input_pool`` 2,
            3 levels take 32^3 -> 16^3 -> 4^3).
        latent_channels: channels of the encoder output (8 in the papers).
        latent_size: the encoder output is pooled to latent_size^3 before flattening (4 in the papers).
        input_pool: average-pool the input by this factor before the encoder (1 = off); 2 makes a
            step about 6x cheaper on CPU at the cost of detail finer than 2 voxels.
        standardise: subtract each volume's mean and divide by its standard deviation before the
            encoder, so the embedding is invariant to intensity scaling and offset (a copy whose
            contrast a generator changed is still a copy) instead of having to learn it. On by default:
            with the latent search it lifted intensity-changed copies on demo-ct's validation from 0.88
            to 1.00 (README, "Detector validation").
        hidden: width of the first dense layer.
        num_res_blocks: residual blocks per level.
        norm_num_groups: GroupNorm groups; must divide every entry of ``channels``.
        view_strength: strength of the generator-like changes in the training views (0 = random
            orientations only, 1 = :class:`~memostudy.detect.views.ViewParams` defaults); used by the
            classic views only (``view_families`` empty).
        view_families: empty (the default) = the classic views of :mod:`memostudy.detect.views` (an
            orientation, then shift, blur, intensity and noise each with probability 1/2). Otherwise the
            families of the broad copy definition the views are drawn from
            (:data:`memostudy.detect.families.COPY_FAMILIES`): each view is a random orientation, then
            one of these families at strength 1 or 2 (:func:`memostudy.detect.families.random_family_view`).
            The held-out validation trains detectors with some families left out of this list; being
            part of the config, it keys their training folders. Left out of the config's dict while empty,
            so the hashes naming cached detectors of the classic views are those of before it existed.
        spatial_dims: 3 for volumes ``(N, 1, D, H, W)``, 2 for images ``(N, 1, H, W)`` (the encoder's
            convolutions, pooling and head follow it). :func:`train_detector` sets it from the training data,
            so it is never chosen by hand; it is saved in the checkpoint, so :func:`load_detector` rebuilds a
            2D detector as 2D. Left out of the config's dict at 3, so the hashes naming cached 3D detectors are
            those of before 2D existed.
        epochs: passes over the training volumes.
        max_steps: at most this many optimizer steps (None, the default: ``epochs`` whole epochs). When ``epochs``
            epochs of the training volumes would take more steps, training stops after ``max_steps`` (the last
            epoch cut short), so its cost stops growing with the number of training volumes: 30 epochs of 1,000
            volumes are 960 steps of 1-3 s on 2 CPU cores, the largest single stage of an audit at the papers'
            scale (README, "Benchmarks"). Opt-in: it changes the detector only where it cuts training short, and
            no validation has measured that yet. Left out of the config's dict while None (cached detectors keep
            their hashes).
        lr: Adam learning rate.
        batch_size: volumes per step (each gives two views).
        seed: seed of initialisation, shuffling and views.
        select_best: keep the epoch with the lowest validation loss (else the last).
    """

    loss: str = "ntxent"
    temperature: float = 0.1
    margin: float = 0.5
    embedding_dim: int = 32
    channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 8
    latent_size: int = 4
    input_pool: int = 2
    standardise: bool = True
    hidden: int = 256
    view_strength: float = 1.0
    view_families: tuple[str, ...] = field(default=(), metadata=OMIT_DEFAULT)
    spatial_dims: int = field(default=3, metadata=OMIT_DEFAULT)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    epochs: int = 30
    max_steps: int | None = field(default=None, metadata=OMIT_DEFAULT)
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0
    select_best: bool = True

    def validate(self) -> DetectorConfig:
        """Raise :class:`ConfigError` naming the first bad field; return self."""
        if self.loss not in LOSSES:
            raise ConfigError(f"detector.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.temperature <= 0:
            raise ConfigError(f"detector.temperature must be > 0, got {self.temperature}")
        if self.margin <= 0:
            raise ConfigError(f"detector.margin must be > 0, got {self.margin}")
        for name in ("embedding_dim", "latent_channels", "latent_size", "input_pool", "hidden", "num_res_blocks", "epochs", "lr",
                     "norm_num_groups"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"detector.{name} must be > 0, got {getattr(self, name)}")
        if self.view_strength < 0:
            raise ConfigError(f"detector.view_strength must be >= 0, got {self.view_strength}")
        from memostudy.detect.families import COPY_FAMILIES

        bad = [f for f in self.view_families if f not in COPY_FAMILIES]
        if bad or len(set(self.view_families)) != len(self.view_families):
            raise ConfigError(f"detector.view_families must be distinct names among {', '.join(COPY_FAMILIES)} "
                              f"(empty = the classic views), got {tuple(self.view_families)}")
        if tuple(self.view_families) == ("combined",):
            raise ConfigError("detector.view_families: 'combined' needs at least one other family to combine")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"detector.max_steps must be >= 1 or None (train for `epochs`), got {self.max_steps}")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"detector.spatial_dims must be 2 (images) or 3 (volumes), got {self.spatial_dims}")
        if self.batch_size < 2:
            raise ConfigError(f"detector.batch_size must be >= 2 (other volumes are the negatives), got {self.batch_size}")
        if not self.channels or any(c % self.norm_num_groups for c in self.channels):
            raise ConfigError(f"detector.channels {tuple(self.channels)} must be non-empty and divisible by "
                              f"detector.norm_num_groups={self.norm_num_groups}")
        return self


def standardise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each volume of ``(B, C, D, H, W)`` (or image of ``(B, C, H, W)``) minus its mean, over its standard deviation (a constant
    volume becomes zeros rather than NaN)."""
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


class DetectorNet(nn.Module):
    """[avg-pool input] -> Encoder (MONAI AutoencoderKL design) -> pool to latent_size^3 -> flatten
    -> Linear -> BatchNorm -> SiLU -> Linear; in 2D (``cfg.spatial_dims == 2``) the same with 2D convolutions
    and pooling, down to latent_size^2.

    ``forward``: (B, 1, D, H, W) or (B, 1, H, W) -> (B, embedding_dim), not normalised (use :func:`embed`).
    """

    def __init__(self, cfg: DetectorConfig) -> None:
        super().__init__()
        from monai.networks.nets.autoencoderkl import Encoder

        levels, nd = len(cfg.channels), cfg.spatial_dims
        self.spatial_dims = nd
        self.standardise = cfg.standardise
        avg_pool = nn.AvgPool3d if nd == 3 else nn.AvgPool2d
        self.input_pool = avg_pool(cfg.input_pool) if cfg.input_pool > 1 else nn.Identity()
        self.encoder = Encoder(spatial_dims=nd, in_channels=1, channels=tuple(cfg.channels),
                               out_channels=cfg.latent_channels, num_res_blocks=(cfg.num_res_blocks,) * levels,
                               norm_num_groups=cfg.norm_num_groups, norm_eps=1e-6,
                               attention_levels=(False,) * levels, with_nonlocal_attn=False)
        self.pool = (nn.AdaptiveAvgPool3d if nd == 3 else nn.AdaptiveAvgPool2d)(cfg.latent_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cfg.latent_channels * cfg.latent_size**nd, cfg.hidden),
            # BatchNorm in the projection head (as in SimCLR) keeps the embeddings from drifting to
            # one common direction, which otherwise collapses NT-Xent here within tens of steps
            nn.BatchNorm1d(cfg.hidden),
            nn.SiLU(),
            nn.Linear(cfg.hidden, cfg.embedding_dim),
        )

    def latent(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> (B, latent_channels, s, s, s), s = latent_size (2D: (B, 1, H, W) -> (B,
        latent_channels, s, s)): the encoder's map before the head."""
        if x.dim() != self.spatial_dims + 2:
            raise DataError(f"this detector is {self.spatial_dims}D: it takes (B, 1{', D' if self.spatial_dims == 3 else ''}, "
                            f"H, W) batches, got {tuple(x.shape)}; train a detector on data of this shape")
        if self.standardise:
            x = standardise(x)
        return self.pool(self.encoder(self.input_pool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.latent(x))


@dataclass
class Detector:
    """A trained detector: the net, its config, and how training went.

    Attributes:
        net: the :class:`DetectorNet` (eval mode).
        config: its :class:`DetectorConfig`.
        history: per epoch ``{"epoch", "train_loss", "val_loss", "seconds"}``.
        best_epoch: the epoch whose weights are kept (1-based; 0 = untrained).
    """

    net: DetectorNet
    config: DetectorConfig
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


class ContrastiveTask:
    """The detector as a training task for the generic loop: ``modules()`` and ``loss(batch)``.

    ``loss`` draws two random views of each volume of ``batch`` (B, 1, D, H, W) and returns the
    configured contrastive loss (a scalar tensor).
    """

    def __init__(self, net: DetectorNet, cfg: DetectorConfig, views: ViewParams | None = None) -> None:
        self.net, self.cfg = net, cfg
        self.views = views if views is not None else ViewParams().scaled(cfg.view_strength)
        if cfg.loss == "ntxent":
            from monai.losses import ContrastiveLoss

            self._ntxent = ContrastiveLoss(temperature=cfg.temperature)
        else:
            self._triplet = nn.TripletMarginLoss(margin=cfg.margin)

    def modules(self) -> dict[str, nn.Module]:
        return {"detector": self.net}

    def view(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One random view of each volume of ``batch`` (B, 1, D, H, W): the classic views, or a random
        orientation then a change of the broad definition when ``cfg.view_families`` names families."""
        if self.cfg.view_families:
            from memostudy.detect.families import random_family_view

            return random_family_view(random_orientation(batch, generator), generator, tuple(self.cfg.view_families))
        return random_view(batch, generator, self.views)

    def loss(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Contrastive loss of two random views of each volume; views drawn from ``generator``, or from
        torch's global RNG (which :func:`memostudy.training.fit` reseeds every step, so resuming is exact)."""
        v1, v2 = self.view(batch, generator), self.view(batch, generator)
        z = self.net(torch.cat([v1, v2]))
        if len(batch) < 2:  # a lone volume (last batch of an epoch) has no negatives: contributes nothing
            return (z * 0).sum()
        z1, z2 = z[: len(batch)], z[len(batch):]
        if self.cfg.loss == "ntxent":
            return self._ntxent(z1, z2)
        z1, z2 = normalise(z1), normalise(z2)
        with torch.no_grad():
            d = torch.cdist(z1, z2)
            d.fill_diagonal_(float("inf"))
            hardest = d.argmin(dim=1)
        return self._triplet(z1, z2, z2[hardest])


def _best_epoch(losses: pd.DataFrame, select_best: bool) -> int:
    """The epoch whose weights to keep: lowest validation loss (train loss without validation), or the last."""
    if not select_best or losses.empty:
        return int(losses["epoch"].iloc[-1]) if len(losses) else 0
    score = losses["val_loss"].where(losses["val_loss"].notna(), losses["train_loss"])
    return int(losses["epoch"].iloc[int(np.argmin(score.to_numpy()))])


def train_detector(train: torch.Tensor, val: torch.Tensor | None, cfg: DetectorConfig | None = None,
                   out_dir: str | Path | None = None, progress: bool = False, force: bool = False,
                   save_to: str | Path | None = None) -> Detector:
    """Train the contrastive detector, self-supervised, on ``train``, with the project's one training
    loop (:func:`memostudy.training.fit`): per-epoch validation loss, a snapshot per epoch, resumable.

    Args:
        train: (N, 1, D, H, W) float32 training volumes, or (N, 1, H, W) images, in [-1, 1] (N >= 2).
        val: validation volumes of the same shape for the per-epoch validation loss, or None.
        cfg: the detector config (default :class:`DetectorConfig`); its ``spatial_dims`` is set from ``train``.
        out_dir: if given, the loop's files go to ``out_dir/detector_training/`` (a killed run resumes
            from there) and the chosen weights to ``out_dir/detector.pt``; otherwise a temporary folder.
            The folder is keyed on its inputs (:func:`inputs_sha256` of ``train`` and ``val``, and ``cfg``): one
            written for other inputs is set aside (``detector_training.aside-<time>``, said on stderr) and
            training starts again, so a run is never resumed on other data.
        progress: show a progress bar.
        force: retrain even if ``out_dir/detector_training`` holds a finished run (the old one is set aside).
        save_to: where to write the chosen weights instead of ``out_dir/detector.pt`` (e.g. a folder of
            results built aside).

    Returns:
        The trained :class:`Detector` (weights of the best validation epoch when ``cfg.select_best``).
    """
    from memostudy.training import LoopConfig, RunFolder, fit, load_checkpoint

    if train.dim() not in (4, 5) or train.shape[1] != 1:
        raise DataError(f"training volumes must be (N, 1, D, H, W) or images (N, 1, H, W), got {tuple(train.shape)}")
    # the encoder's rank follows the data (3D configs, and so their hashes, stay as they were)
    cfg = dataclasses.replace(cfg or DetectorConfig(), spatial_dims=train.dim() - 2).validate()
    if len(train) < 2:
        raise DataError(f"the detector needs at least 2 training volumes (other volumes are the negatives), got {len(train)}")
    with initial_weights(Stream.DETECTOR_INIT, cfg.seed):
        net = DetectorNet(cfg)
    per_epoch = max(1, math.ceil(len(train) / cfg.batch_size))
    steps = cfg.max_steps if cfg.max_steps is not None and cfg.max_steps < cfg.epochs * per_epoch else None
    n_epochs = cfg.epochs if steps is None else math.ceil(steps / per_epoch)
    loop = LoopConfig(epochs=cfg.epochs, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, amp="off",
                      checkpoint_every=per_epoch, snapshot_epochs=tuple(range(1, n_epochs + 1)) if cfg.select_best else ())
    val = None if val is None or len(val) < 2 else val.float()
    with contextlib.ExitStack() as stack:
        work = (Path(out_dir) / "detector_training" if out_dir is not None
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="memostudy-detector-"))))
        meta = {"detector": to_dict(cfg), "n_train": len(train), "inputs": inputs_sha256(train, val)}
        folder = RunFolder(work)
        if force:
            _set_aside(work, "--force")
        elif (stored := _stored_meta(folder)) is not None and stored != (plain := json.loads(json.dumps(meta))):
            # a folder written before the inputs were recorded that finished with this config is reused as before
            legacy = folder.is_done() and "inputs" not in stored and stored == {k: v for k, v in plain.items() if k != "inputs"}
            if not legacy:
                why = "other training data" if stored.get("detector") == plain["detector"] else "another config"
                _set_aside(work, why)
        if folder.is_done():  # finished earlier with these inputs (e.g. a resumed study): reuse it
            losses = pd.read_csv(folder.losses)
        else:
            losses = fit(ContrastiveTask(net, cfg), train.float(), val, loop, work, desc="detector",
                         progress=progress, meta=meta, device="cpu")
        best = _best_epoch(losses, cfg.select_best)
        ckpt = folder.snapshot(best) if cfg.select_best else folder.final
        net.load_state_dict(load_checkpoint(ckpt)["modules"]["detector"])
    net.eval()
    history = [{k: float(v) for k, v in row.items() if k in ("epoch", "train_loss", "val_loss", "seconds") and v == v}
               for row in losses.to_dict("records")]
    det = Detector(net, cfg, history, best)
    if save_to is not None or out_dir is not None:
        save_detector(det, Path(save_to) if save_to is not None else Path(out_dir) / "detector.pt")
    return det


def inputs_sha256(train: torch.Tensor, val: torch.Tensor | None) -> str:
    """sha256 of the training and validation volumes (shape, dtype and every value): what a training
    folder's weights depend on besides the config; a folder trained on other inputs is never resumed."""
    h = hashlib.sha256()
    for name, t in (("train", train), ("val", val)):
        h.update(name.encode())
        if t is not None:
            a = t.detach().to("cpu", torch.float32).contiguous()
            h.update(str(tuple(a.shape)).encode())
            h.update(a.numpy().tobytes())
    return h.hexdigest()


def _stored_meta(folder: Any) -> dict[str, Any] | None:
    """The ``meta`` a training folder was written with (from ``final.pt``, else ``last.pt``), without the
    comparison settings of older folders; None when the folder holds no checkpoint."""
    from memostudy.training import load_checkpoint

    for path in (folder.final, folder.last):
        if path.exists():
            return _without_comparison(load_checkpoint(path)["config"]["meta"])
    return None


def _set_aside(work: Path, why: str) -> Path | None:
    """Move a training folder out of the way (``<name>.aside-<time>``, never deleted here) and say so in
    one line on stderr; None when there was nothing to move."""
    import sys
    import time

    if not work.exists():
        return None
    aside = work.with_name(f"{work.name}.aside-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    work.rename(aside)
    msg = "retraining (--force)" if why == "--force" else f"{work} was trained on {why}"
    print(f"detector: {msg}; set it aside as {aside.name} and training again", file=sys.stderr, flush=True)
    return aside


def _without_comparison(meta: dict[str, Any]) -> dict[str, Any]:
    """A training folder's ``meta`` without the comparison settings older folders recorded with it."""
    det = {k: v for k, v in meta.get("detector", {}).items() if k not in _FORMER_COMPARISON_FIELDS}
    return {**meta, "detector": det}


def embed(detector: Detector | nn.Module, volumes: torch.Tensor, batch_size: int = 64,
          orientation_pooling: bool = True, progress: bool = False) -> torch.Tensor:
    """Embed volumes with a trained detector.

    Args:
        detector: a :class:`Detector` (or its net).
        volumes: (N, 1, D, H, W) float32, or (N, 1, H, W) for a 2D detector.
        batch_size: volumes per forward pass.
        orientation_pooling: average the normalised embeddings over every orientation that keeps the
            volume shape (48 for a cube, 8 for a square), so the embedding is exactly invariant to flips and 90-degree
            rotations (costs 48 forward passes per volume); see
            :attr:`memostudy.detect.matching.CompareConfig.orientation_pooling`.
        progress: a progress bar over the batches.

    Returns:
        (N, embedding_dim) float32, rows L2-normalised (compare with :mod:`memostudy.detect.similarity`;
        higher similarity = more alike).
    """
    from tqdm.auto import tqdm

    net = detector.net if isinstance(detector, Detector) else detector
    net.eval()
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(volumes), batch_size), desc=f"embedding {len(volumes)} volumes", disable=not progress):
            x = volumes[i:i + batch_size].float()
            if orientation_pooling:
                nd = x.dim() - 2
                table = orientations(nd)
                out.append(embed_latents(net, torch.stack([net.latent(orient(x, table[k])).flatten(1)
                                                           for k in shape_preserving(x.shape, nd)])))
            else:
                out.append(net(x))
    return normalise(torch.cat(out)) if out else torch.empty(0, getattr(net.head[-1], "out_features", 0))


def embed_latents(detector: Detector | nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The orientation-pooled embedding (:func:`embed` with ``orientation_pooling``) from latent maps already
    computed: ``latents`` (K, N, F), each volume's flattened latent map (:meth:`DetectorNet.latent`) in each of its
    K orientations -> (N, embedding_dim), rows L2-normalised: the head's normalised outputs averaged over the
    orientations. The contrastive search encodes query volumes in every orientation anyway
    (:func:`memostudy.detect.matching.query_vectors`), so their embeddings cost only the head."""
    net = detector.net if isinstance(detector, Detector) else detector
    net.eval()
    k, n, f = latents.shape
    with torch.no_grad():
        return normalise(normalise(net.head(latents.reshape(k * n, f))).reshape(k, n, -1).mean(0))


def save_detector(detector: Detector, path: str | Path) -> Path:
    """Save the architecture and training config, weights, history and provenance to ``path`` (a ``.pt``
    file); how the detector compares volumes is not part of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # written aside, then renamed: never half a file
    torch.save({"kind": "memostudy-detector", "config": to_dict(detector.config),
                "state_dict": detector.net.state_dict(), "history": detector.history,
                "best_epoch": detector.best_epoch,
                # plain types only, so the checkpoint loads with weights_only=True (no pickled classes)
                "provenance": json.loads(json.dumps(provenance(), default=str))}, tmp)
    os.replace(tmp, path)
    return path


def load_detector(path: str | Path) -> Detector:
    """Load a detector saved by :func:`save_detector`.

    Raises:
        DataError: missing file, not a memostudy detector checkpoint, or one whose config or weights do
            not fit a detector (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: detector checkpoint not found; omit --detector to train one on --train")
    try:
        ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a bad file; all mean "not a checkpoint"
        raise DataError(f"{path}: cannot read as a detector checkpoint ({type(e).__name__}); "
                        "pass a detector.pt written by memostudy") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "memostudy-detector":
        raise DataError(f"{path}: not a memostudy detector checkpoint; pass a detector.pt written by memostudy")
    # checkpoints written before ``standardise`` existed were trained without it; older ones also carry
    # the comparison settings, which are the assessment's choice now
    try:
        saved = {k: v for k, v in ckpt["config"].items() if k not in _FORMER_COMPARISON_FIELDS}
        cfg = from_dict(DetectorConfig, {"standardise": False, **saved}).validate()
        net = DetectorNet(cfg)
        net.load_state_dict(ckpt["state_dict"])
        detector = Detector(net, cfg, list(ckpt.get("history", [])), int(ckpt.get("best_epoch", 0)))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, ConfigError) as e:
        # a damaged or hand-edited checkpoint: its config or weights do not fit a detector
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: detector checkpoint is damaged (config or state_dict do not fit a detector: "
                        f"{what[:160]}); pass a detector.pt written by memostudy, or omit --detector to train one") from None
    net.eval()
    return detector


def load_or_train_detector(train: torch.Tensor, val: torch.Tensor | None, cfg: DetectorConfig | None = None,
                           checkpoint: str | Path | None = None, out_dir: str | Path | None = None,
                           progress: bool = False, save_to: str | Path | None = None) -> Detector:
    """The detector a command or study works with: the ``checkpoint`` when one is given, else one
    trained on ``train`` (:func:`train_detector`, which resumes or reuses a finished training of the
    same config in ``out_dir``).

    Args:
        train: (N, 1, D, H, W) training volumes in [-1, 1] (used only when training).
        val: (M, 1, D, H, W) validation volumes for the per-epoch validation loss, or None.
        cfg: the detector config to train with; a checkpoint brings its own (``cfg`` is then unused).
        checkpoint: a ``detector.pt`` written by :func:`save_detector`, or None.
        out_dir: where training keeps its files and ``detector.pt``; None = a temporary folder.
        progress: show a progress bar while training.
        save_to: where a trained detector's ``detector.pt`` goes (default ``out_dir/detector.pt``).
    """
    if checkpoint is not None:
        return load_detector(checkpoint)
    return train_detector(train, val, cfg, out_dir=out_dir, progress=progress, save_to=save_to)
