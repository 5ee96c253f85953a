"""Does a deployed artifact compute what the eager model computes? Its logits against the
eager model's, on the same validation inputs.

Two runtimes' int8 or fp16 kernels legitimately round differently, and in a deep network the
differences compound. Measured on a MobileNetV2 (10 classes, 32x32, static int8, x86):
ONNX Runtime agreed with the torch.ao int8 model on 87.5% of the validation samples (top-1),
yet it was as close to the float model as torch.ao's own int8 kernels were (89% against
90.5% top-1 agreement with fp32). The cause is not a broken export: the exported graph
quantizes each convolution's bias to int32 at the input scale times the weight scale (the
ONNX standard) where fbgemm keeps a float bias, so an output near a rounding boundary moves
by one quantization step now and then. With ONNX Runtime's graph optimizations switched off
the predictions are the same (the difference is in the graph, not in ORT's fused kernels); a
single quantized convolution without bias matches torch.ao's reference int8 model exactly,
one with a bias differs from it by one output quantization step at some elements. Over some
fifty layers those single steps add up to logits that differ by a few units. An fp16 TorchScript graph (BatchNorm folded into the convolution in fp16) flipped
one of 200 predictions, a near tie.

So the trial records the top-1 agreement (the metric ``top1_agreement``), Cohen's kappa of the
two prediction vectors (0: the agreement of two unrelated classifiers with the same class
frequencies; 1: identical predictions) and both models' validation accuracy, and fails only
when the predictions agree little more than chance (kappa below ``MIN_KAPPA``) *and* the
artifact's accuracy is clearly below the eager model's (by more than three standard errors of
the difference, on the validation split's size). A missing operator, a wrong layout or a
dropped normalisation does both; the rounding differences above did neither (kappa 0.86,
accuracy 0.555 against 0.57). Kappa alone is not enough: a barely trained model's logits are
nearly tied, and there two runtimes' rounding flips many predictions (kappa 0.37 measured on a
MobileNetV2 after a few epochs on 160 images) without costing accuracy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from autocompress.errors import TrialFailed

MIN_KAPPA = 0.5   # half-way between chance and identical predictions
ACCURACY_SIGMAS = 3.0


@dataclass(frozen=True)
class Agreement:
    """How far an artifact's predictions are from the eager model's on the same inputs."""
    top1_agreement: float
    kappa: float               # Cohen's kappa of the two top-1 prediction vectors
    max_abs_diff: float        # largest |logit difference|
    samples: int
    eager_accuracy: float | None = None      # on the same samples, when labels are given
    artifact_accuracy: float | None = None

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def fault(self) -> str | None:
        """Why these predictions show a broken conversion, or None."""
        if self.kappa >= MIN_KAPPA or self.eager_accuracy is None or self.artifact_accuracy is None:
            return None
        p, n = self.eager_accuracy, max(1, self.samples)
        margin = ACCURACY_SIGMAS * math.sqrt(2 * p * (1 - p) / n)
        if self.eager_accuracy - self.artifact_accuracy <= margin:
            return None
        return (f"the runtime changes what the model computes: its predictions agree with the eager model's "
                f"little more than chance (top-1 agreement {self.top1_agreement:.1%}, Cohen's kappa "
                f"{self.kappa:.2f} < {MIN_KAPPA}) and its validation accuracy is {self.artifact_accuracy:.3f} against "
                f"the eager model's {self.eager_accuracy:.3f} on {self.samples} samples")


def compare_predictions(reference: torch.Tensor, candidate: torch.Tensor,
                        labels: torch.Tensor | None = None) -> Agreement:
    """Compare an artifact's logits with the eager model's on the same inputs (same order),
    and both with the ``labels`` when given. Raises ``TrialFailed`` for a different output
    shape or non-finite logits."""
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    if reference.shape != candidate.shape:
        raise TrialFailed(f"runtime output shape {tuple(candidate.shape)} differs from eager "
                          f"{tuple(reference.shape)}")
    if not torch.isfinite(candidate).all():
        raise TrialFailed("runtime produced non-finite logits")
    n = reference.shape[0]
    if n == 0:
        return Agreement(1.0, 1.0, 0.0, 0)
    a, b = reference.argmax(1), candidate.argmax(1)
    accuracies = {}
    if labels is not None:
        labels = labels.cpu()
        accuracies = {"eager_accuracy": (a == labels).float().mean().item(),
                      "artifact_accuracy": (b == labels).float().mean().item()}
    return Agreement((a == b).float().mean().item(), cohen_kappa(a, b, reference.shape[1]),
                     (reference - candidate).abs().max().item(), n, **accuracies)


def cohen_kappa(a: torch.Tensor, b: torch.Tensor, classes: int) -> float:
    """(observed - chance) / (1 - chance), chance from each side's class frequencies; 1 when
    both always predict the same single class."""
    observed = (a == b).float().mean().item()
    pa = torch.bincount(a, minlength=classes).float() / a.numel()
    pb = torch.bincount(b, minlength=classes).float() / b.numel()
    chance = float((pa * pb).sum())
    if chance >= 1.0:
        return 1.0 if observed >= 1.0 else 0.0
    return (observed - chance) / (1.0 - chance)


def check_predictions(reference: torch.Tensor, candidate: torch.Tensor,
                      labels: torch.Tensor | None = None) -> Agreement:
    """``compare_predictions``, failing the trial when the agreement shows a broken conversion."""
    agreement = compare_predictions(reference, candidate, labels)
    if (reason := agreement.fault()) is not None:
        raise TrialFailed(reason)
    return agreement
