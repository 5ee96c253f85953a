"""Data sources and models: digits, CIFAR and ImageFolder in their real on-disk formats
(tiny files written here), user factories, torchvision by name, checkpoints."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
import torch

from autocompress.errors import ConfigError
from autocompress.spec.config import DataSpec, ModelSpec
from autocompress.zoo import build_data, build_model
from autocompress.zoo.data import digits
from autocompress.zoo.models import list_models


def test_digits_split_is_fixed_and_disjoint():
    a, b = digits(), digits()
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10 and a.flip_ok is False
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    train = {tuple(x.flatten().tolist()) for x in a.train.tensors[0][:200]}
    test = {tuple(x.flatten().tolist()) for x in a.test.tensors[0]}
    assert len(train & test) < 5  # digits has a few duplicate images, never many
    # the study seed draws the split, as for CIFAR and ImageFolder
    from autocompress.spec.config import DataSpec
    from autocompress.zoo.data import build_data

    assert torch.equal(build_data(DataSpec(builtin="digits"), seed=0).val.tensors[0], a.val.tensors[0])
    assert not torch.equal(build_data(DataSpec(builtin="digits"), seed=1).val.tensors[0], a.val.tensors[0])


def _write_cifar10(root, n_train=20, n_test=10):
    """The python-pickle layout of cifar-10-python.tar.gz, extracted."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                "labels": [int(i % 10) for i in range(n)]}

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train // 5), f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)


def test_cifar10_from_a_local_root(tmp_path):
    # a small copy in the real layout loads: the layout is checked, not the original md5 sums
    _write_cifar10(tmp_path / "cifar")
    bundle = build_data(DataSpec(cifar10={"root": str(tmp_path / "cifar")}), seed=0)
    assert bundle.num_classes == 10 and bundle.input_shape == (3, 32, 32) and bundle.color
    assert len(bundle.train) + len(bundle.val) == 20 and len(bundle.test) == 10
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10


def test_cifar_missing_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="never downloads"):
        build_data(DataSpec(cifar10={"root": str(tmp_path / "nothing")}), seed=0, source="s.yaml")


def test_cifar_unreadable_batch_is_a_config_error(tmp_path):
    _write_cifar10(tmp_path / "cifar")
    (tmp_path / "cifar" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="data.cifar10: CIFAR-10 files under .* python-pickle"):
        build_data(DataSpec(cifar10={"root": str(tmp_path / "cifar")}), seed=0, source="s.yaml")


def test_imagefolder_split_and_presplit(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            d = tmp_path / "pre" / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((20, 24, 3), i * 40, dtype=np.uint8)).save(d / f"{i}.png")
    bundle = build_data(DataSpec(imagefolder={"root": str(tmp_path / "pre"), "image_size": 16}), seed=0)
    assert bundle.num_classes == 3 and bundle.input_shape == (3, 16, 16)
    # no test/: one image carved out of train/ (too few to stratify), never val/ (tests/test_splits.py)
    assert len(bundle.train) == 8 and len(bundle.val) == 9 and len(bundle.test) == 1 and bundle.test is not bundle.val
    assert bundle.train[0][0].shape == (3, 16, 16)

    flat = tmp_path / "flat"
    for cls in ("a", "b"):
        (flat / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8, 3), i, dtype=np.uint8)).save(flat / cls / f"{i}.png")
    bundle = build_data(DataSpec(imagefolder={"root": str(flat), "image_size": 8}), seed=0)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 20


def test_imagefolder_without_images_is_a_config_error(tmp_path):
    from PIL import Image

    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    with pytest.raises(ConfigError, match="s.yaml: data.imagefolder: Found no valid file for the classes cat"):
        build_data(DataSpec(imagefolder={"root": str(tmp_path / "imgs")}), seed=0, source="s.yaml")
    (tmp_path / "imgs" / "cat").rmdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "loose.png")
    with pytest.raises(ConfigError, match="data.imagefolder: Couldn't find any class folder"):
        build_data(DataSpec(imagefolder={"root": str(tmp_path / "imgs")}), seed=0, source="s.yaml")


def test_user_factories_for_data_and_model(tmp_path, monkeypatch):
    (tmp_path / "userpkg.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from torch.utils.data import TensorDataset\n"
        "def data(n=30, length=16):\n"
        "    x = torch.randn(n, 2, length); y = torch.arange(n) % 3\n"
        "    ds = TensorDataset(x, y)\n"
        "    return ds, ds, ds\n"
        "def model(num_classes, in_channels, hidden=8):\n"
        "    return nn.Sequential(nn.Conv1d(in_channels, hidden, 3), nn.ReLU(), nn.AdaptiveAvgPool1d(1),\n"
        "                         nn.Flatten(), nn.Linear(hidden, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = str(tmp_path / "study.yaml")
    bundle = build_data(DataSpec(factory="userpkg:data", kwargs={"n": 30}), seed=0, source=source)
    assert bundle.input_shape == (2, 16) and bundle.kind == "signal" and bundle.num_classes == 3
    model = build_model(ModelSpec(factory="userpkg:model", kwargs={"hidden": 4}), num_classes=3,
                        input_shape=bundle.input_shape, source=source)
    assert model(torch.randn(2, 2, 16)).shape == (2, 3)
    sys.modules.pop("userpkg", None)


def test_data_factory_with_unusable_datasets_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "baddata.py").write_text(
        "import torch\n"
        "from torch.utils.data import TensorDataset\n"
        "x, y = torch.randn(12, 4), torch.arange(12) % 3\n"
        "ok = TensorDataset(x, y)\n"
        "def empty_val():\n"
        "    return ok, TensorDataset(x[:0], y[:0]), ok\n"
        "def float_labels():\n"
        "    ds = TensorDataset(x, y.float())\n"
        "    return ds, ds, ds\n"
        "def dicts():\n"
        "    ds = [{'x': a, 'y': b} for a, b in ok]\n"
        "    return ds, ds, ds\n"
        "def float64():\n"
        "    ds = TensorDataset(x.double(), y)\n"
        "    return ds, ds, ds\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name, message in [("empty_val", "the val dataset is empty"),
                          ("float_labels", r"the label of train\[0\] must be one integer class index \(got torch.float32\)"),
                          ("dicts", "train.0. is not an .x, y. pair .got dict"),
                          ("float64", r"the input of train\[0\] is torch.float64; models take float32")]:
        with pytest.raises(ConfigError, match=f"s.yaml: data.factory: data factory 'baddata:{name}': {message}"):
            build_data(DataSpec(factory=f"baddata:{name}"), seed=0, source="s.yaml")
    sys.modules.pop("baddata", None)


def test_factory_that_raises_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / "badpkg.py").write_text("def model(num_classes, in_channels):\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="raised RuntimeError: boom"):
        build_model(ModelSpec(factory="badpkg:model"), num_classes=3, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="has no attribute"):
        build_model(ModelSpec(factory="badpkg:nothing"), num_classes=3, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="package.module:function"):
        build_model(ModelSpec(factory="badpkg.model"), num_classes=3, input_shape=(1, 8, 8))
    sys.modules.pop("badpkg", None)


@pytest.mark.parametrize("name", list_models())
def test_every_builtin_model_runs(name):
    shape = {"conv1d_net": (2, 32)}.get(name, (1, 8, 8))
    model = build_model(ModelSpec(builtin=name), num_classes=5, input_shape=shape)
    assert model(torch.randn(2, *shape)).shape == (2, 5)


def test_torchvision_model_adapts_channels_and_classes():
    model = build_model(ModelSpec(torchvision="resnet18"), num_classes=7, input_shape=(1, 16, 16))
    assert model.conv1.in_channels == 1
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 7)
    with pytest.raises(ConfigError, match="unknown torchvision model"):
        build_model(ModelSpec(torchvision="resnet9000"), num_classes=7, input_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match="never downloads"):
        build_model(ModelSpec(torchvision="resnet18", kwargs={"weights": "DEFAULT"}), num_classes=7,
                    input_shape=(3, 16, 16))


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoints_load_weights_only(tmp_path):
    model = build_model(ModelSpec(builtin="mlp"), num_classes=3, input_shape=(4,))
    good = tmp_path / "good.pt"
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, good)
    loaded = build_model(ModelSpec(builtin="mlp", checkpoint=str(good)), num_classes=3, input_shape=(4,))
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k] + 1) for k in model.state_dict())
    # saved from DataParallel/DDP ("module.") or a torch.compile'd model ("_orig_mod.")
    for prefix in ("module.", "_orig_mod."):
        wrapped = tmp_path / f"{prefix.strip('.')}.pt"
        torch.save({prefix + k: v * 2 for k, v in model.state_dict().items()}, wrapped)
        loaded = build_model(ModelSpec(builtin="mlp", checkpoint=str(wrapped)), num_classes=3, input_shape=(4,))
        assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k] * 2) for k in model.state_dict())

    evil = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, evil)
    with pytest.raises(ConfigError, match="pickled code"):
        build_model(ModelSpec(builtin="mlp", checkpoint=str(evil)), num_classes=3, input_shape=(4,))

    not_state = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_state)
    with pytest.raises(ConfigError, match="not a state dict"):
        build_model(ModelSpec(builtin="mlp", checkpoint=str(not_state)), num_classes=3, input_shape=(4,))

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConfigError, match="cannot be read"):
        build_model(ModelSpec(builtin="mlp", checkpoint=str(garbage)), num_classes=3, input_shape=(4,))
