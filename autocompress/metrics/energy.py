"""Energy per inference: differences of hardware energy counters (``metrics.counters``) over
windows of back-to-back batches, divided by the samples run in them.

A counter moves only when the hardware updates it (RAPL about every millisecond, NVML every
tens of milliseconds); a read between two updates returns the same value again. So a window
starts and ends on an update (a "tick"): inference runs in steps of a few milliseconds, the
counters are read after every step, and

- a window opens at the first tick once inference runs, and closes at the first tick after
  ``MIN_WINDOW_S`` (one that has lasted long enough between two ticks is extended to the next
  one); its samples are those run between its two ticks, so the counter's update period costs
  at most one step of error, not one period;
- each read adds its difference to the previous read, modulo the counter's range where it
  wraps (RAPL's ``max_energy_range_uj``), so a wrap-around between two reads is counted right;
  a counter that runs backwards without a range, or does not advance for ``STALL_S`` of
  inference, is an error (``CounterError``), never a zero.

``WINDOWS`` windows in a row (each one's closing tick opens the next) give the median energy
per sample, its IQR and the number of windows. The energy is the device's whole counter:
idle power and anything else running on the device count too.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from autocompress.metrics.counters import CounterError, EnergyCounter, describe
from autocompress.metrics.latency import batch_of, quantile

MIN_WINDOW_S = 1.0   # several NVML updates per window: the error of one update period is small
WINDOWS = 3          # enough for a median and a spread at ~3 s per measurement
STALL_S = 5.0        # no update for this long while inference runs: the counter is not working
STEP_S = 0.005       # inference between two reads: reading costs ~10 us (sysfs) to ~50 us (NVML)


@dataclass(frozen=True)
class Window:
    """Energy counted between two ticks, and the samples and seconds between them."""
    energy_mj: float
    samples: int
    seconds: float


@dataclass(frozen=True)
class EnergyStats:
    median_mj: float      # per sample
    iqr_mj: float
    windows: int
    samples: int
    seconds: float
    counters: str         # which counters were read


class _Meter:
    """Sums the counters' differences read by read, wrap-around corrected."""

    def __init__(self, counters: Sequence[EnergyCounter]) -> None:
        self.counters = list(counters)
        self.last = [c.read() for c in self.counters]
        self.total_mj = 0.0

    def read(self) -> bool:
        """Read every counter; whether any of them advanced since the last read."""
        ticked = False
        for i, c in enumerate(self.counters):
            value = c.read()
            delta = value - self.last[i]
            if delta < 0:
                if c.range_mj is None:
                    raise CounterError(f"{c.name} went backwards ({self.last[i]:.0f} -> {value:.0f} mJ)")
                delta += c.range_mj
            self.last[i] = value
            self.total_mj += delta
            ticked = ticked or delta > 0
        return ticked


def count_windows(counters: Sequence[EnergyCounter], step: Callable[[], int], *, windows: int = WINDOWS,
                  min_window_s: float = MIN_WINDOW_S, stall_s: float = STALL_S,
                  clock: Callable[[], float] = time.perf_counter) -> list[Window]:
    """``windows`` back-to-back windows from tick to tick, each at least ``min_window_s`` long;
    ``step()`` runs some inference (synchronized) and returns the samples it ran."""
    meter = _Meter(counters)
    last_tick = clock()

    def wait() -> None:
        if clock() - last_tick > stall_s:
            raise CounterError(f"{describe(list(counters))} did not advance in {stall_s:g} s of inference")

    while True:   # open on a tick: what ran before it is not counted
        step()
        if meter.read():
            break
        wait()
    found: list[Window] = []
    start = last_tick = clock()
    start_mj, samples = meter.total_mj, 0
    while len(found) < windows:
        samples += step()
        ticked = meter.read()
        now = clock()
        if not ticked:
            wait()
            continue
        last_tick = now
        if now - start >= min_window_s:
            found.append(Window(meter.total_mj - start_mj, samples, now - start))
            start, start_mj, samples = now, meter.total_mj, 0
    return found


@torch.inference_mode()
def measure_energy(model: nn.Module, example: torch.Tensor, *, counters: Sequence[EnergyCounter],
                   device: str = "cpu", batch_size: int = 1, threads: int = 1) -> EnergyStats:
    """Energy per sample of ``model`` on batches of ``batch_size`` like ``example``: the median
    over ``WINDOWS`` counter windows of at least ``MIN_WINDOW_S`` each, with its IQR."""
    model.eval()
    x = batch_of(example, batch_size).to(device)
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    with _threads(threads):
        for _ in range(3):   # warm-up, as for latency
            model(x)
        sync()
        t0 = time.perf_counter()
        model(x)
        sync()
        n = max(1, round(STEP_S / max(time.perf_counter() - t0, 1e-6)))

        def step() -> int:
            for _ in range(n):
                model(x)
            sync()
            return n * batch_size

        found = count_windows(counters, step, windows=WINDOWS, min_window_s=MIN_WINDOW_S, stall_s=STALL_S)
    per_sample = sorted(w.energy_mj / w.samples for w in found)
    return EnergyStats(median_mj=quantile(per_sample, 0.5),
                       iqr_mj=quantile(per_sample, 0.75) - quantile(per_sample, 0.25), windows=len(found),
                       samples=sum(w.samples for w in found), seconds=sum(w.seconds for w in found),
                       counters=describe(list(counters)))


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``n`` for the block (as ``benchmark.Timer`` does)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
