"""Measured metrics of a model: accuracy, latency, size, FLOPs, params.

``METRICS`` names every metric an objective or constraint may use, with its unit.
"""

from __future__ import annotations

METRICS: dict[str, str] = {
    "accuracy": "fraction of the validation split classified correctly",
    "accuracy_drop": "baseline validation accuracy minus this model's",
    "test_accuracy": "fraction of the test split classified correctly",
    "throughput_sps": "samples per second at target.throughput_batch_size on the target device",
    "latency_ms": "median latency of one batch on the target device, milliseconds",
    "peak_memory_mb": "peak memory of inference on the target device, MB: CUDA max allocated "
                      "(weights included); CPU growth of the process's peak RSS (a lower bound)",
    "size_mb": "serialized model, megabytes (10^6 bytes): the runtime's artifact (TorchScript "
               "archive, ONNX model) where it has one, else the state dict",
    "size_compressed_mb": "serialized state dict after zlib compression (zeros compress), MB",
    "flops": "floating-point operations of one sample's forward pass",
    "params": "parameters stored in the model (pruned-away channels are gone, zeros count)",
    "nonzero_params": "parameters that are not zero",
}
