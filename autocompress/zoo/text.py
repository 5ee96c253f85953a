"""Text classification data: texts in, one LongTensor of token ids per sample out.

A sample is ``ids`` of shape ``(seq_len,)``: "[CLS] a [SEP]" (or "[CLS] a [SEP] b [SEP]" for a
pair), truncated to ``seq_len`` and padded with the pad id (0 for a tokenizer trained here).
Models derive ``attention_mask = ids != pad_id`` and the token types from the first [SEP]. A
split is ``TensorDataset(ids LongTensor[N, L], labels LongTensor[N])``; the ``TextInfo`` that
made the ids travels with the ``DataBundle`` (``bundle.text``) and is saved next to a model.

The tokenizer is a local ``tokenizer.json`` (``tokenizers`` or a Hugging Face
``save_pretrained`` directory; never downloaded) or a WordPiece vocabulary trained here on the
training texts only. Files are read by ``zoo.text_files``; the built-in task is ``zoo.reviews``.
``text_data`` gives the splits and their ``TextInfo``; ``zoo.data.build_data`` wraps them in a
``DataBundle`` (this module sits below ``zoo.data``, which imports it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from autocompress.zoo.reviews import builtin_text
from autocompress.zoo.splits import Split, complete
from autocompress.zoo.text_files import Texts, read_saved_dataset, read_table, table_format

__all__ = ["TextInfo", "builtin_text", "load_tokenizer", "read_saved_dataset", "read_table",
           "text_data", "train_wordpiece", "TextSplits"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
OPTIONS = {"builtin": None, "train": None, "val": None, "test": None, "path": None, "format": "auto",
           "text_fields": ["text"], "label_field": "label", "tokenizer": None, "vocab_size": 2000,
           "seq_len": 64, "lowercase": True, "val_fraction": 0.1, "test_fraction": 0.1}


@dataclass(frozen=True)
class TextSplits:
    """What ``text_data`` built: ``zoo.data.build_data`` makes the ``DataBundle`` of it."""
    name: str
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    info: "TextInfo"
    splits: tuple[Split, ...]     # size and origin of train, val and test


@dataclass(frozen=True)
class TextInfo:
    """How texts become ids: the tokenizer, the length of every sample, the class names."""
    tokenizer: Any                # tokenizers.Tokenizer
    seq_len: int
    pad_id: int
    label_names: tuple[str, ...]
    pair: bool                    # two text fields per sample
    lowercase: bool

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    @property
    def sep_id(self) -> int:
        return self.tokenizer.token_to_id("[SEP]")

    @property
    def cls_id(self) -> int:
        return self.tokenizer.token_to_id("[CLS]")

    @property
    def mask_id(self) -> int | None:
        return self.tokenizer.token_to_id("[MASK]")

    @cached_property
    def _fixed_length(self) -> Any:
        # a copy, so the caller's tokenizer keeps its own padding and truncation settings
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self.tokenizer.to_str())
        tok.enable_truncation(max_length=self.seq_len)
        tok.enable_padding(length=self.seq_len, pad_id=self.pad_id,
                           pad_token=self.tokenizer.id_to_token(self.pad_id) or "[PAD]")
        return tok

    def encode(self, texts: Texts) -> torch.Tensor:
        """LongTensor[N, seq_len] of the texts (strings, or (a, b) pairs)."""
        if not texts:
            return torch.zeros(0, self.seq_len, dtype=torch.long)
        batch = [tuple(t) if isinstance(t, (tuple, list)) else t for t in texts]
        return torch.tensor([e.ids for e in self._fixed_length.encode_batch(batch)], dtype=torch.long)

    def save(self, folder: str | Path) -> None:
        """``tokenizer.json`` and ``text.json`` (everything else) in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(folder / "tokenizer.json"))
        meta = {"seq_len": self.seq_len, "pad_id": self.pad_id, "label_names": list(self.label_names),
                "pair": self.pair, "lowercase": self.lowercase}
        (folder / "text.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def to_dict(self) -> dict[str, Any]:
        """Everything, the tokenizer as its JSON text (``structure.json`` carries it, so every saved
        model can read raw text)."""
        return {"seq_len": self.seq_len, "pad_id": self.pad_id, "sep_id": self.sep_id, "vocab_size": self.vocab_size,
                "label_names": list(self.label_names), "pair": self.pair, "lowercase": self.lowercase,
                "tokenizer": self.tokenizer.to_str()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TextInfo":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(d["tokenizer"]), int(d["seq_len"]), int(d["pad_id"]), tuple(d["label_names"]),
                   bool(d["pair"]), bool(d["lowercase"]))

    @classmethod
    def load(cls, folder: str | Path) -> "TextInfo":
        folder = Path(folder)
        meta = json.loads((folder / "text.json").read_text(encoding="utf-8"))
        return cls(load_tokenizer(folder), int(meta["seq_len"]), int(meta["pad_id"]),
                   tuple(meta["label_names"]), bool(meta["pair"]), bool(meta["lowercase"]))


def train_wordpiece(texts: Texts, vocab_size: int, lowercase: bool = True) -> Any:
    """A WordPiece tokenizer (BERT normalizer and pre-tokenizer, [PAD]=0, [UNK], [CLS], [SEP],
    [MASK]) trained on ``texts``; the same texts give the same vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    flat = [part for t in texts for part in (t if isinstance(t, (tuple, list)) else (t,))]
    # The trainer numbers its "##x" pieces in hash-map order, and those numbers break ties
    # between merges (huggingface/tokenizers#1794): numbered first here, in sorted order, the
    # vocabulary is the same on every run. They stay ordinary vocabulary entries (below).
    chars = sorted({c for t in flat for c in tok.normalizer.normalize_str(t) if not c.isspace()})
    pieces = [f"##{c}" for c in chars]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=[*SPECIAL_TOKENS, *pieces],
                                        show_progress=False)
    tok.train_from_iterator(flat, trainer=trainer, length=len(flat))
    config = json.loads(tok.to_str())
    config["added_tokens"] = [t for t in config["added_tokens"] if t["content"] in SPECIAL_TOKENS]
    tok = Tokenizer.from_str(json.dumps(config))
    tok.decoder = decoders.WordPiece()
    _add_template(tok)
    return tok


def _add_template(tok: Any) -> None:
    from tokenizers import processors

    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])


def load_tokenizer(path: str | Path) -> Any:
    """A local tokenizer: a directory holding ``tokenizer.json`` or that file; never the hub."""
    from tokenizers import Tokenizer

    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"tokenizer directory '{path}' holds no tokenizer.json")
    elif not file.is_file():
        raise ValueError(f"tokenizer '{path}' is not a local tokenizer.json or a directory holding one "
                         "(autocompress never downloads tokenizers)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:
        raise ValueError(f"'{file}' does not read as a tokenizer.json: {exc}") from None
    missing = [name for name in ("[CLS]", "[SEP]") if tok.token_to_id(name) is None]
    if _pad_token(tok) is None:
        missing.insert(0, "[PAD]")
    if missing:
        raise ValueError(f"tokenizer '{path}' has no {', '.join(missing)} token")
    if tok.post_processor is None:  # a bare vocabulary: add [CLS]/[SEP] the way ours does
        _add_template(tok)
    return tok


def _pad_token(tok: Any) -> str | None:
    padding = tok.padding or {}
    for name in ("[PAD]", padding.get("pad_token"), "<pad>"):
        if name and tok.token_to_id(name) is not None:
            return name
    return None


def text_data(options: dict, *, seed: int, base_dir: Path) -> TextSplits:
    """The splits of the study's ``data.text`` section as token ids (see ``OPTIONS``): a split
    the data does not have is carved out of train (``zoo.splits.complete``) before the
    tokenizer, where trained here, sees any text."""
    opts = _options(options)
    rooted = {k: _rooted(opts[k], base_dir) for k in ("train", "val", "test", "path") if opts[k] is not None}
    given, origins, name = _builtin(seed) if opts["builtin"] is not None else _read(opts, rooted)
    label_names = _label_names(given["train"][1])
    index = {label: i for i, label in enumerate(label_names)}
    for split in ("val", "test"):
        unseen = sorted(set(given[split][1]) - set(index)) if given.get(split) else []
        if unseen:
            raise ValueError(f"the {split} split has labels that train never has: {', '.join(unseen)}")
    labels = {k: torch.tensor([index[v] for v in part[1]], dtype=torch.long) for k, part in given.items() if part}
    rows = {k: TensorDataset(torch.arange(len(y)), y) for k, y in labels.items()}
    carved, records = complete({k: rows.get(k) for k in ("train", "val", "test")}, origins,
                               fractions={"val": opts["val_fraction"], "test": opts["test_fraction"]}, seed=seed)
    picked = [_rows_of(ds, rows) for ds in carved]  # (the split read, its row numbers) per split
    texts = [[given[src][0][i] for i in idx] for src, idx in picked]
    tokenizer = (load_tokenizer(_rooted(opts["tokenizer"], base_dir)) if opts["tokenizer"]
                 else train_wordpiece(texts[0], int(opts["vocab_size"]), bool(opts["lowercase"])))
    info = TextInfo(tokenizer, int(opts["seq_len"]), tokenizer.token_to_id(_pad_token(tokenizer)),
                    label_names, len(opts["text_fields"]) == 2, bool(opts["lowercase"]))
    train, val, test = (TensorDataset(info.encode(t), labels[src][idx]) for t, (src, idx) in zip(texts, picked))
    return TextSplits(name, train, val, test, info, records)


def _options(options: Any) -> dict:
    if not isinstance(options, dict):
        raise ValueError("expected a mapping such as {builtin: reviews} or {train: path, ...}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option {', '.join(unknown)} (valid options: {', '.join(OPTIONS)})")
    opts = {**OPTIONS, **options}
    sources = [k for k in ("builtin", "train", "path") if opts[k] is not None]
    if len(sources) != 1:
        raise ValueError("give exactly one of builtin, train, path")
    if opts["builtin"] is not None and opts["builtin"] != "reviews":
        raise ValueError(f"unknown built-in text data set '{opts['builtin']}' (choose from: reviews)")
    fields = [opts["text_fields"]] if isinstance(opts["text_fields"], str) else list(opts["text_fields"])
    if len(fields) not in (1, 2) or not all(isinstance(f, str) for f in fields):
        raise ValueError(f"text_fields must name 1 or 2 columns (got {opts['text_fields']!r})")
    if int(opts["seq_len"]) < 3 or int(opts["vocab_size"]) < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"seq_len must be at least 3 and vocab_size above {len(SPECIAL_TOKENS)}")
    return {**opts, "text_fields": fields}


def _rooted(path: Any, base_dir: Path) -> Path:
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def _builtin(seed: int) -> tuple[dict, dict, str]:
    parts = dict(zip(("train", "val", "test"), builtin_text(seed)))
    return parts, dict.fromkeys(parts, f"reviews: generated with seed {seed}"), "reviews"


def _read(opts: dict, paths: dict[str, Path]) -> tuple[dict, dict, str]:
    fields, label = opts["text_fields"], opts["label_field"]
    if "path" in paths:
        if table_format(paths["path"], opts["format"]) != "datasets":
            raise ValueError(f"path: '{paths['path']}' must be a save_to_disk directory (give train: for a file)")
        given = {k: read_saved_dataset(paths["path"], k, fields, label) for k in ("train", "val", "test")}
        if given["train"] is None:
            raise ValueError(f"saved data set '{paths['path']}' has no train split")
        return given, {k: f"{paths['path'].name} [{k}]" for k in given}, paths["path"].name
    given = {}
    for k, p in paths.items():
        kind = table_format(p, opts["format"])
        given[k] = (read_saved_dataset(p, "train", fields, label) if kind == "datasets"
                    else read_table(p, fields, label, kind))
    return given, {k: p.name for k, p in paths.items()}, paths["train"].stem


def _label_names(labels: list[str]) -> tuple[str, ...]:
    unique = set(labels)
    try:
        return tuple(sorted(unique, key=int))
    except ValueError:
        return tuple(sorted(unique))


def _rows_of(ds: Any, rows: dict[str, TensorDataset]) -> tuple[str, torch.Tensor]:
    base, idx = (ds.dataset, torch.tensor(ds.indices, dtype=torch.long)) if isinstance(ds, Subset) else (ds, None)
    src = next(k for k, r in rows.items() if r is base)
    return src, torch.arange(len(base)) if idx is None else idx


class TextModel(nn.Module):
    """A model with its tokenizer: call it on a string, a list of strings (or (a, b) pairs), or
    token ids; ``predict`` gives class names."""

    def __init__(self, model: nn.Module, text: TextInfo) -> None:
        super().__init__()
        self.model = model
        self.text = text

    def forward(self, x: Any) -> torch.Tensor:
        if isinstance(x, str):
            x = [x]
        if not isinstance(x, torch.Tensor):
            x = self.text.encode(list(x))
        return self.model(x)

    @torch.no_grad()
    def predict(self, texts: Any) -> list[str]:
        return [self.text.label_names[i] for i in self(texts).argmax(1).tolist()]
