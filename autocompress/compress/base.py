"""The one interface every compression technique implements, and what a technique declares.

A technique overrides only the hooks it needs; the defaults do nothing. ``run_trial`` calls
them in this order, for the techniques of ``compress.pipeline(policy)``::

    compress(model)          structural change before any training (prune + physical shrink)
    before_finetune(model)   set-up that training sees (QAT observers, feature hooks, pruner)
    loss(...)                every training step: adjust the loss (distillation)
    on_step_end / on_epoch_end   during fine-tuning (gradual pruning steps)
    after_finetune(model)    finish the structure (gradual pruning made physical)
    post_training(model)     change the numeric format (PTQ, QAT convert, fp16/bf16)
    proof()                  what was actually done, measured, for the trial's record

None of them owns the training loop (``autocompress.training.loop.fine_tune`` does).
A technique that cannot apply to the model raises ``TrialFailed(reason)``.

Callers never recognise a technique by its policy strings: they ask its ``Declaration``
(does the structure change during fine-tuning, what number format ships, which devices can
run it) through ``compress.Pipeline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from autocompress.spec.policy import Policy
from autocompress.zoo.data import DataBundle


class TechniqueContext(Protocol):
    """What a technique may read about the trial it runs in (``trial.TrialContext`` has it)."""
    data: DataBundle
    teacher: nn.Module            # the trained baseline; never modified
    device: torch.device          # where fine-tuning runs
    epochs: int
    seed: int
    sensitivity: Any              # the study's sensitivity pass (compress.sensitivity), or None

    @property
    def target_device(self) -> str: ...   # where the deployed model runs

    def example_batch(self, n: int = 2) -> Tensor: ...


@dataclass(frozen=True)
class NumberFormat:
    """The number format a deployed model computes in."""
    name: str                                   # the policy's quantization.mode ("none" = fp32)
    label: str                                  # "fp32", "fp16", "int8 (static)", ...
    integer: bool = False
    per_channel: bool | None = None             # int8: per-channel weight scales
    devices: frozenset[str] | None = None       # device types with kernels for it; None = any
    runtimes: frozenset[str] | None = None      # runtimes that can carry it; None = any
    fast_under: frozenset[str] = frozenset()    # runtimes under which its kernels are fast (empty: any)
    backend: str = ""                           # the library that makes it ("torch.ao", "torchao")

    @property
    def key(self) -> str:
        """What decides whether a runtime can run it (``trial.plan.runtime_key``)."""
        if self.backend == "torchao":
            return f"{self.name}@torchao"
        if not self.integer:
            return self.name
        return f"{self.name}/{'per-channel' if self.per_channel else 'per-tensor'}"

    def unsupported_on(self, device: str) -> str | None:
        kind = torch.device(device).type
        if self.devices is None or kind in self.devices:
            return None
        return (f"{self.label} kernels run on {', '.join(sorted(self.devices))} only; the target device "
                f"is {device}")

    def unsupported_in(self, runtime: str) -> str | None:
        if self.runtimes is None or runtime in self.runtimes:
            return None
        return f"runtime {runtime} cannot carry {self.label} ({self.backend} tensors); it runs in " + \
            ", ".join(sorted(self.runtimes))


FP32 = NumberFormat("none", "fp32")


@dataclass(frozen=True)
class Declaration:
    """What a technique does, declared for the callers that plan around it."""
    label: str                                    # e.g. "gradual pruning", "qat_int8 quantization"
    summary: str                                  # one short phrase for the policy's one-line summary
    structural: bool = False                      # compress() changes the structure (widths)
    structure_final_after_compress: bool = True   # False: the structure still changes while training
    rewrites_graph_before_finetune: bool = False  # the model becomes an FX graph for training (QAT)
    number_format: NumberFormat | None = None     # the deployed format it sets (None: leaves it)
    card_line: str = ""                           # what the model card says it did


@dataclass(frozen=True)
class Pipeline:
    """The techniques a policy turns on, in pipeline order, and what each declares.

    Callers ask it, never the policy's strings: ``compress.pipeline(policy)`` builds it.
    """
    policy: Policy
    classes: tuple[type["Technique"], ...]
    declarations: tuple[Declaration, ...]

    @property
    def structure_final_after_compress(self) -> bool:
        return all(d.structure_final_after_compress for d in self.declarations)

    @property
    def rewrites_graph_before_finetune(self) -> bool:
        return any(d.rewrites_graph_before_finetune for d in self.declarations)

    @property
    def number_format(self) -> NumberFormat:
        formats = [d.number_format for d in self.declarations if d.number_format is not None]
        return formats[-1] if formats else FP32

    @property
    def structural_sections(self) -> tuple[str, ...]:
        """The policy sections whose values decide the compressed structure."""
        return tuple(c.section or c.name for c, d in zip(self.classes, self.declarations) if d.structural)

    def conflict(self) -> str | None:
        """Why these techniques cannot run together (None when they can)."""
        shrinks_late = [d for d in self.declarations if not d.structure_final_after_compress]
        rewrites = [d for d in self.declarations if d.rewrites_graph_before_finetune]
        if shrinks_late and rewrites:
            return (f"{shrinks_late[0].label} cannot be combined with {rewrites[0].label}: its channels are "
                    f"removed after fine-tuning, but {rewrites[0].label} has by then turned the model into an FX "
                    "graph of fused modules that the pruner cannot shrink")
        return None

    def unsupported_on(self, device: str) -> str | None:
        """Why the deployed model cannot run on ``device`` (None when it can)."""
        return self.number_format.unsupported_on(device)

    def build(self, ctx: TechniqueContext) -> list["Technique"]:
        return [cls(self.policy, ctx, self) for cls in self.classes]

    def summary(self) -> list[str]:
        return [d.summary for d in self.declarations if d.summary]


class Technique:
    """A compression technique; ``declare`` says what it does for a policy, the hooks do it."""
    name: ClassVar[str] = "technique"   # its key in the trial's proof
    section: ClassVar[str] = ""         # the policy section it reads, where not its name

    def __init__(self, policy: Policy, ctx: TechniqueContext, pipeline: Pipeline) -> None:
        self.policy = policy
        self.ctx = ctx
        self.pipeline = pipeline   # the other techniques' declarations (e.g. "is QAT coming?")

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        raise NotImplementedError

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
