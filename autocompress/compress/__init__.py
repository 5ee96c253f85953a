"""Compression techniques: pruning, regularization, distillation, BatchNorm recalibration, quantization.

``pipeline(policy)`` says which techniques a policy turns on and what each declares
(``base.Declaration``); ``Pipeline.build(ctx)`` makes them for one trial. See ``base.Technique``
for the hooks.
"""

from autocompress.compress.base import Declaration, NumberFormat, Pipeline, Technique, TechniqueContext
from autocompress.compress.pipeline import pipeline

__all__ = ["Declaration", "NumberFormat", "Pipeline", "Technique", "TechniqueContext", "pipeline"]
