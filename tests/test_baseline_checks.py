"""The baseline's two checks: stale BatchNorm statistics are re-estimated, and a teacher at chance
stops the study in one line (exit 2), caches nothing, and the same command works once fixed.
MobileNetV3 (BatchNorm momentum 0.01) on a generated 32x32 image folder shows both."""

from __future__ import annotations

import copy
import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.compress.batchnorm import batchnorm_layers
from autocompress.errors import AutocompressError
from autocompress.search.context import study_context
from autocompress.spec.config import spec_from_dict
from autocompress.trial.baseline import (at_chance, chance_level, check_above_chance, fresh_statistics,
                                        stale_gap)
from autocompress.trial.context import TrialContext
from autocompress.zoo.data import make_loader
from autocompress.zoo.models import create_model

runner = CliRunner()


def test_chance_and_staleness_thresholds_follow_the_validation_size():
    assert chance_level(10, 360) == pytest.approx(0.1 + 3 * (0.09 / 360) ** 0.5)   # 0.147
    assert at_chance(0.10, 10, 360) and at_chance(0.14, 10, 360) and not at_chance(0.16, 10, 360)
    assert chance_level(10, 10_000) < 0.11 < chance_level(10, 100)                  # more samples, tighter
    assert not at_chance(0.5, 2, 8)          # 8 samples cannot tell 2 classes from chance: no stop
    assert not at_chance(0.17, 3, 6) and at_chance(0.17, 3, 19)   # the split must tell chance from halfway
    assert not at_chance(0.0, 1, 100)        # one class: no chance level
    assert stale_gap(100) == pytest.approx(0.1) and stale_gap(100_000) == 0.02


def test_the_chance_line_names_the_causes_of_where_the_teacher_came_from(digits_bundle):
    ctx = TrialContext(data=digits_bundle, teacher=nn.Identity(), baseline_metrics={})
    said: list[str] = []
    with pytest.raises(AutocompressError) as err:
        check_above_chance(0.12, ctx, "loading the checkpoint teacher.pt", "batch statistics give 0.11", said.append)
    line = str(err.value)
    assert "\n" not in line and line.startswith("baseline val accuracy 0.12 is at chance for 10 classes")
    assert "a checkpoint trained on other data" in line and "(batch statistics give 0.11)" in line
    check_above_chance(0.5, ctx, "3 epochs", "", said.append)   # well above chance: nothing said
    few = dataclasses.replace(digits_bundle, val=torch.utils.data.Subset(digits_bundle.val, range(3)))
    tiny = TrialContext(data=few, teacher=nn.Identity(), baseline_metrics={})
    check_above_chance(0.0, tiny, "3 epochs", "", said.append)  # 3 samples cannot tell: a warning, no stop
    assert said == ["warning: baseline val accuracy 0.00 is not above chance for 10 classes, but 3 validation "
                    "samples are too few to tell: the study goes on"]


def test_stale_statistics_are_re_estimated_and_fresh_ones_left_alone(digits_bundle):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=0.01), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32, momentum=0.01), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 2e-2)
    for epoch in range(2):   # momentum 0.01: the running statistics lag far behind the weights
        for x, y in make_loader(digits_bundle.train, 32, shuffle=True, seed=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    ctx = TrialContext(data=digits_bundle, teacher=model, baseline_metrics={})
    spec = SimpleNamespace(baseline=SimpleNamespace(batch_size=64), seed=0)
    said: list[str] = []
    stale = copy.deepcopy(model)
    accuracy, note = fresh_statistics(stale, ctx, spec, said.append)
    assert "BatchNorm statistics were stale" in said[0] and "re-estimated over 17 training batches" in said[0]
    assert note.startswith("BatchNorm statistics re-estimated") and accuracy > 0.5
    fresh = copy.deepcopy(stale)
    again, note = fresh_statistics(fresh, ctx, spec, said.append)
    assert len(said) == 1 and again == accuracy and note.startswith("batch statistics give")
    pairs = zip(batchnorm_layers(stale), batchnorm_layers(fresh))
    assert all(torch.equal(a.running_var, b.running_var) for a, b in pairs)


def test_a_baseline_at_chance_stops_in_one_line_and_a_fixed_rerun_works(write_study, tmp_path):
    run_dir = tmp_path / "run"
    untrainable = write_study(baseline={"epochs": 1, "lr": 1e-7})
    result = runner.invoke(app, ["search", str(untrainable), "--out", str(run_dir), "--trials", "1"])
    assert result.exit_code == 2, result.output
    line = next(s for s in result.output.splitlines() if "at chance" in s)
    assert "for 10 classes" in line and "after 1 epoch:" in line and "baseline.epochs, baseline.lr" in line
    assert "Traceback" not in result.output
    assert not (run_dir / "baseline.pt").exists() and not (run_dir / "baseline.json").exists()

    # a baseline at chance cached by an earlier version is not reused either
    torch.manual_seed(0)
    untrained = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8)
    torch.save(untrained.state_dict(), run_dir / "baseline.pt")
    (run_dir / "baseline.json").write_text(json.dumps({"accuracy": 0.1, "latency_ms": 1.0, "size_mb": 0.01}))
    fixed = write_study()
    result = runner.invoke(app, ["search", str(fixed), "--out", str(run_dir), "--trials", "1"])
    assert result.exit_code == 0, result.output
    assert "is at chance (val accuracy 0.10): training it again" in result.output
    assert json.loads((run_dir / "baseline.json").read_text())["accuracy"] > chance_level(10, 360)


def _colored_squares(root, per_class: int) -> None:
    """A real ImageFolder tree of 32x32 PNGs: a red, green or blue square somewhere on gray noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 16), ("test", 8)):
        for name, color in {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = rng.integers(90, 166, (32, 32, 3), dtype=np.uint8)
                x, y = rng.integers(0, 20, 2)
                image[y:y + 12, x:x + 12] = color
                Image.fromarray(image).save(folder / f"{i}.png")


def test_mobilenet_v3_teacher_is_above_chance_or_stops_in_one_line(tmp_path):
    _colored_squares(tmp_path / "images", per_class=40)
    study = {"name": "mbv3", "model": {"torchvision": "mobilenet_v3_small"},
             "data": {"imagefolder": {"root": str(tmp_path / "images"), "image_size": 32}},
             "search_space": {"training": {"lr": {"low": 1e-3, "high": 1e-2}}},
             "objectives": [{"metric": "accuracy", "direction": "maximize"}],
             "budget": {"trials": 1, "epochs": 1}, "baseline": {"epochs": 4, "batch_size": 16, "lr": 3e-3},
             "target": {"device": "cpu", "max_time_s": 0.02}, "device": "cpu", "seed": 0, "candidates": 1}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    said: list[str] = []
    try:
        ctx = study_context(spec_from_dict(study, str(tmp_path / "study.yaml")), baseline_dir=tmp_path / "run",
                            say=said.append)
    except AutocompressError as exc:   # the other acceptable behaviour: one line, nothing cached
        assert "\n" not in str(exc) and "at chance for 3 classes" in str(exc)
        assert not (tmp_path / "run" / "baseline.pt").exists()
        return
    assert ctx.baseline_metrics["accuracy"] > chance_level(3, 48)
    assert any("BatchNorm statistics were stale" in s for s in said), said   # momentum 0.01 left them so
