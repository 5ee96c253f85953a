"""Hugging Face sequence classifiers as autocompress models: one tensor of token ids in, logits out.

Every technique, metric and runtime of the engine handles a model that takes one tensor. Text
reaches models as token ids padded with the tokenizer's pad id (``zoo.text``), so the attention
mask is ``ids != pad_id`` and, for a text pair ("[CLS] a [SEP] b [SEP]"), the token types are 1
after the first [SEP]: ``TextClassifier`` derives both inside ``forward``, and the model is still
``model(ids) -> logits`` for FLOPs, latency, calibration, ONNX export (batch and sequence axes
dynamic) and TorchScript.

``model: {transformers: {path: dir}}`` loads a ``save_pretrained`` directory (never a hub
download); ``model: {transformers: {config: {model_type: bert, ...}}}`` builds one from a config
with random init. Keys a config class does not have are refused (transformers would keep them
silently), as are a tokenizer larger than the embeddings and a sequence longer than the
position embeddings.

transformers is imported only where such a model is asked for (about 2 s here).
"""

from __future__ import annotations

import contextlib
import difflib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from autocompress.utils import quiet_torchao_import

KEYS = ("path", "config")


@dataclass(frozen=True)
class TokenLayout:
    """What a text model needs to know of its inputs (recorded in ``structure.json`` as ``text``)."""
    pad_id: int
    sep_id: int | None
    vocab_size: int
    seq_len: int

    @classmethod
    def of(cls, text: Any) -> TokenLayout:
        """From a ``zoo.text.TextInfo`` or a recorded dict."""
        if isinstance(text, dict):
            return cls(int(text["pad_id"]), text.get("sep_id"), int(text["vocab_size"]), int(text["seq_len"]))
        return cls(int(text.pad_id), getattr(text, "sep_id", None), int(text.vocab_size), int(text.seq_len))

    def to_dict(self) -> dict[str, Any]:
        return {"pad_id": self.pad_id, "sep_id": self.sep_id, "vocab_size": self.vocab_size, "seq_len": self.seq_len}


class TextClassifier(nn.Module):
    """``model(ids) -> logits`` around a Hugging Face sequence classifier: the attention mask is
    ``ids != pad_id``; token types (where the model has them) are 1 after the first [SEP]."""

    def __init__(self, model: nn.Module, pad_id: int, sep_id: int | None) -> None:
        super().__init__()
        self.model = model
        self.pad_id = int(pad_id)
        self.sep_id = -1 if sep_id is None else int(sep_id)
        self.token_types = int(getattr(model.config, "type_vocab_size", 0) or 0) > 1 and sep_id is not None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_id).long()
        if not self.token_types:
            return self.model(input_ids=input_ids, attention_mask=mask).logits
        sep = (input_ids == self.sep_id).long()
        after_first = (sep.cumsum(1) - sep) > 0
        types = (after_first & (mask > 0)).long()
        return self.model(input_ids=input_ids, attention_mask=mask, token_type_ids=types).logits


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers logs a warning for every freshly initialised classifier head, and notes on the
    config at every trace (TorchScript, ONNX): errors only, unless ``-v`` asked for more (the
    root logger at DEBUG)."""
    from transformers.utils import logging as hf_logging

    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        hf_logging.set_verbosity_error()
    with quiet_torchao_import():   # building a model imports torchao where it is installed
        yield


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError("model.transformers needs the transformers package (pip install 'transformers>=5')") from None
    return transformers


def check_options(options: Any) -> dict[str, Any]:
    """``{path: dir}`` or ``{config: {model_type: ..., ...}}``; ValueError naming the problem."""
    if not isinstance(options, dict):
        raise ValueError("expected {path: a save_pretrained directory} or {config: {model_type: ..., ...}}")
    unknown = [k for k in options if k not in KEYS]
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}' (use one of: {', '.join(KEYS)})")
    if ("path" in options) == ("config" in options):
        raise ValueError("give exactly one of path (a save_pretrained directory) and config (built with random init)")
    if "config" in options and (not isinstance(options["config"], dict) or "model_type" not in options["config"]):
        raise ValueError("config needs model_type (e.g. bert, distilbert, roberta) and the sizes to build")
    return options


def _config(options: dict[str, Any], num_classes: int, layout: TokenLayout | None):
    transformers = _transformers()
    raw = dict(options["config"])
    kind = raw.pop("model_type")
    mapping = transformers.CONFIG_MAPPING
    if kind not in mapping:
        near = difflib.get_close_matches(str(kind), list(mapping.keys()), n=3)
        raise ValueError(f"config.model_type '{kind}' is not a transformers model type"
                         + (f" (did you mean: {', '.join(near)}?)" if near else ""))
    known = set(mapping[kind]().to_dict())
    unknown = [k for k in raw if k not in known]
    if unknown:
        near = difflib.get_close_matches(unknown[0], sorted(known), n=3)
        raise ValueError(f"config.{unknown[0]} is not a field of {mapping[kind].__name__}"
                         + (f" (did you mean: {', '.join(near)}?)" if near else ""))
    if layout is not None:
        raw.setdefault("vocab_size", layout.vocab_size)
        raw.setdefault("pad_token_id", layout.pad_id)
    return transformers.AutoConfig.for_model(kind, num_labels=num_classes, **raw)


def _check_fits(config: Any, layout: TokenLayout | None, where: str) -> None:
    if layout is None:
        return
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and layout.vocab_size > vocab:
        raise ValueError(f"the tokenizer has {layout.vocab_size} tokens but {where} has embeddings for "
                         f"{vocab} (vocab_size): token ids past {vocab - 1} would index nothing")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and layout.seq_len > positions:
        raise ValueError(f"seq_len {layout.seq_len} is longer than {where}'s position embeddings "
                         f"(max_position_embeddings {positions})")


def transformers_model(options: Any, *, num_classes: int, text: Any, base_dir: Path) -> nn.Module:
    """A ``TextClassifier`` from the study's ``model.transformers`` section (random init for a
    config; the directory's weights for a path, with a fresh classifier head where the class count
    differs). ``text`` is the data's ``TextInfo`` (or a recorded ``TokenLayout`` dict)."""
    options = check_options(options)
    if text is None:
        raise ValueError("a transformers model takes token ids: use text data (data.text, or data.builtin: reviews)")
    layout = TokenLayout.of(text)
    transformers = _transformers()
    with _quiet():
        if "config" in options:
            config = _config(options, num_classes, layout)
            _check_fits(config, layout, "model.transformers.config")
            model = transformers.AutoModelForSequenceClassification.from_config(config)
        else:
            path = Path(str(options["path"])).expanduser()
            path = path if path.is_absolute() else base_dir / path
            if not path.is_dir():
                raise ValueError(f"'{options['path']}' is not a local directory (one written by save_pretrained); "
                                 "autocompress never downloads models")
            try:
                config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:   # noqa: BLE001 - no config.json, an unreadable one
                raise ValueError(f"'{path}' holds no readable config.json ({type(exc).__name__})") from None
            _check_fits(config, layout, str(path))
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True, num_labels=num_classes, ignore_mismatched_sizes=True)
    return TextClassifier(model.eval(), layout.pad_id, layout.sep_id)
