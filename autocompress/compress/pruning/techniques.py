"""Pruning, made real and measured: ``weight`` (unstructured zeros, here), ``structured``
(channels removed from the model) and ``gradual`` (channel sparsity raised epoch by epoch,
then removed), the latter two in ``structured``. Three separate nouns, as in Torch-Pruning:

* which layers: Conv1d/Conv2d/Linear in module order. The first conv, the last Linear
  (classifier) and the last prunable layer are protected, plus ``protect`` (a name protects
  that module and everything under it). Per-layer ratios (AMC-style): ``ratio_early`` for the
  first half of the prunable layers (the middle one included), ``ratio_late`` for the rest; -1
  means ``ratio`` (``plan.layer_ratios``). Channels that must go together (residual adds,
  concatenations, SE gates, a depthwise conv and its producer, ...) form one group, with the
  ratio of its root layer: Torch-Pruning's dependency graph finds them (``coupling``), NNI's
  dependency groups on a ShapeProp'd FX graph where Torch-Pruning cannot trace (``plan``).
* which weights/channels are least useful: weight magnitude (NNI's LevelPruner, with one exact
  global threshold for ``scope: global``); for channels, L1/L2 magnitude, FPGM or Taylor
  (gradients over training batches), scored per group by Torch-Pruning, or per layer by NNI's
  pruners on the fallback (``masks``).
* how much and when (``scheduled_ratio``, here): one shot, or AGP cubic / linear over the epochs.

``gradual``: with E fine-tuning epochs, masks are recomputed at the end of epochs 1..T with
T = E - 1 (E >= 2; the last epoch trains with the final masks) or T = 1, each layer at
``ratio_layer * f(t/T)``, f = 1 - (1 - t/T)^3 (agp) or t/T (linear); the masks zero every
output that carries a pruned channel (norm scales and shifts included), so the masked model
computes exactly what the shrunk one will (``shrink_output_max_diff`` in the proof measures
it). ``after_finetune`` finishes the schedule if training stopped early, then removes the
channels.

Weight pruning stores zeros densely: ``size_mb`` does not drop, ``size_compressed_mb`` (zlib of
the same file) shows what the zeros save.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autocompress.compress.base import Declaration, Technique
from autocompress.compress.pruning.masks import MaskedWeights, magnitude_masks
from autocompress.compress.pruning.plan import plan_weight, zero_fraction
from autocompress.spec.policy import Policy


# -- how much and when -------------------------------------------------------------------------
def scheduled_ratio(target: float, step: int, total: int, schedule: str = "agp") -> float:
    """Sparsity after ``step`` of ``total`` pruning steps: AGP cubic (Zhu & Gupta, 2017) or linear."""
    t = min(max(step, 0), total) / max(total, 1)
    return target * (1.0 - (1.0 - t) ** 3) if schedule == "agp" else target * t


def pruning_steps(epochs: int) -> int:
    """Epochs whose end raises the sparsity; the last one is left to recover when there are two or more."""
    return max(1, epochs - 1)


# -- the techniques -----------------------------------------------------------------------------
class PruningBase(Technique):
    name = "pruning"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        p = policy.pruning
        what = f"weight {p.scope}" if p.method == "weight" else f"{p.method} {p.criterion}"
        heads = p.head_ratio > 0 and p.method != "weight"
        hidden = f"hidden {p.hidden_ratio:g}" if p.hidden_ratio > 0 and p.method != "weight" else ""
        stages = (p.ratio_stage1, p.ratio_stage2, p.ratio_stage3, p.ratio_stage4)
        per_layer = ("" if p.method == "weight" or p.allocation == "uniform" else f" by {p.allocation}") + (
            " stages " + "/".join("-" if r < 0 else f"{r:.0%}" for r in stages) if any(r >= 0 for r in stages) else "")
        line = (f"pruning: {p.method}, criterion {p.criterion}, ratio {p.ratio:g}"
                + (f", heads {p.head_ratio:g}" if heads else "")
                + (f", {hidden}" if hidden else "")
                + (f", schedule {p.schedule}" if p.method == "gradual" else "")
                + (f", scope {p.scope}" if p.method == "weight" else "") + per_layer.replace(" by ", ", allocation "))
        summary = (f"{what} {p.ratio:.0%}" + (f" heads {p.head_ratio:.0%}" if heads else "")
                   + (f" hidden {p.hidden_ratio:.0%}" if hidden else "") + per_layer)
        return Declaration(label=f"{p.method} pruning", summary=summary, structural=True,
                           structure_final_after_compress=cls.structure_final_after_compress,
                           card_line=line)

    structure_final_after_compress = True

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
        self.p = policy.pruning
        self.masked: MaskedWeights | None = None
        self.facts: dict[str, Any] = {"method": self.p.method, "target_ratio": self.p.ratio}
        if self.p.ratio_early >= 0 or self.p.ratio_late >= 0:
            self.facts["group_ratios"] = {"early": self.p.ratio_early, "late": self.p.ratio_late}

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.masked is not None:
            self.masked.apply(model)

    def proof(self) -> dict[str, Any]:
        return {"pruning": dict(self.facts)}


class WeightPruning(PruningBase):
    """Unstructured magnitude pruning: zeros in place, kept through fine-tuning."""

    def compress(self, model: nn.Module) -> nn.Module:
        self.plan = plan_weight(model, self.p)
        masks = magnitude_masks(model, self.plan, self.p.scope)
        self.masked = MaskedWeights(model, masks)
        self.masked.apply(model)
        self.facts.update(criterion="magnitude", scope=self.p.scope, protected=list(self.plan.protected),
                          layers_pruned=len(masks),
                          sparsity_after_prune=zero_fraction(model, list(self.plan.ratios)),
                          storage="dense tensors with zeros; size_compressed_mb (zlib) shows the saving")
        return model

    def after_finetune(self, model: nn.Module) -> nn.Module:
        if self.masked is not None:
            self.masked.apply(model)
        names = list(self.plan.ratios)
        self.facts["sparsity"] = round(zero_fraction(model, names), 6)
        self.facts["sparsity_per_layer"] = {n: round(zero_fraction(model, [n]), 4) for n in names}
        return model
