"""The LDM's training augmentation: random flips and 90-degree rotations of patches (MONAI transforms).

It lives with the data because the LDM (:mod:`memostudy.ldm.run`) uses it and the detection layer must
not depend on the LDM.
"""

from __future__ import annotations

import torch
from monai.transforms import Compose, RandFlip, RandRotate90


class FlipRotate:
    """Random flips along each axis and random 90-degree rotations (MONAI transforms), per patch: the
    LDM's training augmentation.

    Rotations are drawn in every plane whose two axes have the same size (all three planes of a cube; the
    image plane of a square 2D patch, ``spatial_shape`` (H, W)).
    Unlike :func:`memostudy.detect.views.random_orientation` (uniform over the 48 orientations, what the
    detector's views use), each flip and rotation is an independent coin, as in the papers'
    augmentation; the two are kept apart because changing either would change published results. Randomness comes from the generator
    :func:`memostudy.training.fit` hands over, so it replays on resume.
    """

    def __init__(self, spatial_shape: tuple[int, ...], prob: float = 0.5) -> None:
        n = len(spatial_shape)
        planes = [(a, b) for a in range(n) for b in range(a + 1, n) if spatial_shape[a] == spatial_shape[b]]
        self.transform = Compose(
            [RandFlip(prob=prob, spatial_axis=a) for a in range(n)]
            + [RandRotate90(prob=prob, max_k=3, spatial_axes=p) for p in planes]
        )

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, C, D, H, W) (or (B, C, H, W)) with each patch independently flipped / rotated."""
        self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, (), generator=generator)))
        return torch.stack([torch.as_tensor(self.transform(v)).as_subclass(torch.Tensor) for v in batch])
