"""Attention heads as pruning units: which Linear layers project queries, keys and values, how
wide a head is, and the attributes that must stay true after heads are removed.

A group of coupled channels that holds an attention projection is cut by whole heads (the
channels of a head go together, scored as the sum of their importances) at ``head_ratio``, or
not at all: cutting single channels would regroup the rest into other heads. Removing a head is
zeroing its queries, keys and values (uniform attention over zero values gives zero), so the
shrink is verified like any other. Hugging Face BERT-style self-attention (``query``/``key``/
``value`` with ``num_attention_heads``, ``attention_head_size``, ``all_head_size``) and
DistilBERT-style (``q_lin``/``k_lin``/``v_lin`` with ``n_heads``, ``dim``) are known.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_STYLES = (
    # (projections, head count attribute, head size attribute or None, all-heads width attribute or None)
    (("query", "key", "value"), "num_attention_heads", "attention_head_size", "all_head_size"),
    (("q_lin", "k_lin", "v_lin"), "n_heads", None, "dim"),
)


@dataclass(frozen=True)
class Attention:
    """One self-attention module: its name, its projections' names, the width of a head."""
    name: str
    projections: tuple[str, ...]
    head_size: int
    count_attr: str
    width_attr: str | None

    def heads(self, model: nn.Module) -> int:
        return int(getattr(model.get_submodule(self.name), self.count_attr))


def attention_modules(model: nn.Module) -> list[Attention]:
    """The self-attention modules of ``model`` whose heads can be counted."""
    found = []
    for name, m in model.named_modules():
        for projections, count, size, width in _STYLES:
            layers = [getattr(m, p, None) for p in projections]
            if not all(isinstance(layer, nn.Linear) for layer in layers) or not isinstance(getattr(m, count, None), int):
                continue
            heads = getattr(m, count)
            head_size = getattr(m, size) if size else layers[0].out_features // max(heads, 1)
            found.append(Attention(name, tuple(f"{name}.{p}" if name else p for p in projections), int(head_size),
                                   count, width))
    return found


def sync_head_counts(model: nn.Module, attentions: list[Attention]) -> dict[str, list[int]]:
    """Set each attention module's head count (and all-heads width) from its query projection's
    width after a cut; returns {module: [heads before, heads after]} for the ones that changed."""
    changed = {}
    for a in attentions:
        m = model.get_submodule(a.name)
        width = model.get_submodule(a.projections[0]).out_features
        before, after = int(getattr(m, a.count_attr)), width // a.head_size
        if after != before:
            setattr(m, a.count_attr, after)
            if a.width_attr and a.width_attr != "dim":   # DistilBERT's dim is the hidden size too
                setattr(m, a.width_attr, width)
            changed[a.name] = [before, after]
    return changed


def whole_heads(width: int, scores: torch.Tensor, ratio: float, head_size: int
                ) -> tuple[tuple[int, ...], tuple[int, int]] | None:
    """(the channels of the heads to remove, (heads before, heads after)) for a group of
    attention projections ``width`` wide, each head scored by the sum of its channels'
    importances; None where no whole head goes."""
    if width % head_size:
        return None
    n_heads = width // head_size
    n_cut = min(n_heads - 1, int(n_heads * ratio))
    if n_cut <= 0:
        return None
    per_head = scores.float().cpu().view(n_heads, head_size).sum(1)
    gone = sorted(int(h) for h in torch.argsort(per_head)[:n_cut])
    return tuple(h * head_size + i for h in gone for i in range(head_size)), (n_heads, n_heads - n_cut)
