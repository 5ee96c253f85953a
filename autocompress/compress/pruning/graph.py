"""Torch-Pruning dependency graphs, of the whole model or of blocks of it traced alone.

Where the whole model cannot be traced (torchvision's ShuffleNet v2: Torch-Pruning's index
mapping of the shuffle's reshape divides by zero), ``block_scope`` finds the largest blocks that
can be, each traced alone on the input it gets inside the model; ``coupling`` then cuts only the
groups internal to a block.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from autocompress.utils import error_line

ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class CannotTrace(Exception):
    """Torch-Pruning cannot build the dependency graph of this model."""


@dataclass(frozen=True)
class Scope:
    """Where dependency graphs are built: {block name: the input it gets in the model}; the whole
    model is the block ``""``."""
    inputs: dict[str, torch.Tensor]

    @classmethod
    def whole(cls, example: torch.Tensor) -> Scope:
        return cls({"": example})

    @property
    def blocks(self) -> list[str]:
        return [b for b in self.inputs if b]

    def to(self, device: torch.device | str) -> Scope:
        return Scope({b: x.to(device) for b, x in self.inputs.items()})

    def graphs(self, model: nn.Module) -> dict[str, tp.DependencyGraph]:
        return {b: dependency_graph(model.get_submodule(b), x) for b, x in self.inputs.items()}


def _full(block: str, name: str) -> str:
    return f"{block}.{name}" if block and name else (block or name)


def block_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """{module name: its input} for the modules called exactly once, with one tensor and nothing else."""
    seen: dict[str, list] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, kwargs, name=n: seen.setdefault(name, []).append(
        args[0].detach() if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor) else None),
        with_kwargs=True) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return {n: xs[0] for n, xs in seen.items() if len(xs) == 1 and xs[0] is not None}


def block_scope(model: nn.Module, example: torch.Tensor) -> tuple[Scope, dict[str, str]]:
    """The largest blocks Torch-Pruning can trace alone, and {block: why not} for the smallest
    ones it cannot (modules without a Conv or Linear are not looked at)."""
    inputs, found, untraced = block_inputs(model, example), {}, {}

    def visit(name: str, module: nn.Module) -> None:
        if not any(isinstance(m, ROOTS) for m in module.modules()):
            return
        if name in inputs:
            try:
                dependency_graph(module, inputs[name])
                found[name] = inputs[name]
                return
            except CannotTrace as exc:
                if not any(True for _ in module.children()):
                    untraced[name] = str(exc)
        elif not any(True for _ in module.children()):
            untraced[name] = "its input is not one tensor, or it is called more than once"
        for child, sub in module.named_children():
            visit(_full(name, child), sub)

    for child, sub in model.named_children():
        visit(child, sub)
    if not found:
        raise CannotTrace("no block of the model can be traced alone either")
    return Scope(found), untraced


def dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:   # noqa: BLE001 - anything its tracer meets
        raise CannotTrace(error_line(exc)) from None
