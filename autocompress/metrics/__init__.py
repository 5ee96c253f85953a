"""Measured metrics of a model: accuracy, latency, size, FLOPs, params, peak memory.

``registry.METRICS`` declares every metric once (unit, direction, when it is final, whether
this machine can measure it); the other modules measure.
"""

from autocompress.metrics.registry import METRICS, Metric

__all__ = ["METRICS", "Metric"]
