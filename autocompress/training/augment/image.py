"""Augmentation steps for images shaped (N, C, H, W).

The geometric steps (crop, flip, rotate/scale) are vectorized tensor ops; the photometric
and auto-augment policies run a ``torchvision.transforms.v2`` transform per sample on a
[0, 1] view of the normalized batch (``PerSampleV2``).
"""

from __future__ import annotations

import math
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from autocompress.errors import TrialFailed
from autocompress.training.augment.base import Random, Step
from autocompress.zoo.data import DataBundle

IMAGE_POLICIES = ("crop", "crop_flip", "rotate_scale", "color", "combined", "trivialaugment", "randaugment")

CROP_PAD_FRACTION = 1 / 8          # pad 4 px on 32x32 (the CIFAR recipe), 1 px on 8x8 digits
AFFINE_DEGREES = 15.0
AFFINE_SCALE = (0.9, 1.1)
RANGE_SAMPLES = 2048               # training samples scanned for the per-channel range


def image_steps(policy: str, data: DataBundle, skipped: dict[str, str]) -> list[tuple[str, Step]]:
    """The steps of image ``policy`` on ``data``; the parts left out go into ``skipped``."""
    lo, hi = channel_range(data)
    _, h, w = data.input_shape
    pad = max(1, round(min(h, w) * CROP_PAD_FRACTION))
    crop = ("crop", lambda x, r: random_crop(x, r, pad=pad, fill=lo))
    flip = ("flip", random_hflip)
    affine = ("rotate_scale", lambda x, r: random_affine(x, r, fill=lo))
    no_flip = f"data '{data.name}' declares flip_ok=False (a mirror image changes the label)"
    no_color = f"data '{data.name}' is not a color (3-channel) image set"
    # torchvision is slow to import (seconds on a small CPU) and only image policies need it
    from torchvision.transforms import v2

    if policy == "crop":
        return [crop]
    if policy == "crop_flip":
        if not data.flip_ok:
            skipped["flip"] = no_flip
            return [crop]
        return [crop, flip]
    if policy == "rotate_scale":
        return [affine]
    if policy == "color":
        if not data.color:
            raise TrialFailed(f"augmentation 'color' (color jitter) needs color images; {no_color}")
        return [("color", PerSampleV2(v2.ColorJitter(0.4, 0.4, 0.4, 0.05), lo, hi))]
    if policy == "combined":
        steps = [crop]
        if data.flip_ok:
            steps.append(flip)
        else:
            skipped["flip"] = no_flip
        steps.append(affine)
        if data.color:
            steps.append(("color", PerSampleV2(v2.ColorJitter(0.4, 0.4, 0.4, 0.05), lo, hi)))
        else:
            skipped["color"] = no_color
        return steps
    if policy == "trivialaugment":
        return [(policy, PerSampleV2(v2.TrivialAugmentWide(), lo, hi))]
    if policy == "randaugment":
        return [(policy, PerSampleV2(v2.RandAugment(), lo, hi))]
    raise ValueError(f"unknown image augmentation {policy!r}")


_RANGES: "weakref.WeakKeyDictionary[object, tuple[Tensor, Tensor]]" = weakref.WeakKeyDictionary()


def channel_range(data: DataBundle) -> tuple[Tensor, Tensor]:
    """Per-channel min and max of (up to ``RANGE_SAMPLES``) training images, shaped (C, 1, 1):
    the normalized values of black and white, used as the pad fill and the [0, 1] view.
    Scanned once per training split (decoding images is not free) and kept while it lives."""
    try:
        return _RANGES[data.train]
    except (KeyError, TypeError):
        pass
    lo, hi = _scan_range(data)
    try:
        _RANGES[data.train] = (lo, hi)
    except TypeError:  # a data set that cannot be weakly referenced is scanned every time
        pass
    return lo, hi


def _scan_range(data: DataBundle) -> tuple[Tensor, Tensor]:
    lo = hi = None
    seen = 0
    for x, _ in DataLoader(data.train, batch_size=256, shuffle=False):
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        b_lo, b_hi = flat.min(dim=1).values, flat.max(dim=1).values
        lo = b_lo if lo is None else torch.minimum(lo, b_lo)
        hi = b_hi if hi is None else torch.maximum(hi, b_hi)
        seen += x.shape[0]
        if seen >= RANGE_SAMPLES:
            break
    assert lo is not None and hi is not None, "empty training split"
    return lo.float().view(-1, 1, 1), hi.float().view(-1, 1, 1)


def random_crop(x: Tensor, r: Random, *, pad: int, fill: Tensor) -> Tensor:
    """Pad by ``pad`` with ``fill`` (per channel) and crop back at a random offset per sample."""
    n, _, h, w = x.shape
    fill = fill.to(x)
    padded = F.pad(x - fill, (pad, pad, pad, pad)) + fill
    oy = r.integers(0, 2 * pad, n, x.device)
    ox = r.integers(0, 2 * pad, n, x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]      # (N, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]      # (N, 1, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: Tensor, r: Random) -> Tensor:
    """Mirror each sample left-right with probability 1/2."""
    flip = r.uniform(0, 1, x.shape[0], x) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_affine(x: Tensor, r: Random, *, fill: Tensor, degrees: float = AFFINE_DEGREES,
                  scale: tuple[float, float] = AFFINE_SCALE) -> Tensor:
    """``v2.RandomAffine(degrees, scale=scale)`` with its own angle and scale per sample,
    about the image center, bilinear, filled with ``fill`` outside the source."""
    n, _, h, w = x.shape
    angle = r.uniform(-degrees, degrees, n, x) * (math.pi / 180)
    s = r.uniform(*scale, n, x)
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    # the grid maps each output pixel to its source in [-1, 1] coordinates per axis; rotating
    # in pixels (not in those coordinates) keeps non-square images unsheared. Angles count
    # counter-clockwise, as in v2.functional.affine.
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = -sin * w / h, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    fill = fill.to(x)
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class PerSampleV2:
    """A ``torchvision.transforms.v2`` transform applied to each sample on its own (so each
    draws its own operation and magnitude), on the [0, 1] view of the normalized batch."""

    def __init__(self, transform: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor) -> None:
        self.transform = transform
        self.lo, self.span = lo, (hi - lo).clamp_min(1e-8)

    def __call__(self, x: Tensor, r: Random) -> Tensor:
        lo, span = self.lo.to(x), self.span.to(x)
        unit = ((x - lo) / span).clamp_(0.0, 1.0)
        with torch.random.fork_rng(devices=[]):   # v2 draws from torch's global generator
            torch.manual_seed(int(r.rng.integers(2**62)))
            out = torch.stack([self.transform(sample) for sample in unit])
        return out * span + lo
