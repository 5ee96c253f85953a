"""Peak memory of inference, measured around a block of code (the latency run).

- CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak: every tensor the
  caching allocator handed out, weights included (memory of non-PyTorch runtimes such as
  ONNX Runtime's CUDA provider is not seen).
- CPU (Linux): growth of the process's peak resident set. The kernel's high-water mark
  (``VmHWM``) is reset through ``/proc/self/clear_refs`` before the block and read after it,
  so short peaks are caught without sampling. It counts every runtime's allocations (PyTorch,
  oneDNN, ONNX Runtime arenas) but only what is new: weights already loaded and memory the
  allocator kept from earlier work in this process are reused, not counted, so it is a lower
  bound of the working memory of inference.
- Elsewhere (no ``/proc``, or ``clear_refs`` not writable): not measurable; a study that asks
  for ``peak_memory_mb`` there is refused at validation (``peak_memory_unavailable``).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Iterator

import torch

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def peak_memory_unavailable(device: str) -> str | None:
    """Why peak inference memory cannot be measured here for ``device`` (None: it can)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return None
    if kind != "cpu":
        return f"peak memory is measured on CUDA and CPU targets only, not {kind}"
    if _status_kb("VmHWM") is None or not os.access(_CLEAR_REFS, os.W_OK):
        return (f"this machine cannot reset the process's peak RSS ({_CLEAR_REFS} is not writable "
                f"or {_STATUS} has no VmHWM), so CPU peak memory cannot be measured")
    return None


class PeakMemory:
    mb: float | None = None  # set when the block ends; None: not measurable here


@contextlib.contextmanager
def track_peak_memory(device: str | torch.device) -> Iterator[PeakMemory]:
    """``with track_peak_memory("cpu") as peak: run()`` then ``peak.mb``."""
    peak = PeakMemory()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        yield peak
        torch.cuda.synchronize(dev)
        peak.mb = torch.cuda.max_memory_allocated(dev) / 1e6
        return
    before = _reset_rss_peak() if dev.type == "cpu" else None
    yield peak
    if before is not None:
        after = _status_kb("VmHWM")
        peak.mb = None if after is None else max(0.0, (after - before) * 1024 / 1e6)


def _status_kb(field: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _reset_rss_peak() -> int | None:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); the current RSS in kB, or None."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return None
    return _status_kb("VmRSS")
