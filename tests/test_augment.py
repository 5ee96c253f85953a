"""Training-only augmentation: what each choice does to a batch, that val/test stay clean,
that digits are never flipped, mixing gives soft targets, and what it costs a digits trial."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.errors import TrialFailed
from autocompress.spec.policy import AugmentationPolicy, Policy, TrainingPolicy
from autocompress.training import augment
from autocompress.training.augment import (
    IMAGE_POLICIES,
    SIGNAL_POLICIES,
    PerSampleV2,
    Random,
    build_batch_transform,
)
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.zoo.data import DataBundle

CPU = torch.device("cpu")


def bundle(shape: tuple[int, ...], *, n: int = 64, classes: int = 4, flip_ok: bool = True,
           color: bool = False, seed: int = 0) -> DataBundle:
    """Normalized random data (like a real data set after Normalize) of one sample shape."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((n, *shape), generator=g) - 0.45) / 0.25
    y = torch.arange(n) % classes
    ds = TensorDataset(x, y)
    return DataBundle("synthetic", ds, ds, ds, classes, shape, flip_ok=flip_ok, color=color)


def aug(policy: str = "none", **kw) -> AugmentationPolicy:
    return AugmentationPolicy(policy=policy, **kw)


def batch(data: DataBundle, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return data.train[:n]


# -- what each choice does ------------------------------------------------------------------

def test_nothing_to_do_gives_no_transform(digits_bundle):
    assert build_batch_transform(aug("none"), digits_bundle, seed=0) is None


@pytest.mark.parametrize("policy", IMAGE_POLICIES)
def test_image_policies_change_color_images_per_sample(policy):
    data = bundle((3, 16, 16), color=True)
    x, y = batch(data)
    original = x.clone()
    tf = build_batch_transform(aug(policy), data, seed=0)
    out, out_y = tf(x, y)
    assert torch.equal(x, original)                         # the input batch is not modified
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(out_y, y)
    changed = (out - x).flatten(1).abs().amax(dim=1) > 1e-4
    assert changed.float().mean() > 0.5
    # each sample draws its own parameters: one image repeated comes out in several ways
    same = x[:1].expand(16, -1, -1, -1).contiguous()
    outs, _ = tf(same, y[:16])
    assert len({tuple(o.flatten().round(decimals=4).tolist()) for o in outs}) > 4
    # the same seed gives the same augmentation
    again, _ = build_batch_transform(aug(policy), data, seed=0)(x, y)
    assert torch.equal(out, again)
    assert tf.skipped == {}


@pytest.mark.parametrize("policy", SIGNAL_POLICIES)
def test_signal_policies_change_each_signal(policy):
    data = bundle((2, 50))
    x, y = batch(data)
    tf = build_batch_transform(aug(policy), data, seed=0)
    out, _ = tf(x, y)
    assert out.shape == x.shape
    assert ((out - x).flatten(1).abs().amax(dim=1) > 1e-5).float().mean() > 0.8
    same, _ = tf(x[:1].expand(8, -1, -1).contiguous(), y[:8])
    assert len({tuple(o.flatten().round(decimals=4).tolist()) for o in same}) > 3


def test_time_shift_moves_the_signal_and_holds_the_edge():
    ramp = torch.arange(20.0).view(1, 1, 20).repeat(8, 3, 1)
    out = augment.time_shift(ramp, Random(0))
    for row in out[:, 0]:
        shift = int(row[10] - 10)
        assert abs(shift) <= 2                               # at most 10% of 20 steps
        idx = (torch.arange(20) + shift).clamp(0, 19)
        assert torch.equal(row, idx.float())
    assert torch.equal(out[:, 0], out[:, 2])                 # all channels shift together


def test_time_scale_stretches_about_the_center():
    t = torch.linspace(-1, 1, 41).view(1, 1, 41).repeat(6, 1, 1)
    out = augment.time_scale(t, Random(1))
    assert torch.allclose(out[:, 0, 20], torch.zeros(6), atol=1e-6)   # the center stays put
    slopes = (out[:, 0, 21] - out[:, 0, 19]) / (t[0, 0, 21] - t[0, 0, 19])
    assert ((slopes > 1 / 1.2 - 1e-4) & (slopes < 1 / 0.8 + 1e-4)).all() and slopes.std() > 0


def test_v2_policies_see_pixels_in_0_1_and_give_back_normalized_values():
    data = bundle((3, 8, 8), color=True)
    lo, hi = augment.channel_range(data)
    x, y = batch(data)
    seen = []

    def identity(sample):
        seen.append(sample)
        return sample

    out = PerSampleV2(identity, lo, hi)(x, Random(0))
    assert torch.allclose(out, x, atol=1e-5)                 # the [0, 1] view round-trips
    pixels = torch.stack(seen)
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.amax(dim=(0, 2, 3)).min() > 0.99
    tf = build_batch_transform(aug("trivialaugment"), data, seed=0)
    out, _ = tf(x, y)
    assert out.min() >= lo.min() - 1e-4 and out.max() <= hi.max() + 1e-4


# -- honest failures and skips --------------------------------------------------------------

def test_color_jitter_on_grayscale_fails_the_trial(digits_bundle):
    with pytest.raises(TrialFailed, match="color"):
        build_batch_transform(aug("color"), digits_bundle, seed=0)


def test_combined_on_digits_leaves_out_flip_and_color_and_says_so(digits_bundle):
    tf = build_batch_transform(aug("combined"), digits_bundle, seed=0)
    assert tf.applied == ["crop", "rotate_scale"]
    assert set(tf.skipped) == {"flip", "color"} and "flip_ok=False" in tf.skipped["flip"]
    assert tf.describe()["augmentation_skipped"] == tf.skipped


@pytest.mark.parametrize("policy,shape", [("crop", (2, 50)), ("noise", (1, 8, 8)), ("trivialaugment", (10,)),
                                          ("time_shift", (10,))])
def test_a_policy_for_another_kind_of_data_fails_the_trial(policy, shape):
    with pytest.raises(TrialFailed, match=policy):
        build_batch_transform(aug(policy), bundle(shape), seed=0)


def test_cutmix_on_feature_vectors_fails_but_mixup_works():
    data = bundle((10,))
    with pytest.raises(TrialFailed, match="cutmix"):
        build_batch_transform(aug(mix="cutmix"), data, seed=0)
    out, target = build_batch_transform(aug(mix="mixup", mix_prob=1.0), data, seed=0)(*batch(data))
    assert target.shape == (32, data.num_classes)


def _crops(img: torch.Tensor, pad: int, fill: torch.Tensor) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(img - fill, (pad,) * 4) + fill
    h, w = img.shape[-2:]
    return [padded[:, i:i + h, j:j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


def _explained_by(out: torch.Tensor, candidates: list[torch.Tensor]) -> bool:
    return any(torch.allclose(out, c, atol=1e-5) for c in candidates)


@pytest.mark.parametrize("policy", ["crop_flip", "combined"])
def test_digits_are_never_flipped(digits_bundle, policy, monkeypatch):
    flips = []
    monkeypatch.setattr(augment.image, "random_hflip", lambda x, r: flips.append(1) or x.flip(-1))
    tf = build_batch_transform(aug(policy), digits_bundle, seed=0)
    x, y = digits_bundle.train[:64]
    for _ in range(5):
        tf(x, y)
    assert flips == [] and "flip" not in tf.applied


def test_crop_flip_output_is_a_shifted_never_mirrored_digit(digits_bundle):
    lo, _ = augment.channel_range(digits_bundle)
    x, y = digits_bundle.train[:64]
    out, _ = build_batch_transform(aug("crop_flip"), digits_bundle, seed=0)(x, y)
    for img, o in zip(x, out):
        assert _explained_by(o, _crops(img, 1, lo))
    # where flips are allowed, some outputs are mirror images that no crop explains
    flippable = DataBundle("digits-flippable", digits_bundle.train, digits_bundle.val, digits_bundle.test,
                           10, (1, 8, 8), flip_ok=True)
    out, _ = build_batch_transform(aug("crop_flip"), flippable, seed=0)(x, y)
    mirrored = [not _explained_by(o, _crops(img, 1, lo)) and _explained_by(o, _crops(img.flip(-1), 1, lo))
                for img, o in zip(x, out)]
    assert 10 < sum(mirrored) < 54


# -- mixing ---------------------------------------------------------------------------------

def test_mixup_gives_soft_targets_of_the_mixed_pair(digits_bundle):
    x, y = digits_bundle.train[:64]
    tf = build_batch_transform(aug(mix="mixup", mix_alpha=1.0, mix_prob=1.0), digits_bundle, seed=0)
    out, target = tf(x, y)
    assert target.shape == (64, 10) and torch.allclose(target.sum(dim=1), torch.ones(64))
    assert ((target > 0).sum(dim=1) == 2).any()
    # each output is lam * x_i + (1 - lam) * x_j with lam the weight of y_i in the target
    i = int(((target > 0).sum(dim=1) == 2).nonzero()[0])
    lam = float(target[i, y[i]])
    partner_class = int((target[i] - lam * torch.nn.functional.one_hot(y[i], 10)).argmax())
    candidates = [j for j in range(64) if y[j] == partner_class]
    assert any(torch.allclose(out[i], lam * x[i] + (1 - lam) * x[j], atol=1e-5) for j in candidates)


def test_mix_prob_zero_keeps_inputs_with_one_hot_targets(digits_bundle):
    x, y = digits_bundle.train[:32]
    out, target = build_batch_transform(aug(mix="mixup", mix_prob=0.0), digits_bundle, seed=0)(x, y)
    assert torch.equal(out, x) and torch.equal(target, torch.nn.functional.one_hot(y, 10).float())


def test_mix_prob_is_the_share_of_mixed_batches(digits_bundle):
    x, y = digits_bundle.train[:16]
    tf = build_batch_transform(aug(mix="mixup", mix_prob=0.3, mix_alpha=1.0), digits_bundle, seed=0)
    mixed = sum(not torch.equal(tf(x, y)[0], x) for _ in range(300))
    assert 60 < mixed < 120


@pytest.mark.parametrize("shape", [(1, 12, 12), (2, 40)])
def test_cutmix_target_weight_is_the_pasted_area(shape):
    n = 16
    x = torch.arange(n, dtype=torch.float32).view(n, *([1] * len(shape))).expand(n, *shape).contiguous()
    y = torch.arange(n)
    data = bundle(shape, n=n, classes=n)
    tf = build_batch_transform(aug(mix="cutmix", mix_alpha=1.0, mix_prob=1.0), data, seed=3)
    for _ in range(5):
        out, target = tf(x, y)
        for i in range(n):
            own = float((out[i] == i).float().mean())
            assert target[i, i] == pytest.approx(own, abs=1e-6) or own == 1.0 and target[i, i] == 1.0


def test_signal_augmentation_composes_with_mixing():
    data = bundle((2, 30))
    out, target = build_batch_transform(aug("time_shift", mix="cutmix", mix_prob=1.0), data, seed=0)(*batch(data))
    assert out.shape == (32, 2, 30) and target.shape == (32, 4)


# -- inside the training loop ---------------------------------------------------------------

class Recorder(nn.Module):
    """A linear classifier that keeps every input it sees, split by train/eval mode."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen[self.training].append(x.detach().clone())
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("policy,mix", [("combined", "none"), ("trivialaugment", "cutmix")])
def test_augmentation_reaches_training_batches_only(digits_bundle, policy, mix):
    train_x = digits_bundle.train.tensors[0].clone()
    val_x = digits_bundle.val.tensors[0]
    model = Recorder(64, 10)
    a = aug(policy, mix=mix, mix_prob=1.0)
    policy_ = Policy(training=TrainingPolicy(lr=1e-3, batch_size=64), augmentation=a)
    fine_tune(model, digits_bundle.train, digits_bundle.val, policy_,
              FitPlan(epochs=1, device=CPU, seed=0, batch_transform=build_batch_transform(a, digits_bundle, seed=0)))
    trained_on = torch.cat(model.seen[True]).flatten(1)
    raw = train_x.flatten(1)
    exact = (torch.cdist(trained_on, raw).min(dim=1).values < 1e-5).float().mean()
    assert exact < 0.3                                          # training inputs were augmented
    assert torch.equal(torch.cat(model.seen[False]), val_x)     # validation saw the clean split
    assert torch.equal(digits_bundle.train.tensors[0], train_x)  # and the data set is untouched


def test_data_time_of_a_digits_fine_tune_counts_the_augmentation(digits_bundle):
    """``FitResult.data_seconds`` is the time spent getting batches, augmentation included (its share is
    printed with ``pytest -s``; how small it is, is for benchmarks/augment_overhead.py: no timings here)."""
    import time

    from autocompress.zoo.models import digits_cnn

    pause = 0.002
    a = aug("combined", mix="mixup")
    transform, sizes = build_batch_transform(a, digits_bundle, seed=0), []

    def slow(x, y):   # the augmentation, plus a known wait
        sizes.append(x.shape[0])
        time.sleep(pause)
        return transform(x, y)

    torch.manual_seed(0)
    model = digits_cnn(num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=16)
    fit = fine_tune(model, digits_bundle.train, digits_bundle.val,
                    Policy(training=TrainingPolicy(lr=3e-3), augmentation=a),
                    FitPlan(epochs=2, device=CPU, seed=0, batch_transform=slow))
    print(f"digits, combined + mixup (+{pause * 1e3:.0f} ms/batch): data {fit.data_seconds:.3f}s of "
          f"{fit.train_seconds:.3f}s training, {1e3 * fit.data_seconds / fit.steps:.2f} ms/batch")
    assert len(sizes) == fit.steps and sum(sizes) == 2 * len(digits_bundle.train)   # every batch, both epochs
    assert fit.data_seconds >= fit.steps * pause        # the augmentation's time is counted as data time
    assert fit.data_seconds <= fit.train_seconds        # and it is part of the fine-tune, not beside it


class FixedRandom(Random):
    """Every uniform draw is ``value`` (integers: ``low``)."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def uniform(self, low, high, n, like):
        return torch.full((n,), self.values.pop(0), dtype=like.dtype)


@pytest.mark.parametrize("angle,scale", [(12.0, 1.0), (-7.0, 1.08), (3.0, 0.92)])
def test_rotate_scale_matches_torchvision_affine(angle, scale):
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(2, 3, 20, 36)       # non-square: rotation must happen in pixels
    out = augment.random_affine(x, FixedRandom(angle, scale), fill=torch.zeros(3, 1, 1))
    ref = TF.affine(x, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR)
    assert torch.allclose(out, ref, atol=1e-5)


def test_augmentation_that_cannot_fit_the_data_is_told_when_the_study_starts(write_study, tmp_path):
    from typer.testing import CliRunner

    from autocompress.cli import app

    runner = CliRunner()
    # digits are 1x8x8 grayscale images: 1D-signal noise and color jitter cannot apply
    fixed = write_study("fixed.yaml", search_space={"augmentation": {"policy": "noise"}})
    result = runner.invoke(app, ["search", str(fixed), "--out", str(tmp_path / "fixed")])
    assert result.exit_code == 2 and "search_space.augmentation.policy: no choice fits the data" in result.output
    assert "1D signals" in result.output and not (tmp_path / "fixed").exists()

    mixed = write_study("mixed.yaml", search_space={"augmentation": {"policy": {"choices": ["none", "crop", "noise", "color"]}}})
    result = runner.invoke(app, ["search", str(mixed), "--out", str(tmp_path / "mixed"), "--trials", "1"])
    assert result.exit_code == 0, result.output
    warned = [ln for ln in result.output.splitlines() if ln.startswith("warning: search_space.augmentation.policy")]
    assert [ln.split("'")[1] for ln in warned] == ["noise", "color"]
