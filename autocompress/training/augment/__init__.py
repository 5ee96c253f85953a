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
grayscale images, an image policy on a 1D signal, mixup on token ids, ...). Inside
``combined``, the parts that do not fit are left out and listed in ``BatchTransform.skipped``
(as is the flip of ``crop_flip`` on data whose source declares ``flip_ok=False``, such as digits).

Text (token ids (N, L), ``data.text`` set) takes only the text policies: token deletion,
swap, insertion, masking and synonym replacement, each changing about ``text_rate`` of the
content tokens; ids cannot be mixed, so ``mixup`` and ``cutmix`` are refused on text.

The package: ``base`` (``Random``, ``Step``), ``image`` (geometric steps, ``PerSampleV2``,
``channel_range``), ``signal`` (noise, time shift and scale), ``text`` (token-level steps,
synonym tables) and ``mix`` (MixUp, CutMix); this module composes them into a ``BatchTransform``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from autocompress.errors import TrialFailed
from autocompress.spec.policy import AugmentationPolicy
from autocompress.training.augment.base import Random, Step
from autocompress.training.augment.image import (
    AFFINE_DEGREES,
    AFFINE_SCALE,
    CROP_PAD_FRACTION,
    IMAGE_POLICIES,
    RANGE_SAMPLES,
    PerSampleV2,
    channel_range,
    image_steps,
    random_affine,
    random_crop,
    random_hflip,
)
from autocompress.training.augment.mix import Mix
from autocompress.training.augment.signal import (
    NOISE_MAX_STD,
    SHIFT_MAX_FRACTION,
    SIGNAL_POLICIES,
    SIGNAL_STEPS,
    TIME_SCALE,
    add_noise,
    time_scale,
    time_shift,
)
from autocompress.training.augment.text import TEXT_POLICIES, TextStep, TokenIds, load_synonyms
from autocompress.zoo.data import DataBundle

__all__ = [
    "AFFINE_DEGREES", "AFFINE_SCALE", "CROP_PAD_FRACTION", "IMAGE_POLICIES", "NOISE_MAX_STD", "RANGE_SAMPLES",
    "SHIFT_MAX_FRACTION", "SIGNAL_POLICIES", "TEXT_POLICIES", "TIME_SCALE", "BatchTransform", "Mix",
    "PerSampleV2", "Random", "Step", "add_noise", "build_batch_transform", "channel_range", "describe_policy",
    "misfit", "random_affine", "random_crop", "random_hflip", "time_scale", "time_shift",
]


class BatchTransform:
    """``(x, y) -> (x, y)``: the augmentation steps in order, then mixing (soft targets)."""

    def __init__(self, steps: list[tuple[str, Step]], *, mix: Mix | None, seed: int,
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


def build_batch_transform(aug: AugmentationPolicy, data: DataBundle, seed: int, *,
                          base_dir: Path | None = None) -> BatchTransform | None:
    """The training-batch transform for ``aug`` on ``data``; None when there is nothing to do.
    ``base_dir``: where a relative ``aug.synonyms`` path starts (the study file's folder; by
    default the working directory).

    Raises ``TrialFailed`` when a choice does not fit the data (e.g. ``color`` on grayscale).

    Example::

        tf = build_batch_transform(AugmentationPolicy(policy="crop_flip"), digits(), seed=0)
        x_aug, y = tf(x, y)      # digits: random crops only, never flipped (flip_ok=False)
    """
    if aug.policy == "none" and aug.mix == "none":
        return None
    _check_fit(aug, data)
    skipped: dict[str, str] = {}
    steps: list[tuple[str, Step]] = []
    if aug.policy in IMAGE_POLICIES:
        steps = image_steps(aug.policy, data, skipped)
    elif aug.policy in SIGNAL_POLICIES:
        steps = [(aug.policy, SIGNAL_STEPS[aug.policy])]
    elif aug.policy in TEXT_POLICIES:
        steps = [(aug.policy, _text_step(aug, data, skipped, base_dir))]
    mix = None
    if aug.mix != "none":
        mix = Mix(aug.mix, alpha=aug.mix_alpha, prob=aug.mix_prob, num_classes=data.num_classes)
    if not steps and mix is None:
        return None
    return BatchTransform(steps, mix=mix, seed=seed, skipped=skipped)


def _check_fit(aug: AugmentationPolicy, data: DataBundle) -> None:
    """``TrialFailed`` naming why ``aug`` cannot apply to data of this kind."""
    kind, phrase = data.kind, _kind_phrase(data)
    if aug.policy in IMAGE_POLICIES and kind != "image":
        hint = {"signal": SIGNAL_POLICIES, "text": TEXT_POLICIES}.get(kind)
        raise TrialFailed(f"augmentation '{aug.policy}' is for images; data '{data.name}' is {phrase}"
                          + (f" (use one of: {', '.join(hint)})" if hint else ""))
    if aug.policy in SIGNAL_POLICIES and kind != "signal":
        raise TrialFailed(f"augmentation '{aug.policy}' is for 1D signals (C, L); data '{data.name}' is {phrase}")
    if aug.policy in TEXT_POLICIES and kind != "text":
        raise TrialFailed(f"augmentation '{aug.policy}' is for text; data '{data.name}' is {phrase}")
    if aug.policy not in ("none", *IMAGE_POLICIES, *SIGNAL_POLICIES, *TEXT_POLICIES):
        raise ValueError(f"unknown augmentation policy {aug.policy!r}")
    if aug.mix == "cutmix" and kind not in ("image", "signal"):
        raise TrialFailed(f"cutmix cuts a spatial or time window; data '{data.name}' is {phrase}")
    if aug.mix == "mixup" and kind == "text":
        raise TrialFailed(f"mixup blends inputs; data '{data.name}' is {phrase} of token ids, which cannot be mixed")
    if aug.mix != "none" and aug.mix_alpha <= 0:
        raise TrialFailed(f"{aug.mix} needs mix_alpha > 0 (got {aug.mix_alpha})")


def _text_step(aug: AugmentationPolicy, data: DataBundle, skipped: dict[str, str],
               base_dir: Path | None) -> TextStep:
    """The text step of ``aug``; a synonym table's skipped entries are noted in ``skipped``."""
    table = None
    if aug.policy == "synonym":
        if not aug.synonyms:
            raise TrialFailed("augmentation 'synonym' needs augmentation.synonyms: the path of a YAML or TSV "
                              "table word -> synonyms")
        path = Path(aug.synonyms).expanduser()
        table = load_synonyms(path if path.is_absolute() else (base_dir or Path.cwd()) / path, data.text.tokenizer)
        if (note := table.note()) is not None:
            skipped["synonym entries"] = note
    return TextStep(aug.policy, TokenIds.of(data.text), aug.text_rate, table)


def describe_policy(aug: AugmentationPolicy) -> str | None:
    """One line for a model card: what augmentation a policy trains with (None: none)."""
    if aug.policy == "none" and aug.mix == "none":
        return None
    mix = f", {aug.mix}" if aug.mix != "none" else ""
    rate = f" ({aug.text_rate:.0%} of tokens)" if aug.policy in TEXT_POLICIES else ""
    return f"augmentation: {aug.policy}{rate}{mix}"


def misfit(knob: str, value: str, data: DataBundle) -> str | None:
    """Why ``augmentation.<knob>: value`` cannot apply to ``data`` (the reason a trial picking
    it would fail with), or None when it fits. Checked once when a study starts."""
    aug = AugmentationPolicy(**{knob: value})
    try:
        if aug.policy == "synonym":  # the table is the space's (or the trial's), not known here
            _check_fit(aug, data)
        else:
            build_batch_transform(aug, data, seed=0)
    except TrialFailed as exc:
        return exc.reason
    return None


def _kind_phrase(data: DataBundle) -> str:
    return {"image": "an image set", "signal": "a 1D signal set", "features": "a feature-vector set",
            "text": "a text set"}.get(
        data.kind, f"shaped {data.input_shape}")
