"""Attention heads and FFN neurons of a transformer removed for real (structured pruning with
``pruning.head_ratio``): shapes, head counts and params; removing heads computes what zeroing
them computes (checked without the engine); the counts survive export and reload."""

from __future__ import annotations

import copy
import types

import optuna
import pytest
import torch
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from autocompress import load_exported
from autocompress.cli import app
from autocompress.metrics.flops import count_flops
from autocompress.metrics.size import count_params
from autocompress.search import record
from autocompress.spec.fields import ModelSpec
from autocompress.trial.context import TrialContext
from autocompress.zoo import build_model
from autocompress.zoo.data import DataBundle
from test_pruning import build, pruning

TEXT = types.SimpleNamespace(pad_id=0, sep_id=3, vocab_size=300, seq_len=16)
BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}


def tiny_bert():
    torch.manual_seed(0)
    model = build_model(ModelSpec(transformers={"config": BERT}), num_classes=2, input_shape=(16,), text=TEXT).eval()
    ds = TensorDataset(torch.randint(5, 300, (8, 16)), torch.randint(0, 2, (8,)))
    ctx = TrialContext(data=DataBundle("ids", ds, ds, ds, 2, (16,), text=TEXT), teacher=model, baseline_metrics={})
    return model, ctx


def self_attention(model, i):
    return model.model.bert.encoder.layer[i].attention.self


def removed_heads(before, after, size: int = 8) -> list[int]:
    """Which heads of ``before``'s query projection ``after`` no longer has, found by value."""
    rows = {tuple(r): i // size for i, r in enumerate(before.weight.detach().tolist())}
    kept = {rows[tuple(r)] for r in after.weight.detach().tolist()}
    return sorted(set(range(before.out_features // size)) - kept)


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_heads_and_ffn_neurons_go_and_removing_heads_is_zeroing_them(criterion):
    model, ctx = tiny_bert()
    original = copy.deepcopy(model)
    x = torch.randint(5, 300, (4, 16))
    x[:, 12:] = 0
    technique = build(pruning(method="structured", ratio=0.5, head_ratio=0.5, criterion=criterion), ctx)
    shrunk = technique.compress(model)
    facts = technique.proof()["pruning"]
    for i in (0, 1):
        a = self_attention(shrunk, i)
        assert (a.num_attention_heads, a.all_head_size, a.query.out_features, a.key.out_features,
                a.value.out_features) == (2, 16, 16, 16, 16)
        assert shrunk.model.bert.encoder.layer[i].attention.output.dense.in_features == 16
        assert shrunk.model.bert.encoder.layer[i].intermediate.dense.out_features == 32   # FFN neurons
        assert facts["heads_kept"][f"model.bert.encoder.layer.{i}.attention.self"] == [4, 2]
    assert count_params(shrunk)[0] < 0.85 * count_params(original)[0]
    assert count_flops(shrunk, x) < 0.8 * count_flops(original, x)
    # the claim, checked on the original without the engine: zero the removed heads' queries,
    # keys and values (found by value), and it computes what the shrunk model computes
    zeroed = copy.deepcopy(original)
    for i in (0, 1):
        gone = removed_heads(self_attention(original, i).query, self_attention(shrunk, i).query)
        assert len(gone) == 2
        with torch.no_grad():
            for proj in ("query", "key", "value"):
                layer = getattr(self_attention(zeroed, i), proj)
                for h in gone:
                    layer.weight[h * 8:(h + 1) * 8] = 0
                    layer.bias[h * 8:(h + 1) * 8] = 0
            ffn = shrunk.model.bert.encoder.layer[i].intermediate.dense   # and the FFN neurons that went
            rows = {tuple(r) for r in ffn.weight.detach().tolist()}
            full = zeroed.model.bert.encoder.layer[i].intermediate.dense
            for j, r in enumerate(original.model.bert.encoder.layer[i].intermediate.dense.weight.tolist()):
                if tuple(r) not in rows:
                    zeroed.model.bert.encoder.layer[i].output.dense.weight[:, j] = 0
                    full.weight[j] = 0
                    full.bias[j] = 0
    with torch.no_grad():   # and the pooler's neurons that went
        pooled = shrunk.model.bert.pooler.dense
        rows = {tuple(r) for r in pooled.weight.detach().tolist()}
        for j, r in enumerate(original.model.bert.pooler.dense.weight.tolist()):
            if tuple(r) not in rows:
                zeroed.model.classifier.weight[:, j] = 0
        assert torch.allclose(shrunk(x), zeroed(x), atol=1e-5)
        assert not torch.allclose(shrunk(x), original(x), atol=1e-5)


def test_without_head_ratio_the_heads_stay_and_the_ffn_shrinks():
    model, ctx = tiny_bert()
    technique = build(pruning(method="structured", ratio=0.5), ctx)
    shrunk = technique.compress(model)
    a = self_attention(shrunk, 0)
    assert (a.num_attention_heads, a.query.out_features) == (4, 32)
    assert shrunk.model.bert.encoder.layer[0].intermediate.dense.out_features == 32
    assert "heads_kept" not in technique.proof()["pruning"] or not technique.proof()["pruning"]["heads_kept"]


def test_a_head_pruned_trial_exports_and_reloads_with_true_head_counts(write_study, tmp_path):
    study = write_study(
        name="heads", model={"transformers": {"config": BERT}},
        data={"text": {"builtin": "reviews", "seq_len": 16, "vocab_size": 300}},
        search_space={"pruning": {"method": "structured", "ratio": 0.5, "head_ratio": 0.5},
                      "training": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32}},
        constraints=[], budget={"trials": 1, "epochs": 1, "train_fraction": 0.25}, baseline={"epochs": 0},
        warm_start={"recipes": False})
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (trial,) = [r for r in record.read_all(optuna.load_study(study_name="heads", storage=f"sqlite:///{out / 'study.db'}"))
                if not r.baseline]
    assert trial.proof["pruning"]["heads_kept"]["model.bert.encoder.layer.1.attention.self"] == [4, 2]
    model = load_exported(out / trial.model_dir, reads_text=False)
    a = self_attention(model, 1)
    assert (a.num_attention_heads, a.all_head_size, a.query.out_features) == (2, 16, 16)
    x = torch.randint(5, 300, (2, 16))
    assert model(x).shape == (2, 2)
