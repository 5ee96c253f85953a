"""Structured pruning on networks written the way users write them (``benchmarks/user_networks.py``:
residual 2D and 1D blocks, Inception/DenseNet concatenations, depthwise-separable convolutions,
squeeze-excitation, ShuffleNet v2 and v1 units, a ConvNeXt block, a transformer encoder), and on
torchvision's shufflenet_v2_x0_5, convnext_tiny and googlenet.

For each user network, at two ratios: channels physically removed, params and FLOPs down, the shrunk
model runs, and it computes what the original computes with exactly the removed channels zeroed,
checked here without the engine's help (``removed_channels``, ``zeroed_outputs``); then a 3-trial study
through the CLI. A family neither engine can prune (``CANNOT_PRUNE``) must end its trials with both
engines' reasons.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.errors import TrialFailed
from autocompress.metrics.flops import count_flops
from autocompress.metrics.size import count_params
from autocompress.search import record
from autocompress.spec.policy import Policy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.zoo.models import torchvision_model
from test_pruning import build, pruning, random_ctx

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:   # the zoo is shared with benchmarks/structured_families.py
    sys.path.insert(0, str(BENCHMARKS))

from user_networks import ZOO, TinyViT  # noqa: E402

# Families neither engine can prune, and a word each failure reason must hold. ShuffleNet v1 units:
# grouped 1x1 convolutions (groups=4) with a channel shuffle between them; removing channels leaves
# a grouped convolution with unequal groups (Torch-Pruning), and NNI refuses unbalanced groups.
CANNOT_PRUNE = {"shuffle_grouped": "groups"}
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)
CHANNEL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, *NORMS)
CLASSES = 3


def zoo_model(family: str) -> tuple[nn.Module, tuple[int, ...]]:
    fn, shape = ZOO[family]
    torch.manual_seed(0)
    return with_norm_statistics(fn(num_classes=CLASSES, in_channels=shape[0]), shape), shape


def with_norm_statistics(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Norm layers away from their identity init, as after training: random scales and shifts, and
    BatchNorm statistics measured on random inputs. With the init (scale 1, shift 0, statistics 0
    and 1) a norm maps a zeroed channel to zero whether or not its own entries were removed, which
    would hide a norm the engine forgot; real statistics keep channels alive (a channel ReLU zeroes
    everywhere would hide a wrong cut), and random values make each channel's entries unique."""
    g = torch.Generator().manual_seed(1)
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None   # a cumulative average over the batch below
                m.reset_running_stats()
        model.train()(torch.randn(64, *shape, generator=g))
    for m in norms:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model.eval()


# -- the check, independent of the engine --------------------------------------------------------------
# The engine verifies its own cuts against its own masks (coupling.group_masks, from the same
# dependency graph that made the cut): a graph that maps a channel wrongly would make both wrong
# alike. Here nothing of the engine is reused: the reference is the untouched original model; which
# channels went is read off the weights themselves (each row of the shrunk layer is found among the
# original's rows by value), not off the engine's indices or the proof; and the channels are zeroed
# on the activations (forward hooks), not by masks on weights. Norm layers get random scales and
# real statistics first, so that a norm whose entries were not removed with its channel shows.
def _rows(m: nn.Module) -> torch.Tensor:
    """One row per output channel: the values that belong to that channel alone."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return torch.stack([m.weight, m.bias, m.running_mean, m.running_var], 1).detach()
    if isinstance(m, nn.LayerNorm):
        return torch.stack([m.weight, m.bias], 1).detach()
    return m.weight.detach().flatten(1)


def surviving(before: nn.Module, after: nn.Module) -> list[int]:
    """Which output channels of ``before`` are the rows of ``after``, found by value: a kept channel
    keeps its values (a subset of them where input channels went too), and with random weights a
    value points to one row. A row made of values the original does not hold fails here."""
    index: dict[float, int] = {}
    for i, row in enumerate(_rows(before).tolist()):
        for v in row:
            index[v] = i if index.get(v, i) == i else -1   # -1: a value in two rows tells nothing
    kept = []
    for row in _rows(after).tolist():
        sources = {index.get(v, -2) for v in row} - {-1}
        assert len(sources) == 1 and -2 not in sources, f"a row that is no original channel: {sources}"
        kept.append(sources.pop())
    return kept


def removed_channels(original: nn.Module, shrunk: nn.Module) -> dict[str, list[int]]:
    """{layer: output channels of ``original`` that ``shrunk`` no longer has}, for every Conv, Linear
    and norm layer that lost some."""
    after = dict(shrunk.named_modules())
    out = {}
    for name, m in original.named_modules():
        if isinstance(m, CHANNEL_LAYERS) and name in after and len(_rows(after[name])) < len(_rows(m)):
            out[name] = sorted(set(range(len(_rows(m)))) - set(surviving(m, after[name])))
    return out


def zeroed_outputs(original: nn.Module, removed: dict[str, list[int]], x: torch.Tensor) -> torch.Tensor:
    """``original``'s eval outputs with the ``removed`` channels of each layer's output set to zero
    (forward hooks on the activations, not masks on weights: nothing of the engine is reused)."""
    modules, hooks = dict(original.named_modules()), []
    for name, idx in removed.items():
        dim = -1 if isinstance(modules[name], (nn.Linear, nn.LayerNorm)) else 1   # Linear/LN: features last

        def zero(module, inputs, out, idx=torch.tensor(idx), dim=dim):
            return out.index_fill(dim, idx, 0.0)
        hooks.append(modules[name].register_forward_hook(zero))
    try:
        with torch.no_grad():
            return original.eval()(x)
    finally:
        for h in hooks:
            h.remove()


def assert_same(out: torch.Tensor, reference: torch.Tensor) -> None:
    assert out.shape == reference.shape
    assert float((out - reference).abs().max()) <= 1e-5 * float(reference.abs().max())


# -- technique level -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.3, 0.7])
@pytest.mark.parametrize("family", list(ZOO))
def test_structured_removes_channels_and_the_shrunk_model_equals_zeroing_them(family, ratio):
    model, shape = zoo_model(family)
    original = copy.deepcopy(model).eval()
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(2))
    technique = build(pruning(method="structured", ratio=ratio), random_ctx(model, shape, classes=CLASSES))
    if family in CANNOT_PRUNE:
        with pytest.raises(TrialFailed, match=CANNOT_PRUNE[family]) as failed:
            technique.compress(model)
        assert "NNI" in failed.value.reason and "Torch-Pruning could not either" in failed.value.reason
        assert "nor block by block" in failed.value.reason
        return
    shrunk = technique.compress(model)
    assert count_params(shrunk)[0] < count_params(original)[0] and count_flops(shrunk, x) < count_flops(original, x)
    with torch.no_grad():
        copy.deepcopy(shrunk).train()(x)   # fine-tuning runs it in train mode (which moves BatchNorm statistics)
    facts = technique.proof()["pruning"]
    removed = removed_channels(original, shrunk)
    assert removed
    # the proof's widths are the ones found by value, layer for layer
    layers = dict(original.named_modules())
    assert facts["channels_kept"] == {n: [len(_rows(layers[n])), len(_rows(layers[n])) - len(idx)]
                                      for n, idx in removed.items() if not isinstance(layers[n], NORMS)}
    assert facts["params_after"] == count_params(shrunk)[0] < facts["params_before"]
    # the claim itself: removing those channels is zeroing them
    with torch.no_grad():
        out = shrunk.eval()(x)
    assert_same(out, zeroed_outputs(original, removed, x))


# What each family leaves whole, and the word its reason must hold (at ratio 0.3).
LEFT_WHOLE = {
    "resnet2d": {"stage1.1.f.2.0": "tied to the protected layer stem.0.0"},   # the stem's residual stream
    "resnet1d_gelu": {"blocks.3.conv2.0": "tied to the protected layer stem.0"},
    "concat": {},
    "separable": {"2.depthwise.0.0": "tied to the protected layer 0.0"},   # depthwise on the stem's channels
    "squeeze_excite": {},
    # the stream after the stride-2 unit goes through a concatenation, a shuffle and a split again:
    # Torch-Pruning maps its channel indices past a layer's width
    "channel_shuffle": {"units.0.right.3.0": "tied to the protected layer stem.0.0",
                        "units.2.right.3.0": "cannot score its channels (IndexError"},
    "convnext_block": {"blocks.1.pwconv2": "tied to the protected layer stem"},
    # the embedding width: 4 heads must divide it (32 - 9 channels); where they do (ratio 0.5: 16
    # channels), the LayerNorms over it make removing differ from zeroing, and it stays whole too
    "transformer": {"encoder.layers.1.linear2": "num_heads"},
}


@pytest.mark.parametrize("family", list(LEFT_WHOLE))
def test_groups_left_whole_say_why(family):
    model, shape = zoo_model(family)
    technique = build(pruning(method="structured", ratio=0.3), random_ctx(model, shape, classes=CLASSES))
    technique.compress(model)
    facts = technique.proof()["pruning"]
    assert facts["engine"] == "torch-pruning" and "engine_fallback" not in facts
    assert set(facts["left_whole"]) == set(LEFT_WHOLE[family])
    for root, word in LEFT_WHOLE[family].items():
        assert word in facts["left_whole"][root]


def test_the_independent_check_sees_a_wrong_channel():
    """Not vacuous: zeroing one kept channel instead of a removed one gives other outputs."""
    model, shape = zoo_model("resnet2d")
    original = copy.deepcopy(model).eval()
    shrunk = build(pruning(method="structured", ratio=0.5), random_ctx(model, shape, classes=CLASSES)).compress(model)
    removed = removed_channels(original, shrunk)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        out = shrunk.eval()(x)
    assert_same(out, zeroed_outputs(original, removed, x))
    conv, norm = "stage1.0.f.0.0", "stage1.0.f.0.1"   # a conv and its BatchNorm: one channel swapped in both
    kept = next(i for i in range(16) if i not in removed[conv])
    removed[conv] = removed[norm] = [kept, *removed[conv][1:]]
    with pytest.raises(AssertionError):
        assert_same(out, zeroed_outputs(original, removed, x))


def test_count_flops_counts_a_transformer_encoder():
    """In eval mode under no_grad nn.TransformerEncoderLayer runs one fused op that FlopCounterMode
    does not count; count_flops turns that path off. Two layers of width 32 over 16 tokens: at
    least the four projections and two FFN matmuls per token and layer."""
    model, x = TinyViT(num_classes=CLASSES, in_channels=1), torch.randn(2, 1, 16, 16)
    per_layer = 16 * 2 * (4 * 32 * 32 + 2 * 32 * 64)
    assert count_flops(model, x) >= 2 * per_layer
    assert torch.backends.mha.get_fastpath_enabled()   # put back


# -- a study per family, through the CLI --------------------------------------------------------------
@pytest.mark.parametrize("family", list(ZOO))
def test_a_three_trial_study_prunes_each_family(write_study, tmp_path, family):
    """Labels a simple function of the inputs (``user_networks.learnable``), so a 3-epoch baseline is
    far above chance (0.97-1.0 on 64 val samples; chance is at most 0.51 there, and a baseline at
    chance would stop the study); 3 structured trials at ratio 0.3 or 0.7, each fine-tuned one epoch."""
    study = write_study(
        name=family, model={"factory": "user_networks:build", "kwargs": {"family": family}},
        data={"factory": "user_networks:data", "kwargs": {"family": family, "classes": CLASSES}},
        search_space={"pruning": {"method": "structured", "ratio": {"choices": [0.3, 0.7]}}},
        objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "params", "direction": "minimize"}],
        constraints=[], budget={"trials": 3, "epochs": 1}, baseline={"epochs": 3, "lr": 0.01},
        target={"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.01})   # latency is not the point
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    storage = f"sqlite:///{tmp_path / 'run' / 'study.db'}"
    trials = [r for r in record.read_all(optuna.load_study(study_name=family, storage=storage)) if not r.baseline]
    assert len(trials) == 3
    if family in CANNOT_PRUNE:
        assert all(r.state.name == "FAIL" and "Torch-Pruning could not either" in r.fail_reason for r in trials)
        return
    pruned = [r for r in trials if r.state.name == "COMPLETE" and r.proof["pruning"]["channels_kept"]]
    assert len(pruned) >= 2, [(r.state.name, r.fail_reason) for r in trials]
    assert all(r.metrics["params"] < r.proof["pruning"]["params_before"] for r in pruned)


# -- torchvision ------------------------------------------------------------------------------------------
def _torchvision(name: str) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = torchvision_model(name, num_classes=10, in_channels=3)
    return model, build(pruning(method="structured", ratio=0.5), random_ctx(model, (3, 32, 32)))


def test_torchvision_shufflenet_v2_shrinks_block_by_block():
    """Torch-Pruning 1.6.1 cannot build the whole model's graph (a division by zero in its index
    mapping of a reshape), and NNI's ModelSpeedup cannot shrink it (unbalanced groups): each unit is
    traced alone and its internal channels go, the units' inputs and outputs are left whole with the
    reason, and removing is still zeroing (checked without the engine)."""
    torch.manual_seed(0)
    model = with_norm_statistics(torchvision_model("shufflenet_v2_x0_5", num_classes=10, in_channels=3), (3, 32, 32))
    original = copy.deepcopy(model)
    technique = build(pruning(method="structured", ratio=0.5), random_ctx(model, (3, 32, 32)))
    shrunk = technique.compress(model)
    facts = technique.proof()["pruning"]
    assert facts["engine"] == "torch-pruning" and "ZeroDivisionError" in facts["engine_fallback"]
    assert "UnBalancedGroupError" in facts["engine_fallback"] and "stage3.0" in facts["blocks"]
    assert facts["left_whole"]["stage3.1.branch2.5"] == "its channels are the output of block stage3.1, which is traced alone"
    assert {"stage3.1.branch2.0", "stage3.1.branch2.3"} <= set(facts["groups"]["stage3.1.branch2.3"]["layers"])
    x = torch.randn(2, 3, 32, 32)
    assert count_params(shrunk)[0] < 0.9 * count_params(original)[0] and count_flops(shrunk, x) < count_flops(original, x)
    with torch.no_grad():
        out = shrunk.eval()(x)
    assert_same(out, zeroed_outputs(original, removed_channels(original, shrunk), x))


def test_gradual_pruning_takes_the_same_block_by_block_scope():
    """Gradual pruning on the same model: the engine is chosen before training (block by block here),
    the masks of every step come from the blocks' graphs, and the removal after fine-tuning computes
    what the masked model computed."""
    torch.manual_seed(0)
    model = torchvision_model("shufflenet_v2_x0_5", num_classes=10, in_channels=3)
    params = count_params(model)[0]
    technique = build(pruning(method="gradual", ratio=0.5), random_ctx(model, (3, 32, 32)))
    model = technique.after_finetune(technique.compress(model))   # no epoch ran: the schedule ends at once
    facts = technique.proof()["pruning"]
    assert facts["engine"] == "torch-pruning" and "stage3.1" in facts["blocks"]
    assert count_params(model)[0] < 0.9 * params and facts["shrink_output_max_diff"] < 1e-4


@pytest.mark.slow   # about 15 s here: every verification copies 28M parameters
def test_torchvision_convnext_tiny_shrinks_and_leaves_layernormed_groups_whole():
    model, technique = _torchvision("convnext_tiny")
    params = count_params(model)[0]
    model = technique.compress(model)
    facts = technique.proof()["pruning"]
    assert facts["engine"] == "torch-pruning" and count_params(model)[0] < 0.7 * params
    # the stages' residual streams pass a LayerNorm over channels (the downsampling layers): removing
    # a channel there changes the others' statistics, so those groups stay whole, with the reason
    assert facts["left_whole"] and all("zeroing" in why for why in facts["left_whole"].values())
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow   # about 25 s here: 8 groups fail verification, so each of the 48 is verified alone
def test_torchvision_googlenet_shrinks_and_leaves_the_auxiliary_heads_inputs_whole():
    """torchvision_model gives googlenet with aux_logits (random init): in train mode it returns
    GoogLeNetOutputs(logits, aux2, aux1), and the two auxiliary heads read inception4a and 4d, which
    the eval-mode trace does not see: those groups are left whole, with the reason. The shrunk model
    fine-tunes, its auxiliary heads in the loss (``training.loop.split_outputs``)."""
    model, technique = _torchvision("googlenet")
    params = count_params(model)[0]
    model = technique.compress(model)
    facts = technique.proof()["pruning"]
    assert facts["engine"] == "torch-pruning" and count_params(model)[0] < 0.8 * params
    assert {root.split(".")[0] for root in facts["left_whole"]} == {"inception4a", "inception4d"}
    assert all("train mode" in why for why in facts["left_whole"].values())
    with torch.no_grad():
        assert model.train()(torch.randn(2, 3, 32, 32)).logits.shape == (2, 10)
    ds = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    before = copy.deepcopy(model.aux1.fc2.weight)
    fit = fine_tune(model, ds, ds, Policy(), FitPlan(epochs=1, device=torch.device("cpu"), seed=0))
    assert len(fit.history) == 1 and not torch.equal(before, model.aux1.fc2.weight)   # the aux heads learn too
