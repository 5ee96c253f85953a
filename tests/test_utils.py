"""Shared helpers."""

from __future__ import annotations

import torch

from autocompress.utils import device_of, error_line


def test_error_line_is_one_line_with_the_type():
    exc = RuntimeError("shape mismatch:\n  expected [1, 2]\n  got [3]")
    assert error_line(exc) == "RuntimeError: shape mismatch:"
    assert error_line(KeyError()) == "KeyError"
    assert error_line(ValueError("a   b\tc " + "x" * 500), limit=10) == "ValueError: a b c xxxx"


def test_device_of_a_model_with_and_without_parameters():
    assert device_of(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")
