"""Which techniques a policy turns on, in pipeline order: structure first, then the
training-time helpers, then the number format (``pipeline(policy) -> Pipeline``)."""

from __future__ import annotations

from typing import Callable

from autocompress.compress import batchnorm, depth, distillation, pruning, quantization, regularization
from autocompress.compress.base import Pipeline, Technique
from autocompress.spec.policy import Policy

# Each stage: policy -> the technique class it turns on, or None.
STAGES: tuple[Callable[[Policy], type[Technique] | None], ...] = (
    depth.select,         # layers dropped first: pruning then measures and cuts the shallower model
    pruning.select,
    regularization.select,
    distillation.select,
    batchnorm.select,     # after pruning's compress and after_finetune (the shrink), before int8 folds BN
    quantization.select,
)


def pipeline(policy: Policy) -> Pipeline:
    """The techniques ``policy`` turns on and their declarations (nothing is built yet)."""
    classes = tuple(cls for stage in STAGES if (cls := stage(policy)) is not None)
    return Pipeline(policy, classes, tuple(cls.declare(policy) for cls in classes))
