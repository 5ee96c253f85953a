"""Knowledge distillation from the frozen baseline (the teacher) during fine-tuning.

The loss of every training step becomes::

    (1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T) + feature_weight * feature
        + hidden_weight * hidden + attention_weight * attention

``feature`` is the mean squared error between student and teacher feature maps taken by
forward hooks (FitNets-style), with a learned 1x1 projection where pruning changed the
student's width. The default feature layer is the last feature map before global pooling
(or the input of the classifier when there is no pooling module). ``hidden`` is the MSE of
the hidden states of each student transformer layer and its mapped teacher layer
(``compress/hidden.py``); ``attention`` the KL of their head-averaged attention maps
(``compress/attention_kd.py``). The teacher runs once per step for all of them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autocompress.errors import TrialFailed
from autocompress.compress.base import Declaration, Technique
from autocompress.compress.attention_kd import AttentionMaps
from autocompress.compress.hidden import HiddenStates
from autocompress.spec.policy import DistillationPolicy, Policy
from autocompress.utils import device_of


GLOBAL_POOLS = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(teacher_T || student_T), averaged over the batch (Hinton et al., 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=1),
                    F.log_softmax(teacher_logits.float() / t, dim=1),
                    log_target=True, reduction="batchmean") * (t * t)


@dataclass(frozen=True)
class FeatureTap:
    """Where a feature map is read: the output of a named module, or its input."""
    module: str
    side: str = "output"   # "output" | "input"

    def __str__(self) -> str:
        return f"{self.side} of '{self.module}'"


def default_feature_tap(model: nn.Module) -> FeatureTap:
    """The last feature map before the head: the input of the last global pooling module,
    else the input of the last Linear, else the output of the last convolution."""
    pool = linear = conv = None
    for name, m in model.named_modules():
        if isinstance(m, GLOBAL_POOLS):
            pool = name
        elif isinstance(m, nn.Linear):
            linear = name
        elif isinstance(m, CONVS):
            conv = name
    if pool is not None:
        return FeatureTap(pool, "input")
    if linear is not None:
        return FeatureTap(linear, "input")
    if conv is not None:
        return FeatureTap(conv, "output")
    raise TrialFailed("feature distillation: no pooling, Linear or Conv layer to take features "
                      "from; name the layers in distillation.feature_layers")


def _projection(student: Tensor, teacher: Tensor) -> nn.Module | None:
    """A learned map from the student's width to the teacher's, or None when they agree."""
    cs, ct = student.shape[1], teacher.shape[1]
    if cs == ct:
        return None
    if student.dim() == 2:
        return nn.Linear(cs, ct, bias=False)
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}.get(student.dim())
    if conv is None:
        raise TrialFailed(f"feature distillation: cannot project features of shape {tuple(student.shape)}")
    return conv(cs, ct, kernel_size=1, bias=False)


def soft_weight(d: DistillationPolicy) -> float:
    """The soft-target weight in effect (0 unless ``method`` includes soft targets)."""
    return d.alpha if "soft" in d.method else 0.0


def feature_weight(d: DistillationPolicy) -> float:
    """The feature-map loss weight in effect (0 unless ``method`` includes features)."""
    return d.feature_weight if "feature" in d.method else 0.0


def select(policy: Policy) -> type[Technique] | None:
    d = policy.distillation
    on = soft_weight(d) > 0 or feature_weight(d) > 0 or d.hidden_weight > 0 or d.attention_weight > 0
    return Distillation if on else None


class Distillation(Technique):
    name = "distillation"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        d = policy.distillation
        parts = [f"KD a={d.alpha:.2f} T={d.temperature:.1f}"] if soft_weight(d) > 0 else []
        parts += [f"feat-KD w={d.feature_weight:.2f}"] if feature_weight(d) > 0 else []
        parts += [f"hidden-KD w={d.hidden_weight:.2f}"] if d.hidden_weight > 0 else []
        parts += [f"attn-KD w={d.attention_weight:.2f}"] if d.attention_weight > 0 else []
        line = (f"distillation from the baseline: alpha {soft_weight(d):g}, temperature {d.temperature:g}"
                + (f", feature loss weight {feature_weight(d):g}" if feature_weight(d) > 0 else "")
                + (f", hidden-state loss weight {d.hidden_weight:g} per mapped transformer layer"
                   if d.hidden_weight > 0 else ""))
        return Declaration(label="distillation", summary=" + ".join(parts), card_line=line)

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
        self.d = policy.distillation
        self.teacher: nn.Module | None = None
        self.taps: list[FeatureTap] = []
        self.projections = nn.ModuleDict()
        self.hidden: HiddenStates | None = None
        self.attention: AttentionMaps | None = None
        self._hooks: list[Any] = []
        self._student_feats: dict[int, Tensor] = {}
        self._teacher_feats: dict[int, Tensor] = {}
        self._sums: dict[str, Tensor] = {}
        self._steps = 0
        self._last_epoch: dict[str, float] = {}
        self._epoch_means: list[dict[str, float]] = []

    # -- set-up / tear-down ------------------------------------------------------------------
    def before_finetune(self, model: nn.Module) -> nn.Module:
        # A private copy: hooks on it can never leak into the shared teacher if the trial dies.
        self.teacher = copy.deepcopy(self.ctx.teacher).to(self.ctx.device).eval().requires_grad_(False)
        if feature_weight(self.d) > 0:
            self._set_up_features(model)
        if self.d.hidden_weight > 0:
            self.hidden = HiddenStates(model, self.teacher, _pad_id(self.ctx))
            self.hidden.set_up(model, self.teacher, self.ctx.example_batch())
        if self.d.attention_weight > 0:
            self.attention = AttentionMaps(model, self.teacher, _pad_id(self.ctx))
        return model

    def after_finetune(self, model: nn.Module) -> nn.Module:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        if self.hidden is not None:
            self.hidden.remove()   # its layer map stays for the proof
        if self.attention is not None:
            self.attention.remove()   # and the student's own attention implementation is back
        self._student_feats.clear()
        self._teacher_feats.clear()
        self.teacher = None
        return model

    def trainable_modules(self) -> list[nn.Module]:
        extra = [self.hidden.projections] if self.hidden is not None and len(self.hidden.projections) else []
        return ([self.projections] if len(self.projections) else []) + extra

    def _set_up_features(self, student: nn.Module) -> None:
        assert self.teacher is not None
        if self.d.feature_layers:
            self.taps = [FeatureTap(name) for name in self.d.feature_layers]
        else:
            self.taps = [default_feature_tap(self.teacher)]
        s_modules, t_modules = dict(student.named_modules()), dict(self.teacher.named_modules())
        for i, tap in enumerate(self.taps):
            for who, modules in (("student", s_modules), ("teacher", t_modules)):
                if tap.module not in modules:
                    raise TrialFailed(f"feature distillation: no module '{tap.module}' in the {who}")
            self._hooks.append(_register(s_modules[tap.module], tap.side, self._student_feats, i))
            self._hooks.append(_register(t_modules[tap.module], tap.side, self._teacher_feats, i))

        # One forward pass finds the widths; projections bridge where pruning changed them.
        example = self.ctx.example_batch()
        was_training = student.training
        with torch.no_grad():
            student.eval()
            student(example.to(device_of(student)))
            self.teacher(example.to(self.ctx.device))
        student.train(was_training)
        for i, tap in enumerate(self.taps):
            s, t = self._student_feats.get(i), self._teacher_feats.get(i)
            if s is None or t is None:
                raise TrialFailed(f"feature distillation: the {tap} is not called in the forward pass")
            proj = _projection(s, t)
            if proj is not None:
                self.projections[str(i)] = proj.to(self.ctx.device)
        self._student_feats.clear()
        self._teacher_feats.clear()

    # -- every training step -----------------------------------------------------------------
    def loss(self, loss: Tensor, *, inputs: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        assert self.teacher is not None, "before_finetune was not called"
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        total = loss
        parts = {"task_loss": loss.detach()}
        if soft_weight(self.d) > 0:
            kd = soft_target_loss(logits, teacher_logits, self.d.temperature)
            total = (1 - soft_weight(self.d)) * loss + soft_weight(self.d) * kd
            parts["kd_loss"] = kd.detach()
        if feature_weight(self.d) > 0:
            feat = self._feature_loss()
            total = total + feature_weight(self.d) * feat
            parts["feature_loss"] = feat.detach()
        if self.hidden is not None:
            hidden = self.hidden.loss(inputs)
            total = total + self.d.hidden_weight * hidden
            parts["hidden_loss"] = hidden.detach()
        if self.attention is not None:
            attention = self.attention.loss(inputs)
            total = total + self.d.attention_weight * attention
            parts["attention_loss"] = attention.detach()
        parts["total_loss"] = total.detach()
        for key, value in parts.items():
            self._sums[key] = self._sums.get(key, 0) + value.float()
        self._steps += 1
        return total

    def _feature_loss(self) -> Tensor:
        losses = []
        for i, tap in enumerate(self.taps):
            s, t = self._student_feats.pop(i, None), self._teacher_feats.pop(i, None)
            if s is None or t is None:
                # e.g. QAT preparation fused the hooked module away (conv+bn+relu -> one module)
                raise TrialFailed(f"feature distillation: the {tap} no longer runs in the "
                                  "student being trained (fused or replaced); choose another "
                                  "layer in distillation.feature_layers")
            key = str(i)
            if key in self.projections:
                s = self.projections[key](s)
            if s.shape[2:] != t.shape[2:]:
                pool = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}[s.dim()]
                s = pool(s, t.shape[2:])
            losses.append(F.mse_loss(s.float(), t.detach().float()))
        return torch.stack(losses).mean()

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        if self._steps:
            self._last_epoch = {k: round(float(v) / self._steps, 6) for k, v in self._sums.items()}
            self._epoch_means.append(dict(self._last_epoch))
        self._sums, self._steps = {}, 0

    # -- record ------------------------------------------------------------------------------
    def proof(self) -> dict[str, Any]:
        projections = {str(self.taps[int(k)]): f"{type(p).__name__} {_in_width(p)}->{_out_width(p)}"
                       for k, p in self.projections.items()}
        return {"distillation": {
            "method": self.d.method,
            "alpha": soft_weight(self.d),
            "temperature": self.d.temperature if soft_weight(self.d) > 0 else None,
            "feature_weight": feature_weight(self.d),
            "feature_layers": [str(t) for t in self.taps],
            "projections": projections,
            "last_epoch_mean": dict(self._last_epoch),  # measured: task vs distillation losses
            "epoch_means": [dict(e) for e in self._epoch_means],   # the same, every epoch in order
            "hidden_weight": self.d.hidden_weight,
            **(self.hidden.proof() if self.hidden is not None else {}),
            **(self.attention.proof() if self.attention is not None else {}),
        }}


def _register(module: nn.Module, side: str, store: dict[int, Tensor], key: int):
    def keep(value: Any) -> None:
        # Not during evaluation (inference mode) nor FX tracing (a Proxy, not a Tensor):
        # a stale value there would hide a hook that no longer fires in training.
        if isinstance(value, Tensor) and not torch.is_inference_mode_enabled():
            store[key] = value

    if side == "input":
        return module.register_forward_pre_hook(lambda mod, args: keep(args[0] if args else None))
    return module.register_forward_hook(lambda mod, args, output: keep(output))


def _in_width(p: nn.Module) -> int:
    return p.in_features if isinstance(p, nn.Linear) else p.in_channels


def _out_width(p: nn.Module) -> int:
    return p.out_features if isinstance(p, nn.Linear) else p.out_channels


def _pad_id(ctx: Any) -> int | None:
    """The pad id where the inputs are token ids (``zoo.text.TextInfo``), else None."""
    return getattr(getattr(ctx.data, "text", None), "pad_id", None)
