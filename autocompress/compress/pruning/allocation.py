"""How much each layer loses: the ratio per layer (uniform, AMC-style halves, stage quarters,
spread by the study's sensitivity pass) and, for ``pruning.allocation: global``, the channel
count per coupled group from one ranking across groups."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autocompress.compress.groups import layer_groups, stages
from autocompress.compress.sensitivity import sensitivity_ratios
from autocompress.errors import TrialFailed
from autocompress.spec.policy import PruningPolicy


def layer_ratios(targets: list[str], p: PruningPolicy, model: nn.Module | None = None,
                 sensitivity: Any = None) -> dict[str, float]:
    """AMC-style groups: ``ratio_early`` for the first half (middle included), ``ratio_late`` after;
    with ``model``, ``ratio_stage1..4`` for the quarters of its layer groups and, for
    ``allocation: sensitivity``, the ratios spread by the study's sensitivity pass."""
    early = p.ratio_early if p.ratio_early >= 0 else p.ratio
    late = p.ratio_late if p.ratio_late >= 0 else p.ratio
    split = (len(targets) + 1) // 2
    ratios = {n: float(early if i < split else late) for i, n in enumerate(targets)}
    if model is None:
        return ratios
    groups = layer_groups(model)
    by_stage = (p.ratio_stage1, p.ratio_stage2, p.ratio_stage3, p.ratio_stage4)
    if any(r >= 0 for r in by_stage):
        for n, stage in stages(groups, set(targets)).items():
            if by_stage[stage - 1] >= 0:
                ratios[n] = float(by_stage[stage - 1])
    if p.allocation == "sensitivity" and p.method != "weight":
        if sensitivity is None:
            raise TrialFailed("pruning.allocation sensitivity needs the study's sensitivity pass, which this run "
                              "does not have")
        modules = dict(model.named_modules())
        weights = {n: int(modules[n].weight.numel()) for n in ratios}
        ratios = sensitivity_ratios(ratios, weights, groups, sensitivity)
    return ratios


def global_counts(scored: list, ratio: float) -> dict[str, int]:
    """``pruning.allocation: global``: one ranking of channels across groups (each group's scores
    divided by their mean, as Torch-Pruning's global pruning does), cut at the threshold that
    removes ``ratio`` of all their channels; every group keeps at least one channel."""
    plain = [(root, width, scores / scores.mean().clamp(min=1e-12)) for root, _, width, _, scores, att, _ in scored
             if att is None]
    if not plain:
        return {}
    everything = torch.cat([s for _, _, s in plain])
    n_total = int(everything.numel() * ratio)
    if n_total <= 0:
        return {root: 0 for root, _, _ in plain}
    threshold = torch.kthvalue(everything, n_total).values
    return {root: min(width - 1, int((s <= threshold).sum())) for root, width, s in plain}
