"""The whole policy at once, in its natural order: prune -> fine-tune with distillation and
dropout -> post-training int8 -> graph runtime -> measure; every effect checked."""

from __future__ import annotations

import torch

from autocompress.metrics.flops import count_flops
from autocompress.metrics.size import size_mb
from autocompress.spec.policy import (DistillationPolicy, Policy, PruningPolicy, QuantizationPolicy, RuntimePolicy,
                                 TrainingPolicy)
from autocompress.trial.run import run_trial


def test_full_combination_on_digits(digits_ctx):
    teacher = digits_ctx.teacher
    example = digits_ctx.example_batch()
    flops_before = count_flops(teacher, example)
    policy = Policy(
        pruning=PruningPolicy(method="structured", criterion="l1", ratio=0.5),
        distillation=DistillationPolicy(method="soft+feature", alpha=0.5, temperature=4.0, feature_weight=0.5),
        quantization=QuantizationPolicy(mode="static_int8", calibration_batches=2),
        training=TrainingPolicy(dropout=0.2, lr=3e-3, schedule="cosine"),
        runtime=RuntimePolicy(backend="torchscript"),
    )
    result = run_trial(policy, digits_ctx, keep_model=True)
    p, m = result.proof, result.metrics

    # structure: channels really removed, FLOPs and params down
    assert p["pruning"]["sparsity"] > 0.4
    assert any(after < before for before, after in p["pruning"]["channels_kept"].values())
    assert m["flops"] < 0.5 * flops_before
    assert m["params"] < 0.5 * sum(q.numel() for q in teacher.parameters())
    # distillation measured during fine-tuning, with a projection-free or projected feature match
    kd = p["distillation"]["last_epoch_mean"]
    assert kd and all(v == v for v in kd.values())  # recorded and finite
    # dropout was active while training and is gone from the deployed model
    assert p["regularization"]["dropout"] == 0.2
    # int8 kernels: quantized conv layers present, model far smaller than the fp32 teacher
    assert any("int8" in k for k in p["quantization"]["quantized_layers"])
    assert m["size_mb"] < 0.35 * size_mb(teacher)
    # the runtime ran it and agreed with eager
    assert p["runtime"]["backend"] == "torchscript" and p["runtime"]["top1_agreement"] >= 0.995
    assert 0.0 <= m["accuracy"] <= 1.0 and m["latency_ms"] > 0
    with torch.inference_mode():
        assert result.model(example).shape == (2, 10)
