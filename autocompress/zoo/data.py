"""Data sources: built-in digits (scikit-learn, offline), CIFAR-10/100 and ImageFolder from a
local root (never downloaded), and user factories ``fn(**kwargs) -> (train, val, test)``.

Every source gives a ``DataBundle``: three torch Datasets of ``(x, y)``, the class count,
the shape of one input, and whether horizontal flips keep labels.

scikit-learn and torchvision are imported where a source needs them: each costs about 2 s
to import on this machine, and most studies use one source.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from autocompress.errors import ConfigError
from autocompress.spec.fields import DataSpec
from autocompress.zoo.imports import import_callable


@dataclass
class DataBundle:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]      # one sample, no batch dimension
    flip_ok: bool = True              # False where a mirror image changes the label (digits)
    color: bool = False               # 3-channel images: color jitter applies

    @property
    def kind(self) -> str:
        """image (C,H,W), signal (C,L) or features (F,)."""
        return {3: "image", 2: "signal", 1: "features"}.get(len(self.input_shape), "other")

    @property
    def in_channels(self) -> int:
        return self.input_shape[0] if len(self.input_shape) > 1 else 1

    def subset_train(self, fraction: float, seed: int) -> "DataBundle":
        """A fixed random fraction of the training split (for cheap screening and tests)."""
        if fraction >= 1.0:
            return self
        n = len(self.train)
        k = max(1, int(round(n * fraction)))
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist()
        return DataBundle(self.name, Subset(self.train, idx), self.val, self.test, self.num_classes,
                          self.input_shape, self.flip_ok, self.color)


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of ``ds`` in a fixed order (``shuffle``: a permutation drawn from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None,
                      num_workers=0, drop_last=False)


def _split_indices(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    val_frac, test_frac = fractions
    rest, test = train_test_split(idx, test_size=test_frac, random_state=seed, stratify=labels)
    train, val = train_test_split(rest, test_size=val_frac / (1 - test_frac), random_state=seed,
                                  stratify=labels[rest])
    return train, val, test


def digits(seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits (1,797 images), standardized, split 60/20/20 stratified."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(ds.target, dtype=torch.long)
    train, val, test = _split_indices(ds.target, (0.2, 0.2), seed)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    make = lambda i: TensorDataset(x[i], y[i])  # noqa: E731
    return DataBundle("digits", make(train), make(val), make(test), 10, (1, 8, 8), flip_ok=False)


def _normalize_transform(mean: tuple, std: tuple, size: int | None = None):
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToImage()]
    if size:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def cifar(root: str | Path, *, classes: int = 10, val_fraction: float = 0.1, seed: int = 0) -> DataBundle:
    """CIFAR-10/100 in the standard python-pickle layout under ``root`` (not downloaded)."""
    from torchvision import datasets

    base = datasets.CIFAR10 if classes == 10 else datasets.CIFAR100
    # the layout is checked, not torchvision's md5 sums of the original archive: a subset or a
    # re-pickled copy in the same format is still CIFAR to the user
    cls = type(base.__name__, (base,), {
        "train_list": [[name, None] for name, _ in base.train_list],
        "test_list": [[name, None] for name, _ in base.test_list],
        "meta": {**base.meta, "md5": None}})
    tf = _normalize_transform((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    try:
        full = cls(str(root), train=True, download=False, transform=tf)
        test = cls(str(root), train=False, download=False, transform=tf)
    except RuntimeError:
        raise ValueError(f"no CIFAR-{classes} data under '{root}' (expected {base.base_folder}/ with "
                         f"{', '.join(n for n, _ in base.train_list + base.test_list)}, "
                         f"{base.meta['filename']}); autocompress never downloads data sets") from None
    except (OSError, EOFError, pickle.UnpicklingError, KeyError) as exc:
        raise ValueError(f"CIFAR-{classes} files under '{root}' do not read as the python-pickle "
                         f"format: {type(exc).__name__}: {exc}") from None
    labels = np.asarray(full.targets)
    n = len(labels)
    idx = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(n * val_fraction))
    return DataBundle(f"cifar{classes}", Subset(full, idx[n_val:].tolist()), Subset(full, idx[:n_val].tolist()),
                      test, classes, (3, 32, 32), flip_ok=True, color=True)


def imagefolder(root: str | Path, *, image_size: int = 64, val_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, flip_ok: bool = True) -> DataBundle:
    """An ImageFolder tree: ``root/train``, ``root/val`` (and ``root/test``) if present,
    otherwise one ``root/<class>/*.png`` tree split with a fixed seed."""
    from torchvision import datasets

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder '{root}' does not exist")
    tf = _normalize_transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), image_size)
    if (root / "train").is_dir() and (root / "val").is_dir():
        train = datasets.ImageFolder(str(root / "train"), transform=tf)
        val = datasets.ImageFolder(str(root / "val"), transform=tf)
        test = datasets.ImageFolder(str(root / "test"), transform=tf) if (root / "test").is_dir() else val
        classes = len(train.classes)
    else:
        full = datasets.ImageFolder(str(root), transform=tf)
        labels = np.asarray(full.targets)
        tr, va, te = _split_indices(labels, (val_fraction, test_fraction), seed)
        train, val, test = (Subset(full, i.tolist()) for i in (tr, va, te))
        classes = len(full.classes)
    return DataBundle(root.name, train, val, test, classes, (3, image_size, image_size),
                      flip_ok=flip_ok, color=True)


def _infer_num_classes(ds: Dataset) -> int:
    base = ds
    while isinstance(base, Subset):
        base = base.dataset
    for attr in ("classes",):
        if hasattr(base, attr):
            return len(getattr(base, attr))
    if isinstance(base, TensorDataset) and len(base.tensors) > 1:
        return int(base.tensors[1].max()) + 1
    return int(max(int(ds[i][1]) for i in range(len(ds)))) + 1


def from_factory(path: str, kwargs: dict, base_dir: Path) -> DataBundle:
    fn = import_callable(path, base_dir=base_dir)
    try:
        result = fn(**kwargs)
    except Exception as exc:
        raise ValueError(f"data factory '{path}' raised {type(exc).__name__}: {exc}") from None
    meta: dict[str, Any] = {}
    if isinstance(result, dict):
        meta = result
        result = (meta.get("train"), meta.get("val"), meta.get("test"))
    if not isinstance(result, (tuple, list)) or len(result) != 3 or any(r is None for r in result):
        raise ValueError(f"data factory '{path}' must return (train, val, test) datasets")
    train, val, test = result
    for split, ds in zip(("train", "val", "test"), result):
        if len(ds) == 0:
            raise ValueError(f"data factory '{path}': the {split} dataset is empty")
    try:
        sample = train[0]
    except Exception as exc:
        raise ValueError(f"data factory '{path}': train[0] raised {type(exc).__name__}: {exc}") from None
    if not isinstance(sample, (tuple, list)) or len(sample) != 2:
        raise ValueError(f"data factory '{path}': train[0] is not an (x, y) pair "
                         f"(got {type(sample).__name__})")
    x, y = (torch.as_tensor(v) for v in sample)
    if y.numel() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(f"data factory '{path}': the label of train[0] must be one integer class index "
                         f"(got {y.dtype}{'' if y.numel() == 1 else f' of shape {tuple(y.shape)}'})")
    if x.dtype == torch.float64:
        raise ValueError(f"data factory '{path}': the input of train[0] is {x.dtype}; models take float32 "
                         "(return e.g. torch.as_tensor(x, dtype=torch.float32))")
    num_classes = int(meta.get("num_classes") or _infer_num_classes(train))
    return DataBundle(path.split(":")[-1], train, val, test, num_classes, tuple(x.shape),
                      flip_ok=bool(meta.get("flip_ok", x.dim() == 3)),
                      color=x.dim() == 3 and x.shape[0] == 3)


def build_data(spec: DataSpec, *, seed: int, source: str | None = None) -> DataBundle:
    """A DataBundle from the study's ``data`` section. Raises ConfigError on bad input."""
    kind = spec.kind
    base_dir = Path(source).parent if source else Path.cwd()

    def rooted(options: Any, field: str) -> dict:
        if isinstance(options, str):
            options = {"root": options}
        if not isinstance(options, dict) or "root" not in options:
            raise ConfigError(source, f"data.{field}", "expected {root: path, ...}")
        options = dict(options)
        root = Path(options["root"]).expanduser()
        options["root"] = root if root.is_absolute() else base_dir / root
        return options

    try:
        if kind == "builtin":
            if spec.builtin != "digits":
                raise ConfigError(source, "data.builtin", f"unknown data set '{spec.builtin}' (choose from: digits)")
            return digits(seed=seed)
        if kind in ("cifar10", "cifar100"):
            opts = rooted(getattr(spec, kind), kind)
            return cifar(classes=10 if kind == "cifar10" else 100, seed=seed, **opts)
        if kind == "imagefolder":
            return imagefolder(seed=seed, **rooted(spec.imagefolder, kind))
        return from_factory(spec.factory, spec.kwargs, base_dir)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError) as exc:  # OSError: torchvision's "no class folder", unreadable files
        raise ConfigError(source, f"data.{kind}", str(exc)) from None
