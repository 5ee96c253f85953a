"""Student depth: k of the teacher's transformer layers kept (``compress/depth.py``), on a tiny
BERT, a torch ``nn.TransformerEncoder`` and a 1-trial CLI study. Offline, seconds."""

from __future__ import annotations

import copy
import types

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from autocompress import load_exported
from autocompress.cli import app
from autocompress.compress import pipeline
from autocompress.compress.depth import LayerDropping, fit_depth, layer_stack
from autocompress.errors import TrialFailed
from autocompress.metrics.size import count_params
from autocompress.search import record
from autocompress.spec.fields import ModelSpec
from autocompress.spec.policy import Policy
from autocompress.trial.context import TrialContext
from autocompress.zoo import build_model
from autocompress.zoo.data import DataBundle

BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 64}
LAYOUT = {"pad_id": 0, "sep_id": 3, "vocab_size": 300, "seq_len": 16}
STACK = "model.bert.encoder.layer"


def tiny_bert() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(transformers={"config": BERT}), num_classes=2, input_shape=(16,), text=LAYOUT).eval()


def text_ctx(model: nn.Module) -> TrialContext:
    torch.manual_seed(1)
    ds = TensorDataset(torch.randint(5, 300, (8, 16)), torch.randint(0, 2, (8,)))
    data = DataBundle("random-text", ds, ds, ds, 2, (16,), text=types.SimpleNamespace(**LAYOUT))
    return TrialContext(data=data, teacher=model, baseline_metrics={}, epochs=1)


def drop(model: nn.Module, ctx: TrialContext, layers: int, selection: str = "every_other") -> LayerDropping:
    policy = Policy.from_dict({"depth": {"layers": layers, "selection": selection}})
    built = pipeline(policy).build(ctx)   # with BatchNorm recalibration after the structure change
    technique = next(t for t in built if isinstance(t, LayerDropping))
    technique.compress(model)
    return technique


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("selection, kept", [("every_other", [1, 3]), ("first", [0, 1]), ("last", [2, 3])])
def test_selection_keeps_the_named_teacher_layers_with_their_weights(selection, kept):
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    technique = drop(student, text_ctx(teacher), 2, selection)
    proof = technique.proof()["depth"]
    assert proof["kept"] == kept and proof["layers_before"] == 4 and proof["layers_after"] == 2
    assert proof["container"] == STACK and proof["selection"] == selection
    layers, source = student.get_submodule(STACK), teacher.get_submodule(STACK)
    assert len(layers) == 2 and len(source) == 4   # the teacher is untouched
    assert all(same_weights(layers[j], source[i]) for j, i in enumerate(kept))
    assert proof["params_after"] == count_params(student)[0] < proof["params_before"] == count_params(teacher)[0]
    assert student.model.config.num_hidden_layers == 2 and teacher.model.config.num_hidden_layers == 4
    assert [m.layer_idx for m in student.modules() if hasattr(m, "layer_idx")] == [0, 1]
    x = torch.randint(5, 300, (3, 16))
    with torch.no_grad():
        assert student.eval()(x).shape == (3, 2)


def test_every_other_is_evenly_spaced_like_distilbert():
    from autocompress.compress.depth import evenly_spaced
    assert evenly_spaced(12, 6) == [1, 3, 5, 7, 9, 11] and evenly_spaced(6, 3) == [1, 3, 5]
    assert evenly_spaced(12, 4) == [2, 5, 8, 11] and evenly_spaced(4, 1) == [3]


def test_importance_drops_the_layer_whose_removal_changes_nothing():
    teacher = tiny_bert()
    with torch.no_grad():   # layer 2 adds nothing to the residual stream: its outputs are zero before the LayerNorms
        layer = teacher.get_submodule(STACK)[2]
        for dense in (layer.attention.output.dense, layer.output.dense):
            dense.weight.zero_()
            dense.bias.zero_()
        for norm in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    student = copy.deepcopy(teacher)
    proof = drop(student, text_ctx(teacher), 3, "importance").proof()["depth"]
    effects = proof["removal_effects"]
    assert effects[2] < 1e-7 and min(effects[:2] + effects[3:]) > 1e-5   # the others move the logits
    assert proof["kept"] == [0, 1, 3]
    assert same_weights(student.get_submodule(STACK)[2], teacher.get_submodule(STACK)[3])


@pytest.mark.parametrize("layers, words", [
    (4, "depth.layers 4 keeps every layer: the model has 4 (model.bert.encoder.layer)"),
    (8, "depth.layers 8 keeps every layer: the model has 4 (model.bert.encoder.layer)"),
])
def test_keeping_every_layer_fails_in_one_line(layers, words):
    teacher = tiny_bert()
    with pytest.raises(TrialFailed) as err:
        drop(copy.deepcopy(teacher), text_ctx(teacher), layers)
    assert err.value.reason == words and "\n" not in err.value.reason


def test_a_model_without_a_layer_stack_fails_in_one_line():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 1, 8, 8))
    ds = TensorDataset(torch.randn(4, 1, 8, 8), torch.randint(0, 2, (4,)))
    ctx = TrialContext(data=DataBundle("r", ds, ds, ds, 2, (1, 8, 8)), teacher=model, baseline_metrics={})
    assert layer_stack(model) is None
    with pytest.raises(TrialFailed, match=r"^depth.layers 2: the model has no stack of transformer layers"):
        drop(model, ctx, 2)


def test_no_depth_turns_nothing_on_and_depth_is_structural():
    assert pipeline(Policy()).classes == ()
    p = pipeline(Policy.from_dict({"depth": {"layers": 2}, "pruning": {"method": "weight"}}))
    assert p.classes[0] is LayerDropping and p.structural_sections == ("depth", "pruning")
    assert p.structure_final_after_compress and p.summary()[0] == "2 of layers (every_other)"
    flat = Policy.from_dict({"depth": {"layers": 3, "selection": "last"}}).to_flat()
    assert flat["depth.layers"] == 3 and flat["depth.selection"] == "last"
    assert Policy.from_flat(flat).depth.layers == 3
    assert Policy.from_yaml(Policy.from_flat(flat).to_yaml()) == Policy.from_flat(flat)


class Encoder(nn.Module):
    """A user's own transformer: a torch TransformerEncoder over features, mean-pooled."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        block = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(block, num_layers=4, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_two_of_four_layers_of_a_torch_transformer_encoder():
    torch.manual_seed(0)
    teacher = Encoder().eval()
    ds = TensorDataset(torch.randn(8, 5, 8), torch.randint(0, 3, (8,)))
    ctx = TrialContext(data=DataBundle("r", ds, ds, ds, 3, (5, 8)), teacher=teacher, baseline_metrics={}, epochs=1)
    student = copy.deepcopy(teacher)
    proof = drop(student, ctx, 2).proof()["depth"]
    assert proof["container"] == "encoder.layers" and proof["kept"] == [1, 3]
    assert student.encoder.num_layers == len(student.encoder.layers) == 2
    assert same_weights(student.encoder.layers[0], teacher.encoder.layers[1])
    with torch.no_grad():
        assert student.eval()(torch.randn(2, 5, 8)).shape == (2, 3)


def test_a_one_trial_text_study_with_two_of_four_layers(write_study, tmp_path):
    study = write_study(
        name="depth", model={"transformers": {"config": BERT}},
        data={"text": {"builtin": "reviews", "seq_len": 16, "vocab_size": 300}},
        search_space={"depth": {"layers": 2}, "training": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32}},
        constraints=[], budget={"trials": 1, "epochs": 1, "train_fraction": 0.25},
        baseline={"epochs": 0}, warm_start={"recipes": False})
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    trials = [r for r in record.read_all(optuna.load_study(study_name="depth", storage=f"sqlite:///{out / 'study.db'}"))
              if not r.baseline]
    assert len(trials) == 1 and trials[0].state.name == "COMPLETE", [r.fail_reason for r in trials]
    depth = trials[0].proof["depth"]
    assert depth["layers_after"] == 2 and depth["kept"] == [1, 3] and depth["params_after"] < depth["params_before"]


@pytest.mark.parametrize(("layers", "model", "words"), [
    (4, {"transformers": {"config": BERT}}, "depth.layers 4 keeps every layer: the model has 4 (model.bert.encoder.layer)"),
    (2, {"builtin": "digits_cnn", "kwargs": {"width": 8}}, "the model has no stack of transformer layers"),
])
def test_a_depth_no_choice_of_which_fits_is_refused_at_load(write_study, tmp_path, layers, model, words):
    data = {"text": {"builtin": "reviews", "seq_len": 16, "vocab_size": 300}} if "transformers" in model else \
        {"builtin": "digits"}
    study = write_study(model=model, data=data, search_space={"depth": {"layers": layers}})
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "search_space.depth.layers" in line and words in line, line
    assert not (tmp_path / "run").exists()


def test_a_depth_choice_that_does_not_fit_is_a_warning(write_study, tmp_path):
    study = write_study(model={"transformers": {"config": BERT}},
                        data={"text": {"builtin": "reviews", "seq_len": 16, "vocab_size": 300}},
                        search_space={"depth": {"layers": {"choices": [2, 6]}}}, constraints=[],
                        budget={"trials": 1, "epochs": 1, "train_fraction": 0.1}, baseline={"epochs": 0})
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0 and "warning: search_space.depth.layers: 6 does not fit the model (depth.layers 6 keeps every layer" \
        in result.output, result.output


def test_a_model_built_at_the_teachers_depth_takes_the_students_state_dict():
    teacher = tiny_bert()
    student = copy.deepcopy(teacher)
    drop(student, text_ctx(teacher), 2, "last")
    fresh = tiny_bert()
    assert fit_depth(fresh, [n for n, _ in student.named_modules()]) == 2
    assert fit_depth(fresh, [n for n, _ in student.named_modules()]) is None   # already that deep
    fresh.load_state_dict(student.state_dict())   # strict: every key fits
    assert fresh.model.config.num_hidden_layers == 2
    x = torch.randint(5, 300, (3, 16))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), student.eval()(x))


def test_a_shallower_trial_model_loads_back(tmp_path):
    from autocompress.deploy.artifacts import model_structure, save_model
    teacher = tiny_bert()
    ctx = text_ctx(teacher)
    student = copy.deepcopy(teacher)
    drop(student, ctx, 2)
    plain = DataBundle("ids", ctx.data.train, ctx.data.val, ctx.data.test, 2, (16,))   # no tokenizer to record
    structure = model_structure(student, model_spec=ModelSpec(transformers={"config": BERT}).model_dump(mode="json"),
                                source=None, data=plain, quantization={"mode": "none"})
    structure["text"] = LAYOUT   # the ids' layout, as a text study records it
    save_model(student, tmp_path, structure)
    loaded = load_exported(tmp_path, reads_text=False)
    x = torch.randint(5, 300, (3, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x), student.eval()(x))
