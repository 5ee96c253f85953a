"""Text data: files and saved data sets in, token ids and class indices out (zoo.text)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("tokenizers")

from autocompress.errors import ConfigError  # noqa: E402
from autocompress.spec.fields import DataSpec  # noqa: E402
from autocompress.zoo.data import build_data  # noqa: E402
from autocompress.zoo.reviews import builtin_text  # noqa: E402
from autocompress.zoo.text import TextInfo, load_tokenizer, read_table, train_wordpiece  # noqa: E402

ROWS = [{"text": f"the {w} movie was {a}", "other": f"i {v} it", "label": lab}
        for w, a, v, lab in [("old", "fun", "liked", "pos"), ("new", "dull", "hated", "neg"),
                             ("long", "great", "loved", "pos"), ("short", "boring", "left", "neg"),
                             ("odd", "lovely", "enjoyed", "pos"), ("big", "awful", "skipped", "neg")] * 5]


def write_table(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
    return path


def build(tmp_path: Path, **text) -> object:
    return build_data(DataSpec(text=text), seed=0, source=str(tmp_path / "study.yaml"))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_a_table_becomes_token_ids_and_class_indices(tmp_path, suffix):
    write_table(tmp_path / f"train{suffix}", ROWS)
    bundle = build(tmp_path, train=f"train{suffix}", seq_len=12)  # relative to the study file
    info = bundle.text
    assert bundle.kind == "text" and bundle.input_shape == (12,) and bundle.num_classes == 2
    assert info.label_names == ("neg", "pos") and not info.pair and not bundle.flip_ok
    assert [s.size for s in bundle.splits] == [24, 3, 3]  # 10% + 10% carved out of train
    assert "carved from train" in bundle.splits[1].origin
    ids, y = bundle.train.tensors
    assert ids.dtype == torch.long and ids.shape == (24, 12) and y.dtype == torch.long
    assert (ids[:, 0] == info.cls_id).all() and info.pad_id == 0
    # every row is "[CLS] the <w> movie was <a> [SEP]" then padding
    assert (ids[:, 6] == info.sep_id).all() and (ids[:, 7:] == 0).all()
    texts = [info.tokenizer.decode(row.tolist()) for row in ids]
    for text, label in zip(texts, y.tolist()):
        row = next(r for r in ROWS if r["text"] == text)
        assert info.label_names[label] == row["label"]


def test_int_labels_sort_numerically_and_pairs_are_laid_out_with_two_seps(tmp_path):
    rows = [{**r, "label": {"pos": 10, "neg": 2}[r["label"]]} for r in ROWS]
    write_table(tmp_path / "train.jsonl", rows)
    write_table(tmp_path / "val.jsonl", rows[:6])
    bundle = build(tmp_path, train="train.jsonl", val="val.jsonl", text_fields=["text", "other"], seq_len=16)
    info = bundle.text
    assert info.pair and info.label_names == ("2", "10")  # not "10" < "2"
    assert [s.size for s in bundle.splits] == [27, 6, 3] and bundle.splits[1].origin == "val.jsonl"
    ids, y = bundle.val.tensors
    assert y.tolist() == [1, 0, 1, 0, 1, 0]
    seps = (ids[0] == info.sep_id).nonzero().flatten().tolist()
    assert ids[0, 0] == info.cls_id and seps == [6, 10]  # [CLS] 5 words [SEP] i liked it [SEP]
    assert (ids[0, 11:] == info.pad_id).all()


def test_truncation_keeps_cls_and_ends_with_sep(tmp_path):
    tok = train_wordpiece([r["text"] for r in ROWS], vocab_size=100)
    info = TextInfo(tok, 5, 0, ("neg", "pos"), False, True)
    ids = info.encode(["the old movie was fun indeed", "fun"])
    assert ids.shape == (2, 5)
    assert ids[0].tolist() == [info.cls_id, *tok.encode("the old movie", add_special_tokens=False).ids, info.sep_id]
    assert ids[1].tolist()[2:] == [info.sep_id, 0, 0]
    assert tok.padding is None and tok.truncation is None  # the caller's tokenizer is left as it was


def test_wordpiece_training_is_deterministic_and_pad_is_zero():
    (texts, _), _, _ = builtin_text(0, n_train=300, n_val=1, n_test=1)
    first, second = train_wordpiece(texts, 200), train_wordpiece(texts, 200)
    assert first.get_vocab() == second.get_vocab()
    assert [first.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert first.get_vocab_size() == 200


def test_text_info_and_tokenizer_survive_save_and_load(tmp_path):
    write_table(tmp_path / "train.csv", ROWS)
    info = build(tmp_path, train="train.csv", seq_len=10).text
    info.save(tmp_path / "saved")
    again = TextInfo.load(tmp_path / "saved")
    assert (again.seq_len, again.pad_id, again.label_names, again.pair) == (10, 0, ("neg", "pos"), False)
    sample = ["the big movie was lovely", "an unseen word zebra"]
    assert torch.equal(again.encode(sample), info.encode(sample))
    # a tokenizer directory given to the study is used as it is, not retrained
    bundle = build(tmp_path, train="train.csv", tokenizer="saved", seq_len=10)
    assert bundle.text.tokenizer.get_vocab() == info.tokenizer.get_vocab()
    assert torch.equal(bundle.text.encode(sample), info.encode(sample))
    assert load_tokenizer(tmp_path / "saved" / "tokenizer.json").get_vocab() == info.tokenizer.get_vocab()


def test_a_save_to_disk_directory_with_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    cols = lambda rows: {k: [r[k] for r in rows] for k in ("text", "label")}  # noqa: E731
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(cols(ROWS)),
                               "test": datasets.Dataset.from_dict(cols(ROWS[:4]))})
    dd.save_to_disk(str(tmp_path / "saved_ds"))
    bundle = build(tmp_path, path="saved_ds", seq_len=8)
    assert [s.size for s in bundle.splits] == [27, 3, 4]
    assert bundle.splits[2].origin == "saved_ds [test]" and bundle.text.label_names == ("neg", "pos")
    assert bundle.test.tensors[1].tolist() == [1, 0, 1, 0]


def test_the_builtin_reviews_task_is_seeded_balanced_and_beats_bag_of_words():
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    (train, y_train), _, (test, y_test) = builtin_text(0)
    assert builtin_text(0)[0] == (train, y_train) and builtin_text(1)[0][0] != train
    assert 0.45 < y_train.count("positive") / len(y_train) < 0.55 and set(y_train) == {"negative", "positive"}
    words = CountVectorizer(token_pattern=r"[^ ]+")
    bag = LogisticRegression(max_iter=2000).fit(words.fit_transform(train), y_train)
    accuracy = bag.score(words.transform(test), y_test)
    assert 0.55 < accuracy < 0.72  # the docstring of zoo.reviews says about 62%


def test_builtin_reviews_shorthand_gives_a_text_bundle():
    bundle = build_data(DataSpec(builtin="reviews"), seed=0)
    assert bundle.name == "reviews" and bundle.kind == "text" and bundle.num_classes == 2
    assert [s.size for s in bundle.splits] == [2000, 400, 400]
    assert bundle.text.label_names == ("negative", "positive")
    with pytest.raises(ConfigError, match="choose from: digits, reviews"):
        build_data(DataSpec(builtin="imdb"), seed=0)


def test_read_table_names_the_file_and_the_missing_column(tmp_path):
    path = write_table(tmp_path / "train.csv", ROWS)
    with pytest.raises(ValueError, match="has no column 'review'.*text, other, label"):
        read_table(path, ["review"], "label")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_table(tmp_path / "empty.csv", ["text"], "label")


@pytest.mark.parametrize("options, words", [
    ({"train": "train.csv", "text_fields": ["review"]}, ["train.csv", "no column 'review'"]),
    ({"train": "train.csv", "val": "val.csv"}, ["val split", "meh"]),
    ({"train": "train.csv", "tokenizer": "bert-base-uncased"}, ["bert-base-uncased", "never downloads"]),
    ({"train": "train.csv", "max_len": 32}, ["unknown option max_len", "seq_len"]),
    ({"builtin": "reviews", "train": "train.csv"}, ["exactly one of builtin, train, path"]),
])
def test_bad_text_options_are_config_errors_naming_data_text(tmp_path, options, words):
    write_table(tmp_path / "train.csv", ROWS)
    write_table(tmp_path / "val.csv", [{**ROWS[0], "label": "meh"}, ROWS[1]])
    with pytest.raises(ConfigError) as err:
        build(tmp_path, **options)
    assert "data.text" in str(err.value)
    for word in words:
        assert word in str(err.value)
