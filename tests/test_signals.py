"""The built-in generated signals task (zoo/signals.py): its shape, its determinism, its
rule's balance and label noise, and how a study asks for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autocompress.errors import ConfigError
from autocompress.spec.config import load_study_spec
from autocompress.spec.fields import DataSpec
from autocompress.spec.space import load_space
from autocompress.training.augment import misfit
from autocompress.zoo.data import build_data
from autocompress.zoo.signals import LABEL_NOISE, NUM_CLASSES, PER_CLASS, generate, signals

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pool():
    return generate()


@pytest.fixture(scope="module")
def bundle():
    return signals(seed=0)


def _pooled(b) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [b.train, b.val, b.test]
    x = torch.cat([ds.tensors[0] for ds in parts])
    y = torch.cat([ds.tensors[1] for ds in parts])
    return x, y


def test_shapes_class_count_and_kind(bundle):
    assert bundle.name == "signals" and bundle.num_classes == NUM_CLASSES == 8
    assert bundle.input_shape == (2, 128) and bundle.kind == "signal" and bundle.in_channels == 2
    assert not bundle.flip_ok
    x, y = bundle.train[0]
    assert x.shape == (2, 128) and x.dtype == torch.float32 and y.dtype == torch.long
    sizes = [len(bundle.train), len(bundle.val), len(bundle.test)]
    assert sum(sizes) == NUM_CLASSES * PER_CLASS == 3000 and sizes == [1800, 600, 600]
    assert [s.size for s in bundle.splits] == sizes


def test_standardized_with_train_statistics(bundle):
    x = bundle.train.tensors[0]
    assert torch.allclose(x.mean(dim=(0, 2)), torch.zeros(2), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2)), torch.ones(2), atol=1e-4)


def test_the_data_are_the_same_every_call(pool):
    again = generate()
    assert np.array_equal(pool.x, again.x) and np.array_equal(pool.labels, again.labels)
    a, b = signals(seed=0), signals(seed=0)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0]) and torch.equal(a.val.tensors[1], b.val.tensors[1])


def test_the_study_seed_draws_the_split_not_the_data(bundle):
    other = signals(seed=1)
    assert not torch.equal(bundle.val.tensors[1], other.val.tensors[1])
    (xa, ya), (xb, yb) = _pooled(bundle), _pooled(other)
    assert torch.equal(torch.bincount(ya), torch.bincount(yb))
    # each seed standardizes with its own train split (an affine map per channel): undo it
    # with the pool's own statistics, then the pools match sample for sample
    norm = lambda x: (x - x.mean(dim=(0, 2), keepdim=True)) / x.std(dim=(0, 2), keepdim=True)  # noqa: E731
    xa, xb = norm(xa), norm(xb)
    ia, ib = torch.argsort(xa[:, 0, 0]), torch.argsort(xb[:, 0, 0])
    assert torch.allclose(xa[ia], xb[ib], atol=1e-4) and torch.equal(ya[ia], yb[ib])


def test_classes_are_balanced(pool, bundle):
    assert np.array_equal(np.bincount(pool.clean_labels), np.full(NUM_CLASSES, PER_CLASS))
    counts = np.bincount(pool.labels, minlength=NUM_CLASSES)
    assert counts.min() >= 0.9 * PER_CLASS and counts.max() <= 1.1 * PER_CLASS
    val = torch.bincount(bundle.val.tensors[1], minlength=NUM_CLASSES)
    assert val.min() >= 65 and val.max() <= 85   # stratified: 75 each


def test_label_noise_at_the_documented_rate(pool):
    changed = pool.labels != pool.clean_labels
    assert changed.mean() == pytest.approx(LABEL_NOISE, abs=0.005)
    assert 0.02 <= changed.mean() <= 0.04
    # a replaced label is another class, any of them
    assert len(np.unique(pool.labels[changed])) == NUM_CLASSES


def test_build_data_builtin_signals():
    b = build_data(DataSpec(builtin="signals"), seed=0)
    assert b.name == "signals" and b.input_shape == (2, 128)


def test_unknown_builtin_names_the_field_and_the_choices():
    with pytest.raises(ConfigError) as err:
        build_data(DataSpec(builtin="imagenet"), seed=0, source="s.yaml")
    assert err.value.field == "data.builtin"
    assert "imagenet" in err.value.message and "signals" in err.value.message and "digits" in err.value.message


def test_the_signals_study_and_its_space_fit_the_data(bundle):
    spec = load_study_spec(ROOT / "studies" / "signals_cnn.yaml")
    assert spec.data.builtin == "signals" and spec.model.builtin == "conv1d_net"
    space = load_space(ROOT / "search_spaces" / "signal.yaml")
    for knob in space.knobs:
        section, _, name = knob.name.partition(".")
        if section == "augmentation" and name in ("policy", "mix"):
            for value in knob.distribution.choices:
                assert misfit(name, value, bundle) is None, (knob.name, value)
