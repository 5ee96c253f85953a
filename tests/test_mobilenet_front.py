"""A torchvision MobileNetV2 on a small generated 32x32 image folder: an 8-trial search over
int8, fp16 and runtimes gives a front of compressed points (int8 at a third of the size, fp16 at
half), and no trial is lost to the small prediction differences between two runtimes' kernels."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.search.record import read_all, study_info
from autocompress.search.results import load_results

CLASSES = ("red", "green", "blue", "yellow")
COLORS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}


def write_image_folder(root, per_class: dict[str, int], seed: int = 0) -> None:
    """``root/<split>/<class>/*.png``: a colored square at a random place on noise."""
    rng = np.random.default_rng(seed)
    for split, n in per_class.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                r, c = rng.integers(0, 20, 2)
                img[r:r + 12, c:c + 12] = COLORS[name]
                Image.fromarray(img).save(folder / f"{i}.png")


@pytest.mark.slow
def test_mobilenet_v2_front_has_compressed_points_and_no_runtime_noise_failures(tmp_path):
    write_image_folder(tmp_path / "images", {"train": 40, "val": 20})
    space = {
        "quantization": {"mode": {"choices": ["none", "static_int8", "fp16"]}},
        "runtime": {"backend": {"choices": ["eager", "torchscript", "onnxruntime"]}},
        "training": {"lr": 0.002, "batch_size": 32},
    }
    study = {
        "name": "mnv2", "model": {"torchvision": "mobilenet_v2", "kwargs": {"width_mult": 0.5}},
        "data": {"imagefolder": {"root": "images", "image_size": 32}},
        "search_space": space,
        "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "size_mb", "direction": "minimize"}],
        "budget": {"trials": 8, "epochs": 1}, "baseline": {"epochs": 6, "lr": 0.003, "batch_size": 32},
        "target": {"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.05},
        "device": "cpu", "sampler": "random", "seed": 0, "early_stopping": "none", "candidates": 1,
        "warm_start": {"recipes": False, "policies": [
            {"quantization": {"mode": "static_int8"}, "runtime": {"backend": "onnxruntime"}},
            {"quantization": {"mode": "fp16"}, "runtime": {"backend": "torchscript"}}]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    result = CliRunner().invoke(app, ["search", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    records = [r for r in read_all(load_results(str(tmp_path / "run")).study) if not r.baseline]
    assert len(records) == 8 and all(r.state.name == "COMPLETE" for r in records), \
        [(r.number, r.fail_reason) for r in records]   # none lost, to runtime agreement or anything else
    converted = [r for r in records if r.proof.get("runtime", {}).get("backend") in ("onnxruntime", "torchscript")]
    assert converted and all(r.metrics["top1_agreement"] is not None for r in converted)
    # each format's effect, measured: int8 weights are a quarter of fp32 (plus scales), fp16 half
    baseline = study_info(load_results(str(tmp_path / "run")).study).baseline_metrics
    for r in records:
        mode = r.policy.quantization.mode
        limit = {"static_int8": 0.35, "fp16": 0.55, "none": 1.01}[mode]
        assert r.metrics["size_mb"] <= limit * baseline["size_mb"], (r.number, mode, r.metrics["size_mb"])
    from autocompress.report.front import pareto_front

    # the front is made of compressed points (the int8 and fp16 ones trade size for accuracy; which
    # of them survive depends on a few images' worth of accuracy, so only their kind is asserted)
    front = [r for r in pareto_front(load_results(str(tmp_path / "run")).study).trials if not r.baseline]
    assert front and all(r.policy.quantization.mode != "none" for r in front), \
        [(r.number, r.policy_summary, r.values) for r in front]
