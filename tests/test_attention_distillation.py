"""Attention-map distillation (``distillation.attention_weight``): the KL of head-averaged
self-attention maps of mapped layers; zero for an identical student, linear in its weight, blind to
padded queries, indifferent to the student's head count, and the student ships with its own
attention implementation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from autocompress.compress import distillation as D
from autocompress.compress.attention_kd import attention_kl
from autocompress.spec.policy import DistillationPolicy, Policy, TrainingPolicy
from test_hidden_distillation import perturbed, technique, text_ctx, tiny_bert


def policy(weight: float) -> Policy:
    return Policy(distillation=DistillationPolicy(attention_weight=weight), training=TrainingPolicy(batch_size=8))


def attention_part(tech: D.Distillation, student, ctx) -> tuple[float, float]:
    """(task, total) of one step on the whole data set (eval mode: exact)."""
    x, y = ctx.data.train.tensors
    student.eval()
    logits = student(x)
    task = F.cross_entropy(logits, y)
    total = tech.loss(task, inputs=x, logits=logits, targets=y)
    tech._sums, tech._steps = {}, 0
    return task.item(), total.item()


@pytest.fixture(scope="module")
def teacher():
    return tiny_bert()


def test_attention_loss_is_zero_for_an_identical_student_and_linear_in_its_weight(teacher):
    ctx = text_ctx(teacher, pads=True)
    same = copy.deepcopy(teacher)
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(same)
    task, total = attention_part(tech, same, ctx)
    assert total == pytest.approx(task, abs=1e-6)
    tech.after_finetune(same)
    assert tech.proof()["distillation"]["attention_map"] == "origin"   # each layer is the teacher's own
    extra = []
    for weight in (0.5, 2.0):
        student = perturbed(teacher)
        tech = technique(policy(weight), ctx)
        tech.before_finetune(student)
        task, total = attention_part(tech, student, ctx)
        tech.after_finetune(student)
        extra.append(total - task)
    assert extra[0] > 0 and extra[1] == pytest.approx(4 * extra[0], rel=1e-4)


def test_the_student_trains_with_eager_attention_and_ships_with_its_own(teacher):
    ctx = text_ctx(teacher)
    student = perturbed(teacher)
    before = student.model.config._attn_implementation
    tech = technique(policy(1.0), ctx)
    tech.before_finetune(student)
    assert student.model.config._attn_implementation == "eager"
    tech.after_finetune(student)
    assert student.model.config._attn_implementation == before
    assert tech.teacher is None   # the private teacher copy is gone


def test_padded_queries_do_not_count_and_head_counts_may_differ():
    g = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(2, 4, 5, 5, generator=g), -1)
    s = torch.softmax(torch.randn(2, 4, 5, 5, generator=g), -1)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    changed = s.clone()
    changed[0, :, 3:] = torch.softmax(torch.randn(4, 2, 5, generator=g), -1)   # only padded queries of row 0
    assert attention_kl(changed, t, keep) == pytest.approx(attention_kl(s, t, keep).item(), rel=1e-6)
    assert attention_kl(changed, t, None) != pytest.approx(attention_kl(s, t, None).item(), rel=1e-6)
    # a student with 2 heads against a teacher with 4: compared head-averaged
    assert attention_kl(s[:, :2], t, keep) > 0
    same_average = torch.stack([t.mean(1)] * 2, 1)
    assert attention_kl(same_average, t, keep) == pytest.approx(0.0, abs=1e-6)
