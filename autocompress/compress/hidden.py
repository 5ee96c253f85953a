"""Hidden-state distillation per mapped transformer layer (TinyBERT / MiniLM style).

The layer stacks of student and teacher are found generically: the ``nn.ModuleList`` or
``nn.Sequential`` with the most children, all of one class and holding an ``nn.Linear``
(a Hugging Face BERT's ``bert.encoder.layer``, ``nn.TransformerEncoder.layers``, torchvision
ViT's ``encoder.layers``). Each student layer is matched to the teacher layer it came from
where its weights still show it (the student is a copy of the teacher, and a depth technique
may have dropped layers before this is set up), else proportionally (student ``i`` of ``k`` ->
teacher ``round((i + 1) * L / k) - 1``, so the last layers meet). The loss is the mean over
mapped layers of the MSE between the (projected, where widths differ) student hidden states and
the teacher's, over non-pad positions where the inputs are token ids and the pad id is known.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import Tensor, nn

from autocompress.compress import depth
from autocompress.errors import TrialFailed
from autocompress.utils import device_of


def layer_stack(model: nn.Module) -> tuple[str, list[nn.Module]] | None:
    """(path, layers) of the model's transformer layer stack (``depth.layer_stack``), or None."""
    found = depth.layer_stack(model)
    return None if found is None else (found[0], list(found[1].children()))


def proportional(k: int, teacher_layers: int) -> list[int]:
    """Student layer ``i`` of ``k`` -> teacher layer ``round((i + 1) * L / k) - 1`` (the layers
    an every-other depth cut keeps)."""
    return depth.evenly_spaced(teacher_layers, k)


def _first_linear(layer: nn.Module) -> tuple[str, Tensor] | None:
    for name, m in layer.named_modules():
        if isinstance(m, nn.Linear):
            return name, m.weight
    return None


def _same_origin(s: Tensor, t: Tensor) -> bool:
    """Whether student weight ``s`` is teacher weight ``t``, or a slice of it where pruning
    removed rows (output neurons) or columns (inputs) of it."""
    if s.shape == t.shape:
        return torch.equal(s, t)
    if s.dim() != 2 or t.dim() != 2:
        return False
    if s.shape[1] == t.shape[1]:
        return bool((t == s[0]).all(dim=1).any())
    if s.shape[0] == t.shape[0]:
        return bool((t == s[:, :1]).all(dim=0).any())
    return False


def map_layers(student: list[nn.Module], teacher: list[nn.Module]) -> tuple[list[int], str]:
    """The teacher layer of each student layer and how it was found ("origin" | "proportional")."""
    found: list[int] = []
    with torch.no_grad():
        for layer in student:
            mine = _first_linear(layer)
            start = found[-1] + 1 if found else 0
            match = None
            for j in range(start, len(teacher)):
                theirs = dict(teacher[j].named_modules()).get(mine[0]) if mine else None
                if isinstance(theirs, nn.Linear) and _same_origin(mine[1].detach().cpu(),
                                                                   theirs.weight.detach().cpu()):
                    match = j
                    break
            if match is None:
                return proportional(len(student), len(teacher)), "proportional"
            found.append(match)
    return found, "origin"


def hidden_mse(student: Tensor, teacher: Tensor, keep: Tensor | None) -> Tensor:
    """MSE over the positions ``keep`` marks (all where None or the shapes do not line up)."""
    err = (student.float() - teacher.detach().float()).pow(2)
    if keep is None or err.dim() < 3 or tuple(err.shape[:2]) != tuple(keep.shape):
        return err.mean()
    per_position = err.flatten(2).mean(dim=2)
    weight = keep.to(per_position.dtype)
    return (per_position * weight).sum() / weight.sum().clamp_min(1.0)


def _first_tensor(output: Any) -> Any:
    """The hidden states of a layer's output: a tensor, or the first element of a tuple (HF).
    An nn.TransformerEncoder's fast path in evaluation may give a nested tensor: padded here."""
    value = output[0] if isinstance(output, (tuple, list)) and output else output
    if isinstance(value, Tensor) and value.is_nested:
        value = value.to_padded_tensor(0.0)
    return value


class HiddenStates:
    """Hooks on the mapped layers of student and teacher, their projections and their loss."""

    def __init__(self, student: nn.Module, teacher: nn.Module, pad_id: int | None) -> None:
        s_stack, t_stack = layer_stack(student), layer_stack(teacher)
        for who, stack in (("student", s_stack), ("teacher", t_stack)):
            if stack is None:
                raise TrialFailed(f"hidden-state distillation: the {who} has no transformer layer stack "
                                  "(a ModuleList or Sequential of like layers holding a Linear)")
        assert s_stack is not None and t_stack is not None
        self.pad_id = pad_id
        self.mapping, self.how = map_layers(s_stack[1], t_stack[1])
        self.names = {f"{s_stack[0]}.{i}": f"{t_stack[0]}.{j}" for i, j in enumerate(self.mapping)}
        self.projections = nn.ModuleDict()
        self._student: dict[int, Tensor] = {}
        self._teacher: dict[int, Tensor] = {}
        self._hooks = [_keep(layer, self._student, i) for i, layer in enumerate(s_stack[1])]
        self._hooks += [_keep(t_stack[1][j], self._teacher, i) for i, j in enumerate(self.mapping)]

    def set_up(self, student: nn.Module, teacher: nn.Module, example: Tensor) -> None:
        """One forward pass finds the widths; a Linear bridges each mapped pair that differs."""
        was_training = student.training
        with torch.no_grad():
            student.eval()
            student(example.to(device_of(student)))
            teacher(example.to(device_of(teacher)))
        student.train(was_training)
        for i in range(len(self.mapping)):
            s, t = self._student.get(i), self._teacher.get(i)
            if s is None or t is None:
                raise TrialFailed("hidden-state distillation: a mapped transformer layer is not called "
                                  "in the forward pass")
            if s.shape[-1] != t.shape[-1]:
                self.projections[str(i)] = nn.Linear(s.shape[-1], t.shape[-1], bias=False).to(t.device)
        self.clear()

    def loss(self, inputs: Tensor) -> Tensor:
        """Mean over mapped layers of the MSE of the hidden states (after the teacher's forward)."""
        keep, losses = real_tokens(inputs, self.pad_id), []
        for i, s, t in kept_pairs(self._student, self._teacher, len(self.mapping),
                                  "hidden-state distillation: a mapped transformer layer no longer runs "
                                  "in the student being trained (fused or replaced)"):
            if str(i) in self.projections:
                s = self.projections[str(i)](s)
            if s.shape != t.shape:
                raise TrialFailed(f"hidden-state distillation: student hidden states {tuple(s.shape)} and "
                                  f"teacher's {tuple(t.shape)} differ in more than the width")
            losses.append(hidden_mse(s, t, None if keep is None else keep.to(s.device)))
        return torch.stack(losses).mean()

    def clear(self) -> None:
        self._student.clear()
        self._teacher.clear()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.clear()

    def proof(self) -> dict[str, Any]:
        names = list(self.names)
        return {"hidden_layers": dict(self.names), "hidden_map": self.how,
                "hidden_projections": {names[int(k)]: f"Linear {p.in_features}->{p.out_features}"
                                       for k, p in self.projections.items()}}


def real_tokens(inputs: Tensor, pad_id: int | None) -> Tensor | None:
    """Where token ids are not padding (None for inputs that are not token ids)."""
    if pad_id is None or inputs.is_floating_point() or inputs.dim() != 2:
        return None
    return inputs != pad_id


def kept_pairs(student: dict[int, Tensor], teacher: dict[int, Tensor], n: int,
               missing: str) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(i, student tensor, teacher tensor) of each of the ``n`` mapped layers, taken out of what
    the forward hooks kept this step; ``TrialFailed(missing)`` where a hook kept nothing."""
    for i in range(n):
        s, t = student.pop(i, None), teacher.pop(i, None)
        if s is None or t is None:
            raise TrialFailed(missing)
        yield i, s, t


def _keep(module: nn.Module, store: dict[int, Tensor], key: int):
    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        value = _first_tensor(output)
        # Not during evaluation (inference mode) nor FX tracing (a Proxy, not a Tensor).
        if isinstance(value, Tensor) and not torch.is_inference_mode_enabled():
            store[key] = value

    return module.register_forward_hook(hook)
