"""Augmentation steps for token-id batches shaped (N, L): deletion, swap, insertion, masking,
synonym replacement (the EDA recipe of Wei & Zou, 2019, plus BERT-style masking).

Rows are laid out ``[CLS] tokens [SEP]`` or ``[CLS] a [SEP] b [SEP]`` and padded at the end.
Every step changes about ``rate`` of a row's content tokens, never touches [CLS], [SEP] or
[PAD], keeps the shape (N, L) and leaves the padding at the end. Draws come from the
transform's ``Random``, so a trial's augmentation depends on its seed only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import Tensor

from autocompress.errors import TrialFailed
from autocompress.training.augment.base import Random

TEXT_POLICIES = ("token_delete", "token_swap", "token_insert", "token_mask", "synonym")

SYNONYM_SUFFIXES = (".yaml", ".yml", ".tsv")


@dataclass(frozen=True)
class TokenIds:
    """The special ids of a tokenizer, and the ids an insertion may draw."""
    pad: int
    cls: int
    sep: int
    mask: int
    vocab_size: int
    content_ids: tuple[int, ...]      # the vocabulary without special tokens

    @classmethod
    def of(cls, info: Any) -> "TokenIds":
        """From a ``zoo.text.TextInfo``; tokens written like ``[UNK]`` or ``<s>`` are special."""
        special = {info.pad_id, info.cls_id, info.sep_id, info.mask_id}
        tok = getattr(info, "tokenizer", None)

        def bracketed(i: int) -> bool:
            name = tok.id_to_token(i) if tok is not None else None
            return bool(name) and len(name) > 2 and (name[0], name[-1]) in (("[", "]"), ("<", ">"))

        content = tuple(i for i in range(info.vocab_size) if i not in special and not bracketed(i))
        return cls(info.pad_id, info.cls_id, info.sep_id, info.mask_id, info.vocab_size, content)

    def content(self, x: Tensor) -> Tensor:
        """Where ``x`` holds a token that a step may change."""
        return (x != self.pad) & (x != self.cls) & (x != self.sep)

    def segments(self, x: Tensor) -> Tensor:
        """The segment of each position: the count of [CLS]/[SEP] up to it."""
        return ((x == self.cls) | (x == self.sep)).long().cumsum(dim=1)


@dataclass(frozen=True)
class SynonymTable:
    """Token id -> ids of its synonyms; words or synonyms that are not one token are skipped."""
    synonyms: dict[int, tuple[int, ...]]
    skipped: tuple[str, ...]          # table entries that are not a single token
    source: str

    def note(self) -> str | None:
        """One line on what was left out of the table, for the trial's record."""
        if not self.skipped:
            return None
        shown = ", ".join(self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
        return f"{len(self.skipped)} entries of {self.source} are not single tokens: {shown}"


def _draw(x: Tensor, r: Random, rate: float) -> Tensor:
    """A Bernoulli(rate) mask shaped like ``x``."""
    return torch.rand(x.shape, generator=r.gen).to(x.device) < rate


def token_mask(x: Tensor, r: Random, ids: TokenIds, rate: float) -> Tensor:
    """Each content token becomes [MASK] with probability ``rate``."""
    return torch.where(ids.content(x) & _draw(x, r, rate), torch.full_like(x, ids.mask), x)


def token_delete(x: Tensor, r: Random, ids: TokenIds, rate: float) -> Tensor:
    """Each content token is dropped with probability ``rate``; the rows close up and are
    padded again at the end."""
    keep = (x != ids.pad) & ~(ids.content(x) & _draw(x, r, rate))
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    out = x.gather(1, order)
    tail = torch.arange(x.shape[1], device=x.device)[None, :] >= keep.sum(dim=1, keepdim=True)
    return out.masked_fill(tail, ids.pad)


def token_swap(x: Tensor, r: Random, ids: TokenIds, rate: float) -> Tensor:
    """About ``rate`` of the content tokens change place, swapped in random pairs within their
    segment (an odd one out joins the last pair in a 3-cycle; a lone one swaps, every other
    time, with another token of its segment)."""
    pick, seg = (ids.content(x) & _draw(x, r, rate)).cpu().numpy(), ids.segments(x).cpu().numpy()
    content = ids.content(x).cpu().numpy()
    out = x.cpu().numpy().copy()
    for i in np.flatnonzero(pick.any(axis=1)):
        row = out[i]
        for s in np.unique(seg[i][pick[i]]):
            order = r.rng.permutation(np.flatnonzero(pick[i] & (seg[i] == s)))
            if len(order) == 1:  # swapping it moves two tokens: done half the time, one on average
                others = np.flatnonzero(content[i] & (seg[i] == s) & ~pick[i])
                if not len(others) or r.rng.random() < 0.5:
                    continue
                order = np.append(order, r.rng.choice(others))
            paired = len(order) - 3 if len(order) % 2 else len(order)
            a, b = order[0:paired:2], order[1:paired:2]
            row[a], row[b] = row[b].copy(), row[a].copy()
            if len(order) % 2:
                tail = order[paired:]
                row[tail] = row[np.roll(tail, 1)].copy()
    return torch.as_tensor(out, device=x.device)


def token_insert(x: Tensor, r: Random, ids: TokenIds, rate: float) -> Tensor:
    """After each content token, with probability ``rate``, a new token: half the time a random
    content token of the vocabulary, else a copy of a content token of the same row. A row
    that outgrows L loses content tokens from the end of its longest segment (special tokens,
    the final [SEP] included, always stay)."""
    length = x.shape[1]
    pick, content = (ids.content(x) & _draw(x, r, rate)).cpu().numpy(), ids.content(x).cpu().numpy()
    rows = x.cpu().numpy()
    out = rows.copy()
    vocab = np.asarray(ids.content_ids)
    for i in np.flatnonzero(pick.any(axis=1)):
        present = rows[i] != ids.pad
        tokens, picked = rows[i][present], pick[i][present]
        own = tokens[content[i][present]]
        new = np.repeat(tokens, 1 + picked)
        at = np.flatnonzero(picked) + np.arange(1, int(picked.sum()) + 1)
        from_vocab = r.rng.random(len(at)) < 0.5
        new[at] = np.where(from_vocab, r.rng.choice(vocab, len(at)), r.rng.choice(own, len(at)))
        new = _fit(new, length, ids)
        out[i] = np.concatenate([new, np.full(length - len(new), ids.pad, dtype=new.dtype)])
    return torch.as_tensor(out, device=x.device)


def _fit(tokens: np.ndarray, length: int, ids: TokenIds) -> np.ndarray:
    """``tokens`` cut to ``length`` by dropping content tokens from the end of the longest
    segment, one at a time (``longest_first`` truncation), keeping every special token."""
    excess = len(tokens) - length
    if excess <= 0:
        return tokens
    special = (tokens == ids.cls) | (tokens == ids.sep)
    seg = np.cumsum(special)
    counts = np.bincount(seg[~special], minlength=int(seg.max()) + 1)
    drop = np.zeros_like(counts)
    for _ in range(excess):
        s = int(np.argmax(counts - drop))
        drop[s] += 1
    keep = np.ones(len(tokens), dtype=bool)
    for s in np.flatnonzero(drop):
        positions = np.flatnonzero(~special & (seg == s))
        keep[positions[len(positions) - drop[s]:]] = False
    return tokens[keep]


def synonym_replace(x: Tensor, r: Random, ids: TokenIds, rate: float, table: SynonymTable) -> Tensor:
    """Each content token that has synonyms in ``table`` becomes one of them (drawn uniformly)
    with probability ``rate``; other tokens never change."""
    size = max(ids.vocab_size, max(table.synonyms, default=0) + 1)
    width = max((len(v) for v in table.synonyms.values()), default=1)
    choices = torch.zeros((size, width), dtype=torch.long)
    counts = torch.zeros(size, dtype=torch.long)
    for word, syns in table.synonyms.items():
        choices[word, :len(syns)] = torch.as_tensor(syns)
        counts[word] = len(syns)
    choices, counts = choices.to(x.device), counts.to(x.device)
    known = x.clamp(0, size - 1)
    n = torch.where(x < size, counts[known], 0)
    hit = ids.content(x) & (n > 0) & _draw(x, r, rate)
    k = (torch.rand(x.shape, generator=r.gen).to(x.device) * n).long().clamp_max(width - 1)
    return torch.where(hit, choices[known, k], x)


def load_synonyms(path: Path, tokenizer: Any) -> SynonymTable:
    """A synonym table: YAML ``word: [synonym, ...]`` or TSV ``word<TAB>synonym<TAB>...``
    (blank lines and ``#`` comments ignored), mapped to ids through ``tokenizer``."""
    if path.suffix.lower() not in SYNONYM_SUFFIXES:
        raise TrialFailed(f"synonym table '{path}': expected a {', '.join(SYNONYM_SUFFIXES)} file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TrialFailed(f"synonym table '{path}' cannot be read: {exc.strerror or exc}") from None
    raw = _parse_yaml(text, path) if path.suffix.lower() in (".yaml", ".yml") else _parse_tsv(text)
    synonyms: dict[int, list[int]] = {}
    skipped: list[str] = []
    for word, syns in raw.items():
        word_id = _single_id(tokenizer, word)
        if word_id is None:
            skipped.append(word)
            continue
        for syn in syns:
            syn_id = _single_id(tokenizer, syn)
            if syn_id is None:
                skipped.append(f"{word} -> {syn}")
            elif syn_id != word_id and syn_id not in synonyms.setdefault(word_id, []):
                synonyms[word_id].append(syn_id)
    synonyms = {k: v for k, v in synonyms.items() if v}
    if not synonyms:
        raise TrialFailed(f"synonym table '{path}' has no word with a synonym that are both single tokens "
                          f"of the tokenizer ({len(skipped)} entries skipped)")
    return SynonymTable({k: tuple(v) for k, v in synonyms.items()}, tuple(skipped), path.name)


def _parse_yaml(text: str, path: Path) -> dict[str, list[str]]:
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise TrialFailed(f"synonym table '{path}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise TrialFailed(f"synonym table '{path}': expected a mapping word: [synonym, ...]")
    out = {}
    for word, syns in raw.items():
        syns = syns if isinstance(syns, list) else [syns]
        out[str(word)] = [str(s) for s in syns if s is not None]
    return out


def _parse_tsv(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("\t")]
        if not cells[0] or cells[0].startswith("#"):
            continue
        out.setdefault(cells[0], []).extend(c for c in cells[1:] if c)
    return out


def _single_id(tokenizer: Any, word: str) -> int | None:
    """The id of ``word`` when the tokenizer reads it as one token (as written, or after its
    normalizer, e.g. lowercasing), else None."""
    word = word.strip()
    if not word:
        return None
    found = tokenizer.token_to_id(word)
    if found is not None:
        return int(found)
    if hasattr(tokenizer, "encode"):
        ids = tokenizer.encode(word, add_special_tokens=False).ids
        unk = tokenizer.token_to_id("[UNK]")
        if len(ids) == 1 and ids[0] != unk:
            return int(ids[0])
    return None


class TextStep:
    """One text step bound to its ids and rate: ``step(x, r) -> x`` (a ``base.Step``)."""

    def __init__(self, policy: str, ids: TokenIds, rate: float, table: SynonymTable | None = None) -> None:
        if policy not in TEXT_POLICIES:
            raise ValueError(f"unknown text augmentation {policy!r}")
        self.policy, self.ids, self.rate, self.table = policy, ids, rate, table

    def __call__(self, x: Tensor, r: Random) -> Tensor:
        if self.rate <= 0:
            return x
        if self.policy == "synonym":
            assert self.table is not None, "synonym replacement needs a table"
            return synonym_replace(x, r, self.ids, self.rate, self.table)
        step = {"token_delete": token_delete, "token_swap": token_swap, "token_insert": token_insert,
                "token_mask": token_mask}[self.policy]
        return step(x, r, self.ids, self.rate)
