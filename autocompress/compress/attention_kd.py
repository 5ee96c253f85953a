"""Attention-map distillation (MiniLM/TinyBERT style): each student transformer layer's
self-attention distributions are pulled toward those of the teacher layer it is mapped to.

The loss is the KL divergence KL(teacher || student) of the attention distributions, averaged
over the heads first (head pruning may leave the student fewer heads than the teacher), then
over the query positions that are not padding, the batch and the mapped layers. The layers are
mapped as for hidden states (``hidden.map_layers``: by origin, else proportionally). Attention
weights exist only under transformers' eager attention (SDPA does not return them), so the
teacher copy and the student train with ``attn_implementation`` "eager", and the student gets
its own implementation back after fine-tuning (it ships as it came).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from autocompress.compress.hidden import kept_pairs, layer_stack, map_layers, real_tokens
from autocompress.compress.pruning.heads import attention_modules
from autocompress.errors import TrialFailed

EPS = 1e-12


def attention_kl(student: Tensor, teacher: Tensor, keep: Tensor | None) -> Tensor:
    """KL(teacher || student) of (batch, heads, queries, keys) attention weights, averaged over
    the heads, then over the kept (non-pad) queries."""
    s, t = student.float().mean(1), teacher.float().mean(1)
    kl = (t * (t.clamp_min(EPS).log() - s.clamp_min(EPS).log())).sum(-1)   # (batch, queries)
    if keep is None:
        return kl.mean()
    keep = keep.to(kl.dtype)
    return (kl * keep).sum() / keep.sum().clamp_min(1.0)


def _attention_of_layers(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(the layers of the model's stack, the self-attention module inside each)."""
    found = layer_stack(model)
    if found is None:
        raise TrialFailed("attention distillation: the model has no transformer layer stack")
    name, layers = found
    attentions = {a.name: model.get_submodule(a.name) for a in attention_modules(model)}
    inside = []
    for i in range(len(layers)):
        prefix = f"{name}.{i}."
        match = next((m for n, m in attentions.items() if n.startswith(prefix)), None)
        if match is None:
            raise TrialFailed(f"attention distillation: layer {name}.{i} has no self-attention whose heads "
                              "can be counted (Hugging Face BERT- or DistilBERT-style)")
        inside.append(match)
    return layers, inside


def _eager(model: nn.Module) -> list[tuple[Any, str]]:
    """Switch every config of ``model`` to eager attention; returns what to restore."""
    restore = []
    for m in model.modules():
        config = getattr(m, "config", None)
        impl = getattr(config, "_attn_implementation", None)
        if impl is not None and impl != "eager":
            restore.append((config, impl))
            config._attn_implementation = "eager"
    return restore


class AttentionMaps:
    """Hooks on the mapped self-attention modules of student and teacher, and their loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pad_id: int | None) -> None:
        s_layers, s_attn = _attention_of_layers(student)
        t_layers, t_attn = _attention_of_layers(teacher)
        self.mapping, self.how = map_layers(s_layers, t_layers)
        self.pad_id = pad_id
        self._restore = _eager(student)
        _eager(teacher)   # a private copy: nothing to restore
        self._student: dict[int, Tensor] = {}
        self._teacher: dict[int, Tensor] = {}
        self._hooks = [_keep(m, self._student, i) for i, m in enumerate(s_attn)]
        self._hooks += [_keep(t_attn[j], self._teacher, i) for i, j in enumerate(self.mapping)]

    def loss(self, inputs: Tensor) -> Tensor:
        keep, losses = real_tokens(inputs, self.pad_id), []
        for _, s, t in kept_pairs(self._student, self._teacher, len(self.mapping),
                                  "attention distillation: a mapped self-attention returned no attention "
                                  "weights (an attention implementation other than eager)"):
            losses.append(attention_kl(s, t, None if keep is None else keep.to(s.device)))
        return torch.stack(losses).mean()

    def remove(self) -> None:
        """Hooks off, and the student's attention implementation back."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        for config, impl in self._restore:
            config._attn_implementation = impl
        self._student.clear()
        self._teacher.clear()

    def proof(self) -> dict[str, Any]:
        return {"attention_map": self.how, "attention_layers": len(self.mapping)}


def _keep(module: nn.Module, store: dict[int, Tensor], key: int):
    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if isinstance(weights, Tensor) and not torch.is_inference_mode_enabled():
            store[key] = weights

    return module.register_forward_hook(hook)
