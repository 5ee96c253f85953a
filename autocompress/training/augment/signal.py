"""Augmentation steps for 1D signals shaped (N, C, L): noise, time shift, time scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from autocompress.training.augment.base import Random, Step

SIGNAL_POLICIES = ("noise", "time_shift", "time_scale")

NOISE_MAX_STD = 0.1                # noise std per sample ~ U(0, 0.1) x the batch's std
SHIFT_MAX_FRACTION = 0.1           # time shift up to 10% of the length
TIME_SCALE = (0.8, 1.2)


def add_noise(x: Tensor, r: Random) -> Tensor:
    """Gaussian noise, its std drawn per sample in [0, NOISE_MAX_STD] x the batch's std."""
    level = r.uniform(0.0, NOISE_MAX_STD, x.shape[0], x) * x.std().clamp_min(1e-8)
    noise = torch.randn(x.shape, generator=r.gen).to(x)
    return x + level.view(-1, *([1] * (x.dim() - 1))) * noise


def time_shift(x: Tensor, r: Random) -> Tensor:
    """Shift each sample by up to ``SHIFT_MAX_FRACTION`` of its length; the edge value is
    held where the signal is shifted in (no wrap-around jump)."""
    n, c, length = x.shape
    most = max(1, int(length * SHIFT_MAX_FRACTION))
    shift = r.integers(-most, most, n, x.device)
    idx = (torch.arange(length, device=x.device)[None, :] - shift[:, None]).clamp(0, length - 1)
    return x.gather(-1, idx[:, None, :].expand(n, c, length))


def time_scale(x: Tensor, r: Random) -> Tensor:
    """Stretch or squeeze each sample in time about its center by a factor in ``TIME_SCALE``
    (linear interpolation; the edge value is held outside the source)."""
    n, c, length = x.shape
    factor = r.uniform(*TIME_SCALE, n, x)
    pos = torch.linspace(-1.0, 1.0, length, dtype=x.dtype, device=x.device)[None, :] / factor[:, None]
    grid = torch.stack([pos, torch.zeros_like(pos)], dim=-1)[:, None]        # (N, 1, L, 2)
    out = F.grid_sample(x[:, :, None, :], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[:, :, 0, :]


SIGNAL_STEPS: dict[str, Step] = {"noise": add_noise, "time_shift": time_shift, "time_scale": time_scale}
