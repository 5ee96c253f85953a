"""Hidden-state distillation per mapped transformer layer: layers found, mapped by origin or
proportionally, pad positions left out, the loss recorded per epoch."""

from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.compress import distillation as D
from autocompress.compress import hidden as H
from autocompress.compress import pipeline
from autocompress.spec.fields import ModelSpec
from autocompress.spec.policy import DistillationPolicy, Policy, TrainingPolicy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.trial.context import TrialContext
from autocompress.zoo import build_model
from autocompress.zoo.data import DataBundle
from test_distillation import perturbed as perturbed_by, technique

STACK = "model.bert.encoder.layer"
TEXT = {"pad_id": 0, "sep_id": 3, "vocab_size": 300, "seq_len": 16}


def tiny_bert(seed: int = 0, layers: int = 4, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    config = {"model_type": "bert", "hidden_size": hidden, "num_hidden_layers": layers,
              "num_attention_heads": 4, "intermediate_size": 64}
    return build_model(ModelSpec(transformers={"config": config}), num_classes=2, input_shape=(16,), text=TEXT)


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return tiny_bert()


def text_ctx(model: nn.Module, *, pads: bool = False, pad_known: bool = True, epochs: int = 1) -> TrialContext:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 300, (16, 16), generator=g)
    if pads:
        ids[::2, 10:] = TEXT["pad_id"]   # every other row: six pad positions at the end
    ds = TensorDataset(ids, torch.randint(0, 2, (16,), generator=g))
    text = types.SimpleNamespace(pad_id=TEXT["pad_id"]) if pad_known else None
    data = DataBundle("random-ids", ds, ds, ds, 2, (16,), text=text)
    return TrialContext(data=data, teacher=model, baseline_metrics={}, epochs=epochs)


def policy(hidden_weight: float, **knobs) -> Policy:
    return Policy(distillation=DistillationPolicy(hidden_weight=hidden_weight, **knobs),
                  training=TrainingPolicy(batch_size=8, lr=1e-3))


def perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    return perturbed_by(model, seed, scale=0.1)


def hidden_part(tech: D.Distillation, student: nn.Module, ctx: TrialContext) -> tuple[float, float, float]:
    """(task, total, hidden) of one step on the whole data set; dropout off, so it is exact."""
    x, y = ctx.data.train.tensors
    student.eval()
    logits = student(x)
    task = F.cross_entropy(logits, y)
    total = tech.loss(task, inputs=x, logits=logits, targets=y)
    hidden = tech._sums["hidden_loss"]
    tech._sums, tech._steps = {}, 0
    return task.item(), total.item(), hidden.item()


def test_on_with_hidden_weight_alone_and_declared():
    assert D.select(policy(0.0)) is None
    p = policy(0.5)
    assert D.select(p) is D.Distillation
    assert "hidden-KD w=0.50" in pipeline(p).summary()
    assert Policy.from_flat(p.to_flat()) == p and Policy.from_yaml(p.to_yaml()) == p


def test_hidden_loss_zero_for_identical_student_positive_for_perturbed(teacher):
    ctx = text_ctx(teacher)
    same = copy.deepcopy(teacher)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(same)
    task, total, hidden = hidden_part(tech, same, ctx)
    assert hidden == 0.0 and total == task
    assert tech.proof()["distillation"]["hidden_map"] == "origin"
    tech.after_finetune(same)

    student = perturbed(teacher)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(student)
    task, total, hidden = hidden_part(tech, student, ctx)
    assert hidden > 0 and total == pytest.approx(task + hidden, rel=1e-6)
    proof = tech.proof()["distillation"]
    # every weight moved: no layer shows its origin, and at equal depth the proportional map is 1:1
    assert proof["hidden_map"] == "proportional" and proof["hidden_projections"] == {}
    assert proof["hidden_layers"] == {f"{STACK}.{i}": f"{STACK}.{i}" for i in range(4)}
    tech.after_finetune(student)
    assert not any(m._forward_hooks for m in student.modules())


def test_hidden_loss_is_linear_in_its_weight(teacher):
    ctx = text_ctx(teacher)
    student = perturbed(teacher)
    parts = {}
    for w in (0.5, 2.0):
        tech = technique(policy(w), ctx)
        tech.before_finetune(student)
        parts[w] = hidden_part(tech, student, ctx)
        tech.after_finetune(student)
    (task1, total1, h1), (task2, total2, h2) = parts[0.5], parts[2.0]
    assert h1 == pytest.approx(h2, rel=1e-6) and h1 > 0
    assert total1 - task1 == pytest.approx(0.5 * h1, rel=1e-4)
    assert total2 - task2 == pytest.approx(2.0 * h2, rel=1e-4)


def test_student_with_dropped_layers_is_mapped_by_origin(teacher):
    student = copy.deepcopy(teacher)
    layers = student.model.bert.encoder.layer
    del layers[2]
    del layers[0]   # layers 1 and 3 of the teacher stay
    tech = technique(policy(1.0), text_ctx(teacher))
    tech.before_finetune(student)
    proof = tech.proof()["distillation"]
    assert proof["hidden_map"] == "origin"
    assert proof["hidden_layers"] == {f"{STACK}.0": f"{STACK}.1", f"{STACK}.1": f"{STACK}.3"}
    tech.after_finetune(student)


def test_origin_survives_pruned_widths(teacher):
    """Rows of a Linear removed (heads or neurons pruned): its remaining rows still show the origin."""
    student = copy.deepcopy(teacher)
    layers = student.model.bert.encoder.layer
    del layers[0]
    for layer in layers:
        q = layer.attention.self.query
        small = nn.Linear(q.in_features, 16)
        with torch.no_grad():
            small.weight.copy_(q.weight[8:24])
        layer.attention.self.query = small
    mapping, how = H.map_layers(list(layers), list(teacher.model.bert.encoder.layer))
    assert (mapping, how) == ([1, 2, 3], "origin")


def test_reinitialised_student_is_mapped_proportionally_with_a_trained_projection(teacher):
    ctx = text_ctx(teacher)
    same_depth = tiny_bert(seed=7)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(same_depth)
    assert tech.proof()["distillation"]["hidden_map"] == "proportional"
    tech.after_finetune(same_depth)

    student = tiny_bert(seed=7, layers=2, hidden=24)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(student)
    proof = tech.proof()["distillation"]
    assert proof["hidden_map"] == "proportional"
    assert proof["hidden_layers"] == {f"{STACK}.0": f"{STACK}.1", f"{STACK}.1": f"{STACK}.3"}
    assert proof["hidden_projections"] == {f"{STACK}.0": "Linear 24->32", f"{STACK}.1": "Linear 24->32"}
    (projections,) = tech.trainable_modules()
    x, y = ctx.data.train.tensors
    logits = student(x)
    tech.loss(F.cross_entropy(logits, y), inputs=x, logits=logits, targets=y).backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in projections.values())
    tech.after_finetune(student)


def _noise_at_pads(student: nn.Module, ids: torch.Tensor) -> list:
    """Hooks (run before the distillation's) that change each layer's output at pad positions only."""
    pad = (ids == TEXT["pad_id"]).unsqueeze(-1).float()
    g = torch.Generator().manual_seed(3)
    hooks = []
    for layer in student.model.bert.encoder.layer:
        noise = torch.randn(*ids.shape, 32, generator=g)
        hooks.append(layer.register_forward_hook(lambda m, a, out, n=noise: out + 5.0 * n * pad, prepend=True))
    return hooks


@pytest.mark.parametrize("pad_known", [True, False])
def test_pad_positions_do_not_count(teacher, pad_known):
    ctx = text_ctx(teacher, pads=True, pad_known=pad_known)
    student = perturbed(teacher)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(student)
    _, _, clean = hidden_part(tech, student, ctx)
    hooks = _noise_at_pads(student, ctx.data.train.tensors[0])
    _, _, noisy = hidden_part(tech, student, ctx)
    for h in hooks:
        h.remove()
    tech.after_finetune(student)
    if pad_known:
        assert noisy == pytest.approx(clean, rel=1e-5)
    else:   # without a pad id every position counts: the same noise shows
        assert noisy > 2 * clean


def test_loss_parts_recorded_per_epoch_after_fine_tune(teacher):
    ctx = text_ctx(teacher, pads=True, epochs=2)
    student = perturbed(teacher)
    p = policy(1.0, method="soft", alpha=0.5)
    tech = technique(p, ctx)
    student = tech.before_finetune(student)
    result = fine_tune(student, ctx.data.train, ctx.data.val, p,
                       FitPlan(epochs=2, device=ctx.device, seed=0, techniques=(tech,)))
    tech.after_finetune(student)
    proof = tech.proof()["distillation"]
    epochs = proof["epoch_means"]
    assert len(epochs) == 2 and epochs[-1] == proof["last_epoch_mean"]
    for e in epochs:
        assert set(e) == {"task_loss", "kd_loss", "hidden_loss", "total_loss"}
        assert e["hidden_loss"] > 0 and e["kd_loss"] > 0
        assert e["total_loss"] == pytest.approx(0.5 * e["task_loss"] + 0.5 * e["kd_loss"] + e["hidden_loss"],
                                                rel=1e-4)
    assert [row.train_loss for row in result.history] == pytest.approx([e["total_loss"] for e in epochs], rel=1e-4)
    assert not any(m._forward_hooks for m in student.modules())


class IdsEncoder(nn.Module):
    """A user's own transformer: ids -> embeddings -> nn.TransformerEncoder -> mean -> logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(300, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.head = nn.Linear(16, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(ids)).mean(dim=1))


def test_layers_of_a_torch_transformer_encoder_and_a_vit_are_found():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = IdsEncoder()
    path, layers = H.layer_stack(model)
    assert path == "encoder.layers" and len(layers) == 3
    vit = VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    assert H.layer_stack(vit)[0] == "encoder.layers"
    assert H.layer_stack(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))) is None
    assert H.map_layers(H.layer_stack(copy.deepcopy(model))[1], layers) == ([0, 1, 2], "origin")

    ctx = text_ctx(model)
    student = perturbed(model)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(student)
    _, _, hidden = hidden_part(tech, student, ctx)
    assert hidden > 0
    proof = tech.proof()["distillation"]
    assert proof["hidden_map"] == "proportional"
    assert proof["hidden_layers"] == {f"encoder.layers.{i}": f"encoder.layers.{i}" for i in range(3)}
    tech.after_finetune(student)
