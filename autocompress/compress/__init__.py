"""Compression techniques: pruning, distillation, quantization. See ``base.Technique``.

Each technique module has ``build(policy, ctx) -> Technique | None`` (None when the policy
leaves it off). They run in pipeline order: structure first, then training-time helpers,
then the number format.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from autocompress.compress.base import Technique

if TYPE_CHECKING:
    from autocompress.spec.policy import Policy
    from autocompress.trial.run import TrialContext

PIPELINE_ORDER = (
    "autocompress.compress.pruning",
    "autocompress.compress.regularization",
    "autocompress.compress.distillation",
    "autocompress.compress.quantization",
)


def build_techniques(policy: "Policy", ctx: "TrialContext") -> list[Technique]:
    out = []
    for module_name in PIPELINE_ORDER:
        module = importlib.import_module(module_name)  # lazily: NNI is slow to import
        technique = module.build(policy, ctx)
        if technique is not None:
            out.append(technique)
    return out


__all__ = ["Technique", "build_techniques", "PIPELINE_ORDER"]
