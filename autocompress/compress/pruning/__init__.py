"""Pruning: ``weight`` (unstructured zeros), ``structured`` (channels removed) and ``gradual``
(channel sparsity raised epoch by epoch, then removed).

``techniques`` holds weight pruning and the schedule, ``structured`` the channel techniques;
``coupling`` is Torch-Pruning's dependency graph and the verified shrink (the first engine);
``plan``, ``masks`` and ``engine`` are NNI's layer plans, pruners and ModelSpeedup (the
fallback, and weight pruning's masks).
"""

from autocompress.compress.base import Technique
from autocompress.compress.pruning.structured import GradualPruning, StructuredPruning
from autocompress.compress.pruning.techniques import PruningBase, WeightPruning, pruning_steps, scheduled_ratio
from autocompress.spec.policy import Policy


def select(policy: Policy) -> type[Technique] | None:
    """The pruning technique ``policy`` turns on, or None."""
    return {"weight": WeightPruning, "structured": StructuredPruning, "gradual": GradualPruning}.get(
        policy.pruning.method)


__all__ = ["GradualPruning", "PruningBase", "StructuredPruning", "WeightPruning", "pruning_steps", "scheduled_ratio",
           "select"]
