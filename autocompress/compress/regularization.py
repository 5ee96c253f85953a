"""Dropout before the classifier during fine-tuning (``training.dropout``).

The classifier is the last ``nn.Linear`` of the model. The technique runs after pruning's
``compress`` (it sees the shrunk model) and is undone in ``after_finetune``, so the deployed
model, its module names, its state dict and its latency are exactly those without dropout.
How the dropout gets in depends on what happens to the model during fine-tuning:

- usually, the classifier is wrapped in place by ``DropoutBefore(dropout, linear)``: both are
  leaf modules, so FX tracing (NNI's shrink, int8 preparation) sees them as usual;
- when the classifier already follows an ``nn.Dropout`` in an ``nn.Sequential`` (torchvision's
  MobileNet, EfficientNet, VGG heads), that dropout's rate is set instead of stacking a second;
- when a later technique traces the model into an FX graph before fine-tuning (QAT declares
  ``rewrites_graph_before_finetune``), it never comes back to eager form, so the dropout is added as a node of an FX graph instead: every module
  keeps its name, and the int8 model's state dict matches that of the same model quantized
  without dropout (``quantization.quantized_skeleton``).

Weight decay lives in the optimizer and label smoothing in the loss (``training.loop``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.compress.base import Declaration, Technique
from autocompress.spec.policy import Policy


FX_DROPOUT_NAME = "classifier_dropout"


class DropoutBefore(nn.Sequential):
    """``linear(dropout(x))``, standing in for the classifier while fine-tuning."""

    def __init__(self, p: float, linear: nn.Linear) -> None:
        super().__init__()
        self.dropout = nn.Dropout(p)
        self.linear = linear


def classifier_name(model: nn.Module) -> str:
    """The qualified name of the last ``nn.Linear`` (registration order)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise TrialFailed("training.dropout > 0 puts dropout before the classifier (the last nn.Linear), "
                          "and this model has no nn.Linear")
    return names[-1]


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


class ClassifierDropout(Technique):
    name = "regularization"
    section = "training"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        return Declaration(label="classifier dropout", summary="")

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
        self.p = policy.training.dropout
        self.facts: dict[str, Any] = {"dropout": self.p}
        self._restore_rate: tuple[nn.Dropout, float] | None = None

    def before_finetune(self, model: nn.Module) -> nn.Module:
        name = classifier_name(model)
        self.facts["dropout_before"] = name
        parent, attr = _parent(model, name)
        if isinstance(parent, nn.Sequential) and attr.isdigit() and int(attr) > 0 \
                and type(parent[int(attr) - 1]) is nn.Dropout:
            existing = parent[int(attr) - 1]
            self._restore_rate = (existing, existing.p)
            self.facts["dropout_how"] = f"rate of the existing dropout set (was {existing.p})"
            existing.p = self.p
            return model
        if self.pipeline.rewrites_graph_before_finetune:  # e.g. QAT traces the model before training
            traced = self._insert_in_graph(model, name)
            if traced is not None:
                return traced
        setattr(parent, attr, DropoutBefore(self.p, getattr(parent, attr)))
        self.facts["dropout_how"] = "inserted for fine-tuning, removed afterwards"
        return model

    def _insert_in_graph(self, model: nn.Module, name: str) -> nn.Module | None:
        try:
            graph_module = torch.fx.symbolic_trace(model)
        except Exception:  # quantization reports the untraceable model with its own reason
            return None
        calls = [n for n in graph_module.graph.nodes if n.op == "call_module" and n.target == name]
        if not calls:
            return None
        graph_module.add_submodule(FX_DROPOUT_NAME, nn.Dropout(self.p))
        for node in calls:
            with graph_module.graph.inserting_before(node):
                dropped = graph_module.graph.call_module(FX_DROPOUT_NAME, (node.args[0],))
            node.args = (dropped, *node.args[1:])
        graph_module.recompile()
        graph_module.train(model.training)
        self.facts["dropout_how"] = f"FX graph node '{FX_DROPOUT_NAME}' (kept through QAT; identity at inference)"
        return graph_module

    def after_finetune(self, model: nn.Module) -> nn.Module:
        if self._restore_rate is not None:
            dropout, rate = self._restore_rate
            dropout.p = rate
            return model
        wrapped = [n for n, m in model.named_modules() if isinstance(m, DropoutBefore)]
        for name in wrapped:
            parent, attr = _parent(model, name)
            setattr(parent, attr, getattr(parent, attr).linear)
        if wrapped:
            self.facts["dropout_removed"] = True
        return model

    def proof(self) -> dict[str, Any]:
        return {"regularization": dict(self.facts)}


def select(policy: Policy) -> type[Technique] | None:
    return ClassifierDropout if policy.training.dropout > 0 else None
