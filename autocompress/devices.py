"""What accelerators are here: CUDA GPUs, Apple MPS, CPU cores; and how workers share them."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Device:
    name: str            # "cuda:0", "mps", "cpu"
    kind: str            # cuda | mps | cpu
    description: str     # e.g. "NVIDIA H100 80GB HBM3"
    memory_gb: float | None
    cores: int | None = None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def discover() -> list[Device]:
    """Every device torch can run on here, GPUs first, the CPU last."""
    found: list[Device] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(Device(f"cuda:{i}", "cuda", props.name, round(props.total_memory / 2**30, 1)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append(Device("mps", "mps", "Apple Metal (MPS)", None))
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    found.append(Device("cpu", "cpu", cpu_name(), mem, usable_cpus()))
    return found


def why_absent(name: str) -> str | None:
    """Why the device ``name`` (auto, cpu, cuda, cuda:N, mps) is not on this machine; None when
    it is. Asked of the devices this process will use, never of devices named for other machines."""
    kind, _, index = name.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            return "this machine has no CUDA device (see 'autocompress devices')"
        if index and int(index) >= count:
            return f"this machine has {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        return "MPS (Apple Metal) is not available on this machine"
    return None


def assign(workers: int, training_device: str, devices: list[str] | None = None) -> list[tuple[str, int]]:
    """(device, CPU threads) for each of ``workers`` local workers.

    ``devices`` (the study's ``devices:`` list) pins worker i to ``devices[i % len]``. With
    ``auto``, GPUs are shared round-robin (one worker per GPU is the intended use); without
    GPUs every worker trains on the CPU and the cores are split so workers do not fight.
    """
    threads = max(1, usable_cpus() // workers)
    if devices:
        return [(devices[i % len(devices)], threads) for i in range(workers)]
    gpus = [d.name for d in discover() if d.kind == "cuda"]
    if training_device == "auto" and gpus:
        return [(gpus[i % len(gpus)], threads) for i in range(workers)]
    if training_device == "cuda" and gpus:
        return [(gpus[i % len(gpus)], threads) for i in range(workers)]
    dev = "cpu" if training_device == "auto" else training_device
    return [(dev, threads) for _ in range(workers)]
