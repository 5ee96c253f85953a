"""The built-in ``signals`` task (``data: {builtin: signals}``): 3,000 generated two-channel
signals of 128 samples in 8 balanced classes, a benchmark with headroom where digits has none.
The built-in ``conv1d_net`` trained as a study's baseline (15 epochs) scores 83-86% on
validation (study seeds 0 and 1), and the same net at width 8 instead of 32 scores 68-78%.

The generative rule. A class is three binary features, ``label = band + 2 * order + 4 * coupled``:

- ``band``: the oscillation both channels carry is low (0.025-0.055 cycles per sample) or high
  (0.065-0.12) in frequency (``BANDS``);
- ``order``: ``BURSTS`` short transients (Gaussian bumps of random sign) on channel 1 are each
  echoed on channel 2 a few samples later (0) or earlier (1): which channel leads (``ECHO_LAG``);
- ``coupled``: channel 2's oscillation is channel 1's shifted by a quarter period (1), or an
  independent one in the same band with its own frequency and phase (0).

The features interact: a coupled channel 2 lags channel 1 by a quarter period of the
oscillation everywhere, while ``order`` is the lag of the transients alone. No feature is tied
to a time: the phases are random and each transient sits anywhere in the window (a random time
shift), so a model that pools over time can learn every class; an absolute position (an
"early" or "late" burst) could not be, by ``conv1d_net`` or any net with global pooling. Each
sample also draws its amplitudes (oscillation, transients, echoes), a white-noise level
(``NOISE_STD``) and a slow random-walk drift (``DRIFT_STD``) that blurs the bands. Then 3% of
the labels are replaced by another class at random (``LABEL_NOISE``): even a perfect model
scores about 97%.

The data are the same for every study: they are drawn with ``DATA_SEED``, and the study seed
only draws the 60/20/20 stratified split (as for digits); each channel is standardized with
the training split's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

from autocompress.zoo.bundle import DataBundle
from autocompress.zoo.splits import complete, split_indices

DATA_SEED = 1234
NUM_CLASSES = 8
PER_CLASS = 375                  # 3,000 samples
CHANNELS, LENGTH = 2, 128
LABEL_NOISE = 0.03               # the fraction of labels replaced by another class
BANDS = ((0.025, 0.055), (0.065, 0.12))   # cycles per sample: low, high
BURST_WIDTH = 1.5                # the transient: a Gaussian bump, its sd in samples
BURST_AMP = (2.5, 4.0)
BURSTS = 4                       # transients per sample
ECHO_LAG = (3, 5)                # samples between the transient and its echo
NOISE_STD = (0.25, 0.8)          # white noise, per sample
DRIFT_STD = 0.08                 # the random walk's step


@dataclass(frozen=True)
class SignalArrays:
    """The whole generated pool: inputs (N, 2, 128) float32, the labels a model sees, and the
    labels before ``LABEL_NOISE`` (the rule's own)."""
    x: np.ndarray
    labels: np.ndarray
    clean_labels: np.ndarray


def generate(seed: int = DATA_SEED) -> SignalArrays:
    """The pool of samples drawn with ``seed`` (``DATA_SEED`` for the built-in task)."""
    rng = np.random.default_rng(seed)
    clean = rng.permutation(np.repeat(np.arange(NUM_CLASSES), PER_CLASS))
    band, order, coupled = clean & 1, (clean >> 1) & 1, (clean >> 2) & 1
    n = len(clean)
    t = np.arange(LENGTH, dtype=np.float64)
    x = _oscillations(rng, band, coupled, t) + _transients(rng, order, t)
    x += rng.uniform(*NOISE_STD, (n, 1, 1)) * rng.standard_normal((n, CHANNELS, LENGTH))
    drift = np.cumsum(rng.standard_normal((n, CHANNELS, LENGTH)), axis=2) * DRIFT_STD
    x += drift - drift.mean(axis=2, keepdims=True)
    labels = clean.copy()
    flipped = rng.choice(n, size=int(round(n * LABEL_NOISE)), replace=False)
    labels[flipped] = (clean[flipped] + rng.integers(1, NUM_CLASSES, len(flipped))) % NUM_CLASSES
    return SignalArrays(x.astype(np.float32), labels.astype(np.int64), clean.astype(np.int64))


def _frequencies(rng: np.random.Generator, band: np.ndarray) -> np.ndarray:
    low = np.where(band == 1, BANDS[1][0], BANDS[0][0])
    high = np.where(band == 1, BANDS[1][1], BANDS[0][1])
    return rng.uniform(low, high)


def _oscillations(rng: np.random.Generator, band: np.ndarray, coupled: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Channel 1's oscillation, and channel 2's: a quarter period behind it where coupled,
    else its own frequency (same band) and phase."""
    n = len(band)
    f1, phase1 = _frequencies(rng, band), rng.uniform(0, 2 * np.pi, n)
    own_f, own_phase = _frequencies(rng, band), rng.uniform(0, 2 * np.pi, n)
    f2 = np.where(coupled == 1, f1, own_f)
    phase2 = np.where(coupled == 1, phase1 - np.pi / 2 + rng.normal(0, 0.2, n), own_phase)
    amp1 = rng.uniform(0.5, 2.0, n)
    amp2 = amp1 * rng.uniform(0.6, 1.4, n)
    ch1 = amp1[:, None] * np.sin(2 * np.pi * f1[:, None] * t + phase1[:, None])
    ch2 = amp2[:, None] * np.sin(2 * np.pi * f2[:, None] * t + phase2[:, None])
    return np.stack([ch1, ch2], axis=1)


def _transients(rng: np.random.Generator, order: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``BURSTS`` bumps on channel 1 anywhere in the window, each echoed on channel 2
    ``ECHO_LAG`` samples later (order 0) or earlier (order 1)."""
    n = len(order)
    margin = 4 * BURST_WIDTH + ECHO_LAG[1]
    out = np.zeros((n, CHANNELS, len(t)))
    for _ in range(BURSTS):
        center = rng.uniform(margin, len(t) - margin, n)
        lag = rng.uniform(*ECHO_LAG, n) * np.where(order == 1, -1.0, 1.0)
        amp = rng.uniform(*BURST_AMP, n) * rng.choice([-1.0, 1.0], n)
        out[:, 0] += _wavelet(center, amp, t)
        out[:, 1] += _wavelet(center + lag, amp * rng.uniform(0.5, 1.0, n), t)
    return out


def _wavelet(center: np.ndarray, amp: np.ndarray, t: np.ndarray) -> np.ndarray:
    d = t - center[:, None]
    return amp[:, None] * np.exp(-0.5 * (d / BURST_WIDTH) ** 2)


def signals(seed: int = 0) -> DataBundle:
    """The generated pool (the same for every ``seed``), split 60/20/20 stratified with ``seed``,
    each channel standardized with the training split's mean and std."""
    pool = generate(DATA_SEED)
    train, val, test, _ = split_indices(len(pool.labels), pool.labels, (0.2, 0.2), seed)
    x, y = torch.from_numpy(pool.x), torch.from_numpy(pool.labels)
    mean = x[train].mean(dim=(0, 2), keepdim=True)
    std = x[train].std(dim=(0, 2), keepdim=True)
    x = (x - mean) / std
    make = lambda i: TensorDataset(x[i], y[i])  # noqa: E731
    origin = f"signals: generated (data seed {DATA_SEED}), 60/20/20 stratified split (seed {seed})"
    splits, records = complete({"train": make(train), "val": make(val), "test": make(test)},
                               dict.fromkeys(("train", "val", "test"), origin), fractions={}, seed=seed)
    return DataBundle("signals", *splits, NUM_CLASSES, (CHANNELS, LENGTH), flip_ok=False, splits=records)
