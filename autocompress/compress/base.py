"""The one interface every compression technique implements.

A technique overrides only the hooks it needs; the defaults do nothing. ``run_trial`` calls
them in this order, for the techniques in ``build_techniques`` order::

    compress(model)          structural change before any training (prune + physical shrink)
    before_finetune(model)   set-up that training sees (QAT observers, feature hooks, pruner)
    loss(...)                every training step: adjust the loss (distillation)
    on_step_end / on_epoch_end   during fine-tuning (gradual pruning steps)
    after_finetune(model)    finish the structure (gradual pruning made physical)
    post_training(model)     change the numeric format (PTQ, QAT convert, fp16/bf16)
    proof()                  what was actually done, measured, for the trial's record

None of them owns the training loop (``autocompress.training.loop.fine_tune`` does).
A technique that cannot apply to the model raises ``TrialFailed(reason)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

if TYPE_CHECKING:
    from autocompress.spec.policy import Policy
    from autocompress.trial.run import TrialContext


class Technique:
    name = "technique"

    def __init__(self, policy: "Policy", ctx: "TrialContext") -> None:
        self.policy = policy
        self.ctx = ctx

    def compress(self, model: nn.Module) -> nn.Module:
        return model

    def before_finetune(self, model: nn.Module) -> nn.Module:
        return model

    def trainable_modules(self) -> list[nn.Module]:
        """Extra modules trained with the student (e.g. feature-distillation projections)."""
        return []

    def loss(self, loss: Tensor, *, inputs: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        return loss

    def on_step_end(self, model: nn.Module, step: int) -> None:
        pass

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        pass

    def after_finetune(self, model: nn.Module) -> nn.Module:
        return model

    def post_training(self, model: nn.Module) -> nn.Module:
        return model

    def proof(self) -> dict[str, Any]:
        return {}
