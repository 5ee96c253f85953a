"""Structured and gradual pruning: channels removed for real, on two engines.

Torch-Pruning first (``coupling``): its dependency graph follows residual adds, concatenations,
shuffles, grouped convolutions, normalisations and custom blocks, and every removal is verified
against zeroing. NNI second (``plan``/``masks``/``engine``), when Torch-Pruning cannot trace the
model or finds nothing it can remove: NNI's FX-based ModelSpeedup handles models Torch-Pruning's
hook tracer cannot. Third, when NNI cannot shrink it either: Torch-Pruning block by block
(``coupling.block_scope``), the channels internal to the blocks it can trace alone. The proof names
the engine and, for Torch-Pruning, every group cut (root, layers resized, channels before and
after) and every group left whole with the reason. A trial fails only when all three find nothing.
On a transformer, ``pruning.hidden_ratio`` first cuts the hidden size (``hidden_width``), verified
its own way since a LayerNorm over it makes removing differ from zeroing.
"""

from __future__ import annotations

import copy
import torch
from torch import nn

from autocompress.compress.pruning.coupling import Cuts, group_masks, plan_groups, shrink_groups
from autocompress.compress.pruning.engine import shrink
from autocompress.compress.pruning.graph import CannotTrace, Scope, block_scope
from autocompress.compress.pruning.hidden_width import prune_hidden
from autocompress.compress.pruning.masks import MaskedWeights, criterion_masks
from autocompress.compress.pruning.plan import channel_sparsity, out_widths, plan_structured, with_norms, zero_fraction
from autocompress.compress.pruning.techniques import PruningBase, pruning_steps, scheduled_ratio
from autocompress.errors import TrialFailed
from autocompress.metrics.size import count_params


def _count(model: nn.Module) -> int:
    return count_params(model)[0]


def _no_engine(nni: TrialFailed, whole: CannotTrace, blocks: CannotTrace) -> TrialFailed:
    """A failure of every engine says why each was not used: a failed trial keeps only its reason
    (no proof), and NNI's alone would hide that Torch-Pruning was tried, on the model and per block."""
    return TrialFailed(f"{nni.reason}; Torch-Pruning could not either: {whole}; nor block by block: {blocks}",
                       known_as=nni.known_as)


class StructuredPruning(PruningBase):
    """One-shot channel pruning, then the channels are removed (Torch-Pruning, else NNI)."""

    def compress(self, model: nn.Module) -> nn.Module:
        example, was_training = self.ctx.example_batch(2), model.training
        model.eval()
        before, params_before = out_widths(model), _count(model)
        hidden = self._hidden(model, example)
        if self.p.ratio <= 0 and self.p.ratio_early <= 0 and self.p.ratio_late <= 0:
            if hidden:   # only the hidden size goes
                self.facts.update(engine="torch-pruning", criterion=self.p.criterion)
                self._record_widths(model, before, params_before)
            else:
                self.facts.update(engine="none", channels_kept={}, sparsity=0.0)   # a ratio of 0: nothing to remove
            model.train(was_training)
            return model
        try:
            done = self._coupled(model, example, Scope.whole(example), fraction=1.0)
            self._record_coupled(done)
        except CannotTrace as whole:
            model = self._fallback(model, example, whole)
        self._record_widths(model, before, params_before)
        model.train(was_training)
        return model

    def _fallback(self, model: nn.Module, example: torch.Tensor, whole: CannotTrace) -> nn.Module:
        """NNI on a copy (a failed ModelSpeedup leaves a half-shrunk model), else Torch-Pruning per block."""
        try:
            shrunk = copy.deepcopy(model)
            self._nni(shrunk, example)
            self.facts["engine_fallback"] = f"Torch-Pruning: {whole}; NNI shrank the model instead"
            return shrunk
        except TrialFailed as nni:
            try:
                scope, untraced = block_scope(model, example)
                done = self._coupled(model, example, scope, fraction=1.0)
            except CannotTrace as blocks:
                raise _no_engine(nni, whole, blocks) from None
            self._record_coupled(done, scope, untraced)
            self.facts["engine_fallback"] = (f"Torch-Pruning: {whole}; NNI: {nni.reason}; Torch-Pruning pruned the "
                                             f"channels internal to {len(scope.blocks)} blocks traced alone instead")
        return model

    def _hidden(self, model: nn.Module, example: torch.Tensor) -> bool:
        """Cut ``hidden_ratio`` of a transformer's hidden size first (before training, and before the
        other groups are planned on the narrower model); whether it did."""
        if self.p.hidden_ratio <= 0:
            return False
        self.facts.update(prune_hidden(model, example, self.p, self.ctx))
        return True

    # -- Torch-Pruning ---------------------------------------------------------------------------
    def _coupled(self, model: nn.Module, example: torch.Tensor, scope: Scope, fraction: float) -> Cuts:
        cuts = plan_groups(model, scope, self.p, self.ctx, fraction)
        done = shrink_groups(model, example, scope, cuts)
        if not done.groups:
            raise CannotTrace("no group of channels can be removed" + (
                f" ({'; '.join(f'{k}: {v}' for k, v in list(done.left_whole.items())[:3])})" if done.left_whole else ""))
        return done

    def _record_coupled(self, done: Cuts, scope: Scope | None = None, untraced: dict[str, str] | None = None) -> None:
        self.facts.update(engine="torch-pruning", criterion=self.p.criterion, protected=list(done.protected),
                          allocation=self.p.allocation,
                          layer_ratios={c.root: round(c.ratio, 4) for c in done.groups},
                          groups={c.root: {"layers": list(c.layers), "channels": [c.width, c.width - len(c.remove)]}
                                  | ({"heads": list(c.heads)} if c.heads else {}) for c in done.groups},
                          heads_kept={c.root.rsplit(".", 1)[0]: list(c.heads) for c in done.groups if c.heads},
                          left_whole=dict(done.left_whole), shrink_verified=True)
        if scope is not None and scope.blocks:
            self.facts.update(blocks=scope.blocks, blocks_untraced=dict(untraced or {}))

    # -- NNI -------------------------------------------------------------------------------------
    def _nni(self, model: nn.Module, example: torch.Tensor) -> None:
        self.plan = plan_structured(model, self.p, example, getattr(self.ctx, "sensitivity", None))
        masks = criterion_masks(model, self.plan.scaled(1.0), self.p.criterion, self.ctx)
        shrink(model, masks, example)
        self.facts.update(engine="nni", criterion=self.p.criterion, protected=list(self.plan.protected),
                          coupled_to_protected=list(self.plan.coupled),
                          layer_ratios={n: round(r, 4) for n, r in self.plan.ratios.items()},
                          allocation=self.p.allocation if self.p.allocation != "global" else
                          "uniform (NNI, the fallback engine, has no global ranking across layers)")

    def _record_widths(self, model: nn.Module, before: dict[str, int], params_before: int) -> None:
        after = out_widths(model)
        changed = {n: [before[n], after[n]] for n in before if after.get(n) != before[n]}
        if not changed:
            raise TrialFailed(f"structured pruning at ratio {self.p.ratio} removed no channel")
        kept = sum(after.get(n, 0) for n in changed)
        total = sum(before[n] for n in changed)
        self.facts.update(channels_kept=changed, sparsity=round(1 - kept / total, 6) if total else 0.0,
                          params_before=params_before, params_after=_count(model),
                          zero_fraction=round(zero_fraction(model, list(changed)), 6))


class GradualPruning(StructuredPruning):
    """Channel sparsity raised at epoch ends on the AGP (or linear) schedule, the channels zeroed
    with the same coupling as structured pruning, then removed (and verified) after fine-tuning."""
    structure_final_after_compress = False   # channels are removed after fine-tuning

    def compress(self, model: nn.Module) -> nn.Module:
        example, was_training = self.ctx.example_batch(2), model.training
        model.eval()
        self.total_steps, self.steps_done = pruning_steps(self.ctx.epochs), 0
        self._hidden(model, example)   # the hidden size goes at once, before fine-tuning
        self.widths = out_widths(model)
        self.cuts, self.masks = Cuts(), {}
        self.scope, self.left_whole = Scope.whole(example), {}
        try:   # fail before training, not after: cut a copy at the target once; what it leaves whole stays so
            self.left_whole = self._coupled(copy.deepcopy(model), example, self.scope, fraction=1.0).left_whole
            self.engine = "torch-pruning"
        except CannotTrace as whole:
            try:
                self.plan = plan_structured(model, self.p, example, getattr(self.ctx, "sensitivity", None))
                shrink(copy.deepcopy(model), criterion_masks(model, self.plan.scaled(1.0), "l1", self.ctx), example)
                self.facts["engine_fallback"] = f"Torch-Pruning: {whole}; NNI shrinks the model instead"
                self.engine = "nni"
            except TrialFailed as nni:
                try:
                    self.scope, untraced = block_scope(model, example)
                    self.left_whole = self._coupled(copy.deepcopy(model), example, self.scope, fraction=1.0).left_whole
                except CannotTrace as blocks:
                    raise _no_engine(nni, whole, blocks) from None
                self.facts.update(engine_fallback=f"Torch-Pruning: {whole}; NNI: {nni.reason}; Torch-Pruning "
                                  f"prunes the channels internal to {len(self.scope.blocks)} blocks traced alone",
                                  blocks=self.scope.blocks, blocks_untraced=untraced)
                self.engine = "torch-pruning"
        model.train(was_training)
        self.facts.update(engine=self.engine, schedule=self.p.schedule, pruning_steps=self.total_steps,
                          sparsity_per_epoch=[], schedule_per_epoch=[])
        return model

    def _prune_to(self, model: nn.Module, step: int) -> None:
        fraction = scheduled_ratio(1.0, step, self.total_steps, self.p.schedule)
        if self.engine == "torch-pruning":
            was_training = model.training
            model.eval()
            scope = self.scope.to(next(model.parameters()).device)
            cuts = plan_groups(model, scope, self.p, self.ctx, fraction)
            self.cuts = Cuts([c for c in cuts.groups if c.root not in self.left_whole],
                             {**cuts.left_whole, **self.left_whole}, cuts.protected)
            self.masks = group_masks(model, scope, self.cuts.groups)
            model.train(was_training)
        else:
            self.masks = with_norms(criterion_masks(model, self.plan.scaled(fraction), self.p.criterion, self.ctx),
                                    self.plan.norms)
        self.masked = MaskedWeights(model, self.masks) if self.masks else None
        if self.masked is not None:
            self.masked.apply(model)
        self.steps_done = step

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        step = epoch + 1
        if step <= self.total_steps:
            self._prune_to(model, step)
        self.facts["schedule_per_epoch"].append(round(scheduled_ratio(self.p.ratio, step, self.total_steps,
                                                                      self.p.schedule), 6))
        self.facts["sparsity_per_epoch"].append(round(self._zeroed(model), 6))

    def _zeroed(self, model: nn.Module) -> float:
        """Fraction of the prunable layers' output channels zeroed now."""
        if self.engine == "nni":
            return channel_sparsity(self.masks, {n: self.widths[n] for n in self.plan.ratios})
        zeroed = sum(len(c.remove) for c in self.cuts.groups)
        total = sum(c.width for c in self.cuts.groups)
        return zeroed / total if total else 0.0

    def after_finetune(self, model: nn.Module) -> nn.Module:
        was_training = model.training
        if self.steps_done < self.total_steps:   # stopped early (or no epochs): finish the schedule now
            self.facts["finished_after_finetune"] = True
            self._prune_to(model, self.total_steps)
        example = self.ctx.example_batch(2)
        model.to("cpu").eval()
        before, params_before = out_widths(model), _count(model)
        with torch.no_grad():
            masked_out = model(example)
        if self.engine == "torch-pruning":
            self._record_coupled(shrink_groups(model, example, self.scope, self.cuts), self.scope)
        else:
            shrink(model, self.masks, example)
        self._record_widths(model, before, params_before)
        with torch.no_grad():   # removing zeroed channels must not change what was fine-tuned
            self.facts["shrink_output_max_diff"] = float((model.eval()(example) - masked_out).abs().max())
        self.masked = None
        model.train(was_training)
        return model

