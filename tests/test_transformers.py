"""Transformers as models: Hugging Face sequence classifiers (from a config or a save_pretrained
directory) on token ids, torchvision's ViT at a small image size, and what the engine already
does (FLOPs, dynamic int8, runtimes with a dynamic sequence axis, a CLI study, export that reads
raw text). Everything offline: models are built from configs, the data is the built-in task."""

from __future__ import annotations

import warnings

import optuna
import yaml
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from autocompress import load_exported
from autocompress.cli import app
from autocompress.compress.quantization.torch_ao import quantize_dynamic
from autocompress.deploy.runtimes import deploy
from autocompress.metrics.flops import count_flops
from autocompress.metrics.size import count_params
from autocompress.search import record
from autocompress.spec.fields import DataSpec, ModelSpec
from autocompress.zoo import build_data, build_model
from autocompress.zoo.reviews import builtin_text
from autocompress.zoo.transformers import TextClassifier

BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}
TEXT = {"builtin": "reviews", "seq_len": 24, "vocab_size": 300}


@pytest.fixture(scope="module")
def reviews():
    return build_data(DataSpec(text=TEXT), seed=0)


def bert(data, **config) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(transformers={"config": {**BERT, **config}}), num_classes=data.num_classes,
                       input_shape=data.input_shape, text=data.text).eval()


def ids(data, n: int = 4) -> torch.Tensor:
    return torch.stack([data.val[i][0] for i in range(n)])


def test_a_bert_from_a_config_takes_token_ids_and_masks_the_padding(reviews):
    model = bert(reviews)
    x = ids(reviews)
    assert x.dtype == torch.long and (x == reviews.text.pad_id).any()   # padded batches
    with torch.no_grad():
        logits = model(x)
        # the padding is masked: more padding after a sequence does not change its logits
        longer = torch.cat([x, torch.full((4, 8), reviews.text.pad_id)], 1)
        assert torch.allclose(model(longer), logits, atol=1e-5)
        # without the mask it would: the wrapper is what derives it
        mask = (longer != reviews.text.pad_id).long()
        masked = model.model.bert(input_ids=longer, attention_mask=mask).last_hidden_state[:, 0]
        unmasked = model.model.bert(input_ids=longer).last_hidden_state[:, 0]
    assert logits.shape == (4, 2) and (masked - unmasked).abs().max() > 1e-3
    assert model.model.config.vocab_size == reviews.text.vocab_size   # taken from the tokenizer
    assert count_flops(model, x) > 2 * 24 * 2 * (4 * 32 * 32 + 2 * 32 * 64)   # projections and FFN, per token


def test_token_types_are_one_after_the_first_sep():
    seen = {}

    class Spy(nn.Module):
        config = type("C", (), {"type_vocab_size": 2})()

        def forward(self, **kwargs):
            seen.update(kwargs)
            return type("Out", (), {"logits": torch.zeros(1, 2)})()

    # [CLS] a a [SEP] b b [SEP] [PAD] [PAD]
    TextClassifier(Spy(), pad_id=0, sep_id=3)(torch.tensor([[2, 7, 8, 3, 9, 9, 3, 0, 0]]))
    assert seen["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0]]
    assert seen["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 0, 0]]


def test_a_save_pretrained_directory_loads_with_a_new_head(reviews, tmp_path):
    source = bert(reviews)
    source.model.save_pretrained(tmp_path / "bert")
    spec = ModelSpec(transformers={"path": "bert"})
    loaded = build_model(spec, num_classes=5, input_shape=reviews.input_shape, text=reviews.text,
                         source=str(tmp_path / "study.yaml")).eval()
    a, b = source.model.bert.embeddings.word_embeddings.weight, loaded.model.bert.embeddings.word_embeddings.weight
    assert torch.equal(a, b)   # the encoder's weights, from the directory
    with torch.no_grad():
        assert loaded(ids(reviews)).shape == (4, 5)   # a fresh head for 5 classes


@pytest.mark.parametrize(("model", "data", "words"), [
    ({"config": {**BERT, "hiden_size": 16}}, TEXT, "config.hiden_size is not a field of BertConfig (did you mean: hidden_size"),
    ({"config": {**BERT, "model_type": "bort"}}, TEXT, "'bort' is not a transformers model type"),
    ({"path": "bert-base-uncased"}, TEXT, "is not a local directory (one written by save_pretrained); autocompress "
                                          "never downloads models"),
    ({"config": {**BERT, "vocab_size": 100}}, TEXT, "the tokenizer has 300 tokens but model.transformers.config has "
                                                    "embeddings for 100"),
    ({"config": {**BERT, "max_position_embeddings": 16}}, TEXT, "seq_len 24 is longer than"),
    ({"config": BERT, "tokenizer": "x"}, TEXT, "unknown key 'tokenizer'"),
])
def test_bad_transformers_input_is_one_line_naming_the_field(write_study, tmp_path, model, data, words):
    study = write_study(model={"transformers": model}, data={"text": data})
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "model.transformers" in line and words in line, line
    assert not (tmp_path / "run").exists()   # nothing written


def test_a_transformer_on_images_is_refused(write_study, tmp_path):
    study = write_study(model={"transformers": {"config": BERT}})   # digits: images
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "takes token ids: use text data" in result.output


def test_dynamic_int8_quantizes_every_linear_and_shrinks_the_model(reviews):
    model = bert(reviews)
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize_dynamic(model, per_channel=True)
    dynamic = [m for m in q.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert len(dynamic) == linears and not any(type(m) is nn.Linear for m in q.modules())
    x = ids(reviews)
    with torch.no_grad():
        assert (q(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.75


@pytest.mark.parametrize("runtime", ["torchscript", "onnxruntime"])
def test_runtimes_take_any_batch_and_sequence_length(reviews, runtime):
    model = bert(reviews)
    shipped = deploy(model, runtime, ids(reviews, 4))
    x = ids(reviews, 3)[:, :16]   # another batch size, a shorter sequence
    with torch.no_grad():
        assert torch.allclose(shipped.module(x), model(x), atol=1e-4)


def test_torchvision_vit_at_a_small_image_size():
    model = build_model(ModelSpec(torchvision="vit_b_16", kwargs={"image_size": 32}), num_classes=10,
                        input_shape=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 10)
    assert count_params(model)[0] > 80e6 and count_flops(model, x) > 0


def test_a_two_trial_text_study_exports_a_model_that_reads_raw_text(write_study, tmp_path):
    study = write_study(
        name="text", model={"transformers": {"config": BERT}}, data={"text": {**TEXT, "seq_len": 16}},
        search_space={"pruning": {"method": "weight", "ratio": 0.5},
                      "quantization": {"mode": {"choices": ["none", "dynamic_int8"]}},
                      "augmentation": {"policy": "token_mask", "text_rate": 0.1},
                      "training": {"optimizer": "adamw", "lr": 1e-3, "batch_size": 32}},
        constraints=[], budget={"trials": 2, "epochs": 1, "train_fraction": 0.5},
        baseline={"epochs": 0}, warm_start={"recipes": False})   # random weights: the pipeline is the point
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    trials = [r for r in record.read_all(optuna.load_study(study_name="text", storage=f"sqlite:///{out / 'study.db'}"))
              if not r.baseline]
    assert len(trials) == 2 and all(r.state.name == "COMPLETE" for r in trials), [r.fail_reason for r in trials]
    assert all(r.proof["pruning"]["sparsity"] > 0.4 for r in trials)
    result = CliRunner().invoke(app, ["export", str(out)])
    assert result.exit_code == 0, result.output
    model = load_exported(out / "export")
    labels = model.predict(["the camera is not good at all", "i like it, it works well"])
    assert set(labels) <= {"negative", "positive"} and len(labels) == 2
    # from raw strings, the exported model scores what its trial measured on the validation split
    exported = yaml.safe_load((out / "export" / "policy.yaml").read_text())["study"]["trial"]
    measured = next(r for r in trials if r.number == exported).metrics["accuracy"]
    texts, names = builtin_text(0)[1]
    predicted = [label for i in range(0, len(texts), 100) for label in model.predict(texts[i:i + 100])]
    assert sum(a == b for a, b in zip(predicted, names)) / len(names) == pytest.approx(measured, abs=1e-9)
    data = build_data(DataSpec(text={**TEXT, "seq_len": 16}), seed=0)
    x = torch.stack([data.test[i][0] for i in range(8)])
    bare = load_exported(out / "export", reads_text=False)
    with torch.no_grad():
        assert torch.equal(model(x), bare(x))
    card = (out / "export" / "README.md").read_text()
    assert "model.predict(" in card and "dynamic batch and sequence length" in card


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"target": {"device": "cpu", "seq_len": 600}}, "target.seq_len", "the model does not run on 600 tokens"),
    ({"search_space": {"augmentation": {"policy": "crop_flip"}}}, "search_space.augmentation.policy",
     "augmentation 'crop_flip' is for images; data 'reviews' is a text set"),
    ({"data": {"text": {**TEXT, "train": "missing.csv"}}}, "data.text", ""),
])
def test_bad_text_study_input_is_one_line_naming_the_field(write_study, tmp_path, overrides, field, words):
    study = write_study(**{"model": {"transformers": {"config": BERT}}, "data": {"text": TEXT}, **overrides})
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert field in line and words in line, line
    assert not (tmp_path / "run").exists()


def test_latency_and_flops_are_measured_at_the_target_sequence_length(reviews):
    from autocompress.trial.context import TargetSettings, TrialContext

    model = bert(reviews)
    at = {n: TrialContext(data=reviews, teacher=model, baseline_metrics={},
                          target=TargetSettings(seq_len=n)).example_batch(2) for n in (12, 96)}
    assert at[12].shape == (2, 12) and at[96].shape == (2, 96)
    assert (at[96][:, 24:] == reviews.text.pad_id).all()   # padding, as a deployed model sees it
    full = torch.stack([reviews.train[i][0] for i in range(2)])
    cut = (full != reviews.text.pad_id).sum(1) > 12   # rows longer than 12 tokens keep their [SEP] last
    assert cut.any() and (at[12][cut, -1] == reviews.text.sep_id).all()
    assert torch.equal(at[12][~cut], full[~cut, :12])
    assert count_flops(model, at[96]) > 4 * count_flops(model, at[12])


VIT_FACTORY = '''
import torch
from torch.utils.data import TensorDataset
from torchvision.models import VisionTransformer


def vit(num_classes, in_channels):
    return VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=num_classes)


def data():
    g = torch.Generator().manual_seed(0)
    make = lambda n: TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 3, (n,), generator=g))
    return make(64), make(32), make(32)
'''


def test_a_torchvision_vit_study_prunes_its_mlps(write_study, tmp_path):
    (tmp_path / "vits.py").write_text(VIT_FACTORY)
    study = write_study(
        name="vit", model={"factory": "vits:vit"}, data={"factory": "vits:data"},
        search_space={"pruning": {"method": "structured", "ratio": 0.5}}, constraints=[],
        objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "params", "direction": "minimize"}],
        budget={"trials": 1, "epochs": 1}, baseline={"epochs": 0}, warm_start={"recipes": False})
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(out)])
    assert result.exit_code == 0, result.output
    (trial,) = [r for r in record.read_all(optuna.load_study(study_name="vit", storage=f"sqlite:///{out / 'study.db'}"))
                if not r.baseline]
    assert trial.state.name == "COMPLETE", trial.fail_reason
    facts = trial.proof["pruning"]
    # the MLPs' hidden neurons go; the embedding width stays (tied to the patch projection, protected)
    assert set(facts["groups"]) == {"encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"}
    assert all(g["channels"] == [64, 32] for g in facts["groups"].values())
    assert trial.metrics["params"] == facts["params_after"] < facts["params_before"]
