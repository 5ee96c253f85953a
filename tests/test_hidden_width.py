"""The hidden size of a transformer cut for real (structured pruning with ``pruning.hidden_ratio``):
every hidden-size shape and the config shrunk, the channels the criterion ranks lowest gone, the
widths in the proof, a CNN refused with the reason, the narrower model exported and rebuilt, and
hidden-state distillation bridging the narrower student to its teacher."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch import nn

from autocompress import load_exported
from autocompress.compress.pruning.hidden_width import LEFT_WHOLE, kept_width
from autocompress.deploy.artifacts import model_structure, save_model
from autocompress.errors import TrialFailed
from autocompress.metrics.size import count_params
from autocompress.spec.fields import ModelSpec
from autocompress.spec.config import load_study_spec
from autocompress.spec.policy import Policy, PruningPolicy
from autocompress.spec.space import load_space
from autocompress.zoo import build_model
from autocompress.zoo.data import DataBundle
from conftest import REPO
from test_heads import BERT, TEXT, tiny_bert
from test_hidden_distillation import hidden_part, policy as hidden_kd, technique, text_ctx
from test_pruning import build, pruning

HIDDEN, LAYERS, INTERMEDIATE, VOCAB, POSITIONS, TYPES = 32, 2, 64, 300, 512, 2


def ids(n: int = 4) -> torch.Tensor:
    x = torch.randint(5, VOCAB, (n, 16), generator=torch.Generator().manual_seed(2))
    x[:, 12:] = TEXT.pad_id   # padded, as real batches are
    return x


def hidden_pruned(hidden_ratio: float = 0.25, **knobs):
    """(the tiny BERT, a copy of it structured-pruned with ``hidden_ratio`` and ``knobs``, the proof, the context)."""
    model, ctx = tiny_bert()
    tech = build(pruning(method="structured", hidden_ratio=hidden_ratio, **{"ratio": 0.0, **knobs}), ctx)
    return model, tech.compress(copy.deepcopy(model)), tech.proof()["pruning"], ctx


def hidden_shapes(model: nn.Module) -> dict[str, int]:
    """Every width that is the hidden size in a BERT, by where it is."""
    bert, out = model.model.bert, {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        emb = getattr(bert.embeddings, name)
        out[f"{name}.embedding_dim"], out[f"{name}.weight"] = emb.embedding_dim, emb.weight.shape[1]
    norms = [bert.embeddings.LayerNorm]
    for i, layer in enumerate(bert.encoder.layer):
        for proj in ("query", "key", "value"):
            out[f"{i}.{proj}.in"] = getattr(layer.attention.self, proj).weight.shape[1]
        out[f"{i}.attention.output.out"] = layer.attention.output.dense.weight.shape[0]
        out[f"{i}.intermediate.in"] = layer.intermediate.dense.weight.shape[1]
        out[f"{i}.output.out"] = layer.output.dense.weight.shape[0]
        norms += [layer.attention.output.LayerNorm, layer.output.LayerNorm]
    for j, norm in enumerate(norms):
        out[f"norm{j}"], out[f"norm{j}.weight"] = norm.normalized_shape[0], norm.weight.shape[0]
    out["pooler.in"] = bert.pooler.dense.in_features
    return out


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_every_hidden_size_shape_and_the_config_shrink_and_the_model_runs(criterion):
    original, shrunk, facts, _ = hidden_pruned(0.25, criterion=criterion)
    assert set(hidden_shapes(original).values()) == {32}
    assert set(hidden_shapes(shrunk).values()) == {24}
    assert shrunk.model.config.hidden_size == 24
    for layer in shrunk.model.bert.encoder.layer:   # heads, head size and the all-heads width stay
        a = layer.attention.self
        assert (a.num_attention_heads, a.attention_head_size, a.all_head_size, a.query.out_features) == (4, 8, 32, 32)
        assert (layer.attention.output.dense.in_features, layer.intermediate.dense.out_features) == (32, INTERMEDIATE)
    assert (shrunk.model.bert.pooler.dense.out_features, shrunk.model.classifier.in_features) == (32, 32)
    # each of the 8 channels removed took its column of 3 embeddings, 5 LayerNorms' scale and shift,
    # per layer the inputs of Q/K/V and the FFN and a row (+bias) of two output projections, and the pooler's input
    per_channel = VOCAB + POSITIONS + TYPES + 2 * (1 + 2 * LAYERS) + LAYERS * (3 * HIDDEN + INTERMEDIATE + (HIDDEN + 1)
                                                                           + (INTERMEDIATE + 1)) + HIDDEN
    assert facts["params_before"] - facts["params_after"] == 8 * per_channel
    assert facts["params_after"] == count_params(shrunk)[0]
    x = ids()
    with torch.no_grad():
        assert shrunk.eval()(x).shape == (4, 2) and torch.isfinite(shrunk(x)).all()
    shrunk.train()(x).sum().backward()   # and it trains
    assert facts["hidden_size_before"] == 32 and facts["hidden_size_after"] == 24
    assert facts["hidden"]["channels"] == [32, 24] and facts["hidden"]["criterion"] == criterion
    assert facts["hidden"]["layers"]["model.bert.embeddings.word_embeddings"] == ["out"]
    assert facts["hidden"]["layers"]["model.bert.encoder.layer.1.attention.self.query"] == ["in"]
    assert "LayerNorm" in facts["hidden"]["removal_equals_zeroing"]


def _scale_channels(model: nn.Module, channels: list[int], factor: float) -> None:
    """Scale hidden channels ``channels`` by ``factor`` in every layer that holds them."""
    bert = model.model.bert
    with torch.no_grad():
        for m in bert.modules():
            if isinstance(m, nn.Embedding):
                m.weight[:, channels] *= factor
            elif isinstance(m, nn.LayerNorm):
                m.weight[channels] *= factor
                m.bias[channels] *= factor
        for layer in bert.encoder.layer:
            for out in (layer.attention.output.dense, layer.output.dense):
                out.weight[channels] *= factor
                out.bias[channels] *= factor
            for inp in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value,
                        layer.intermediate.dense):
                inp.weight[:, channels] *= factor
        bert.pooler.dense.weight[:, channels] *= factor


def test_the_channels_the_criterion_ranks_lowest_go():
    model, ctx = tiny_bert()
    weak = [1, 4, 9, 12, 17, 22, 27, 30]
    _scale_channels(model, weak, 1e-3)
    original = copy.deepcopy(model)
    shrunk = build(pruning(method="structured", ratio=0.0, hidden_ratio=0.25, criterion="l1"), ctx).compress(model)
    kept = {tuple(col) for col in shrunk.model.bert.embeddings.word_embeddings.weight.T.tolist()}
    columns = original.model.bert.embeddings.word_embeddings.weight.T.tolist()
    assert sorted(j for j, col in enumerate(columns) if tuple(col) not in kept) == weak


def test_with_ffn_and_heads_the_hidden_size_goes_too():
    _, shrunk, facts, _ = hidden_pruned(0.5, ratio=0.5, head_ratio=0.5)
    assert set(hidden_shapes(shrunk).values()) == {16}
    layer = shrunk.model.bert.encoder.layer[0]
    assert (layer.attention.self.num_attention_heads, layer.attention.self.query.in_features,
            layer.attention.self.query.out_features, layer.intermediate.dense.out_features) == (2, 16, 16, 32)
    assert facts["heads_kept"]["model.bert.encoder.layer.0.attention.self"] == [4, 2]
    assert (facts["hidden_size_before"], facts["hidden_size_after"], facts["shrink_verified"]) == (32, 16, True)
    assert shrunk.eval()(ids()).shape == (4, 2)


def test_without_hidden_ratio_the_hidden_size_stays_whole_with_the_reason():
    _, shrunk, facts, _ = hidden_pruned(0.0, ratio=0.5)
    assert set(hidden_shapes(shrunk).values()) == {32} and shrunk.model.config.hidden_size == 32
    assert list(facts["left_whole"].values()) == [LEFT_WHOLE] and "hidden_size_after" not in facts


def test_gradual_pruning_cuts_the_hidden_size_before_fine_tuning():
    model, ctx = tiny_bert()
    shrunk = build(pruning(method="gradual", ratio=0.5, hidden_ratio=0.5), ctx).compress(model)
    assert set(hidden_shapes(shrunk).values()) == {16}


@pytest.mark.parametrize("width, ratio, kept", [(32, 0.25, 24), (32, 0.5, 16), (32, 0.75, 8), (64, 0.3, 48),
                                                (768, 0.25, 576), (20, 0.1, 16), (12, 0.25, 8)])
def test_the_kept_width_is_a_multiple_of_8_where_it_can_be(width, ratio, kept):
    assert kept_width(width, ratio) == kept


@pytest.mark.parametrize("width, ratio, words", [(16, 0.75, "would keep 4 of the hidden size 16: fewer than 8"),
                                                 (8, 0.5, "fewer than 8"), (32, 1.0, "would keep 0"),
                                                 (32, 0.01, "removes no channel of the hidden size 32")])
def test_a_kept_width_under_8_or_nothing_removed_is_refused(width, ratio, words):
    with pytest.raises(TrialFailed, match=words):
        kept_width(width, ratio)


def test_a_trial_whose_hidden_size_would_go_under_8_fails_before_anything_is_cut():
    _, ctx = tiny_bert()
    torch.manual_seed(0)
    model = build_model(ModelSpec(transformers={"config": {**BERT, "hidden_size": 16}}), num_classes=2,
                        input_shape=(16,), text=TEXT)
    with pytest.raises(TrialFailed, match="hidden_ratio 0.75 would keep 4 of the hidden size 16") as exc:
        build(pruning(method="structured", ratio=0.5, hidden_ratio=0.75), ctx).compress(model)
    assert "\n" not in str(exc.value)
    assert set(hidden_shapes(model).values()) == {16}
    assert model.model.bert.encoder.layer[0].intermediate.dense.out_features == INTERMEDIATE   # nothing cut


def test_a_cnn_with_a_hidden_ratio_fails_with_the_reason(digits_ctx):
    model = copy.deepcopy(digits_ctx.teacher).requires_grad_(True)
    with pytest.raises(TrialFailed, match="no hidden-size group") as exc:
        build(pruning(method="structured", ratio=0.5, hidden_ratio=0.25), digits_ctx).compress(model)
    assert "\n" not in str(exc.value) and "pruning.hidden_ratio 0.25" in str(exc.value)


def test_a_hidden_pruned_model_exports_and_rebuilds_with_identical_predictions(tmp_path):
    _, shrunk, _, ctx = hidden_pruned(0.25, ratio=0.5, head_ratio=0.5)
    plain = DataBundle("ids", ctx.data.train, ctx.data.val, ctx.data.test, 2, (16,))   # no tokenizer to record
    structure = model_structure(shrunk, model_spec=ModelSpec(transformers={"config": BERT}).model_dump(mode="json"),
                                source=None, data=plain, quantization={"mode": "none"})
    structure["text"] = vars(TEXT)   # the ids' layout, as a text study records it
    assert structure["configs"] == {"model": {"hidden_size": 24}}
    assert structure["layers"]["model.bert.embeddings.word_embeddings"]["embedding_dim"] == 24
    save_model(shrunk, tmp_path, structure)
    loaded = load_exported(tmp_path, reads_text=False)
    assert set(hidden_shapes(loaded).values()) == {24} and loaded.model.config.hidden_size == 24
    assert loaded.model.bert.encoder.layer[1].attention.self.num_attention_heads == 2
    x = ids(6)
    with torch.no_grad():
        assert torch.equal(loaded(x), shrunk.eval()(x))


def test_hidden_state_distillation_bridges_a_narrower_student():
    teacher, student, _, _ = hidden_pruned(0.5)
    ctx = text_ctx(teacher)
    tech = technique(hidden_kd(1.0), ctx)
    tech.before_finetune(student)
    proof = tech.proof()["distillation"]
    stack = "model.bert.encoder.layer"
    assert proof["hidden_map"] == "origin"   # the narrower layers still show their teacher layers
    assert proof["hidden_projections"] == {f"{stack}.{i}": "Linear 16->32" for i in range(2)}
    task, total, hidden = hidden_part(tech, student, ctx)
    assert math.isfinite(hidden) and hidden > 0 and total == pytest.approx(task + hidden, rel=1e-6)
    tech.after_finetune(student)


def test_the_knob_is_declared_and_searched_in_the_transformer_spaces():
    (field,) = [f for f in dataclasses.fields(PruningPolicy) if f.name == "hidden_ratio"]
    assert (field.default, field.metadata["low"], field.metadata["high"]) == (0.0, 0.0, 0.75)
    assert Policy.from_flat({"pruning.hidden_ratio": 0.5}).pruning.hidden_ratio == 0.5
    for space in (load_space(REPO / "search_spaces" / "transformer.yaml"),
                  load_study_spec(REPO / "studies" / "text_transformer.yaml").load_space()):
        found = space.distributions()
        assert found["pruning.hidden_ratio"].choices == (0.0, 0.25, 0.5)
        assert found["depth.layers"].choices == (0, 1, 2, 3)
