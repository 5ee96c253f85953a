"""Pruning: ``weight`` (unstructured zeros), ``structured`` (channels removed) and ``gradual``
(channel sparsity raised epoch by epoch, then removed), on NNI 3.0.

``techniques`` holds the three techniques and their schedule; ``plan`` which layers and ratios
(and the tied channels), ``masks`` which weights or channels (NNI's pruners), ``engine`` NNI
itself and the physical shrink (``ModelSpeedup``).
"""

from autocompress.compress.pruning.techniques import (GradualPruning, StructuredPruning, WeightPruning, pruning_steps,
                                                      scheduled_ratio, select)

__all__ = ["GradualPruning", "StructuredPruning", "WeightPruning", "pruning_steps", "scheduled_ratio", "select"]
