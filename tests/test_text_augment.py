"""Text augmentation on token-id batches: each step changes about ``text_rate`` of the content
tokens, never a special token, keeps the shape and the padding at the end, follows its seed;
synonym tables; text-only choices refused on other data and image/signal/mix choices on text."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch.utils.data import TensorDataset

from autocompress.errors import ConfigError, TrialFailed
from autocompress.spec.policy import AugmentationPolicy, Policy
from autocompress.spec.space import load_space
from autocompress.spec.validate import policy_from_user
from autocompress.training.augment import (
    TEXT_POLICIES,
    Random,
    build_batch_transform,
    describe_policy,
    misfit,
)
from autocompress.training.augment.text import TextStep, TokenIds, load_synonyms

REPO = Path(__file__).resolve().parents[1]
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
WORDS = ["good", "great", "fine", "bad", "awful", "movie", "film", "new", "york", "plot"]
VOCAB = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
VOCAB.update({f"w{i}": i for i in range(len(VOCAB), 50)})
TOKEN_STEPS = [p for p in TEXT_POLICIES if p != "synonym"]


def tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


def text_info() -> types.SimpleNamespace:
    return types.SimpleNamespace(pad_id=PAD, cls_id=CLS, sep_id=SEP, mask_id=MASK, vocab_size=len(VOCAB),
                                 tokenizer=tokenizer())


def id_batch(n: int = 2000, length: int = 48, *, seed: int = 0, low: int = 5, full: bool = False) -> torch.Tensor:
    """Rows "[CLS] a [SEP]" or "[CLS] a [SEP] b [SEP]" of random content ids, padded at the end
    (``full``: every row fills the length, no padding)."""
    rng = np.random.default_rng(seed)
    rows = np.full((n, length), PAD, dtype=np.int64)
    for i in range(n):
        if full:
            a = int(rng.integers(3, length - 5))
            parts = [[CLS], rng.integers(low, 50, a), [SEP], rng.integers(low, 50, length - a - 3), [SEP]]
        else:
            parts = [[CLS], rng.integers(low, 50, rng.integers(3, 13)), [SEP]]
            if i % 2:
                parts += [rng.integers(low, 50, rng.integers(3, 11)), [SEP]]
        row = np.concatenate(parts)
        rows[i, :len(row)] = row
    return torch.as_tensor(rows)


def text_bundle(n: int = 64):
    from autocompress.zoo.data import DataBundle

    x = id_batch(n, 32)
    ds = TensorDataset(x, torch.arange(n) % 2)
    return DataBundle("texts", ds, ds, ds, 2, (32,), text=text_info())


def image_bundle():
    from autocompress.zoo.data import DataBundle

    ds = TensorDataset(torch.randn(8, 3, 8, 8), torch.arange(8) % 2)
    return DataBundle("synthetic", ds, ds, ds, 2, (3, 8, 8), color=True)


def step(policy: str, rate: float, table=None) -> TextStep:
    return TextStep(policy, TokenIds.of(text_info()), rate, table)


def content(x: torch.Tensor) -> torch.Tensor:
    return (x != PAD) & (x != CLS) & (x != SEP)


def specials(row: torch.Tensor) -> list[int]:
    return [int(t) for t in row if int(t) in (CLS, SEP)]


def segments(row: torch.Tensor) -> list[list[int]]:
    """The content tokens of each segment of a row."""
    out: list[list[int]] = []
    for t in row.tolist():
        if t in (CLS, SEP):
            out.append([])
        elif t != PAD:
            out[-1].append(t)
    return out


def is_subsequence(short: list[int], long: list[int]) -> bool:
    it = iter(long)
    return all(t in it for t in short)


# -- every token step ------------------------------------------------------------------------

def changed_share(policy: str, x: torch.Tensor, out: torch.Tensor) -> float:
    """The share of content tokens a step changed, in the step's own terms."""
    before, after = int(content(x).sum()), int(content(out).sum())
    if policy == "token_delete":
        return 1 - after / before
    if policy == "token_insert":
        return after / before - 1
    if policy == "token_mask":
        return float((out[content(x)] == MASK).float().mean())
    return float((out != x)[content(x)].float().mean())     # token_swap: tokens moved


@pytest.mark.parametrize("policy", TOKEN_STEPS)
@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_each_step_changes_about_rate_of_the_content_tokens(policy, rate):
    x = id_batch()
    original = x.clone()
    out = step(policy, rate)(x, Random(0))
    assert torch.equal(x, original)                          # the input batch is not modified
    assert out.shape == x.shape and out.dtype == torch.long
    assert changed_share(policy, x, out) == pytest.approx(rate, abs=0.025)


@pytest.mark.parametrize("policy", TOKEN_STEPS)
def test_steps_keep_special_tokens_and_padding_at_the_end(policy):
    x = id_batch(400)
    out = step(policy, 0.3)(x, Random(1))
    present = (out != PAD).int()
    assert torch.all(present[:, 1:] <= present[:, :-1])     # no token after a [PAD]
    assert torch.all(out[:, 0] == CLS)
    assert torch.all((out == MASK) <= (x == MASK) | content(x))   # [MASK] only where content was
    for row_in, row_out in zip(x, out):
        assert specials(row_out) == specials(row_in)
        seg_in, seg_out = segments(row_in), segments(row_out)
        if policy == "token_swap":                           # the same tokens, each in its segment
            assert [sorted(s) for s in seg_out] == [sorted(s) for s in seg_in]
        if policy == "token_delete":
            assert all(is_subsequence(o, i) for o, i in zip(seg_out, seg_in))
        if policy == "token_insert":
            assert all(is_subsequence(i, o) for o, i in zip(seg_out, seg_in))
    if policy in ("token_mask", "token_swap"):                # in place: specials never move
        assert torch.equal(out[~content(x)], x[~content(x)])


@pytest.mark.parametrize("policy", TOKEN_STEPS)
def test_steps_follow_their_seed_and_rate_zero_is_the_identity(policy):
    x = id_batch(200)
    first = step(policy, 0.2)(x, Random(3))
    assert torch.equal(first, step(policy, 0.2)(x, Random(3)))
    assert not torch.equal(first, step(policy, 0.2)(x, Random(4)))
    assert not torch.equal(first, x)
    assert torch.equal(step(policy, 0.0)(x, Random(3)), x)


def test_insertion_into_full_rows_truncates_content_and_keeps_the_final_sep():
    x = id_batch(300, 24, full=True)
    out = step("token_insert", 0.5)(x, Random(0))
    assert out.shape == x.shape
    assert torch.all(out[:, 0] == CLS) and torch.all(out[:, -1] == SEP)
    assert torch.all((out == SEP).sum(dim=1) == 2)           # the pair's middle [SEP] stays too
    assert not torch.equal(out, x)
    # the longest segment gives up tokens first: the two segments end up at most one apart or
    # the shorter one kept whole
    for row_in, row_out in zip(x[:50], out[:50]):
        (a_in, b_in), (a_out, b_out) = segments(row_in)[:2], segments(row_out)[:2]
        assert abs(len(a_out) - len(b_out)) <= 1 or len(a_out) >= len(a_in) or len(b_out) >= len(b_in)


def test_insertion_draws_content_tokens_never_special_ones():
    x = id_batch(500)
    out = step("token_insert", 0.5)(x, Random(0))
    assert int(((out == MASK) | (out == UNK)).sum()) == 0
    assert int((out == CLS).sum()) == int((x == CLS).sum()) and int((out == SEP).sum()) == int((x == SEP).sum())


# -- synonyms --------------------------------------------------------------------------------

TSV = "# word, synonyms\ngood\tgreat\tfine\nbad\tawful\nnew york\tplot\nmovie\tfilm\tmotion picture\n\n"
YAML = "good: [great, fine]\nbad: awful\nnew york: [plot]\nmovie: [film, motion picture]\n"
TABLE = {VOCAB["good"]: {VOCAB["great"], VOCAB["fine"]}, VOCAB["bad"]: {VOCAB["awful"]},
         VOCAB["movie"]: {VOCAB["film"]}}


@pytest.mark.parametrize("name, text", [("syn.tsv", TSV), ("syn.yaml", YAML)])
def test_synonym_table_keeps_single_token_entries_and_counts_the_others(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    table = load_synonyms(tmp_path / name, tokenizer())
    assert {k: set(v) for k, v in table.synonyms.items()} == TABLE
    assert sorted(table.skipped) == ["movie -> motion picture", "new york"]
    assert table.note().startswith("2 entries of ")


def test_synonym_replacement_changes_only_table_words_into_their_synonyms(tmp_path):
    (tmp_path / "syn.tsv").write_text(TSV)
    table = load_synonyms(tmp_path / "syn.tsv", tokenizer())
    x = id_batch(2000, low=5)                                # ids 5..49: words and w-tokens
    for rate in (1.0, 0.3):
        out = step("synonym", rate, table)(x, Random(0))
        assert out.shape == x.shape
        changed = out != x
        for word, syns in TABLE.items():
            at = x == word
            assert set(out[at & changed].tolist()) <= syns
            if rate == 1.0:
                assert torch.all(changed[at])
                assert set(out[at].tolist()) == syns         # every listed synonym is drawn
        eligible = torch.isin(x, torch.tensor(list(TABLE)))
        assert not changed[~eligible].any()                  # nothing else changes
        assert float(changed[eligible].float().mean()) == pytest.approx(rate, abs=0.03)


def test_synonym_policy_reads_its_table_relative_to_the_study_folder(tmp_path):
    (tmp_path / "syn.yaml").write_text(YAML)
    data = text_bundle()
    aug = AugmentationPolicy(policy="synonym", text_rate=0.5, synonyms="syn.yaml")
    tf = build_batch_transform(aug, data, seed=0, base_dir=tmp_path)
    assert tf.applied == ["synonym"]
    assert "new york" in tf.skipped["synonym entries"]
    with pytest.raises(TrialFailed, match="syn.yaml' cannot be read"):
        build_batch_transform(aug, data, seed=0, base_dir=tmp_path / "elsewhere")
    with pytest.raises(TrialFailed, match="needs augmentation.synonyms"):
        build_batch_transform(AugmentationPolicy(policy="synonym"), data, seed=0)
    (tmp_path / "none.tsv").write_text("new york\tplot\n")
    with pytest.raises(TrialFailed, match="no word with a synonym"):
        build_batch_transform(AugmentationPolicy(policy="synonym", synonyms=str(tmp_path / "none.tsv")), data, seed=0)


# -- the transform on text data, and what does not fit ----------------------------------------

def test_text_transform_augments_training_batches_per_seed():
    data = text_bundle()
    x, y = data.train[:32]
    tf = build_batch_transform(AugmentationPolicy(policy="token_mask", text_rate=0.3), data, seed=0)
    out, out_y = tf(x, y)
    assert tf.applied == ["token_mask"] and torch.equal(out_y, y)
    assert (out == MASK).any() and torch.equal(out[out != MASK], x[out != MASK])
    again, _ = build_batch_transform(AugmentationPolicy(policy="token_mask", text_rate=0.3), data, seed=0)(x, y)
    assert torch.equal(out, again)
    assert describe_policy(AugmentationPolicy(policy="token_mask", text_rate=0.3)) == \
        "augmentation: token_mask (30% of tokens)"


@pytest.mark.parametrize("kw, message", [
    ({"policy": "crop"}, "augmentation 'crop' is for images; data 'texts' is a text set (use one of: token_delete, "
                         "token_swap, token_insert, token_mask, synonym)"),
    ({"policy": "noise"}, "augmentation 'noise' is for 1D signals (C, L); data 'texts' is a text set"),
    ({"mix": "mixup"}, "mixup blends inputs; data 'texts' is a text set of token ids, which cannot be mixed"),
    ({"mix": "cutmix"}, "cutmix cuts a spatial or time window; data 'texts' is a text set"),
])
def test_image_signal_and_mix_choices_are_refused_on_text(kw, message):
    with pytest.raises(TrialFailed) as err:
        build_batch_transform(AugmentationPolicy(**kw), text_bundle(), seed=0)
    assert err.value.reason == message
    knob, value = next(iter(kw.items()))
    assert misfit(knob, value, text_bundle()) == message


@pytest.mark.parametrize("policy", TEXT_POLICIES)
def test_text_policies_are_refused_on_images(policy):
    with pytest.raises(TrialFailed) as err:
        build_batch_transform(AugmentationPolicy(policy=policy), image_bundle(), seed=0)
    assert err.value.reason == f"augmentation '{policy}' is for text; data 'synthetic' is an image set"
    assert misfit("policy", policy, image_bundle()) == err.value.reason
    assert misfit("policy", policy, text_bundle()) is None   # synonym: its table is checked per trial


# -- the knobs -------------------------------------------------------------------------------

def test_text_knobs_round_trip_through_flat_params_and_yaml():
    policy = Policy(augmentation=AugmentationPolicy(policy="synonym", text_rate=0.25, synonyms="tables/syn.tsv"))
    flat = policy.to_flat()
    assert flat["augmentation.text_rate"] == 0.25 and flat["augmentation.synonyms"] == "tables/syn.tsv"
    assert Policy.from_flat(flat) == policy
    assert Policy.from_yaml(policy.to_yaml()) == policy
    assert Policy.from_flat({"augmentation.text_rate": 0}).augmentation.text_rate == 0.0
    with pytest.raises(ConfigError, match="outside the valid range"):
        policy_from_user({"augmentation": {"text_rate": 0.7}}, "policy.yaml")


def test_the_transformer_space_samples_text_policies_that_build():
    space = load_space(REPO / "search_spaces" / "transformer.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    data, seen = text_bundle(), set()
    for _ in range(60):
        trial = study.ask()
        aug = space.sample(trial).augmentation
        assert aug.mix == "none" and (aug.policy == "none" or 0.05 <= aug.text_rate <= 0.3)
        build_batch_transform(aug, data, seed=0)
        seen.add(aug.policy)
        study.tell(trial, 0.0)
    assert seen == {"none", *TOKEN_STEPS}
