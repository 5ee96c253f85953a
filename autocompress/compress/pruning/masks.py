"""Which weights or channels are least useful: masks from NNI's pruners (LevelPruner for
weight magnitude, L1/L2/FPGM/Taylor for channels), the exact global magnitude threshold, and
the masks kept on the weights through fine-tuning (``MaskedWeights``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from autocompress.compress.base import TechniqueContext
from autocompress.compress.pruning.engine import load_nni, nni_quiet
from autocompress.compress.pruning.plan import Masks, Plan
from autocompress.errors import TrialFailed
from autocompress.zoo.data import make_loader

TAYLOR_BATCHES = 8        # training batches whose gradients estimate Taylor importance
TAYLOR_BATCH_SIZE = 32

def magnitude_masks(model: nn.Module, plan: Plan, scope: str) -> Masks:
    """Unstructured masks from NNI's LevelPruner: ``ratio`` of each layer, or of all layers of a
    ratio group at one global threshold (``scope="global"``)."""
    load_nni()
    from nni.compression.pruning import LevelPruner

    params = dict(model.named_parameters())
    config = []
    groups: dict[float, list[str]] = {}
    for name, ratio in plan.ratios.items():
        if ratio > 0:
            groups.setdefault(ratio, []).append(name)
    for ratio, names in groups.items():
        if scope == "layer":
            config += [{"op_names": [n], "target_names": ["weight"], "sparse_ratio": ratio} for n in names]
            continue
        values = torch.cat([params[f"{n}.weight"].detach().abs().flatten().cpu() for n in names]).sort().values
        k = int(values.numel() * ratio)
        if k == 0:
            continue
        # halfway between the k-th and (k+1)-th smallest |w|: exactly k weights fall below
        threshold = float((values[k - 1] + values[min(k, values.numel() - 1)]) / 2)
        config += [{"op_names": [n], "target_names": ["weight"], "sparse_threshold": threshold} for n in names]
    return _run_pruner(LevelPruner, model, config)


def criterion_masks(model: nn.Module, config: list[dict[str, Any]], criterion: str,
                    ctx: TechniqueContext) -> Masks:
    """Channel masks (whole output channels) from NNI's pruner for ``criterion``."""
    load_nni()
    from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner, TaylorPruner

    if not config:
        return {}
    if criterion == "taylor":
        return _run_pruner(TaylorPruner, model, config, taylor_ctx=ctx)
    cls = {"l1": L1NormPruner, "l2": L2NormPruner, "fpgm": FPGMPruner}[criterion]
    return _run_pruner(cls, model, config)


def _run_pruner(cls: type, model: nn.Module, config: list[dict[str, Any]],
                taylor_ctx: TechniqueContext | None = None) -> Masks:
    """Run an NNI pruner on a copy of ``model``; only its masks come back."""
    if not config:
        return {}
    shadow = copy.deepcopy(model)
    with nni_quiet():
        if taylor_ctx is None:
            pruner = cls(shadow, config)
        else:
            pruner = cls(shadow, config, _taylor_evaluator(shadow, taylor_ctx), training_steps=TAYLOR_BATCHES)
        _, masks = pruner.compress()
        pruner.unwrap_model()
    return {module: {t: m.detach().clone() for t, m in targets.items() if m is not None}
            for module, targets in masks.items()}


def _taylor_evaluator(model: nn.Module, ctx: TechniqueContext):
    import nni
    from nni.compression.utils import TorchEvaluator


    loader = make_loader(ctx.data.train, TAYLOR_BATCH_SIZE, shuffle=True, seed=ctx.seed)
    if len(loader) == 0:
        raise TrialFailed("taylor pruning needs training data to estimate channel importance")
    device = next(model.parameters()).device

    def training_step(batch, model):
        x, y = batch
        return nn.functional.cross_entropy(model(x.to(device)), y.to(device))

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        steps, limit = 0, max_steps or TAYLOR_BATCHES
        while steps < limit:
            for batch in loader:
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()
                steps += 1
                if steps >= limit:
                    return

    # lr=0: the batches only collect gradients, the copy's weights do not move
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)
    return TorchEvaluator(training_func, optimizer, training_step)



class MaskedWeights:
    """Masks bound to parameters. Re-applied by name, so they follow the model through QAT
    preparation (same names, same Parameter objects) and device moves."""

    def __init__(self, model: nn.Module, masks: Masks) -> None:
        params = dict(model.named_parameters())
        self.entries: list[tuple[str, torch.Tensor, nn.Parameter]] = []
        for module, targets in masks.items():
            for target, mask in targets.items():
                name = f"{module}.{target}" if module else target
                self.entries.append((name, mask.bool(), params[name]))

    def apply(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for i, (name, mask, ref) in enumerate(self.entries):
                p = params.get(name)
                if p is None or p.shape != mask.shape:
                    p = ref
                    if p.shape != mask.shape:
                        raise TrialFailed(f"pruning lost track of parameter '{name}' (the model was rebuilt "
                                          "during fine-tuning)")
                if mask.device != p.device:
                    mask = mask.to(p.device)
                    self.entries[i] = (name, mask, ref)
                p.masked_fill_(~mask, 0.0)


