"""Training-only augmentation, applied per batch on tensors inside the fine-tuning loop.

``build_batch_transform(aug, data, seed)`` gives a callable ``(x, y) -> (x, y)`` that
``fine_tune`` applies to training batches only; val and test batches never pass through it.

Why per batch and not per sample in DataLoader workers: on a 2-core CPU a per-sample PIL
pipeline costs more than the training step of a small model. So the cheap geometric and
signal augmentations are written as vectorized tensor ops (each sample still draws its own
crop offset, flip, angle, scale, shift or noise level), and only the photometric and
auto-augment policies (``color``, ``trivialaugment``, ``randaugment``) call
``torchvision.transforms.v2`` once per sample. Those v2 transforms expect pixels in [0, 1],
while our data sets are normalized, so they run on a [0, 1] view of the batch made from the
per-channel range of the training data and mapped back afterwards.

A choice that does not fit the data raises ``TrialFailed`` with the reason (``color`` on
grayscale images, an image policy on a 1D signal, ...). Inside ``combined``, the parts that
do not fit are left out and listed in ``BatchTransform.skipped`` (as is the flip of
``crop_flip`` on data whose source declares ``flip_ok=False``, such as digits).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from autocompress.errors import TrialFailed
from autocompress.spec.policy import AugmentationPolicy
from autocompress.zoo.data import DataBundle

IMAGE_POLICIES = ("crop", "crop_flip", "rotate_scale", "color", "combined", "trivialaugment", "randaugment")
SIGNAL_POLICIES = ("noise", "time_shift", "time_scale")

CROP_PAD_FRACTION = 1 / 8          # pad 4 px on 32x32 (the CIFAR recipe), 1 px on 8x8 digits
AFFINE_DEGREES = 15.0
AFFINE_SCALE = (0.9, 1.1)
NOISE_MAX_STD = 0.1                # noise std per sample ~ U(0, 0.1) x the batch's std
SHIFT_MAX_FRACTION = 0.1           # time shift up to 10% of the length
TIME_SCALE = (0.8, 1.2)
RANGE_SAMPLES = 2048               # training samples scanned for the per-channel range

Step = Callable[[Tensor, "Random"], Tensor]


@dataclass
class Random:
    """The transform's own random streams, so a trial's augmentation depends on its seed only."""
    seed: int
    rng: np.random.Generator = field(init=False)
    gen: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)

    def uniform(self, low: float, high: float, n: int, like: Tensor) -> Tensor:
        return torch.as_tensor(self.rng.uniform(low, high, n), dtype=like.dtype, device=like.device)

    def integers(self, low: int, high: int, n: int, device: torch.device) -> Tensor:
        """Integers in [low, high] inclusive."""
        return torch.as_tensor(self.rng.integers(low, high + 1, n), dtype=torch.long, device=device)


class BatchTransform:
    """``(x, y) -> (x, y)``: the augmentation steps in order, then mixing (soft targets)."""

    def __init__(self, steps: list[tuple[str, Step]], *, mix: "Mix | None", seed: int,
                 skipped: dict[str, str]) -> None:
        self.steps = steps
        self.mix = mix
        self.random = Random(seed)
        self.skipped = skipped

    @property
    def applied(self) -> list[str]:
        return [name for name, _ in self.steps] + ([self.mix.kind] if self.mix else [])

    def describe(self) -> dict[str, object]:
        """What this transform does, for the trial's record."""
        return {"augmentation_applied": self.applied, "augmentation_skipped": dict(self.skipped)}

    @torch.no_grad()
    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        for _, step in self.steps:
            x = step(x, self.random)
        if self.mix is not None:
            x, y = self.mix(x, y, self.random)
        return x, y


def build_batch_transform(aug: AugmentationPolicy, data: DataBundle, seed: int) -> BatchTransform | None:
    """The training-batch transform for ``aug`` on ``data``; None when there is nothing to do.

    Raises ``TrialFailed`` when a choice does not fit the data (e.g. ``color`` on grayscale).

    Example::

        tf = build_batch_transform(AugmentationPolicy(policy="crop_flip"), digits(), seed=0)
        x_aug, y = tf(x, y)      # digits: random crops only, never flipped (flip_ok=False)
    """
    if aug.policy == "none" and aug.mix == "none":
        return None
    kind = data.kind
    skipped: dict[str, str] = {}
    steps: list[tuple[str, Step]] = []
    if aug.policy in IMAGE_POLICIES:
        if kind != "image":
            raise TrialFailed(f"augmentation '{aug.policy}' is for images; data '{data.name}' is {_kind_phrase(data)}"
                              + (f" (use one of: {', '.join(SIGNAL_POLICIES)})" if kind == "signal" else ""))
        steps = _image_steps(aug.policy, data, skipped)
    elif aug.policy in SIGNAL_POLICIES:
        if kind != "signal":
            raise TrialFailed(f"augmentation '{aug.policy}' is for 1D signals (C, L); data '{data.name}' is "
                              f"{_kind_phrase(data)}")
        steps = [(aug.policy, _SIGNAL_STEPS[aug.policy])]
    elif aug.policy != "none":
        raise ValueError(f"unknown augmentation policy {aug.policy!r}")
    mix = None
    if aug.mix != "none":
        if aug.mix == "cutmix" and kind not in ("image", "signal"):
            raise TrialFailed(f"cutmix cuts a spatial or time window; data '{data.name}' is {_kind_phrase(data)}")
        if aug.mix_alpha <= 0:
            raise TrialFailed(f"{aug.mix} needs mix_alpha > 0 (got {aug.mix_alpha})")
        mix = Mix(aug.mix, alpha=aug.mix_alpha, prob=aug.mix_prob, num_classes=data.num_classes)
    if not steps and mix is None:
        return None
    return BatchTransform(steps, mix=mix, seed=seed, skipped=skipped)


def misfit(knob: str, value: str, data: DataBundle) -> str | None:
    """Why ``augmentation.<knob>: value`` cannot apply to ``data`` (the reason a trial picking
    it would fail with), or None when it fits. Checked once when a study starts."""
    try:
        build_batch_transform(AugmentationPolicy(**{knob: value}), data, seed=0)
    except TrialFailed as exc:
        return exc.reason
    return None


def _kind_phrase(data: DataBundle) -> str:
    return {"image": "an image set", "signal": "a 1D signal set", "features": "a feature-vector set"}.get(
        data.kind, f"shaped {data.input_shape}")


# -- images ------------------------------------------------------------------------------

def _image_steps(policy: str, data: DataBundle, skipped: dict[str, str]) -> list[tuple[str, Step]]:
    lo, hi = channel_range(data)
    _, h, w = data.input_shape
    pad = max(1, round(min(h, w) * CROP_PAD_FRACTION))
    crop = ("crop", lambda x, r: random_crop(x, r, pad=pad, fill=lo))
    flip = ("flip", random_hflip)
    affine = ("rotate_scale", lambda x, r: random_affine(x, r, fill=lo))
    no_flip = f"data '{data.name}' declares flip_ok=False (a mirror image changes the label)"
    no_color = f"data '{data.name}' is not a color (3-channel) image set"
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
    from torch.utils.data import DataLoader

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


# -- 1D signals (N, C, L) ----------------------------------------------------------------

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


_SIGNAL_STEPS: dict[str, Step] = {"noise": add_noise, "time_shift": time_shift, "time_scale": time_scale}


# -- mixing ------------------------------------------------------------------------------

class Mix:
    """MixUp or CutMix (as ``v2.MixUp`` / ``v2.CutMix``: one ``lam ~ Beta(alpha, alpha)`` per
    batch, partner = the batch permuted), applied to a batch with probability ``prob``.
    Always returns soft targets (N, classes), one-hot for batches left unmixed, so the loss
    sees one target format. CutMix on a 1D signal cuts a time window."""

    def __init__(self, kind: str, *, alpha: float, prob: float, num_classes: int) -> None:
        self.kind, self.alpha, self.prob, self.num_classes = kind, alpha, prob, num_classes

    def __call__(self, x: Tensor, y: Tensor, r: Random) -> tuple[Tensor, Tensor]:
        target = F.one_hot(y, self.num_classes).to(x.dtype) if y.dim() == 1 else y
        if x.shape[0] < 2 or r.rng.random() >= self.prob:
            return x, target
        lam = float(r.rng.beta(self.alpha, self.alpha))
        perm = torch.as_tensor(r.rng.permutation(x.shape[0]), device=x.device)
        if self.kind == "mixup":
            x = lam * x + (1 - lam) * x[perm]
        else:
            x, lam = self._cut(x, x[perm], lam, r)
        return x, lam * target + (1 - lam) * target[perm]

    @staticmethod
    def _cut(x: Tensor, other: Tensor, lam: float, r: Random) -> tuple[Tensor, float]:
        """Paste a box (image) or window (signal) of ``other`` covering about 1 - lam of the
        input; lam is corrected to the area actually pasted after clipping at the border."""
        sizes = x.shape[2:]
        cut = math.sqrt(1 - lam) if len(sizes) == 2 else 1 - lam
        out = x.clone()
        region = [slice(None), slice(None)]
        area = 1.0
        for size in sizes:
            length = int(size * cut)
            center = int(r.rng.integers(size))
            a, b = max(0, center - length // 2), min(size, center + length // 2)
            region.append(slice(a, b))
            area *= (b - a) / size
        out[tuple(region)] = other[tuple(region)]
        return out, 1.0 - area
