"""A held-out test split the search never sees: carved out of train (with the study seed,
stratified) where the data has none, disjoint from val and from the train split the trials
see, measured by ``test_accuracy``, and named with its size and origin in the report."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
from crafted import crafted_study
from torch import nn
from torch.utils.data import Subset

from autocompress.errors import ConfigError
from autocompress.report.data import report_data, study_summary
from autocompress.report.html import render_html
from autocompress.search import record
from autocompress.spec.config import DataSpec
from autocompress.metrics.accuracy import evaluate
from autocompress.trial.context import TrialContext
from autocompress.zoo import build_data
from autocompress.zoo.data import make_loader
from autocompress.zoo.splits import Split

CLASSES = ("ant", "bee", "cat")


def _write_tree(root, counts: dict[str, int], shade: int = 0) -> None:
    """Tiny distinct PNGs under root/<class>/ (ImageFolder's real format)."""
    from PIL import Image

    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(counts.get(cls, 0)):
            pixels = np.full((6, 6, 3), (c * 70 + i * 3 + shade) % 256, dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


@pytest.fixture
def no_test_tree(tmp_path):
    """train/ (20 images a class) and val/ (4 ant, 1 bee, 1 cat), no test/."""
    _write_tree(tmp_path / "imgs" / "train", dict.fromkeys(CLASSES, 20))
    _write_tree(tmp_path / "imgs" / "val", {"ant": 4, "bee": 1, "cat": 1}, shade=1)
    return tmp_path / "imgs"


def _load(root, seed=0, **options):
    return build_data(DataSpec(imagefolder={"root": str(root), "image_size": 8, **options}), seed=seed)


def _files(ds) -> list[str]:
    """The image paths behind a (nested) Subset of an ImageFolder."""
    idx = list(range(len(ds)))
    while isinstance(ds, Subset):
        idx, ds = [ds.indices[i] for i in idx], ds.dataset
    return [ds.samples[i][0] for i in idx]


def test_imagefolder_without_test_carves_a_stratified_test_split_out_of_train(no_test_tree):
    bundle = _load(no_test_tree)
    train, val, test = (set(_files(d)) for d in (bundle.train, bundle.val, bundle.test))
    assert len(test) == 6 and len(train) == 54 and len(val) == 6            # 10% of train/'s 60 images
    assert all("/train/" in f for f in train | test) and all("/val/" in f for f in val)
    assert not train & test and not val & test and len(train | test) == 60
    assert Counter(f.split("/")[-2] for f in test) == dict.fromkeys(CLASSES, 2)   # stratified
    assert [bundle.test[i][1] for i in range(6)] == [bundle.test.dataset.targets[i] for i in bundle.test.indices]
    # the fraction of train the trials see (budget.train_fraction) never reaches into the test split
    trials = bundle.subset_train(0.5, seed=3)
    assert len(trials.train) == 27 and not set(_files(trials.train)) & test and trials.test is bundle.test
    assert bundle.splits == (Split("train", 54, "train/ minus 10% carved for test (seed 0)"),
                             Split("val", 6, "val/"),
                             Split("test", 6, "carved from train/ (10%, stratified, seed 0)"))
    assert trials.splits[0] == Split("train", 27, "train/ minus 10% carved for test (seed 0); "
                                                  "trials fine-tune on 27 of its 54 (seed 3)")


def test_the_carved_split_follows_the_study_seed(no_test_tree):
    first = set(_files(_load(no_test_tree, seed=0).test))
    assert set(_files(_load(no_test_tree, seed=0).test)) == first
    assert set(_files(_load(no_test_tree, seed=1).test)) != first
    assert len(_load(no_test_tree, seed=0, test_fraction=0.2).test) == 12
    with pytest.raises(ConfigError, match="test_fraction must be between 0 and 1"):
        _load(no_test_tree, test_fraction=1.5)
    with pytest.raises(ConfigError, match=r"val_fraction \+ test_fraction must be below 1"):
        _load(no_test_tree / "train", val_fraction=0.6, test_fraction=0.5)   # one tree: both carved


def test_test_accuracy_is_measured_on_the_carved_split_not_on_val(no_test_tree):
    class AlwaysAnt(nn.Module):   # accuracy = the share of "ant": 4/6 in val/, 2/6 in the carved test split
        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.tensor([5.0, 0.0, 0.0]))

        def forward(self, x):
            return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]

    # trial.measure evaluates accuracy on ctx.data.val and test_accuracy on ctx.data.test
    bundle = _load(no_test_tree)
    ctx = TrialContext(data=bundle, teacher=AlwaysAnt(), baseline_metrics={})
    accuracy, test_accuracy = (evaluate(ctx.teacher, make_loader(ds, ctx.eval_batch_size, shuffle=False), "cpu")
                               for ds in (ctx.data.val, ctx.data.test))
    assert accuracy == pytest.approx(4 / 6) and test_accuracy == pytest.approx(2 / 6)


def test_imagefolder_with_its_own_test_or_without_val(tmp_path):
    root = tmp_path / "full"
    for split in ("train", "val", "test"):
        _write_tree(root / split, dict.fromkeys(CLASSES, 4))
    bundle = _load(root)
    assert [(s.name, s.size, s.origin) for s in bundle.splits] == [("train", 12, "train/"), ("val", 12, "val/"),
                                                                   ("test", 12, "test/")]
    assert set(_files(bundle.test)) == {str(p) for p in (root / "test").rglob("*.png")}
    # train/ and test/ without val/: val is carved out of train/, test/ stays the test split
    _write_tree(tmp_path / "noval" / "train", dict.fromkeys(CLASSES, 10))
    _write_tree(tmp_path / "noval" / "test", dict.fromkeys(CLASSES, 2))
    bundle = _load(tmp_path / "noval", val_fraction=0.2)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 6)
    assert bundle.splits[1].origin == "carved from train/ (20%, stratified, seed 0)"
    assert not set(_files(bundle.train)) & set(_files(bundle.val))
    # val/ without one of train/'s classes would number the classes differently
    _write_tree(tmp_path / "odd" / "train", dict.fromkeys(CLASSES, 2))
    _write_tree(tmp_path / "odd" / "val", {"ant": 1, "bee": 1})
    (tmp_path / "odd" / "val" / "cat").rmdir()
    with pytest.raises(ConfigError, match=r"val/ has the classes \['ant', 'bee'\], train/ has"):
        _load(tmp_path / "odd")


def test_every_source_names_its_splits(tmp_path):
    origins = {s.name: s.origin for s in build_data(DataSpec(builtin="digits"), seed=2).splits}
    assert set(origins.values()) == {"digits: 60/20/20 stratified split (seed 2)"}
    from test_zoo import _write_cifar10

    _write_cifar10(tmp_path / "cifar")
    splits = build_data(DataSpec(cifar10={"root": str(tmp_path / "cifar")}), seed=0).splits
    assert splits[2] == Split("test", 10, "the data set's test split") and splits[0].size == 18


FACTORIES = (
    "import torch\n"
    "from torch.utils.data import TensorDataset\n"
    "x, y = torch.randn(40, 4), torch.arange(40) % 2\n"
    "train, val = TensorDataset(x, y), TensorDataset(x[:10], y[:10])\n"
    "def pair():\n    return train, val\n"
    "def none_test():\n    return train, val, None\n"
    "def mapping():\n    return {'train': train, 'val': val, 'num_classes': 2, 'test_fraction': 0.25}\n"
    "def unlabelled():\n    return [tuple(s) for s in train], val\n"
    "def val_again():\n    return train, val, val\n"
)


def test_a_factory_without_a_test_split_gets_one_carved_from_train(tmp_path, monkeypatch):
    (tmp_path / "splitdata.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, n_test in (("pair", 4), ("none_test", 4), ("mapping", 10), ("val_again", 4)):
        bundle = build_data(DataSpec(factory=f"splitdata:{name}"), seed=0)
        train, test = set(bundle.train.indices), set(bundle.test.indices)
        assert len(test) == n_test and not train & test and len(train | test) == 40
        assert Counter(int(bundle.test[i][1]) for i in range(n_test)) == {0: n_test // 2, 1: n_test // 2}
        assert bundle.splits[2].origin.startswith("carved from the factory's train split (")
        assert bundle.splits[1] == Split("val", 10, "the factory's val split")
    first, again, other = (build_data(DataSpec(factory="splitdata:pair"), seed=seed).test.indices
                           for seed in (0, 0, 1))
    assert again == first and sorted(other) != sorted(first)
    # labels the dataset does not expose without loading every sample: a random split, and it says so
    bundle = build_data(DataSpec(factory="splitdata:unlabelled"), seed=0)
    assert len(bundle.test) == 4 and bundle.splits[2].origin == "carved from the factory's train split (10%, random, seed 0)"
    sys.modules.pop("splitdata", None)


def test_the_report_shows_each_split_and_old_studies_read_as_empty():
    study, _ = crafted_study()
    assert record.study_info(study).data_splits == ()
    assert study_summary(study, {}, record.read_all(study))["data_splits"] == []
    splits = (Split("train", 54, "train/ minus 10% carved for test (seed 0)"), Split("val", 6, "val/"),
              Split("test", 6, "carved from train/ (10%, stratified, seed 0)"))
    record.write_study_info(study, replace(record.study_info(study), data_splits=splits))
    assert record.study_info(study).data_splits == splits
    data = report_data(study)
    assert data.summary["data_splits"][2] == {"name": "test", "size": 6,
                                              "origin": "carved from train/ (10%, stratified, seed 0)"}
    assert "test: 6 samples, carved from train/ (10%, stratified, seed 0)" in render_html(data)


def test_a_study_stores_the_splits_its_trials_see(tmp_path, write_study):
    from autocompress.search.study import prepare
    from autocompress.spec.config import load_study_spec

    root = tmp_path / "learnable"   # classes told apart by brightness: the baseline must beat chance
    _write_tree(root / "train", dict.fromkeys(CLASSES, 20))
    _write_tree(root / "val", dict.fromkeys(CLASSES, 8), shade=1)
    path = write_study(data={"imagefolder": {"root": str(root), "image_size": 8}},
                       budget={"trials": 1, "epochs": 1, "train_fraction": 0.5}, baseline={"epochs": 8})
    run = prepare(load_study_spec(path), out=path.parent / "run", log=lambda m: None)
    summary = report_data(run.study).summary
    assert [(s["name"], s["size"]) for s in summary["data_splits"]] == [("train", 27), ("val", 24), ("test", 6)]
    assert summary["data_splits"][2]["origin"] == "carved from train/ (10%, stratified, seed 0)"
    assert not set(_files(run.ctx.data.train)) & set(_files(run.ctx.data.test))
