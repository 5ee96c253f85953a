"""The whole policy at once, in its natural order: prune -> fine-tune with distillation and
dropout -> post-training int8 -> graph runtime -> measure; every effect checked."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from autocompress.compress.quantization import quantized_layers
from autocompress.deploy.agreement import compare_predictions
from autocompress.metrics.accuracy import evaluate, predict
from autocompress.metrics.flops import count_flops
from autocompress.metrics.size import size_mb
from autocompress.spec.policy import (
    DistillationPolicy,
    Policy,
    PruningPolicy,
    QuantizationPolicy,
    RuntimePolicy,
    TrainingPolicy,
)
from autocompress.trial.run import run_trial
from autocompress.zoo.data import make_loader


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
    # the structure is final after compress: the untrained preview already had the final FLOPs and params,
    # and (deployed form previewed: int8 + TorchScript) the final size, up to the archive's debug info and
    # mangled names, which differ by a few hundred bytes between two conversions of the same model
    assert result.preview.deployed
    assert {k: result.preview.metrics[k] for k in ("flops", "params")} == {"flops": m["flops"], "params": m["params"]}
    assert result.preview.metrics["size_mb"] == pytest.approx(m["size_mb"], rel=0.05)
    # distillation measured during fine-tuning, its feature match projected from the pruned width (32 -> 16)
    kd = p["distillation"]["last_epoch_mean"]
    assert set(kd) == {"task_loss", "kd_loss", "feature_loss", "total_loss"}
    assert kd["total_loss"] == pytest.approx(0.5 * kd["task_loss"] + 0.5 * kd["kd_loss"] + 0.5 * kd["feature_loss"],
                                             rel=1e-4)
    assert p["pruning"]["channels_kept"]["14"] == [32, 16]
    assert p["distillation"]["projections"] == {"input of '17'": "Conv2d 16->32"}
    assert result.epochs_run == 1 and [row.epoch for row in result.history] == [1]
    # dropout was active while training and is gone from the deployed model
    assert p["regularization"]["dropout"] == 0.2 and p["regularization"]["dropout_removed"] is True
    assert not any(isinstance(mod, nn.Dropout) for mod in result.model.modules())
    # int8 kernels: the returned model holds the int8 layers the proof lists, no float layer left,
    # and it is far smaller than the fp32 teacher
    layers = quantized_layers(result.model)
    assert layers == p["quantization"]["quantized_layers"] and layers["int8 ConvReLU2d"] == 5
    assert p["quantization"]["float_layers_left"] == 0 and p["quantization"]["weight_dtypes"] == ["torch.qint8"]
    assert m["size_mb"] < 0.35 * size_mb(teacher)
    # the runtime ran it: the size is its archive's, the module measured is the one loaded from
    # those bytes, and the agreement and accuracy recorded are those of that module
    assert p["runtime"]["backend"] == "torchscript" and p["runtime"]["artifact"] == "torchscript archive"
    shipped = result.deployment
    assert m["size_mb"] == p["runtime"]["artifact_size_mb"] == shipped.size_mb
    assert p["runtime"]["artifact_sha256"] == shipped.sha256
    loaded = torch.jit.load(io.BytesIO(shipped.artifact))
    val = make_loader(digits_ctx.data.val, digits_ctx.eval_batch_size, shuffle=False)
    assert torch.equal(predict(loaded, val, "cpu"), predict(shipped.module, val, "cpu"))
    agreement = compare_predictions(predict(result.model, val, "cpu"), predict(shipped.module, val, "cpu"))
    assert {k: p["runtime"][k] for k in ("top1_agreement", "max_abs_diff", "samples")} == \
        {"top1_agreement": agreement.top1_agreement, "max_abs_diff": agreement.max_abs_diff,
         "samples": len(digits_ctx.data.val)}
    assert m["accuracy"] == evaluate(loaded, val, "cpu") and m["top1_agreement"] == agreement.top1_agreement
    assert m["latency_runs"] >= 1 and m["latency_ms"] > 0
    with torch.inference_mode():
        assert result.model(example).shape == (2, 10)
