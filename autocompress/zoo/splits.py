"""The splits of a data set and where each comes from, and the one rule for a split the data
does not have: it is carved out of the training split with the study seed (stratified when
the labels are known and every class can give to each part), so a "test" figure is never
the validation split that drove the search. Every source (``zoo.data``) builds its splits
through ``complete``; the ``Split`` records travel with the ``DataBundle`` into the study and
its report.

scikit-learn (about 2 s to import) is imported where a split is drawn, as in ``zoo.data``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from torch.utils.data import Dataset, Subset, TensorDataset

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split of a data set as the report shows it: ``origin`` says where it came from
    ("val/", "carved from train/ (10%, stratified, seed 0)", "the data set's test split")."""
    name: str
    size: int
    origin: str


def labels_of(ds: Dataset) -> np.ndarray | None:
    """The class index of every sample, where the dataset says without loading samples
    (torchvision's ``targets``, a TensorDataset's second tensor, Subsets of them); else None."""
    if isinstance(ds, Subset):
        base = labels_of(ds.dataset)
        return None if base is None else base[np.asarray(ds.indices, dtype=np.int64)]
    if isinstance(ds, TensorDataset) and len(ds.tensors) > 1:
        labels = ds.tensors[1].numpy()
    else:
        targets = getattr(ds, "targets", None)  # torchvision's data sets: a list or a tensor
        labels = np.asarray(targets) if targets is not None else np.zeros(0)
    ok = labels.ndim == 1 and labels.dtype.kind in "iu" and len(labels) == len(ds)
    return labels if ok else None


def split_indices(n: int, labels: np.ndarray | None, fractions: tuple[float, float], seed: int,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Indices of ``n`` samples cut into (rest, first, second) parts, ``fractions`` of all of
    them (the second is drawn first), stratified when ``labels`` allow; the last item says
    whether they did. A fraction of 0 gives an empty part."""
    if labels is not None:
        try:
            return (*_cut(n, labels, fractions, seed), True)
        except ValueError:  # a class too small to give to every part: scikit-learn refuses to stratify
            pass
    return (*_cut(n, None, fractions, seed), False)


def _cut(n: int, labels: np.ndarray | None, fractions: tuple[float, float], seed: int) -> tuple:
    from sklearn.model_selection import train_test_split

    idx, empty = np.arange(n), np.arange(0)
    first_frac, second_frac = fractions
    rest, second = (train_test_split(idx, test_size=second_frac, random_state=seed, stratify=labels)
                    if second_frac else (idx, empty))
    if not first_frac:
        return rest, empty, second
    rest, first = train_test_split(rest, test_size=first_frac / (1 - second_frac), random_state=seed,
                                   stratify=None if labels is None else labels[rest])
    return rest, first, second


def complete(splits: Mapping[str, Dataset | None], origins: Mapping[str, str], *,
             fractions: Mapping[str, float], seed: int) -> tuple[tuple[Dataset, Dataset, Dataset], tuple[Split, ...]]:
    """The data set's (train, val, test) and their records: a split that is None is carved out
    of train (``fractions[name]`` of it) with ``seed``, and train keeps only the rest, so the
    carved samples are never trained on nor picked by ``DataBundle.subset_train``."""
    missing = [name for name in ("val", "test") if splits.get(name) is None]
    out, origin = dict(splits), dict(origins)
    if missing:
        for name in missing:
            if not 0 < fractions[name] < 1:
                raise ValueError(f"{name}_fraction must be between 0 and 1 (got {fractions[name]})")
        take = tuple(fractions[n] if n in missing else 0.0 for n in ("val", "test"))
        if sum(take) >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1 (got {take[0]} + {take[1]})")
        train = splits["train"]
        rest, val, test, stratified = split_indices(len(train), labels_of(train), take, seed)
        parts = {"train": rest, "val": val, "test": test}
        for name in ["train", *missing]:
            out[name] = Subset(train, parts[name].tolist())
        how = "stratified" if stratified else "random"
        for name in missing:
            origin[name] = f"carved from {origins['train']} ({_percent(fractions[name])}, {how}, seed {seed})"
        cut = " and ".join(f"{_percent(fractions[n])} carved for {n}" for n in missing)
        origin["train"] = f"{origins['train']} minus {cut} (seed {seed})"
    records = tuple(Split(name, len(out[name]), origin[name]) for name in SPLIT_NAMES)
    return (out["train"], out["val"], out["test"]), records


def _percent(fraction: float) -> str:
    return f"{round(fraction * 100, 2):g}%"
