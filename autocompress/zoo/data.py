"""Data sources: built-in digits (scikit-learn, offline), the generated ``signals`` task
(``zoo.signals``), CIFAR-10/100 and ImageFolder from a local root (never downloaded), and user
factories ``fn(**kwargs) -> (train, val[, test])``; ``build_data`` picks one from the study.

Every source gives a ``DataBundle`` (``zoo.bundle``): three torch Datasets of ``(x, y)``, the
class count, the shape of one input, whether horizontal flips keep labels, and where each split
came from. Validation drives the search; a test split the data does not have is carved out of
train with the study seed (``zoo.splits.complete``, the one rule for every source).

scikit-learn and torchvision are imported where a source needs them: each costs about 2 s
to import on this machine, and most studies use one source.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from autocompress.errors import ConfigError
from autocompress.spec.fields import DataSpec
from autocompress.zoo.bundle import DataBundle
from autocompress.zoo.imports import import_callable
from autocompress.zoo.signals import signals
from autocompress.zoo.splits import complete, split_indices


def make_loader(ds: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0) -> DataLoader:
    """Batches of ``ds`` in a fixed order (``shuffle``: a permutation drawn from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None,
                      num_workers=0, drop_last=False)


def digits(seed: int = 0) -> DataBundle:
    """scikit-learn's 8x8 digits (1,797 images), standardized, split 60/20/20 stratified."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(ds.target, dtype=torch.long)
    train, val, test, _ = split_indices(len(ds.target), ds.target, (0.2, 0.2), seed)
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    make = lambda i: TensorDataset(x[i], y[i])  # noqa: E731
    origin = f"digits: 60/20/20 stratified split (seed {seed})"
    splits, records = complete({"train": make(train), "val": make(val), "test": make(test)},
                               dict.fromkeys(("train", "val", "test"), origin), fractions={}, seed=seed)
    return DataBundle("digits", *splits, 10, (1, 8, 8), flip_ok=False, splits=records)


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
    splits, records = complete(
        {"train": Subset(full, idx[n_val:].tolist()), "val": Subset(full, idx[:n_val].tolist()), "test": test},
        {"train": f"the training batches minus {n_val} for val (random, seed {seed})",
         "val": f"{n_val} of the training batches (random, seed {seed})", "test": "the data set's test split"},
        fractions={}, seed=seed)
    return DataBundle(f"cifar{classes}", *splits, classes, (3, 32, 32), flip_ok=True, color=True, splits=records)


def imagefolder(root: str | Path, *, image_size: int = 64, val_fraction: float = 0.1,
                test_fraction: float = 0.1, seed: int = 0, flip_ok: bool = True) -> DataBundle:
    """An ImageFolder tree: ``root/train`` with ``root/val`` and ``root/test`` where present
    (a missing one is carved out of train/: ``val_fraction``, ``test_fraction``, stratified),
    otherwise one ``root/<class>/*.png`` tree split the same way."""
    from torchvision import datasets

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder '{root}' does not exist")
    tf = _normalize_transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), image_size)
    folder = lambda path: datasets.ImageFolder(str(path), transform=tf)  # noqa: E731
    if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        given = {n: folder(root / n) if (root / n).is_dir() else None for n in ("train", "val", "test")}
        origins = {n: f"{n}/" for n in given}
    else:  # one tree of class folders
        given, origins = {"train": folder(root)}, {"train": f"{root.name}/"}
    classes = given["train"].classes
    for name, ds in given.items():
        if ds is not None and ds.classes != classes:  # ImageFolder numbers the classes it finds
            raise ValueError(f"{name}/ has the classes {ds.classes}, train/ has {classes}: the same folders are needed")
    splits, records = complete(given, origins, fractions={"val": val_fraction, "test": test_fraction}, seed=seed)
    return DataBundle(root.name, *splits, len(classes), (3, image_size, image_size),
                      flip_ok=flip_ok, color=True, splits=records)


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


def from_factory(path: str, kwargs: dict, base_dir: Path, *, seed: int) -> DataBundle:
    """A factory's (train, val, test), (train, val) or dict of them (with ``num_classes``,
    ``flip_ok``, ``test_fraction``); without a test split (or with val given again as test),
    one is carved out of train."""
    fn = import_callable(path, base_dir=base_dir)
    try:
        result = fn(**kwargs)
    except Exception as exc:
        raise ValueError(f"data factory '{path}' raised {type(exc).__name__}: {exc}") from None
    meta: dict[str, Any] = {}
    if isinstance(result, dict):
        meta = result
        result = (meta.get("train"), meta.get("val"), meta.get("test"))
    if isinstance(result, (tuple, list)) and len(result) == 2:
        result = (*result, None)
    if not isinstance(result, (tuple, list)) or len(result) != 3 or result[0] is None or result[1] is None:
        raise ValueError(f"data factory '{path}' must return (train, val, test) or (train, val) datasets")
    train, val, test = result
    test = None if test is val else test  # the split that drives the search is not held out
    for split, ds in zip(("train", "val", "test"), result):
        if ds is not None and len(ds) == 0:
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
    splits, records = complete({"train": train, "val": val, "test": test},
                               {n: f"the factory's {n} split" for n in ("train", "val", "test")},
                               fractions={"test": float(meta.get("test_fraction", 0.1))}, seed=seed)
    return DataBundle(path.split(":")[-1], *splits, num_classes, tuple(x.shape),
                      flip_ok=bool(meta.get("flip_ok", x.dim() == 3)),
                      color=x.dim() == 3 and x.shape[0] == 3, splits=records)


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
        if kind == "builtin" and spec.builtin == "reviews":  # shorthand for text: {builtin: reviews}
            kind, spec = "text", DataSpec(text={"builtin": "reviews"})
        if kind == "builtin":
            builtins = {"digits": digits, "signals": signals}
            if spec.builtin not in builtins:
                raise ConfigError(source, "data.builtin",
                                  f"unknown data set '{spec.builtin}' (choose from: digits, reviews, signals)")
            return builtins[spec.builtin](seed=seed)
        if kind == "text":
            from autocompress.zoo.text import text_data

            t = text_data(spec.text, seed=seed, base_dir=base_dir)
            return DataBundle(t.name, t.train, t.val, t.test, len(t.info.label_names), (t.info.seq_len,),
                              flip_ok=False, color=False, splits=t.splits, text=t.info)
        if kind in ("cifar10", "cifar100"):
            opts = rooted(getattr(spec, kind), kind)
            return cifar(classes=10 if kind == "cifar10" else 100, seed=seed, **opts)
        if kind == "imagefolder":
            return imagefolder(seed=seed, **rooted(spec.imagefolder, kind))
        return from_factory(spec.factory, spec.kwargs, base_dir, seed=seed)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError) as exc:  # OSError: torchvision's "no class folder", unreadable files
        raise ConfigError(source, f"data.{kind}", str(exc)) from None
