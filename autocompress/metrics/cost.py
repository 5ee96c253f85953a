"""Cost per inference: what 1000 inferences cost on a device rented by the hour.

The throughput is that of the latency measurement itself (a batch of ``target.batch_size``
samples every ``latency_ms``), so the cost moves with latency exactly and is settled, and
previewed, when latency is. The price per device-hour is the study's
(``target.price_per_hour``); nothing here knows any vendor's prices.
"""

from __future__ import annotations


def cost_usd_per_1k(price_per_hour: float, latency_ms: float, batch_size: int) -> float:
    """Dollars per 1000 inferences at ``price_per_hour`` dollars per device-hour, when a batch
    of ``batch_size`` samples takes ``latency_ms``.

    >>> round(cost_usd_per_1k(3.6, latency_ms=10.0, batch_size=1), 6)   # 100 samples/s
    0.01
    """
    seconds_per_sample = latency_ms / 1e3 / batch_size
    return price_per_hour / 3600.0 * seconds_per_sample * 1000
