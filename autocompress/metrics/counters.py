"""Hardware energy counters: what ``energy_mj`` is a difference of.

A counter is anything with a ``name``, a ``read()`` of the energy it has counted so far in
millijoules, and the ``range_mj`` at which it wraps back to zero (None: it never wraps in a
machine's lifetime). Two kinds exist:

- CPU: Intel/AMD RAPL package zones under ``/sys/class/powercap`` (``intel-rapl:N/energy_uj``,
  wrapping at ``max_energy_range_uj``). A package counts the whole CPU package, whatever else
  runs on it, idle power included; its sub-zones (core, uncore, dram) and ``psys`` overlap the
  packages and are not read. Recent kernels make ``energy_uj`` readable by root only.
- CUDA: NVML's total-energy counter of the board (``nvmlDeviceGetTotalEnergyConsumption``, mJ
  since the driver loaded; Volta and newer), through nvidia-ml-py (the ``gpu`` extra), imported
  only here and only for a CUDA target.

``open_counters(device)`` gives a device's counters or raises ``CounterError`` saying why there
are none; ``energy_unavailable(device)`` is that reason, for validation (the metric registry).
Nothing here derives energy from power limits, power samples or utilisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

POWERCAP = Path("/sys/class/powercap")
_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")


class CounterError(Exception):
    """No energy counter can be read, or one misbehaves (stalls, runs backwards)."""


class EnergyCounter(Protocol):
    name: str
    range_mj: float | None

    def read(self) -> float:
        """Energy counted so far, millijoules (monotonic up to wrap-around)."""
        ...


@dataclass(frozen=True)
class RaplCounter:
    """One RAPL package zone, read from sysfs (microjoules there)."""
    zone: Path
    name: str
    range_mj: float

    def read(self) -> float:
        return int(_text(self.zone / "energy_uj")) / 1e3


@dataclass(frozen=True)
class NvmlCounter:
    """One NVIDIA board's total-energy counter (millijoules, 64 bits: it does not wrap)."""
    name: str
    reader: Callable[[], int]
    range_mj: float | None = None

    def read(self) -> float:
        return float(self.reader())


def open_counters(device: str | torch.device) -> list[EnergyCounter]:
    """The energy counters that cover ``device`` (each one read once, so it is readable)."""
    kind = torch.device(device).type
    counters: list[EnergyCounter]
    if kind == "cpu":
        counters = _rapl_counters()
    elif kind == "cuda":
        counters = [_nvml_counter(torch.device(device))]
    else:
        raise CounterError(f"energy is measured on CUDA (NVML) and CPU (RAPL) targets only, not {kind}")
    for c in counters:
        try:
            c.read()
        except Exception as exc:  # noqa: BLE001 - any failure to read means: no counter here
            raise CounterError(f"{c.name} cannot be read ({_why(exc)})") from None
    return counters


def energy_unavailable(device: str) -> str | None:
    """Why this machine has no energy counter for ``device`` (None: it has one)."""
    try:
        open_counters(device)
    except CounterError as exc:
        return str(exc)
    return None


def describe(counters: list[EnergyCounter]) -> str:
    return ", ".join(c.name for c in counters)


def _rapl_counters() -> list[EnergyCounter]:
    zones = sorted(p for p in POWERCAP.glob("intel-rapl:*") if _PACKAGE_ZONE.fullmatch(p.name)) \
        if POWERCAP.is_dir() else []
    counters: list[EnergyCounter] = []
    for zone in zones:
        try:
            name = _text(zone / "name")
            if name.startswith("package"):
                counters.append(RaplCounter(zone, f"RAPL {name}", int(_text(zone / "max_energy_range_uj")) / 1e3))
        except (OSError, ValueError) as exc:
            raise CounterError(f"RAPL zone {zone} cannot be read ({_why(exc)})") from None
    if not counters:
        raise CounterError(f"this machine has no RAPL package zone under {POWERCAP} "
                           f"(intel-rapl:N/energy_uj), so CPU energy cannot be measured")
    return counters


def _nvml_counter(device: torch.device) -> NvmlCounter:
    try:
        import pynvml  # nvidia-ml-py, the ``gpu`` extra; needed only for CUDA energy
    except ImportError:
        raise CounterError("CUDA energy is read through NVML and nvidia-ml-py is not installed "
                           "(pip install 'autocompress[gpu]')") from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise CounterError(f"NVML does not start ({_why(exc)}), so GPU energy cannot be read") from None
    try:
        handle = _nvml_handle(pynvml, device)
        name = pynvml.nvmlDeviceGetName(handle)
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except (pynvml.NVMLError, RuntimeError, AssertionError) as exc:
        raise CounterError(f"NVML has no total-energy counter for {device} ({_why(exc)}; it needs a Volta "
                           f"or newer GPU and its driver)") from None
    return NvmlCounter(f"NVML total energy of {name}",
                       lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle))


def _nvml_handle(pynvml, device: torch.device):
    """NVML's handle for the torch device: matched by UUID (CUDA's order and
    CUDA_VISIBLE_DEVICES differ from NVML's), by index where torch gives no UUID."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")


def _text(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()


def _why(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
